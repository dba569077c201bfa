//! When a marketing email may go out: the frequency cap and quiet hours.
//!
//! Pure, like the rest of the journey core: the time is a parameter. The
//! pipeline asks [`Policy::timing`] when an email falls due (after the
//! consent and cancellation checks): send now, wait until a later moment,
//! or skip it because that moment is past the template's maximum delay.
//! Transactional emails always go at once and never count toward the cap.

use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use sha2::{Digest, Sha256};

use super::{EmailClass, Journey, JourneyRule, PolicyConfig, later, signed};

/// What to do with an email that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    Now,
    /// Wait until `to`, for `reason`.
    Defer {
        to: Timestamp,
        reason: String,
    },
    /// The next allowed moment is past the rule's expiry or maximum delay.
    Skip {
        reason: String,
    },
}

/// When, and how, an email is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// The real time it is decided at: the machine's clock, or in a plan
    /// the event time it falls due at (plus a lag).
    pub at: Timestamp,
    /// `false` leaves the cap out: a retry holds its place under it
    /// already.
    pub with_cap: bool,
    /// What `max_delay` counts from: the due time in a plan (so a hold
    /// that follows another is bounded with it); on the machine's clock,
    /// the moment of the decision, since a backlog made it late already,
    /// and `expires_after` bounds the whole of its lateness.
    pub hold_from: Timestamp,
}

impl Moment {
    /// Decided at its due time, as a plan without lag does.
    pub fn due(at: Timestamp) -> Moment {
        Moment {
            at,
            with_cap: true,
            hold_from: at,
        }
    }
}

/// The policies of the configuration, ready to apply.
#[derive(Debug, Clone)]
pub struct Policy {
    cap: Option<SignedDuration>,
    max_delay: Duration,
    quiet: Option<(Time, Time)>,
    jitter: SignedDuration,
    default_tz: TimeZone,
}

/// `20h`, `3days`: as the config writes durations.
fn human(d: SignedDuration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().unsigned_abs())).to_string()
}

impl Policy {
    pub fn new(config: &PolicyConfig, default_timezone: &str) -> Policy {
        Policy {
            cap: (!config.frequency_cap.is_zero()).then(|| signed(config.frequency_cap)),
            max_delay: config.max_delay,
            quiet: config.quiet_hours.window(),
            jitter: signed(config.quiet_hours.jitter),
            default_tz: TimeZone::get(default_timezone).unwrap_or(TimeZone::UTC),
        }
    }

    /// No cap, no quiet hours: every email at its due time.
    pub fn none() -> Policy {
        Policy {
            cap: None,
            max_delay: Duration::ZERO,
            quiet: None,
            jitter: SignedDuration::ZERO,
            default_tz: TimeZone::UTC,
        }
    }

    /// Whether an email of `rule`, due at `due_at`, may go out at the
    /// moment it is decided (see [`Moment`]).
    pub fn timing(
        &self,
        rule: &JourneyRule,
        journey: &Journey,
        customer_id: &str,
        due_at: Timestamp,
        moment: Moment,
    ) -> Timing {
        let Moment {
            at,
            with_cap,
            hold_from,
        } = moment;
        if rule.class == EmailClass::Transactional {
            return Timing::Now;
        }
        let last = journey.last_marketing_at.filter(|_| with_cap);
        let Some((next, reason)) = self.hold(journey, last, customer_id, at) else {
            return Timing::Now;
        };
        if let Some(expired) = super::late::held_past_expiry(due_at, next, rule.expiry(), &reason) {
            return Timing::Skip { reason: expired };
        }
        let max_delay = signed(rule.max_delay.unwrap_or(self.max_delay));
        if next > later(hold_from, max_delay) {
            return Timing::Skip {
                reason: format!(
                    "{reason}: the next allowed time, {next}, is past the max delay of {}",
                    human(max_delay)
                ),
            };
        }
        Timing::Defer { to: next, reason }
    }

    /// The first moment from `at` that the cap (counting from `last`) and
    /// the customer's quiet hours allow, with the reasons it is not `at`;
    /// `None` when that is `at` itself.
    fn hold(
        &self,
        journey: &Journey,
        last: Option<Timestamp>,
        customer_id: &str,
        at: Timestamp,
    ) -> Option<(Timestamp, String)> {
        let mut next = at;
        let mut reasons = Vec::new();
        if let (Some(cap), Some(last)) = (self.cap, last)
            && later(last, cap) > next
        {
            next = later(last, cap);
            reasons.push(format!(
                "frequency cap: one marketing email per {}",
                human(cap)
            ));
        }
        let tz = journey
            .profile
            .timezone
            .as_deref()
            .and_then(|name| TimeZone::get(name).ok())
            .unwrap_or_else(|| self.default_tz.clone());
        if let Some((start, stop)) = self.quiet
            && let Some(end) = self.quiet_end(next, &tz)
        {
            next = later(end, self.jitter_for(customer_id));
            reasons.push(format!(
                "quiet hours {}-{} {}",
                start.strftime("%H:%M"),
                stop.strftime("%H:%M"),
                tz.iana_name().unwrap_or("UTC")
            ));
        }
        (next != at).then(|| (next, reasons.join(", ")))
    }

    /// Whether a frequency cap is set: only then does the order of a
    /// customer's marketing emails due together matter.
    pub fn has_cap(&self) -> bool {
        self.cap.is_some()
    }

    /// The end of the quiet window `at` falls in, in `tz`; `None` when
    /// `at` is outside quiet hours. The window is in local time, so its
    /// length changes with daylight saving time.
    fn quiet_end(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let (start, end) = self.quiet?;
        let local = at.to_zoned(tz.clone());
        let now = local.time();
        let inside = if start < end {
            start <= now && now < end
        } else {
            now >= start || now < end
        };
        if !inside {
            return None;
        }
        // Ends today, unless the window started today and spans midnight.
        let mut day = local.date();
        if start > end && now >= start {
            day = day.tomorrow().ok()?;
        }
        // A local time that does not exist (the clock jumps over it) is
        // taken as the first moment after the jump.
        let end_at: Zoned = day.to_datetime(end).to_zoned(tz.clone()).ok()?;
        Some(end_at.timestamp())
    }

    /// A fixed offset per customer in `[0, jitter)`, so that the emails held
    /// by quiet hours do not all go out at the same second.
    fn jitter_for(&self, customer_id: &str) -> SignedDuration {
        let secs = self.jitter.as_secs();
        if secs <= 0 {
            return SignedDuration::ZERO;
        }
        let digest = Sha256::new()
            .chain_update(b"jitter\0")
            .chain_update(customer_id)
            .finalize();
        let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        SignedDuration::from_secs((n % secs as u64) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journey::RulebookConfig;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::new(&RulebookConfig::shipped().policy, "Europe/Berlin")
    }

    fn rule(template: &str) -> JourneyRule {
        RulebookConfig::shipped()
            .rules
            .into_iter()
            .find(|r| r.template == template)
            .unwrap()
    }

    fn customer(tz: Option<&str>, last_marketing: Option<&str>) -> Journey {
        let mut j = Journey::default();
        j.profile.timezone = tz.map(str::to_owned);
        j.last_marketing_at = last_marketing.map(t);
        j
    }

    /// The time an email due (and falling due) at `at` goes out, if it does.
    fn goes_at(j: &Journey, template: &str, at: &str) -> Option<Timestamp> {
        match policy().timing(&rule(template), j, "c-1", t(at), Moment::due(t(at))) {
            Timing::Now => Some(t(at)),
            Timing::Defer { to, .. } => Some(to),
            Timing::Skip { .. } => None,
        }
    }

    fn jitter() -> SignedDuration {
        policy().jitter_for("c-1")
    }

    #[test]
    fn transactional_emails_are_never_held_back() {
        // In quiet hours, one minute after a marketing email.
        let j = customer(Some("Europe/Berlin"), Some("2026-03-10T22:59:00Z"));
        for template in ["order_confirmation", "shipping_update", "refund_issued"] {
            assert_eq!(
                goes_at(&j, template, "2026-03-10T23:00:00Z"),
                Some(t("2026-03-10T23:00:00Z")),
                "{template}"
            );
        }
    }

    #[test]
    fn quiet_hours_hold_marketing_until_the_local_morning() {
        let j = customer(Some("Europe/Berlin"), None);
        // Berlin is UTC+1 in winter: 21:00-08:00 local is 20:00-07:00 UTC.
        let cases = [
            ("2026-02-10T19:59:00Z", "2026-02-10T19:59:00Z", false),
            ("2026-02-10T20:00:00Z", "2026-02-11T07:00:00Z", true),
            ("2026-02-10T23:30:00Z", "2026-02-11T07:00:00Z", true),
            ("2026-02-11T06:59:00Z", "2026-02-11T07:00:00Z", true),
            ("2026-02-11T07:00:00Z", "2026-02-11T07:00:00Z", false),
        ];
        for (due, want, jittered) in cases {
            let want = t(want)
                + if jittered {
                    jitter()
                } else {
                    SignedDuration::ZERO
                };
            assert_eq!(goes_at(&j, "welcome", due), Some(want), "due {due}");
        }
    }

    #[test]
    fn quiet_hours_follow_daylight_saving_time() {
        let j = customer(Some("Europe/Berlin"), None);
        // Clocks go forward on 29 March 2026: 08:00 local is 06:00 UTC.
        assert_eq!(
            goes_at(&j, "welcome", "2026-03-28T22:00:00Z"),
            Some(t("2026-03-29T06:00:00Z") + jitter())
        );
        // And back on 25 October: the night is an hour longer.
        assert_eq!(
            goes_at(&j, "welcome", "2026-10-24T22:00:00Z"),
            Some(t("2026-10-25T07:00:00Z") + jitter())
        );
        // 20:30 UTC is 22:30 in summer (quiet), 21:30 in winter (quiet too),
        // but 19:30 UTC is quiet only in summer.
        assert_ne!(
            goes_at(&j, "welcome", "2026-07-01T19:30:00Z"),
            Some(t("2026-07-01T19:30:00Z"))
        );
        assert_eq!(
            goes_at(&j, "welcome", "2026-01-15T19:30:00Z"),
            Some(t("2026-01-15T19:30:00Z"))
        );
    }

    #[test]
    fn an_unknown_time_zone_uses_the_default() {
        let unknown = customer(Some("Mars/Olympus"), None);
        let berlin = customer(Some("Europe/Berlin"), None);
        let due = "2026-02-10T23:00:00Z";
        assert_eq!(
            goes_at(&unknown, "welcome", due),
            goes_at(&berlin, "welcome", due)
        );
        let tokyo = customer(Some("Asia/Tokyo"), None);
        // 08:00 in Tokyo: daytime there.
        assert_eq!(goes_at(&tokyo, "welcome", due), Some(t(due)));
    }

    #[test]
    fn the_frequency_cap_defers_to_the_next_allowed_moment() {
        let j = customer(Some("UTC"), Some("2026-02-10T09:00:00Z"));
        // 20 hours after the last one: 05:00 the next day, in quiet hours,
        // so on to 08:00.
        assert_eq!(
            goes_at(&j, "thank_you", "2026-02-10T12:00:00Z"),
            Some(t("2026-02-11T08:00:00Z") + jitter())
        );
        // 20 hours after 02:00 is 22:00, quiet too: 08:00 the next day.
        let j = customer(Some("UTC"), Some("2026-02-10T02:00:00Z"));
        assert_eq!(
            goes_at(&j, "thank_you", "2026-02-10T12:00:00Z"),
            Some(t("2026-02-11T08:00:00Z") + jitter())
        );
        // 20 hours after 00:00 is 20:00: allowed, and not yet quiet.
        let j = customer(Some("UTC"), Some("2026-02-10T00:00:00Z"));
        assert_eq!(
            goes_at(&j, "thank_you", "2026-02-10T12:00:00Z"),
            Some(t("2026-02-10T20:00:00Z"))
        );
        // Past the cap: at once.
        let j = customer(Some("UTC"), Some("2026-02-09T12:00:00Z"));
        assert_eq!(
            goes_at(&j, "thank_you", "2026-02-10T12:00:00Z"),
            Some(t("2026-02-10T12:00:00Z"))
        );
    }

    #[test]
    fn on_the_machines_clock_max_delay_bounds_the_hold_and_expiry_the_lateness() {
        // A review request due four days ago (a backlog), held by the cap
        // for 19 hours more (until 09:00, outside quiet hours): past `max_delay` (3 days) counted from its due
        // time, as a plan counts, but the hold itself is 19 hours, and 4
        // days 19 hours is inside its 14-day expiry: it waits.
        let j = customer(Some("UTC"), Some("2026-02-10T13:00:00Z"));
        let rule = rule("review_request");
        let due = t("2026-02-06T14:00:00Z");
        let now = t("2026-02-10T14:00:00Z");
        let decided = |hold_from| Moment {
            at: now,
            with_cap: true,
            hold_from,
        };
        let planned = policy().timing(&rule, &j, "c-1", due, decided(due));
        assert!(matches!(planned, Timing::Skip { .. }), "{planned:?}");
        let real = policy().timing(&rule, &j, "c-1", due, decided(now));
        assert_eq!(
            real,
            Timing::Defer {
                to: t("2026-02-11T09:00:00Z"),
                reason: "frequency cap: one marketing email per 20h".into()
            }
        );
        // Held past its expiry, it is skipped as expired.
        let old = t("2026-01-28T00:00:00Z");
        let Timing::Skip { reason } = policy().timing(&rule, &j, "c-1", old, decided(now)) else {
            panic!("not skipped");
        };
        assert!(reason.starts_with("expired: frequency cap"), "{reason}");
    }

    #[test]
    fn an_email_that_would_slip_past_its_max_delay_is_skipped_with_the_reason() {
        let mut rule = rule("thank_you");
        rule.max_delay = Some(Duration::from_secs(3600));
        let j = customer(Some("UTC"), Some("2026-02-10T09:00:00Z"));
        let timing = policy().timing(
            &rule,
            &j,
            "c-1",
            t("2026-02-10T12:00:00Z"),
            Moment::due(t("2026-02-10T12:00:00Z")),
        );
        let Timing::Skip { reason } = timing else {
            panic!("{timing:?}");
        };
        assert!(
            reason.starts_with("frequency cap: one marketing email per 20h"),
            "{reason}"
        );
        assert!(reason.ends_with("past the max delay of 1h"), "{reason}");
        // The default max delay (3 days) lets it wait.
        assert!(goes_at(&j, "thank_you", "2026-02-10T12:00:00Z").is_some());
    }

    #[test]
    fn the_jitter_is_fixed_per_customer_and_within_bounds() {
        let p = policy();
        let mut seen = std::collections::BTreeSet::new();
        for c in 0..200 {
            let id = format!("c-{c}");
            let j = p.jitter_for(&id);
            assert_eq!(j, p.jitter_for(&id));
            assert!(
                j >= SignedDuration::ZERO && j < SignedDuration::from_mins(30),
                "{j}"
            );
            seen.insert(j);
        }
        assert!(seen.len() > 150, "spread: {} distinct offsets", seen.len());
    }

    #[test]
    fn a_window_within_one_day_works_too() {
        let mut config = RulebookConfig::shipped().policy;
        config.quiet_hours.start = "13:00".into();
        config.quiet_hours.end = "14:00".into();
        config.quiet_hours.jitter = Duration::ZERO;
        let p = Policy::new(&config, "UTC");
        let j = customer(None, None);
        let at = |s: &str| p.timing(&rule("welcome"), &j, "c-1", t(s), Moment::due(t(s)));
        assert_eq!(at("2026-02-10T12:59:00Z"), Timing::Now);
        assert!(
            matches!(at("2026-02-10T13:30:00Z"), Timing::Defer { to, .. } if to == t("2026-02-10T14:00:00Z"))
        );
        assert_eq!(at("2026-02-10T14:00:00Z"), Timing::Now);
    }
}
