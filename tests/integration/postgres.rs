//! The PostgreSQL store end to end: the example event log, planned through
//! the real pipeline, gives the same decisions on PostgreSQL as on SQLite,
//! and a second worker sharing the store sends nothing twice.
//!
//! Needs the server of `AFTERCARE_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the tests fail.

use std::time::Duration;

use aftercare::config::Config;
use aftercare::journey::Rulebook;
use aftercare::pipeline::{Context, LeasePolicy, Pipeline};
use aftercare::source::{DeadLetters, FileSource, Source};
use aftercare::store::{EmailRow, Outcome, PostgresStore, SqliteStore, Store};
use aftercare::unsubscribe::Signer;
use jiff::{SignedDuration, Timestamp};

use crate::common;
use crate::common::postgres::{Schema, url};

const EVENTS: &str = "examples/events.jsonl";

fn open(schema: &Schema) -> PostgresStore {
    PostgresStore::connect_with_schema(&url(), &schema.0).unwrap()
}

fn pipeline<S: Store>(store: S, worker: &str) -> Pipeline<S> {
    let config = Config::embedded();
    let templates = aftercare::check::load(&config).unwrap();
    let context = Context {
        locales: templates.locales().clone(),
        default_timezone: config.default_timezone.clone(),
        unsubscribe_url: config.shop.unsubscribe_url.clone(),
        signer: Signer::new(b"a test secret of some length"),
    };
    let lease = LeasePolicy {
        owner: worker.to_owned(),
        duration: SignedDuration::from_mins(5),
    };
    Pipeline::new(
        store,
        Rulebook::from_config(config.rulebook_config()),
        context,
        100,
        lease,
    )
    .unwrap()
}

/// The last event's time plus 180 days: where `simulate` stops the clock.
fn horizon() -> Timestamp {
    let text = std::fs::read_to_string(EVENTS).unwrap();
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["occurred_at"].as_str()?.parse::<Timestamp>().ok())
        .max()
        .unwrap();
    last + SignedDuration::from_hours(180 * 24)
}

/// Every approved email counts as sent at its due time, as in `simulate`.
fn deliver<S: Store>(pipeline: &mut Pipeline<S>, approved: &mut Vec<EmailRow>) -> Vec<i64> {
    approved
        .drain(..)
        .map(|e| {
            pipeline
                .store()
                .record_delivery(
                    e.id,
                    &Outcome::Sent {
                        at: e.due_at,
                        reply: "simulated".into(),
                    },
                )
                .unwrap();
            e.id
        })
        .collect()
}

/// Plans the example log through `pipeline`, one event per batch with the
/// clock following the events, then runs the clock to the horizon.
fn plan<S: Store>(mut pipeline: Pipeline<S>) -> Vec<EmailRow> {
    let mut source = FileSource::open(EVENTS, Duration::ZERO, 1 << 20).unwrap();
    let (mut dead, mut approved) = (DeadLetters::discard(), Vec::new());
    loop {
        let batch = source.next_batch(1).unwrap();
        pipeline
            .ingest(
                source.name(),
                &batch.entries,
                None,
                &mut dead,
                &mut approved,
            )
            .unwrap();
        deliver(&mut pipeline, &mut approved);
        if batch.finished {
            break;
        }
    }
    pipeline.fire(horizon(), &mut approved).unwrap();
    deliver(&mut pipeline, &mut approved);
    pipeline.store().decisions().unwrap()
}

/// What must be the same whichever store: all but the ids (PostgreSQL's
/// sequence may skip numbers) and the wall-clock time of the first attempt.
fn comparable(rows: Vec<EmailRow>) -> Vec<EmailRow> {
    rows.into_iter()
        .map(|e| EmailRow {
            id: 0,
            first_attempt_at: None,
            lease_until: None,
            ..e
        })
        .collect()
}

#[test]
fn the_example_log_plans_the_same_on_postgres_as_on_sqlite() {
    let schema = Schema::new();
    let on_sqlite = plan(pipeline(SqliteStore::in_memory().unwrap(), "w1"));
    let on_postgres = plan(pipeline(open(&schema), "w1"));
    assert!(on_sqlite.len() > 50, "{} decisions", on_sqlite.len());
    let (sqlite, postgres) = (comparable(on_sqlite), comparable(on_postgres));
    for (i, (a, b)) in sqlite.iter().zip(&postgres).enumerate() {
        assert_eq!(a, b, "decision {i} differs");
    }
    assert_eq!(sqlite.len(), postgres.len());
}

#[test]
fn two_workers_on_one_store_send_each_email_once() {
    let schema = Schema::new();
    let mut first = pipeline(open(&schema), "w1");
    // Every event in, nothing fired yet (the clock stays at the start).
    let mut source = FileSource::open(EVENTS, Duration::ZERO, 1 << 20).unwrap();
    let (mut dead, mut approved) = (DeadLetters::discard(), Vec::new());
    let start: Timestamp = "2000-01-01T00:00:00Z".parse().unwrap();
    loop {
        let batch = source.next_batch(500).unwrap();
        first
            .ingest(
                source.name(),
                &batch.entries,
                Some(start),
                &mut dead,
                &mut approved,
            )
            .unwrap();
        if batch.finished {
            break;
        }
    }
    assert!(approved.is_empty());
    let second = pipeline(open(&schema), "w2");
    // Both fire everything due at once, each on its own thread.
    let until = horizon();
    let fire = |mut p: Pipeline<PostgresStore>| {
        let mut approved = Vec::new();
        p.fire(until, &mut approved).unwrap();
        let sent = deliver(&mut p, &mut approved);
        (p, sent)
    };
    let ((mut first, a), (_, b)) = std::thread::scope(|scope| {
        let a = scope.spawn(|| fire(first));
        let b = scope.spawn(|| fire(second));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut sent: Vec<i64> = a.iter().chain(&b).copied().collect();
    let count = sent.len();
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(sent.len(), count, "an email was approved twice");
    let decided = first.store().decisions().unwrap();
    let sent_rows = decided
        .iter()
        .filter(|e| e.status == aftercare::store::Status::Sent)
        .count();
    assert_eq!(sent_rows, count);
    assert!(count > 20, "{count} sent");
    assert_eq!(first.store().next_fire(None).unwrap(), None);
}

#[test]
fn the_worker_runs_on_postgres_and_a_second_run_sends_nothing_new() {
    let schema = Schema::new();
    let work = common::Work::new("");
    let examples = common::repo().join(EVENTS);
    let store_url = schema.store_url(None);
    let run = || {
        work.command(&["run", "--input", examples.to_str().unwrap()])
            .env("AFTERCARE_STORE__URL", &store_url)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let sent = work.outbox().len();
    assert!(sent > 60, "{sent} emails");
    assert!(
        !work.path("data/aftercare.db").exists(),
        "the state went to PostgreSQL, not SQLite"
    );
    let again = run();
    assert!(again.status.success(), "{}", common::stderr(&again));
    assert!(
        common::stdout(&again).contains("Read 0 events"),
        "{}",
        common::stdout(&again)
    );
    assert_eq!(work.outbox().len(), sent);
}

/// One event read from `stream`, at `offset`.
fn entry(stream: &str, offset: u64, raw: String) -> aftercare::source::Entry {
    aftercare::source::Entry {
        raw: raw.into_bytes(),
        key: None,
        coordinates: serde_json::json!({"topic": stream, "partition": 0, "offset": offset}),
        position: aftercare::source::Position {
            key: stream.to_owned(),
            value: offset.to_string(),
        },
        oversized: None,
        mapped: None,
    }
}

#[test]
fn a_shipment_parked_by_one_worker_is_applied_by_the_worker_that_reads_its_order() {
    let schema = Schema::new();
    let dir = tempfile::tempdir().unwrap();
    let dead_path = dir.path().join("dead.jsonl");
    let mut shipments = pipeline(open(&schema), "w1");
    shipments
        .set_streams(Some(vec!["shipments".to_owned()]))
        .unwrap();
    let mut orders = pipeline(open(&schema), "w2");
    orders.set_streams(Some(vec!["orders".to_owned()])).unwrap();
    let (mut dead, mut approved) = (DeadLetters::new(&dead_path, 1 << 20), Vec::new());
    let dispatched = |n: u32, at: &str| {
        format!(
            r#"{{"event_id":"d-{n}","type":"shipment.dispatched","occurred_at":"{at}","order":{{"id":"o-{n}"}},"shipment":{{"id":"s-{n}","carrier":"DHL","tracking_number":"T{n}"}}}}"#
        )
    };
    // Two dispatches before their orders; only o-1 is ever placed.
    let early = [
        entry("shipments", 0, dispatched(1, "2026-01-01T10:05:00Z")),
        entry("shipments", 1, dispatched(2, "2026-01-01T10:06:00Z")),
    ];
    shipments
        .ingest("kafka", &early, None, &mut dead, &mut approved)
        .unwrap();
    assert_eq!(shipments.stats.parked, 2);
    let order = entry(
        "orders",
        0,
        r#"{"event_id":"p-1","type":"order.placed","occurred_at":"2026-01-01T10:00:00Z","customer":{"id":"c-1","email":"anna@example.com"},"order":{"id":"o-1","total":"5.00","currency":"EUR","items":[]}}"#.to_owned(),
    );
    orders
        .ingest("kafka", &[order], None, &mut dead, &mut approved)
        .unwrap();
    assert_eq!(orders.stats.unparked, 1);
    let until: Timestamp = "2026-01-03T00:00:00Z".parse().unwrap();
    // The orders' worker fires its own stream's emails and gives up on its
    // own stream's waiting events only.
    orders.expire(until, &mut dead).unwrap();
    orders.fire(until, &mut approved).unwrap();
    assert_eq!(orders.stats.expired, 0);
    assert!(approved.iter().all(|e| e.template != "shipping_update"));
    assert_eq!(orders.store().backlog(until).unwrap().parked, 1);
    // The shipments' worker sends the update and gives up on o-2.
    shipments.expire(until, &mut dead).unwrap();
    shipments.fire(until, &mut approved).unwrap();
    let update: Vec<&EmailRow> = approved
        .iter()
        .filter(|e| e.template == "shipping_update")
        .collect();
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].customer_id, "c-1");
    assert_eq!(update[0].recipient.as_deref(), Some("anna@example.com"));
    assert_eq!(shipments.stats.expired, 1);
    let record: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dead_path).unwrap().trim()).unwrap();
    assert_eq!(
        record["reason"],
        "order o-2 not seen within 24h; the event names no customer"
    );
    assert_eq!(record["coordinates"]["offset"], 1);
    assert_eq!(shipments.store().backlog(until).unwrap().parked, 0);
}
