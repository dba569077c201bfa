//! The pure core: one customer's journey as a state machine.
//!
//! [`Rulebook::step`] takes the customer's state and one event and returns
//! the new state and the commands that follow from it: emails to schedule,
//! pending emails to cancel, and emails decided at once. No I/O, no clock:
//! every due time is computed from the event's `occurred_at`, so replaying
//! the same events gives the same plan.
//!
//! [`Rulebook::recheck`] is the other half: whether an email that has waited
//! may still go out, given the state at its due time; and [`Policy`] says
//! when it may go out (frequency cap, quiet hours). [`Rulebook::decide`]
//! puts them together: whether an email that fell due goes out now, waits,
//! or ends without going out.

mod data;
pub mod decide;
pub mod insight;
pub mod late;
mod policy;
mod rules;
mod state;

pub use data::Data;
pub use decide::{DueEmail, Facts, Fate, Round};
pub use insight::{ShopDelta, ShopStats};
pub use late::{Clock, Lateness};
pub use policy::{Moment, Policy, Timing};
pub use rules::{
    AdaptiveWinBackConfig, BASE_VARIANT, EmailClass, HOLDOUT_VARIANT, JourneyRule, Only,
    PolicyConfig, QuietHoursConfig, RulebookConfig, Segment, SegmentsConfig, TierConfig, Trigger,
    parse_hhmm,
};
pub use state::{
    Journey, MAX_NOTES, OrderState, Profile, RefundNote, ReturnNote, ShipmentNote, first_name_of,
};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::event::{Eta, Event, EventKind, Item, Order, Shipment};

/// An email the journey wants sent at `due_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEmail {
    /// `customer/template/scope` (see `Scope`): unique, and the same on
    /// every replay, so
    /// that scheduling is idempotent and the `Message-ID` can derive from it.
    pub key: String,
    pub customer_id: String,
    pub template: String,
    pub class: EmailClass,
    pub order_id: Option<String>,
    /// Never before the event that scheduled it: the pipeline decides an
    /// email as of its due time (consent, quiet hours, the frequency cap),
    /// and an email cannot go out before it exists.
    pub due_at: Timestamp,
    /// The trigger's part of the template data (`order`, `shipment`, ...).
    pub data: Data,
    /// The A/B variant this customer gets, when the rule has variants.
    pub variant: Option<String>,
}

/// A pending email as [`Rulebook::relevance`] and [`Rulebook::supersedes`]
/// compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due<'a> {
    pub id: i64,
    pub template: &'a str,
    pub order_id: Option<&'a str>,
    pub due_at: Timestamp,
}

/// Which pending emails a [`Command::Cancel`] applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub customer_id: String,
    pub order_id: String,
    /// `None`: every template.
    pub templates: Option<Vec<String>>,
}

/// A final decision on an email that was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reason to send went away (order cancelled, return, new order).
    Cancelled,
    /// The customer may not get it (no consent, unsubscribed, bounced).
    Suppressed,
    /// Would have gone out, but the customer is in the rule's holdout
    /// group (its `holdout` variant): recorded, never sent, so that the
    /// report can compare them with those who got it.
    HeldOut,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Schedule(NewEmail),
    Cancel {
        selector: Selector,
        reason: String,
    },
    /// An email that is decided as it is created, kept for the record.
    Decide {
        email: NewEmail,
        verdict: Verdict,
        reason: String,
    },
}

/// An event that is valid on its own but not for this customer's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("missing required field `customer.email` on the first order of customer `{0}`")]
    FirstEventWithoutEmail(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: Journey,
    pub commands: Vec<Command>,
}

/// The journey rules of the configuration, ready to step.
#[derive(Debug, Clone)]
pub struct Rulebook {
    rules: Vec<JourneyRule>,
    policy: Policy,
    tiers: Vec<TierConfig>,
    segments: SegmentsConfig,
    adaptive: Option<AdaptiveWinBackConfig>,
    default_locale: String,
}

impl Rulebook {
    /// `rules` with the shipped tiers, segments and adaptive win-back, and
    /// no timing policy: every email at its due time.
    pub fn new(rules: Vec<JourneyRule>) -> Rulebook {
        let mut journeys = Rulebook::from_config(RulebookConfig::shipped());
        journeys.rules = rules;
        journeys.policy = Policy::none();
        journeys
    }

    /// The rules and the policies of the configuration.
    pub fn from_config(settings: RulebookConfig) -> Rulebook {
        let adaptive = &settings.policy.adaptive_win_back;
        Rulebook {
            policy: Policy::new(&settings.policy, &settings.default_timezone),
            adaptive: adaptive.enabled.then(|| adaptive.clone()),
            rules: settings.rules,
            tiers: settings.tiers,
            segments: settings.segments,
            default_locale: settings.default_locale,
        }
    }

    /// When an email of `template` due at `due_at` may go out, decided at
    /// `moment` (see [`Policy::timing`]).
    pub fn timing(
        &self,
        j: &Journey,
        template: &str,
        customer_id: &str,
        due_at: Timestamp,
        moment: Moment,
    ) -> Timing {
        match self.rule(template) {
            Some(rule) => self.policy.timing(rule, j, customer_id, due_at, moment),
            None => Timing::Now,
        }
    }

    /// How late an email of `template` may still go out: its rule's
    /// `expires_after`, or the default of its class when the rule is gone.
    pub fn expiry(&self, template: &str, class: EmailClass) -> std::time::Duration {
        self.rule(template)
            .map_or_else(|| JourneyRule::default_expiry(class), JourneyRule::expiry)
    }

    /// Whether a customer's marketing emails due together must take turns:
    /// only under a frequency cap.
    pub fn take_turns(&self) -> bool {
        self.policy.has_cap()
    }

    /// Which of two marketing emails of one customer due together is the
    /// more relevant, and goes first: the one about the newer order (by
    /// when it was placed), then the one due later (a later win-back
    /// before an earlier one), then the one created later.
    pub fn relevance(&self, j: &Journey, email: &Due<'_>) -> (Option<Timestamp>, Timestamp, i64) {
        let placed = email
            .order_id
            .and_then(|order| j.orders.get(order))
            .and_then(|o| o.placed_at);
        (placed, email.due_at, email.id)
    }

    /// Whether `later` makes `earlier` pointless, both due: a later email of
    /// the same win-back series (inactivity rules counting from the same
    /// order, the one with the longer wait). "We miss you", then "a last
    /// word" at once, helps nobody; the last word alone does.
    pub fn supersedes(&self, later: &Due<'_>, earlier: &Due<'_>) -> bool {
        let wait = |template: &str| {
            self.rule(template)
                .filter(|r| r.on == Trigger::Inactivity)
                .map(|r| r.delay)
        };
        later.order_id.is_some()
            && later.order_id == earlier.order_id
            && matches!(
                (wait(later.template), wait(earlier.template)),
                (Some(l), Some(e)) if l > e
            )
    }

    /// The wait after the last order before the first win-back: the
    /// customer's own rhythm (adaptive win-back) or the first inactivity
    /// rule's delay. Past it, the customer is `lapsed`.
    pub fn first_win_back_wait(&self, j: &Journey) -> Option<SignedDuration> {
        let fixed = self
            .rules_on(Trigger::Inactivity)
            .map(|r| signed(r.delay))
            .min()?;
        Some(self.adaptive_wait(j).unwrap_or(fixed))
    }

    /// `multiplier` x the median gap between orders, clamped, for customers
    /// with enough orders.
    fn adaptive_wait(&self, j: &Journey) -> Option<SignedDuration> {
        let a = self.adaptive.as_ref()?;
        if insight::order_count(j) < a.min_orders {
            return None;
        }
        let gap = insight::median_gap(j)?;
        let wait = SignedDuration::try_from_secs_f64(gap.as_secs_f64() * a.multiplier)
            .unwrap_or(SignedDuration::MAX);
        Some(wait.clamp(signed(a.min), signed(a.max)))
    }

    /// The customer's segments at `now`, by precedence.
    pub fn segments_of(&self, j: &Journey, now: Timestamp, shop: &ShopStats) -> Vec<Segment> {
        insight::segments(j, now, shop, &self.segments, self.first_win_back_wait(j))
    }

    /// What templates may say about the customer beyond the profile.
    pub fn insights(&self, j: &Journey, now: Timestamp, shop: &ShopStats, locale: &str) -> Value {
        #[cfg(test)]
        panic_for_tests(j.profile.name.as_deref().unwrap_or_default());
        let segments = self.segments_of(j, now, shop);
        let currency = insight::currency(j);
        let expected = match (&j.last_order, insight::median_gap(j)) {
            (Some((_, last)), Some(gap)) => Value::String(later(*last, gap).to_string()),
            _ => Value::Null,
        };
        let tier = self
            .tiers
            .iter()
            .rev()
            .find(|t| j.tiers.contains(&t.id))
            .map_or(Value::Null, |t| self.tier_json(t, locale));
        json!({
            "segment": segments[0].as_str(),
            "segments": segments.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "order_count": insight::order_count(j),
            "currency": currency,
            "lifetime_spend": currency.and_then(|c| insight::spend(j).get(c).map(ToString::to_string)),
            "expected_next_order_at": expected,
            "tier": tier,
        })
    }

    /// `{id, name, benefits}` of a tier in `locale` (or the default's words).
    pub fn tier_json(&self, tier: &TierConfig, locale: &str) -> Value {
        let word = |words: &std::collections::BTreeMap<String, String>| {
            words
                .get(locale)
                .or_else(|| words.get(&self.default_locale))
                .cloned()
                .map_or(Value::Null, Value::String)
        };
        json!({ "id": tier.id, "name": word(&tier.name), "benefits": word(&tier.benefits) })
    }

    /// The tier `id` in `locale`, for the email that congratulates on it.
    pub fn tier_by_id(&self, id: &str, locale: &str) -> Option<Value> {
        let tier = self.tiers.iter().find(|t| t.id == id)?;
        Some(self.tier_json(tier, locale))
    }

    /// The delay of `rule` for a customer in `segments`.
    fn delay_for(&self, rule: &JourneyRule, segments: &[Segment]) -> Option<SignedDuration> {
        segments
            .iter()
            .find_map(|s| rule.delay_by_segment.get(s))
            .map(|d| signed(*d))
    }

    /// Whether `rule` is for a customer in `segments`.
    fn fits(rule: &JourneyRule, segments: &[Segment]) -> bool {
        rule.segments.is_empty() || rule.segments.iter().any(|s| segments.contains(s))
    }

    /// The highest tier the customer now qualifies for and had not reached:
    /// recorded as reached (with any lower ones skipped over) on the order.
    fn reach_tier(&self, j: &mut Journey, order_id: &str) -> Option<String> {
        let count = insight::order_count(j) as u32;
        let spend = insight::spend(j);
        let highest = self.tiers.iter().rposition(|t| {
            t.min_orders.is_some_and(|n| count >= n)
                || t.min_spend
                    .iter()
                    .any(|(currency, min)| spend.get(currency).is_some_and(|s| s >= min))
        })?;
        let id = self.tiers[highest].id.clone();
        if j.tiers.contains(&id) {
            return None;
        }
        let added: Vec<String> = self.tiers[..=highest]
            .iter()
            .map(|t| t.id.clone())
            .filter(|t| !j.tiers.contains(t))
            .collect();
        j.tiers.extend(added.iter().cloned());
        if let Some(o) = j.orders.get_mut(order_id) {
            o.tiers_reached = added;
        }
        Some(id)
    }

    pub fn rule(&self, template: &str) -> Option<&JourneyRule> {
        self.rules.iter().find(|r| r.template == template)
    }

    fn rules_on(&self, trigger: Trigger) -> impl Iterator<Item = &JourneyRule> {
        self.rules.iter().filter(move |r| r.on == trigger)
    }

    /// [`Rulebook::step_with`] an empty shop: no median order, no top
    /// percent (tests and a shop's very first order).
    pub fn step(&self, state: Option<Journey>, event: &Event) -> Result<Transition, Rejection> {
        self.step_with(state, event, &ShopStats::default())
    }

    /// Applies one event to a customer's journey. `state` is `None` for a
    /// customer never seen before; `shop` is what segments compare with.
    pub fn step_with(
        &self,
        state: Option<Journey>,
        event: &Event,
        shop: &ShopStats,
    ) -> Result<Transition, Rejection> {
        #[cfg(test)]
        panic_for_tests(&event.id);
        let mut j = state.unwrap_or_default();
        // An order is where a shop first meets a customer: without an
        // address it cannot be followed up. Other events of a customer we
        // have not seen yet are kept: from another topic they can arrive
        // before the order that introduces the customer.
        let placing = matches!(event.kind, EventKind::OrderPlaced { .. });
        if placing && j.profile.email.is_none() && event.customer.email.is_none() {
            return Err(Rejection::FirstEventWithoutEmail(event.customer.id.clone()));
        }
        j.profile.apply(&event.customer);
        let mut out = Out {
            customer_id: &event.customer.id,
            at: event.occurred_at,
            commands: Vec::new(),
            shop,
        };
        let at = event.occurred_at;
        match &event.kind {
            EventKind::OrderPlaced { order } => self.order_placed(&mut j, order, at, &mut out),
            EventKind::OrderCancelled { order_id } => {
                self.order_cancelled(&mut j, order_id, at, &mut out)
            }
            EventKind::ShipmentDispatched { order_id, shipment } => self.shipment_news(
                &mut j,
                Trigger::ShipmentDispatched,
                order_id,
                shipment,
                at,
                &mut out,
            ),
            EventKind::ShipmentDelayed { order_id, shipment } => self.shipment_news(
                &mut j,
                Trigger::ShipmentDelayed,
                order_id,
                shipment,
                at,
                &mut out,
            ),
            EventKind::ShipmentDelivered {
                order_id,
                shipment_id,
            } => self.shipment_delivered(&mut j, order_id, shipment_id, at, &mut out),
            EventKind::ReturnRequested { order_id, ret } => {
                let o = j.orders.entry(order_id.clone()).or_default();
                o.return_requested = true;
                if o.returns.len() < MAX_NOTES && !o.returns.iter().any(|r| r.id == ret.id) {
                    o.returns.push(ReturnNote {
                        id: ret.id.clone(),
                        reason: ret.reason.clone(),
                        requested_at: Some(at),
                    });
                }
                let cancelled: Vec<String> = self
                    .rules
                    .iter()
                    .filter(|r| r.cancel_on.contains(&Trigger::ReturnRequested))
                    .map(|r| r.template.clone())
                    .collect();
                if !cancelled.is_empty() {
                    out.cancel(
                        order_id,
                        Some(cancelled),
                        format!("return requested for order {order_id}"),
                    );
                }
                let data = Data::new(json!({
                    "order": order_json(&j, order_id),
                    "return": {"id": ret.id, "reason": ret.reason, "items": return_items_json(&ret.items)},
                }));
                self.fire(
                    &j,
                    Trigger::ReturnRequested,
                    order_id,
                    &Scope::of(&ret.id),
                    at,
                    data,
                    &mut out,
                );
            }
            EventKind::ReturnReceived {
                order_id,
                return_id,
            } => {
                let data = Data::new(json!({
                    "order": order_json(&j, order_id),
                    "return": {"id": return_id, "reason": Value::Null, "items": []},
                }));
                self.fire(
                    &j,
                    Trigger::ReturnReceived,
                    order_id,
                    &Scope::of(return_id),
                    at,
                    data,
                    &mut out,
                );
            }
            EventKind::RefundIssued { order_id, refund } => {
                let o = j.orders.entry(order_id.clone()).or_default();
                if o.refunds.len() < MAX_NOTES && !o.refunds.iter().any(|r| r.id == refund.id) {
                    o.refunds.push(RefundNote {
                        id: refund.id.clone(),
                        amount: refund.amount,
                        currency: refund.currency.clone(),
                        issued_at: Some(at),
                    });
                }
                let data = Data::new(json!({
                    "order": order_json(&j, order_id),
                    "refund": {"id": refund.id, "amount": refund.amount.to_string(), "currency": refund.currency},
                }));
                self.fire(
                    &j,
                    Trigger::RefundIssued,
                    order_id,
                    &Scope::of(&refund.id),
                    at,
                    data,
                    &mut out,
                );
            }
        }
        Ok(Transition {
            state: j,
            commands: out.commands,
        })
    }

    fn order_placed(&self, j: &mut Journey, order: &Order, at: Timestamp, out: &mut Out) {
        if j.orders
            .get(&order.id)
            .is_some_and(|o| o.placed_at.is_some())
        {
            // The same order placed twice (a replay under a new event id).
            return;
        }
        let first_order = !j.ordered_before;
        j.ordered_before = true;
        let o = j.orders.entry(order.id.clone()).or_default();
        o.placed_at = Some(at);
        o.total = Some(order.total);
        o.currency = Some(order.currency.clone());
        o.items = order.items.clone();
        let count = j.orders.values().filter(|o| o.counts()).count() as u32;
        let data = order_data(j, &order.id);
        let segments = self.segments_of(j, at, out.shop);
        let tier = if self.rules_on(Trigger::OrderPlaced).any(|r| r.tiers) {
            self.reach_tier(j, &order.id)
        } else {
            None
        };

        for rule in self.rules_on(Trigger::OrderPlaced) {
            if rule.only == Some(Only::FirstOrder) && !first_order {
                continue;
            }
            if !Self::fits(rule, &segments) {
                continue;
            }
            let mut data = data.clone();
            if rule.tiers {
                let Some(tier) = &tier else {
                    continue;
                };
                data = data.with(|d| {
                    d["tier"] = json!({ "id": tier });
                    d["milestone"] = json!({ "order_count": count });
                });
            }
            if !rule.milestones.is_empty() {
                if !rule.milestones.contains(&count) || j.milestones.contains(&count) {
                    continue;
                }
                j.milestones.insert(count);
                if let Some(o) = j.orders.get_mut(&order.id) {
                    o.milestone = Some(count);
                }
                data = data.with(|d| d["milestone"] = json!({ "order_count": count }));
            }
            let delay = self
                .delay_for(rule, &segments)
                .unwrap_or(signed(rule.delay));
            out.schedule_at(
                rule,
                &order.id,
                &Scope::of(&order.id),
                later(at, delay),
                data,
            );
        }

        let newer = j.last_order.as_ref().is_none_or(|(_, last)| at > *last);
        if newer {
            if let Some((anchor, _)) = j.last_order.take() {
                out.cancel(
                    &anchor,
                    Some(self.inactivity_templates()),
                    format!("new order {}", order.id),
                );
            }
            j.last_order = Some((order.id.clone(), at));
            // The win-backs carry the order this one is: the same data.
            self.schedule_inactivity(j, &Scope::of(&order.id), data, out);
        }
    }

    fn order_cancelled(&self, j: &mut Journey, order_id: &str, at: Timestamp, out: &mut Out) {
        out.cancel(order_id, None, format!("order {order_id} cancelled"));
        let o = j.orders.entry(order_id.to_owned()).or_default();
        let already = o.cancelled;
        o.cancelled = true;
        let tiers_reached = std::mem::take(&mut o.tiers_reached);
        if !already
            && !tiers_reached.is_empty()
            && let Some(rule) = self.rules.iter().find(|r| r.tiers)
            && o.placed_at
                .is_some_and(|p| at < later(p, signed(rule.delay)))
        {
            // The congratulation had not gone out: the tier is not reached.
            for tier in &tiers_reached {
                j.tiers.remove(tier);
            }
        }
        let o = j.orders.entry(order_id.to_owned()).or_default();
        if !already
            && let Some(n) = o.milestone
            && let Some(rule) = self.rules.iter().find(|r| r.milestones.contains(&n))
            && o.placed_at
                .is_some_and(|p| at < later(p, signed(rule.delay)))
        {
            // The congratulation had not gone out: the next order may earn it.
            j.milestones.remove(&n);
        }
        let data = order_data(j, order_id);
        self.fire(
            j,
            Trigger::OrderCancelled,
            order_id,
            &Scope::of(order_id),
            at,
            data,
            out,
        );

        if j.last_order
            .as_ref()
            .is_some_and(|(anchor, _)| anchor == order_id)
        {
            j.last_order = j
                .orders
                .iter()
                .filter(|(_, o)| o.counts())
                .filter_map(|(id, o)| Some((id.clone(), o.placed_at?)))
                .max_by_key(|(_, placed)| *placed);
            if let Some((anchor, _)) = j.last_order.clone() {
                // A distinct scope: the first wait on this order was cancelled
                // by the order that has now been cancelled itself.
                let data = order_data(j, &anchor);
                self.schedule_inactivity(j, &Scope::reanchored(&anchor, order_id), data, out);
            }
        }
    }

    fn shipment_news(
        &self,
        j: &mut Journey,
        trigger: Trigger,
        order_id: &str,
        shipment: &Shipment,
        at: Timestamp,
        out: &mut Out,
    ) {
        let delivered = j
            .orders
            .get(order_id)
            .is_some_and(|o| o.delivered_shipments.contains(&shipment.id));
        let scope = match (trigger, shipment.estimated_delivery) {
            (Trigger::ShipmentDelayed, Some(eta)) => Scope::delayed(&shipment.id, eta),
            _ => Scope::of(&shipment.id),
        };
        // What the parcel's earlier events said, under what this one says:
        // a delay notice names the carrier and tracking of the dispatch.
        let note = {
            let note = j
                .orders
                .entry(order_id.to_owned())
                .or_default()
                .shipments
                .entry(shipment.id.clone())
                .or_default();
            note.apply(shipment);
            if trigger == Trigger::ShipmentDelayed {
                // A delay without a new date voids the old one.
                note.estimated_delivery = shipment.estimated_delivery;
            }
            note.clone()
        };
        let data = Data::new(json!({
            "order": order_json(j, order_id),
            "shipment": shipment_json(&shipment.id, &note, note.estimated_delivery),
        }));
        if delivered {
            for rule in self.rules_on(trigger) {
                out.decide(
                    rule,
                    order_id,
                    &scope,
                    at,
                    data.clone(),
                    Verdict::Cancelled,
                    format!("shipment {} already delivered", shipment.id),
                );
            }
            return;
        }
        self.fire(j, trigger, order_id, &scope, at, data, out);
    }

    fn shipment_delivered(
        &self,
        j: &mut Journey,
        order_id: &str,
        shipment_id: &str,
        at: Timestamp,
        out: &mut Out,
    ) {
        let first_delivery = !j.delivered_before;
        j.delivered_before = true;
        j.orders
            .entry(order_id.to_owned())
            .or_default()
            .delivered_shipments
            .insert(shipment_id.to_owned());
        // The carrier and tracking its dispatch gave; no estimate: it came.
        let note = j.orders[order_id]
            .shipments
            .get(shipment_id)
            .cloned()
            .unwrap_or_default();
        let data = Data::new(json!({
            "order": order_json(j, order_id),
            "shipment": shipment_json(shipment_id, &note, None),
        }));
        for rule in self.rules_on(Trigger::ShipmentDelivered) {
            if rule.only == Some(Only::FirstDelivery) && !first_delivery {
                continue;
            }
            self.fire_rule(
                j,
                rule,
                order_id,
                &Scope::of(order_id),
                at,
                data.clone(),
                out,
            );
        }
    }

    /// Every rule on `trigger`, scheduled or, when the order already rules it
    /// out, decided as cancelled.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &self,
        j: &Journey,
        trigger: Trigger,
        order_id: &str,
        scope: &Scope,
        at: Timestamp,
        data: Data,
        out: &mut Out,
    ) {
        for rule in self.rules_on(trigger) {
            self.fire_rule(j, rule, order_id, scope, at, data.clone(), out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fire_rule(
        &self,
        j: &Journey,
        rule: &JourneyRule,
        order_id: &str,
        scope: &Scope,
        at: Timestamp,
        data: Data,
        out: &mut Out,
    ) {
        let segments = self.segments_of(j, at, out.shop);
        if !Self::fits(rule, &segments) {
            return;
        }
        match self.cancel_reason(j, rule, order_id) {
            Some(reason) => out.decide(rule, order_id, scope, at, data, Verdict::Cancelled, reason),
            None => {
                let delay = self
                    .delay_for(rule, &segments)
                    .unwrap_or(signed(rule.delay));
                out.schedule_at(rule, order_id, scope, later(at, delay), data);
            }
        }
    }

    /// Why an email of `rule` about `order_id` should no longer go out.
    /// Transactional emails are about facts that stay true (an order was
    /// cancelled, a refund issued), so only marketing ones are cancelled.
    fn cancel_reason(&self, j: &Journey, rule: &JourneyRule, order_id: &str) -> Option<String> {
        if rule.class != EmailClass::Marketing {
            return None;
        }
        let order = j.orders.get(order_id)?;
        if order.cancelled {
            return Some(format!("order {order_id} cancelled"));
        }
        if order.return_requested && rule.cancel_on.contains(&Trigger::ReturnRequested) {
            return Some(format!("return requested for order {order_id}"));
        }
        None
    }

    fn inactivity_templates(&self) -> Vec<String> {
        self.rules_on(Trigger::Inactivity)
            .map(|r| r.template.clone())
            .collect()
    }

    /// The win-backs after the last order, carrying `data` (that order's).
    fn schedule_inactivity(&self, j: &Journey, scope: &Scope, data: Data, out: &mut Out) {
        let Some((anchor, placed_at)) = &j.last_order else {
            return;
        };
        let segments = self.segments_of(j, *placed_at, out.shop);
        // Adaptive win-back moves the whole series: the first at the
        // customer's own rhythm, the later ones at their distance from it.
        let first = self
            .rules_on(Trigger::Inactivity)
            .map(|r| signed(r.delay))
            .min()
            .unwrap_or_default();
        let shift = self
            .adaptive_wait(j)
            .map_or(SignedDuration::ZERO, |wait| wait.saturating_sub(first));
        for rule in self.rules_on(Trigger::Inactivity) {
            if !Self::fits(rule, &segments) {
                continue;
            }
            let delay = self
                .delay_for(rule, &segments)
                .unwrap_or(signed(rule.delay).saturating_add(shift));
            out.schedule_at(rule, anchor, scope, later(*placed_at, delay), data.clone());
        }
    }

    /// Whether an email that has waited may go out now, given the journey as
    /// it is at its due time. `None`: send it.
    pub fn recheck(
        &self,
        j: &Journey,
        template: &str,
        order_id: Option<&str>,
    ) -> Option<(Verdict, String)> {
        let rule = self.rule(template)?;
        if rule.class == EmailClass::Transactional {
            return None;
        }
        if j.profile.unsubscribed {
            return Some((Verdict::Suppressed, "unsubscribed".to_owned()));
        }
        if !j.profile.marketing_consent {
            return Some((Verdict::Suppressed, "no marketing consent".to_owned()));
        }
        let order_id = order_id?;
        if let Some(reason) = self.cancel_reason(j, rule, order_id) {
            return Some((Verdict::Cancelled, reason));
        }
        if rule.on == Trigger::Inactivity
            && let Some((anchor, _)) = &j.last_order
            && anchor != order_id
        {
            return Some((Verdict::Cancelled, format!("new order {anchor}")));
        }
        None
    }
}

/// The rule's A/B variant for a customer: weighted, and sticky, since it
/// hashes the customer id and the template (so separate tests split the
/// customers independently). `None` when the rule has no variants.
pub fn assign_variant(customer_id: &str, rule: &JourneyRule) -> Option<String> {
    let total: u64 = rule.variants.values().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(customer_id)
        .chain_update([0])
        .chain_update(&rule.template)
        .finalize();
    let mut point = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % total;
    rule.variants.iter().find_map(|(name, weight)| {
        let weight = u64::from(*weight);
        if point < weight {
            return Some(name.clone());
        }
        point -= weight;
        None
    })
}

/// Collects the commands of one step.
struct Out<'a> {
    customer_id: &'a str,
    /// When the event of the step happened: the earliest an email it
    /// schedules may fall due.
    at: Timestamp,
    commands: Vec<Command>,
    /// What segments compare the customer with.
    shop: &'a ShopStats,
}

impl Out<'_> {
    fn email(
        &self,
        rule: &JourneyRule,
        order_id: &str,
        scope: &Scope,
        due_at: Timestamp,
        data: Data,
    ) -> NewEmail {
        NewEmail {
            key: format!(
                "{}/{}/{}",
                key_part(self.customer_id, &[]),
                key_part(&rule.template, &[]),
                scope.0
            ),
            customer_id: self.customer_id.to_owned(),
            template: rule.template.clone(),
            class: rule.class,
            order_id: Some(order_id.to_owned()),
            due_at,
            data,
            variant: assign_variant(self.customer_id, rule),
        }
    }

    fn schedule_at(
        &mut self,
        rule: &JourneyRule,
        order_id: &str,
        scope: &Scope,
        due_at: Timestamp,
        data: Data,
    ) {
        // A wait counted from an earlier moment (the win-backs of an order
        // an earlier one left, re-anchored when the later is cancelled) may
        // have run out already: then the email falls due now.
        let due_at = due_at.max(self.at);
        let email = self.email(rule, order_id, scope, due_at, data);
        self.commands.push(Command::Schedule(email));
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        rule: &JourneyRule,
        order_id: &str,
        scope: &Scope,
        at: Timestamp,
        data: Data,
        verdict: Verdict,
        reason: String,
    ) {
        let email = self.email(rule, order_id, scope, later(at, signed(rule.delay)), data);
        self.commands.push(Command::Decide {
            email,
            verdict,
            reason,
        });
    }

    fn cancel(&mut self, order_id: &str, templates: Option<Vec<String>>, reason: String) {
        self.commands.push(Command::Cancel {
            selector: Selector {
                customer_id: self.customer_id.to_owned(),
                order_id: order_id.to_owned(),
                templates,
            },
            reason,
        });
    }
}

/// The part of an email's key after the customer and the template: what
/// makes the email unique among that customer's emails of that template
/// (an order, a shipment, a shipment's new estimated delivery, a return...).
/// Built from escaped parts, so that distinct ids never make one key.
#[derive(Debug, Clone)]
struct Scope(String);

impl Scope {
    /// One id: an order, a shipment, a return, a refund.
    fn of(id: &str) -> Scope {
        Scope(key_part(id, SCOPE_SEPARATORS).into_owned())
    }

    /// A shipment's delay notice for one new estimated delivery.
    fn delayed(shipment_id: &str, eta: Eta) -> Scope {
        Scope(format!("{}@{eta}", key_part(shipment_id, SCOPE_SEPARATORS)))
    }

    /// The win-backs of `anchor` again, after the order that had cancelled
    /// them was cancelled itself.
    fn reanchored(anchor: &str, cancelled: &str) -> Scope {
        Scope(format!(
            "{}~{}",
            key_part(anchor, SCOPE_SEPARATORS),
            key_part(cancelled, SCOPE_SEPARATORS)
        ))
    }
}

/// What joins the parts of a scope.
const SCOPE_SEPARATORS: &[char] = &['@', '~'];

/// `part` with `%`, `/` (which separates a key's parts) and `more`
/// percent-encoded. Ids without them, nearly all, are their own key part,
/// so keys (and the `Message-ID`s that derive from them) stay readable.
pub fn key_part<'a>(part: &'a str, more: &[char]) -> std::borrow::Cow<'a, str> {
    let special = |c: char| c == '%' || c == '/' || more.contains(&c);
    if !part.contains(special) {
        return std::borrow::Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        if special(c) {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A bug on demand, for the tests of what catches one: an event with this
/// id, or a customer with this name, makes the step or the template data
/// panic.
#[cfg(test)]
pub const PANIC_FOR_TESTS: &str = "panic for tests";

#[cfg(test)]
fn panic_for_tests(value: &str) {
    assert_ne!(value, PANIC_FOR_TESTS, "asked to panic");
}

/// A configured duration as jiff's, saturating.
fn signed(d: std::time::Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `at + d`, saturating at the ends of time. The decoder bounds event times
/// and the config bounds durations, so this never saturates on what they
/// let in; a state written before those bounds (or a bug) then schedules
/// an email that never falls due instead of stopping the worker.
pub fn later(at: Timestamp, d: SignedDuration) -> Timestamp {
    at.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// The template data of an email about an order and nothing else.
fn order_data(j: &Journey, order_id: &str) -> Data {
    Data::new(json!({ "order": order_json(j, order_id) }))
}

/// The `order` object of the template data: what we know of the order.
/// A parcel as the templates see it.
fn shipment_json(id: &str, note: &ShipmentNote, estimated_delivery: Option<Eta>) -> Value {
    json!({
        "id": id,
        "carrier": note.carrier,
        "tracking_number": note.tracking_number,
        "tracking_url": note.tracking_url,
        "estimated_delivery": estimated_delivery.map(|t| t.to_string()),
    })
}

fn order_json(j: &Journey, order_id: &str) -> Value {
    let Some(o) = j.orders.get(order_id).filter(|o| o.placed_at.is_some()) else {
        return json!({
            "id": order_id, "total": Value::Null, "currency": Value::Null,
            "placed_at": Value::Null, "items": [],
        });
    };
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            // Bounded by the decoder; `null` rather than a panic on a state
            // written before the bounds. An item sent without a price (or
            // with one the decoder dropped) shows none.
            let line_total = i
                .unit_price
                .and_then(|p| p.checked_mul(rust_decimal::Decimal::from(i.quantity)));
            json!({
                "sku": i.sku, "name": i.name, "quantity": i.quantity,
                "unit_price": i.unit_price.map(|p| p.to_string()),
                "line_total": line_total.map(|t| t.to_string()),
            })
        })
        .collect();
    json!({
        "id": order_id,
        "total": o.total.map(|t| t.to_string()),
        "currency": o.currency,
        "placed_at": o.placed_at.map(|t| t.to_string()),
        "items": items,
    })
}

fn return_items_json(items: &[Item]) -> Vec<Value> {
    items
        .iter()
        .map(|i| json!({"sku": i.sku, "name": i.name, "quantity": i.quantity}))
        .collect()
}

#[cfg(test)]
mod tests;
