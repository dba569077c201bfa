//! `aftercare report` on a generated shop whose figures are worked out by
//! hand here: the worker runs the events into its store, the report reads
//! the store. JSON is compared exactly; the HTML page is opened in headless
//! Chromium, and its charts must be there and visible.

mod common;

use std::process::Command;

use common::{Work, repo, stderr, stdout};
use serde_json::{Value, json};

fn placed(event: &str, at: &str, customer: &str, order: &str, total: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"{at}","customer":{{"id":"{customer}","email":"{customer}@example.com","timezone":"UTC","marketing_consent":true}},"order":{{"id":"{order}","total":"{total}","currency":"EUR","items":[]}}}}"#
    )
}

fn returned(event: &str, at: &str, customer: &str, order: &str, reason: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"return.requested","occurred_at":"{at}","customer":{{"id":"{customer}"}},"order":{{"id":"{order}"}},"return":{{"id":"r-{order}","reason":"{reason}","items":[]}}}}"#
    )
}

/// The period is 2026-01-01 to 2026-04-01, customers are active with an
/// order in the last 180 days:
/// - 400 customers ordered on 2025-12-10 (active at both ends); 100 of
///   them order again on 2026-03-05, 20 of those once more on 2026-03-20;
/// - 100 customers ordered only on 2025-09-15: active at the start (108
///   days), not at the end (198 days);
/// - 50 new customers order on 2026-02-01.
///
/// So S = 500, N = 50, E = 450: CRR = (450 - 50) / 500 = 80 %, churn 20 %.
/// 150 customers order in the period, 170 orders at 40 EUR: revenue
/// 6,800.00, AOV 40.00, frequency 170/150 = 1.13, repeat purchase rate
/// 20/150 = 13.33 %, CLV = 40 x 170/150 x 1/0.20 = 226.67.
/// Returns: 3 of the 170 orders, 2 "too small", 1 "damaged": 1.76 %.
fn shop() -> String {
    let mut lines = Vec::new();
    let mut n = 0;
    let mut id = || {
        n += 1;
        format!("e-{n}")
    };
    for i in 0..100 {
        lines.push(placed(
            &id(),
            "2025-09-15T10:00:00Z",
            &format!("lost-{i}"),
            &format!("lost-{i}-1"),
            "40.00",
        ));
    }
    for i in 0..400 {
        lines.push(placed(
            &id(),
            "2025-12-10T10:00:00Z",
            &format!("stay-{i}"),
            &format!("stay-{i}-1"),
            "40.00",
        ));
    }
    for i in 0..50 {
        lines.push(placed(
            &id(),
            "2026-02-01T10:00:00Z",
            &format!("new-{i}"),
            &format!("new-{i}-1"),
            "40.00",
        ));
    }
    // A win-back (marketing) goes out on 2026-02-08 10:00 to the customers
    // of 2025-12-10 (60 days later): the 100 who order on 2026-03-05 do so
    // 25 days after it, outside the 5-day attribution window.
    for i in 0..100 {
        lines.push(placed(
            &id(),
            "2026-03-05T10:00:00Z",
            &format!("stay-{i}"),
            &format!("stay-{i}-2"),
            "40.00",
        ));
    }
    for i in 0..20 {
        lines.push(placed(
            &id(),
            "2026-03-20T10:00:00Z",
            &format!("stay-{i}"),
            &format!("stay-{i}-3"),
            "40.00",
        ));
    }
    lines.push(returned(
        &id(),
        "2026-03-08T10:00:00Z",
        "stay-1",
        "stay-1-2",
        "too small",
    ));
    lines.push(returned(
        &id(),
        "2026-03-09T10:00:00Z",
        "stay-2",
        "stay-2-2",
        "too small",
    ));
    lines.push(returned(
        &id(),
        "2026-03-22T10:00:00Z",
        "stay-3",
        "stay-3-3",
        "damaged",
    ));
    lines.sort_by_key(|l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["occurred_at"].as_str().unwrap().to_owned()
    });
    lines.join("\n") + "\n"
}

fn report(work: &Work, format: &str, out: Option<&str>) -> std::process::Output {
    let mut args = vec![
        "report",
        "--from",
        "2026-01-01",
        "--to",
        "2026-04-01",
        "--format",
        format,
    ];
    if let Some(out) = out {
        args.extend(["--out", out]);
    }
    work.run(&args)
}

#[test]
fn the_report_of_a_generated_shop_matches_the_figures_worked_out_by_hand() {
    // Only the journeys the figures need: no welcome, no win-back noise.
    let work = Work::new(
        "default_journeys = false\n[[journey]]\ntemplate = \"order_confirmation\"\non = \"order.placed\"\nclass = \"transactional\"\n\
         [[journey]]\ntemplate = \"win_back\"\non = \"inactivity\"\nclass = \"marketing\"\ndelay = \"60d\"\n",
    );
    let log = work.path("events.jsonl");
    common::write(&log, &shop());
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = report(&work, "json", None);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let c = &r["customers"];
    assert_eq!(c["active_at_start"], 500);
    assert_eq!(c["new_customers"], 50);
    assert_eq!(c["active_at_end"], 450);
    assert_eq!(c["retention_rate"], 80.0);
    assert_eq!(c["churn_rate"], 20.0);
    assert_eq!(c["ordering_customers"], 150);
    assert_eq!(c["orders"], 170);
    assert_eq!(c["repeat_purchase_rate"], 13.33);
    assert_eq!(c["purchase_frequency"], 1.13);
    assert_eq!(
        c["money"]["EUR"],
        json!({"orders": 170, "revenue": "6800.00", "average_order_value": "40.00", "lifetime_value": "226.67"})
    );
    assert_eq!(r["returns"]["orders"], 170);
    assert_eq!(r["returns"]["returned_orders"], 3);
    assert_eq!(r["returns"]["return_rate"], 1.76);
    assert_eq!(
        r["returns"]["reasons"],
        json!([["too small", 2], ["damaged", 1]])
    );

    // Win-backs in the period: the 400 of 2025-12-10 on 2026-02-08 (those
    // of 2025-09-15 went out in November, before it; the new customers'
    // fall in April). None of them got an order within 5 days.
    let emails = r["emails"].as_array().unwrap();
    let win_back = emails.iter().find(|e| e["template"] == "win_back").unwrap();
    assert_eq!(win_back["sent"], 400, "{win_back}");
    assert_eq!(win_back["attributed_orders"], 0);
    assert_eq!(win_back["conversion_rate"], 0.0);
    assert_eq!(win_back["conversion_low"], 0.0);
    // Wilson, 0 of 400: 1.96^2 / (400 + 1.96^2) = 0.95 %.
    assert_eq!(win_back["conversion_high"], 0.95);
    let confirmations = emails
        .iter()
        .find(|e| e["template"] == "order_confirmation")
        .unwrap();
    assert_eq!(confirmations["sent"], 170, "one per order in the period");
    assert_eq!(confirmations["conversion_rate"], Value::Null);

    // The table says the same for a person.
    let out = report(&work, "table", None);
    let table = stdout(&out);
    assert!(table.contains("Retention rate (E-N)/S"), "{table}");
    assert!(table.contains("80.00 %"), "{table}");

    // The HTML page: charts visible in a real browser.
    let html = work.path("report.html");
    let out = report(&work, "html", Some(html.to_str().unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 3, "three charts");
    assert!(!page.contains("<script"), "no script, nothing fetched");
    let browser = repo().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test.sh"
    );
    let shot = repo().join("target/test-artifacts/report.png");
    let out = Command::new("node")
        .arg(browser.join("report.mjs"))
        .arg(&html)
        .arg(&shot)
        .output()
        .expect("node is installed");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(seen["charts"], 3, "{seen}");
    assert!(seen["problems"].as_array().unwrap().is_empty(), "{seen}");
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn report_needs_a_period_that_ends_after_it_starts() {
    let work = Work::new("");
    let out = work.run(&["report", "--from", "2026-04-01", "--to", "2026-01-01"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = work.run(&["report", "--from", "yesterday", "--to", "2026-01-01"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("neither a date"), "{}", stderr(&out));
}
