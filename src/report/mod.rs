//! `aftercare report`: whether the emails keep customers, in the measures
//! the retention literature uses.
//!
//! Pure: [`compute`] takes every customer's order history and every sent
//! email (read from the store by the caller) and a period, and returns a
//! [`Report`]; `render` turns it into a table, JSON or a self-contained
//! HTML page with SVG charts. Money is never added across currencies: each
//! money figure is per currency.
//!
//! Definitions (the README says the same for the shop):
//! - an order *counts* when it was placed and not cancelled;
//! - a customer is *active* at a moment when they have an order that counts
//!   in the `active_window` (default 180 days) before it;
//! - S: active at the start of the period, E: active at its end, N: new
//!   customers (first order in the period); retention rate
//!   CRR = (E - N) / S x 100, churn rate = 100 - CRR;
//! - repeat purchase rate: customers with two or more orders in the period,
//!   of those with one; purchase frequency: orders per ordering customer;
//!   average order value: revenue / orders; lifetime value: AOV x
//!   frequency x expected lifespan, the lifespan being 1 / churn (in
//!   periods);
//! - an order is attributed to the last marketing email sent to the
//!   customer in the `attribution_window` (default 5 days) before it (last
//!   touch); an email converted if an order was attributed to it.
//!   Transactional emails are counted as sent, never credited. Conversion rates carry a
//!   95 % Wilson interval; A/B variants are compared with a two-proportion
//!   z-test.

pub mod render;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::Segment;

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
}

/// A customer's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: String,
    pub orders: Vec<Order>,
    /// The customer's segment at the end of the period.
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
}

/// What the report covers and how it counts.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// N: first order within the period.
    pub new_customers: u64,
    /// E: active at the end.
    pub active_at_end: u64,
    /// (E - N) / S x 100; `null` without S.
    pub retention_rate: Option<f64>,
    pub churn_rate: Option<f64>,
    /// Customers who ordered in the period.
    pub ordering_customers: u64,
    pub orders: u64,
    pub repeat_purchase_rate: Option<f64>,
    pub purchase_frequency: Option<f64>,
    /// Per currency.
    pub money: BTreeMap<String, Money>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Money {
    pub orders: u64,
    pub revenue: Decimal,
    pub average_order_value: Decimal,
    /// AOV x purchase frequency x lifespan; `null` without churn.
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
    pub customers: Retention,
    pub segments: BTreeMap<String, Retention>,
    pub emails: Vec<EmailResult>,
    pub ab_tests: Vec<AbTest>,
    pub returns: Returns,
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

fn in_period(t: Timestamp, s: &Settings) -> bool {
    s.from <= t && t < s.to
}

fn retention<'a>(customers: impl Iterator<Item = &'a Customer>, s: &Settings) -> Retention {
    let mut r = Retention::default();
    let mut per_customer_orders = Vec::new();
    for c in customers {
        if active(c, s.from, s.active_window) {
            r.active_at_start += 1;
        }
        if active(c, s.to, s.active_window) {
            r.active_at_end += 1;
        }
        let first = counting(c).map(|o| o.placed_at).min();
        if first.is_some_and(|f| in_period(f, s)) {
            r.new_customers += 1;
        }
        let orders: Vec<&Order> = counting(c).filter(|o| in_period(o.placed_at, s)).collect();
        if !orders.is_empty() {
            per_customer_orders.push(orders.len() as u64);
        }
        for o in orders {
            let m = r.money.entry(o.currency.clone()).or_default();
            m.orders += 1;
            m.revenue = m.revenue.saturating_add(o.total);
        }
    }
    r.ordering_customers = per_customer_orders.len() as u64;
    r.orders = per_customer_orders.iter().sum();
    let (s_, e, n) = (
        r.active_at_start as f64,
        r.active_at_end as f64,
        r.new_customers as f64,
    );
    r.retention_rate = percent(e - n, s_);
    r.churn_rate = r.retention_rate.map(|crr| round2(100.0 - crr));
    let repeat = per_customer_orders.iter().filter(|n| **n >= 2).count() as f64;
    r.repeat_purchase_rate = percent(repeat, r.ordering_customers as f64);
    r.purchase_frequency =
        (r.ordering_customers > 0).then(|| round2(r.orders as f64 / r.ordering_customers as f64));
    let frequency = Decimal::from(r.orders) / Decimal::from(r.ordering_customers.max(1));
    let lifespan = r
        .churn_rate
        .filter(|c| *c > 0.0)
        .and_then(|c| Decimal::try_from(100.0 / c).ok());
    for m in r.money.values_mut() {
        m.average_order_value = (m.revenue / Decimal::from(m.orders.max(1))).round_dp(2);
        // `None` rather than a panic where the product overflows (amounts
        // stored before the decoder bounded them).
        m.lifetime_value = lifespan.and_then(|l| {
            Some(
                m.average_order_value
                    .checked_mul(frequency)?
                    .checked_mul(l)?
                    .round_dp(2),
            )
        });
    }
    r
}

/// The 95 % Wilson score interval of `k` successes in `n`, in %.
fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    Some((
        round2((centre - half).max(0.0) * 100.0),
        round2((centre + half).min(1.0) * 100.0),
    ))
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
pub fn compute(customers: &[Customer], emails: &[SentEmail], settings: &Settings) -> Report {
    let s = settings;
    let mut segments: BTreeMap<String, Retention> = BTreeMap::new();
    let mut by_segment: BTreeMap<Segment, Vec<&Customer>> = BTreeMap::new();
    for c in customers {
        by_segment.entry(c.segment).or_default().push(c);
    }
    for (segment, members) in by_segment {
        segments.insert(
            segment.as_str().to_owned(),
            retention(members.into_iter(), s),
        );
    }

    // Last touch: each order in the period to the latest email before it,
    // within the attribution window.
    let mut sent_by_customer: BTreeMap<&str, Vec<&SentEmail>> = BTreeMap::new();
    for e in emails.iter().filter(|e| e.marketing && in_period(e.at, s)) {
        sent_by_customer.entry(&e.customer_id).or_default().push(e);
    }
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
        for o in counting(c).filter(|o| in_period(o.placed_at, s)) {
            let touch = sent
                .iter()
                .filter(|e| {
                    e.at < o.placed_at && o.placed_at.duration_since(e.at) <= s.attribution_window
                })
                .max_by_key(|e| e.at);
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
    let marketing: std::collections::BTreeSet<EmailKey> =
        emails.iter().filter(|e| e.marketing).map(key).collect();
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
        customers: retention(customers.iter(), s),
        segments,
        emails,
        ab_tests,
        returns,
    }
}

#[cfg(test)]
mod tests;
