//! What the report's unit tests build their histories from.

use jiff::{SignedDuration, Timestamp};

use super::{Order, Scope};

pub fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// An order of 10 EUR at `at`, its time as its id.
pub fn order_at(at: Timestamp, cancelled: bool) -> Order {
    Order {
        id: at.to_string(),
        placed_at: at,
        total: "10".parse().unwrap(),
        currency: "EUR".into(),
        cancelled,
        returns: Vec::new(),
        refunds: Vec::new(),
    }
}

/// The period `[from, to)`, active for 180 days, attributed for 5.
pub fn period(from: &str, to: &str) -> Scope {
    Scope {
        from: t(from),
        to: t(to),
        active_window: SignedDuration::from_hours(180 * 24),
        attribution_window: SignedDuration::from_hours(5 * 24),
    }
}
