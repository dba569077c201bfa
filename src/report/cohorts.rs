//! Cohorts: retention by month of first order, the table every retention
//! tool leads with. Customers are grouped by the calendar month (UTC) of
//! their first order that counts; each row says how many of them ordered
//! again one, two, three... months later, so that a month whose customers
//! come back less than the others' stands out.
//!
//! Months are counted as whole numbers (year x 12 + month), never as
//! timestamps: the first and last months a timestamp holds have no
//! representable start or end, and arithmetic on the count cannot overflow.

use std::collections::{BTreeMap, BTreeSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::{Customer, Scope, counting, percent};

/// How many months the table shows at least, ending with the period's last.
const WINDOW_MONTHS: i32 = 12;

/// How many it shows at most: ten years, the longest of the durations the
/// configuration takes. The cells grow with the square of the months, and
/// `--from 0001-01-01` would ask for millions of them.
const MAX_MONTHS: i32 = 120;

/// The customers whose first order fell in one month, and how many of them
/// ordered in each month after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    /// The cohort's month, `2026-01`.
    pub month: String,
    /// Its size: customers whose first order that counts was in that month.
    pub customers: u64,
    /// Months 1, 2, ... after it, up to the period's last month. Month 0 is
    /// 100 % by definition: the size says it.
    pub months: Vec<CohortCell>,
}

/// One month after a cohort's first: who came back in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortCell {
    /// Months after the cohort's month (1 is the next calendar month).
    pub offset: u32,
    /// The cohort's customers with an order that counts in that month.
    pub customers: u64,
    /// `customers` / the cohort's size x 100, two decimals; `null` for an
    /// empty cohort.
    pub rate: Option<f64>,
    /// The month is cut by the period's end: its figure is only so far, and
    /// reads low next to whole months.
    pub partial: bool,
}

/// A calendar month as a count of months since year 0 (January 0 is 0):
/// months compare and subtract as integers.
type Month = i32;

/// The UTC calendar month of `t`.
fn month_of(t: Timestamp) -> Month {
    let d = t.to_zoned(TimeZone::UTC).date();
    i32::from(d.year()) * 12 + i32::from(d.month()) - 1
}

/// `2026-01`, as people and spreadsheets sort it.
fn month_name(m: Month) -> String {
    format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1)
}

/// Whether `t` is the very start of a UTC month: a period ending there
/// leaves its last month whole.
fn starts_a_month(t: Timestamp) -> bool {
    let z = t.to_zoned(TimeZone::UTC);
    z.day() == 1 && z.time() == jiff::civil::Time::midnight()
}

/// The cohort months shown: the twelve ending with `last`, and every
/// earlier month of the period when it is longer, up to ten years.
fn shown_months(first: Month, last: Month) -> std::ops::RangeInclusive<Month> {
    first
        .min(last - (WINDOW_MONTHS - 1))
        .max(last - (MAX_MONTHS - 1))..=last
}

/// The month of a customer's first order that counts, placed before `to`,
/// and the months (after it) of their later orders before `to`.
fn history(c: &Customer, to: Timestamp) -> Option<(Month, BTreeSet<Month>)> {
    let months: BTreeSet<Month> = counting(c)
        .filter(|o| o.placed_at < to)
        .map(|o| month_of(o.placed_at))
        .collect();
    let first = *months.first()?;
    Some((first, months))
}

/// The cohort table of `customers` over `s`: one row per month shown, the
/// oldest first, empty months included so that the rows line up with the
/// calendar.
pub fn cohorts(customers: &[Customer], s: &Scope) -> Vec<Cohort> {
    // The period's last instant says which month is the last one; a period
    // ending at the first instant of time has none.
    let Some(last_instant) = s.to.checked_sub(SignedDuration::from_nanos(1)).ok() else {
        return Vec::new();
    };
    let last = month_of(last_instant);
    let last_is_partial = !starts_a_month(s.to);
    let months = shown_months(month_of(s.from), last);
    let mut by_first: BTreeMap<Month, Vec<BTreeSet<Month>>> = BTreeMap::new();
    for (first, months) in customers.iter().filter_map(|c| history(c, s.to)) {
        by_first.entry(first).or_default().push(months);
    }
    months
        .map(|month| {
            let members = by_first.get(&month).map_or(&[][..], Vec::as_slice);
            let size = members.len() as u64;
            let cells = (month + 1..=last)
                .map(|later| {
                    let back = members.iter().filter(|m| m.contains(&later)).count() as u64;
                    CohortCell {
                        offset: u32::try_from(later - month).unwrap_or(u32::MAX),
                        customers: back,
                        rate: percent(back as f64, size as f64),
                        partial: later == last && last_is_partial,
                    }
                })
                .collect();
            Cohort {
                month: month_name(month),
                customers: size,
                months: cells,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::Segment;
    use crate::report::fixtures::{order_at, period, t};

    fn customer(id: &str, orders: &[&str]) -> Customer {
        Customer {
            id: id.into(),
            orders: orders.iter().map(|at| order_at(t(at), false)).collect(),
            segment: Segment::Regular,
        }
    }

    fn row<'a>(table: &'a [Cohort], month: &str) -> &'a Cohort {
        table.iter().find(|c| c.month == month).unwrap()
    }

    /// (offset, customers, rate, partial) of each cell.
    fn cells(c: &Cohort) -> Vec<(u32, u64, Option<f64>, bool)> {
        c.months
            .iter()
            .map(|m| (m.offset, m.customers, m.rate, m.partial))
            .collect()
    }

    #[test]
    fn a_cohort_counts_who_came_back_in_each_later_month() {
        // Period 2026-03-01 to 2026-04-15: April is cut by the end.
        let s = period("2026-03-01T00:00:00Z", "2026-04-15T00:00:00Z");
        let customers = [
            // January's cohort of 4: a back in February (month 1) and April
            // (month 3, partial), b in April, c never, d twice in February
            // (once counted) and in May, after the period.
            customer(
                "a",
                &[
                    "2026-01-05T10:00:00Z",
                    "2026-02-10T10:00:00Z",
                    "2026-04-01T00:00:00Z",
                ],
            ),
            customer("b", &["2026-01-31T23:59:59Z", "2026-04-14T23:59:59Z"]),
            customer("c", &["2026-01-20T10:00:00Z"]),
            customer(
                "d",
                &[
                    "2026-01-02T10:00:00Z",
                    "2026-02-02T10:00:00Z",
                    "2026-02-20T10:00:00Z",
                    "2026-05-01T10:00:00Z",
                ],
            ),
            // First order on 2026-02-01 00:00 UTC: February's cohort.
            customer("e", &["2026-02-01T00:00:00Z"]),
        ];
        let table = cohorts(&customers, &s);
        // The twelve months May 2025 to April 2026, oldest first.
        let months: Vec<&str> = table.iter().map(|c| c.month.as_str()).collect();
        assert_eq!(months.len(), 12);
        assert_eq!((months[0], months[11]), ("2025-05", "2026-04"));
        let january = row(&table, "2026-01");
        assert_eq!(january.customers, 4);
        assert_eq!(
            cells(january),
            [
                (1, 2, Some(50.0), false),
                (2, 0, Some(0.0), false),
                (3, 2, Some(50.0), true),
            ]
        );
        let february = row(&table, "2026-02");
        assert_eq!(february.customers, 1);
        assert_eq!(
            cells(february),
            [(1, 0, Some(0.0), false), (2, 0, Some(0.0), true)]
        );
        // A month with no first order keeps its row, without rates.
        let march = row(&table, "2026-03");
        assert_eq!(march.customers, 0);
        assert_eq!(cells(march), [(1, 0, None, true)]);
        assert!(row(&table, "2026-04").months.is_empty());
    }

    #[test]
    fn a_period_ending_on_the_first_of_a_month_leaves_its_last_month_whole() {
        let s = period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z");
        let customers = [customer(
            "a",
            &["2026-01-05T10:00:00Z", "2026-03-31T23:59:59Z"],
        )];
        let table = cohorts(&customers, &s);
        assert_eq!(table.last().unwrap().month, "2026-03");
        assert_eq!(
            cells(row(&table, "2026-01")),
            [(1, 0, Some(0.0), false), (2, 1, Some(100.0), false)]
        );
    }

    #[test]
    fn a_first_order_before_the_twelve_months_puts_the_customer_in_no_row() {
        let s = period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z");
        // First order in March 2025, the window starts in April 2025: not
        // in April's cohort either, though they ordered then.
        let customers = [customer(
            "old",
            &["2025-03-31T10:00:00Z", "2025-04-02T10:00:00Z"],
        )];
        let table = cohorts(&customers, &s);
        assert_eq!(table[0].month, "2025-04");
        assert!(table.iter().all(|c| c.customers == 0), "{table:?}");
    }

    #[test]
    fn a_period_longer_than_twelve_months_shows_all_its_months() {
        let s = period("2024-11-15T00:00:00Z", "2026-04-01T00:00:00Z");
        let table = cohorts(&[customer("a", &["2024-11-20T10:00:00Z"])], &s);
        assert_eq!(table.len(), 17, "November 2024 to March 2026");
        assert_eq!(table[0].month, "2024-11");
        assert_eq!(table[0].customers, 1);
        assert_eq!(table[0].months.len(), 16);
    }

    #[test]
    fn cancelled_orders_and_orders_after_the_period_do_not_count() {
        let s = period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z");
        let mut a = customer("a", &["2026-01-05T10:00:00Z", "2026-02-05T10:00:00Z"]);
        // The first order cancelled: the customer's cohort is February.
        a.orders[0].cancelled = true;
        let mut b = customer("b", &["2026-01-10T10:00:00Z"]);
        b.orders.push(order_at(t("2026-02-10T10:00:00Z"), true));
        // Only an order on --to itself: not a customer of the period yet.
        let c = customer("c", &["2026-04-01T00:00:00Z"]);
        let table = cohorts(&[a, b, c], &s);
        assert_eq!(row(&table, "2026-01").customers, 1);
        assert_eq!(
            cells(row(&table, "2026-01"))[0],
            (1, 0, Some(0.0), false),
            "b's cancelled February order is no return"
        );
        assert_eq!(row(&table, "2026-02").customers, 1);
        assert_eq!(table.iter().map(|c| c.customers).sum::<u64>(), 2);
    }

    #[test]
    fn a_period_of_centuries_shows_its_last_ten_years() {
        let s = period("0001-01-01T00:00:00Z", "2026-04-01T00:00:00Z");
        let table = cohorts(&[customer("a", &["0001-01-01T00:00:00Z"])], &s);
        assert_eq!(table.len(), 120);
        assert_eq!(table[0].month, "2016-04");
        assert!(table.iter().all(|c| c.customers == 0));
    }

    #[test]
    fn the_ends_of_time_neither_panic_nor_overflow() {
        // A period ending at the last instant a timestamp holds (its month,
        // December 9999, has no representable end: it is partial), and
        // orders at the first (January -9999, no representable start).
        let s = Scope {
            from: t("9999-06-01T00:00:00Z"),
            to: Timestamp::MAX,
            ..period("2026-01-01T00:00:00Z", "2026-04-01T00:00:00Z")
        };
        let oldest = Customer {
            id: "oldest".into(),
            orders: vec![
                order_at(Timestamp::MIN, false),
                order_at(t("9999-03-01T00:00:00Z"), false),
            ],
            segment: Segment::Regular,
        };
        let last = Customer {
            id: "last".into(),
            orders: vec![
                order_at(t("9999-01-31T10:00:00Z"), false),
                order_at(Timestamp::MAX, false),
                order_at(t("9999-12-01T00:00:00Z"), false),
            ],
            segment: Segment::Regular,
        };
        let table = cohorts(&[oldest, last], &s);
        let months: Vec<&str> = table.iter().map(|c| c.month.as_str()).collect();
        assert_eq!(months.len(), 12);
        assert_eq!((months[0], months[11]), ("9999-01", "9999-12"));
        // The oldest customer's cohort is January -9999: in no row.
        assert_eq!(table.iter().map(|c| c.customers).sum::<u64>(), 1);
        let january = row(&table, "9999-01");
        assert_eq!(january.months.len(), 11);
        // The order at Timestamp::MAX is on --to: not before it.
        assert_eq!(
            cells(january)[10],
            (11, 1, Some(100.0), true),
            "December 9999 ends after --to"
        );

        // Over the whole range: ten years shown, nothing overflows.
        let s = Scope {
            from: Timestamp::MIN,
            ..s
        };
        let first = Customer {
            id: "first".into(),
            orders: vec![
                order_at(Timestamp::MIN, false),
                order_at(t("-009999-02-01T00:00:00Z"), false),
            ],
            segment: Segment::Regular,
        };
        let table = cohorts(&[first], &s);
        assert_eq!(table.len(), 120);
        assert_eq!(table[0].month, "9990-01");

        // A period ending at the first instant of time has no month.
        let s = Scope {
            from: Timestamp::MIN,
            to: Timestamp::MIN,
            ..s
        };
        assert!(cohorts(&[], &s).is_empty());
        assert_eq!(month_name(month_of(Timestamp::MIN)), "-9999-01");
    }
}
