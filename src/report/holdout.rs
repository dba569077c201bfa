//! Did the emails cause the orders? Attribution cannot say: a customer
//! who got a win-back and ordered three days later may have ordered
//! anyway. A rule with a `holdout` variant keeps a share of its customers
//! out (decided like the others, never sent); comparing how often each
//! group ordered after the moment gives the email's own effect.
//!
//! Both groups are judged the same way, whatever other emails they got:
//! an email (sent or held out) in the period *ordered* when its customer
//! placed an order that counts within the attribution window after it
//! (orders past the period's end included, as for conversions). The lift
//! is the senders' rate minus the holdout's, in percentage points, with
//! its 95 % interval by Newcombe's hybrid score method (from each group's
//! Wilson interval), which holds for the small counts and rates near 0 a
//! holdout gives.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Customer, Scope, SentEmail, counting, in_period, percent, round2, wilson_bounds};

/// One template's senders against its holdout group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Holdout {
    pub template: String,
    /// Emails sent in the period (every variant that sends), and those
    /// followed by an order within the attribution window.
    pub sent: u64,
    pub sent_ordered: u64,
    /// sent_ordered / sent x 100.
    pub sent_rate: Option<f64>,
    /// Emails held out in the period, and those followed by an order.
    pub held_out: u64,
    pub held_out_ordered: u64,
    pub held_out_rate: Option<f64>,
    /// sent_rate - held_out_rate, percentage points; `null` when either
    /// group is empty.
    pub lift: Option<f64>,
    /// Its 95 % interval: above 0 throughout, the email brings orders.
    pub lift_low: Option<f64>,
    pub lift_high: Option<f64>,
}

impl Holdout {
    /// What the figures say, in words.
    pub fn verdict(&self) -> &'static str {
        match (self.lift_low, self.lift_high) {
            (Some(low), _) if low > 0.0 => "the email brings orders",
            (_, Some(high)) if high < 0.0 => "fewer orders with the email",
            (Some(_), Some(_)) => "no difference shown yet: keep the holdout running",
            _ => "not enough emails in one of the groups",
        }
    }
}

/// The holdout comparison of every template with emails held out in the
/// period.
pub fn holdouts(customers: &[Customer], emails: &[SentEmail], s: &Scope) -> Vec<Holdout> {
    let by_id: BTreeMap<&str, &Customer> = customers.iter().map(|c| (c.id.as_str(), c)).collect();
    let ordered_after = |e: &SentEmail| {
        by_id.get(e.customer_id.as_str()).is_some_and(|c| {
            counting(c).any(|o| {
                e.at < o.placed_at && o.placed_at.duration_since(e.at) <= s.attribution_window
            })
        })
    };
    let mut results: BTreeMap<&str, Holdout> = BTreeMap::new();
    for e in emails.iter().filter(|e| e.held_out && in_period(e.at, s)) {
        let h = results.entry(&e.template).or_default();
        h.held_out += 1;
        h.held_out_ordered += u64::from(ordered_after(e));
    }
    for e in emails.iter().filter(|e| !e.held_out && in_period(e.at, s)) {
        if let Some(h) = results.get_mut(e.template.as_str()) {
            h.sent += 1;
            h.sent_ordered += u64::from(ordered_after(e));
        }
    }
    results
        .into_iter()
        .map(|(template, mut h)| {
            h.template = template.to_owned();
            h.sent_rate = percent(h.sent_ordered as f64, h.sent as f64);
            h.held_out_rate = percent(h.held_out_ordered as f64, h.held_out as f64);
            if let Some((lift, low, high)) =
                newcombe((h.sent_ordered, h.sent), (h.held_out_ordered, h.held_out))
            {
                h.lift = Some(round2(lift * 100.0));
                h.lift_low = Some(round2(low * 100.0));
                h.lift_high = Some(round2(high * 100.0));
            }
            h
        })
        .collect()
}

/// The difference of two proportions `(k1 / n1) - (k2 / n2)` and its 95 %
/// interval by Newcombe's hybrid score method (his method 10), as
/// fractions; `None` when a group is empty.
fn newcombe((k1, n1): (u64, u64), (k2, n2): (u64, u64)) -> Option<(f64, f64, f64)> {
    let (l1, u1) = wilson_bounds(k1, n1)?;
    let (l2, u2) = wilson_bounds(k2, n2)?;
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let d = p1 - p2;
    let below = ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let above = ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Some((d, d - below, d + above))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcombe_matches_the_worked_examples_of_his_paper() {
        // Newcombe (1998), Statistics in Medicine 17, table II: 56/70 vs
        // 48/80 gives 0.0524 to 0.3339; 9/10 vs 3/10 gives 0.1705 to
        // 0.8090; 0/10 vs 0/20 gives -0.1611 to 0.2775.
        let cases = [
            ((56, 70), (48, 80), (0.0524, 0.3339)),
            ((9, 10), (3, 10), (0.1705, 0.8090)),
            ((0, 10), (0, 20), (-0.1611, 0.2775)),
        ];
        for (a, b, (low, high)) in cases {
            let (_, l, h) = newcombe(a, b).unwrap();
            assert!((l - low).abs() < 5e-5, "{a:?} {b:?}: {l} against {low}");
            assert!((h - high).abs() < 5e-5, "{a:?} {b:?}: {h} against {high}");
        }
        assert_eq!(newcombe((1, 0), (0, 10)), None);
    }
}
