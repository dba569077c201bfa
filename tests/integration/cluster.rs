//! Several workers in one consumer group sharing one PostgreSQL store, on
//! a real Kafka-protocol broker (tansu) and a real SMTP server (Postfix's
//! `smtp-sink`): workers killed in turn under a steady load, and the store
//! going away under a running worker.
//!
//! Needs the PostgreSQL server of `AFTERCARE_TEST_POSTGRES_URL` (by default
//! the local one, database `test`); each test works in a schema of its own.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant, SystemTime};

use crate::common::checker;
use crate::common::postgres::Schema;
use crate::common::proxy::Proxy;
use crate::common::tansu::{TOPICS, Tansu, kafka_config, records};
use crate::common::{self, KillOnDrop, SmtpSink, Work, sigterm, spawn, wait_exit};

const WORKERS: usize = 3;
const POOL: usize = 4;

type Record = (String, String, String);

/// Hands `records` to `produce` each when it happens (its `occurred_at`),
/// in order, a few at a time, until all are out.
fn produce_live(records: &[Record], produce: impl Fn(&[Record])) {
    let mut next = 0;
    while next < records.len() {
        let now = jiff::Timestamp::now();
        let due = records[next..]
            .iter()
            .take_while(|(_, _, event)| common::occurred_at(event) <= now)
            .count();
        if due > 0 {
            produce(&records[next..next + due]);
        }
        next += due;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The two columns of `sql`'s rows, `{}` in it standing for the schema.
fn pairs<A, B>(schema: &Schema, sql: &str) -> Vec<(A, B)>
where
    A: for<'a> postgres::types::FromSql<'a>,
    B: for<'a> postgres::types::FromSql<'a>,
{
    schema
        .client()
        .query(&sql.replace("{}", &schema.0), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn three_workers_killed_in_turn_under_load_send_every_email_once() {
    let _heavy = common::heavy();
    let started = Instant::now();
    // Live events: they happen as they are produced, over 36 s (long: a
    // little over 2 minutes, for 24 kills at about one each 5 s).
    let (customers, span, rounds) = if checker::long() {
        (1_100, 132, 24)
    } else {
        (300, 36, 8)
    };
    let start = jiff::Timestamp::now() + Duration::from_secs(2);
    let log = common::live_events(customers, start, Duration::from_secs(span));
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["aftercare.dead-letter"], 1);
    let sink = SmtpSink::start(&[]);
    let schema = Schema::new();
    let work = Work::new(&kafka_config(
        &tansu,
        "g1",
        &format!(
            "[sender]\nlease = \"3s\"\n\
             [mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n\
             port = {}\npool_size = {POOL}\n",
            sink.port
        ),
    ));
    let log_path = work.path("events.jsonl");
    common::write(&log_path, &log);
    // The oracle: what is due by a minute after the last event (the
    // emails sent at once; the delayed ones are not due in this test).
    let until = (common::last_event(&log) + Duration::from_secs(60)).to_string();
    let expected = checker::expected_until(&work, &log_path, Some(&until));
    assert!(expected.len() > customers * 2, "{} emails", expected.len());

    let store_url = schema.store_url(None);
    let ports: Vec<u16> = (0..WORKERS).map(|_| common::free_port()).collect();
    // Each run of a worker logs to a file of its own (`w1.3.log`: the
    // fourth run of w1), read back if the promise breaks.
    let runs = std::cell::Cell::new(0);
    let start_worker = |n: usize| {
        let log = std::fs::File::create(work.path(&format!("w{n}.{}.log", runs.get()))).unwrap();
        runs.set(runs.get() + 1);
        spawn(
            work.command(&["run"])
                .env("AFTERCARE_STORE__URL", &store_url)
                .env("AFTERCARE_WORKER_ID", format!("w{n}"))
                .env("AFTERCARE_HTTP__LISTEN", format!("127.0.0.1:{}", ports[n]))
                .env("RUST_LOG", "info")
                .stderr(log),
        )
    };
    // Ready: in the group with its partitions (see `/readyz`).
    let ready = |n: usize| {
        common::wait_until(Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", ports[n])).is_ok()
                && common::http_request(ports[n], "GET", "/readyz").0 == 200
        })
    };
    let mut workers: Vec<KillOnDrop> = (0..WORKERS).map(start_worker).collect();

    // The load: each event produced when it happens...
    let records = records(&log);
    let kills = std::thread::scope(|scope| {
        let producing = scope.spawn(|| produce_live(&records, |r| tansu.produce(r)));
        // ...and meanwhile a worker killed with SIGKILL in turn, and
        // started again under the same id once the broker has dropped the
        // killed member (its session timed out, 6 s); the next kill 2 s
        // after the restarted one is ready and the broker calls the group
        // stable with three members (up to 30 s each).
        //
        // Why not restart at once: tansu 0.6.0's coordinator, when a dead
        // member it still counted in a rebalance times out, lets one member
        // rejoin and leaves the others with their old assignments, so the
        // dead member's partitions went to nobody for good (seen: partition
        // 2 of every topic unread for four minutes, the group "Stable" with
        // three live members, one of them assigned nothing). Kafka makes
        // every member rejoin. With the dead member gone before the new one
        // joins, the join is the last rebalance of each round, and a join
        // makes all of them rejoin on tansu too.
        let members_are = |count: usize| {
            common::wait_until(Duration::from_secs(30), || tansu.group_settled("g1", count))
        };
        let mut kills = Vec::new();
        for n in 0..WORKERS {
            assert!(ready(n), "worker {n} never ready");
        }
        std::thread::sleep(Duration::from_millis(1_500));
        for round in 0..rounds {
            if !members_are(WORKERS) {
                eprintln!(
                    "cluster: group not settled before kill {round}: {}",
                    tansu.describe_group("g1")
                );
            }
            let n = round % WORKERS;
            let at = SystemTime::now();
            workers[n].0.kill().unwrap();
            if workers[n].0.wait().unwrap().code().is_none() {
                kills.push(at);
            }
            if !members_are(WORKERS - 1) {
                eprintln!(
                    "cluster: the killed member still in the group after kill {round}: {}",
                    tansu.describe_group("g1")
                );
            }
            workers[n] = start_worker(n);
            assert!(ready(n), "worker {n} never ready after its restart");
            std::thread::sleep(Duration::from_secs(2));
        }
        producing.join().unwrap();
        kills
    });
    let produced = records.len();

    // Then the three run on until every expected email is in (killed
    // members leave the group when their sessions time out; leases of
    // emails in flight at a kill expire and are taken over).
    let complete = common::wait_until(Duration::from_secs(240), || {
        sink.distinct_message_ids() >= expected.len()
    });
    // Who the broker thinks reads what, while they all still run.
    let group_before_stop = (!complete).then(|| tansu.describe_group("g1"));
    // A little longer, for any late duplicate to arrive.
    std::thread::sleep(Duration::from_secs(3));
    for worker in &mut workers {
        sigterm(&worker.0);
    }
    for worker in &mut workers {
        let status = wait_exit(&mut worker.0, Duration::from_secs(20)).expect("a worker stopped");
        assert!(status.success(), "{status:?}");
    }

    let deliveries = sink.deliveries();
    let checked = checker::check(&expected, &deliveries, &kills, |key| {
        schema.email_status(key)
    });
    eprintln!(
        "cluster: {WORKERS} workers, {} kills, {} events; {} emails expected, {} received, \
         {} lost, {} withdrawn, {} duplicated in the gap, {} outside it",
        kills.len(),
        produced,
        checked.expected,
        checked.received,
        checked.lost.len(),
        checked.withdrawn.len(),
        checked.duplicated_in_gap,
        checked.duplicated_outside.len()
    );
    checker::Figures {
        scenario: "3 workers on PostgreSQL, killed in turn",
        seed: None,
        customers,
        kills: kills.len(),
        faults: 0,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    assert_eq!(kills.len(), rounds, "a worker had exited before its kill");
    if let Some(broken) = checked.broken() {
        // Where the reading stopped, and who the broker thinks is reading,
        // in the failure's own message (a CI log may keep only that).
        let positions: Vec<(String, String)> = pairs(
            &schema,
            "SELECT source, position FROM {}.positions ORDER BY 1",
        );
        // What broke comes last: a log cut in the middle keeps its tail.
        let keys: Vec<&str> = checked
            .lost
            .iter()
            .map(|(key, _)| key.as_str())
            .chain(
                checked
                    .duplicated_outside
                    .iter()
                    .filter_map(|id| expected.get(id).map(String::as_str)),
            )
            .collect();
        let copies: Vec<(&str, Vec<jiff::Timestamp>)> = checked
            .duplicated_outside
            .iter()
            .map(|id| {
                let mut at: Vec<jiff::Timestamp> = deliveries
                    .iter()
                    .filter(|d| d.message_id.as_deref() == Some(id))
                    .map(|d| jiff::Timestamp::try_from(d.at).unwrap())
                    .collect();
                at.sort();
                (expected.get(id).map_or("?", String::as_str), at)
            })
            .collect();
        let logs = worker_logs(work.dir.path(), &keys);
        // The workers' whole logs stay for a look by hand.
        let kept = work.dir.keep();
        panic!(
            "stored positions: {positions:?}\n{}\nnever applied: {}\nkills at: {:?}\n\
             the workers' logs on those emails, then their warnings ({}/w*.log):\n{logs}\n\
             copies received: {copies:?}\n{broken}",
            group_before_stop.unwrap_or_else(|| tansu.describe_group("g1")),
            unapplied(&tansu, &records, &schema),
            kills
                .iter()
                .map(|k| jiff::Timestamp::try_from(*k).unwrap())
                .collect::<Vec<_>>(),
            kept.display()
        );
    }
    // No SMTP outage here: nothing is retried, so nothing is withdrawn.
    assert!(checked.withdrawn.is_empty(), "{:?}", checked.withdrawn);
    assert!(complete, "incomplete, yet nothing lost or withdrawn?");
    assert!(
        checked.duplicated() <= kills.len() * POOL,
        "{} duplicates from {} kills",
        checked.duplicated(),
        kills.len()
    );
    // The work was shared.
    let owners: Vec<(Option<String>, i64)> = pairs(
        &schema,
        "SELECT lease_owner, count(*) FROM {}.emails WHERE status = 'sent' GROUP BY 1",
    );
    eprintln!("cluster: sent by worker: {owners:?}");
    assert!(owners.len() >= 2, "{owners:?}");
}

/// The offsets of each partition whose events the store never applied, as
/// ranges: a tail means a partition nobody read on; a gap below the stored
/// position means events skipped.
fn unapplied(tansu: &Tansu, records: &[Record], schema: &Schema) -> String {
    let sql = format!("SELECT event_id FROM {}.processed_events", schema.0);
    let applied: std::collections::HashSet<String> = schema
        .client()
        .query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for topic in TOPICS {
        let produced = records.iter().filter(|(t, _, _)| t == topic).count();
        let mut missing: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
        let placed = tansu.read_placed(topic, produced);
        for (partition, offset, payload) in &placed {
            let event: serde_json::Value = serde_json::from_str(payload).unwrap();
            let id = event["event_id"].as_str().unwrap_or_default();
            if !applied.contains(id) {
                missing.entry(*partition).or_default().push(*offset);
            }
        }
        for (partition, offsets) in missing {
            let mut ranges: Vec<(i64, i64)> = Vec::new();
            for offset in offsets {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == offset => *end = offset,
                    _ => ranges.push((offset, offset)),
                }
            }
            out.push(format!("{topic}:{partition} {ranges:?}"));
        }
        out.push(format!(
            "({topic}: {} of {produced} read back)",
            placed.len()
        ));
    }
    out.join("; ")
}

/// The lines of the worker logs in `dir` (`w*.log`) that name one of
/// `keys` (at most 40), then their warnings and errors (at most 30), each
/// after its file's name, by time: bounded, since a take-over storm would
/// bury the message.
fn worker_logs(dir: &std::path::Path, keys: &[&str]) -> String {
    let (mut naming, mut warnings) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with('w') && name.ends_with(".log")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let line = format!("{name}: {line}");
            if keys.iter().any(|key| line.contains(key)) {
                naming.push(line);
            } else if (line.contains(" WARN ") || line.contains(" ERROR "))
                // Not librdkafka's reconnect chatter after each kill.
                && !line.contains("rdkafka")
                && !line.contains("Kafka consumer error")
            {
                warnings.push(line);
            }
        }
    }
    let mut out = Vec::new();
    for (mut lines, most) in [(naming, 40), (warnings, 30)] {
        // By time: the timestamp follows the file's name.
        lines.sort_by(|a, b| {
            a.split_once(": ")
                .map(|x| x.1)
                .cmp(&b.split_once(": ").map(|x| x.1))
        });
        let total = lines.len();
        out.extend(lines.into_iter().take(most));
        if total > most {
            out.push(format!("... {} more", total - most));
        }
    }
    out.join("\n")
}

/// Waits up to `within` seconds for `/readyz` to answer `status`: whether
/// it did, and the last answer.
fn readyz_until(port: u16, status: u16, within: u64) -> (bool, String) {
    let mut last = String::new();
    let done = common::wait_until(Duration::from_secs(within), || {
        let (got, body) = common::http_request(port, "GET", "/readyz");
        last = body;
        got == status
    });
    (done, last)
}

#[test]
fn readiness_follows_the_store_going_away_and_the_worker_waits_it_out() {
    let _heavy = common::heavy();
    let first = common::generated_events(10);
    let tansu = common::tansu::broker_with(&first);
    let schema = Schema::new();
    let server = common::postgres::url();
    let server = url::Url::parse(&server).unwrap();
    let target = (server.host_str().unwrap(), server.port().unwrap_or(5432))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target);
    let port = common::free_port();
    let work = Work::new(&kafka_config(
        &tansu,
        "g1",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    let mut worker = spawn(
        work.command(&["run"])
            .env(
                "AFTERCARE_STORE__URL",
                schema.store_url(Some(&format!("127.0.0.1:{}", proxy.port))),
            )
            .env("AFTERCARE_WORKER_ID", "w1"),
    );
    common::wait_for_port(port, Duration::from_secs(30));
    let (up, last) = readyz_until(port, 200, 60);
    assert!(up, "never ready: {last}");
    let first_plan = {
        let path = work.path("first.jsonl");
        common::write(&path, &first);
        common::planned(&work, &path).len()
    };
    assert!(common::wait_until(Duration::from_secs(60), || work
        .outbox()
        .len()
        >= first_plan));

    // The store goes away: not ready, saying why, but alive and running.
    proxy.cut();
    let (down, last) = readyz_until(port, 503, 30);
    assert!(down, "still ready with the store gone: {last}");
    let body: serde_json::Value =
        serde_json::from_str(last.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["checks"]["store"]["ok"], false, "{body}");
    assert!(
        body["checks"]["store"]["detail"]
            .as_str()
            .unwrap()
            .contains("postgres"),
        "{body}"
    );
    assert_eq!(common::http_request(port, "GET", "/healthz").0, 200);
    // Events keep coming meanwhile: the worker holds them and waits.
    let second = common::generated_events(20)
        .lines()
        .filter(|l| {
            // Customers 10 to 19: new ones.
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let id = v["customer"]["id"].as_str().unwrap();
            id[2..].parse::<usize>().unwrap() >= 10
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    tansu.produce(&records(&second));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker exited with the store away"
    );
    let metrics = common::http_request(port, "GET", "/metrics").1;
    assert!(
        metrics.contains("aftercare_step_failures_total{step=\"ingest\"}")
            || metrics.contains("aftercare_step_failures_total{step=\"fire\"}"),
        "{metrics}"
    );

    // Back: ready again, and the events that came meanwhile are applied.
    proxy.restore();
    let (back, last) = readyz_until(port, 200, 90);
    assert!(back, "not ready again after the store came back: {last}");
    let whole = work.path("whole.jsonl");
    common::write(&whole, &common::generated_events(20));
    let plan = common::planned(&work, &whole).len();
    let started = Instant::now();
    let all = common::wait_until(Duration::from_secs(90), || work.outbox().len() >= plan);
    assert!(
        all,
        "{} of {plan} emails {:?} after the store came back",
        work.outbox().len(),
        started.elapsed()
    );
    sigterm(&worker.0);
    let status = wait_exit(&mut worker.0, Duration::from_secs(20)).expect("the worker stopped");
    assert!(status.success(), "{status:?}");
    assert_eq!(work.outbox().len(), plan, "an email was written twice");
}

#[test]
fn broker_outages_and_a_worker_joining_and_leaving_lose_and_duplicate_nothing() {
    let _heavy = common::heavy();
    let started = Instant::now();
    // Long: three times the load and the rounds.
    let (customers, span, min_rounds) = if checker::long() {
        (600, 72, 18)
    } else {
        (200, 24, 6)
    };
    let start = jiff::Timestamp::now() + Duration::from_secs(3);
    let log = common::live_events(customers, start, Duration::from_secs(span));
    // Its topics survive a restart, as a real broker's do.
    let tansu = std::sync::Mutex::new(Tansu::start_durable());
    tansu.lock().unwrap().create_topics(&TOPICS, 3);
    tansu
        .lock()
        .unwrap()
        .create_topics(&["aftercare.dead-letter"], 1);
    let sink = SmtpSink::start(&[]);
    let brokers_config = kafka_config(
        &tansu.lock().unwrap(),
        "g1",
        &format!(
            "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n\
             port = {}\npool_size = {POOL}\n",
            sink.port
        ),
    );
    let work = Work::new(&brokers_config);
    let log_path = work.path("events.jsonl");
    common::write(&log_path, &log);
    let until = (common::last_event(&log) + Duration::from_secs(60)).to_string();
    let expected = checker::expected_until(&work, &log_path, Some(&until));
    assert!(expected.len() > customers * 2, "{} emails", expected.len());

    let worker = |id: &str| spawn(work.command(&["run"]).env("AFTERCARE_WORKER_ID", id));
    let mut first = worker("w1");
    let records = records(&log);
    let (joins, outages) = std::thread::scope(|scope| {
        // A produce holds the lock only while it waits for its acks: the
        // broker may be stopped between produces.
        let producing =
            scope.spawn(|| produce_live(&records, |r| tansu.lock().unwrap().produce(r)));
        // A second worker joins and leaves (SIGTERM) every few seconds;
        // the broker goes away for 4 s twice, and restarts at once twice.
        let (mut joins, mut outages) = (0, 0);
        let began = Instant::now();
        let mut round = 0;
        while !producing.is_finished() || round < min_rounds {
            std::thread::sleep(Duration::from_secs(2));
            let mut second = worker("w2");
            joins += 1;
            std::thread::sleep(Duration::from_secs(3));
            match round % 3 {
                0 => {
                    let mut broker = tansu.lock().unwrap();
                    broker.stop();
                    std::thread::sleep(Duration::from_secs(4));
                    broker.spawn();
                    outages += 1;
                }
                1 => {
                    tansu.lock().unwrap().restart();
                    outages += 1;
                }
                _ => {}
            }
            sigterm(&second.0);
            let left = wait_exit(&mut second.0, Duration::from_secs(20)).expect("w2 left");
            assert!(left.success(), "w2: {left:?}");
            round += 1;
            assert!(
                began.elapsed() < Duration::from_secs(span + 16 * min_rounds as u64),
                "the load never ended"
            );
        }
        producing.join().unwrap();
        (joins, outages)
    });

    let complete = common::wait_until(Duration::from_secs(180), || {
        sink.distinct_message_ids() >= expected.len()
    });
    std::thread::sleep(Duration::from_secs(3));
    sigterm(&first.0);
    let status = wait_exit(&mut first.0, Duration::from_secs(20)).expect("w1 stopped");
    assert!(status.success(), "w1: {status:?}");

    let status: std::collections::BTreeMap<String, (String, Option<String>)> = work
        .stored()
        .into_iter()
        .map(|e| (e.key, (e.status, e.reason)))
        .collect();
    let checked = checker::check(&expected, &sink.deliveries(), &[], |key| {
        status.get(key).cloned()
    });
    eprintln!(
        "cluster: {joins} joins and leaves, {outages} broker outages, {} events; {} emails \
         expected, {} received, {} lost, {} withdrawn, {} duplicated",
        records.len(),
        checked.expected,
        checked.received,
        checked.lost.len(),
        checked.withdrawn.len(),
        checked.duplicated()
    );
    checker::Figures {
        scenario: "broker outages and restarts, a worker joining and leaving",
        seed: None,
        customers,
        kills: 0,
        faults: joins + outages,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    checked.assert_promise_kept();
    assert!(checked.withdrawn.is_empty(), "{:?}", checked.withdrawn);
    assert!(complete, "incomplete, yet nothing lost or withdrawn?");
    // No kill, no unacknowledged message: not one duplicate.
    assert_eq!(checked.duplicated(), 0);
}
