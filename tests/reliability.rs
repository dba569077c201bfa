//! The reliability suite: crashes and a failing mail server against an
//! oracle, checked message by message.
//!
//! The oracle is `simulate --with-ids`: every email the log should send,
//! with the Message-ID it carries. The worker then runs the same log
//! through SMTP to Postfix's `smtp-sink` while it is killed with SIGKILL at
//! random moments and the SMTP server goes away and comes back. The checker
//! (`common::checker`) compares what the sinks received with the oracle,
//! by Message-ID:
//! - lost: expected, never received: must be none;
//! - unexpected: received, not expected: must be none;
//! - duplicated: received twice. A duplicate can only come from the gap
//!   between the server accepting a message and the worker recording it
//!   (a kill there): each one must have a kill within seconds after its
//!   earlier copy was written, and there can be at most as many as
//!   deliveries in flight at the kills (kills x pool size).
//!
//! Short by default (part of the test command); `scripts/reliability.sh`
//! runs the long one (`RELIABILITY_LONG=1`) and writes RELIABILITY.md.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use common::checker::{self, Delivery};
use common::{SmtpSink, Work, stderr};

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
    let expected = checker::expected(&work, &log);
    assert!(
        expected.len() > suite.customers,
        "{} emails",
        expected.len()
    );

    let started = Instant::now();
    let mut sinks = vec![SmtpSink::start_on(port, &[])];
    let (mut kills, mut outages) = (Vec::new(), 0);
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
        let at = SystemTime::now();
        worker.kill().unwrap();
        if worker.wait().unwrap().code().is_none() {
            kills.push(at);
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
    let deliveries: Vec<Delivery> = sinks.iter().flat_map(SmtpSink::deliveries).collect();
    let status: BTreeMap<String, (String, Option<String>)> = work
        .stored()
        .into_iter()
        .map(|e| (e.key, (e.status, e.reason)))
        .collect();
    let checked = checker::check(&expected, &deliveries, &kills, |key| {
        status.get(key).cloned()
    });
    eprintln!(
        "reliability: {} partial dumps of aborted transactions ignored",
        checked.partial
    );
    let figures = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
        if std::env::var("RELIABILITY_LONG").is_ok() {
            "long"
        } else {
            "short"
        },
        seed,
        suite.customers,
        kills.len(),
        outages,
        checked.expected,
        checked.received,
        checked.lost.len(),
        checked.withdrawn.len(),
        checked.duplicated(),
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
    assert!(!kills.is_empty(), "the worker finished before every kill");
    checked.assert_promise_kept();
    // At most the deliveries in flight at the kills.
    assert!(
        checked.duplicated() <= kills.len() * POOL,
        "{} duplicates from {} kills: more than could be in flight",
        checked.duplicated(),
        kills.len()
    );
    // Every email of the plan ended sent in the store, nothing failed.
    let failed: Vec<(String, String)> = work
        .emails()
        .into_iter()
        .filter(|(_, s)| s == "failed")
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// The checker itself: a copy followed by a kill within the gap is a
/// duplicate in the gap; one with no kill after it is not; a missing email
/// is lost unless the store shows it withdrawn.
#[test]
fn the_checker_tells_lost_withdrawn_and_duplicates_in_and_outside_the_gap() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = |s: u64| t0 + Duration::from_secs(s);
    let expected: BTreeMap<String, String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| (format!("{k}@x"), (*k).to_owned()))
        .collect();
    let got = |id: &str, s: u64| Delivery {
        message_id: Some(id.to_owned()),
        at: at(s),
    };
    let deliveries = [
        got("a@x", 10),
        got("a@x", 30), // killed at 12: in the gap
        got("b@x", 20),
        got("b@x", 40), // no kill within the gap after 20
        got("c@x", 50),
        got("z@x", 60), // not expected
        Delivery {
            message_id: None,
            at: at(70),
        },
    ];
    let checked = checker::check(&expected, &deliveries, &[at(12)], |key| match key {
        "d" => Some(("cancelled".to_owned(), Some("ordered again".to_owned()))),
        _ => Some(("sending".to_owned(), None)),
    });
    assert_eq!(checked.expected, 5);
    assert_eq!(checked.received, 6);
    assert_eq!(checked.partial, 1);
    assert_eq!(checked.duplicated_in_gap, 1);
    assert_eq!(checked.duplicated_outside, ["b@x"]);
    assert_eq!(checked.unexpected, ["z@x"]);
    assert_eq!(
        checked.withdrawn,
        [("d".to_owned(), Some("ordered again".to_owned()))]
    );
    assert_eq!(checked.lost, [("e".to_owned(), Some("sending".to_owned()))]);
    let kept = std::panic::catch_unwind(|| checked.assert_promise_kept());
    assert!(kept.is_err());
}
