//! Catching up: the go-live cut-off, expiry, and the policies in real time.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::*;
use crate::config::Config;
use crate::journey::late::{BEFORE_GO_LIVE, Clock};
use crate::store::{Outcome, SqliteStore};

/// A pipeline on the shipped rules and policies, with `edit` made to the
/// configuration, judging lateness by `lateness`.
fn pipeline(edit: impl FnOnce(&mut Config), lateness: Lateness) -> Pipeline<SqliteStore> {
    let mut config = Config::embedded();
    edit(&mut config);
    let context = Context {
        locales: Locales::new(vec!["en".into()], "en"),
        default_timezone: "UTC".into(),
        unsubscribe_url: "https://shop.example.com/unsubscribe".into(),
        signer: Signer::new(b"test secret"),
    };
    Pipeline::new(
        SqliteStore::in_memory().unwrap(),
        Rulebook::from_config(config.rulebook_config()),
        context,
        100,
        LeasePolicy {
            owner: "test".into(),
            duration: SignedDuration::from_mins(5),
        },
    )
    .unwrap()
    .with_lateness(lateness)
}

/// Every rule expires after `expiry`, and only then: the policies' own
/// max delay is as long. No quiet hours (the machine's clock would decide
/// whether a test runs inside them).
fn expiring_after(expiry: Duration) -> impl FnOnce(&mut Config) {
    move |config| {
        for rule in &mut config.journeys {
            rule.expires_after = Some(expiry);
        }
        config.policy.max_delay = expiry;
        config.policy.quiet_hours.enabled = false;
    }
}

fn entry(n: usize, event: serde_json::Value) -> Entry {
    Entry {
        raw: serde_json::to_vec(&event).unwrap(),
        key: None,
        coordinates: json!({ "line": n }),
        position: Position {
            key: "test".into(),
            value: n.to_string(),
        },
        oversized: None,
        mapped: None,
    }
}

fn placed(n: usize, at: Timestamp, order: &str) -> Entry {
    entry(
        n,
        json!({
            "event_id": format!("e{n}"), "type": "order.placed", "occurred_at": at,
            "customer": {"id": "c-1", "email": "anna@example.com", "name": "Anna Miller",
                         "locale": "en", "marketing_consent": true},
            "order": {"id": order, "total": "20.00", "currency": "EUR", "items": []},
        }),
    )
}

fn delivered(n: usize, at: Timestamp, order: &str) -> Entry {
    entry(
        n,
        json!({
            "event_id": format!("e{n}"), "type": "shipment.delivered", "occurred_at": at,
            "customer": {"id": "c-1"}, "order": {"id": order},
            "shipment": {"id": format!("s-{order}")},
        }),
    )
}

/// Applies `batch` with the clock at `now`, then decides what is due by
/// `now`: the emails approved.
fn run(p: &mut Pipeline<SqliteStore>, batch: &[Entry], now: Timestamp) -> Vec<EmailRow> {
    let mut approved = Vec::new();
    let mut dead = DeadLetters::discard();
    p.ingest("test", batch, Some(now), &mut dead, &mut approved)
        .unwrap();
    p.fire(now, &mut approved).unwrap();
    approved
}

fn keys(emails: &[EmailRow]) -> Vec<&str> {
    emails.iter().map(|e| e.key.as_str()).collect()
}

/// Every email the store holds, by key: status, reason, deferral.
fn stored(p: &mut Pipeline<SqliteStore>) -> Vec<EmailRow> {
    let store = p.store();
    let mut tx = store.begin().unwrap();
    let mut rows = tx.due(Timestamp::MAX, None, 1000).unwrap();
    drop(tx);
    rows.extend(store.decisions().unwrap());
    rows.extend(
        store
            .reclaim(
                &Lease {
                    owner: "test".into(),
                    until: Timestamp::MAX,
                },
                Timestamp::MAX,
                true,
            )
            .unwrap(),
    );
    rows
}

fn email<'a>(rows: &'a [EmailRow], key: &str) -> &'a EmailRow {
    rows.iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no email {key} in {:?}", keys(rows)))
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn history_before_go_live_builds_the_journey_but_sends_nothing_due_before_it() {
    // Four orders before go-live, the fifth after: only the fifth's
    // emails go, and the Silver tier (five orders) is reached, because
    // the history counted.
    let live = t("2026-06-01T00:00:00Z");
    let mut p = pipeline(
        |_| {},
        Lateness {
            go_live: Some(live),
            clock: Clock::EVENTS,
        },
    );
    let batch: Vec<Entry> = (1..=5)
        .map(|n| {
            let at = later(live, days(-50 + 10 * n as i64));
            placed(n, at, &format!("o-{n}"))
        })
        .collect();
    let approved = run(&mut p, &batch, t("2026-06-12T00:00:00Z"));
    assert_eq!(
        keys(&approved),
        ["c-1/order_confirmation/o-5", "c-1/loyalty_milestone/o-5"]
    );
    let rows = stored(&mut p);
    for key in [
        "c-1/order_confirmation/o-1",
        "c-1/welcome/o-1",
        "c-1/loyalty_milestone/o-3",
        "c-1/order_confirmation/o-4",
    ] {
        let e = email(&rows, key);
        assert_eq!(
            (e.status, e.reason.as_deref()),
            (Status::Suppressed, Some(BEFORE_GO_LIVE)),
            "{key}"
        );
    }
    let milestone = &email(&rows, "c-1/loyalty_milestone/o-5").data;
    assert_eq!(milestone["tier"]["id"], "silver");
    // Four confirmations, the welcome, the Bronze tier's congratulation.
    assert_eq!(p.stats.before_go_live, 4 + 1 + 1);
    // Timers of the history that fall due after go-live still go.
    assert_eq!(
        email(&rows, "c-1/win_back/o-5").status,
        Status::Pending,
        "the win-back counts from the last order"
    );
}

#[test]
fn an_email_decided_later_than_its_expiry_is_suppressed_as_expired() {
    // Every event arrives 30 hours late: a confirmation (1 day) is no use
    // by then, a review request (14 days) still is.
    let mut p = pipeline(
        |c| c.policy.quiet_hours.enabled = false,
        Lateness {
            go_live: None,
            clock: Clock::Events {
                lag: SignedDuration::from_hours(30),
            },
        },
    );
    let start = t("2026-03-02T10:00:00Z");
    let approved = run(
        &mut p,
        &[
            placed(1, start, "o-1"),
            delivered(2, later(start, days(2)), "o-1"),
        ],
        later(start, days(30)),
    );
    let rows = stored(&mut p);
    let confirmation = email(&rows, "c-1/order_confirmation/o-1");
    assert_eq!(confirmation.status, Status::Suppressed);
    assert_eq!(
        confirmation.reason.as_deref(),
        Some("expired: 1day 6h late, past its expires_after of 1day")
    );
    assert!(keys(&approved).contains(&"c-1/review_request/o-1"));
    assert_eq!(p.stats.emails_expired, 1);
}

#[test]
fn a_backlog_sends_one_marketing_email_now_the_most_relevant_and_holds_the_rest_in_real_time() {
    // The worker was away: a week of one customer's emails is overdue.
    let now = Timestamp::now();
    let mut p = pipeline(
        expiring_after(Duration::from_secs(30 * 86_400)),
        Lateness {
            go_live: None,
            clock: Clock::Wall,
        },
    );
    let approved = run(
        &mut p,
        &[
            placed(1, later(now, days(-10)), "o-1"),
            delivered(
                2,
                later(now, SignedDuration::from_hours(-24 * 10 + 12)),
                "o-1",
            ),
            placed(3, later(now, SignedDuration::from_hours(-30)), "o-2"),
        ],
        now,
    );
    // The confirmations go, whatever the cap; of the marketing emails,
    // the one about the newest order (o-2's welcome is not: not a first
    // order), the latest due: o-1's review request, due two and a half
    // days ago.
    assert_eq!(
        keys(&approved),
        [
            "c-1/order_confirmation/o-1",
            "c-1/review_request/o-1",
            "c-1/order_confirmation/o-2",
        ]
    );
    let rows = stored(&mut p);
    let cap = SignedDuration::from_hours(20);
    for key in [
        "c-1/welcome/o-1",
        "c-1/thank_you/o-1",
        "c-1/delivery_followup/o-1",
    ] {
        let e = email(&rows, key);
        assert_eq!(e.status, Status::Pending, "{key}");
        assert!(
            e.fire_at >= later(now, cap),
            "{key} waits out the cap in real time"
        );
        assert_eq!(
            e.deferred.as_deref(),
            Some("frequency cap: one marketing email per 20h"),
            "{key}"
        );
    }
    let journey = p.store().begin().unwrap().journey("c-1").unwrap().unwrap();
    assert!(journey.last_marketing_at.is_some_and(|at| at >= now));
}

#[test]
fn a_later_win_back_due_with_an_earlier_one_supersedes_it() {
    let now = Timestamp::now();
    let mut p = pipeline(
        expiring_after(Duration::from_secs(365 * 86_400)),
        Lateness {
            go_live: None,
            clock: Clock::Wall,
        },
    );
    let approved = run(&mut p, &[placed(1, later(now, days(-130)), "o-1")], now);
    assert_eq!(
        keys(&approved),
        ["c-1/order_confirmation/o-1", "c-1/win_back_final/o-1"]
    );
    let rows = stored(&mut p);
    let first = email(&rows, "c-1/win_back/o-1");
    assert_eq!(first.status, Status::Cancelled);
    assert!(
        first
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("superseded by win_back_final")),
        "{:?}",
        first.reason
    );
    // The welcome (due 129 days ago) waits its turn under the cap.
    assert_eq!(email(&rows, "c-1/welcome/o-1").status, Status::Pending);
}

#[test]
fn a_wait_that_would_end_past_the_expiry_expires_the_email_at_once() {
    let now = Timestamp::now();
    let hours = SignedDuration::from_hours;
    let mut p = pipeline(
        expiring_after(Duration::from_secs(92 * 3600)),
        Lateness {
            go_live: None,
            clock: Clock::Wall,
        },
    );
    run(
        &mut p,
        &[
            placed(1, later(now, hours(-98)), "o-1"),
            delivered(2, later(now, hours(-90)), "o-1"),
        ],
        now,
    );
    let rows = stored(&mut p);
    // All three overdue together, the follow-up (due 42 h ago) goes first:
    // the latest due. The thank-you (due 66 h ago) waits out the cap: 86 h
    // late then, inside its 92. The welcome, due 74 h ago, would be 94 h
    // late by then: it expires now, with the reason.
    assert_eq!(
        email(&rows, "c-1/delivery_followup/o-1").status,
        Status::Sending
    );
    assert_eq!(email(&rows, "c-1/thank_you/o-1").status, Status::Pending);
    let welcome = email(&rows, "c-1/welcome/o-1");
    assert_eq!(welcome.status, Status::Suppressed);
    assert!(
        welcome
            .reason
            .as_deref()
            .is_some_and(|r| r
                .starts_with("expired: frequency cap: one marketing email per 20h holds it until")),
        "{:?}",
        welcome.reason
    );
}

#[test]
fn a_retry_keeps_its_place_under_the_cap() {
    // A marketing email that met a passing SMTP failure is tried again
    // when its wait is over, not held back by the cap its own first
    // attempt set.
    let now = Timestamp::now();
    let mut p = pipeline(
        expiring_after(Duration::from_secs(30 * 86_400)),
        Lateness {
            go_live: None,
            clock: Clock::Wall,
        },
    );
    let approved = run(&mut p, &[placed(1, later(now, days(-2)), "o-1")], now);
    let welcome = approved
        .iter()
        .find(|e| e.template == "welcome")
        .expect("the welcome goes");
    p.store()
        .record_delivery(
            welcome.id,
            &Outcome::Retry {
                at: now,
                reply: "transient: 451 try again".into(),
            },
        )
        .unwrap();
    let again = run(&mut p, &[], later(now, SignedDuration::from_secs(1)));
    assert_eq!(keys(&again), ["c-1/welcome/o-1"]);
}

#[test]
fn on_the_events_clock_without_lag_nothing_is_late() {
    // What `simulate` plans and `journeys.clock = "events"` sends: a log
    // from long ago is judged at its own time.
    let mut p = pipeline(|_| {}, Lateness::NONE);
    let start = t("2024-03-02T10:00:00Z");
    let approved = run(
        &mut p,
        &[
            placed(1, start, "o-1"),
            delivered(2, later(start, days(2)), "o-1"),
        ],
        later(start, days(30)),
    );
    assert_eq!(
        keys(&approved),
        [
            "c-1/order_confirmation/o-1",
            "c-1/welcome/o-1",
            "c-1/thank_you/o-1",
            "c-1/delivery_followup/o-1",
            "c-1/review_request/o-1",
        ]
    );
    assert_eq!(p.stats.emails_expired + p.stats.before_go_live, 0);
}

#[test]
fn quiet_hours_hold_at_the_real_time_an_email_is_decided_at() {
    // The welcome is due at 14:00 UTC, outside quiet hours; events arrive
    // ten hours late, so it would go at midnight: it waits for 08:00 (plus
    // the customer's jitter), in real time.
    let lag = SignedDuration::from_hours(10);
    let mut p = pipeline(
        |_| {},
        Lateness {
            go_live: None,
            clock: Clock::Events { lag },
        },
    );
    run(
        &mut p,
        &[placed(1, t("2026-03-02T14:00:00Z"), "o-1")],
        t("2026-03-03T15:00:00Z"),
    );
    let rows = stored(&mut p);
    let welcome = email(&rows, "c-1/welcome/o-1");
    assert_eq!(welcome.status, Status::Pending);
    assert_eq!(
        welcome.deferred.as_deref(),
        Some("quiet hours 21:00-08:00 UTC")
    );
    let goes_at = later(welcome.fire_at, lag);
    assert!(
        goes_at >= t("2026-03-04T08:00:00Z") && goes_at < t("2026-03-04T08:30:00Z"),
        "{goes_at}"
    );
}
