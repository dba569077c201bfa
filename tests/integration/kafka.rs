//! The Kafka source against a real Kafka-protocol broker (tansu, started on
//! a loopback port): topics and partitions, the dead-letter topic, crashes,
//! rebalances, replays and shutdown with the broker gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::checker;
use crate::common::tansu::{TOPICS, broker_with, kafka_config};
use crate::common::{self, SmtpSink, Work, planned, sigterm, spawn, stderr, stdout, wait_exit};

const DEAD: &str = "aftercare.dead-letter";

/// The same emails (as a multiset), or a short diff.
fn assert_same(got: &[String], want: &[String]) {
    let count = |v: &[String]| {
        let mut m: BTreeMap<String, i32> = BTreeMap::new();
        for x in v {
            *m.entry(x.clone()).or_default() += 1;
        }
        m
    };
    let (g, w) = (count(got), count(want));
    let missing: Vec<_> = w
        .iter()
        .filter(|(k, n)| g.get(*k) < Some(n))
        .map(|(k, _)| k)
        .take(10)
        .collect();
    let extra: Vec<_> = g
        .iter()
        .filter(|(k, n)| w.get(*k) < Some(n))
        .map(|(k, _)| k)
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} sent, {} planned; missing (first 10): {missing:?}; unexpected or twice: {extra:?}",
        got.len(),
        want.len()
    );
}

/// Per customer, the order of their emails.
fn by_customer(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (customer, rest) = line.split_once(' ').unwrap();
        map.entry(customer.to_owned())
            .or_default()
            .push(rest.to_owned());
    }
    map
}

#[test]
fn events_over_three_topics_give_the_planned_emails_in_order_per_customer() {
    let _heavy = common::heavy();
    let log = common::generated_events(60);
    let tansu = broker_with(&log);
    let work = Work::new(&kafka_config(&tansu, "g1", ""));
    let log_path = work.path("events.jsonl");
    common::write(&log_path, &log);
    let plan = planned(&work, &log_path);

    let out = work
        .command(&["run", "--once"])
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or("warn".into()),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    if std::env::var("TEST_LOG").is_ok() {
        eprintln!("{}", stderr(&out));
    }
    let read = format!("Read {} events", log.lines().count());
    assert!(stdout(&out).contains(&read), "{}", stdout(&out));

    let approvals = work.approvals();
    assert_same(&approvals, &plan);
    assert_eq!(work.outbox().len(), plan.len());
    // The order matters per customer only: customers are independent.
    let (got, want) = (by_customer(&approvals), by_customer(&plan));
    for (customer, emails) in &want {
        assert_eq!(
            got.get(customer),
            Some(emails),
            "order of {customer}'s emails"
        );
    }
}

#[test]
fn invalid_events_go_to_the_dead_letter_topic_and_neighbours_are_processed() {
    let _heavy = common::heavy();
    let mut log = common::generated_events(5);
    let bad = [
        "{not json",
        r#"{"event_id":"bad-1","type":"order.exploded","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-1"}}"#,
        r#"{"event_id":"bad-2","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-new"},"order":{"id":"o-x","total":"1.00","currency":"EUR","items":[]}}"#,
    ];
    for b in bad {
        log.push_str(b);
        log.push('\n');
    }
    let tansu = broker_with(&log);
    let work = Work::new(&kafka_config(&tansu, "g1", ""));
    let good_log = work.path("good.jsonl");
    common::write(&good_log, &common::generated_events(5));
    let plan = planned(&work, &good_log);

    let out = work.run(&["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 invalid"), "{}", stdout(&out));
    assert_eq!(
        work.outbox().len(),
        plan.len(),
        "the valid neighbours were all processed"
    );

    let dead = tansu.read_all(DEAD, 3);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let mut reasons = BTreeSet::new();
    for (payload, headers) in &dead {
        let h: BTreeMap<&str, &str> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(bad.contains(&payload.as_str()), "{payload}");
        assert!(TOPICS.contains(&h["aftercare-source-topic"]), "{h:?}");
        assert!(h["aftercare-source-partition"].parse::<i32>().unwrap() < 3);
        h["aftercare-source-offset"].parse::<i64>().unwrap();
        reasons.insert(h["aftercare-reason"].split(':').next().unwrap().to_owned());
    }
    assert_eq!(
        reasons,
        BTreeSet::from([
            "not valid JSON".to_owned(),
            "unknown event type `order.exploded`".to_owned(),
            "missing required field `customer.email` on the first order of customer `c-new`"
                .to_owned(),
        ])
    );
}

/// A dead letter read back: its payload and headers.
type DeadLetter = (String, BTreeMap<String, String>);

/// Produces `messages` onto `orders` under one key (one partition, in
/// order), runs `aftercare run --once` on them with `env`, and returns the
/// emails sent and the dead letters (`expected` of them).
fn run_on_one_partition(
    messages: &[&str],
    env: &[(&str, &str)],
    expected: usize,
) -> (Vec<String>, Vec<DeadLetter>) {
    let tansu = common::tansu::Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&[DEAD], 1);
    let records: Vec<(String, String, String)> = messages
        .iter()
        .map(|m| ("orders".to_owned(), "c-1".to_owned(), m.to_string()))
        .collect();
    tansu.produce(&records);
    let work = Work::new(&kafka_config(&tansu, "g1", ""));
    let log = work.path("worker.log");
    let mut command = work.command(&["run", "--once"]);
    command
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = common::KillOnDrop(command.spawn().unwrap());
    let status = wait_exit(&mut child.0, Duration::from_secs(90));
    let logged = std::fs::read(&log).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        String::from_utf8_lossy(&logged[..logged.len().min(4000)])
    );
    assert!(
        logged.len() < 8192,
        "the log quotes the events: {} bytes",
        logged.len()
    );
    let sent = work
        .emails()
        .into_iter()
        .filter(|(_, s)| s == "sent")
        .map(|(k, _)| k)
        .collect();
    let dead = tansu
        .read_all(DEAD, expected)
        .into_iter()
        .map(|(payload, headers)| (payload, headers.into_iter().collect()))
        .collect();
    (sent, dead)
}

const GOOD: &str = r#"{"event_id":"good-1","type":"order.placed","occurred_at":"2024-01-01T11:00:00Z","customer":{"id":"c-1","email":"c1@example.com"},"order":{"id":"o-1","total":"1.00","currency":"EUR","items":[]}}"#;

/// `text` padded with an unknown field to `bytes` bytes.
fn padded(text: &str, bytes: usize) -> String {
    let open = format!("{},\"pad\":\"", text.strip_suffix('}').unwrap());
    format!("{open}{}\"}}", "x".repeat(bytes - open.len() - 2))
}

/// An invalid message of 999,900 bytes: with its headers, its dead letter
/// was over the producer's `message.max.bytes`, and the batch failed for
/// ever, holding the valid event behind it. And one of 600 KB with a long
/// `type`, whose reason once quoted it whole. Both reach the dead-letter
/// topic within the producer's limit, with their coordinates.
#[test]
fn a_dead_letter_too_large_for_the_producer_is_cut_to_fit_and_the_partition_moves_on() {
    let _heavy = common::heavy();
    let long_type = format!(
        r#"{{"event_id":"bad-1","type":"{}","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-1"}}}}"#,
        "x".repeat(600_000)
    );
    let near_limit = padded(
        r#"{"event_id":"near-1","type":"order.exploded","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-1"}}"#,
        999_900,
    );
    assert_eq!(near_limit.len(), 999_900);
    let (sent, dead) = run_on_one_partition(&[&long_type, &near_limit, GOOD], &[], 2);
    assert_eq!(sent, ["c-1/order_confirmation/o-1"]);
    assert_eq!(dead.len(), 2);
    for (i, (payload, h)) in dead.iter().enumerate() {
        assert_eq!(h["aftercare-source-topic"], "orders", "{h:?}");
        assert_eq!(h["aftercare-source-offset"], i.to_string(), "{h:?}");
        h["aftercare-source-partition"].parse::<i32>().unwrap();
        let size = payload.len() + h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        assert!(size < 1_000_000, "{size}");
        assert!(
            h["aftercare-reason"].len() < 200,
            "{}",
            h["aftercare-reason"].len()
        );
    }
    // The long type fits whole; its reason does not quote it.
    assert_eq!(dead[0].0, long_type);
    assert!(
        dead[0].1["aftercare-reason"].contains("`type`"),
        "{:?}",
        dead[0].1
    );
    assert!(!dead[0].1.contains_key("aftercare-event-bytes"));
    // The one near the limit is cut to fit, and says how large it was.
    assert!(near_limit.starts_with(&dead[1].0));
    assert!(dead[1].0.len() > 990_000, "{}", dead[1].0.len());
    assert_eq!(dead[1].1["aftercare-event-bytes"], "999900");
    assert_eq!(
        dead[1].1["aftercare-reason"],
        "unknown event type `order.exploded`"
    );
}

/// A message over `source.max_event_bytes` is not parsed, only its first
/// bytes copied: dead-lettered with its size, and the valid event behind it
/// applied.
#[test]
fn a_message_over_the_maximum_event_size_is_dead_lettered_in_part() {
    let _heavy = common::heavy();
    let oversized = padded(
        r#"{"event_id":"big-1","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-1","email":"big@example.com"},"order":{"id":"o-big","total":"1.00","currency":"EUR","items":[]}}"#,
        300_000,
    );
    let (sent, dead) = run_on_one_partition(
        &[&oversized, GOOD],
        &[("AFTERCARE_SOURCE__MAX_EVENT_BYTES", "100000")],
        1,
    );
    assert_eq!(sent, ["c-1/order_confirmation/o-1"]);
    assert_eq!(dead.len(), 1);
    let (payload, h) = &dead[0];
    assert!(
        !payload.is_empty() && payload.len() <= 1024,
        "{}",
        payload.len()
    );
    assert!(oversized.starts_with(payload.as_str()));
    assert_eq!(h["aftercare-source-offset"], "0");
    assert_eq!(
        h["aftercare-reason"],
        "event of 300000 bytes is over source.max_event_bytes (100000)"
    );
    assert_eq!(h["aftercare-event-bytes"], "300000");
}

#[test]
fn sigkill_mid_stream_and_restart_loses_and_duplicates_nothing() {
    let _heavy = common::heavy();
    let log = common::generated_events(600);
    let tansu = broker_with(&log);
    let work = Work::new(&kafka_config(&tansu, "g1", "[sender]\nlease = \"2s\"\n"));
    let log_path = work.path("events.jsonl");
    common::write(&log_path, &log);
    let plan = planned(&work, &log_path);

    let mut kills = 0;
    for fraction in [4, 2] {
        let mut child = spawn(&mut work.command(&["run"]));
        let target = plan.len() / fraction;
        assert!(
            common::wait_until(Duration::from_secs(120), || work.outbox().len() >= target),
            "the worker did not get to {target} emails"
        );
        child.0.kill().unwrap();
        if child.0.wait().unwrap().code().is_none() {
            kills += 1;
        }
    }
    assert_eq!(kills, 2);
    assert!(
        work.outbox().len() < plan.len(),
        "nothing left to do after the kills"
    );

    // Started again, it finishes the work (the dead members leave the group
    // when their sessions time out).
    let mut last = spawn(&mut work.command(&["run"]));
    let done = common::wait_until(Duration::from_secs(120), || {
        work.outbox().len() >= plan.len()
    });
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&last.0);
    assert!(
        wait_exit(&mut last.0, Duration::from_secs(20))
            .expect("the worker stopped")
            .success()
    );
    assert!(done, "{} of {} emails", work.outbox().len(), plan.len());
    assert_same(&work.approvals(), &plan);
    assert_eq!(work.outbox().len(), plan.len());
    assert!(work.emails().iter().all(|(_, s)| s != "sending"));
}

#[test]
fn a_second_worker_joining_and_leaving_loses_and_duplicates_nothing() {
    let _heavy = common::heavy();
    let log = common::generated_events(600);
    let tansu = broker_with(&log);
    let sink = SmtpSink::start(&[]);
    // Each worker sends at most 250 emails a second (all recipients share
    // one domain), so that the work lasts long enough for both to share it.
    let smtp = format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {}\n\
         [sender.domains]\nrate = 250.0\n",
        sink.port
    );
    let work = Work::new(&kafka_config(&tansu, "g1", &smtp));
    let log_path = work.path("events.jsonl");
    common::write(&log_path, &log);
    let plan = planned(&work, &log_path);

    let mut first = spawn(work.command(&["run"]).env("AFTERCARE_WORKER_ID", "w1"));
    assert!(common::wait_until(Duration::from_secs(60), || sink
        .messages()
        .len()
        >= plan.len() / 5));
    let mut second = spawn(work.command(&["run"]).env("AFTERCARE_WORKER_ID", "w2"));
    let joined = Instant::now();
    assert!(common::wait_until(Duration::from_secs(60), || sink
        .messages()
        .len()
        >= plan.len() / 2));
    // Long enough after joining (a rebalance takes seconds) to do a share.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(joined.elapsed()));
    sigterm(&second.0);
    let status = wait_exit(&mut second.0, Duration::from_secs(20)).expect("the second worker left");
    assert!(status.success());
    let all_received = common::wait_until(Duration::from_secs(120), || {
        sink.messages().len() >= plan.len()
    });
    if !all_received {
        let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
        for (_, status) in work.emails() {
            *statuses.entry(status).or_default() += 1;
        }
        let mut approvals = work.approvals();
        approvals.sort();
        let mut sorted_plan = plan.clone();
        sorted_plan.sort();
        let reasons: Vec<String> = work
            .stored()
            .into_iter()
            .filter(|e| e.status != "sent")
            .map(|e| format!("{} {:?} {}", e.key, e.reason, e.status))
            .collect();
        let planned: BTreeSet<String> = plan.iter().cloned().collect();
        let wrong: Vec<&String> = reasons
            .iter()
            .filter(|r| {
                let mut k = r.split(' ').next().unwrap().split('/');
                let (c, t, o) = (k.next().unwrap(), k.next().unwrap(), k.next().unwrap());
                planned.contains(&format!("{c} {t} {}", o.split('~').next().unwrap()))
            })
            .take(15)
            .collect();
        panic!(
            "{} of {} received; store: {statuses:?}; not sent but planned: {wrong:#?}",
            sink.messages().len(),
            plan.len(),
        );
    }
    // A little longer, for any duplicate to arrive.
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&first.0);
    assert!(
        wait_exit(&mut first.0, Duration::from_secs(20))
            .expect("the first worker stopped")
            .success()
    );

    let ids = sink.message_ids_once();
    assert_eq!(ids.len(), plan.len());
    // Both workers did a share.
    let log_by_owner: Vec<(String, i64)> = {
        let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT lease_owner, count(*) FROM emails WHERE status = 'sent' GROUP BY lease_owner")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(log_by_owner.len(), 2, "{log_by_owner:?}");
}

#[test]
fn a_fresh_group_replaying_from_offset_zero_sends_nothing_new() {
    let _heavy = common::heavy();
    let started = Instant::now();
    let customers = if checker::long() { 1_000 } else { 40 };
    let log = common::generated_events(customers);
    let tansu = broker_with(&log);
    let sink = SmtpSink::start(&[]);
    let smtp = format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {}\n",
        sink.port
    );
    let first = Work::new(&kafka_config(&tansu, "g1", &smtp));
    let log_path = first.path("events.jsonl");
    common::write(&log_path, &log);
    let expected = checker::expected(&first, &log_path);
    let out = first.run(&["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = sink.distinct_message_ids();
    assert_eq!(sent, expected.len(), "the first pass sent what was planned");
    let emails = first.emails();

    // Same store, a new group: it has no positions, so it reads every
    // partition from offset 0.
    let config = kafka_config(&tansu, "g2", &smtp);
    common::write(
        &first.config(),
        &format!(
            "data_dir = {:?}\ntemplates_dir = {:?}\njourneys.clock = \"events\"\n{config}",
            first.path("data"),
            common::repo().join("templates")
        ),
    );
    let out = first.run(&["run", "--once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains(&format!("({} duplicates", log.lines().count())),
        "{summary}"
    );
    assert!(summary.contains("Sent no emails"), "{summary}");
    assert_eq!(first.emails(), emails);
    let checked = checker::check(&expected, &sink.deliveries(), &[], |_| None);
    checker::Figures {
        scenario: "replay from offset 0, a fresh group",
        seed: None,
        customers,
        kills: 0,
        faults: 1,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    checked.assert_promise_kept();
    assert_eq!(checked.duplicated(), 0, "the replay sent an email again");
}

#[test]
fn sigterm_with_the_broker_down_exits_within_the_grace_period() {
    let _heavy = common::heavy();
    let log = common::generated_events(20);
    let mut tansu = broker_with(&log);
    let work = Work::new(&kafka_config(&tansu, "g1", ""));
    let mut child = spawn(&mut work.command(&["run"]));
    assert!(common::wait_until(Duration::from_secs(60), || !work
        .outbox()
        .is_empty()));
    std::thread::sleep(Duration::from_secs(1));
    tansu.stop();
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    sigterm(&child.0);
    let status = wait_exit(&mut child.0, Duration::from_secs(15));
    let took = asked.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert!(status.success(), "{status:?}");
    // shutdown_grace is 5 s in this config, plus the runtime's last second.
    assert!(took < Duration::from_secs(7), "took {took:?}");
}

#[test]
fn readiness_follows_the_broker_going_away_and_coming_back() {
    let _heavy = common::heavy();
    let log = common::generated_events(5);
    let mut tansu = broker_with(&log);
    let port = common::free_port();
    let work = Work::new(&kafka_config(
        &tansu,
        "g1",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    ));
    let _worker = spawn(&mut work.command(&["run"]));
    common::wait_for_port(port, Duration::from_secs(30));
    let ready = || common::http_request(port, "GET", "/readyz");
    let mut last = String::new();
    let up = common::wait_until(Duration::from_secs(60), || {
        let (status, body) = ready();
        last = body;
        status == 200
    });
    assert!(up, "never ready: {last}");

    tansu.stop();
    let down = common::wait_until(Duration::from_secs(30), || {
        let (status, body) = ready();
        last = body;
        status == 503
    });
    assert!(down, "still ready with the broker gone: {last}");
    assert!(last.contains("no broker reachable"), "{last}");
    // Alive all the same.
    assert_eq!(common::http_request(port, "GET", "/healthz").0, 200);

    tansu.restart();
    tansu.create_topics(&TOPICS, 3);
    let back = common::wait_until(Duration::from_secs(60), || {
        let (status, body) = ready();
        last = body;
        status == 200
    });
    assert!(back, "not ready again after the broker came back: {last}");
}

type Positions = std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>;

/// The Kafka source of `config`, its positions looked up in the map
/// returned with it (where [`take_batch`] stores them, as the store would).
fn source_with_positions(
    config: &aftercare::config::Config,
) -> (aftercare::source::kafka::KafkaSource, Positions) {
    let positions = Positions::default();
    let lookup = {
        let positions = std::sync::Arc::clone(&positions);
        Box::new(move |key: &str| positions.lock().unwrap().get(key).cloned())
    };
    let source = aftercare::source::kafka::KafkaSource::new(
        &config.source.kafka,
        config.source.batch_wait,
        config.source.max_event_bytes,
        lookup,
    )
    .unwrap();
    (source, positions)
}

/// Takes one batch of up to `max` events from `source`, committing its
/// positions to `positions` as the store would: the ids of its events go
/// to `ids`; how many there were.
fn take_batch(
    source: &mut aftercare::source::kafka::KafkaSource,
    positions: &Positions,
    max: usize,
    ids: &mut impl Extend<String>,
) -> usize {
    use aftercare::source::Source;
    let batch = source.next_batch(max).unwrap();
    for entry in &batch.entries {
        let event: serde_json::Value = serde_json::from_slice(&entry.raw).unwrap();
        ids.extend([event["event_id"].as_str().unwrap().to_owned()]);
        positions
            .lock()
            .unwrap()
            .insert(entry.position.key.clone(), entry.position.value.clone());
    }
    source.committed();
    batch.entries.len()
}

/// Reads `source` until `want` events are in (or `within` passes), in
/// batches of 50: the ids of the events read, in order.
fn read_source(
    source: &mut aftercare::source::kafka::KafkaSource,
    positions: &Positions,
    want: usize,
    within: Duration,
) -> Vec<String> {
    let mut ids = Vec::new();
    let start = Instant::now();
    while ids.len() < want && start.elapsed() < within {
        take_batch(source, positions, 50, &mut ids);
    }
    ids
}

/// What the watchdog does to a stuck consumer (drop it, join with a new
/// one) loses no partition: the old consumer, as it closes, hears its
/// partitions revoked, and that must not take them from the new one.
#[test]
fn a_recreated_consumer_reads_on_from_every_partition() {
    let _heavy = common::heavy();
    let start = jiff::Timestamp::now();
    let log = common::live_events(120, start, Duration::from_secs(60));
    let lines: Vec<&str> = log.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let tansu = broker_with(&first.join("\n"));
    let work = Work::new(&kafka_config(&tansu, "recreated", ""));
    let config = aftercare::config::Config::load(Some(&work.config()), []).unwrap();
    let (mut source, positions) = source_with_positions(&config);
    let id = |line: &&str| {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["event_id"].as_str().unwrap().to_owned()
    };
    let mut read = read_source(
        &mut source,
        &positions,
        first.len(),
        Duration::from_secs(60),
    );
    assert_eq!(read.len(), first.len(), "the first half was not read");

    // Recreated again and again, each time reading on a little.
    for _ in 0..5 {
        source.recreate().unwrap();
        read.extend(read_source(
            &mut source,
            &positions,
            1,
            Duration::from_secs(3),
        ));
    }
    tansu.produce(&common::tansu::records(&second.join("\n")));
    read.extend(read_source(
        &mut source,
        &positions,
        lines.len() - read.len(),
        Duration::from_secs(60),
    ));

    let got: BTreeSet<String> = read.iter().cloned().collect();
    let want: BTreeSet<String> = lines.iter().map(id).collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} never read: {missing:?}",
        missing.len(),
        want.len()
    );
    assert_eq!(
        read.len(),
        got.len(),
        "read twice: {}",
        read.len() - got.len()
    );
}

/// A partition paused for its long queue, then revoked and assigned back
/// to the same consumer by a rebalance, reads on at once. librdkafka keeps
/// its pause on a partition across a rebalance, while the source starts an
/// assigned partition afresh, unpaused: without the partitions resumed as
/// they are revoked, nothing resumed it, and it sent nothing until the
/// watchdog recreated the consumer after `stall_timeout` (ten minutes here,
/// so only the fix reads on within the test's two minutes).
#[test]
fn a_paused_partition_assigned_back_after_a_rebalance_reads_on() {
    use aftercare::source::Source;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let _heavy = common::heavy();
    let tansu = common::tansu::Tansu::start();
    tansu.create_topics(&["orders"], 2);
    tansu.create_topics(&["shipments", "returns", "other"], 1);
    // Partition 0's events all come before partition 1's: the merge hands
    // out partition 0 first, and partition 1's queue grows until paused.
    let events = |partition: i32, count: usize, year: i32| -> (Vec<String>, Vec<String>) {
        (0..count)
            .map(|i| {
                let at = jiff::civil::date(year as i16, 1, 1)
                    .at(0, 0, 0, 0)
                    .in_tz("UTC")
                    .unwrap()
                    .timestamp()
                    + Duration::from_secs(i as u64);
                let id = format!("p{partition}-{i}");
                let payload = format!(r#"{{"event_id":"{id}","occurred_at":"{at}"}}"#);
                (id, payload)
            })
            .unzip()
    };
    let (mut want, early) = events(0, 9_000, 2030);
    let (late_ids, late) = events(1, 7_000, 2031);
    want.extend(late_ids);
    tansu.produce_to("orders", 0, &early);
    tansu.produce_to("orders", 1, &late);

    let work = Work::new(&kafka_config(&tansu, "paused", ""));
    let mut config = aftercare::config::Config::load(Some(&work.config()), []).unwrap();
    config.source.kafka.stall_timeout = Duration::from_secs(600);
    let (mut source, positions) = source_with_positions(&config);
    // The ids read (an event may come twice: a partition assigned again is
    // read on from the positions stored).
    let mut read: BTreeSet<String> = BTreeSet::new();
    // Partition 0 handed out first, meanwhile partition 1's queue past the
    // 5,000 events that pause it.
    let started = Instant::now();
    let mut handed = 0;
    while handed < 5_000 && started.elapsed() < Duration::from_secs(60) {
        handed += take_batch(&mut source, &positions, 2_500, &mut read);
    }
    assert!(handed >= 5_000, "only {handed} read in a minute");
    let paused_before = source.health();
    // Another member joins the group (for another topic: the range
    // assignor gives "orders" back to the source), so every partition is
    // revoked and assigned again.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (brokers, stop) = (tansu.brokers(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", "paused")
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .create()
                .unwrap();
            consumer.subscribe(&["other"]).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
        })
    };
    while read.len() < want.len() && started.elapsed() < Duration::from_secs(120) {
        take_batch(&mut source, &positions, 500, &mut read);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    other.join().unwrap();

    let never: Vec<&String> = want.iter().filter(|id| !read.contains(*id)).collect();
    assert!(
        never.is_empty(),
        "{} never read (first {:?}, last {:?}); the source before the rebalance: {:?}, \
         after: {:?}",
        never.len(),
        never.first(),
        never.last(),
        paused_before,
        source.health()
    );
}

/// Every preset's fixture (tests/presets/NAME: a topic dumped with
/// `kcat -J`, headers and keys included) produced onto the broker and read
/// by the Kafka source with the fixture's config: the worker sends what
/// `simulate` plans for the record file, and dead-letters nothing.
#[test]
fn every_preset_fixture_read_from_the_broker_sends_its_plan() {
    let _heavy = common::heavy();
    let tansu = common::tansu::Tansu::start();
    for (name, _) in aftercare::mapping::presets::PRESETS {
        let dir = common::repo().join("tests/presets").join(name);
        let records = std::fs::read_to_string(dir.join("records.jsonl")).unwrap();
        let topic = serde_json::from_str::<serde_json::Value>(records.lines().next().unwrap())
            .unwrap()["topic"]
            .as_str()
            .unwrap()
            .to_owned();
        let (shipments, returns) = (format!("{name}-shipments"), format!("{name}-returns"));
        tansu.create_topics(&[&topic, &shipments, &returns], 1);
        tansu.create_topics(&[&format!("{name}-dead")], 1);
        tansu.produce_kcat(&records);

        // The fixture's config, its [source] read from the broker.
        let shop = std::fs::read_to_string(dir.join("aftercare.toml")).unwrap();
        assert!(shop.contains("[source]\n"), "{name}");
        let config = format!(
            "{}\n[source.kafka]\nbrokers = \"{}\"\ngroup_id = \"presets-{name}\"\n\
             dead_letter_topic = \"{name}-dead\"\n\
             [source.kafka.topics]\norders = \"{topic}\"\nshipments = \"{shipments}\"\nreturns = \"{returns}\"\n",
            shop.replace(
                "[source]\n",
                "[source]\nkind = \"kafka\"\nbatch_size = 50\nbatch_wait = \"50ms\"\n"
            ),
            tansu.brokers()
        );
        let work = Work::new(&config);
        let records_path = work.path("records.jsonl");
        common::write(&records_path, &records);
        let plan = planned(&work, &records_path);
        assert!(!plan.is_empty(), "{name}");

        let out = work.run(&["run", "--once"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
        let events = expected.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(
            stdout(&out).contains(&format!("Read {events} events")),
            "{name}: {}",
            stdout(&out)
        );
        assert!(
            stdout(&out).contains("0 invalid"),
            "{name}: {}",
            stdout(&out)
        );
        let approvals = work.approvals();
        assert_same(&approvals, &plan);
        assert_eq!(work.outbox().len(), plan.len(), "{name}");
    }
}
