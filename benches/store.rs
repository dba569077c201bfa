//! The durable SQLite store: finding due emails among many pending ones,
//! restarting on a large store, ingest throughput, and deciding a backlog
//! of overdue emails on the events' clock and on the machine's.
//!
//! `cargo bench --bench store`. The databases with 1,000 and 1,000,000
//! pending emails are built once into `target/bench-data/` and reused (a
//! changed `SHAPE` builds them again). Under `cargo test` (no `--bench`)
//! only the small one is built and each bench runs once.

mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aftercare::config::Config;
use aftercare::event::Event;
use aftercare::journey::{Clock, Command, Lateness, Rulebook, ShopStats};
use aftercare::pipeline::Stats;
use aftercare::source::DeadLetters;
use aftercare::store::{Lease, SqliteStore, Store, Transaction};
use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use jiff::{SignedDuration, Timestamp};
use rusqlite::{Connection, params};

/// Bump when the rows change, so that old databases are not reused.
const SHAPE: &str = "v1";
/// Kafka-like streams the pending emails are spread over.
const STREAMS: u64 = 8;
/// Approved emails left `sending` by this worker: what a restart reclaims.
const SENDING: u64 = 20;
/// Pending emails fire over these days from `FIRST_FIRE`.
const SPREAD_DAYS: i64 = 180;
const FIRST_FIRE: &str = "2030-01-01T00:00:00Z";

fn sizes() -> Vec<u64> {
    if support::benchmarking() {
        vec![1_000, 1_000_000]
    } else {
        vec![1_000]
    }
}

/// The data a real pending email carries: the order of a win-back, as the
/// journey schedules it.
fn pending_data() -> String {
    let journeys = Rulebook::from_config(support::config().rulebook_config());
    let event = Event::decode(&support::order_placed(1, "en", "2026-03-01T10:00:00Z"))
        .unwrap()
        .named()
        .unwrap();
    let t = journeys
        .step_with(None, &event, &ShopStats::default())
        .unwrap();
    t.commands
        .iter()
        .find_map(|c| match c {
            Command::Schedule(e) if e.template == "win_back" => Some(e.data.to_string()),
            _ => None,
        })
        .expect("a win-back is scheduled")
}

/// `target/bench-data/pending-<shape>-<n>.db`: `n` pending emails (four
/// marketing templates, fire times shuffled over 180 days, 8 streams) and
/// `SENDING` approved ones leased by worker `bench`. Built in one
/// transaction with one multi-row `INSERT ... SELECT`, into a temporary
/// file renamed when complete.
fn pending_db(n: u64) -> PathBuf {
    let path = support::data_dir().join(format!("pending-{SHAPE}-{n}.db"));
    if path.exists() {
        return path;
    }
    let started = Instant::now();
    let tmp = path.with_extension("db.tmp");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    drop(SqliteStore::open(&tmp).expect("create the store"));
    let mut conn = Connection::open(&tmp).unwrap();
    let first: Timestamp = FIRST_FIRE.parse().unwrap();
    let step_ms = SignedDuration::from_hours(24 * SPREAD_DAYS).as_millis() as i64 / n as i64;
    let tx = conn.transaction().unwrap();
    tx.execute(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?1)
         INSERT INTO emails (key, customer_id, template, class, order_id, due_at, fire_at,
                             status, data, stream)
         SELECT 'c-' || i || '/' || t || '/o-' || i, 'c-' || i, t, 'marketing', 'o-' || i,
                f, f, 'pending', ?2, 'kafka:bench:orders:' || (i % ?5)
         FROM (SELECT i,
                      CASE i % 4 WHEN 0 THEN 'welcome' WHEN 1 THEN 'review_request'
                                 WHEN 2 THEN 'win_back' ELSE 'win_back_final' END AS t,
                      -- i * 7919 mod n: every slot once, not in insertion order
                      ?3 + ((i * 7919) % ?1) * ?4 AS f
               FROM seq)",
        params![
            n as i64,
            pending_data(),
            first.as_millisecond(),
            step_ms,
            STREAMS as i64
        ],
    )
    .unwrap();
    tx.execute(
        "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?1)
         INSERT INTO emails (key, customer_id, template, class, order_id, due_at, fire_at,
                             status, data, recipient, locale, stream, lease_owner, lease_until)
         SELECT 'sending-' || i, 'c-s' || i, 'order_confirmation', 'transactional', 'o-s' || i,
                ?2, ?2, 'sending', ?3, 'customer' || i || '@example.com', 'en', '',
                'bench', ?2
         FROM seq",
        params![SENDING as i64, first.as_millisecond(), pending_data()],
    )
    .unwrap();
    tx.commit().unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    std::fs::rename(&tmp, &path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "built {} ({n} pending, {} MB) in {:.1} s",
        path.display(),
        size / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    path
}

fn lease() -> Lease {
    Lease {
        owner: "bench".to_owned(),
        until: Timestamp::now() + SignedDuration::from_mins(5),
    }
}

/// Half-way through the spread: half the pending emails are due.
fn midway() -> Timestamp {
    FIRST_FIRE.parse::<Timestamp>().unwrap() + SignedDuration::from_hours(24 * SPREAD_DAYS / 2)
}

/// Opens the store, finds the next fire time and reclaims this worker's
/// emails in flight: what a restarted worker does before it is ready.
fn restart(path: &Path) -> usize {
    let mut store = SqliteStore::open(path).unwrap();
    store.next_fire(None).unwrap().unwrap();
    let resumed = store.reclaim(&lease(), Timestamp::now(), true).unwrap();
    assert_eq!(resumed.len() as u64, SENDING);
    resumed.len()
}

/// One restart with the database's pages dropped from the page cache first
/// (GNU `dd iflag=nocache count=0`), as after a reboot: printed, not a
/// criterion figure. Skipped where `dd` cannot do it.
fn cold_restart(path: &Path, n: u64) {
    let dropped = std::process::Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .is_ok_and(|s| s.success());
    if dropped {
        let started = Instant::now();
        restart(path);
        println!(
            "timers/restart_to_ready/{n}, page cache dropped first: {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

fn timers(c: &mut Criterion) {
    let streams: Vec<String> = (0..STREAMS / 2)
        .map(|s| format!("kafka:bench:orders:{s}"))
        .collect();
    let mut g = c.benchmark_group("timers");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in sizes() {
        let path = pending_db(n);
        cold_restart(&path, n);
        let mut store = SqliteStore::open(&path).unwrap();
        let until = midway();
        // `Pipeline::fire`'s query: the first batch due, in fire order.
        for limit in [1, 100] {
            g.bench_with_input(BenchmarkId::new(format!("due_{limit}"), n), &n, |b, _| {
                b.iter(|| {
                    let mut tx = store.begin().unwrap();
                    let due = tx.due(black_box(until), None, limit).unwrap();
                    assert_eq!(due.len(), limit);
                    due
                })
            });
        }
        // The same, for a worker reading 4 of the 8 partitions.
        g.bench_with_input(BenchmarkId::new("due_100_streams", n), &n, |b, _| {
            b.iter(|| {
                let mut tx = store.begin().unwrap();
                let due = tx.due(black_box(until), Some(&streams), 100).unwrap();
                assert_eq!(due.len(), 100);
                due
            })
        });
        g.bench_with_input(BenchmarkId::new("next_fire", n), &n, |b, _| {
            b.iter(|| store.next_fire(None).unwrap().unwrap())
        });
        g.bench_with_input(BenchmarkId::new("next_fire_streams", n), &n, |b, _| {
            b.iter(|| store.next_fire(Some(&streams)).unwrap().unwrap())
        });
        // Not a target: what `/metrics` costs per scrape (a count).
        g.bench_with_input(BenchmarkId::new("backlog", n), &n, |b, _| {
            b.iter(|| store.backlog(black_box(until)).unwrap())
        });
        drop(store);
        // Restart to ready: open (connect, WAL, migrations checked), the
        // next fire time (`Pipeline::new`), this worker's emails in flight
        // taken back (`daemon::run`).
        g.bench_with_input(BenchmarkId::new("restart_to_ready", n), &path, |b, path| {
            b.iter(|| restart(path))
        });
    }
    g.finish();
}

/// Events through `Pipeline::ingest` in batches of 500 into a SQLite file
/// (WAL, `synchronous = normal`, as `aftercare run` opens it), dated after
/// `now` so that nothing fires: the store side of ingest alone. Each
/// measured batch is new events; the store grows as it runs.
fn ingest(c: &mut Criterion) {
    const BATCH: u64 = 500;
    let config = support::config();
    let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(BATCH));
    let dir = tempfile::tempdir_in(support::data_dir()).unwrap();
    // New customers' first orders (5 items), in three locales.
    let store_path = |name: &str| -> PathBuf { dir.path().join(format!("{name}.db")) };
    let mut run = |name: &str, path: &Path, make: &dyn Fn(u64) -> Vec<u8>| {
        let mut pipeline = support::pipeline(&config, SqliteStore::open(path).unwrap());
        let mut next = 0u64;
        let mut dead = DeadLetters::discard();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let entries: Vec<_> = (next..next + BATCH)
                        .map(|i| support::entry(make(i), i))
                        .collect();
                    next += BATCH;
                    let mut approved = Vec::new();
                    let started = Instant::now();
                    pipeline
                        .ingest("bench", &entries, Some(now), &mut dead, &mut approved)
                        .unwrap();
                    total += started.elapsed();
                    assert!(approved.is_empty());
                }
                total
            })
        });
        assert_eq!(pipeline.stats.invalid, 0);
    };
    let placed = |i: u64| {
        let locale = support::LOCALES[(i % 3) as usize];
        support::order_placed(i, locale, "2030-01-01T10:00:00Z")
    };
    run("order_placed", &store_path("placed"), &placed);
    // A mix as a shop sends it: an order, then its delivery (a first
    // delivery: thank-you, follow-up, review request), alternating.
    let mixed = |i: u64| {
        if i.is_multiple_of(2) {
            placed(i / 2)
        } else {
            support::shipment_delivered(i / 2, "2030-01-03T10:00:00Z")
        }
    };
    run("placed_and_delivered", &store_path("mixed"), &mixed);
    g.finish();
}

/// Emails of each catch-up customer due by now: the order confirmation
/// (transactional), the welcome, thank-you, delivery follow-up and review
/// request (marketing).
const CATCH_UP_DUE: u64 = 5;

/// Customers in the catch-up backlog.
fn catch_up_customers() -> u64 {
    if support::benchmarking() { 2_000 } else { 50 }
}

/// The shipped configuration (20h frequency cap) with quiet hours off, so
/// that nothing depends on the hour the bench runs at, and every rule's
/// `expires_after` and `policy.max_delay` at 30 days, so that the backlog
/// is decided by the turns and the cap, not expired.
fn catch_up_config() -> Config {
    const MONTH: Duration = Duration::from_secs(30 * 86_400);
    let mut config = support::config();
    config.policy.quiet_hours.enabled = false;
    config.policy.max_delay = MONTH;
    for rule in &mut config.journeys {
        rule.expires_after = Some(MONTH);
    }
    config
}

/// `path`: a SQLite store into which `n` customers' first orders (placed
/// about 10 days before `now`, a second apart) and their deliveries (12
/// hours later) were ingested, with nothing fired: `CATCH_UP_DUE` emails
/// of each customer due, as after an outage or on a first start that
/// reads the topics from ten days back.
fn catch_up_db(path: &Path, config: &Config, n: u64, now: Timestamp) {
    let first_order = now - SignedDuration::from_hours(24 * 10);
    let mut pipeline = support::pipeline(config, SqliteStore::open(path).unwrap());
    let entries: Vec<_> = (0..n)
        .flat_map(|i| {
            let placed = first_order + SignedDuration::from_secs(i as i64);
            let delivered = placed + SignedDuration::from_hours(12);
            let locale = support::LOCALES[(i % 3) as usize];
            [
                support::order_placed(i, locale, &placed.to_string()),
                support::shipment_delivered(i, &delivered.to_string()),
            ]
        })
        .enumerate()
        .map(|(line, raw)| support::entry(raw, line as u64))
        .collect();
    let mut dead = DeadLetters::discard();
    let mut approved = Vec::new();
    // The machine's clock read before the first order: nothing fires.
    let before = first_order - SignedDuration::from_hours(1);
    for chunk in entries.chunks(500) {
        pipeline
            .ingest("bench", chunk, Some(before), &mut dead, &mut approved)
            .unwrap();
    }
    assert!(approved.is_empty());
    assert_eq!(pipeline.stats.invalid, 0);
    drop(pipeline);
    let conn = Connection::open(path).unwrap();
    let due: i64 = conn
        .query_row(
            "SELECT count(*) FROM emails WHERE status = 'pending' AND fire_at <= ?1",
            [now.as_millisecond()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(due as u64, CATCH_UP_DUE * n, "emails due in the backlog");
}

/// `Pipeline::fire` deciding a backlog of overdue emails (`catch_up_db`)
/// at once, on the events' clock (`Lateness::NONE`: each email judged at
/// its own due time, no turns) and on the machine's (each marketing email
/// first looks up the customer's other pending ones, `turn`; the cap is
/// judged at the real time). Each iteration decides a fresh copy of the
/// ingested file (WAL, as `aftercare run` opens it); the copy and the
/// opening are not timed, nor is closing the store.
fn catch_up(c: &mut Criterion) {
    let config = catch_up_config();
    let n = catch_up_customers();
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let dir = tempfile::tempdir_in(support::data_dir()).unwrap();
    let ingested = dir.path().join("ingested.db");
    catch_up_db(&ingested, &config, n, now);
    let mut g = c.benchmark_group("catch_up");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(CATCH_UP_DUE * n));
    let wall = Lateness {
        go_live: None,
        clock: Clock::Wall,
    };
    let mut copies = 0u64;
    for (name, lateness) in [("events_clock", Lateness::NONE), ("wall_clock", wall)] {
        // A fresh copy of the ingested store, opened: the previous one is
        // closed by now (criterion drops a routine's output before the
        // next setup), and removed.
        let mut fresh = || {
            for suffix in ["", "-wal", "-shm"] {
                let old = dir.path().join(format!("run-{copies}.db{suffix}"));
                let _ = std::fs::remove_file(old);
            }
            copies += 1;
            let path = dir.path().join(format!("run-{copies}.db"));
            std::fs::copy(&ingested, &path).unwrap();
            support::pipeline(&config, SqliteStore::open(&path).unwrap()).with_lateness(lateness)
        };
        let decide = |mut pipeline: aftercare::pipeline::Pipeline<SqliteStore>| {
            let mut approved = Vec::new();
            pipeline.fire(Timestamp::now(), &mut approved).unwrap();
            (pipeline, approved)
        };
        // Once, untimed: what becomes of the backlog.
        let (mut pipeline, approved) = decide(fresh());
        let left = pipeline.store().next_fire(None).unwrap();
        assert!(left.is_none_or(|t| t > Timestamp::now()), "all decided");
        let Stats {
            approved: sent,
            deferred,
            suppressed,
            cancelled,
            ..
        } = pipeline.stats;
        assert_eq!(approved.len() as u64, sent);
        println!(
            "catch_up/{name}: {} due emails of {n} customers: {sent} approved, {suppressed} \
             suppressed, {cancelled} cancelled, {deferred} deferrals (each a re-take, or a \
             wait past now)",
            CATCH_UP_DUE * n
        );
        drop(pipeline);
        g.bench_function(name, |b| {
            b.iter_batched(&mut fresh, decide, BatchSize::PerIteration)
        });
    }
    g.finish();
}

criterion_group!(benches, timers, ingest, catch_up);
criterion_main!(benches);
