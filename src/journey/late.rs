//! Emails that fell due long ago: before the shop went live, or longer ago
//! than their rule's `expires_after`.
//!
//! Whether an email is owed is decided in event time (see the module
//! above); whether it is still worth *sending* depends on the real time it
//! would go out at. After an outage, on a first start that reads a week of
//! history, or in a replay, the two are far apart. Pure, like the rest of
//! the journey core: the real time is a parameter.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{later, signed};

/// The reason of an email due before the shop went live.
pub const BEFORE_GO_LIVE: &str = "before go-live";
/// How the reason of an email that expired begins.
pub const EXPIRED: &str = "expired";

/// The real time an email is decided at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The machine's clock: the daemon (`journeys.clock = "wall"`).
    Wall,
    /// The events' own time, `lag` behind: each email is decided `lag`
    /// after it falls due, as if every event had arrived that late
    /// (`simulate --lag`; no lag for `journeys.clock = "events"`).
    Events { lag: SignedDuration },
}

impl Clock {
    /// The events' own time, with no lag: what `simulate` plans with.
    pub const EVENTS: Clock = Clock::Events {
        lag: SignedDuration::ZERO,
    };

    /// The real time an email falling due at `fire_at` is decided at, the
    /// machine's clock reading `now`.
    pub fn decided_at(self, fire_at: Timestamp, now: Timestamp) -> Timestamp {
        match self {
            Clock::Wall => now,
            Clock::Events { lag } => later(fire_at, lag),
        }
    }

    /// What a policy hold of an email due at `due_at`, decided at `at`,
    /// counts from (see [`super::Moment::hold_from`]): its due time in a
    /// plan; on the machine's clock the decision, since a backlog made it
    /// late already and its expiry bounds the whole lateness.
    pub fn hold_from(self, due_at: Timestamp, at: Timestamp) -> Timestamp {
        match self {
            Clock::Wall => at,
            Clock::Events { .. } => due_at,
        }
    }

    /// The fire time at which an email held until real time `at` is looked
    /// at again.
    pub fn fire_at_for(self, at: Timestamp) -> Timestamp {
        match self {
            Clock::Wall => at,
            Clock::Events { lag } => later(at, -lag),
        }
    }
}

/// The go-live cut-off and the clock lateness is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lateness {
    /// Emails due before this are not sent (`None`: no cut-off).
    pub go_live: Option<Timestamp>,
    pub clock: Clock,
}

impl Lateness {
    /// No cut-off, on the events' clock: every email at its due time, as
    /// `simulate` plans by default.
    pub const NONE: Lateness = Lateness {
        go_live: None,
        clock: Clock::EVENTS,
    };

    /// Why an email due at `due_at` is not sent, decided at real time `at`
    /// with an expiry of `expiry`: due before go-live, or expired. `None`:
    /// it is still worth sending.
    pub fn too_late(&self, due_at: Timestamp, at: Timestamp, expiry: Duration) -> Option<String> {
        if self.go_live.is_some_and(|live| due_at < live) {
            return Some(BEFORE_GO_LIVE.to_owned());
        }
        expired(due_at, at, expiry)
    }
}

/// Why an email due at `due_at` is too old to go out at real time `at`
/// with an expiry of `expiry`; `None` when it is not.
pub fn expired(due_at: Timestamp, at: Timestamp, expiry: Duration) -> Option<String> {
    (at > later(due_at, signed(expiry))).then(|| {
        format!(
            "{EXPIRED}: {} late, past its expires_after of {}",
            rounded(at.duration_since(due_at)),
            rounded(signed(expiry))
        )
    })
}

/// Why an email due at `due_at`, held by `why` until real time `next`,
/// will be too old by then; `None` when it will not.
pub fn held_past_expiry(
    due_at: Timestamp,
    next: Timestamp,
    expiry: Duration,
    why: &str,
) -> Option<String> {
    (next > later(due_at, signed(expiry))).then(|| {
        format!(
            "{EXPIRED}: {why} holds it until {next}, {} late, past its expires_after of {}",
            rounded(next.duration_since(due_at)),
            rounded(signed(expiry))
        )
    })
}

/// `2days 3h 4m`: a lateness to the minute, as config durations are written.
fn rounded(d: SignedDuration) -> String {
    let minutes = d.as_secs().max(0) / 60;
    if minutes == 0 {
        return format!("{}s", d.as_secs().max(0));
    }
    humantime::format_duration(Duration::from_secs(minutes as u64 * 60)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn an_email_due_before_go_live_is_not_sent_one_due_at_it_is() {
        let late = Lateness {
            go_live: Some(t("2026-12-01T00:00:00Z")),
            clock: Clock::Wall,
        };
        let now = t("2026-12-01T00:00:05Z");
        assert_eq!(
            late.too_late(t("2026-11-30T23:59:59Z"), now, DAY)
                .as_deref(),
            Some(BEFORE_GO_LIVE)
        );
        assert_eq!(late.too_late(t("2026-12-01T00:00:00Z"), now, DAY), None);
    }

    #[test]
    fn an_email_expires_once_later_than_its_expiry_and_says_by_how_much() {
        let due = t("2026-12-01T10:00:00Z");
        assert_eq!(expired(due, t("2026-12-02T10:00:00Z"), DAY), None);
        let reason = expired(due, t("2026-12-03T13:04:59Z"), DAY).unwrap();
        assert_eq!(
            reason,
            "expired: 2days 3h 4m late, past its expires_after of 1day"
        );
        assert!(expired(due, t("2026-12-01T10:00:30Z"), Duration::from_secs(10)).is_some());
    }

    #[test]
    fn go_live_comes_before_expiry() {
        let late = Lateness {
            go_live: Some(t("2026-12-01T00:00:00Z")),
            clock: Clock::Wall,
        };
        let reason = late.too_late(t("2026-01-01T00:00:00Z"), t("2026-12-06T00:00:00Z"), DAY);
        assert_eq!(reason.as_deref(), Some(BEFORE_GO_LIVE));
    }

    #[test]
    fn the_events_clock_decides_each_email_its_lag_after_it_falls_due() {
        let lag = SignedDuration::from_hours(30);
        let clock = Clock::Events { lag };
        let fire = t("2026-12-01T10:00:00Z");
        let now = t("2030-01-01T00:00:00Z");
        assert_eq!(clock.decided_at(fire, now), t("2026-12-02T16:00:00Z"));
        assert_eq!(clock.fire_at_for(t("2026-12-02T16:00:00Z")), fire);
        assert_eq!(Clock::Wall.decided_at(fire, now), now);
        assert_eq!(Clock::Wall.fire_at_for(now), now);
    }
}
