//! Whether an email that fell due goes out: the decision the pipeline
//! takes for each email it fires, as a function of what it read.
//!
//! Pure, like the rest of the journey core: the store's answers (is the
//! address bounced, which of the customer's emails are pending with this
//! one) and the machine's clock are parameters, so each case can be a row
//! of a table test. In order, an email is not sent when it is too late for it
//! (before go-live, past its rule's `expires_after`); it waits a while for
//! an address or an order not known yet; the address bounced; the journey
//! no longer wants it ([`Rulebook::recheck`]); a marketing email gives way
//! to a later one of its series or to a more relevant one due with it; the
//! timing policy holds it ([`Rulebook::timing`]); its customer is in the
//! rule's holdout group. Otherwise it goes out.

use jiff::{SignedDuration, Timestamp};

use super::late::{Clock, Lateness};
use super::policy::{Moment, Timing};
use super::{Due, EmailClass, HOLDOUT_VARIANT, Journey, Rulebook, Verdict, later};

/// An email due for a customer whose address, or whose order, is not known
/// yet is tried again this much later...
pub const ADDRESS_RETRY: SignedDuration = SignedDuration::from_mins(1);
/// ...until this long after it was due; then it ends suppressed.
pub const ADDRESS_WAIT: SignedDuration = SignedDuration::from_hours(1);

/// The reason of an email of a rule's holdout group.
pub const HELD_OUT: &str = "held out: the rule's holdout group";

/// A pending email as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueEmail<'a> {
    /// Creation order; ties in due time keep it.
    pub id: i64,
    pub customer_id: &'a str,
    pub template: &'a str,
    pub class: EmailClass,
    pub order_id: Option<&'a str>,
    /// The A/B variant the customer gets, when the rule has variants.
    pub variant: Option<&'a str>,
    /// When its rule made it due.
    pub due_at: Timestamp,
    /// When it is looked at: `due_at`, or later if it was deferred or
    /// waits for a retry.
    pub fire_at: Timestamp,
    /// Approved before, and back after a failed delivery: it is not held
    /// to the cap again, and on the events' clock its lateness is not
    /// judged again.
    pub retry: bool,
}

impl DueEmail<'_> {
    /// The email as the journey compares it with the customer's others.
    pub fn due(&self) -> Due<'_> {
        Due {
            id: self.id,
            template: self.template,
            order_id: self.order_id,
            due_at: self.due_at,
        }
    }
}

/// What the store said about the email's customer when it fell due.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The customer's journey as it is now.
    pub journey: &'a Journey,
    /// Whether there is an address to send to.
    pub has_address: bool,
    /// Whether that address is on the suppression list (it bounced).
    pub bounced: bool,
    /// The customer's pending emails falling due by now, this one among
    /// them or not; only read when [`Rulebook::needs_pending`] says so.
    pub pending: &'a [DueEmail<'a>],
}

/// One round of firing: the emails due by `until`, decided with the
/// machine's clock reading `now`, their lateness measured by `lateness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub until: Timestamp,
    pub now: Timestamp,
    pub lateness: Lateness,
}

impl Round {
    /// The real time `email` is decided at, and the frequency cap counts
    /// from when it goes out (or is held out).
    pub fn decided_at(&self, email: &DueEmail<'_>) -> Timestamp {
        self.lateness.clock.decided_at(email.fire_at, self.now)
    }
}

/// What becomes of an email that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It goes out: approve it with its template data.
    Send,
    /// It ends without going out: cancelled, suppressed, or held out (the
    /// frequency cap counts a held-out email as though it went).
    NotSent { verdict: Verdict, reason: String },
    /// It waits for its address or its order, and is looked at again at
    /// `fire_at`; the rest of the round goes on.
    Retry {
        fire_at: Timestamp,
        reason: &'static str,
    },
    /// The timing policy, or a more relevant email of the customer, holds
    /// it until `fire_at`. The rest of the round may fall due after that:
    /// take it again in time order, or a later email would go first and
    /// hold this one back under the cap.
    Defer { fire_at: Timestamp, reason: String },
}

impl Fate {
    fn not_sent(verdict: Verdict, reason: impl Into<String>) -> Fate {
        Fate::NotSent {
            verdict,
            reason: reason.into(),
        }
    }
}

impl Rulebook {
    /// Whether the decision on `email` compares it with the customer's
    /// other pending emails, so that the caller must read them into
    /// [`Facts::pending`]: a marketing email on its first attempt, under a
    /// frequency cap, on the machine's clock. In a
    /// plan each email is decided at its own time (plus a lag the same for
    /// all): none is overdue together with another.
    pub fn needs_pending(&self, email: &DueEmail<'_>, lateness: &Lateness) -> bool {
        email.class == EmailClass::Marketing
            && !email.retry
            && self.take_turns()
            && lateness.clock == Clock::Wall
    }

    /// Whether `email`, fired in `round`, goes out now (see the module's
    /// documentation for the order of the checks).
    pub fn decide(&self, email: &DueEmail<'_>, facts: &Facts<'_>, round: &Round) -> Fate {
        let journey = facts.journey;
        // The real time it would go out at: too late for it, and nothing
        // else matters. A retry waits on the machine's clock: on the
        // events' clock its lateness is not the events' (and a plan has
        // none).
        let at = round.decided_at(email);
        let expiry = self.expiry(email.template, email.class);
        let judged = round.lateness.clock == Clock::Wall || !email.retry;
        if let Some(reason) = round
            .lateness
            .too_late(email.due_at, at, expiry)
            .filter(|_| judged)
        {
            return Fate::not_sent(Verdict::Suppressed, reason);
        }
        // The events of a customer come on three topics: a shipment's can
        // be applied before the order that brings the address, or the
        // order itself. Wait for them a while; an email about an order
        // never seen does not go out.
        let missing = match email.order_id {
            _ if !facts.has_address => Some(("no address yet", "no address".to_owned())),
            Some(order) if !placed(journey, order) => {
                Some(("order not seen yet", format!("order {order} never seen")))
            }
            _ => None,
        };
        if let Some((waiting, gave_up)) = missing {
            let retry = later(round.until.max(email.fire_at), ADDRESS_RETRY);
            if retry <= later(email.due_at, ADDRESS_WAIT) {
                return Fate::Retry {
                    fire_at: retry,
                    reason: waiting,
                };
            }
            return Fate::not_sent(Verdict::Suppressed, gave_up);
        }
        if facts.bounced {
            return Fate::not_sent(Verdict::Suppressed, "address bounced");
        }
        if let Some((verdict, reason)) = self.recheck(journey, email.template, email.order_id) {
            return Fate::not_sent(verdict, reason);
        }
        // Among the customer's marketing emails due with it, the most
        // relevant goes first; then the cap and quiet hours, at the real
        // time it is decided at. A retry holds the place it took under the
        // cap already.
        if self.needs_pending(email, &round.lateness)
            && let Some(fate) = self.turn(email, journey, facts.pending)
        {
            return fate;
        }
        let moment = Moment {
            at,
            with_cap: !email.retry,
            hold_from: round.lateness.clock.hold_from(email.due_at, at),
        };
        match self.timing(
            journey,
            email.template,
            email.customer_id,
            email.due_at,
            moment,
        ) {
            Timing::Now => {}
            Timing::Skip { reason } => return Fate::not_sent(Verdict::Suppressed, reason),
            Timing::Defer { to, reason } => {
                return Fate::Defer {
                    fire_at: round.lateness.clock.fire_at_for(to),
                    reason,
                };
            }
        }
        // Everything a sent email passes, passed: its holdout group stops
        // here, as though it went.
        if email.variant == Some(HOLDOUT_VARIANT) {
            return Fate::not_sent(Verdict::HeldOut, HELD_OUT);
        }
        Fate::Send
    }

    /// Whether a marketing email that may go out by its own rules has its
    /// turn among the customer's marketing emails due with it (`None`: it
    /// has): every one overdue, even those a backlog has not reached yet
    /// (after an outage they would all go out in the same minute). A later
    /// email of the same win-back series makes it pointless; a more
    /// relevant one goes first, and this one is looked at again just after
    /// it, once the events up to it are applied: by then it went and the
    /// cap holds this one, or it did not and this one goes.
    fn turn(
        &self,
        email: &DueEmail<'_>,
        journey: &Journey,
        pending: &[DueEmail<'_>],
    ) -> Option<Fate> {
        // Only those not decided yet: one falling due earlier and still
        // pending is another worker's (a stream it reads, or held by its
        // transaction), and waiting for it could wait forever.
        let others: Vec<&DueEmail<'_>> = pending
            .iter()
            .filter(|o| {
                o.id != email.id
                    && o.class == EmailClass::Marketing
                    && (o.fire_at, o.id) > (email.fire_at, email.id)
            })
            .collect();
        let me = email.due();
        if let Some(later) = others.iter().find(|o| self.supersedes(&o.due(), &me)) {
            return Some(Fate::not_sent(
                Verdict::Cancelled,
                format!(
                    "superseded by {} (due {}), due with it",
                    later.template, later.due_at
                ),
            ));
        }
        let first = others
            .iter()
            .max_by_key(|o| self.relevance(journey, &o.due()))?;
        (self.relevance(journey, &first.due()) > self.relevance(journey, &me)).then(|| {
            Fate::Defer {
                fire_at: later(first.fire_at, SignedDuration::from_millis(1)),
                reason: format!("{} goes first", first.template),
            }
        })
    }
}

/// Whether the journey has seen `order_id` placed.
fn placed(journey: &Journey, order_id: &str) -> bool {
    journey
        .orders
        .get(order_id)
        .is_some_and(|o| o.placed_at.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::{OrderState, RulebookConfig};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The shipped rules and policy (a 20h frequency cap, quiet hours
    /// 21:00-08:00), with no jitter, so that a hold ends on the hour.
    fn journeys() -> Rulebook {
        let mut settings = RulebookConfig::shipped();
        settings.policy.quiet_hours.jitter = std::time::Duration::ZERO;
        Rulebook::from_config(settings)
    }

    /// Another pending email of the customer.
    #[derive(Clone)]
    struct Other {
        id: i64,
        template: &'static str,
        order: &'static str,
        due: &'static str,
    }

    /// One row: an email of Anna's falling due, what the store says, and
    /// the round it is fired in. [`Input::default`] is a marketing email
    /// about her delivered order `o-1`, fired a minute after it fell due in
    /// the day, on the machine's clock.
    #[derive(Clone)]
    struct Input {
        template: &'static str,
        order: Option<&'static str>,
        variant: Option<&'static str>,
        due: &'static str,
        fire: &'static str,
        retry: bool,
        journey: Journey,
        has_address: bool,
        bounced: bool,
        pending: Vec<Other>,
        now: &'static str,
        go_live: Option<&'static str>,
        clock: Clock,
    }

    impl Default for Input {
        fn default() -> Input {
            let mut journey = Journey::default();
            journey.profile.email = Some("anna@example.com".into());
            journey.profile.marketing_consent = true;
            journey.profile.timezone = Some("UTC".into());
            journey.orders.insert(
                "o-1".into(),
                OrderState {
                    placed_at: Some(t("2026-02-01T10:00:00Z")),
                    ..OrderState::default()
                },
            );
            journey.last_order = Some(("o-1".into(), t("2026-02-01T10:00:00Z")));
            Input {
                template: "delivery_followup",
                order: Some("o-1"),
                variant: None,
                due: "2026-02-05T10:00:00Z",
                fire: "2026-02-05T10:00:00Z",
                retry: false,
                journey,
                has_address: true,
                bounced: false,
                pending: Vec::new(),
                now: "2026-02-05T10:01:00Z",
                go_live: None,
                clock: Clock::Wall,
            }
        }
    }

    /// A second order of Anna's, `o-2`, placed on 3 February.
    fn second_order(j: &mut Journey) {
        let placed = t("2026-02-03T10:00:00Z");
        j.orders.insert(
            "o-2".into(),
            OrderState {
                placed_at: Some(placed),
                ..OrderState::default()
            },
        );
        j.last_order = Some(("o-2".into(), placed));
    }

    fn decide(journeys: &Rulebook, input: &Input) -> Fate {
        let class = |template: &str| journeys.rule(template).unwrap().class;
        let email = DueEmail {
            id: 1,
            customer_id: "c-1",
            template: input.template,
            class: class(input.template),
            order_id: input.order,
            variant: input.variant,
            due_at: t(input.due),
            fire_at: t(input.fire),
            retry: input.retry,
        };
        let pending: Vec<DueEmail<'_>> = input
            .pending
            .iter()
            .map(|o| DueEmail {
                id: o.id,
                customer_id: "c-1",
                template: o.template,
                class: class(o.template),
                order_id: Some(o.order),
                variant: None,
                due_at: t(o.due),
                fire_at: t(o.due),
                retry: false,
            })
            .collect();
        let facts = Facts {
            journey: &input.journey,
            has_address: input.has_address,
            bounced: input.bounced,
            pending: &pending,
        };
        let round = Round {
            until: t(input.now),
            now: t(input.now),
            lateness: Lateness {
                go_live: input.go_live.map(t),
                clock: input.clock,
            },
        };
        journeys.decide(&email, &facts, &round)
    }

    /// The default input's journey, changed by `change`.
    fn journey(change: impl FnOnce(&mut Journey)) -> Journey {
        let mut j = Input::default().journey;
        change(&mut j);
        j
    }

    fn not_sent(verdict: Verdict, reason: &str) -> Fate {
        Fate::not_sent(verdict, reason)
    }

    fn defer(fire_at: &str, reason: &str) -> Fate {
        Fate::Defer {
            fire_at: t(fire_at),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn what_becomes_of_an_email_that_fell_due() {
        use Verdict::{Cancelled, HeldOut, Suppressed};
        let journeys = journeys();
        let cases: Vec<(&str, Input, Fate)> = vec![
            (
                "a marketing email with consent, in the day, goes out",
                Input::default(),
                Fate::Send,
            ),
            (
                "a transactional email needs no consent",
                Input {
                    template: "order_confirmation",
                    due: "2026-02-01T10:00:00Z",
                    fire: "2026-02-01T10:00:00Z",
                    now: "2026-02-01T10:00:05Z",
                    journey: journey(|j| j.profile.marketing_consent = false),
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "a transactional email is not held by quiet hours",
                Input {
                    template: "shipping_update",
                    due: "2026-02-05T22:00:00Z",
                    fire: "2026-02-05T22:00:00Z",
                    now: "2026-02-05T22:00:05Z",
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "due before the shop went live",
                Input {
                    go_live: Some("2026-02-06T00:00:00Z"),
                    ..Input::default()
                },
                not_sent(Suppressed, "before go-live"),
            ),
            (
                "decided later than its expires_after on the machine's clock",
                Input {
                    now: "2026-02-09T10:00:00Z",
                    ..Input::default()
                },
                not_sent(
                    Suppressed,
                    "expired: 4days late, past its expires_after of 3days",
                ),
            ),
            (
                "a retry on the events' clock is not judged late again",
                Input {
                    fire: "2026-02-09T10:00:00Z",
                    now: "2026-02-09T10:00:00Z",
                    retry: true,
                    clock: Clock::EVENTS,
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "a retry on the machine's clock is",
                Input {
                    fire: "2026-02-09T10:00:00Z",
                    now: "2026-02-09T10:00:00Z",
                    retry: true,
                    ..Input::default()
                },
                not_sent(
                    Suppressed,
                    "expired: 4days late, past its expires_after of 3days",
                ),
            ),
            (
                "no address yet: looked at again in a minute",
                Input {
                    has_address: false,
                    ..Input::default()
                },
                Fate::Retry {
                    fire_at: t("2026-02-05T10:02:00Z"),
                    reason: "no address yet",
                },
            ),
            (
                "still no address an hour after it fell due",
                Input {
                    has_address: false,
                    fire: "2026-02-05T10:59:30Z",
                    now: "2026-02-05T10:59:30Z",
                    ..Input::default()
                },
                not_sent(Suppressed, "no address"),
            ),
            (
                "its order not seen yet: looked at again in a minute",
                Input {
                    order: Some("o-9"),
                    ..Input::default()
                },
                Fate::Retry {
                    fire_at: t("2026-02-05T10:02:00Z"),
                    reason: "order not seen yet",
                },
            ),
            (
                "its order never seen within the hour",
                Input {
                    order: Some("o-9"),
                    fire: "2026-02-05T11:00:00Z",
                    now: "2026-02-05T11:00:00Z",
                    ..Input::default()
                },
                not_sent(Suppressed, "order o-9 never seen"),
            ),
            (
                "the address bounced",
                Input {
                    bounced: true,
                    ..Input::default()
                },
                not_sent(Suppressed, "address bounced"),
            ),
            (
                "marketing without consent",
                Input {
                    journey: journey(|j| j.profile.marketing_consent = false),
                    ..Input::default()
                },
                not_sent(Suppressed, "no marketing consent"),
            ),
            (
                "marketing to a customer who unsubscribed",
                Input {
                    journey: journey(|j| j.profile.unsubscribed = true),
                    ..Input::default()
                },
                not_sent(Suppressed, "unsubscribed"),
            ),
            (
                "a follow-up after a return was requested",
                Input {
                    journey: journey(|j| j.orders.get_mut("o-1").unwrap().return_requested = true),
                    ..Input::default()
                },
                not_sent(Cancelled, "return requested for order o-1"),
            ),
            (
                "a win-back after a newer order",
                Input {
                    template: "win_back",
                    due: "2026-04-02T10:00:00Z",
                    fire: "2026-04-02T10:00:00Z",
                    now: "2026-04-02T10:01:00Z",
                    journey: journey(second_order),
                    ..Input::default()
                },
                not_sent(Cancelled, "new order o-2"),
            ),
            (
                "in the customer's quiet hours",
                Input {
                    due: "2026-02-05T22:00:00Z",
                    fire: "2026-02-05T22:00:00Z",
                    now: "2026-02-05T22:01:00Z",
                    ..Input::default()
                },
                defer("2026-02-06T08:00:00Z", "quiet hours 21:00-08:00 UTC"),
            ),
            (
                "under the frequency cap",
                Input {
                    journey: journey(|j| j.last_marketing_at = Some(t("2026-02-05T00:00:00Z"))),
                    ..Input::default()
                },
                defer(
                    "2026-02-05T20:00:00Z",
                    "frequency cap: one marketing email per 20h",
                ),
            ),
            (
                "a retry holds its place under the cap already",
                Input {
                    retry: true,
                    journey: journey(|j| j.last_marketing_at = Some(t("2026-02-05T09:00:00Z"))),
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "held by the cap and quiet hours past its expiry",
                Input {
                    due: "2026-02-03T06:00:00Z",
                    journey: journey(|j| j.last_marketing_at = Some(t("2026-02-05T09:00:00Z"))),
                    ..Input::default()
                },
                not_sent(
                    Suppressed,
                    "expired: frequency cap: one marketing email per 20h, quiet hours \
                     21:00-08:00 UTC holds it until 2026-02-06T08:00:00Z, 3days 2h late, \
                     past its expires_after of 3days",
                ),
            ),
            (
                "the customer is in the rule's holdout group",
                Input {
                    template: "review_request",
                    variant: Some(HOLDOUT_VARIANT),
                    ..Input::default()
                },
                not_sent(HeldOut, HELD_OUT),
            ),
            (
                "the holdout group waits for quiet hours like the senders",
                Input {
                    template: "review_request",
                    variant: Some(HOLDOUT_VARIANT),
                    due: "2026-02-05T22:00:00Z",
                    fire: "2026-02-05T22:00:00Z",
                    now: "2026-02-05T22:01:00Z",
                    ..Input::default()
                },
                defer("2026-02-06T08:00:00Z", "quiet hours 21:00-08:00 UTC"),
            ),
            (
                "a variant that sends goes out",
                Input {
                    template: "review_request",
                    variant: Some("b"),
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "the last win-back due with the first (a series re-anchored past \
                 its time by a cancelled order) makes it pointless",
                Input {
                    template: "win_back",
                    due: "2026-06-01T10:00:00Z",
                    fire: "2026-06-01T10:00:00Z",
                    now: "2026-06-01T10:01:00Z",
                    pending: vec![Other {
                        id: 2,
                        template: "win_back_final",
                        order: "o-1",
                        due: "2026-06-01T10:00:00Z",
                    }],
                    ..Input::default()
                },
                not_sent(
                    Cancelled,
                    "superseded by win_back_final (due 2026-06-01T10:00:00Z), due with it",
                ),
            ),
            (
                "an email about a newer order due with it goes first",
                Input {
                    template: "thank_you",
                    journey: journey(second_order),
                    pending: vec![Other {
                        id: 2,
                        template: "delivery_followup",
                        order: "o-2",
                        due: "2026-02-05T10:00:30Z",
                    }],
                    ..Input::default()
                },
                defer("2026-02-05T10:00:30.001Z", "delivery_followup goes first"),
            ),
            (
                "an email about an older order due with it does not",
                Input {
                    template: "thank_you",
                    order: Some("o-2"),
                    journey: journey(second_order),
                    pending: vec![Other {
                        id: 2,
                        template: "delivery_followup",
                        order: "o-1",
                        due: "2026-02-05T10:00:30Z",
                    }],
                    ..Input::default()
                },
                Fate::Send,
            ),
            (
                "on the events' clock emails take no turns",
                Input {
                    template: "thank_you",
                    now: "2026-02-05T10:00:00Z",
                    clock: Clock::EVENTS,
                    journey: journey(second_order),
                    pending: vec![Other {
                        id: 2,
                        template: "delivery_followup",
                        order: "o-2",
                        due: "2026-02-05T10:00:30Z",
                    }],
                    ..Input::default()
                },
                Fate::Send,
            ),
        ];
        for (name, input, expected) in cases {
            assert_eq!(decide(&journeys, &input), expected, "{name}");
        }
    }
}
