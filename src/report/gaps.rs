//! Time between orders: how long customers take to order again. The
//! adaptive win-back waits twice a customer's own median gap (see
//! `journey::insight::median_gap`); these figures show the shop's gaps, so
//! that a marketer sees why win-backs fall when they do.
//!
//! A gap is the time between two consecutive orders that count of one
//! customer, both placed before the period's end, the later one in the
//! period: the gaps the period's orders closed. Quantiles interpolate
//! between the two nearest gaps (the spreadsheets' `PERCENTILE.INC`), so
//! the median is the middle gap, or the mean of the two middle ones, as
//! `median_gap` takes it.

use jiff::SignedDuration;
use serde::Serialize;

use super::{Customer, Scope, counting, in_period, round2};

/// The buckets of the distribution, by their lower edge in days: each
/// holds the gaps from its edge (included) to the next one (excluded), the
/// last has no upper edge. A gap of exactly 7 days is in `7-30`.
const EDGES: [(i64, &str); 7] = [
    (0, "0-7"),
    (7, "7-30"),
    (30, "30-60"),
    (60, "60-90"),
    (90, "90-180"),
    (180, "180-365"),
    (365, "365+"),
];

/// The gaps of a group of customers (all, a segment).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Gaps {
    /// Gaps closed by an order of the period.
    pub count: u64,
    /// In days, two decimals; `null` without a gap.
    pub median_days: Option<f64>,
    pub p25_days: Option<f64>,
    pub p75_days: Option<f64>,
    /// Gaps per bucket of days (`0-7`, `7-30`, ... `365+`), every bucket
    /// listed, in order.
    pub buckets: Vec<(String, u64)>,
}

/// The gaps of one customer closed by an order of the period.
fn customer_gaps(c: &Customer, s: &Scope) -> Vec<SignedDuration> {
    let mut placed: Vec<_> = counting(c)
        .map(|o| o.placed_at)
        .filter(|t| *t < s.to)
        .collect();
    placed.sort();
    placed
        .windows(2)
        .filter(|w| in_period(w[1], s))
        .map(|w| w[1].duration_since(w[0]))
        .collect()
}

/// The `q` quantile (0 to 1) of sorted `days`, interpolated between the
/// two nearest (R's type 7, `PERCENTILE.INC`).
fn quantile(days: &[f64], q: f64) -> Option<f64> {
    let last = days.len().checked_sub(1)?;
    let at = last as f64 * q;
    let (below, above) = (at.floor() as usize, at.ceil() as usize);
    let (low, high) = (days[below], days[above.min(last)]);
    Some(round2(low + (high - low) * (at - below as f64)))
}

/// The bucket a gap falls in: the last edge at or below it.
fn bucket(gap: SignedDuration) -> usize {
    EDGES
        .iter()
        .rposition(|(days, _)| gap >= SignedDuration::from_hours(days * 24))
        .unwrap_or(0)
}

/// The gaps of `customers` closed in the period of `s`.
pub fn gaps<'a>(customers: impl Iterator<Item = &'a Customer>, s: &Scope) -> Gaps {
    let all: Vec<SignedDuration> = customers.flat_map(|c| customer_gaps(c, s)).collect();
    let mut counts = [0_u64; EDGES.len()];
    for g in &all {
        counts[bucket(*g)] += 1;
    }
    let mut days: Vec<f64> = all.iter().map(|g| g.as_secs_f64() / 86_400.0).collect();
    days.sort_by(f64::total_cmp);
    Gaps {
        count: all.len() as u64,
        median_days: quantile(&days, 0.5),
        p25_days: quantile(&days, 0.25),
        p75_days: quantile(&days, 0.75),
        buckets: EDGES
            .iter()
            .zip(counts)
            .map(|((_, label), n)| ((*label).to_owned(), n))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::journey::Segment;
    use crate::report::Order;
    use crate::report::fixtures::{order_at, period, t};

    fn order(at: Timestamp) -> Order {
        order_at(at, false)
    }

    /// A customer ordering at `start` and then after each of `days`.
    fn buyer(start: &str, days: &[f64]) -> Customer {
        let mut at = t(start);
        let mut orders = vec![order(at)];
        for d in days {
            at = at
                .checked_add(SignedDuration::from_secs_f64(d * 86_400.0))
                .unwrap();
            orders.push(order(at));
        }
        Customer {
            id: start.into(),
            orders,
            segment: Segment::Regular,
        }
    }

    fn settings() -> Scope {
        period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z")
    }

    fn counts(g: &Gaps) -> Vec<u64> {
        g.buckets.iter().map(|(_, n)| *n).collect()
    }

    #[test]
    fn an_odd_number_of_gaps_has_the_middle_one_as_median() {
        // Gaps 2, 10, 40 days: p25 halfway between 2 and 10.
        let g = gaps(
            [buyer("2026-01-02T00:00:00Z", &[2.0, 10.0, 40.0])].iter(),
            &settings(),
        );
        assert_eq!(g.count, 3);
        assert_eq!(g.median_days, Some(10.0));
        assert_eq!(g.p25_days, Some(6.0));
        assert_eq!(g.p75_days, Some(25.0));
        assert_eq!(counts(&g), [1, 1, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn an_even_number_of_gaps_has_the_mean_of_the_two_middle_ones() {
        // Two customers, gaps 1, 3 and 5, 20.5 days: sorted 1, 3, 5, 20.5.
        let customers = [
            buyer("2026-01-02T00:00:00Z", &[1.0, 3.0]),
            buyer("2026-01-05T00:00:00Z", &[5.0, 20.5]),
        ];
        let g = gaps(customers.iter(), &settings());
        assert_eq!(g.count, 4);
        assert_eq!(g.median_days, Some(4.0));
        // Position 0.75 between 1 and 3; 2.25 between 5 and 20.5.
        assert_eq!(g.p25_days, Some(2.5));
        assert_eq!(g.p75_days, Some(8.88));
    }

    #[test]
    fn a_bucket_holds_its_lower_edge_and_not_its_upper_one() {
        let just_under_7 = 7.0 - 1.0 / 86_400.0;
        let g = gaps(
            [buyer("2026-01-02T00:00:00Z", &[just_under_7, 7.0, 30.0])].iter(),
            &settings(),
        );
        assert_eq!(counts(&g), [1, 1, 1, 0, 0, 0, 0]);
        let labels: Vec<&str> = g.buckets.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["0-7", "7-30", "30-60", "60-90", "90-180", "180-365", "365+"]
        );
    }

    #[test]
    fn a_customer_with_one_order_has_no_gap() {
        let g = gaps([buyer("2026-02-01T00:00:00Z", &[])].iter(), &settings());
        assert_eq!(g.count, 0);
        assert_eq!((g.median_days, g.p25_days, g.p75_days), (None, None, None));
        assert_eq!(counts(&g), [0; 7]);
    }

    #[test]
    fn a_gap_counts_when_its_later_order_is_in_the_period() {
        // 2025-06-01, then 2025-07-01 (both before: no gap of the period),
        // 2026-02-01 (a 215-day gap from before the period into it), then
        // 2026-04-01 (on --to: not in it).
        let c = buyer("2025-06-01T00:00:00Z", &[30.0, 215.0, 59.0]);
        assert_eq!(c.orders[2].placed_at, t("2026-02-01T00:00:00Z"));
        assert_eq!(c.orders[3].placed_at, t("2026-04-01T00:00:00Z"));
        let g = gaps([c].iter(), &settings());
        assert_eq!(g.count, 1);
        assert_eq!(g.median_days, Some(215.0));
        assert_eq!(counts(&g), [0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn a_cancelled_order_opens_or_closes_no_gap() {
        let mut c = buyer("2026-01-02T00:00:00Z", &[10.0, 10.0]);
        c.orders[1].cancelled = true;
        let g = gaps([c].iter(), &settings());
        assert_eq!(g.count, 1);
        assert_eq!(g.median_days, Some(20.0));
    }

    #[test]
    fn gaps_across_the_whole_range_of_time_do_not_overflow() {
        let s = Scope {
            from: Timestamp::MIN,
            to: Timestamp::MAX,
            ..settings()
        };
        let c = Customer {
            id: "c".into(),
            orders: vec![order(Timestamp::MIN), order(t("9999-12-30T00:00:00Z"))],
            segment: Segment::Regular,
        };
        let g = gaps([c].iter(), &s);
        assert_eq!(g.count, 1);
        assert_eq!(counts(&g), [0, 0, 0, 0, 0, 0, 1]);
        assert!(g.median_days.unwrap() > 7_000_000.0);
    }
}
