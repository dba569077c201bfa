//! The reliability suite: crashes and a failing mail server against an
//! oracle, checked message by message.
//!
//! The oracle is `simulate --with-ids`: every email the log should send,
//! with the Message-ID it carries. The worker then runs the same log
//! through SMTP to Postfix's `smtp-sink` while it is killed with SIGKILL at
//! random moments, and every other round the SMTP side fails in one way
//! after another (down, hung, refusing with 450 or for good with 500,
//! closing with 421, slow or hanging up after the final dot). The checker
//! (`common::checker`) compares what the sinks received with the oracle,
//! by Message-ID:
//! - lost: expected, never received: must be none;
//! - unexpected: received, not expected: must be none;
//! - duplicated: received twice. A duplicate can only come from the gap
//!   between the server accepting a message and the worker knowing it (a
//!   kill there, or a server that never acknowledged it): each one must
//!   have a kill within seconds after its earlier copy was written or an
//!   unacknowledged earlier copy, and there can be at most as many as
//!   deliveries in flight at the kills (kills x pool size) plus the
//!   unacknowledged ones.
//!
//! Short by default (part of the test command); `scripts/reliability.sh`
//! runs the long one (`RELIABILITY_LONG=1`) and writes RELIABILITY.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::common::checker::{self, Delivery};
use crate::common::postgres::Schema;
use crate::common::{self, KillOnDrop, Silent, SmtpSink, Work, stderr};

struct Suite {
    customers: usize,
    /// Rounds, each ended by a SIGKILL; the SMTP side follows [`ROTATION`].
    kills: usize,
}

fn suite() -> Suite {
    if checker::long() {
        Suite {
            customers: 2_000,
            kills: 36,
        }
    } else {
        Suite {
            customers: 300,
            kills: ROTATION.len(),
        }
    }
}

/// What the SMTP side is during a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Smtp {
    /// Postfix's smtp-sink, healthy.
    Healthy,
    /// Nothing listens: connections are refused (the server is down).
    Down,
    /// Connections are accepted and nothing is ever said (a hung server).
    Silent,
    /// Every RCPT TO gets 450 (a transient refusal).
    Refusing,
    /// Every RCPT TO gets 500 (a refusal for good: those emails fail).
    Rejecting,
    /// MAIL FROM gets 421 and the connection is closed.
    Closing,
    /// The message is taken; the reply to its final dot comes after the
    /// client's timeout (2 s).
    SlowAfterDot,
    /// The message is taken; the connection drops without a reply.
    DropAfterDot,
}

/// Every other round a fault, each kind in turn.
const ROTATION: [Smtp; 14] = [
    Smtp::Healthy,
    Smtp::Down,
    Smtp::Healthy,
    Smtp::Rejecting,
    Smtp::Healthy,
    Smtp::Silent,
    Smtp::Healthy,
    Smtp::Refusing,
    Smtp::Healthy,
    Smtp::Closing,
    Smtp::Healthy,
    Smtp::SlowAfterDot,
    Smtp::Healthy,
    Smtp::DropAfterDot,
];

/// A server of kind `smtp` on `port` (`None` for `Down`).
fn serve(smtp: Smtp, port: u16) -> Option<Server> {
    let sink = |args: &[&str]| Some(Server::Sink(SmtpSink::start_on(port, args), smtp));
    match smtp {
        Smtp::Healthy => sink(&[]),
        Smtp::Down => None,
        Smtp::Silent => Some(Server::Silent(Silent::start_on(port))),
        Smtp::Refusing => sink(&["-r", "RCPT"]),
        Smtp::Rejecting => sink(&["-f", "RCPT"]),
        Smtp::Closing => sink(&["-Q", "MAIL"]),
        Smtp::SlowAfterDot => sink(&["-W", ".:5"]),
        Smtp::DropAfterDot => sink(&["-q", "."]),
    }
}

enum Server {
    Sink(SmtpSink, Smtp),
    #[allow(dead_code)] // Held for its port.
    Silent(Silent),
}

impl Server {
    /// What this server received; the ones it never acknowledged marked so.
    fn deliveries(&self) -> Vec<Delivery> {
        match self {
            Server::Sink(sink, kind) => {
                let acknowledged = !matches!(kind, Smtp::SlowAfterDot | Smtp::DropAfterDot);
                sink.deliveries()
                    .into_iter()
                    .map(|d| Delivery { acknowledged, ..d })
                    .collect()
            }
            Server::Silent(_) => Vec::new(),
        }
    }

    fn stop(&mut self) {
        match self {
            Server::Sink(sink, _) => sink.stop(),
            Server::Silent(_) => {}
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
fn kills_and_smtp_faults_lose_nothing_and_duplicate_only_in_the_gap() {
    let _heavy = common::heavy();
    kills_and_smtp_faults("kills + SMTP faults", false);
}

#[test]
fn poison_events_among_kills_and_smtp_faults_are_dead_lettered_and_nothing_else_is_lost() {
    let _heavy = common::heavy();
    kills_and_smtp_faults("poison events + kills + SMTP faults", true);
}

/// Events a shop's bug or an attacker could send: each once stopped the
/// worker at every start, made one key of two emails, or forged a log line.
/// Each at `at`, and with whether it is invalid (the key-collision pair is
/// valid, and must be delivered).
fn poison(n: usize, at: &str) -> (String, bool) {
    let placed = |id: String, customer: &str, order: &str, total: &str, price: &str, at: &str| {
        serde_json::json!({
            "event_id": id, "type": "order.placed", "occurred_at": at,
            "customer": {"id": customer, "email": "poison@example.com", "marketing_consent": true},
            "order": {"id": order, "total": total, "currency": "EUR",
                      "items": [{"sku": "T", "name": "Tea", "quantity": 2, "unit_price": price}]},
        })
        .to_string()
    };
    let id = format!("poison-{n}");
    match n % 9 {
        // A price past every bound (its line total once overflowed): the
        // price is dropped, the order confirmed without it.
        0 => (
            placed(
                id,
                "p-1",
                &format!("o-{n}"),
                "1.00",
                "79228162514264337593543950335",
                at,
            ),
            false,
        ),
        1 => (
            placed(id, "p-2", &format!("o-{n}"), "7.9e28", "0.50", at),
            true,
        ),
        2 => (
            placed(id, "p-3", "o-3", "1.00", "0.50", "9999-12-30T00:00:00Z"),
            true,
        ),
        3 => (
            placed(id, "p-4\r\nWARN forged", "o-4", "1.00", "0.50", at),
            true,
        ),
        4 => (placed(id, "p-5", "o-5", "-10.00", "0.50", at), true),
        5 => (
            serde_json::json!({"event_id": id, "type": "x".repeat(100_000), "occurred_at": at,
                               "customer": {"id": "p-6"}})
            .to_string(),
            true,
        ),
        // An event id the generated log already used, with other content.
        6 => (
            placed("gen-0000001".into(), "p-7", "o-7", "1.00", "0.50", at),
            true,
        ),
        // The key-collision pair: both valid, both confirmed. Joined with
        // `/` unescaped, both keys would read
        // `q-N/order_confirmation/o/order_confirmation/1-M`. (The order id
        // is the shop's and unique: another customer's order of the same id
        // is dead-lettered.)
        7 => (
            placed(
                id,
                &format!("q-{n}/order_confirmation/o"),
                &format!("1-{}", n + 1),
                "1.00",
                "0.50",
                at,
            ),
            false,
        ),
        _ => (
            placed(
                id,
                &format!("q-{}", n - 1),
                &format!("o/order_confirmation/1-{n}"),
                "1.00",
                "0.50",
                at,
            ),
            false,
        ),
    }
}

fn kills_and_smtp_faults(scenario: &str, poisoned: bool) {
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
         [sender.domains]\ndefer = \"2s\"\n\
         [mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n\
         port = {port}\npool_size = {POOL}\ntimeout = \"2s\"\n"
    ));
    let log = work.path("events.jsonl");
    let generated = common::generated_events(suite.customers);
    // With poison, one hostile event every 20 lines: the lines that must
    // end in the dead letters.
    let mut lines: Vec<String> = Vec::new();
    let mut poisoned_lines = std::collections::BTreeSet::new();
    for (i, line) in generated.lines().enumerate() {
        if poisoned && i % 20 == 10 {
            // At the time of the events around it: a log in time order.
            let at = line.find("\"occurred_at\":\"").unwrap() + 15;
            let (event, invalid) = poison(i / 20, &line[at..at + 20]);
            lines.push(event);
            if invalid {
                poisoned_lines.insert(lines.len() as u64);
            }
        }
        lines.push(line.to_owned());
    }
    common::write(&log, &(lines.join("\n") + "\n"));

    // The oracle.
    let expected = if poisoned {
        checker::expected_with_invalid(&work, &log)
    } else {
        checker::expected(&work, &log)
    };
    assert!(
        expected.len() > suite.customers,
        "{} emails",
        expected.len()
    );

    let started = Instant::now();
    // Every server of the run, stopped or not, for what it received.
    let mut servers: Vec<Server> = Vec::new();
    let (mut kills, mut faults) = (Vec::new(), 0);
    for round in 0..suite.kills {
        let smtp = ROTATION[round % ROTATION.len()];
        if smtp != Smtp::Healthy {
            faults += 1;
        }
        servers.extend(serve(smtp, port));
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
        // The next round's server takes the port.
        match servers.last_mut() {
            Some(Server::Silent(_)) => drop(servers.pop()),
            Some(server) => server.stop(),
            None => {}
        }
    }
    servers.extend(serve(Smtp::Healthy, port));

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
    let deliveries: Vec<Delivery> = servers.iter().flat_map(Server::deliveries).collect();
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
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for (key, reason) in &checked.withdrawn {
        let template = key.split('/').nth(1).unwrap_or_default();
        // The kind of reason, without its times and ids.
        let kind: String = reason
            .as_deref()
            .unwrap_or("?")
            .chars()
            .take_while(|c| !c.is_ascii_digit())
            .collect();
        *why.entry(format!(
            "{template}: {}",
            kind.trim_end_matches([' ', '-', 'o'])
        ))
        .or_default() += 1;
    }
    eprintln!("reliability: withdrawn on retry, by template and reason: {why:#?}");
    checker::Figures {
        scenario,
        seed: Some(seed),
        customers: suite.customers,
        kills: kills.len(),
        faults,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    assert!(!kills.is_empty(), "the worker finished before every kill");
    checked.assert_promise_kept();
    // At most the deliveries in flight at the kills, and the ones never
    // acknowledged.
    let unacknowledged = deliveries
        .iter()
        .filter(|d| !d.acknowledged && d.message_id.is_some())
        .count();
    assert!(
        checked.duplicated() <= kills.len() * POOL + unacknowledged,
        "{} duplicates from {} kills and {unacknowledged} unacknowledged: more than could be in flight",
        checked.duplicated(),
        kills.len()
    );
    // Nothing failed but what the server refused for good.
    let failed_otherwise: Vec<(String, Option<String>)> = work
        .stored()
        .into_iter()
        .filter(|e| e.status == "failed")
        .filter(|e| {
            !e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("permanent:"))
        })
        .map(|e| (e.key, e.reason))
        .collect();
    assert!(failed_otherwise.is_empty(), "{failed_otherwise:?}");
    // Every poison event in the dead letters (a batch cut by a kill may
    // write one twice), and nothing else.
    let dead: std::collections::BTreeSet<u64> =
        std::fs::read_to_string(work.path("data/dead-letter.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["coordinates"]["line"].as_u64().unwrap()
            })
            .collect();
    assert_eq!(dead, poisoned_lines);
}

/// The checker itself: a copy followed by a kill within the gap is a
/// duplicate in the gap; one with no kill after it is not; a missing email
/// is lost unless the store shows it withdrawn.
#[test]
fn the_checker_tells_lost_withdrawn_and_duplicates_in_and_outside_the_gap() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = |s: u64| t0 + Duration::from_secs(s);
    let expected: BTreeMap<String, String> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|k| (format!("{k}@x"), (*k).to_owned()))
        .collect();
    let got = |id: &str, s: u64| Delivery {
        message_id: Some(id.to_owned()),
        at: at(s),
        acknowledged: true,
    };
    let deliveries = [
        got("a@x", 10),
        got("a@x", 30), // killed at 12: in the gap
        got("b@x", 20),
        got("b@x", 40), // no kill within the gap after 20
        Delivery {
            acknowledged: false,
            ..got("c@x", 50)
        },
        got("z@x", 60), // not expected
        got("c@x", 55), // never acknowledged, then sent again
        Delivery {
            message_id: None,
            at: at(70),
            acknowledged: true,
        },
    ];
    let checked = checker::check(&expected, &deliveries, &[at(12)], |key| match key {
        "d" => Some(("cancelled".to_owned(), Some("ordered again".to_owned()))),
        "f" => Some((
            "failed".to_owned(),
            Some("permanent: 500 5.3.0 no".to_owned()),
        )),
        _ => Some(("sending".to_owned(), None)),
    });
    assert_eq!(checked.expected, 6);
    assert_eq!(
        checked.refused,
        [("f".to_owned(), Some("permanent: 500 5.3.0 no".to_owned()))]
    );
    assert_eq!(checked.received, 7);
    assert_eq!(checked.partial, 1);
    assert_eq!(checked.duplicated_in_gap, 2);
    assert_eq!(checked.duplicated_outside, ["b@x"]);
    assert_eq!(checked.unexpected, ["z@x"]);
    assert_eq!(
        checked.withdrawn,
        [("d".to_owned(), Some("ordered again".to_owned()))]
    );
    assert_eq!(checked.lost, [("e".to_owned(), Some("sending".to_owned()))]);
    let broken = checked.broken().expect("the promise is broken");
    assert!(
        broken.contains("1 lost") && broken.contains("1 unexpected"),
        "{broken}"
    );
    assert!(broken.contains("1 duplicated outside the gap"), "{broken}");
}

/// `aftercare ARGS` in `work` with the wall clock `days` days behind.
fn run_days_ago(work: &Work, days: u32, args: &[&str]) -> std::process::Output {
    common::run_shifted(work, &format!("-{days}d"), args)
}

#[test]
fn after_a_long_downtime_overdue_emails_go_out_once_and_cancelled_ones_stay_cancelled() {
    let _heavy = common::heavy();
    let started = Instant::now();
    let sink = SmtpSink::start(&[]);
    let work = Work::new(&format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {}\n",
        sink.port
    ));
    let now = jiff::Timestamp::now();
    let ago = |days: i64| (now - jiff::SignedDuration::from_hours(24 * days)).to_string();
    let order = |event: &str, customer: &str, order: &str, days: i64| {
        format!(
            r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"{}","customer":{{"id":"{customer}","email":"{customer}@example.com","name":"Kim","locale":"en","timezone":"UTC","marketing_consent":true}},"order":{{"id":"{order}","total":"19.90","currency":"EUR","items":[]}}}}"#,
            ago(days)
        )
    };
    // Customers in threes, a, b and c, order 100 days ago while the worker
    // runs...
    let trios = if checker::long() { 100 } else { 1 };
    let customer = |n: usize, kind: char| format!("{kind}{n}");
    let before: Vec<String> = (0..trios)
        .flat_map(|n| {
            ['a', 'b', 'c'].map(|kind| {
                let c = customer(n, kind);
                order(&format!("{c}-e1"), &c, &format!("{c}-1"), 100)
            })
        })
        .collect();
    // ...then it is down for 100 days, during which b orders again before
    // their win-back falls due (60 days after the first order), and c only
    // after it. In time order, as a shop's log is: a later event in the
    // file moves the clock past the earlier timers.
    let during: Vec<String> = [('b', 50), ('c', 20)]
        .into_iter()
        .flat_map(|(kind, days)| {
            (0..trios).map(move |n| {
                let c = customer(n, kind);
                order(&format!("{c}-e2"), &c, &format!("{c}-2"), days)
            })
        })
        .collect();
    let log = work.path("events.jsonl");
    common::write(&log, &(before.join("\n") + "\n"));
    let out = run_days_ago(&work, 100, &["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first: BTreeMap<String, u64> = sink
        .deliveries()
        .into_iter()
        .filter_map(|d| d.message_id)
        .map(|id| (id, 1))
        .collect();
    assert_eq!(
        first.len(),
        3 * trios,
        "only the confirmations were due then"
    );

    // The clock jumps 100 days: the worker starts again with the events of
    // the downtime waiting.
    common::write(
        &log,
        &(before.join("\n") + "\n" + &during.join("\n") + "\n"),
    );
    let expected = checker::expected_until(&work, &log, Some(&now.to_string()));
    for _ in 0..2 {
        // The second start finds nothing left to do.
        let out = work.run(&["run", "--input", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let checked = checker::check(&expected, &sink.deliveries(), &[], |_| None);
    checker::Figures {
        scenario: "clock jump (100 days)",
        seed: None,
        customers: 3 * trios,
        kills: 0,
        faults: 1,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    checked.assert_promise_kept();
    assert_eq!(checked.duplicated(), 0);
    assert!(checked.withdrawn.is_empty());

    let stored: BTreeMap<String, (String, Option<String>)> = work
        .stored()
        .into_iter()
        .map(|e| (e.key, (e.status, e.reason)))
        .collect();
    let status = |key: &str| stored.get(key).map(|(s, _)| s.as_str());
    for n in 0..trios {
        let (a, b, c) = (customer(n, 'a'), customer(n, 'b'), customer(n, 'c'));
        // Overdue: a's welcome and win-back, c's win-back (due before c
        // ordered again) went out, once each.
        for key in [
            format!("{a}/welcome/{a}-1"),
            format!("{a}/win_back/{a}-1"),
            format!("{c}/win_back/{c}-1"),
        ] {
            assert_eq!(status(&key), Some("sent"), "{key}");
        }
        // b's first win-back was cancelled by the order of the downtime.
        assert_eq!(
            stored.get(&format!("{b}/win_back/{b}-1")),
            Some(&("cancelled".to_owned(), Some(format!("new order {b}-2"))))
        );
    }
}

/// Webhooks under kills: two workers sharing a PostgreSQL store take live
/// events as signed webhooks (a shop's own HMAC endpoint, native events),
/// each posted when it happens to either worker, as a load balancer would,
/// while each worker in turn is killed with SIGKILL and started again. A
/// kill lands milliseconds after the victim's last 200, often before the
/// intake's reader applied the delivery. The poster does what Shopify does:
/// a delivery without a 200 (refused, reset, timed out, 503) is sent again,
/// here to the other worker. Every delivery must send its emails once, and
/// be stored once.
#[test]
fn webhooks_to_two_workers_killed_in_turn_lose_nothing() {
    let _heavy = common::heavy();
    const SECRET: &str = "a reliability webhook secret";
    // Live events over 30 s (long: 2 minutes).
    let (customers, span) = if checker::long() {
        (800, 120)
    } else {
        (200, 30)
    };
    let mut rng = Lcg(20_261_206);
    let sink = SmtpSink::start(&[]);
    let work = Work::new(&format!(
        "[source]\nkind = \"webhook\"\nbatch_size = 25\nbatch_wait = \"50ms\"\n\
         [source.webhook.endpoints.shop]\nsignature = \"hmac\"\nheader = \"X-Shop-Signature\"\n\
         encoding = \"hex\"\nsecrets_file = \"webhook-secret\"\nid_header = \"X-Shop-Delivery\"\n\
         [sender]\nlease = \"3s\"\n\
         [mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\n\
         port = {}\npool_size = {POOL}\n\
         [http]\nlisten = \"127.0.0.1:1\"\n",
        sink.port
    ));
    common::write(&work.path("webhook-secret"), &format!("{SECRET}\n"));
    let start = jiff::Timestamp::now() + Duration::from_secs(3);
    let events = common::live_events(customers, start, Duration::from_secs(span));
    let log = work.path("events.jsonl");
    common::write(&log, &events);
    // The oracle: what is due by a minute after the last event (the emails
    // sent at once; the delayed ones are not due in this test).
    let until = (common::last_event(&events) + Duration::from_secs(60)).to_string();
    let expected = checker::expected_until(&work, &log, Some(&until));
    assert!(expected.len() > customers * 2, "{} emails", expected.len());

    let schema = Schema::new();
    let store_url = schema.store_url(None);
    let ports = [common::free_port(), common::free_port()];
    // Each worker's own address and id (the same again after a kill).
    let start_worker = |n: usize| {
        let worker = common::spawn(
            work.command(&["run"])
                .env("AFTERCARE_STORE__URL", &store_url)
                .env("AFTERCARE_WORKER_ID", format!("w{n}"))
                .env("AFTERCARE_HTTP__LISTEN", format!("127.0.0.1:{}", ports[n])),
        );
        common::wait_for_port(ports[n], Duration::from_secs(30));
        worker
    };
    let started = Instant::now();
    let mut workers: Vec<KillOnDrop> = (0..2).map(start_worker).collect();

    let lines: Vec<&str> = events.lines().filter(|l| !l.is_empty()).collect();
    let posting = AtomicBool::new(true);
    let (kills, taken_by) = std::thread::scope(|scope| {
        let poster = scope.spawn(|| {
            let taken_by = post_live(&lines, &ports, SECRET);
            posting.store(false, Ordering::SeqCst);
            taken_by
        });
        let mut kills = Vec::new();
        let mut n = 0;
        while posting.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1_000 + rng.next(2_000)));
            let at = SystemTime::now();
            workers[n].0.kill().unwrap();
            if workers[n].0.wait().unwrap().code().is_none() {
                kills.push(at);
            }
            workers[n] = start_worker(n);
            n = 1 - n;
        }
        (kills, poster.join().unwrap())
    });

    // Every delivery applied, every email sent.
    let complete = common::wait_until(Duration::from_secs(120), || {
        schema.count("SELECT count(*) FROM {}.intake WHERE applied_at IS NULL") == 0
            && sink.distinct_message_ids() >= expected.len()
    });
    // A little longer, for any late duplicate to arrive.
    std::thread::sleep(Duration::from_secs(3));
    for worker in &mut workers {
        common::sigterm(&worker.0);
    }
    for worker in &mut workers {
        let status = common::wait_exit(&mut worker.0, Duration::from_secs(20)).expect("stopped");
        assert!(status.success(), "{status:?}");
    }
    let checked = checker::check(&expected, &sink.deliveries(), &kills, |key| {
        schema.email_status(key)
    });
    checker::Figures {
        scenario: "webhooks to 2 workers on PostgreSQL, killed in turn",
        seed: None,
        customers,
        kills: kills.len(),
        faults: 0,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
    checked.assert_promise_kept();
    assert!(checked.withdrawn.is_empty(), "{:?}", checked.withdrawn);
    assert!(complete, "incomplete, yet nothing lost or withdrawn?");
    assert!(kills.len() >= 4, "{} kills", kills.len());
    assert!(
        checked.duplicated() <= kills.len() * POOL,
        "{} duplicates from {} kills",
        checked.duplicated(),
        kills.len()
    );
    // Each delivery stored once, however often it was sent, and applied.
    assert_eq!(
        schema.count("SELECT count(*) FROM {}.intake"),
        lines.len() as i64
    );
    assert_eq!(
        schema.count("SELECT count(*) FROM {}.processed_events"),
        lines.len() as i64
    );
    // Both workers took webhooks.
    assert!(taken_by.iter().all(|&n| n > 0), "{taken_by:?}");
}

/// Posts each of `lines` as a signed webhook when it happens (its
/// `occurred_at`), in order, until one of the workers on `ports` answers
/// 200; a delivery that got anything else is sent again to the other.
/// How many each worker took.
fn post_live(lines: &[&str], ports: &[u16; 2], secret: &str) -> [usize; 2] {
    use hmac::Mac as _;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut taken_by = [0; 2];
    for (i, line) in lines.iter().enumerate() {
        let wait = common::occurred_at(line).duration_since(jiff::Timestamp::now());
        if wait.is_positive() {
            std::thread::sleep(wait.unsigned_abs());
        }
        let id = serde_json::from_str::<serde_json::Value>(line).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(line.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        for attempt in 0.. {
            assert!(Instant::now() < deadline, "delivery {i} never taken");
            let n = (i + attempt) % 2;
            let answer = agent
                .post(format!("http://127.0.0.1:{}/webhooks/shop", ports[n]))
                .header("X-Shop-Signature", &signature)
                .header("X-Shop-Delivery", &id)
                .header("Content-Type", "application/json")
                .send(line.as_bytes());
            if answer.is_ok_and(|r| r.status() == 200) {
                taken_by[n] += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    taken_by
}
