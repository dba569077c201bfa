//! `aftercare report`: whether the emails keep customers, in the measures
//! the retention literature uses.
//!
//! Pure: [`compute`] takes every customer's order history and every sent
//! email (read from the store by the caller) and a period, and returns a
//! [`Report`]; `render` turns it into a table, JSON or a self-contained
//! HTML page with SVG charts. Money is never added across currencies: each
//! money figure is per currency.
//!
//! Definitions (the README says the same for the shop, with a worked
//! example of each):
//! - an order *counts* when it was placed and not cancelled;
//! - a customer is *active* at a moment when they have an order that counts
//!   in the `active_window` (default 180 days) before it;
//! - S: active at the start of the period; of them, K (kept) are still
//!   active at its end and L (lost) are not; N: new customers (first order
//!   in the period) and R: won back (not active at the start, an order
//!   before the period and one in it), both counted when active at the
//!   end; E: active at the end, so E = K + N + R;
//! - retention rate CRR = K / S x 100 = (E - N - R) / S x 100; churn rate
//!   = L / S x 100 = 100 - CRR;
//! - repeat purchase rate: customers with two or more orders in the period,
//!   of those with one; purchase frequency: orders per ordering customer
//!   (per currency for money figures); average order value: gross revenue
//!   / orders; lifetime value: AOV x frequency x expected lifespan, the
//!   lifespan being S / L periods, unrounded until shown;
//! - gross revenue: totals of the orders in the period that count; refunds:
//!   refunds issued in the period; net revenue: gross - refunds;
//! - an order is attributed to the last marketing email sent to the
//!   customer in the `attribution_window` (default 5 days) before it (last
//!   touch); an email sent in the period converted if an order was
//!   attributed to it, including an order placed after the period's end
//!   within the window. Transactional emails are counted as sent, never
//!   credited. Conversion rates carry a 95 % Wilson interval; A/B variants
//!   are compared with a two-proportion z-test;
//! - cohorts: customers by the month of their first order that counts, and
//!   the share of them ordering again in each later month ([`cohorts`]);
//! - time between orders: the gaps the period's orders closed, all
//!   customers and per segment ([`gaps`]).

pub mod as_of;
pub mod cohorts;
pub mod gaps;
pub mod holdout;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::journey::Segment;

/// One order, as the report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: String,
    pub placed_at: Timestamp,
    pub total: Decimal,
    pub currency: String,
    pub cancelled: bool,
    /// Return requests: when, and the reason given.
    pub returns: Vec<(Timestamp, Option<String>)>,
    /// Refunds issued on the order.
    pub refunds: Vec<Refund>,
}

/// Money given back on an order.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub at: Timestamp,
    pub amount: Decimal,
    /// Its own: a refund says its currency, as an order does.
    pub currency: String,
}

/// A customer's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    pub orders: Vec<Order>,
    /// The customer's segment at the end of the period (see [`as_of`]).
    pub segment: Segment,
}

/// An email that went out.
#[derive(Debug, Clone, PartialEq)]
pub struct SentEmail {
    pub customer_id: String,
    pub template: String,
    /// Only marketing emails are credited with orders: a confirmation or a
    /// shipping notice does not bring a customer back.
    pub marketing: bool,
    pub variant: Option<String>,
    /// When it went out (its fire time, in event time).
    pub at: Timestamp,
    /// In its rule's holdout group: never sent, counted only against those
    /// sent (see [`holdout`]), neither sent nor credited.
    pub held_out: bool,
}

/// What the report covers and how it counts.
#[derive(Debug, Clone)]
pub struct Scope {
    pub from: Timestamp,
    pub to: Timestamp,
    pub active_window: SignedDuration,
    pub attribution_window: SignedDuration,
}

/// Customer counts and rates for a group of customers (all, a segment).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Retention {
    /// S: active at the start.
    pub active_at_start: u64,
    /// K: of S, still active at the end.
    pub kept: u64,
    /// L: of S, no longer active at the end (S = K + L).
    pub lost: u64,
    /// N: first order within the period, active at the end.
    pub new_customers: u64,
    /// R: won back: not active at the start, an order before the period
    /// and one in it, active at the end.
    pub won_back: u64,
    /// E: active at the end (E = K + N + R).
    pub active_at_end: u64,
    /// K / S x 100, the same as (E - N - R) / S x 100; `null` without S.
    pub retention_rate: Option<f64>,
    /// L / S x 100; `null` without S.
    pub churn_rate: Option<f64>,
    /// Customers who ordered in the period.
    pub ordering_customers: u64,
    pub orders: u64,
    pub repeat_purchase_rate: Option<f64>,
    pub purchase_frequency: Option<f64>,
    /// Per currency.
    pub money: BTreeMap<String, Money>,
}

/// The money figures of one currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Money {
    /// Orders in the period in this currency, and the customers who placed
    /// them.
    pub orders: u64,
    pub customers: u64,
    /// Gross: the totals of those orders.
    pub revenue: Decimal,
    /// Refunds issued in the period, in this currency.
    pub refunds: Decimal,
    /// Gross revenue - refunds.
    pub net_revenue: Decimal,
    /// Gross revenue / orders, to two decimals.
    pub average_order_value: Decimal,
    /// Orders / customers of this currency.
    pub purchase_frequency: Option<f64>,
    /// AOV x purchase frequency x S / L (lifespan in periods), from the
    /// unrounded figures, to two decimals; `null` without churn.
    pub lifetime_value: Option<Decimal>,
}

/// How one template (or one variant of it) did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EmailResult {
    pub template: String,
    pub variant: Option<String>,
    pub sent: u64,
    /// Emails that got at least one order attributed.
    pub converted: u64,
    pub attributed_orders: u64,
    pub revenue: BTreeMap<String, Decimal>,
    /// converted / sent x 100, and its 95 % Wilson interval.
    pub conversion_rate: Option<f64>,
    pub conversion_low: Option<f64>,
    pub conversion_high: Option<f64>,
}

/// The outcome of one A/B test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbTest {
    pub template: String,
    /// The variant with the best conversion rate.
    pub leader: String,
    /// The one it is compared with (the second best).
    pub runner_up: String,
    /// How sure the leader truly converts better (one-sided z-test), %.
    pub confidence: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Returns {
    /// Orders in the period that count, and those with a return request.
    pub orders: u64,
    pub returned_orders: u64,
    pub return_rate: Option<f64>,
    /// Return requests in the period by reason, most frequent first.
    pub reasons: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub from: Timestamp,
    pub to: Timestamp,
    pub active_window_days: f64,
    pub attribution_window_days: f64,
    /// Emails sent in the period are judged on orders up to here: `to` plus
    /// the attribution window. A report run before then sees the last
    /// emails' conversions only so far.
    pub attribution_until: Timestamp,
    pub customers: Retention,
    pub segments: BTreeMap<String, Retention>,
    pub emails: Vec<EmailResult>,
    pub ab_tests: Vec<AbTest>,
    pub returns: Returns,
    /// The templates with a holdout group in the period: senders against
    /// holdout, and the lift.
    pub holdouts: Vec<holdout::Holdout>,
    /// Retention by month of first order: the twelve months ending with the
    /// period's last (all of the period's months when it is longer, up to
    /// ten years), the oldest first.
    pub cohorts: Vec<cohorts::Cohort>,
    /// Time between orders of all customers...
    pub time_between_orders: gaps::Gaps,
    /// ...and of each segment (as of the period's end), every segment of the
    /// `segments` figures.
    pub time_between_orders_by_segment: BTreeMap<String, gaps::Gaps>,
}

/// A percentage with two decimals: what people read, and what a test can
/// compare exactly.
fn percent(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| round2(part / whole * 100.0))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn counting(c: &Customer) -> impl Iterator<Item = &Order> {
    c.orders.iter().filter(|o| !o.cancelled)
}

fn active(c: &Customer, at: Timestamp, window: SignedDuration) -> bool {
    counting(c).any(|o| o.placed_at < at && at.duration_since(o.placed_at) <= window)
}

fn in_period(t: Timestamp, s: &Scope) -> bool {
    s.from <= t && t < s.to
}

/// `to` plus the attribution window, or the end of time.
fn attribution_until(s: &Scope) -> Timestamp {
    s.to.checked_add(s.attribution_window)
        .unwrap_or(Timestamp::MAX)
}

fn retention<'a>(customers: impl Iterator<Item = &'a Customer>, s: &Scope) -> Retention {
    let mut r = Retention::default();
    let mut per_customer_orders = Vec::new();
    // Customers of each currency who ordered in the period.
    let mut currency_customers: BTreeMap<&str, u64> = BTreeMap::new();
    for c in customers {
        let at_start = active(c, s.from, s.active_window);
        let at_end = active(c, s.to, s.active_window);
        let before = counting(c).any(|o| o.placed_at < s.from);
        let orders: Vec<&Order> = counting(c).filter(|o| in_period(o.placed_at, s)).collect();
        match (at_start, at_end) {
            (true, true) => r.kept += 1,
            (true, false) => r.lost += 1,
            (false, true) if before => r.won_back += 1,
            (false, true) => r.new_customers += 1,
            (false, false) => {}
        }
        if !orders.is_empty() {
            per_customer_orders.push(orders.len() as u64);
        }
        let currencies: BTreeSet<&str> = orders.iter().map(|o| o.currency.as_str()).collect();
        for currency in currencies {
            *currency_customers.entry(currency).or_default() += 1;
        }
        for o in orders {
            let m = r.money.entry(o.currency.clone()).or_default();
            m.orders += 1;
            m.revenue = m.revenue.saturating_add(o.total);
        }
        // Refunds of the period, whatever the order's date (a refund in
        // March of a December order is March's money going out).
        for f in c.orders.iter().flat_map(|o| &o.refunds) {
            if in_period(f.at, s) {
                let m = r.money.entry(f.currency.clone()).or_default();
                m.refunds = m.refunds.saturating_add(f.amount);
            }
        }
    }
    r.active_at_start = r.kept + r.lost;
    r.active_at_end = r.kept + r.new_customers + r.won_back;
    r.retention_rate = percent(r.kept as f64, r.active_at_start as f64);
    r.churn_rate = percent(r.lost as f64, r.active_at_start as f64);
    r.ordering_customers = per_customer_orders.len() as u64;
    r.orders = per_customer_orders.iter().sum();
    let repeat = per_customer_orders.iter().filter(|n| **n >= 2).count() as f64;
    r.repeat_purchase_rate = percent(repeat, r.ordering_customers as f64);
    r.purchase_frequency =
        (r.ordering_customers > 0).then(|| round2(r.orders as f64 / r.ordering_customers as f64));
    // Expected lifespan in periods: 1 / churn = S / L.
    let lifespan = (r.lost > 0).then(|| Decimal::from(r.active_at_start) / Decimal::from(r.lost));
    for (currency, m) in r.money.iter_mut() {
        m.customers = currency_customers
            .get(currency.as_str())
            .copied()
            .unwrap_or(0);
        m.net_revenue = m.revenue.saturating_sub(m.refunds);
        if m.orders == 0 {
            // Refunds only, no order in this currency.
            continue;
        }
        let aov = m.revenue / Decimal::from(m.orders);
        m.average_order_value = aov.round_dp(2);
        m.purchase_frequency = Some(round2(m.orders as f64 / m.customers.max(1) as f64));
        let frequency = Decimal::from(m.orders) / Decimal::from(m.customers.max(1));
        // `None` rather than a panic where the product overflows (amounts
        // stored before the decoder bounded them).
        m.lifetime_value =
            lifespan.and_then(|l| Some(aov.checked_mul(frequency)?.checked_mul(l)?.round_dp(2)));
    }
    r
}

/// The 95 % Wilson score interval of `k` successes in `n`, as fractions.
fn wilson_bounds(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The same in %, to two decimals.
fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    let (low, high) = wilson_bounds(k, n)?;
    Some((round2(low * 100.0), round2(high * 100.0)))
}

/// The standard normal distribution function.
fn phi(z: f64) -> f64 {
    0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
}

/// How sure `a` converts better than `b`: one-sided two-proportion z-test
/// (pooled), in %.
fn confidence(a: &EmailResult, b: &EmailResult) -> f64 {
    let (n1, n2) = (a.sent as f64, b.sent as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return 50.0;
    }
    let (p1, p2) = (a.converted as f64 / n1, b.converted as f64 / n2);
    let pooled = (a.converted + b.converted) as f64 / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return 50.0;
    }
    round2(phi((p1 - p2) / se) * 100.0)
}

/// A template and variant.
type EmailKey = (String, Option<String>);

/// Computes the report of `customers` and `emails` over `settings`.
pub fn compute(customers: &[Customer], all_emails: &[SentEmail], settings: &Scope) -> Report {
    let s = settings;
    let holdouts = holdout::holdouts(customers, all_emails, s);
    // A held-out email was never in the customer's inbox: no touch, no
    // send.
    let emails: Vec<&SentEmail> = all_emails.iter().filter(|e| !e.held_out).collect();
    let mut segments: BTreeMap<String, Retention> = BTreeMap::new();
    let mut segment_gaps: BTreeMap<String, gaps::Gaps> = BTreeMap::new();
    let mut by_segment: BTreeMap<Segment, Vec<&Customer>> = BTreeMap::new();
    for c in customers {
        by_segment.entry(c.segment).or_default().push(c);
    }
    for (segment, members) in by_segment {
        let name = segment.as_str().to_owned();
        segment_gaps.insert(name.clone(), gaps::gaps(members.iter().copied(), s));
        segments.insert(name, retention(members.into_iter(), s));
    }

    // Last touch: each order to the latest marketing email before it within
    // the attribution window, whenever that email went out; only emails
    // sent in the period are credited, on orders up to the attribution
    // window past its end, so that the last days' emails have their full
    // window too.
    let mut sent_by_customer: BTreeMap<&str, Vec<&SentEmail>> = BTreeMap::new();
    for e in emails.iter().filter(|e| e.marketing) {
        sent_by_customer.entry(&e.customer_id).or_default().push(*e);
    }
    let until = attribution_until(s);
    let key = |e: &SentEmail| -> EmailKey { (e.template.clone(), e.variant.clone()) };
    let mut results: BTreeMap<EmailKey, EmailResult> = BTreeMap::new();
    for e in emails.iter().filter(|e| in_period(e.at, s)) {
        results
            .entry(key(e))
            .or_insert_with(|| EmailResult {
                template: e.template.clone(),
                variant: e.variant.clone(),
                ..EmailResult::default()
            })
            .sent += 1;
    }
    // The emails (customer, time) that got an order, by template/variant.
    let mut converted: BTreeMap<EmailKey, Vec<(&str, Timestamp)>> = BTreeMap::new();
    for c in customers {
        let Some(sent) = sent_by_customer.get(c.id.as_str()) else {
            continue;
        };
        for o in counting(c).filter(|o| s.from <= o.placed_at && o.placed_at < until) {
            let touch = sent
                .iter()
                .filter(|e| {
                    e.at < o.placed_at && o.placed_at.duration_since(e.at) <= s.attribution_window
                })
                .max_by_key(|e| e.at)
                .filter(|e| in_period(e.at, s));
            if let Some(e) = touch {
                let r = results.get_mut(&key(e)).expect("counted above");
                r.attributed_orders += 1;
                let revenue: &mut Decimal = r.revenue.entry(o.currency.clone()).or_default();
                *revenue = revenue.saturating_add(o.total);
                let emails = converted.entry(key(e)).or_default();
                if !emails.contains(&(e.customer_id.as_str(), e.at)) {
                    emails.push((e.customer_id.as_str(), e.at));
                }
            }
        }
    }
    let marketing: BTreeSet<EmailKey> = emails
        .iter()
        .filter(|e| e.marketing)
        .map(|e| key(e))
        .collect();
    for (k, r) in results.iter_mut() {
        if !marketing.contains(k) {
            continue;
        }
        r.converted = converted.get(k).map_or(0, |v| v.len() as u64);
        r.conversion_rate = percent(r.converted as f64, r.sent as f64);
        if let Some((low, high)) = wilson(r.converted, r.sent) {
            r.conversion_low = Some(low);
            r.conversion_high = Some(high);
        }
    }
    let emails: Vec<EmailResult> = results.into_values().collect();

    let mut ab_tests = Vec::new();
    let mut by_template: BTreeMap<&str, Vec<&EmailResult>> = BTreeMap::new();
    for r in emails.iter().filter(|r| r.variant.is_some()) {
        by_template.entry(&r.template).or_default().push(r);
    }
    for (template, mut variants) in by_template {
        if variants.len() < 2 {
            continue;
        }
        variants.sort_by(|a, b| {
            b.conversion_rate
                .partial_cmp(&a.conversion_rate)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let (leader, runner_up) = (variants[0], variants[1]);
        ab_tests.push(AbTest {
            template: template.to_owned(),
            leader: leader.variant.clone().unwrap_or_default(),
            runner_up: runner_up.variant.clone().unwrap_or_default(),
            confidence: confidence(leader, runner_up),
        });
    }

    let mut returns = Returns::default();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for c in customers {
        for o in counting(c).filter(|o| in_period(o.placed_at, s)) {
            returns.orders += 1;
            if !o.returns.is_empty() {
                returns.returned_orders += 1;
            }
        }
        for o in &c.orders {
            for (at, reason) in &o.returns {
                if in_period(*at, s) {
                    let reason = reason.clone().unwrap_or_else(|| "(no reason given)".into());
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    returns.return_rate = percent(returns.returned_orders as f64, returns.orders as f64);
    returns.reasons = reasons.into_iter().collect();
    returns
        .reasons
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    Report {
        from: s.from,
        to: s.to,
        active_window_days: s.active_window.as_secs_f64() / 86_400.0,
        attribution_window_days: s.attribution_window.as_secs_f64() / 86_400.0,
        attribution_until: until,
        customers: retention(customers.iter(), s),
        segments,
        emails,
        ab_tests,
        returns,
        holdouts,
        cohorts: cohorts::cohorts(customers, s),
        time_between_orders: gaps::gaps(customers.iter(), s),
        time_between_orders_by_segment: segment_gaps,
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
