//! What a customer's history says about them: segments, their rhythm of
//! ordering, and the shop-wide figures a customer is compared with.
//!
//! Pure functions of the journey, the time and [`ShopStats`]. The shop's
//! figures (median order value, the spend that puts a customer in the top
//! percent) are kept as histograms with buckets 2 % wide, updated as
//! orders come: exact enough for a threshold, constant in size, and the
//! same on every replay of the same events.
//!
//! Money is never added across currencies: spend, medians and thresholds
//! are per currency (a customer's "own" currency is the one of their last
//! order).

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};

use super::{Journey, Segment, SegmentsConfig};

/// Bucket width of the histograms: each bucket is 2 % wider than the last.
const GROWTH: f64 = 1.02;

/// Counts of positive amounts in buckets on a log scale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    buckets: BTreeMap<i32, u64>,
    count: u64,
}

impl Histogram {
    fn bucket(value: Decimal) -> Option<i32> {
        let v = value.to_f64().filter(|v| *v > 0.0)?;
        Some((v.ln() / GROWTH.ln()).floor() as i32)
    }

    pub fn add(&mut self, value: Decimal) {
        if let Some(b) = Self::bucket(value) {
            *self.buckets.entry(b).or_default() += 1;
            self.count += 1;
        }
    }

    pub fn remove(&mut self, value: Decimal) {
        if let Some(b) = Self::bucket(value)
            && let Some(n) = self.buckets.get_mut(&b)
        {
            *n -= 1;
            if *n == 0 {
                self.buckets.remove(&b);
            }
            self.count -= 1;
        }
    }

    /// What `self` has that `before` had not, bucket by bucket.
    fn since(&self, before: &Histogram) -> BTreeMap<i32, i64> {
        let mut delta = BTreeMap::new();
        for bucket in self.buckets.keys().chain(before.buckets.keys()) {
            let n = |h: &Histogram| h.buckets.get(bucket).map_or(0, |n| *n as i128);
            let d = n(self) - n(before);
            if d != 0 {
                delta.insert(*bucket, i64::try_from(d).unwrap_or(i64::MAX));
            }
        }
        delta
    }

    /// Adds `delta` (a count below zero, from figures that drifted, is
    /// taken as none).
    fn apply(&mut self, delta: &BTreeMap<i32, i64>) {
        for (bucket, d) in delta {
            let n = i128::from(self.buckets.get(bucket).copied().unwrap_or(0)) + i128::from(*d);
            match u64::try_from(n) {
                Ok(n) if n > 0 => self.buckets.insert(*bucket, n),
                _ => self.buckets.remove(bucket),
            };
        }
        self.count = self
            .buckets
            .values()
            .fold(0, |sum, n| sum.saturating_add(*n));
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bucket below which a fraction `q` of the amounts lie.
    fn quantile_bucket(&self, q: f64) -> Option<i32> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        self.buckets.iter().find_map(|(bucket, n)| {
            seen += n;
            (seen >= rank).then_some(*bucket)
        })
    }

    /// The value below which a fraction `q` of the amounts lie: the lower
    /// edge of its bucket, so within 2 % below the true one.
    pub fn quantile(&self, q: f64) -> Option<Decimal> {
        let edge = GROWTH.powi(self.quantile_bucket(q)?);
        Decimal::from_f64_retain(edge).map(|d| d.round_dp(2))
    }
}

/// The shop-wide figures segments compare a customer with, per currency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShopStats {
    /// Totals of the orders that count (placed, not cancelled).
    pub order_totals: BTreeMap<String, Histogram>,
    /// Each customer's lifetime spend in each currency they paid in.
    pub customer_spend: BTreeMap<String, Histogram>,
}

/// A change of the shop's figures, bucket by bucket: what one transaction
/// added and took away. Changes commute, so the transactions of several
/// workers can each write theirs, with no lock between them, and the
/// figures are the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShopDelta {
    order_totals: BTreeMap<String, BTreeMap<i32, i64>>,
    customer_spend: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl ShopDelta {
    pub fn is_empty(&self) -> bool {
        self.order_totals.is_empty() && self.customer_spend.is_empty()
    }
}

impl ShopStats {
    /// What changed from `before` to `self`.
    pub fn since(&self, before: &ShopStats) -> ShopDelta {
        fn each(
            now: &BTreeMap<String, Histogram>,
            before: &BTreeMap<String, Histogram>,
        ) -> BTreeMap<String, BTreeMap<i32, i64>> {
            let empty = Histogram::default();
            now.keys()
                .chain(before.keys())
                .filter_map(|currency| {
                    let (n, b) = (now.get(currency), before.get(currency));
                    let d = n.unwrap_or(&empty).since(b.unwrap_or(&empty));
                    (!d.is_empty()).then(|| (currency.clone(), d))
                })
                .collect()
        }
        ShopDelta {
            order_totals: each(&self.order_totals, &before.order_totals),
            customer_spend: each(&self.customer_spend, &before.customer_spend),
        }
    }

    /// Adds `delta`.
    pub fn apply(&mut self, delta: &ShopDelta) {
        fn each(
            figures: &mut BTreeMap<String, Histogram>,
            delta: &BTreeMap<String, BTreeMap<i32, i64>>,
        ) {
            for (currency, d) in delta {
                figures.entry(currency.clone()).or_default().apply(d);
            }
        }
        each(&mut self.order_totals, &delta.order_totals);
        each(&mut self.customer_spend, &delta.customer_spend);
    }

    /// Takes in what one event changed in one customer's orders; `true`
    /// when that changed the figures.
    pub fn record(&mut self, before: &Counted, after: &Counted) -> bool {
        if before == after {
            return false;
        }
        for (id, (total, currency)) in &after.0 {
            if !before.0.contains_key(id) {
                self.order_totals
                    .entry(currency.clone())
                    .or_default()
                    .add(*total);
            }
        }
        for (id, (total, currency)) in &before.0 {
            if !after.0.contains_key(id) {
                self.order_totals
                    .entry(currency.clone())
                    .or_default()
                    .remove(*total);
            }
        }
        let (old, new) = (before.spend(), after.spend());
        for currency in old.keys().chain(new.keys()) {
            let (was, is) = (old.get(currency), new.get(currency));
            if was == is {
                continue;
            }
            let spends = self.customer_spend.entry(currency.clone()).or_default();
            if let Some(was) = was {
                spends.remove(*was);
            }
            if let Some(is) = is {
                spends.add(*is);
            }
        }
        true
    }

    pub fn median_order(&self, currency: &str) -> Option<Decimal> {
        self.order_totals.get(currency)?.quantile(0.5)
    }

    /// Whether `amount` is below (`Less`), about (`Equal`, the same 2 %
    /// bucket) or above the median order in `currency`.
    pub fn versus_median(&self, amount: Decimal, currency: &str) -> Option<std::cmp::Ordering> {
        let median = self.order_totals.get(currency)?.quantile_bucket(0.5)?;
        Some(Histogram::bucket(amount).unwrap_or(i32::MIN).cmp(&median))
    }

    /// Whether `spend` is in the top `percent` of customers' spend in
    /// `currency`, once at least `min_customers` have spent in it.
    fn in_top(&self, spend: Decimal, currency: &str, percent: f64, min_customers: u64) -> bool {
        let Some(spends) = self.customer_spend.get(currency) else {
            return false;
        };
        percent > 0.0
            && spends.count() >= min_customers
            && spends
                .quantile_bucket(1.0 - percent / 100.0)
                .is_some_and(|cutoff| Histogram::bucket(spend).is_some_and(|b| b >= cutoff))
    }
}

/// Orders that count: placed and not cancelled.
pub fn order_count(j: &Journey) -> usize {
    j.orders.values().filter(|o| o.counts()).count()
}

/// A customer's orders that count, by id, with their total and currency:
/// all the shop-wide figures need of a journey (taken before and after an
/// event, instead of a copy of the whole journey).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted(BTreeMap<String, (Decimal, String)>);

impl Counted {
    pub fn of(j: &Journey) -> Counted {
        Counted(
            j.orders
                .iter()
                .filter(|(_, o)| o.counts())
                .filter_map(|(id, o)| Some((id.clone(), (o.total?, o.currency.clone()?))))
                .collect(),
        )
    }

    /// Lifetime spend by currency.
    pub fn spend(&self) -> BTreeMap<String, Decimal> {
        let mut out = BTreeMap::new();
        for (total, currency) in self.0.values() {
            // Saturating: the decoder bounds totals, a state from before the
            // bounds must not stop the worker.
            let sum: &mut Decimal = out.entry(currency.clone()).or_default();
            *sum = sum.saturating_add(*total);
        }
        out
    }
}

/// Lifetime spend by currency: the totals of the orders that count.
pub fn spend(j: &Journey) -> BTreeMap<String, Decimal> {
    Counted::of(j).spend()
}

/// The customer's own currency: the one of their latest order that counts.
pub fn currency(j: &Journey) -> Option<&str> {
    j.orders
        .values()
        .filter(|o| o.counts())
        .max_by_key(|o| o.placed_at)?
        .currency
        .as_deref()
}

/// The median time between the customer's orders; `None` with fewer than
/// two.
pub fn median_gap(j: &Journey) -> Option<SignedDuration> {
    let mut placed: Vec<Timestamp> = j
        .orders
        .values()
        .filter(|o| o.counts())
        .filter_map(|o| o.placed_at)
        .collect();
    placed.sort();
    let mut gaps: Vec<SignedDuration> = placed
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    gaps.sort();
    let n = gaps.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(gaps[n / 2]),
        _ => Some(gaps[n / 2 - 1].saturating_add(gaps[n / 2]) / 2),
    }
}

/// Every segment the customer is in at `now`, in order of precedence: the
/// first is *the* segment. `lapse_after` is how long without an order
/// makes the customer lapsed (their first win-back's wait).
pub fn segments(
    j: &Journey,
    now: Timestamp,
    shop: &ShopStats,
    config: &SegmentsConfig,
    lapse_after: Option<SignedDuration>,
) -> Vec<Segment> {
    let count = order_count(j);
    let lifetime = spend(j);
    let mut out = Vec::new();
    let vip = lifetime.iter().any(|(currency, spent)| {
        config
            .vip_spend
            .get(currency)
            .is_some_and(|min| spent >= min)
            || shop.in_top(
                *spent,
                currency,
                config.vip_top_percent,
                config.vip_min_customers,
            )
    });
    if vip {
        out.push(Segment::Vip);
    }
    if let (Some(wait), Some((_, last))) = (lapse_after, &j.last_order)
        && now >= super::later(*last, wait)
    {
        out.push(Segment::Lapsed);
    }
    if count == 1 {
        out.push(Segment::New);
    }
    if let Some(currency) = currency(j) {
        let window = SignedDuration::try_from(config.window).unwrap_or(SignedDuration::MAX);
        let counted: Vec<_> = j
            .orders
            .values()
            .filter(|o| o.counts() && o.currency.as_deref() == Some(currency))
            .collect();
        let recent = counted
            .iter()
            .filter(|o| {
                o.placed_at
                    .is_some_and(|p| p <= now && now.duration_since(p) <= window)
            })
            .count();
        let spent = lifetime.get(currency).copied().unwrap_or_default();
        let average = spent / Decimal::from(counted.len().max(1));
        match (
            shop.versus_median(average, currency),
            recent >= config.frequent_orders,
        ) {
            (Some(std::cmp::Ordering::Less), true) => out.push(Segment::FrequentSmall),
            (Some(std::cmp::Ordering::Greater), false) => out.push(Segment::RareLarge),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push(Segment::Regular);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::{OrderState, RulebookConfig};
    use proptest::prelude::*;

    /// Adds (`true`) or removes an amount in one of three currencies.
    fn changes() -> impl Strategy<Value = Vec<(bool, bool, u8, u32)>> {
        proptest::collection::vec((any::<bool>(), any::<bool>(), 0..3u8, 1..100_000u32), 0..40)
    }

    fn changed(mut stats: ShopStats, changes: &[(bool, bool, u8, u32)]) -> ShopStats {
        for (add, spend, currency, cents) in changes {
            let figures = if *spend {
                &mut stats.customer_spend
            } else {
                &mut stats.order_totals
            };
            let h = figures
                .entry(["EUR", "AMD", "ETB"][*currency as usize].into())
                .or_default();
            let amount = Decimal::new(i64::from(*cents), 2);
            if *add {
                h.add(amount)
            } else {
                h.remove(amount)
            }
        }
        stats
    }

    /// The figures without the currencies left with nothing counted.
    fn counted(mut stats: ShopStats) -> ShopStats {
        stats.order_totals.retain(|_, h| h.count() > 0);
        stats.customer_spend.retain(|_, h| h.count() > 0);
        stats
    }

    proptest! {
        /// Two transactions read the same figures and each writes what it
        /// changed: in either order, the figures end the same, and the
        /// same as one transaction making both changes (where the second
        /// only adds: a removal depends on what the first left).
        #[test]
        fn changes_written_as_deltas_add_up_in_any_order(
            base in changes(), a in changes(), b in changes()
        ) {
            let base = changed(ShopStats::default(), &base);
            let (after_a, after_b) = (changed(base.clone(), &a), changed(base.clone(), &b));
            let (da, db) = (after_a.since(&base), after_b.since(&base));
            let mut ab = base.clone();
            ab.apply(&da);
            prop_assert_eq!(counted(ab.clone()), counted(after_a.clone()));
            ab.apply(&db);
            let mut ba = base.clone();
            ba.apply(&db);
            ba.apply(&da);
            prop_assert_eq!(counted(ab.clone()), counted(ba));
            if b.iter().all(|(add, ..)| *add) {
                prop_assert_eq!(counted(ab), counted(changed(after_a.clone(), &b)));
            }
            prop_assert!(after_a.since(&after_a).is_empty());
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// A customer with orders of `totals` placed at `dates`.
    fn customer(orders: &[(&str, &str)]) -> Journey {
        let mut j = Journey::default();
        for (i, (at, total)) in orders.iter().enumerate() {
            j.orders.insert(
                format!("o-{i}"),
                OrderState {
                    placed_at: Some(t(at)),
                    total: Some(d(total)),
                    currency: Some("EUR".into()),
                    ..OrderState::default()
                },
            );
            j.last_order = Some((format!("o-{i}"), t(at)));
        }
        j
    }

    /// A shop whose orders are 10, 20, ..., 100 EUR (median 50).
    fn shop() -> ShopStats {
        let mut s = ShopStats::default();
        for i in 1..=10 {
            let amount = Decimal::from(i * 10);
            s.order_totals.entry("EUR".into()).or_default().add(amount);
            s.customer_spend
                .entry("EUR".into())
                .or_default()
                .add(amount);
        }
        s
    }

    fn config() -> SegmentsConfig {
        RulebookConfig::shipped().segments
    }

    fn of(j: &Journey, now: &str) -> Vec<Segment> {
        segments(
            j,
            t(now),
            &shop(),
            &config(),
            Some(SignedDuration::from_hours(60 * 24)),
        )
    }

    #[test]
    fn the_median_order_is_within_a_bucket_of_the_true_one() {
        let median = shop().median_order("EUR").unwrap();
        assert!(median > d("49") && median <= d("50"), "{median}");
        assert_eq!(shop().median_order("AMD"), None);
    }

    #[test]
    fn a_first_order_makes_a_new_customer() {
        let j = customer(&[("2026-01-10T10:00:00Z", "30.00")]);
        assert_eq!(of(&j, "2026-01-11T00:00:00Z")[0], Segment::New);
    }

    #[test]
    fn frequent_small_needs_enough_recent_orders_below_the_median() {
        let three_small = customer(&[
            ("2026-01-10T10:00:00Z", "12.00"),
            ("2026-02-10T10:00:00Z", "15.00"),
            ("2026-03-10T10:00:00Z", "18.00"),
        ]);
        assert_eq!(
            of(&three_small, "2026-03-11T00:00:00Z"),
            [Segment::FrequentSmall]
        );
        // The first order falls out of the 180-day window: no longer
        // frequent (and, with no win-back point, not lapsed either).
        let later = segments(
            &three_small,
            t("2026-07-10T00:00:00Z"),
            &shop(),
            &config(),
            None,
        );
        assert_eq!(later, [Segment::Regular]);
        let two_small = customer(&[
            ("2026-01-10T10:00:00Z", "12.00"),
            ("2026-02-10T10:00:00Z", "15.00"),
        ]);
        assert_eq!(of(&two_small, "2026-02-11T00:00:00Z"), [Segment::Regular]);
    }

    #[test]
    fn rare_large_is_few_orders_above_the_median() {
        let j = customer(&[
            ("2025-06-10T10:00:00Z", "120.00"),
            ("2026-01-10T10:00:00Z", "140.00"),
        ]);
        assert_eq!(of(&j, "2026-01-11T00:00:00Z"), [Segment::RareLarge]);
        // At the median exactly: neither small nor large.
        let median = shop().median_order("EUR").unwrap().to_string();
        let j = customer(&[
            ("2026-01-01T10:00:00Z", &median),
            ("2026-01-10T10:00:00Z", &median),
        ]);
        assert_eq!(of(&j, "2026-01-11T00:00:00Z"), [Segment::Regular]);
    }

    #[test]
    fn vip_by_lifetime_spend_at_the_threshold() {
        let below = customer(&[("2026-01-10T10:00:00Z", "499.99")]);
        assert!(!of(&below, "2026-01-11T00:00:00Z").contains(&Segment::Vip));
        let at = customer(&[
            ("2026-01-10T10:00:00Z", "300.00"),
            ("2026-01-20T10:00:00Z", "200.00"),
        ]);
        assert_eq!(of(&at, "2026-01-21T00:00:00Z")[0], Segment::Vip);
    }

    #[test]
    fn vip_by_top_percent_once_the_shop_is_big_enough() {
        let mut shop = ShopStats::default();
        for i in 1..=200 {
            shop.customer_spend
                .entry("EUR".into())
                .or_default()
                .add(Decimal::from(i));
        }
        let mut cfg = config();
        cfg.vip_spend.clear();
        let rich = customer(&[("2026-01-10T10:00:00Z", "195.00")]);
        let middling = customer(&[("2026-01-10T10:00:00Z", "150.00")]);
        let now = t("2026-01-11T00:00:00Z");
        assert!(segments(&rich, now, &shop, &cfg, None).contains(&Segment::Vip));
        assert!(!segments(&middling, now, &shop, &cfg, None).contains(&Segment::Vip));
        cfg.vip_min_customers = 1000;
        assert!(!segments(&rich, now, &shop, &cfg, None).contains(&Segment::Vip));
    }

    #[test]
    fn lapsed_once_past_the_win_back_point() {
        let j = customer(&[("2026-01-10T10:00:00Z", "30.00")]);
        assert!(!of(&j, "2026-03-11T09:59:59Z").contains(&Segment::Lapsed));
        assert_eq!(of(&j, "2026-03-11T10:00:00Z")[0], Segment::Lapsed);
    }

    #[test]
    fn the_median_gap_of_a_weekly_and_a_yearly_buyer() {
        let weekly = customer(&[
            ("2026-01-01T10:00:00Z", "10.00"),
            ("2026-01-08T10:00:00Z", "10.00"),
            ("2026-01-15T10:00:00Z", "10.00"),
            ("2026-01-29T10:00:00Z", "10.00"),
        ]);
        assert_eq!(
            median_gap(&weekly),
            Some(SignedDuration::from_hours(7 * 24))
        );
        let yearly = customer(&[
            ("2021-06-01T10:00:00Z", "90.00"),
            ("2022-06-01T10:00:00Z", "90.00"),
            ("2023-06-01T10:00:00Z", "90.00"),
        ]);
        assert_eq!(
            median_gap(&yearly),
            Some(SignedDuration::from_hours(365 * 24))
        );
        assert_eq!(
            median_gap(&customer(&[("2026-01-01T10:00:00Z", "1")])),
            None
        );
    }

    #[test]
    fn stats_follow_new_and_cancelled_orders() {
        let mut stats = ShopStats::default();
        let before = Journey::default();
        let after = customer(&[("2026-01-01T10:00:00Z", "40.00")]);
        stats.record(&Counted::of(&before), &Counted::of(&after));
        let counts = |s: &ShopStats| {
            (
                s.order_totals["EUR"].count(),
                s.customer_spend["EUR"].count(),
            )
        };
        assert_eq!(counts(&stats), (1, 1));
        let mut cancelled = after.clone();
        cancelled.orders.get_mut("o-0").unwrap().cancelled = true;
        stats.record(&Counted::of(&after), &Counted::of(&cancelled));
        assert_eq!(counts(&stats), (0, 0));
    }

    #[test]
    fn money_is_never_added_across_currencies() {
        // 23,500 AMD is not 23,500 EUR: no VIP by the EUR threshold.
        let mut j = customer(&[("2026-01-10T10:00:00Z", "23500")]);
        j.orders.get_mut("o-0").unwrap().currency = Some("AMD".into());
        let segs = segments(&j, t("2026-01-11T00:00:00Z"), &shop(), &config(), None);
        assert!(!segs.contains(&Segment::Vip), "{segs:?}");
        let mut stats = ShopStats::default();
        stats.record(&Counted::default(), &Counted::of(&j));
        assert_eq!(stats.median_order("EUR"), None);
        assert!(stats.median_order("AMD").is_some());
    }
}
