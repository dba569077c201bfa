//! The reliability suite: crashes and a failing mail server against an
//! oracle, checked message by message.
//!
//! The oracle is `simulate --with-ids`: every email the log should send,
//! with the Message-ID it carries. The worker then runs the same log
//! through SMTP to Postfix's `smtp-sink` while it is killed with SIGKILL at
//! random moments and the SMTP server goes away and comes back. The checker
//! compares what the sinks received with the oracle, by Message-ID:
//! - lost: expected, never received: must be none;
//! - unexpected: received, not expected: must be none;
//! - duplicated: received twice. A duplicate can only come from the gap
//!   between the server accepting a message and the worker recording it
//!   (a kill there), so there can be at most as many as deliveries in
//!   flight at the kills (kills x pool size); more would mean emails sent
//!   again outside that gap.
//!
//! Short by default (part of the test command); `scripts/reliability.sh`
//! runs the long one (`RELIABILITY_LONG=1`) and writes RELIABILITY.md.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{SmtpSink, Work, stderr, stdout};

struct Suite {
    customers: usize,
    kills: usize,
    /// Every `outage_every`-th round the SMTP server is down while the
    /// worker runs.
    outage_every: usize,
}

fn suite() -> Suite {
    if std::env::var("RELIABILITY_LONG").is_ok() {
        Suite {
            customers: 2_000,
            kills: 36,
            outage_every: 4,
        }
    } else {
        Suite {
            customers: 300,
            kills: 6,
            outage_every: 3,
        }
    }
}

/// A small deterministic generator: the same run for the same seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

const POOL: usize = 4;

#[test]
fn kills_and_smtp_outages_lose_nothing_and_duplicate_only_in_the_gap() {
    let suite = suite();
    let seed: u64 = std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_125);
    let mut rng = Lcg(seed);
    let port = common::free_port();
    let work = Work::new(&format!(
        "[source]\nbatch_size = 25\n[sender]\nbatch_size = 10\n\
         [sender.retry]\nfirst_wait = \"1s\"\nmax_wait = \"2s\"\nmax_attempts = 1000\nmax_age = \"1h\"\n\
         [mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n\
         port = {port}\npool_size = {POOL}\ntimeout = \"2s\"\n"
    ));
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(suite.customers));

    // The oracle.
    let out = work.run(&["simulate", log.to_str().unwrap(), "--with-ids"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected: BTreeMap<String, String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "sent")
        .map(|v| {
            (
                // As a mail parser gives it: without the angle brackets.
                v["message_id"]
                    .as_str()
                    .unwrap()
                    .trim_matches(['<', '>'])
                    .to_owned(),
                v["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        expected.len() > suite.customers,
        "{} emails",
        expected.len()
    );

    let started = Instant::now();
    let mut sinks = vec![SmtpSink::start_on(port, &[])];
    let (mut kills, mut outages) = (0, 0);
    for round in 1..=suite.kills {
        let outage = round % suite.outage_every == 0;
        if outage {
            // The server goes away while the worker runs: it must keep the
            // emails to retry, not lose them.
            sinks.last_mut().unwrap().stop();
            outages += 1;
        }
        let mut worker = work
            .command(&["run", "--input", log.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.next(900)));
        worker.kill().unwrap();
        if worker.wait().unwrap().code().is_none() {
            kills += 1;
        }
        if outage {
            sinks.push(SmtpSink::start_on(port, &[]));
        }
    }

    // Then runs to the end, until nothing is left to send (retries wait a
    // second or two).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = work.run(&["run", "--input", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let open = work
            .emails()
            .into_iter()
            .filter(|(_, status)| status == "pending" || status == "sending")
            .count();
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} emails still open");
        std::thread::sleep(Duration::from_secs(2));
    }

    // The checker.
    // A kill in the middle of DATA leaves smtp-sink a partial dump of a
    // message it never accepted: one without even its headers is not a
    // delivery. (A partial one with its headers counts as received: the
    // count of duplicates only errs on the high side.)
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    let mut partial = 0;
    for sink in &sinks {
        for raw in sink.messages() {
            let id = mail_parser::MessageParser::default()
                .parse(&raw)
                .and_then(|m| m.message_id().map(str::to_owned));
            match id {
                Some(id) => *received.entry(id).or_default() += 1,
                None => partial += 1,
            }
        }
    }
    eprintln!("reliability: {partial} partial dumps of aborted transactions ignored");
    // A marketing email whose delivery failed is checked again when it is
    // retried: events applied meanwhile (a new order) may have withdrawn
    // it. Those end cancelled or suppressed, with the reason; they are not
    // lost.
    let status: BTreeMap<String, (String, Option<String>)> = work
        .stored()
        .into_iter()
        .map(|e| (e.key, (e.status, e.reason)))
        .collect();
    let (mut lost, mut withdrawn) = (Vec::new(), Vec::new());
    for (id, key) in &expected {
        if received.contains_key(id) {
            continue;
        }
        match status.get(key) {
            Some((s, reason)) if s == "cancelled" || s == "suppressed" => {
                withdrawn.push((key, reason.clone()));
            }
            other => lost.push((key, other.cloned())),
        }
    }
    let unexpected: Vec<&String> = received
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    let duplicated: u64 = received.values().map(|n| n - 1).sum();
    let figures = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
        if std::env::var("RELIABILITY_LONG").is_ok() {
            "long"
        } else {
            "short"
        },
        seed,
        suite.customers,
        kills,
        outages,
        expected.len(),
        received.values().sum::<u64>(),
        lost.len(),
        withdrawn.len(),
        duplicated,
        started.elapsed().as_secs_f64()
    );
    eprintln!("reliability: {figures}");
    if let Ok(path) = std::env::var("RELIABILITY_FIGURES") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{figures}").unwrap();
    }
    assert!(kills > 0, "the worker finished before every kill");
    let first = |v: &dyn std::fmt::Debug| format!("{v:?}").chars().take(2_000).collect::<String>();
    assert!(lost.is_empty(), "{} lost: {}", lost.len(), first(&lost));
    assert!(
        unexpected.is_empty(),
        "{} unexpected: {}",
        unexpected.len(),
        first(&unexpected)
    );
    assert!(
        duplicated <= (kills * POOL) as u64,
        "{duplicated} duplicates from {kills} kills: more than could be in flight"
    );
    // Every email of the plan ended sent in the store, nothing failed.
    let failed: Vec<(String, String)> = work
        .emails()
        .into_iter()
        .filter(|(_, s)| s == "failed")
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}
