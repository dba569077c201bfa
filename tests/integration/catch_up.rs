//! Catching up without a blast, on real servers: a worker stopped for two
//! days (libfaketime), an email left in flight by a crash that is too old
//! by the restart, and a first deployment that reads a week of history
//! from Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aftercare::config::Config;
use aftercare::journey::EmailClass;
use jiff::{SignedDuration, Timestamp};

use crate::common::checker::{self, planned_due};
use crate::common::tansu::{TOPICS, Tansu, kafka_config};
use crate::common::{self, SmtpSink, Work, stderr, stdout};

fn smtp(port: u16) -> String {
    format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {port}\n"
    )
}

/// No quiet hours: whether a test runs inside them would depend on the
/// hour it runs at. The policies' unit tests cover them in real time.
const NO_QUIET_HOURS: &str = "[policy.quiet_hours]\nenabled = false\n";

fn customer(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","email":"{id}@example.com","name":"Kim Lee","locale":"en","timezone":"UTC","marketing_consent":true}}"#
    )
}

fn placed(id: &str, at: Timestamp) -> String {
    format!(
        r#"{{"event_id":"{id}-placed","type":"order.placed","occurred_at":"{at}","customer":{},"order":{{"id":"{id}-1","total":"19.90","currency":"EUR","items":[]}}}}"#,
        customer(id)
    )
}

fn dispatched(id: &str, at: Timestamp) -> String {
    format!(
        r#"{{"event_id":"{id}-dispatched","type":"shipment.dispatched","occurred_at":"{at}","customer":{{"id":"{id}"}},"order":{{"id":"{id}-1"}},"shipment":{{"id":"{id}-s","carrier":"DHL","tracking_number":"T-{id}","tracking_url":"https://track.example.com/{id}"}}}}"#
    )
}

fn delivered(id: &str, at: Timestamp) -> String {
    format!(
        r#"{{"event_id":"{id}-delivered","type":"shipment.delivered","occurred_at":"{at}","customer":{{"id":"{id}"}},"order":{{"id":"{id}-1"}},"shipment":{{"id":"{id}-s"}}}}"#
    )
}

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

/// Each template's `expires_after` and class, as shipped.
fn rules() -> BTreeMap<String, (SignedDuration, EmailClass)> {
    Config::embedded()
        .journeys
        .iter()
        .map(|r| {
            (
                r.template.clone(),
                (SignedDuration::try_from(r.expiry()).unwrap(), r.class),
            )
        })
        .collect()
}

/// `customer/template/scope`: the template of a key.
fn template_of(key: &str) -> &str {
    key.split('/').nth(1).unwrap()
}

/// The keys of the messages `sink` received that were not in `before`.
fn received_since(
    sink: &SmtpSink,
    ids: &BTreeMap<String, String>,
    before: &BTreeSet<String>,
) -> Vec<String> {
    sink.deliveries()
        .into_iter()
        .filter_map(|d| d.message_id)
        .filter(|id| !before.contains(id))
        .map(|id| ids.get(&id).cloned().unwrap_or(id))
        .collect()
}

fn message_ids(sink: &SmtpSink) -> BTreeSet<String> {
    sink.deliveries()
        .into_iter()
        .filter_map(|d| d.message_id)
        .collect()
}

/// What the store says of each email: status, reason, deferral.
fn stored(work: &Work) -> BTreeMap<String, (String, Option<String>, Option<String>)> {
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, status, reason, deferred FROM emails")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_worker_stopped_two_days_sends_what_is_still_useful_once_expires_the_rest_and_keeps_the_cap() {
    let _heavy = common::heavy();
    let started = std::time::Instant::now();
    let now = Timestamp::now();
    let at = |h: i64| now + hours(h);
    let sink = SmtpSink::start(&[]);
    // Live for a week already: the cut-off plays no part here.
    let work = Work::on_wall_clock(&format!(
        "[journeys]\nsend_from = \"{}\"\n{NO_QUIET_HOURS}{}",
        at(-24 * 7),
        smtp(sink.port)
    ));
    // Before the stop (the worker runs two days ago): a, b and e order; b's
    // parcel is delivered just before the worker stops.
    let before = [
        placed("b", at(-60)),
        dispatched("b", at(-55)),
        placed("e", at(-50)),
        placed("a", at(-49)),
        delivered("b", at(-49)),
    ];
    // While it is stopped: c orders 36 hours ago (its confirmation is too
    // old to send by the restart), e's parcel leaves, d orders 5 hours ago.
    let during = [
        placed("c", at(-36)),
        dispatched("e", at(-30)),
        placed("d", at(-5)),
    ];
    let log = work.path("events.jsonl");
    common::write(&log, &(before.join("\n") + "\n"));
    let out = common::run_shifted(&work, "-2d", &["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = message_ids(&sink);
    let all = before.iter().chain(&during).cloned().collect::<Vec<_>>();
    common::write(&log, &(all.join("\n") + "\n"));
    let oracle = checker::expected_until(&work, &log, Some(&at(21).to_string()));
    let ids = &oracle;
    let keys_of = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .map(|id| ids.get(id).cloned().unwrap_or(id.clone()))
            .collect()
    };
    assert_eq!(
        keys_of(&first),
        [
            "a/order_confirmation/a-1",
            "b/order_confirmation/b-1",
            "b/shipping_update/b-s",
            "e/order_confirmation/e-1",
        ]
        .map(String::from)
        .into(),
        "two days ago, only the transactional emails were due"
    );

    // The restart, now: twice, and the second finds nothing to do.
    for _ in 0..2 {
        let out = work.run(&["run", "--input", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let restart: BTreeSet<String> = received_since(&sink, ids, &first).into_iter().collect();
    assert_eq!(
        restart,
        [
            "a/welcome/a-1",
            // b's three marketing emails are overdue together: the latest
            // due goes, the others wait out the cap in real time.
            "b/delivery_followup/b-1",
            "c/welcome/c-1",
            "d/order_confirmation/d-1",
            "e/shipping_update/e-s",
            "e/welcome/e-1",
        ]
        .map(String::from)
        .into(),
    );
    let store = stored(&work);
    let (status, reason, _) = &store["c/order_confirmation/c-1"];
    assert_eq!(status, "suppressed");
    assert_eq!(
        reason.as_deref(),
        Some("expired: 1day 12h late, past its expires_after of 1day"),
        "to the minute: the restart took under a minute"
    );
    for key in ["b/welcome/b-1", "b/thank_you/b-1"] {
        let (status, _, deferred) = &store[key];
        assert_eq!(status, "pending", "{key}");
        assert_eq!(
            deferred.as_deref(),
            Some("frequency cap: one marketing email per 20h"),
            "{key}"
        );
    }

    // 21 hours later: b's cap is over. Of b's two waiting, the later due
    // goes; the welcome would wait 20 hours more, past its 3 days: it
    // expires. d's welcome falls due and goes.
    let seen = message_ids(&sink);
    let out = common::run_shifted(&work, "+21h", &["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let later: BTreeSet<String> = received_since(&sink, ids, &seen).into_iter().collect();
    assert_eq!(
        later,
        ["b/thank_you/b-1", "d/welcome/d-1"]
            .map(String::from)
            .into()
    );
    let store = stored(&work);
    let (status, reason, _) = &store["b/welcome/b-1"];
    assert_eq!(status, "suppressed");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("expired: frequency cap")),
        "{reason:?}"
    );

    // The promise, message by message, against the plan of the same log on
    // the events' own clock: nothing lost but what expired, and what did
    // was as late as it says; nothing doubled, nothing unexpected.
    let checked = checker::check(&oracle, &sink.deliveries(), &[], |key| {
        store.get(key).map(|(s, r, _)| (s.clone(), r.clone()))
    });
    checked.assert_promise_kept();
    assert_eq!(checked.duplicated(), 0);
    let due = planned_due(&work, &log, &at(21).to_string());
    let rules = rules();
    let deadline = |key: &str| due[key] + rules[template_of(key)].0;
    let expired: BTreeSet<&str> = checked.expired.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        expired,
        ["b/welcome/b-1", "c/order_confirmation/c-1"].into()
    );
    // As late as they say: c's confirmation was past its deadline at the
    // restart; b's welcome would have been by the next time the cap let b
    // have one (20 hours after the thank-you).
    assert!(deadline("c/order_confirmation/c-1") < now);
    assert!(deadline("b/welcome/b-1") < now + hours(21 + 20));
    // Nothing went out older than its expiry: the restart ran at `now`
    // (a minute at most), the last run 21 hours later.
    for key in restart.iter() {
        let (expiry, _) = rules[template_of(key)];
        assert!(due[key] + expiry >= now, "{key} went out too late");
    }
    // And no customer had two marketing emails within the cap (20 h): one
    // each at the restart, b's second 21 hours later.
    let marketing = |set: &BTreeSet<String>| -> Vec<String> {
        set.iter()
            .filter(|k| rules[template_of(k)].1 == EmailClass::Marketing)
            .map(|k| k.split('/').next().unwrap().to_owned())
            .collect()
    };
    let customers = marketing(&restart);
    let distinct: BTreeSet<&String> = customers.iter().collect();
    assert_eq!(customers.len(), distinct.len(), "{customers:?}");
    assert_eq!(marketing(&later), ["b", "d"]);
    assert!(checked.lost.is_empty() && checked.unexpected.is_empty());
    checker::Figures {
        scenario: "worker stopped 2 days (expiry, cap in real time)",
        seed: None,
        customers: 5,
        kills: 0,
        faults: 1,
        checked: &checked,
        took: started.elapsed(),
    }
    .record();
}

#[test]
fn an_email_left_in_flight_by_a_crash_is_not_sent_once_too_old() {
    let _heavy = common::heavy();
    // Three days ago the worker handed a confirmation to a server that
    // never answered, and was killed. Started again now, it finds the
    // email still `sending`: a day past its expiry, it is not sent.
    let now = Timestamp::now();
    let silent_port = common::free_port();
    let silent = common::Silent::start_on(silent_port);
    let work = Work::on_wall_clock(
        &format!(
            "[journeys]\nsend_from = \"{}\"\n{NO_QUIET_HOURS}{}[mailer.smtp.transaction_timeout]\n",
            now - hours(24 * 7),
            smtp(silent_port)
        )
        .replace("[mailer.smtp.transaction_timeout]\n", ""),
    );
    let log = work.path("events.jsonl");
    common::write(&log, &(placed("k", now - hours(72)) + "\n"));
    // libfaketime preloaded into the worker itself: the `faketime` wrapper
    // runs it as a child, which a SIGKILL to the wrapper would not stop.
    let library = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime not found (scripts/test.sh installs Debian's faketime)");
    let child = common::spawn(
        work.command(&["run", "--input", log.to_str().unwrap()])
            .env("LD_PRELOAD", library)
            .env("FAKETIME", "-3d")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    );
    let in_flight = common::wait_until(Duration::from_secs(30), || {
        // The store may not be made yet: no answer is not yet.
        std::panic::catch_unwind(|| stored(&work))
            .ok()
            .and_then(|store| store.get("k/order_confirmation/k-1").cloned())
            .is_some_and(|(s, _, _)| s == "sending")
    });
    assert!(in_flight, "the confirmation was never handed to the server");
    drop(child);
    drop(silent);

    let sink = SmtpSink::start_on(silent_port, &[]);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The welcome, due two days ago, is still worth sending; the
    // confirmation is not.
    let from: lettre::message::Mailbox = Config::embedded().mailer.from.parse().unwrap();
    let confirmation = aftercare::mailer::message_id("k/order_confirmation/k-1", &from);
    assert!(
        !message_ids(&sink).contains(confirmation.trim_matches(['<', '>'])),
        "an expired email went out: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let (status, reason, _) = &stored(&work)["k/order_confirmation/k-1"];
    assert_eq!(status, "suppressed");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.starts_with("expired: 3days")),
        "{reason:?}"
    );
    let summary = stdout(&out);
    assert!(summary.contains("1 expired"), "{summary}");
}

#[test]
fn a_first_deployment_reading_a_week_of_history_sends_only_what_falls_due_after_go_live() {
    let _heavy = common::heavy();
    // The shop's topics hold a week of events; a new consumer group reads
    // them from the start. The history builds the journeys and sends
    // nothing due before the first start; what falls due after it (a
    // review request of a delivery a week ago, due in seconds) goes, and so do
    // the emails of the events that come once the worker runs.
    let now = Timestamp::now();
    let at = |h: i64| now + hours(h);
    let customers = 12;
    let mut history = Vec::new();
    for n in 0..customers {
        let id = format!("h{n}");
        let start = at(-24 * 7 + n as i64);
        history.push(placed(&id, start));
        history.push(dispatched(&id, start + hours(5)));
        history.push(delivered(&id, start + hours(30)));
    }
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["aftercare.dead-letter"], 1);
    tansu.produce(&common::tansu::records(&history.join("\n")));

    let sink = SmtpSink::start(&[]);
    let port = common::free_port();
    let work = Work::on_wall_clock(&kafka_config(
        &tansu,
        "first-deployment",
        &format!(
            "{}{NO_QUIET_HOURS}[http]\nlisten = \"127.0.0.1:{port}\"\n",
            smtp(sink.port)
        ),
    ));
    let mut worker = common::spawn(&mut work.command(&["run"]));
    common::wait_for_port(port, Duration::from_secs(30));

    // More of the history, read after the first start: a parcel delivered
    // a week ago less 30 seconds, whose review request (due a week after)
    // falls due after go-live. Then live events.
    let started = Timestamp::now();
    let f = [
        placed("f", started - hours(24 * 8)),
        delivered("f", started - hours(24 * 7) + SignedDuration::from_secs(30)),
    ];
    tansu.produce(&common::tansu::records(&f.join("\n")));
    let live = [placed("live1", started), placed("live2", started)];
    tansu.produce(&common::tansu::records(&live.join("\n")));
    let from: lettre::message::Mailbox = Config::embedded().mailer.from.parse().unwrap();
    let want: BTreeSet<String> = [
        "f/review_request/f-1",
        "live1/order_confirmation/live1-1",
        "live2/order_confirmation/live2-1",
    ]
    .iter()
    .map(|key| {
        aftercare::mailer::message_id(key, &from)
            .trim_matches(['<', '>'])
            .to_owned()
    })
    .collect();
    let arrived = common::wait_until(Duration::from_secs(60), || message_ids(&sink) == want);
    assert!(
        arrived,
        "received {:?}, want {want:?}; the store: {:?}",
        message_ids(&sink),
        stored(&work)
            .into_iter()
            .filter(|(k, _)| k.starts_with("f/") || k.starts_with("live"))
            .collect::<Vec<_>>()
    );

    // The history's emails are all accounted for, none sent.
    let (_, metrics) = common::http_request(port, "GET", "/metrics");
    common::sigterm(&worker.0);
    common::wait_exit(&mut worker.0, Duration::from_secs(20));
    let store = stored(&work);
    let before: Vec<&String> = store
        .iter()
        .filter(|(_, (s, r, _))| s == "suppressed" && r.as_deref() == Some("before go-live"))
        .map(|(k, _)| k)
        .collect();
    // Per customer: confirmation, shipping update, welcome, thank-you and
    // (for the ones delivered more than two days ago) the follow-up.
    assert!(before.len() >= customers * 4, "{before:?}");
    for n in 0..customers {
        let key = format!("h{n}/order_confirmation/h{n}-1");
        assert_eq!(store[&key].1.as_deref(), Some("before go-live"), "{key}");
    }
    assert!(
        metrics.contains(
            "aftercare_emails_total{template=\"order_confirmation\",status=\"suppressed\",reason=\"before go-live\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("aftercare_send_lag_seconds_count 3"),
        "{metrics}"
    );
    drop(worker);
}
