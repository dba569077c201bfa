//! The customers as the report sees them: their histories from the store,
//! each in the segment it was in at the period's end.
//!
//! The worker classifies a customer with everything it knows now; a report
//! of a past period must not put in "new" a customer who had one order at
//! its end because they have ordered four times since. So the segment is
//! computed on each history cut at `to` (the orders placed before it), and
//! against the shop's figures (median order, top spenders) rebuilt from
//! those cut histories, with the worker's own rules. Cancellations carry no
//! time in the store: an order cancelled after `to` is taken as cancelled.

use jiff::Timestamp;

use crate::journey::insight::Counted;
use crate::journey::{Journey, Rulebook, ShopStats};

use super::{Customer, Order, Refund};

/// `j` as it stood at `to`: only the orders placed before it, and the
/// latest of those that count as the one inactivity counts from.
pub fn journey_at(j: &Journey, to: Timestamp) -> Journey {
    let mut cut = j.clone();
    cut.orders
        .retain(|_, o| o.placed_at.is_some_and(|p| p < to));
    cut.last_order = cut
        .orders
        .iter()
        .filter(|(_, o)| o.counts())
        .filter_map(|(id, o)| Some((id.clone(), o.placed_at?)))
        .max_by_key(|(_, placed)| *placed);
    cut
}

/// The shop's figures from these histories alone, as the worker would
/// have them after exactly these orders.
pub fn shop_stats<'a>(journeys: impl IntoIterator<Item = &'a Journey>) -> ShopStats {
    let mut stats = ShopStats::default();
    for j in journeys {
        stats.record(&Counted::default(), &Counted::of(j));
    }
    stats
}

/// Every customer of `journeys` with all their orders (those after `to`
/// too: attribution looks past the period's end) and their segment at `to`.
pub fn customers(
    journeys: Vec<(String, Journey)>,
    rules: &Rulebook,
    to: Timestamp,
) -> Vec<Customer> {
    let cut: Vec<Journey> = journeys.iter().map(|(_, j)| journey_at(j, to)).collect();
    let shop = shop_stats(&cut);
    journeys
        .into_iter()
        .zip(&cut)
        .map(|((id, j), at_to)| Customer {
            segment: rules.segments_of(at_to, to, &shop)[0],
            orders: orders(&j),
            id,
        })
        .collect()
}

/// The orders of a history that were placed (a total and a currency known).
fn orders(j: &Journey) -> Vec<Order> {
    j.orders
        .iter()
        .filter_map(|(order_id, o)| {
            Some(Order {
                id: order_id.clone(),
                placed_at: o.placed_at?,
                total: o.total?,
                currency: o.currency.clone()?,
                cancelled: o.cancelled,
                returns: o
                    .returns
                    .iter()
                    .filter_map(|r| Some((r.requested_at?, r.reason.clone())))
                    .collect(),
                refunds: o
                    .refunds
                    .iter()
                    .filter_map(|f| {
                        Some(Refund {
                            at: f.issued_at?,
                            amount: f.amount,
                            currency: f.currency.clone(),
                        })
                    })
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::config::Config;
    use crate::journey::OrderState;
    use crate::journey::Segment;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A history of `(placed_at, total)` orders in EUR.
    fn journey(orders: &[(&str, &str)]) -> Journey {
        let mut j = Journey::default();
        for (i, (at, total)) in orders.iter().enumerate() {
            j.orders.insert(
                format!("o-{i}"),
                OrderState {
                    placed_at: Some(t(at)),
                    total: Some(total.parse().unwrap()),
                    currency: Some("EUR".into()),
                    ..OrderState::default()
                },
            );
            j.last_order = Some((format!("o-{i}"), t(at)));
        }
        j
    }

    fn segment_of(customers: &[Customer], id: &str) -> Segment {
        customers.iter().find(|c| c.id == id).unwrap().segment
    }

    const TO: &str = "2026-04-01T00:00:00Z";

    #[test]
    fn a_customer_is_classified_with_the_orders_they_had_at_the_end_of_the_period() {
        let rules = Rulebook::from_config(Config::embedded().rulebook_config());
        // One order of 20 EUR before the end; 600 EUR in three orders after
        // it: new then, VIP (500 EUR of lifetime spend) now.
        let j = journey(&[
            ("2026-03-20T10:00:00Z", "20.00"),
            ("2026-04-10T10:00:00Z", "200.00"),
            ("2026-04-20T10:00:00Z", "200.00"),
            ("2026-04-30T10:00:00Z", "200.00"),
        ]);
        let now = rules.segments_of(&j, t("2026-05-01T00:00:00Z"), &shop_stats([&j]))[0];
        assert_eq!(now, Segment::Vip);
        let customers = customers(vec![("c".into(), j)], &rules, t(TO));
        assert_eq!(segment_of(&customers, "c"), Segment::New);
        // Every order is still there, for attribution past the end.
        assert_eq!(customers[0].orders.len(), 4);
    }

    #[test]
    fn the_shop_median_is_the_one_of_the_orders_before_the_end_of_the_period() {
        let rules = Rulebook::from_config(Config::embedded().rulebook_config());
        // At the end: orders of 40, 40 (x) and 10, 10 (y): the median is
        // 10 (the 2nd of 4), x's average of 40 is above it and x ordered
        // twice in 180 days (under 3): rare-large. Five orders of 100 by z
        // after the end make today's median 100 (the 5th of 9): x would
        // be below it, neither rare-large nor frequent-small.
        let x = journey(&[
            ("2026-03-10T10:00:00Z", "40.00"),
            ("2026-03-20T10:00:00Z", "40.00"),
        ]);
        let y = journey(&[
            ("2026-03-11T10:00:00Z", "10.00"),
            ("2026-03-21T10:00:00Z", "10.00"),
        ]);
        let z = journey(&[
            ("2026-04-02T10:00:00Z", "100.00"),
            ("2026-04-03T10:00:00Z", "100.00"),
            ("2026-04-04T10:00:00Z", "100.00"),
            ("2026-04-05T10:00:00Z", "100.00"),
            ("2026-04-06T10:00:00Z", "100.00"),
        ]);
        let cut: Vec<Journey> = [&x, &y, &z].iter().map(|j| journey_at(j, t(TO))).collect();
        let then = shop_stats(&cut);
        assert_eq!(then.order_totals["EUR"].count(), 4);
        // The lower edge of 10's 2 % bucket.
        let median = then.median_order("EUR").unwrap();
        assert!(
            median <= Decimal::TEN && median > "9.80".parse().unwrap(),
            "{median}"
        );
        let today = shop_stats([&x, &y, &z]);
        assert_ne!(
            rules.segments_of(&x, t(TO), &today)[0],
            Segment::RareLarge,
            "today's median would not make x rare-large"
        );
        let customers = customers(
            vec![("x".into(), x), ("y".into(), y), ("z".into(), z)],
            &rules,
            t(TO),
        );
        assert_eq!(segment_of(&customers, "x"), Segment::RareLarge);
        // z had not ordered at the end: no order, regular.
        assert_eq!(segment_of(&customers, "z"), Segment::Regular);
    }

    #[test]
    fn a_history_cut_at_the_end_keeps_the_last_order_before_it() {
        let j = journey(&[
            ("2026-03-10T10:00:00Z", "40.00"),
            ("2026-04-10T10:00:00Z", "40.00"),
        ]);
        let cut = journey_at(&j, t(TO));
        assert_eq!(cut.orders.len(), 1);
        assert_eq!(
            cut.last_order,
            Some(("o-0".to_owned(), t("2026-03-10T10:00:00Z")))
        );
    }
}
