//! `aftercare report` on a generated shop whose figures are worked out by
//! hand here: the worker runs the events into its store, the report reads
//! the store. JSON is compared exactly; the HTML page is opened in headless
//! Chromium, and its charts must be there and visible.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::{self, Work, repo, stderr, stdout};

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

fn refunded(event: &str, at: &str, customer: &str, order: &str, refund: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"refund.issued","occurred_at":"{at}","customer":{{"id":"{customer}"}},"order":{{"id":"{order}"}},"refund":{{"id":"{refund}","amount":"40.00","currency":"EUR"}}}}"#
    )
}

/// The period is 2026-01-01 to 2026-04-01, customers are active with an
/// order in the last 180 days; every order is 40 EUR:
/// - 400 customers ordered on 2025-12-10 (active at both ends); 100 of
///   them order again on 2026-03-05, 20 of those once more on 2026-03-20,
///   and 10 once more on 2026-04-15, after the period;
/// - 100 customers ordered only on 2025-09-15: active at the start (108
///   days), not at the end (198 days);
/// - 50 new customers order on 2026-02-01;
/// - 10 new customers order on 2026-01-29; their win-back goes out 60 days
///   later, on 2026-03-30, and 5 of them order on 2026-04-02, after the
///   period but 3 days after the email;
/// - 30 customers ordered on 2025-03-01 (306 days before the start: not
///   active) and again on 2026-03-10: won back.
///
/// So S = 500: K = 400 kept, L = 100 lost; N = 50 + 10 = 60, R = 30,
/// E = 400 + 60 + 30 = 490. CRR = K / S = 400 / 500 = 80 % = (490 - 60 -
/// 30) / 500, churn 20 % (the old (E - N) / S gave 430 / 500 = 86 %).
/// In the period 100 + 50 + 10 + 30 = 190 customers order 170 + 10 + 30 =
/// 210 times: revenue 8,400.00, AOV 40.00, frequency 210/190 = 1.11,
/// repeat purchase rate 20/190 = 10.53 %, CLV = 40 x 210/190 x 1/0.20 =
/// 221.05 (221.0526...).
/// Returns: 3 of the 210 orders, 2 "too small", 1 "damaged": 1.43 %.
/// Holdout: the win-back keeps one customer in ten out (`variants = { a =
/// 9, holdout = 1 }`, drawn by a hash of customer and template): 43 of the
/// 400 of 2025-12-10 and none of the 10 of 2026-01-29 (counted apart with
/// the same hash). So 367 win-backs are sent in the period, 5 followed by
/// an order within 5 days (1.36 %), and 43 held out, none followed by one
/// (0 %): lift +1.36 pp, 95 % interval -6.88 to +3.15 (Newcombe): no
/// difference shown yet.
/// Refunds: the three returned orders are refunded 40 EUR each in March
/// (one of them delivered twice under two event ids: counted once, by its
/// refund id), and one more on 2026-04-03, after the period: refunds
/// 120.00, net revenue 8,400 - 120 = 8,280.00.
///
/// Cohorts: the period's last instant is in March 2026, so the rows are
/// April 2025 to March 2026; --to is the first of April, so no month is
/// cut short (no partial cell). By month of first order: 2025-09 the 100
/// lost (no later order: months 1-6 at 0 %), 2025-12 the 400 (100 back in
/// March, month 3: 25 %; January and February 0 %; April's orders are
/// after --to), 2026-01 the 10 late (months 1-2 at 0 %, their April order
/// is after --to), 2026-02 the 50 new (month 1 at 0 %); the 30 won back
/// first ordered in March 2025, before the first row, and are in none.
/// Rows with customers have 6 + 3 + 2 + 1 = 12 cells with a rate.
///
/// Time between orders, the later order in the period: stay-0..99
/// 2025-12-10 to 2026-03-05 = 21 + 31 + 28 + 5 = 85 days (100 gaps),
/// stay-0..19 2026-03-05 to 2026-03-20 = 15 days (20), back 2025-03-01 to
/// 2026-03-10 = 365 + 9 = 374 days (30): 150 gaps, sorted 20 x 15, 100 x
/// 85, 30 x 374. Quantiles at positions 149 x q (from 0): p25 at 37.25,
/// the median at 74.5, p75 at 111.75, all among the 85s (20 to 119).
/// Buckets: 7-30 20, 60-90 100, 365+ 30. Every gap is a VIP's (stay-0..99
/// and back are VIP); lapsed and new customers closed none.
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
    for i in 0..10 {
        lines.push(placed(
            &id(),
            "2026-01-29T10:00:00Z",
            &format!("late-{i}"),
            &format!("late-{i}-1"),
            "40.00",
        ));
    }
    for i in 0..5 {
        lines.push(placed(
            &id(),
            "2026-04-02T10:00:00Z",
            &format!("late-{i}"),
            &format!("late-{i}-2"),
            "40.00",
        ));
    }
    for i in 0..30 {
        lines.push(placed(
            &id(),
            "2025-03-01T10:00:00Z",
            &format!("back-{i}"),
            &format!("back-{i}-1"),
            "40.00",
        ));
        lines.push(placed(
            &id(),
            "2026-03-10T10:00:00Z",
            &format!("back-{i}"),
            &format!("back-{i}-2"),
            "40.00",
        ));
    }
    for i in 0..10 {
        lines.push(placed(
            &id(),
            "2026-04-15T10:00:00Z",
            &format!("stay-{i}"),
            &format!("stay-{i}-4"),
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
    for (at, customer, order) in [
        ("2026-03-15T10:00:00Z", "stay-1", "stay-1-2"),
        ("2026-03-16T10:00:00Z", "stay-2", "stay-2-2"),
        ("2026-03-28T10:00:00Z", "stay-3", "stay-3-3"),
        ("2026-04-03T10:00:00Z", "stay-4", "stay-4-2"),
    ] {
        lines.push(refunded(&id(), at, customer, order, &format!("f-{order}")));
    }
    lines.push(refunded(
        &id(),
        "2026-03-15T10:00:00Z",
        "stay-1",
        "stay-1-2",
        "f-stay-1-2",
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
         [[journey]]\ntemplate = \"win_back\"\non = \"inactivity\"\nclass = \"marketing\"\ndelay = \"60d\"\n\
         variants = { a = 9, holdout = 1 }\n",
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
    assert_eq!(c["kept"], 400);
    assert_eq!(c["lost"], 100);
    assert_eq!(c["new_customers"], 60);
    assert_eq!(c["won_back"], 30);
    assert_eq!(c["active_at_end"], 490);
    assert_eq!(c["retention_rate"], 80.0);
    assert_eq!(c["churn_rate"], 20.0);
    assert_eq!(c["ordering_customers"], 190);
    assert_eq!(c["orders"], 210);
    assert_eq!(c["repeat_purchase_rate"], 10.53);
    assert_eq!(c["purchase_frequency"], 1.11);
    assert_eq!(
        c["money"]["EUR"],
        json!({"orders": 210, "customers": 190, "revenue": "8400.00", "refunds": "120.00",
               "net_revenue": "8280.00", "average_order_value": "40.00",
               "purchase_frequency": 1.11, "lifetime_value": "221.05"})
    );
    assert_eq!(r["returns"]["orders"], 210);
    assert_eq!(r["returns"]["returned_orders"], 3);
    assert_eq!(r["returns"]["return_rate"], 1.43);
    assert_eq!(
        r["returns"]["reasons"],
        json!([["too small", 2], ["damaged", 1]])
    );

    // Segments as they were at --to. Spend then: 40 for the one-order
    // customers (460 of them: lost, 300 stay, 60 new), 80 for 110 (the
    // stay-20..99 and the 30 won back), 120 for stay-0..19. The top 5 %
    // starts at the 561st of 590: the 80s, so those 130 are VIP. Lapsed
    // (60 days without an order, before VIP no, after it yes): the lost,
    // stay-100..399 and the 10 of 2026-01-29. New: the 50 of 2026-02-01.
    // late-0..4, VIP with their order of 2026-04-02, were lapsed then.
    let vip = &r["segments"]["vip"];
    assert_eq!(
        [
            &vip["active_at_start"],
            &vip["kept"],
            &vip["lost"],
            &vip["new_customers"],
            &vip["won_back"],
            &vip["active_at_end"]
        ],
        [100, 100, 0, 0, 30, 130],
        "{vip}"
    );
    // K / S = 100 %, not (E - N) / S = 130 %.
    assert_eq!(vip["retention_rate"], 100.0);
    let lapsed = &r["segments"]["lapsed"];
    assert_eq!(
        [
            &lapsed["active_at_start"],
            &lapsed["kept"],
            &lapsed["lost"],
            &lapsed["new_customers"],
            &lapsed["active_at_end"]
        ],
        [400, 300, 100, 10, 310],
        "{lapsed}"
    );
    assert_eq!(lapsed["retention_rate"], 75.0);
    assert_eq!(r["segments"]["new"]["new_customers"], 50);
    assert_eq!(
        r["segments"].as_object().unwrap().len(),
        3,
        "{}",
        r["segments"]
    );

    // Win-backs in the period: the 400 of 2025-12-10 on 2026-02-08 (those
    // of 2025-09-15 went out in November, before it; the new customers'
    // fall in April) and the 10 of 2026-01-29 on 2026-03-30, less the 43
    // held out. Those of February got no order within 5 days; 5 of
    // March's did, on 2026-04-02, after the period but within their
    // window.
    assert_eq!(r["attribution_until"], "2026-04-06T00:00:00Z");
    let emails = r["emails"].as_array().unwrap();
    assert!(
        emails.iter().all(|e| e["variant"] != "holdout"),
        "held out is not sent: {emails:?}"
    );
    let win_back = emails.iter().find(|e| e["template"] == "win_back").unwrap();
    assert_eq!(win_back["variant"], "a");
    assert_eq!(win_back["sent"], 367, "{win_back}");
    assert_eq!(win_back["converted"], 5);
    assert_eq!(win_back["attributed_orders"], 5);
    assert_eq!(win_back["revenue"], json!({"EUR": "200.00"}));
    // 5 / 367 = 1.3624 %.
    assert_eq!(win_back["conversion_rate"], 1.36);
    assert_eq!(
        r["holdouts"],
        json!([{"template": "win_back", "sent": 367, "sent_ordered": 5, "sent_rate": 1.36,
                "held_out": 43, "held_out_ordered": 0, "held_out_rate": 0.0,
                "lift": 1.36, "lift_low": -6.88, "lift_high": 3.15}])
    );
    let confirmations = emails
        .iter()
        .find(|e| e["template"] == "order_confirmation")
        .unwrap();
    assert_eq!(confirmations["sent"], 210, "one per order in the period");
    assert_eq!(confirmations["conversion_rate"], Value::Null);

    // Cohorts, worked out in `shop`'s comment.
    let cohorts = r["cohorts"].as_array().unwrap();
    let months: Vec<&str> = cohorts
        .iter()
        .map(|c| c["month"].as_str().unwrap())
        .collect();
    assert_eq!(
        months,
        [
            "2025-04", "2025-05", "2025-06", "2025-07", "2025-08", "2025-09", "2025-10", "2025-11",
            "2025-12", "2026-01", "2026-02", "2026-03"
        ]
    );
    let sizes: Vec<u64> = cohorts
        .iter()
        .map(|c| c["customers"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [0, 0, 0, 0, 0, 100, 0, 0, 400, 10, 50, 0]);
    let cell = |offset: u32, customers: u64, rate: f64| json!({"offset": offset, "customers": customers, "rate": rate, "partial": false});
    assert_eq!(
        cohorts[8]["months"],
        json!([cell(1, 0, 0.0), cell(2, 0, 0.0), cell(3, 100, 25.0)])
    );
    assert_eq!(
        cohorts[5]["months"],
        json!((1..=6).map(|k| cell(k, 0, 0.0)).collect::<Vec<_>>())
    );
    assert_eq!(
        cohorts[9]["months"],
        json!([cell(1, 0, 0.0), cell(2, 0, 0.0)])
    );
    assert_eq!(cohorts[10]["months"], json!([cell(1, 0, 0.0)]));
    // An empty month keeps its row and its cells, without rates.
    assert_eq!(
        cohorts[0]["months"][10],
        json!({"offset": 11, "customers": 0, "rate": null, "partial": false})
    );
    assert_eq!(cohorts[11]["months"], json!([]));

    // Time between orders, worked out in `shop`'s comment.
    let gaps = json!({"count": 150, "median_days": 85.0, "p25_days": 85.0, "p75_days": 85.0,
        "buckets": [["0-7", 0], ["7-30", 20], ["30-60", 0], ["60-90", 100], ["90-180", 0],
                    ["180-365", 0], ["365+", 30]]});
    assert_eq!(r["time_between_orders"], gaps);
    let by_segment = &r["time_between_orders_by_segment"];
    assert_eq!(by_segment["vip"], gaps);
    for segment in ["lapsed", "new"] {
        assert_eq!(by_segment[segment]["count"], 0, "{by_segment}");
        assert_eq!(by_segment[segment]["median_days"], Value::Null);
    }
    assert_eq!(by_segment.as_object().unwrap().len(), 3);

    // CSV: one row per figure.
    let out = report(&work, "csv", None);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    assert!(csv.starts_with("section,group,figure,value\n"), "{csv}");
    for row in [
        "customers,all,won_back,30",
        "customers,all,retention_rate,80",
        "segment,vip,retention_rate,100",
        "money,all EUR,lifetime_value,221.05",
        "money,all EUR,refunds,120.00",
        "money,all EUR,net_revenue,8280.00",
        "email,win_back (a),converted,5",
        "holdout,win_back,held_out,43",
        "holdout,win_back,lift_low,-6.88",
        "return_reason,too small,requests,2",
        "cohort,2025-12,customers,400",
        "cohort,2025-12,month_3,25",
        "cohort,2025-04,month_1,",
        "time_between_orders,all,gaps,150",
        "time_between_orders,all,median_days,85",
        "time_between_orders,vip,days_365+,30",
        "time_between_orders,lapsed,median_days,",
    ] {
        assert!(csv.lines().any(|l| l == row), "{row} in\n{csv}");
    }

    // The table says the same for a person.
    let out = report(&work, "table", None);
    let table = stdout(&out);
    assert!(table.contains("Retention rate K/S = (E-N-R)/S"), "{table}");
    assert!(table.contains("Won back, active at the end (R)"), "{table}");
    assert!(table.contains("80.00 %"), "{table}");
    assert!(table.contains("+1.36 pp (-6.88 to +3.15)"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["2025-12", "400", "0.00", "0.00", "25.00"]),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "all", "150", "85.00", "85.00", "85.00", "0", "20", "0", "100", "0", "0", "30"
                ]),
        "{table}"
    );

    // The HTML page: charts visible in a real browser.
    let html = work.path("report.html");
    let out = report(&work, "html", Some(html.to_str().unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "customers, conversion, returns, time between orders"
    );
    assert!(!page.contains("<script"), "no script, nothing fetched");
    assert!(page.contains("<th>Won back, active at the end (R)</th><td>30</td>"));
    assert!(page.contains("€8,400.00"), "money as the emails write it");
    assert!(page.contains("<td>€120.00</td>"), "refunds");
    assert!(page.contains("<td>€8,280.00</td>"), "net revenue");
    assert!(page.contains("last marketing email"));
    assert!(
        page.contains("<td>+1.36 pp (-6.88 to +3.15)</td>"),
        "holdout"
    );
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
    assert_eq!(seen["charts"], 4, "{seen}");
    assert_eq!(seen["holdoutRows"], 2, "the header and win_back: {seen}");
    // The heat map: a tinted, visible cell for each rate (see `shop`).
    assert_eq!(seen["heat_cells"], 12, "{seen}");
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
