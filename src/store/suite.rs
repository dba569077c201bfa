//! The store tests every implementation must pass, run against SQLite (a
//! file in a temporary folder) and PostgreSQL (a fresh schema per test).
//!
//! PostgreSQL: `AFTERCARE_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`. A server that cannot be
//! reached fails these tests: it never skips them.

use jiff::Timestamp;
use serde_json::json;

use super::{
    Accepted, Addressee, Backlog, IntakeRow, Lease, Outcome, ParkedEvent, PostgresStore,
    SqliteStore, Status, Store, StoreError, Transaction,
};
use crate::event::Unresolved;
use crate::journey::{EmailClass, Journey, NewEmail, Selector, ShopStats, Verdict};

/// A store implementation under test, with a place for its data.
pub(super) trait Harness {
    type Store: Store + Inspect;
    /// A new handle on the same store, as a worker starting up opens it.
    fn open(&self) -> Self::Store;
}

/// What the tests read beyond the `Store` trait.
pub(super) trait Inspect {
    /// `email_log` as (email id, status), in order.
    fn email_log(&mut self) -> Vec<(i64, String)>;
    /// Every email as (key, status, reason), by key.
    fn email_statuses(&mut self) -> Vec<(String, String, Option<String>)>;
    /// Rows of data shared by scheduled emails, and emails holding data
    /// of their own.
    fn stored_data(&mut self) -> (i64, i64);
}

pub(super) struct SqliteHarness {
    dir: tempfile::TempDir,
}

impl SqliteHarness {
    pub(super) fn new() -> SqliteHarness {
        SqliteHarness {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Harness for SqliteHarness {
    type Store = SqliteStore;

    fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.dir.path().join("data/aftercare.db")).unwrap()
    }
}

pub(super) fn postgres_url() -> String {
    std::env::var("AFTERCARE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The test server's settings, with a lock timeout so that a test that
/// would wait forever on a lock fails instead.
pub(super) fn postgres_config() -> ::postgres::Config {
    let url = postgres_url();
    let mut config: ::postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("AFTERCARE_TEST_POSTGRES_URL `{url}`: {e}"));
    let options = match config.get_options() {
        Some(o) => format!("{o} -c lock_timeout=20s"),
        None => "-c lock_timeout=20s".to_owned(),
    };
    config.options(&options);
    config
}

/// A schema of its own for one test, dropped with it (on failure too).
pub(super) struct PostgresHarness {
    pub(super) schema: String,
}

impl PostgresHarness {
    /// A fresh, not yet existing, schema name; `PostgresStore` makes it.
    pub(super) fn new() -> PostgresHarness {
        // Fail here, with the reason, when the server is not there.
        let admin = postgres_config()
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| {
                panic!(
                    "the PostgreSQL store tests need a server at {} \
                     (set AFTERCARE_TEST_POSTGRES_URL): {}",
                    postgres_url(),
                    super::postgres::describe(&e)
                )
            });
        admin.close().unwrap();
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        PostgresHarness {
            schema: format!("t_{}", hex::encode(random)),
        }
    }
}

impl Harness for PostgresHarness {
    type Store = PostgresStore;

    fn open(&self) -> PostgresStore {
        PostgresStore::with_config(postgres_config(), Some(&self.schema)).unwrap()
    }
}

impl Drop for PostgresHarness {
    fn drop(&mut self) {
        // Best effort, and never a second panic while a test fails.
        if let Ok(mut admin) = postgres_config().connect(::postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

/// Generates `#[test]`s running each named suite test against each store.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::SqliteHarness::new());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::PostgresHarness::new());
                }
            )*
        }
    };
}

suite!(
    scheduling_is_idempotent_by_key,
    cancel_touches_only_pending_emails_of_the_selected_order_and_templates,
    due_emails_come_by_fire_time_then_creation_and_retries_wait,
    due_emails_of_given_streams_only,
    decisions_are_the_final_ones_by_due_time,
    dedup_journeys_and_positions_survive_reopening,
    a_lease_is_reclaimed_by_its_owner_at_once_and_by_others_when_it_expires,
    a_lease_is_renewed_only_by_the_worker_still_holding_it,
    every_status_change_is_logged_in_order,
    a_secret_is_made_once_and_shared,
    unsubscribing_marks_a_known_customer_only,
    suppressed_addresses_match_case_insensitively,
    a_bounce_fails_the_email_and_suppresses_its_address,
    outcomes_recorded_together_each_take_effect,
    shop_stats_round_trip_and_start_empty,
    postponed_emails_wait_with_their_reason,
    delivery_outcomes_are_recorded,
    times_round_trip_at_millisecond_precision,
    a_failed_batch_leaves_nothing,
    the_backlog_counts_pending_and_overdue_emails,
    the_report_reads_every_journey_and_every_sent_email,
    an_order_stays_with_the_first_customer_who_placed_it,
    parked_events_come_out_for_their_order_in_event_order_as_they_went_in,
    parked_events_expire_by_stream_oldest_first_and_their_ids_are_forgotten,
    go_live_is_recorded_once,
    a_store_in_use_before_go_live_was_recorded_went_live_at_the_epoch,
    a_customers_pending_emails_and_the_overdue_ones_are_listed,
    an_approved_email_that_expired_ends_suppressed_with_the_reason,
    a_retried_webhook_delivery_is_stored_once_per_source,
    the_intake_depth_counts_deliveries_not_applied,
    the_intake_comes_in_arrival_order_without_the_applied,
    deliveries_marked_applied_in_a_batch_that_rolls_back_stay_unapplied,
    a_delivery_applied_by_another_worker_fails_the_batch,
    an_applied_delivery_is_a_duplicate_until_purged,
    purging_deletes_only_deliveries_applied_before_the_cut,
    the_intake_lease_has_one_holder_until_it_expires,
    workers_racing_for_the_intake_lease_get_it_once,
    a_delivery_retried_to_several_workers_at_once_is_stored_once,
    the_emails_one_event_schedules_store_its_data_once,
);

pub(super) fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub(super) fn email(key: &str, order: &str, template: &str, due: &str) -> NewEmail {
    NewEmail {
        key: key.into(),
        customer_id: "c-1".into(),
        template: template.into(),
        class: EmailClass::Marketing,
        order_id: Some(order.into()),
        due_at: t(due),
        data: json!({"order": {"id": order}}).into(),
        variant: None,
    }
}

pub(super) fn lease(owner: &str) -> Lease {
    Lease {
        owner: owner.into(),
        until: t("2026-06-01T00:00:00Z"),
    }
}

pub(super) fn to() -> Addressee {
    Addressee {
        recipient: Some("anna@example.com".into()),
        locale: "en".into(),
    }
}

fn scheduling_is_idempotent_by_key(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    assert!(
        tx.schedule(&email("k1", "o-1", "welcome", "2026-01-02T00:00:00Z"), "s")
            .unwrap()
    );
    assert!(
        !tx.schedule(&email("k1", "o-1", "welcome", "2026-01-09T00:00:00Z"), "s")
            .unwrap()
    );
    tx.commit().unwrap();
    assert_eq!(s.next_fire(None).unwrap(), Some(t("2026-01-02T00:00:00Z")));
}

fn the_emails_one_event_schedules_store_its_data_once(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    let first = email("a", "o-1", "welcome", "2026-01-02T00:00:00Z");
    for (key, template) in [("a", "welcome"), ("b", "win_back"), ("c", "review_request")] {
        let email = NewEmail {
            key: key.into(),
            template: template.into(),
            data: first.data.clone(),
            ..first.clone()
        };
        assert!(tx.schedule(&email, "s").unwrap());
    }
    // Scheduled already: the row made for its data is taken back.
    assert!(
        !tx.schedule(&email("a", "o-9", "welcome", "2026-01-02T00:00:00Z"), "s")
            .unwrap()
    );
    // Equal data of another event is not shared.
    assert!(
        tx.schedule(&email("d", "o-1", "thank_you", "2026-01-02T00:00:00Z"), "s")
            .unwrap()
    );
    tx.commit().unwrap();
    assert_eq!(
        s.stored_data(),
        (2, 0),
        "(shared rows, emails with their own)"
    );

    let mut tx = s.begin().unwrap();
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    let keys: Vec<&str> = due.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    for e in &due {
        assert_eq!(e.data, json!({"order": {"id": "o-1"}}), "{}", e.key);
    }
    let whole = json!({"order": {"id": "o-1"}, "customer": {"id": "c-1"}});
    tx.approve(due[0].id, &to(), &whole, &lease("w1")).unwrap();
    tx.commit().unwrap();
    assert_eq!(s.stored_data(), (2, 1));
    // Approved, it is read with data of its own: the others keep theirs.
    let resumed = s
        .reclaim(&lease("w1"), t("2026-01-03T00:00:00Z"), true)
        .unwrap();
    assert_eq!(resumed.len(), 1);
    assert_eq!((resumed[0].key.as_str(), &resumed[0].data), ("a", &whole));
    let mut tx = s.begin().unwrap();
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    assert_eq!(due.len(), 3);
    assert!(
        due.iter()
            .all(|e| e.data == json!({"order": {"id": "o-1"}}))
    );
}

fn cancel_touches_only_pending_emails_of_the_selected_order_and_templates(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for (key, order, template) in [
        ("a", "o-1", "welcome"),
        ("b", "o-1", "review_request"),
        ("c", "o-2", "review_request"),
        ("d", "o-1", "thank_you"),
    ] {
        tx.schedule(&email(key, order, template, "2026-01-02T00:00:00Z"), "s")
            .unwrap();
    }
    // "d" is already on its way: a cancel must not touch it.
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    let d = due.iter().find(|e| e.key == "d").unwrap().id;
    tx.approve(d, &to(), &json!({}), &lease("w1")).unwrap();
    let selector = Selector {
        customer_id: "c-1".into(),
        order_id: "o-1".into(),
        templates: Some(vec!["review_request".into(), "thank_you".into()]),
    };
    assert_eq!(
        tx.cancel(&selector, "return requested", &to())
            .unwrap()
            .len(),
        1
    );
    let all = Selector {
        templates: None,
        ..selector
    };
    assert_eq!(
        tx.cancel(&all, "order o-1 cancelled", &to()).unwrap().len(),
        1
    );
    tx.commit().unwrap();
    assert_eq!(
        s.email_statuses(),
        [
            (
                "a".into(),
                "cancelled".into(),
                Some("order o-1 cancelled".into())
            ),
            (
                "b".into(),
                "cancelled".into(),
                Some("return requested".into())
            ),
            ("c".into(), "pending".into(), None),
            ("d".into(), "sending".into(), None),
        ]
    );
}

fn due_emails_come_by_fire_time_then_creation_and_retries_wait(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("late", "o-1", "a", "2026-01-03T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("first", "o-1", "b", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("second", "o-1", "c", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("future", "o-1", "d", "2026-02-01T00:00:00Z"), "s")
        .unwrap();
    let due = tx.due(t("2026-01-31T00:00:00Z"), None, 10).unwrap();
    let keys: Vec<&str> = due.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["first", "second", "late"]);
    tx.approve(due[0].id, &to(), &json!({"x": 1}), &lease("w1"))
        .unwrap();
    tx.commit().unwrap();

    let in_flight = s
        .reclaim(&lease("w1"), t("2026-01-01T00:00:00Z"), true)
        .unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].data, json!({"x": 1}));
    assert_eq!(in_flight[0].recipient.as_deref(), Some("anna@example.com"));
    assert_eq!(in_flight[0].status, Status::Sending);

    s.record_delivery(
        in_flight[0].id,
        &Outcome::Retry {
            at: t("2026-01-20T00:00:00Z"),
            reply: "451 try later".into(),
        },
    )
    .unwrap();
    let mut tx = s.begin().unwrap();
    let due = tx.due(t("2026-01-10T00:00:00Z"), None, 10).unwrap();
    assert_eq!(
        due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["second", "late"]
    );
    let due = tx.due(t("2026-01-20T00:00:00Z"), None, 10).unwrap();
    assert!(due.iter().any(|e| e.key == "first" && e.attempts == 1));
    // The plan keeps the original due time.
    assert_eq!(
        due.iter().find(|e| e.key == "first").unwrap().due_at,
        t("2026-01-02T00:00:00Z")
    );
    // A limit takes the oldest.
    let due = tx.due(t("2026-01-20T00:00:00Z"), None, 1).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].key, "second");
}

fn due_emails_of_given_streams_only(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "a", "2026-01-05T00:00:00Z"), "orders-0")
        .unwrap();
    tx.schedule(&email("b", "o-1", "b", "2026-01-03T00:00:00Z"), "orders-1")
        .unwrap();
    tx.schedule(&email("c", "o-1", "c", "2026-01-04T00:00:00Z"), "returns-0")
        .unwrap();
    tx.commit().unwrap();
    let mine = ["orders-0".to_owned(), "returns-0".to_owned()];
    assert_eq!(
        s.next_fire(Some(&mine)).unwrap(),
        Some(t("2026-01-04T00:00:00Z"))
    );
    assert_eq!(s.next_fire(None).unwrap(), Some(t("2026-01-03T00:00:00Z")));
    assert_eq!(s.next_fire(Some(&[])).unwrap(), None);
    let mut tx = s.begin().unwrap();
    let due = tx.due(t("2026-02-01T00:00:00Z"), Some(&mine), 10).unwrap();
    assert_eq!(
        due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["c", "a"]
    );
    assert!(
        tx.due(t("2026-02-01T00:00:00Z"), Some(&[]), 10)
            .unwrap()
            .is_empty()
    );
}

fn decisions_are_the_final_ones_by_due_time(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("b", "o-1", "b", "2026-01-05T00:00:00Z"), "s")
        .unwrap();
    assert!(
        tx.record(
            &email("a", "o-1", "a", "2026-01-01T00:00:00Z"),
            Verdict::Cancelled,
            "shipment s-1 already delivered",
            &to(),
        )
        .unwrap()
    );
    // Recorded once: the same key again changes nothing.
    assert!(
        !tx.record(
            &email("a", "o-1", "a", "2026-01-01T00:00:00Z"),
            Verdict::Suppressed,
            "again",
            &to(),
        )
        .unwrap()
    );
    tx.schedule(&email("c", "o-1", "c", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    let due = tx.due(t("2026-01-06T00:00:00Z"), None, 10).unwrap();
    tx.decide(
        due[0].id,
        Verdict::Suppressed,
        "no marketing consent",
        &to(),
    )
    .unwrap();
    tx.approve(due[1].id, &to(), &json!({}), &lease("w1"))
        .unwrap();
    tx.commit().unwrap();
    let decided = s.decisions().unwrap();
    let summary: Vec<(String, Status, Option<String>)> = decided
        .iter()
        .map(|e| (e.key.clone(), e.status, e.reason.clone()))
        .collect();
    // "b" is approved but not yet sent: no decision to show.
    assert_eq!(
        summary,
        [
            (
                "a".into(),
                Status::Cancelled,
                Some("shipment s-1 already delivered".into())
            ),
            (
                "c".into(),
                Status::Suppressed,
                Some("no marketing consent".into())
            )
        ]
    );
    assert_eq!(decided[0].recipient.as_deref(), Some("anna@example.com"));
    assert_eq!(decided[0].locale.as_deref(), Some("en"));
    assert_eq!(decided[0].class, EmailClass::Marketing);
    assert_eq!(decided[0].data, json!({"order": {"id": "o-1"}}));
    let b = s
        .reclaim(&lease("w1"), t("2026-01-01T00:00:00Z"), true)
        .unwrap()[0]
        .id;
    s.record_delivery(
        b,
        &Outcome::Sent {
            at: t("2026-01-05T00:00:01Z"),
            reply: "250 ok".into(),
        },
    )
    .unwrap();
    let keys: Vec<String> = s.decisions().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["a", "c", "b"]);
}

fn dedup_journeys_and_positions_survive_reopening(h: &impl Harness) {
    {
        let mut s = h.open();
        let mut tx = s.begin().unwrap();
        assert!(tx.seen("e-1").unwrap().is_none());
        tx.mark_seen("e-1", "d").unwrap();
        tx.mark_seen("e-1", "d").unwrap();
        let mut j = Journey::default();
        j.profile.email = Some("anna@example.com".into());
        j.profile.name = Some("Սարգսյան, Անի".into());
        j.profile.first_name = Some("Անի".into());
        tx.save_journey("c-1", &j).unwrap();
        tx.set_position("file:x", "100:2").unwrap();
        tx.set_position("file:x", "120:3").unwrap();
        tx.commit().unwrap();
        // An uncommitted batch leaves nothing behind.
        let mut tx = s.begin().unwrap();
        tx.mark_seen("e-2", "d").unwrap();
        tx.set_position("file:x", "999:9").unwrap();
        drop(tx);
        assert_eq!(s.position("file:x").unwrap().as_deref(), Some("120:3"));
    }
    let mut s = h.open();
    assert_eq!(s.position("file:x").unwrap().as_deref(), Some("120:3"));
    assert_eq!(s.position("file:y").unwrap(), None);
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.seen("e-1").unwrap().as_deref(), Some("d"));
    assert!(tx.seen("e-2").unwrap().is_none());
    let j = tx.journey("c-1").unwrap().unwrap();
    assert_eq!(j.profile.email.as_deref(), Some("anna@example.com"));
    assert_eq!(j.profile.name.as_deref(), Some("Սարգսյան, Անի"));
    assert_eq!(j.profile.first_name.as_deref(), Some("Անի"));
    assert!(tx.journey("c-2").unwrap().is_none());
}

fn a_lease_is_reclaimed_by_its_owner_at_once_and_by_others_when_it_expires(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("k", "o-1", "welcome", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    let id = tx.due(t("2026-01-03T00:00:00Z"), None, 1).unwrap()[0].id;
    tx.approve(id, &to(), &json!({}), &lease("w1")).unwrap();
    tx.commit().unwrap();

    let before_expiry = t("2026-05-01T00:00:00Z");
    let mut other = s.reopen().unwrap();
    // Another worker waits for the lease; a periodic look by the owner
    // leaves its own deliveries alone.
    assert!(
        other
            .reclaim(&lease("w2"), before_expiry, true)
            .unwrap()
            .is_empty()
    );
    assert!(
        s.reclaim(&lease("w1"), before_expiry, false)
            .unwrap()
            .is_empty()
    );
    // The owner started again takes it back at once...
    assert_eq!(
        s.reclaim(&lease("w1"), before_expiry, true).unwrap().len(),
        1
    );
    // A worker shutting down releases what it will not deliver: anyone
    // may take it at once.
    s.release(&[id]).unwrap();
    let mut third = s.reopen().unwrap();
    assert_eq!(
        third
            .reclaim(&lease("w3"), before_expiry, false)
            .unwrap()
            .len(),
        1
    );
    // ...and once the lease has expired, anyone else may.
    let after_expiry = t("2026-07-01T00:00:00Z");
    let taken = other.reclaim(&lease("w2"), after_expiry, false).unwrap();
    assert_eq!(
        taken.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["k"]
    );
    assert!(
        other
            .reclaim(&lease("w3"), before_expiry, false)
            .unwrap()
            .is_empty()
    );
    // Released only while on its way: a sent email stays sent.
    s.record_delivery(
        id,
        &Outcome::Sent {
            at: after_expiry,
            reply: "250".into(),
        },
    )
    .unwrap();
    s.release(&[id]).unwrap();
    assert!(
        third
            .reclaim(&lease("w3"), after_expiry, true)
            .unwrap()
            .is_empty()
    );
}

fn a_lease_is_renewed_only_by_the_worker_still_holding_it(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for key in ["a", "b", "c"] {
        tx.schedule(&email(key, "o-1", key, "2026-01-02T00:00:00Z"), "s")
            .unwrap();
    }
    let ids: Vec<i64> = tx
        .due(t("2026-01-03T00:00:00Z"), None, 3)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let until = |owner: &str, at: &str| Lease {
        owner: owner.into(),
        until: t(at),
    };
    tx.approve(a, &to(), &json!({}), &lease("w1")).unwrap();
    tx.approve(b, &to(), &json!({}), &until("w1", "2026-04-01T00:00:00Z"))
        .unwrap();
    tx.approve(c, &to(), &json!({}), &lease("w1")).unwrap();
    tx.commit().unwrap();
    let longer = |owner: &str| until(owner, "2026-09-01T00:00:00Z");

    // b's lease ran out while it waited in w1's queue, and w2 took it over.
    let mut other = s.reopen().unwrap();
    let taken = other
        .reclaim(&lease("w2"), t("2026-05-01T00:00:00Z"), false)
        .unwrap();
    assert_eq!(taken.iter().map(|e| e.id).collect::<Vec<_>>(), [b]);
    // w1 renews a and c (their leases have run out by now too, yet nobody
    // took them: still its own), not b.
    let mut renewed = s.renew(&ids, &longer("w1")).unwrap();
    renewed.sort_unstable();
    assert_eq!(renewed, [a, c]);
    // The renewal holds against others until it runs out...
    let before = t("2026-08-01T00:00:00Z");
    let mut third = s.reopen().unwrap();
    let stolen = third.reclaim(&lease("w3"), before, false).unwrap();
    assert!(
        stolen.iter().all(|e| e.id == b),
        "{:?}",
        stolen.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    // ...and ends with the delivery: a sent email is no one's to renew.
    s.record_delivery(
        a,
        &Outcome::Sent {
            at: before,
            reply: "250".into(),
        },
    )
    .unwrap();
    assert_eq!(s.renew(&[a], &longer("w1")).unwrap(), Vec::<i64>::new());
    assert_eq!(s.renew(&[], &longer("w1")).unwrap(), Vec::<i64>::new());
}

fn every_status_change_is_logged_in_order(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "welcome", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("b", "o-1", "thank_you", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    // Decided as it is inserted (a cap, a holdout): logged at once.
    tx.record(
        &email("c", "o-1", "review_request", "2026-01-02T00:00:00Z"),
        Verdict::Suppressed,
        "frequency cap",
        &to(),
    )
    .unwrap();
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    tx.approve(due[1].id, &to(), &json!({}), &lease("w1"))
        .unwrap();
    tx.decide(
        due[0].id,
        Verdict::Suppressed,
        "no marketing consent",
        &to(),
    )
    .unwrap();
    tx.commit().unwrap();
    // Not a change of status: not logged.
    s.record_delivery(
        due[1].id,
        &Outcome::Sent {
            at: t("2026-01-03T00:00:00Z"),
            reply: "250".into(),
        },
    )
    .unwrap();
    s.record_delivery(
        due[1].id,
        &Outcome::Sent {
            at: t("2026-01-03T00:00:00Z"),
            reply: "250".into(),
        },
    )
    .unwrap();
    // An email scheduled is not logged until its first decision: its row
    // is its scheduling.
    let (a, b) = (due[0].id, due[1].id);
    let log = s.email_log();
    let c = log[0].0;
    assert!(c != a && c != b, "{log:?}");
    assert_eq!(
        log,
        [
            (c, "suppressed".into()),
            (b, "sending".into()),
            (a, "suppressed".into()),
            (b, "sent".into()),
        ]
    );
}

fn a_secret_is_made_once_and_shared(h: &impl Harness) {
    let mut a = h.open();
    assert_eq!(a.stored_secret("unsubscribe").unwrap(), None);
    assert_eq!(
        a.stored_secret("unsubscribe").unwrap(),
        None,
        "looking does not make one"
    );
    let first = a.secret("unsubscribe").unwrap();
    assert_eq!(first.len(), 32);
    let mut b = a.reopen().unwrap();
    assert_eq!(b.secret("unsubscribe").unwrap(), first);
    assert_ne!(b.secret("other").unwrap(), first);
    assert_eq!(h.open().secret("unsubscribe").unwrap(), first);
    assert_eq!(b.stored_secret("unsubscribe").unwrap(), Some(first));
}

fn unsubscribing_marks_a_known_customer_only(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.save_journey("c-1", &Journey::default()).unwrap();
    tx.commit().unwrap();
    assert!(s.unsubscribe("c-1").unwrap());
    assert!(!s.unsubscribe("c-404").unwrap());
    let mut tx = s.begin().unwrap();
    assert!(tx.journey("c-1").unwrap().unwrap().profile.unsubscribed);
    assert!(tx.journey("c-404").unwrap().is_none());
}

fn suppressed_addresses_match_case_insensitively(h: &impl Harness) {
    let mut s = h.open();
    s.record_delivery(0, &bounce("Anna@example.COM", "550 5.1.1"))
        .unwrap();
    s.record_delivery(0, &bounce("anna@example.com", "550 5.1.1 again"))
        .unwrap();
    let mut tx = s.begin().unwrap();
    assert!(tx.is_suppressed("Anna@Example.com").unwrap());
    assert!(!tx.is_suppressed("ben@example.com").unwrap());
}

/// A bounce from `address` (with no email of id 0, only the address is
/// suppressed).
fn bounce(address: &str, reason: &str) -> Outcome {
    Outcome::Bounced {
        address: address.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Schedules one welcome email in `s` and approves it for worker w1: its id.
fn one_approved(s: &mut impl Store) -> i64 {
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "welcome", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    let id = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap()[0].id;
    tx.approve(id, &to(), &json!({}), &lease("w1")).unwrap();
    tx.commit().unwrap();
    id
}

fn a_bounce_fails_the_email_and_suppresses_its_address(h: &impl Harness) {
    let mut s = h.open();
    let id = one_approved(&mut s);
    s.record_delivery(id, &bounce("Anna@example.com", "550 5.1.1 no such mailbox"))
        .unwrap();
    assert_eq!(
        s.email_statuses(),
        [(
            "a".to_owned(),
            "failed".to_owned(),
            Some("550 5.1.1 no such mailbox".to_owned())
        )]
    );
    assert!(
        s.begin()
            .unwrap()
            .is_suppressed("anna@example.com")
            .unwrap()
    );
}

fn outcomes_recorded_together_each_take_effect(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for (key, order) in [("a", "o-1"), ("b", "o-2"), ("c", "o-3")] {
        tx.schedule(&email(key, order, "welcome", "2026-01-02T00:00:00Z"), "s")
            .unwrap();
    }
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    for e in &due {
        tx.approve(e.id, &to(), &json!({}), &lease("w1")).unwrap();
    }
    tx.commit().unwrap();
    let id = |key: &str| due.iter().find(|e| e.key == key).unwrap().id;
    s.record_deliveries(&[
        (
            id("a"),
            Outcome::Sent {
                at: t("2026-01-03T00:00:00Z"),
                reply: "250 ok".into(),
            },
        ),
        (
            id("b"),
            bounce("Bob@example.com", "550 5.1.1 no such mailbox"),
        ),
        (
            id("c"),
            Outcome::Retry {
                at: t("2026-01-04T00:00:00Z"),
                reply: "451 later".into(),
            },
        ),
    ])
    .unwrap();
    assert_eq!(
        s.email_statuses(),
        [
            ("a".to_owned(), "sent".to_owned(), None),
            (
                "b".to_owned(),
                "failed".to_owned(),
                Some("550 5.1.1 no such mailbox".to_owned())
            ),
            ("c".to_owned(), "pending".to_owned(), None),
        ]
    );
    let mut tx = s.begin().unwrap();
    assert!(tx.is_suppressed("bob@example.com").unwrap());
    let retried = tx.due(t("2026-01-04T00:00:00Z"), None, 10).unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].key.as_str(), retried[0].attempts), ("c", 1));
}

fn shop_stats_round_trip_and_start_empty(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.shop_stats().unwrap(), ShopStats::default());
    let mut stats = ShopStats::default();
    stats
        .order_totals
        .entry("EUR".into())
        .or_default()
        .add("42.50".parse().unwrap());
    tx.save_shop_stats(&stats).unwrap();
    assert_eq!(tx.shop_stats().unwrap(), stats);
    tx.commit().unwrap();
    let mut other = s.reopen().unwrap();
    let mut tx = other.begin().unwrap();
    assert_eq!(tx.shop_stats().unwrap(), stats);
    // The secrets live beside them and do not disturb them.
    drop(tx);
    other.secret("unsubscribe").unwrap();
    let mut tx = other.begin().unwrap();
    assert_eq!(tx.shop_stats().unwrap(), stats);
}

fn postponed_emails_wait_with_their_reason(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "welcome", "2026-01-02T21:30:00Z"), "s")
        .unwrap();
    tx.schedule(&email("b", "o-1", "thank_you", "2026-01-02T22:00:00Z"), "s")
        .unwrap();
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    tx.postpone(due[0].id, t("2026-01-03T08:10:00Z"), "quiet hours")
        .unwrap();
    // Only a pending email waits.
    tx.approve(due[1].id, &to(), &json!({}), &lease("w1"))
        .unwrap();
    tx.postpone(due[1].id, t("2026-01-09T00:00:00Z"), "too late")
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(s.next_fire(None).unwrap(), Some(t("2026-01-03T08:10:00Z")));
    let mut tx = s.begin().unwrap();
    assert!(
        tx.due(t("2026-01-03T08:00:00Z"), None, 10)
            .unwrap()
            .is_empty()
    );
    let due = tx.due(t("2026-01-03T08:10:00Z"), None, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].deferred.as_deref(), Some("quiet hours"));
    assert_eq!(due[0].due_at, t("2026-01-02T21:30:00Z"));
    assert_eq!(due[0].fire_at, t("2026-01-03T08:10:00Z"));
    drop(tx);
    let sending = s
        .reclaim(&lease("w1"), t("2026-01-01T00:00:00Z"), true)
        .unwrap();
    assert_eq!(sending[0].fire_at, t("2026-01-02T22:00:00Z"));
    assert_eq!(sending[0].deferred, None);
}

fn delivery_outcomes_are_recorded(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for key in ["retry", "ambiguous", "deferred", "failed"] {
        tx.schedule(&email(key, "o-1", key, "2026-01-02T00:00:00Z"), "s")
            .unwrap();
    }
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    for e in &due {
        tx.approve(e.id, &to(), &json!({"n": 1}), &lease("w1"))
            .unwrap();
    }
    tx.commit().unwrap();
    let sending = s
        .reclaim(&lease("w1"), t("2026-01-01T00:00:00Z"), true)
        .unwrap();
    assert_eq!(sending.len(), 4);
    assert!(sending.iter().all(|e| e.first_attempt_at.is_some()));
    let id = |key: &str| due.iter().find(|e| e.key == key).unwrap().id;
    let later = t("2026-01-04T00:00:00Z");
    s.record_delivery(
        id("retry"),
        &Outcome::Retry {
            at: later,
            reply: "451".into(),
        },
    )
    .unwrap();
    s.record_delivery(
        id("ambiguous"),
        &Outcome::Ambiguous {
            at: later,
            reply: "connection reset".into(),
        },
    )
    .unwrap();
    s.record_delivery(
        id("deferred"),
        &Outcome::Deferred {
            at: later,
            reply: "421".into(),
        },
    )
    .unwrap();
    s.record_delivery(
        id("failed"),
        &Outcome::Failed {
            reason: "550 5.7.1 spam".into(),
        },
    )
    .unwrap();
    let mut tx = s.begin().unwrap();
    let waiting = tx.due(later, None, 10).unwrap();
    let attempts: Vec<(String, u32)> = waiting
        .iter()
        .map(|e| (e.key.clone(), e.attempts))
        .collect();
    assert_eq!(
        attempts,
        [
            ("retry".into(), 1),
            ("ambiguous".into(), 1),
            ("deferred".into(), 0)
        ]
    );
    // A retried email keeps its first attempt's time and its data.
    let first = sending.iter().find(|e| e.key == "retry").unwrap();
    let retried = waiting.iter().find(|e| e.key == "retry").unwrap();
    assert_eq!(retried.first_attempt_at, first.first_attempt_at);
    assert_eq!(retried.data, json!({"n": 1}));
    assert_eq!(retried.status, Status::Pending);
    tx.approve(retried.id, &to(), &json!({"n": 2}), &lease("w1"))
        .unwrap();
    tx.commit().unwrap();
    let again = s
        .reclaim(&lease("w1"), t("2026-01-01T00:00:00Z"), true)
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].first_attempt_at, first.first_attempt_at);
    assert_eq!(
        s.email_statuses()
            .into_iter()
            .find(|(k, _, _)| k == "failed")
            .unwrap(),
        (
            "failed".into(),
            "failed".into(),
            Some("550 5.7.1 spam".into())
        )
    );
}

fn times_round_trip_at_millisecond_precision(h: &impl Harness) {
    let mut s = h.open();
    let due = t("2026-03-04T05:06:07.089Z");
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "a", "2026-03-04T05:06:07.089Z"), "s")
        .unwrap();
    // Far ahead, as a virtual clock may go.
    tx.schedule(&email("z", "o-1", "z", "9000-12-31T23:59:59.999Z"), "s")
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(s.next_fire(None).unwrap(), Some(due));
    let mut tx = s.begin().unwrap();
    let rows = tx.due(Timestamp::MAX, None, 10).unwrap();
    assert_eq!(rows[0].due_at, due);
    assert_eq!(rows[0].fire_at, due);
    assert_eq!(rows[1].due_at, t("9000-12-31T23:59:59.999Z"));
    let later = t("2026-03-05T00:00:00.001Z");
    tx.postpone(rows[0].id, later, "cap").unwrap();
    tx.commit().unwrap();
    assert_eq!(s.next_fire(None).unwrap(), Some(later));
}

fn a_failed_batch_leaves_nothing(h: &impl Harness) {
    let mut s = h.open();
    {
        let mut tx = s.begin().unwrap();
        tx.schedule(&email("a", "o-1", "a", "2026-01-02T00:00:00Z"), "s")
            .unwrap();
        tx.mark_seen("e-1", "d").unwrap();
        // Dropped: rolled back.
    }
    assert_eq!(s.next_fire(None).unwrap(), None);
    let mut tx = s.begin().unwrap();
    assert!(tx.seen("e-1").unwrap().is_none());
    tx.schedule(&email("a", "o-1", "a", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(s.email_statuses().len(), 1);
}

fn the_backlog_counts_pending_and_overdue_emails(h: &impl Harness) {
    let mut s = h.open();
    assert_eq!(
        s.backlog(t("2026-01-01T00:00:00Z")).unwrap(),
        Backlog::default()
    );
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "a", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("b", "o-1", "b", "2026-01-02T00:10:00Z"), "s")
        .unwrap();
    tx.schedule(&email("c", "o-1", "c", "2026-01-09T00:00:00Z"), "s")
        .unwrap();
    tx.commit().unwrap();
    // Five minutes late is not yet overdue.
    assert_eq!(
        s.backlog(t("2026-01-02T00:14:59Z")).unwrap(),
        Backlog {
            pending: 3,
            overdue: 1,
            parked: 0,
            intake: 0,
        }
    );
    let mut tx = s.begin().unwrap();
    let due = tx.due(t("2026-01-03T00:00:00Z"), None, 1).unwrap();
    tx.approve(due[0].id, &to(), &json!({}), &lease("w1"))
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(
        s.backlog(t("2026-01-03T00:00:00Z")).unwrap(),
        Backlog {
            pending: 2,
            overdue: 1,
            parked: 0,
            intake: 0,
        }
    );
}

fn go_live_is_recorded_once(h: &impl Harness) {
    let first = t("2026-12-01T10:00:00.123Z");
    let mut s = h.open();
    assert_eq!(s.go_live(first).unwrap(), first);
    // Later starts, this handle or another, find the same.
    assert_eq!(s.go_live(t("2026-12-05T00:00:00Z")).unwrap(), first);
    assert_eq!(h.open().go_live(t("2027-01-01T00:00:00Z")).unwrap(), first);
}

fn a_store_in_use_before_go_live_was_recorded_went_live_at_the_epoch(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.save_journey("c-9", &Journey::default()).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        s.go_live(t("2027-01-01T00:00:00Z")).unwrap(),
        Timestamp::UNIX_EPOCH
    );
}

fn a_customers_pending_emails_and_the_overdue_ones_are_listed(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.schedule(&email("a", "o-1", "welcome", "2026-01-02T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("b", "o-1", "thank_you", "2026-01-03T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(
        &email("c", "o-1", "review_request", "2026-01-09T00:00:00Z"),
        "s",
    )
    .unwrap();
    let mut other = email("d", "o-2", "welcome", "2026-01-02T00:00:00Z");
    other.customer_id = "c-2".into();
    tx.schedule(&other, "s").unwrap();
    let pending = tx.pending_of("c-1", t("2026-01-05T00:00:00Z")).unwrap();
    let keys: Vec<&str> = pending.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    tx.commit().unwrap();
    let mut overdue = s.overdue(t("2026-01-05T00:00:00Z")).unwrap();
    overdue.sort();
    assert_eq!(
        overdue,
        [
            ("thank_you".to_owned(), t("2026-01-03T00:00:00Z")),
            ("welcome".to_owned(), t("2026-01-02T00:00:00Z")),
            ("welcome".to_owned(), t("2026-01-02T00:00:00Z")),
        ]
    );
}

fn an_approved_email_that_expired_ends_suppressed_with_the_reason(h: &impl Harness) {
    let mut s = h.open();
    let id = one_approved(&mut s);
    let reason = "expired: 4days late, past its expires_after of 3days";
    s.record_delivery(
        id,
        &Outcome::Expired {
            reason: reason.to_owned(),
        },
    )
    .unwrap();
    assert_eq!(
        s.email_statuses(),
        [(
            "a".to_owned(),
            "suppressed".to_owned(),
            Some(reason.to_owned())
        )]
    );
    let log: Vec<String> = s.email_log().into_iter().map(|(_, st)| st).collect();
    assert_eq!(log, ["sending", "suppressed"]);
}

#[test]
fn an_unreachable_postgres_is_an_error_that_says_so() {
    // Port 1 on the loopback: nothing listens there.
    let err = PostgresStore::connect("postgres://postgres@127.0.0.1:1/test")
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(message.starts_with("postgres: "), "{message}");
    assert!(message.contains("connect"), "{message}");
    assert!(message.contains("refused"), "{message}");
}

fn the_report_reads_every_journey_and_every_sent_email(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for customer in ["c-2", "c-1"] {
        let mut j = Journey::default();
        j.profile.email = Some(format!("{customer}@example.com"));
        tx.save_journey(customer, &j).unwrap();
    }
    let mut b = email("b", "o-1", "review_request", "2026-01-02T00:00:00Z");
    b.variant = Some("b".into());
    tx.schedule(&b, "s").unwrap();
    tx.schedule(&email("a", "o-1", "welcome", "2026-01-01T00:00:00Z"), "s")
        .unwrap();
    tx.schedule(&email("c", "o-1", "win_back", "2026-03-01T00:00:00Z"), "s")
        .unwrap();
    let mut held = email("d", "o-1", "review_request", "2026-01-03T00:00:00Z");
    held.variant = Some("holdout".into());
    tx.schedule(&held, "s").unwrap();
    tx.schedule(&email("e", "o-1", "thank_you", "2026-01-04T00:00:00Z"), "s")
        .unwrap();
    tx.commit().unwrap();
    let mut tx = s.begin().unwrap();
    let mut due = tx.due(t("2026-01-05T00:00:00Z"), None, 10).unwrap();
    for e in &due {
        match e.template.as_str() {
            "thank_you" => tx.decide(e.id, Verdict::Suppressed, "no consent", &to()),
            _ if e.variant.as_deref() == Some("holdout") => {
                tx.decide(e.id, Verdict::HeldOut, "held out", &to())
            }
            _ => tx.approve(e.id, &to(), &json!({}), &lease("w1")),
        }
        .unwrap();
    }
    tx.commit().unwrap();
    due.retain(|e| e.template != "thank_you" && e.variant.as_deref() != Some("holdout"));
    for e in &due {
        s.record_delivery(
            e.id,
            &Outcome::Sent {
                at: t("2026-01-05T00:00:00Z"),
                reply: "250 ok".into(),
            },
        )
        .unwrap();
    }
    let customers: Vec<String> = s.journeys().unwrap().into_iter().map(|(c, _)| c).collect();
    assert_eq!(customers, ["c-1", "c-2"]);
    let sent = s.sent_emails().unwrap();
    let seen: Vec<(&str, Option<&str>, Timestamp, bool)> = sent
        .iter()
        .map(|e| (e.template.as_str(), e.variant.as_deref(), e.at, e.held_out))
        .collect();
    assert_eq!(
        seen,
        [
            ("welcome", None, t("2026-01-01T00:00:00Z"), false),
            (
                "review_request",
                Some("b"),
                t("2026-01-02T00:00:00Z"),
                false
            ),
            (
                "review_request",
                Some("holdout"),
                t("2026-01-03T00:00:00Z"),
                true
            ),
        ],
        "sent and held-out ones only, at their fire time, in time order"
    );
}

/// Emails as workers stored them before keys were escaped, `(key,
/// customer, template)`, and the keys the migration makes of them: what
/// the journey builds now, and a key of another shape (no worker wrote
/// one) left alone.
pub(super) const LEGACY_KEYS: [(&str, &str, &str); 5] = [
    ("c-1/order_confirmation/o-1", "c-1", "order_confirmation"),
    (
        "a/order_confirmation/o/order_confirmation/1",
        "a/order_confirmation/o",
        "order_confirmation",
    ),
    ("c-%/welcome/o%1", "c-%", "welcome"),
    (
        "c-2/shipping_delay/s-1@2026-01-01T00:00:00Z",
        "c-2",
        "shipping_delay",
    ),
    ("k", "c-4", "welcome"),
];

/// [`LEGACY_KEYS`] after the migration, sorted.
pub(super) fn migrated_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "c-1/order_confirmation/o-1",
        "a%2Forder_confirmation%2Fo/order_confirmation/1",
        "c-%25/welcome/o%251",
        "c-2/shipping_delay/s-1@2026-01-01T00:00:00Z",
        "k",
    ]
    .map(String::from)
    .into();
    keys.sort();
    keys
}

fn an_order_stays_with_the_first_customer_who_placed_it(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.order_customer("o-1").unwrap(), None);
    tx.index_order("o-1", "c-1").unwrap();
    // Seen within the transaction that wrote it.
    assert_eq!(tx.order_customer("o-1").unwrap().as_deref(), Some("c-1"));
    tx.commit().unwrap();
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.index_order("o-1", "c-2").unwrap();
    tx.index_order("o-2", "c-2").unwrap();
    assert_eq!(tx.order_customer("o-1").unwrap().as_deref(), Some("c-1"));
    assert_eq!(tx.order_customer("o-2").unwrap().as_deref(), Some("c-2"));
    drop(tx);
    // Rolled back.
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.order_customer("o-2").unwrap(), None);
}

/// An event naming `order` and no customer, parked on `stream` until
/// `expires`.
pub(super) fn parked(id: &str, order: &str, at: &str, expires: &str, stream: &str) -> ParkedEvent {
    let raw = format!(
        r#"{{"event_id":"{id}","type":"shipment.dispatched","occurred_at":"{at}","order":{{"id":"{order}"}},"shipment":{{"id":"s-{id}","estimated_delivery":"2026-01-08","carrier":"DHL"}}}}"#
    );
    ParkedEvent {
        event: Unresolved::decode(raw.as_bytes()).unwrap(),
        expires_at: t(expires),
        raw: raw.into_bytes(),
        key: Some(format!("key-{id}").into_bytes()),
        source: "shipments".into(),
        coordinates: json!({"topic": "shipments", "partition": 1, "offset": id.len()}),
        stream: stream.into(),
    }
}

fn ids(events: &[ParkedEvent]) -> Vec<&str> {
    events.iter().map(|p| p.event.id.as_str()).collect()
}

fn parked_events_come_out_for_their_order_in_event_order_as_they_went_in(h: &impl Harness) {
    let mut s = h.open();
    let later = parked(
        "e-later",
        "o-1",
        "2026-01-01T12:00:00Z",
        "2026-01-02T12:00:00Z",
        "s1",
    );
    let mut unkeyed = parked(
        "e-first",
        "o-1",
        "2026-01-01T10:00:00Z",
        "2026-01-02T10:00:00Z",
        "s2",
    );
    unkeyed.key = None;
    // The same time as e-first, after it: the order they came in.
    let tie = parked(
        "e-tie",
        "o-1",
        "2026-01-01T10:00:00Z",
        "2026-01-02T10:00:00Z",
        "s1",
    );
    let other = parked(
        "e-other",
        "o-2",
        "2026-01-01T09:00:00Z",
        "2026-01-02T09:00:00Z",
        "s1",
    );
    let mut tx = s.begin().unwrap();
    for p in [&later, &unkeyed, &tie, &other] {
        assert!(tx.park(p).unwrap());
    }
    assert!(!tx.park(&later).unwrap(), "parked once");
    tx.commit().unwrap();

    let mut s = h.open();
    assert_eq!(s.backlog(t("2026-01-01T00:00:00Z")).unwrap().parked, 4);
    assert_eq!(
        s.next_expiry(None).unwrap(),
        Some(t("2026-01-02T09:00:00Z"))
    );
    assert_eq!(
        s.next_expiry(Some(&["s2".to_owned()])).unwrap(),
        Some(t("2026-01-02T10:00:00Z"))
    );
    let mut tx = s.begin().unwrap();
    let out = tx.unpark("o-1").unwrap();
    assert_eq!(ids(&out), ["e-first", "e-tie", "e-later"]);
    // Every field as it went in.
    assert_eq!(out[0], unkeyed);
    assert_eq!(out[2], later);
    assert!(tx.unpark("o-1").unwrap().is_empty());
    tx.commit().unwrap();
    assert_eq!(s.backlog(t("2026-01-01T00:00:00Z")).unwrap().parked, 1);
    assert_eq!(s.next_expiry(Some(&["s2".to_owned()])).unwrap(), None);
}

fn parked_events_expire_by_stream_oldest_first_and_their_ids_are_forgotten(h: &impl Harness) {
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    for p in [
        parked(
            "a",
            "o-1",
            "2026-01-01T03:00:00Z",
            "2026-01-02T03:00:00Z",
            "s1",
        ),
        parked(
            "b",
            "o-2",
            "2026-01-01T01:00:00Z",
            "2026-01-02T01:00:00Z",
            "s1",
        ),
        parked(
            "c",
            "o-3",
            "2026-01-01T02:00:00Z",
            "2026-01-02T02:00:00Z",
            "s1",
        ),
        parked(
            "d",
            "o-4",
            "2026-01-01T00:00:00Z",
            "2026-01-02T00:00:00Z",
            "s2",
        ),
        parked(
            "e",
            "o-5",
            "2026-01-05T00:00:00Z",
            "2026-01-06T00:00:00Z",
            "s1",
        ),
    ] {
        tx.park(&p).unwrap();
        tx.mark_seen(&p.event.id, "digest").unwrap();
    }
    tx.commit().unwrap();

    let s1 = ["s1".to_owned()];
    let until = t("2026-01-02T03:00:00Z");
    let mut tx = s.begin().unwrap();
    let first = tx.expire_parked(until, Some(&s1), 2).unwrap();
    assert_eq!(ids(&first), ["b", "c"]);
    let rest = tx.expire_parked(until, Some(&s1), 2).unwrap();
    assert_eq!(ids(&rest), ["a"]);
    assert_eq!(first[0].coordinates["offset"], 1);
    assert_eq!(
        first[0],
        parked(
            "b",
            "o-2",
            "2026-01-01T01:00:00Z",
            "2026-01-02T01:00:00Z",
            "s1"
        )
    );
    // Never applied: the shop may send them again.
    assert_eq!(tx.seen("b").unwrap(), None);
    assert_eq!(tx.seen("e").unwrap().as_deref(), Some("digest"));
    tx.commit().unwrap();

    // Another stream's, and those not yet due, wait on.
    assert_eq!(
        s.next_expiry(Some(&s1)).unwrap(),
        Some(t("2026-01-06T00:00:00Z"))
    );
    let mut tx = s.begin().unwrap();
    let all = tx
        .expire_parked(t("2026-02-01T00:00:00Z"), None, 10)
        .unwrap();
    assert_eq!(ids(&all), ["d", "e"]);
    tx.commit().unwrap();
    assert_eq!(s.backlog(t("2026-01-01T00:00:00Z")).unwrap().parked, 0);
}

/// Rulebook as an earlier version stored them (customer, state), before
/// the order index: what its migration fills the index from.
pub(super) fn legacy_journeys() -> Vec<(String, String)> {
    use crate::journey::OrderState;
    let journey = |orders: &[(&str, bool)]| {
        let mut j = Journey::default();
        for (id, placed) in orders {
            j.orders.insert(
                (*id).to_owned(),
                OrderState {
                    placed_at: placed.then(|| t("2026-01-01T00:00:00Z")),
                    ..OrderState::default()
                },
            );
        }
        serde_json::to_string(&j).unwrap()
    };
    vec![
        // o-9 is known from a shipment only: never placed.
        ("c-2".to_owned(), journey(&[("o-3", true), ("o-1", true)])),
        ("c-1".to_owned(), journey(&[("o-1", true), ("o-9", false)])),
        ("c-3".to_owned(), journey(&[])),
    ]
}

/// The index the migration makes of [`legacy_journeys`]: (order, customer).
pub(super) fn backfilled_index(tx: &mut impl Transaction) -> Vec<(&'static str, Option<String>)> {
    ["o-1", "o-3", "o-9"]
        .into_iter()
        .map(|o| (o, tx.order_customer(o).unwrap()))
        .collect()
}

/// What [`backfilled_index`] must read: an order placed in two journeys
/// goes to the first customer by id.
pub(super) fn expected_index() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("o-1", Some("c-1".to_owned())),
        ("o-3", Some("c-2".to_owned())),
        ("o-9", None),
    ]
}

/// Stores a delivery of `body` received at `at`; its id.
fn put(s: &mut impl Store, source: &str, delivery: Option<&str>, body: &str, at: &str) -> i64 {
    match s
        .intake_put(
            source,
            delivery,
            &topic("orders/create"),
            body.as_bytes(),
            t(at),
        )
        .unwrap()
    {
        Accepted::Stored(id) => id,
        Accepted::Duplicate => panic!("{source}/{delivery:?} taken for a duplicate"),
    }
}

/// Marks deliveries applied in a batch of their own, committed.
fn apply(s: &mut impl Store, ids: &[i64], at: &str) {
    let mut tx = s.begin().unwrap();
    tx.intake_applied(ids, t(at)).unwrap();
    tx.commit().unwrap();
}

/// Whether a delivery of `delivery` on "shop" is taken for a duplicate.
fn duplicate(s: &mut impl Store, delivery: &str, at: &str) -> bool {
    let accepted = s
        .intake_put("shop", Some(delivery), &[], b"{}", t(at))
        .unwrap();
    accepted == Accepted::Duplicate
}

fn bodies(rows: &[IntakeRow]) -> Vec<&str> {
    rows.iter()
        .map(|r| std::str::from_utf8(&r.body).unwrap())
        .collect()
}

fn a_retried_webhook_delivery_is_stored_once_per_source(h: &impl Harness) {
    let mut s = h.open();
    let at = t("2026-03-01T10:00:00.250Z");
    let first = s
        .intake_put("shop-a", Some("d-1"), &topic("orders/create"), b"{}", at)
        .unwrap();
    assert!(matches!(first, Accepted::Stored(_)));
    // The retry, even with another body or topic, is the same delivery;
    // another handle (another worker behind the balancer) sees it too.
    assert_eq!(
        h.open()
            .intake_put("shop-a", Some("d-1"), &topic("orders/updated"), b"[]", at)
            .unwrap(),
        Accepted::Duplicate
    );
    // Another shop's delivery ids are its own.
    put(&mut s, "shop-b", Some("d-1"), "{}", "2026-03-01T10:00:01Z");
    // Without an id nothing tells a retry apart: each is stored.
    let a = put(&mut s, "shop-a", None, "{}", "2026-03-01T10:00:02Z");
    let b = put(&mut s, "shop-a", None, "{}", "2026-03-01T10:00:02Z");
    assert_ne!(a, b);
    let rows = s.intake_next(10).unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[0],
        IntakeRow {
            id: match first {
                Accepted::Stored(id) => id,
                Accepted::Duplicate => unreachable!(),
            },
            source: "shop-a".into(),
            delivery_id: Some("d-1".into()),
            headers: topic("orders/create"),
            body: b"{}".to_vec(),
            received_at: at,
        }
    );
    assert_eq!(rows[2].delivery_id, None);
}

fn the_intake_depth_counts_deliveries_not_applied(h: &impl Harness) {
    let mut s = h.open();
    assert_eq!(s.intake_depth().unwrap(), 0);
    let ids: Vec<i64> = (0..3)
        .map(|i| {
            put(
                &mut s,
                "shop",
                Some(&format!("d-{i}")),
                "{}",
                "2026-03-01T10:00:00Z",
            )
        })
        .collect();
    assert_eq!(s.intake_depth().unwrap(), 3);
    assert_eq!(s.backlog(t("2026-03-01T10:00:00Z")).unwrap().intake, 3);
    apply(&mut s, &ids[..2], "2026-03-01T10:00:05Z");
    assert_eq!(s.intake_depth().unwrap(), 1);
    assert_eq!(s.backlog(t("2026-03-01T10:00:05Z")).unwrap().intake, 1);
}

fn the_intake_comes_in_arrival_order_without_the_applied(h: &impl Harness) {
    let mut s = h.open();
    let mut other = h.open();
    let ids = [
        put(&mut s, "shop-b", Some("x"), "first", "2026-03-01T10:00:09Z"),
        put(
            &mut other,
            "shop-a",
            Some("y"),
            "second",
            "2026-03-01T10:00:01Z",
        ),
        put(&mut s, "shop-a", None, "third", "2026-03-01T10:00:05Z"),
        put(
            &mut other,
            "shop-b",
            Some("z"),
            "fourth",
            "2026-03-01T10:00:02Z",
        ),
    ];
    // By arrival (id), not by source nor by the time a worker's clock said.
    assert_eq!(
        bodies(&s.intake_next(10).unwrap()),
        ["first", "second", "third", "fourth"]
    );
    assert_eq!(bodies(&s.intake_next(2).unwrap()), ["first", "second"]);
    apply(&mut s, &[ids[0], ids[2]], "2026-03-01T10:01:00Z");
    assert_eq!(
        bodies(&other.intake_next(10).unwrap()),
        ["second", "fourth"]
    );
    apply(&mut s, &[ids[1], ids[3]], "2026-03-01T10:01:00Z");
    assert!(s.intake_next(10).unwrap().is_empty());
}

fn deliveries_marked_applied_in_a_batch_that_rolls_back_stay_unapplied(h: &impl Harness) {
    let mut s = h.open();
    let a = put(&mut s, "shop", Some("a"), "a", "2026-03-01T10:00:00Z");
    let b = put(&mut s, "shop", Some("b"), "b", "2026-03-01T10:00:01Z");
    {
        let mut tx = s.begin().unwrap();
        tx.intake_applied(&[a, b], t("2026-03-01T10:00:05Z"))
            .unwrap();
        tx.mark_seen("e-1", "d").unwrap();
        // Dropped: the batch's effects and the marks go together.
    }
    assert_eq!(s.intake_depth().unwrap(), 2);
    assert_eq!(bodies(&s.intake_next(10).unwrap()), ["a", "b"]);
    assert!(s.begin().unwrap().seen("e-1").unwrap().is_none());
    // The same deliveries applied by the next batch, with its effects.
    let mut tx = s.begin().unwrap();
    tx.intake_applied(&[a, b], t("2026-03-01T10:00:06Z"))
        .unwrap();
    tx.mark_seen("e-1", "d").unwrap();
    tx.commit().unwrap();
    assert_eq!(s.intake_depth().unwrap(), 0);
    assert!(s.begin().unwrap().seen("e-1").unwrap().is_some());
}

fn a_delivery_applied_by_another_worker_fails_the_batch(h: &impl Harness) {
    // A worker whose lease ran out mid-batch, and the one that took over:
    // both read the same deliveries; only the first batch to mark them
    // may commit.
    let mut slow = h.open();
    let mut next = h.open();
    let a = put(&mut slow, "shop", Some("a"), "a", "2026-03-01T10:00:00Z");
    let b = put(&mut slow, "shop", Some("b"), "b", "2026-03-01T10:00:01Z");
    apply(&mut next, &[a], "2026-03-01T10:00:30Z");
    let mut tx = slow.begin().unwrap();
    tx.mark_seen("e-1", "d").unwrap();
    match tx.intake_applied(&[a, b], t("2026-03-01T10:00:31Z")) {
        Err(e @ StoreError::IntakeTakenOver { .. }) => {
            assert!(e.is_transient());
            assert!(matches!(e, StoreError::IntakeTakenOver { ids } if ids == [a]));
        }
        other => panic!("expected IntakeTakenOver, got {other:?}"),
    }
    drop(tx);
    assert!(slow.begin().unwrap().seen("e-1").unwrap().is_none());
    assert_eq!(bodies(&slow.intake_next(10).unwrap()), ["b"]);
}

fn an_applied_delivery_is_a_duplicate_until_purged(h: &impl Harness) {
    let mut s = h.open();
    let id = put(&mut s, "shop", Some("d-1"), "{}", "2026-03-01T10:00:00Z");
    apply(&mut s, &[id], "2026-03-01T10:00:05Z");
    // Shopify retries for 48 hours: a late retry has no effect.
    assert!(duplicate(&mut s, "d-1", "2026-03-02T09:00:00Z"));
    assert_eq!(s.intake_depth().unwrap(), 0);
    assert_eq!(s.intake_purge(t("2026-03-01T10:00:06Z")).unwrap(), 1);
    // Forgotten once purged: the same id is a new delivery, after the
    // others (an id is never reused).
    let again = put(&mut s, "shop", Some("d-1"), "{}", "2026-03-02T09:00:00Z");
    assert!(again > id);
    assert_eq!(s.intake_depth().unwrap(), 1);
}

fn purging_deletes_only_deliveries_applied_before_the_cut(h: &impl Harness) {
    let mut s = h.open();
    let old = put(&mut s, "shop", Some("old"), "{}", "2026-03-01T10:00:00Z");
    let recent = put(&mut s, "shop", Some("recent"), "{}", "2026-03-01T10:00:01Z");
    let at_cut = put(&mut s, "shop", Some("at-cut"), "{}", "2026-03-01T10:00:02Z");
    // Received long ago, never applied: kept, whatever its age.
    put(
        &mut s,
        "shop",
        Some("waiting"),
        "{}",
        "2026-02-01T00:00:00Z",
    );
    apply(&mut s, &[old], "2026-03-01T11:00:00Z");
    apply(&mut s, &[recent], "2026-03-03T11:00:00Z");
    apply(&mut s, &[at_cut], "2026-03-03T10:00:00Z");
    let cut = t("2026-03-03T10:00:00Z");
    assert_eq!(s.intake_purge(cut).unwrap(), 1);
    assert_eq!(s.intake_purge(cut).unwrap(), 0);
    let later = "2026-03-03T12:00:00Z";
    assert!(!duplicate(&mut s, "old", later));
    assert!(duplicate(&mut s, "recent", later));
    assert!(duplicate(&mut s, "at-cut", later));
    assert!(duplicate(&mut s, "waiting", later));
    assert_eq!(s.intake_depth().unwrap(), 2);
}

fn the_intake_lease_has_one_holder_until_it_expires(h: &impl Harness) {
    let (mut w1, mut w2) = (h.open(), h.open());
    let at = |m: u32| t(&format!("2026-03-01T10:{m:02}:00Z"));
    // Free: the first to ask takes it; its holder renews it.
    assert!(w1.intake_lease("w1", at(0), at(1)).unwrap());
    assert!(!w2.intake_lease("w2", at(0), at(1)).unwrap());
    assert!(w1.intake_lease("w1", at(0), at(2)).unwrap());
    // Live until its expiry, renewed or not.
    assert!(!w2.intake_lease("w2", at(1), at(3)).unwrap());
    // Expired (at its time, as an email's lease): anyone takes it over...
    assert!(w2.intake_lease("w2", at(2), at(4)).unwrap());
    // ...and the old holder, back (paused, not dead), renews nothing.
    assert!(!w1.intake_lease("w1", at(2), at(5)).unwrap());
    assert!(!w1.intake_lease("w1", at(3), at(5)).unwrap());
    assert!(w2.intake_lease("w2", at(3), at(5)).unwrap());
}

fn workers_racing_for_the_intake_lease_get_it_once(h: &impl Harness) {
    let mut workers: Vec<_> = (0..4).map(|_| h.open()).collect();
    for round in 0..20u32 {
        // Each round after the last one's lease expired.
        let now = t("2026-03-01T10:00:00Z") + jiff::SignedDuration::from_mins(i64::from(round));
        let until = now + jiff::SignedDuration::from_secs(30);
        let barrier = std::sync::Barrier::new(workers.len());
        let won: Vec<bool> = std::thread::scope(|scope| {
            let racing: Vec<_> = workers
                .iter_mut()
                .enumerate()
                .map(|(i, w)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        w.intake_lease(&format!("w{i}"), now, until).unwrap()
                    })
                })
                .collect();
            racing.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
}

fn a_delivery_retried_to_several_workers_at_once_is_stored_once(h: &impl Harness) {
    // The platform retried while the first worker was still storing it;
    // the balancer sent the retries elsewhere.
    let mut workers: Vec<_> = (0..4).map(|_| h.open()).collect();
    for round in 0..10 {
        let delivery = format!("d-{round}");
        let barrier = std::sync::Barrier::new(workers.len());
        let accepted: Vec<Accepted> = std::thread::scope(|scope| {
            let racing: Vec<_> = workers
                .iter_mut()
                .map(|w| {
                    let (barrier, delivery) = (&barrier, &delivery);
                    scope.spawn(move || {
                        barrier.wait();
                        w.intake_put(
                            "shop",
                            Some(delivery),
                            &[],
                            b"{}",
                            t("2026-03-01T10:00:00Z"),
                        )
                        .unwrap()
                    })
                })
                .collect();
            racing.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let stored = accepted
            .iter()
            .filter(|a| matches!(a, Accepted::Stored(_)))
            .count();
        assert_eq!(stored, 1, "round {round}: {accepted:?}");
    }
    assert_eq!(workers[0].intake_depth().unwrap(), 10);
}

/// A delivery's headers naming its topic.
fn topic(topic: &str) -> Vec<(String, Vec<u8>)> {
    vec![("x-shopify-topic".to_owned(), topic.as_bytes().to_vec())]
}
