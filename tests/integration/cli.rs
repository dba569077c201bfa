//! The CLI as the README specifies it: `simulate`'s plan, `check`, `run` on
//! embedded defaults, dead letters, config errors and exit codes.

use mail_parser::MessageParser;

use crate::common::{self, Work, repo, stderr, stdout};

const EXPECTED_PLAN: &str = include_str!("../expected/simulate_examples.jsonl");

#[test]
fn simulate_prints_the_expected_plan_of_the_examples_line_by_line() {
    let work = Work::new("");
    let examples = repo().join("examples/events.jsonl");
    let out = work.run(&["simulate", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = stdout(&out);
    let got: Vec<&str> = got.lines().collect();
    let want: Vec<&str> = EXPECTED_PLAN.lines().collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "plan line {}", i + 1);
    }
    assert_eq!(got.len(), want.len(), "number of plan lines");
    // Every template of the journeys table is sent at least once.
    for template in [
        "order_confirmation",
        "welcome",
        "order_cancelled",
        "shipping_update",
        "shipping_delay",
        "thank_you",
        "delivery_followup",
        "review_request",
        "loyalty_milestone",
        "return_instructions",
        "return_received",
        "refund_issued",
        "win_back",
        "win_back_final",
    ] {
        let sent = format!("\"template\":\"{template}\"");
        assert!(
            want.iter()
                .any(|l| l.contains(&sent) && l.contains("\"status\":\"sent\"")),
            "{template} is never sent in the examples"
        );
    }
}

#[test]
fn simulate_has_no_side_effects() {
    let work = Work::new("");
    let examples = repo().join("examples/events.jsonl");
    let out = work.run(&["simulate", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !work.path("data").exists(),
        "simulate created the data directory"
    );
}

#[test]
fn simulate_until_stops_the_clock() {
    let work = Work::new("");
    let examples = repo().join("examples/events.jsonl");
    let out = work.run(&[
        "simulate",
        examples.to_str().unwrap(),
        "--until",
        "2026-03-03T00:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(!plan.is_empty());
    for line in plan.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let due: jiff::Timestamp = v["due_at"].as_str().unwrap().parse().unwrap();
        let status = v["status"].as_str().unwrap();
        // Anything sent or suppressed was due by the end; a cancellation is
        // decided when the cancelling event (before the end) arrives.
        if status != "cancelled" {
            assert!(due <= "2026-03-03T00:00:00Z".parse().unwrap(), "{line}");
        }
        assert_ne!(
            v["template"], "shipping_update",
            "dispatched after the end: {line}"
        );
    }
}

#[test]
fn simulate_with_invalid_events_prints_the_plan_and_exits_65() {
    let work = Work::new("");
    let log = work.path("events.jsonl");
    let examples = std::fs::read_to_string(repo().join("examples/events.jsonl")).unwrap();
    common::write(&log, &format!("{{\"event_id\": 1\n{examples}"));
    let out = work.run(&["simulate", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert_eq!(stdout(&out), EXPECTED_PLAN);
    assert!(
        stderr(&out).contains("1 invalid events"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_passes_on_the_shipped_templates() {
    let work = Work::new("");
    let out = work.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("15 templates x 3 locales"),
        "{}",
        stdout(&out)
    );
}

/// A copy of the shipped templates with `edit` applied to one file.
fn broken_templates(file: &str, edit: impl FnOnce(String) -> String) -> Work {
    let work = Work::new("");
    let templates = work.path("templates");
    common::copy_dir(&repo().join("templates"), &templates);
    let path = templates.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    let config = format!(
        "data_dir = {:?}\ntemplates_dir = {:?}\n",
        work.path("data"),
        templates
    );
    std::fs::write(work.config(), config).unwrap();
    work
}

#[test]
fn check_names_file_line_and_the_missing_variable() {
    let work = broken_templates("hy/welcome.html.hbs", |t| {
        format!("{{{{!-- line 1 --}}}}\n<p>  {{{{customer.nmae}}}}</p>\n{t}")
    });
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains(
            "templates/hy/welcome.html.hbs:2:6: `customer.nmae` is not in the data of `welcome`: did you mean `customer.name`?"
        ),
        "{err}"
    );
}

#[test]
fn check_names_a_missing_partial() {
    let work = broken_templates("am/order_confirmation.txt.hbs", |t| {
        format!("{{{{> signature}}}}\n{t}")
    });
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("templates/am/order_confirmation.txt.hbs:1:1: missing partial `signature`"),
        "{err}"
    );
}

#[test]
fn check_names_a_template_missing_in_one_locale() {
    let work = broken_templates("en/review_request.txt.hbs", |t| t);
    std::fs::remove_file(work.path("templates/am/review_request.subject.hbs")).unwrap();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        stderr(&out).contains("templates/am/review_request.subject.hbs: missing"),
        "{}",
        stderr(&out)
    );
    // `run` refuses to start on it: a configuration error.
    let out = work.run(&[
        "run",
        "--input",
        repo().join("examples/events.jsonl").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("templates/am/review_request.subject.hbs"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_names_an_unknown_helper() {
    let work = broken_templates("hy/thank_you.txt.hbs", |t| {
        format!("{{{{shout customer.name}}}}\n{t}")
    });
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("templates/hy/thank_you.txt.hbs:1:1: unknown helper `shout`"),
        "{err}"
    );
}

#[test]
fn check_names_a_missing_variant_file() {
    let work = broken_templates("en/review_request.b.html.hbs", |t| t);
    std::fs::remove_file(work.path("templates/hy/review_request.b.html.hbs")).unwrap();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("templates/hy/review_request.b.html.hbs: missing"),
        "{err}"
    );
}

#[test]
fn a_locale_fallback_lets_a_template_be_missing_in_one_locale() {
    let work = broken_templates("en/review_request.txt.hbs", |t| t);
    for file in std::fs::read_dir(work.path("templates/am")).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("review_request.") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65), "no fallback: refused");
    assert!(
        stderr(&out).contains("locale_fallback.am"),
        "{}",
        stderr(&out)
    );

    let config = std::fs::read_to_string(work.config()).unwrap();
    std::fs::write(
        work.config(),
        format!("locale_fallback = {{ am = \"en\" }}\n{config}"),
    )
    .unwrap();
    let out = work.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gallery = work.path("gallery");
    let out = work.run(&["preview", "--out", gallery.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(gallery.join("am/review_request.page.html")).unwrap();
    assert!(page.contains("(am, from en)"), "{page}");
    assert!(page.contains("How are you enjoying your order"), "{page}");
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let cases = [
        ("[mailer]\nfrm = \"x@example.com\"\n", "frm"),
        ("[source]\nbatch_size = 0\n", "source.batch_size"),
        ("default_timezone = \"Mars/Olympus\"\n", "default_timezone"),
        (
            "[[journey]]\ntemplate = \"welcome\"\non = \"order.shipped\"\nclass = \"marketing\"\n",
            "on",
        ),
        (
            "[[journey]]\ntemplate = \"nope\"\non = \"order.placed\"\nclass = \"marketing\"\n",
            "nope",
        ),
        (
            "[[journey]]\ntemplate = \"welcome\"\non = \"order.placed\"\nclass = \"marketing\"\nexpires_after = \"11y\"\n",
            "journey[0].expires_after",
        ),
    ];
    for (toml, key) in cases {
        let work = Work::new(toml);
        for args in [&["check"][..], &["run"][..]] {
            let out = work.run(args);
            assert_eq!(
                out.status.code(),
                Some(if key == "nope" && args[0] == "check" {
                    65
                } else {
                    64
                }),
                "{toml} {args:?}: {}",
                stderr(&out)
            );
            assert!(stderr(&out).contains(key), "{toml}: {}", stderr(&out));
        }
    }
}

#[test]
fn a_go_live_or_clock_that_is_not_one_exits_64_naming_the_key() {
    for (toml, key) in [
        ("[journeys]\nsend_from = \"soon\"\n", "journeys.send_from"),
        (
            "[journeys]\nsend_from = 1970-01-01T00:00:00Z\n",
            "journeys.send_from",
        ),
        (
            "[journeys]\nsend_from = \"2200-01-01T00:00:00Z\"\n",
            "journeys.send_from",
        ),
        ("[journeys]\nclock = \"sundial\"\n", "journeys.clock"),
    ] {
        let work = Work::on_wall_clock(toml);
        for args in [&["check"][..], &["run"][..]] {
            let out = work.run(args);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{toml} {args:?}: {}",
                stderr(&out)
            );
            assert!(stderr(&out).contains(key), "{toml}: {}", stderr(&out));
        }
    }
    let out = Work::new("")
        .command(&["simulate", "x.jsonl", "--lag", "a while"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("--lag"), "{}", stderr(&out));
}

/// The README's quick start, on the shipped defaults: the example log is
/// history, the first start is the go-live, nothing is sent, and the
/// summary and the log say why.
#[test]
fn the_quick_start_sends_nothing_due_before_go_live_and_says_why() {
    let work = Work::on_wall_clock("");
    let examples = repo().join("examples/events.jsonl");
    let out = work
        .command(&["run", "--input", examples.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(summary.contains("Sent no emails"), "{summary}");
    assert!(work.outbox().is_empty());
    assert!(stderr(&out).contains("First start: this shop goes live now"));
    // Every email the plan sends or suppresses is due before go-live; the
    // cancelled ones stay cancelled, for their own reasons.
    let plan: Vec<serde_json::Value> = EXPECTED_PLAN
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let not_cancelled = plan.iter().filter(|v| v["status"] != "cancelled").count();
    assert!(
        summary.contains(&format!("{not_cancelled} due before go-live")),
        "{summary}"
    );
    for e in work.stored() {
        match e.status.as_str() {
            "suppressed" => assert_eq!(e.reason.as_deref(), Some("before go-live"), "{}", e.key),
            "cancelled" | "pending" => {}
            other => panic!("{} is {other}", e.key),
        }
    }
    // The journeys were built all the same: every customer's orders are
    // there, and a second run reads nothing new.
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    let orders: usize = conn
        .prepare("SELECT state FROM journeys")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|state| {
            let state: serde_json::Value = serde_json::from_str(&state.unwrap()).unwrap();
            state["orders"].as_object().map_or(0, |o| o.len())
        })
        .sum();
    let placed = std::fs::read_to_string(&examples)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"type\":\"order.placed\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["order"]["id"].as_str().unwrap().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(orders, placed);
    let again = work.run(&["run", "--input", examples.to_str().unwrap()]);
    assert!(
        stdout(&again).contains("Read 0 events"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn simulate_with_a_lag_expires_what_would_be_too_old_and_send_from_cuts_off_before_it() {
    let work = Work::new("");
    let examples = repo().join("examples/events.jsonl");
    let plan = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["simulate", examples.to_str().unwrap()];
        all.extend(args);
        let out = work.run(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let on_time = plan(&[]);
    // Two days late: every confirmation (1 day) and shipping update (2
    // days, and a little more) expires; no review request (14 days) does.
    let late = plan(&["--lag", "2d"]);
    assert_eq!(late.len(), on_time.len());
    let expired = |template: &str| {
        late.iter()
            .filter(|v| v["template"] == template)
            .filter(|v| {
                v["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("expired: 2days late"))
            })
            .count()
    };
    let sent = |lines: &[serde_json::Value], template: &str| {
        lines
            .iter()
            .filter(|v| v["template"] == template && v["status"] == "sent")
            .count()
    };
    assert_eq!(
        expired("order_confirmation"),
        sent(&on_time, "order_confirmation")
    );
    assert!(expired("order_confirmation") > 0);
    assert_eq!(
        sent(&late, "review_request"),
        sent(&on_time, "review_request")
    );
    // Going live on 1 May: what is due before is suppressed, the rest as
    // planned.
    let cut = plan(&["--send-from", "2026-05-01"]);
    let may: jiff::Timestamp = "2026-05-01T00:00:00Z".parse().unwrap();
    for (a, b) in on_time.iter().zip(&cut) {
        let due: jiff::Timestamp = a["due_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            (&a["template"], &a["customer_id"], &a["order_id"]),
            (&b["template"], &b["customer_id"], &b["order_id"])
        );
        if due < may && a["status"] != "cancelled" {
            assert_eq!(b["reason"], "before go-live", "{a}\n{b}");
        } else if due >= may {
            assert_ne!(b["reason"], "before go-live", "{a}\n{b}");
        }
    }
    assert!(cut.iter().any(|v| v["reason"] == "before go-live"));
    assert!(cut.iter().any(|v| v["status"] == "sent"));
}

#[test]
fn environment_overrides_are_validated_too() {
    let work = Work::new("");
    let out = work
        .command(&["check"])
        .env("AFTERCARE_SENDER__BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("sender.batch_size"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_maximum_event_size_out_of_bounds_exits_64_naming_the_key() {
    for (bad, env) in [("512", false), ("1000000000", true)] {
        let work = Work::new(if env {
            ""
        } else {
            "[source]\nmax_event_bytes = 512\n"
        });
        let mut command = work.command(&["check"]);
        if env {
            command.env("AFTERCARE_SOURCE__MAX_EVENT_BYTES", bad);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}");
        assert!(
            stderr(&out).contains("source.max_event_bytes"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_usage_exits_64() {
    let work = Work::new("");
    assert_eq!(work.run(&["simulate"]).status.code(), Some(64));
    assert_eq!(work.run(&["frobnicate"]).status.code(), Some(64));
    assert_eq!(
        work.run(&["simulate", "no-such-file.jsonl"]).status.code(),
        Some(64)
    );
    assert_eq!(work.run(&["--help"]).status.code(), Some(0));
}

#[test]
fn run_sends_the_plan_as_eml_files_and_a_second_run_sends_nothing_new() {
    let work = Work::new("");
    let examples = repo().join("examples/events.jsonl");
    let out = work.run(&["run", "--input", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let now = jiff::Timestamp::now();
    let due_sent = EXPECTED_PLAN
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "sent")
        .filter(|v| {
            v["due_at"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
                <= now
        })
        .count();
    let files = work.outbox();
    assert_eq!(files.len(), due_sent);
    assert!(
        stdout(&out).contains(&format!("Sent {due_sent} emails")),
        "{}",
        stdout(&out)
    );

    let again = work.run(&["run", "--input", examples.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(work.outbox(), files);
    assert!(
        stdout(&again).contains("Read 0 events"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn each_customer_gets_the_review_request_variant_that_simulate_plans() {
    let work = Work::new("");
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(40));
    let plan = work.run(&["simulate", log.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let planned: std::collections::BTreeMap<String, String> = stdout(&plan)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["template"] == "review_request" && v["status"] == "sent")
        .map(|v| {
            (
                format!(
                    "{}/{}",
                    v["customer_id"].as_str().unwrap(),
                    v["order_id"].as_str().unwrap()
                ),
                v["variant"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT customer_id || '/' || order_id, variant, key FROM emails
             WHERE template = 'review_request' AND status = 'sent'",
        )
        .unwrap();
    let sent: Vec<(String, Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sent.len(), planned.len());
    let mut variants = std::collections::BTreeSet::new();
    for (order, variant, key) in &sent {
        let variant = variant.as_deref().unwrap();
        assert_eq!(variant, planned[order], "{key}");
        // The email sent is the variant's own: b asks for stars.
        let raw = std::fs::read(
            work.path("data/outbox")
                .join(aftercare::mailer::EmlMailer::file_name(key)),
        )
        .unwrap();
        let message = MessageParser::default().parse(&raw).unwrap();
        let html = message.body_html(0).unwrap();
        assert_eq!(html.contains("rating=5"), variant == "b", "{key}");
        variants.insert(variant.to_owned());
    }
    assert_eq!(variants.len(), 2, "both variants were sent: {variants:?}");
}

#[test]
fn a_holdout_group_is_planned_checked_stored_and_never_sent() {
    let work = Work::new(
        "[[journey]]\ntemplate = \"review_request\"\non = \"shipment.delivered\"\n\
         class = \"marketing\"\ndelay = \"7d\"\nvariants = { a = 1, b = 1, holdout = 1 }\n",
    );
    // The holdout has no files, and needs none.
    let out = work.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(40));
    let plan = work.run(&["simulate", log.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let planned: Vec<serde_json::Value> = stdout(&plan)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["template"] == "review_request")
        .collect();
    let held_out = planned.iter().filter(|v| v["status"] == "held_out").count();
    assert!(held_out > 0, "a third are held out: {planned:?}");
    // Held out only after every check a sent one passes: without consent,
    // a holdout customer's email is suppressed like anyone's.
    assert!(
        planned
            .iter()
            .all(|v| v["status"] != "held_out" || v["variant"] == "holdout"),
        "{planned:?}"
    );
    assert!(
        planned
            .iter()
            .filter(|v| v["variant"] == "holdout")
            .all(|v| v["status"] == "held_out" || v["reason"] == "no marketing consent"),
        "{planned:?}"
    );
    assert!(
        planned
            .iter()
            .any(|v| v["variant"] == "holdout" && v["status"] == "suppressed"),
        "the log has holdout customers without consent: {planned:?}"
    );

    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    let stored: Vec<(String, String, Option<String>)> = conn
        .prepare("SELECT key, status, variant FROM emails WHERE template = 'review_request'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let stored_held_out: Vec<&String> = stored
        .iter()
        .filter(|(_, status, _)| status == "held_out")
        .map(|(key, _, _)| key)
        .collect();
    assert_eq!(stored_held_out.len(), held_out, "as planned: {stored:?}");
    for (key, status, variant) in &stored {
        let file = work
            .path("data/outbox")
            .join(aftercare::mailer::EmlMailer::file_name(key));
        assert_eq!(
            file.exists(),
            status == "sent",
            "{key} {status} {variant:?}"
        );
    }
    assert!(
        stdout(&out).contains(&format!("{held_out} held out")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn run_reads_standard_input_and_dedups_a_replay() {
    let work = Work::new("");
    let examples = std::fs::read(repo().join("examples/events.jsonl")).unwrap();
    for _ in 0..2 {
        let mut child = work
            .command(&["run"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&examples).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let statuses = work.emails();
    let sent = statuses.iter().filter(|(_, s)| s == "sent").count();
    assert_eq!(sent, work.outbox().len());
    assert!(sent > 50);
}

#[test]
fn invalid_events_go_to_the_dead_letter_file_and_neighbours_are_processed() {
    let work = Work::new("");
    let good = |n: u32, order: &str| {
        format!(
            r#"{{"event_id":"e-{n}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{n}","email":"c{n}@example.com"}},"order":{{"id":"{order}","total":"1.00","currency":"EUR","items":[]}}}}"#
        )
    };
    let lines = [
        good(1, "o-1"),
        "{not json".to_owned(),
        r#"{"event_id":"e-x","type":"order.exploded","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-9"}}"#.to_owned(),
        r#"{"event_id":"e-y","type":"order.placed","occurred_at":"yesterday","customer":{"id":"c-9"}}"#.to_owned(),
        r#"{"event_id":"e-z","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-9"},"order":{"id":"o-9","currency":"EUR","total":"1.00"}}"#.to_owned(),
        r#"{"event_id":"e-w","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-8","email":"c8@example.com"},"order":{"id":"o-8","total":true,"currency":"EUR"}}"#.to_owned(),
        good(2, "o-2"),
    ];
    let log = work.path("events.jsonl");
    common::write(&log, &(lines.join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dead = std::fs::read_to_string(work.path("data/dead-letter.jsonl")).unwrap();
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| {
            (
                d["coordinates"]["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert_eq!(reasons[0].0, 2);
    assert!(reasons[0].1.starts_with("not valid JSON"));
    assert_eq!(reasons[1], (3, "unknown event type `order.exploded`"));
    assert!(
        reasons[2].1.starts_with("field `occurred_at`"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[3],
        (
            5,
            "missing required field `customer.email` on the first order of customer `c-9`"
        )
    );
    assert!(
        reasons[4].1.starts_with("field `order.total`"),
        "{reasons:?}"
    );
    assert_eq!(dead[0]["raw"], "{not json");
    let third_line_starts_at = lines[0].len() + 1 + lines[1].len() + 1;
    assert_eq!(
        dead[1]["coordinates"]["offset"].as_u64().unwrap(),
        third_line_starts_at as u64
    );
    // Both neighbours got their confirmation.
    let confirmations: Vec<String> = work
        .emails()
        .into_iter()
        .filter(|(k, s)| k.contains("order_confirmation") && s == "sent")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        confirmations,
        ["c-1/order_confirmation/o-1", "c-2/order_confirmation/o-2"]
    );
    assert!(stdout(&out).contains("5 invalid"), "{}", stdout(&out));
}

/// A line of megabytes, from a file and from standard input: never held
/// whole, dead-lettered with its size, line and first bytes, and the events
/// behind it applied.
#[test]
fn an_oversized_line_is_dead_lettered_in_part_and_the_events_behind_it_are_applied() {
    let good = |n: u32| {
        format!(
            r#"{{"event_id":"e-{n}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{n}","email":"c{n}@example.com"}},"order":{{"id":"o-{n}","total":"1.00","currency":"EUR","items":[]}}}}"#
        )
    };
    // A valid event but for its size: an item name of 3 MB.
    let big = format!(
        r#"{{"event_id":"e-big","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-big","email":"big@example.com"}},"order":{{"id":"o-big","total":"1.00","currency":"EUR","items":[{{"sku":"S","name":"{}","quantity":1,"unit_price":"1.00"}}]}}}}"#,
        "n".repeat(3 << 20)
    );
    let lines = [good(1), big.clone(), good(2)];
    let text = lines.join("\n") + "\n";
    for input in ["file", "stdin"] {
        let work = Work::new("");
        let log = work.path("events.jsonl");
        common::write(&log, &text);
        let out = if input == "file" {
            work.run(&["run", "--input", log.to_str().unwrap()])
        } else {
            let mut child = work
                .command(&["run", "--input", "-"])
                .stdin(std::process::Stdio::from(
                    std::fs::File::open(&log).unwrap(),
                ))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{input}: still running"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            child.wait_with_output().unwrap()
        };
        assert!(out.status.success(), "{input}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("1 invalid"),
            "{input}: {}",
            stdout(&out)
        );
        assert!(
            out.stderr.len() < 4096,
            "{input}: the log quotes the event: {} bytes",
            out.stderr.len()
        );

        let dead_path = work.path("data/dead-letter.jsonl");
        let dead = std::fs::read_to_string(&dead_path).unwrap();
        let dead: Vec<serde_json::Value> = dead
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(dead.len(), 1, "{input}");
        let record = &dead[0];
        assert_eq!(
            record["reason"],
            format!(
                "event of {} bytes is over source.max_event_bytes (1048576)",
                big.len()
            ),
            "{input}"
        );
        assert_eq!(record["event_bytes"], big.len() as u64, "{input}");
        assert_eq!(record["truncated"], true, "{input}");
        assert_eq!(record["coordinates"]["line"], 2, "{input}");
        assert_eq!(
            record["coordinates"]["offset"],
            lines[0].len() as u64 + 1,
            "{input}"
        );
        let raw = record["raw"].as_str().unwrap();
        assert!(
            !raw.is_empty() && raw.len() <= 1024,
            "{input}: {}",
            raw.len()
        );
        assert!(big.starts_with(raw), "{input}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dead_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{input}: mode {mode:o}");

        // The events on both sides were applied; the big one was not.
        let sent: Vec<String> = work
            .emails()
            .into_iter()
            .filter(|(_, s)| s == "sent")
            .map(|(k, _)| k)
            .collect();
        assert!(
            sent.contains(&"c-1/order_confirmation/o-1".to_owned()),
            "{input}: {sent:?}"
        );
        assert!(
            sent.contains(&"c-2/order_confirmation/o-2".to_owned()),
            "{input}: {sent:?}"
        );
        assert!(
            !sent.iter().any(|k| k.starts_with("c-big/")),
            "{input}: {sent:?}"
        );
        let outbox: String = work
            .outbox()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(outbox.contains("c1@example.com"), "{input}");
        assert!(outbox.contains("c2@example.com"), "{input}");
        assert!(!outbox.contains("big@example.com"), "{input}");
    }
}

#[test]
fn check_refuses_a_subject_longer_than_the_limit() {
    let work = Work::new("[check]\nmax_subject_chars = 12\n");
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("templates/en/order_confirmation.subject.hbs: subject is"),
        "{err}"
    );
    assert!(err.contains("check.max_subject_chars (12)"), "{err}");
}

#[test]
fn check_names_a_missing_preheader() {
    let work = broken_templates("en/welcome.txt.hbs", |t| t);
    std::fs::remove_file(work.path("templates/hy/shipping_delay.preheader.hbs")).unwrap();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains(
            "templates/hy/shipping_delay.preheader.hbs: missing: template `shipping_delay` has no preheader part in locale `hy`"
        ),
        "{err}"
    );
}

#[test]
fn check_refuses_a_preheader_too_long_or_empty() {
    let work = broken_templates("am/win_back.preheader.hbs", |_| {
        // Blank: nothing once whitespace is folded.
        " \n  \n".to_owned()
    });
    let shipped = std::fs::read_to_string(work.config()).unwrap();
    std::fs::write(
        work.config(),
        format!("{shipped}[check]\nmax_preheader_chars = 60\n"),
    )
    .unwrap();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains("templates/am/win_back.preheader.hbs: preheader is empty"),
        "{err}"
    );
    // The English preheader of the confirmation, with its sample, is longer.
    assert!(
        err.contains("templates/en/order_confirmation.preheader.hbs: preheader is")
            && err.contains("more than check.max_preheader_chars (60)"),
        "{err}"
    );
}

#[test]
fn check_walks_the_preheader_like_the_subject() {
    let work = broken_templates("en/shipping_update.preheader.hbs", |t| {
        format!("{{{{shipment.carier}}}} {t}")
    });
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains(
            "templates/en/shipping_update.preheader.hbs:1:1: `shipment.carier` is not in the data of `shipping_update`: did you mean `shipment.carrier`?"
        ),
        "{err}"
    );
}

#[test]
fn check_refuses_customer_data_in_triple_braces() {
    let work = broken_templates("en/welcome.html.hbs", |t| {
        format!("{t}\n<p>Hello {{{{{{customer.name}}}}}}</p>\n")
    });
    let line = std::fs::read_to_string(work.path("templates/en/welcome.html.hbs"))
        .unwrap()
        .lines()
        .count();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "templates/en/welcome.html.hbs:{line}:10: customer data in triple braces"
        )),
        "{err}"
    );
}

#[test]
fn preview_writes_a_gallery_of_every_template_and_locale() {
    let work = Work::new("");
    let out_dir = work.path("gallery");
    let out = work.run(&["preview", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    let links: Vec<&str> = index
        .split("href=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    // 14 templates, review_request in two A/B variants, in three locales,
    // a page for each sample of each: as many as the sample files hold.
    let samples: usize = ["en", "hy", "am"]
        .iter()
        .flat_map(|l| std::fs::read_dir(repo().join("templates/samples").join(l)).unwrap())
        .map(|f| {
            let path = f.unwrap().path();
            let named: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            // review_request's samples serve its variant b too.
            let variants = if path.ends_with("review_request.json") {
                2
            } else {
                1
            };
            named.len() * variants
        })
        .sum();
    assert!(samples > 15 * 3, "{samples}");
    assert_eq!(links.len(), samples, "{index}");
    // Each page links the other samples of its template and locale.
    let page = std::fs::read_to_string(out_dir.join("en/shipping_delay.page.html")).unwrap();
    assert!(
        page.contains(
            "<a href=\"shipping_delay--delay-without-a-date.page.html\">delay without a date</a>"
        ),
        "{page}"
    );
    for link in links {
        let page =
            std::fs::read_to_string(out_dir.join(link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert!(page.contains("class=\"subject\">"), "{link}");
        let iframe = page.split("<iframe src=\"").nth(1).unwrap();
        let src = &iframe[..iframe.find('"').unwrap()];
        let html = std::fs::read_to_string(out_dir.join(link).parent().unwrap().join(src)).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{link}");
        assert!(page.contains("<pre class=\"text\">"), "{link}");
    }
    // The text part is shown as text: its ampersands escaped in the page.
    let page = std::fs::read_to_string(out_dir.join("hy/order_confirmation.page.html")).unwrap();
    assert!(page.contains("Tea &amp; Kettle"));
    assert!(page.contains("Շնորհակալություն"), "Armenian intact");
}

#[test]
fn a_delivery_date_and_return_items_without_names_send_their_emails() {
    // Both were dead-lettered whole: the shipping email never went, nor
    // the return instructions. A malformed optional field is dropped and
    // logged, the event goes on.
    let work = Work::new("");
    let at = |t: &str| format!("2026-01-05T{t}:00Z");
    let lines = [
        serde_json::json!({"event_id": "e-1", "type": "order.placed", "occurred_at": at("10:00"),
            "customer": {"id": 8812, "email": "anna@example.com", "timezone": "America/New_York"},
            "order": {"id": 5_550_000_000_000_000_001_u64, "total": "19.90", "currency": "USD",
                      "items": [{"sku": "TEA-01", "name": "Green tea", "quantity": 2, "unit_price": "9.95"}]}}),
        serde_json::json!({"event_id": "e-2", "type": "shipment.dispatched", "occurred_at": at("11:00"),
            "customer": {"id": "8812"}, "order": {"id": "5550000000000000001"},
            "shipment": {"id": "s-1", "carrier": "UPS", "estimated_delivery": "2026-01-08",
                         "tracking_url": "not\u{7}a url"}}),
        serde_json::json!({"event_id": "e-3", "type": "return.requested", "occurred_at": at("12:00"),
            "customer": {"id": "8812"}, "order": {"id": "5550000000000000001"},
            "return": {"id": "r-1", "reason": "too big", "items": [{"sku": "TEA-01", "quantity": 1}]}}),
    ];
    let log = work.path("events.jsonl");
    let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
    common::write(&log, &(text.join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("0 invalid"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Dropped a malformed optional field")
            && stderr(&out).contains("shipment.tracking_url"),
        "{}",
        stderr(&out)
    );
    let sent: Vec<String> = work
        .stored()
        .into_iter()
        .filter(|e| e.status == "sent")
        .map(|e| e.template)
        .collect();
    for template in [
        "order_confirmation",
        "shipping_update",
        "return_instructions",
    ] {
        assert!(sent.iter().any(|t| t == template), "{template}: {sent:?}");
    }
    let text_of = |template: &str| {
        let path = work
            .outbox()
            .into_iter()
            .find(|p| p.to_string_lossy().contains(template))
            .unwrap();
        let raw = std::fs::read(path).unwrap();
        MessageParser::default()
            .parse(&raw)
            .unwrap()
            .body_text(0)
            .unwrap()
            .into_owned()
    };
    // The day as given, in New York too (not the evening before).
    let update = text_of("shipping_update");
    assert!(update.contains("8 January 2026"), "{update}");
    // The item by its SKU, for want of a name.
    let instructions = text_of("return_instructions");
    assert!(instructions.contains("1 x TEA-01"), "{instructions}");
}

/// Follow-up events that name their order and no customer (real feeds of
/// shipments, returns and refunds often do), through the real worker on
/// the file source, over two runs sharing the store.
#[test]
fn events_naming_only_their_order_reach_its_customer_or_the_dead_letters() {
    let work = Work::new("");
    let now = jiff::Timestamp::now();
    let ago = |hours: i64| (now - jiff::SignedDuration::from_hours(hours)).to_string();
    let placed = |c: u32, at: &str| {
        format!(
            r#"{{"event_id":"placed-{c}","type":"order.placed","occurred_at":"{at}","customer":{{"id":"c-{c}","email":"c{c}@example.com"}},"order":{{"id":"o-{c}","total":"1.00","currency":"EUR","items":[]}}}}"#
        )
    };
    let dispatched = |c: u32, at: &str| {
        format!(
            r#"{{"event_id":"dispatched-{c}","type":"shipment.dispatched","occurred_at":"{at}","order":{{"id":"o-{c}"}},"shipment":{{"id":"s-{c}","carrier":"DHL","tracking_number":"TRK-{c:04}"}}}}"#
        )
    };
    // c-1's dispatch after its order; c-2's before its order, which comes
    // in the next run, within the wait.
    let first = [
        placed(1, &ago(5)),
        dispatched(1, &ago(4)),
        dispatched(2, &ago(2)),
    ];
    let log = work.path("first.jsonl");
    common::write(&log, &(first.join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 parked, 0 applied when it came, 0 given up"),
        "{}",
        stdout(&out)
    );
    let sent = |work: &Work| -> Vec<String> {
        work.emails()
            .into_iter()
            .filter(|(k, s)| k.contains("shipping_update") && s == "sent")
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(sent(&work), ["c-1/shipping_update/s-1"]);

    // c-3's dispatch names an order that never comes: three days old, it
    // has waited its 24 hours by the end of the run.
    let second = [placed(2, &ago(3)), dispatched(3, &ago(72))];
    let log = work.path("second.jsonl");
    common::write(&log, &(second.join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 parked, 1 applied when it came, 1 given up"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        sent(&work),
        ["c-1/shipping_update/s-1", "c-2/shipping_update/s-2"]
    );
    let shipping = work
        .outbox()
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .filter_map(|raw| {
            // The tracking number in the decoded text part: the raw bytes
            // may hold any short string in a boundary or an id.
            let message = MessageParser::default().parse(&raw)?;
            let text = message.body_text(0)?.into_owned();
            let to = message.to()?.first()?.address()?.to_owned();
            text.contains("TRK-0002").then_some(to)
        })
        .collect::<Vec<_>>();
    assert_eq!(shipping, ["c2@example.com"]);

    let dead = std::fs::read_to_string(work.path("data/dead-letter.jsonl")).unwrap();
    let dead: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0]["reason"],
        "order o-3 not seen within 24h; the event names no customer"
    );
    assert_eq!(dead[0]["raw"], second[1]);
    assert_eq!(dead[0]["coordinates"]["line"], 2);
    assert_eq!(dead[0]["coordinates"]["offset"], second[0].len() as u64 + 1);
    assert_eq!(dead[0]["coordinates"]["path"], log.to_str().unwrap());
}

/// The shipped `config/aftercare.toml`, where `aftercare` runs, is the
/// defaults (editing it takes effect without `--config`); a file's
/// `[[journey]]` rules replace the rules of their template and keep the
/// others; `check` warns about templates no rule sends.
#[test]
fn the_shipped_file_on_disk_is_read_and_journey_rules_merge_by_template() {
    let work = Work::new("");
    let shipped = std::fs::read_to_string(common::repo().join("config/aftercare.toml")).unwrap();
    let edited = shipped.replace("max_subject_chars = 78", "max_subject_chars = 5");
    assert_ne!(edited, shipped);
    std::fs::create_dir_all(work.path("config")).unwrap();
    common::write(&work.path("config/aftercare.toml"), &edited);
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(65), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("more than check.max_subject_chars (5)"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(work.path("config/aftercare.toml")).unwrap();

    // One rule changed: the others stay, so every template is still sent.
    let changed = Work::new(
        "[[journey]]\ntemplate = \"welcome\"\non = \"order.placed\"\nonly = \"first_order\"\nclass = \"marketing\"\ndelay = \"3d\"\n",
    );
    let out = changed.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok: 15 templates"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("warning"), "{}", stdout(&out));

    // One rule disabled: its template is sent by none, and check says so.
    let disabled = Work::new(
        "[[journey]]\ntemplate = \"win_back_final\"\non = \"inactivity\"\nclass = \"marketing\"\nenabled = false\n",
    );
    let out = disabled.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("ok: 14 templates"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("warning: template `win_back_final`"),
        "{}",
        stdout(&out)
    );
}

/// The locales are configuration: a locale folder that disappears fails
/// `check` (its customers would silently get another language), and a
/// folder not listed is not used.
#[test]
fn a_configured_locale_without_its_folder_fails_check() {
    let work = Work::new("");
    let templates = work.path("templates");
    common::copy_dir(&common::repo().join("templates"), &templates);
    let config = format!("templates_dir = {:?}\n", templates);
    let with = |extra: &str| {
        common::write(&work.path("own.toml"), &format!("{config}{extra}"));
        std::process::Command::new(env!("CARGO_BIN_EXE_aftercare"))
            .current_dir(work.dir.path())
            .args(["--config", work.path("own.toml").to_str().unwrap(), "check"])
            .output()
            .unwrap()
    };
    std::fs::remove_dir_all(templates.join("am")).unwrap();
    let out = with("");
    assert_eq!(out.status.code(), Some(65), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{}: locale `am` is in `locales` but has no template folder",
            templates.join("am").display()
        )),
        "{}",
        stderr(&out)
    );
    // Listed no more: the check passes on the two others.
    let out = with("locales = [\"en\", \"hy\"]\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("x 2 locales"), "{}", stdout(&out));
    // A locale the fallbacks name must be listed.
    let out = with("locales = [\"en\", \"hy\"]\nlocale_fallback = { am = \"en\" }\n");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("config key `locale_fallback.am`: `am` is not one of `locales`"),
        "{}",
        stderr(&out)
    );
}
