//! The journey policies as a marketer sees them: `simulate` plans for the
//! frequency cap, quiet hours across a daylight-saving change, skips past
//! a maximum delay, adaptive win-back, segments in rules, and loyalty tiers.
//! Transactional emails are never held back by any of them.

use serde_json::Value;

use crate::common::{self, Work, stderr, stdout};

/// `simulate` of `events` (JSON lines) with `config`, as JSON values.
fn plan(config: &str, events: &[String], until: &str) -> Vec<Value> {
    let work = Work::new(config);
    let log = work.path("events.jsonl");
    common::write(&log, &(events.join("\n") + "\n"));
    let out = work.run(&["simulate", log.to_str().unwrap(), "--until", until]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn line<'a>(plan: &'a [Value], template: &str) -> &'a Value {
    plan.iter()
        .find(|l| l["template"] == template)
        .unwrap_or_else(|| panic!("no {template} in {plan:#?}"))
}

fn customer(id: &str, tz: &str) -> String {
    format!(
        r#"{{"id":"{id}","email":"{id}@example.com","timezone":"{tz}","marketing_consent":true}}"#
    )
}

fn placed(event: &str, at: &str, customer: &str, order: &str, total: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"{at}","customer":{customer},"order":{{"id":"{order}","total":"{total}","currency":"EUR","items":[]}}}}"#
    )
}

fn shipment(event: &str, kind: &str, at: &str, customer: &str, order: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"shipment.{kind}","occurred_at":"{at}","customer":{{"id":"{customer}"}},"order":{{"id":"{order}"}},"shipment":{{"id":"s-{order}"}}}}"#
    )
}

#[test]
fn quiet_hours_across_the_march_clock_change_and_the_cap_after_them() {
    let c = customer("c-berlin", "Europe/Berlin");
    let events = [
        placed("e1", "2026-03-27T21:30:00Z", &c, "o-1", "20.00"),
        // A dispatch at 23:00 in Berlin: transactional, sent at once.
        shipment(
            "e2",
            "dispatched",
            "2026-03-27T22:00:00Z",
            "c-berlin",
            "o-1",
        ),
        shipment("e3", "delivered", "2026-03-28T10:00:00Z", "c-berlin", "o-1"),
    ];
    let plan = plan("", &events, "2026-05-01T00:00:00Z");
    let confirmation = line(&plan, "order_confirmation");
    assert_eq!(confirmation["due_at"], "2026-03-27T21:30:00Z");
    assert!(confirmation.get("deferred").is_none());
    let dispatch = line(&plan, "shipping_update");
    assert_eq!(dispatch["status"], "sent");
    assert!(dispatch.get("deferred").is_none(), "{dispatch}");

    // Due at 22:30 on Saturday in Berlin; the clocks go forward that night,
    // so 08:00 on Sunday is 06:00 UTC (plus this customer's jitter).
    let welcome = line(&plan, "welcome");
    assert_eq!(welcome["status"], "sent");
    assert_eq!(welcome["due_at"], "2026-03-28T21:30:00Z");
    let to = welcome["deferred_to"].as_str().unwrap();
    assert!(to.starts_with("2026-03-29T06:"), "{welcome}");
    assert_eq!(welcome["deferred"], "quiet hours 21:00-08:00 Europe/Berlin");

    // The thank-you (due Sunday 12:00 local) comes under 20 hours after the
    // welcome: held for the cap, which ends at night, so to Monday morning.
    let thanks = line(&plan, "thank_you");
    assert_eq!(thanks["status"], "sent");
    assert!(
        thanks["deferred_to"]
            .as_str()
            .unwrap()
            .starts_with("2026-03-30T06:"),
        "{thanks}"
    );
    assert_eq!(
        thanks["deferred"],
        "frequency cap: one marketing email per 20h, quiet hours 21:00-08:00 Europe/Berlin"
    );
}

#[test]
fn an_email_held_past_its_max_delay_is_skipped_with_the_reason() {
    let c = customer("c-1", "UTC");
    let events = [
        placed("e1", "2026-02-02T10:00:00Z", &c, "o-1", "20.00"),
        shipment("e2", "delivered", "2026-02-03T09:00:00Z", "c-1", "o-1"),
    ];
    // The welcome goes at 03T10:00; the thank-you is due 04T09:00, 23 hours
    // later. With a one-day cap it would wait an hour, past its maximum
    // delay of 30 minutes: skipped.
    let config = r#"
[policy]
frequency_cap = "1d"
[[journey]]
template = "welcome"
on = "order.placed"
only = "first_order"
class = "marketing"
delay = "1d"
[[journey]]
template = "thank_you"
on = "shipment.delivered"
only = "first_delivery"
class = "marketing"
delay = "1d"
max_delay = "30m"
"#;
    let plan = plan(config, &events, "2026-03-01T00:00:00Z");
    assert_eq!(line(&plan, "welcome")["status"], "sent");
    let thanks = line(&plan, "thank_you");
    assert_eq!(thanks["status"], "suppressed", "{thanks}");
    let reason = thanks["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("frequency cap: one marketing email per 1day"),
        "{reason}"
    );
    assert!(reason.ends_with("is past the max delay of 30m"), "{reason}");
}

#[test]
fn adaptive_win_back_for_a_weekly_and_a_yearly_buyer() {
    let weekly = customer("c-weekly", "UTC");
    let yearly = customer("c-yearly", "UTC");
    let events = [
        placed("y1", "2023-06-01T12:00:00Z", &yearly, "oy-1", "90.00"),
        placed("y2", "2024-06-01T12:00:00Z", &yearly, "oy-2", "90.00"),
        placed("y3", "2025-06-01T12:00:00Z", &yearly, "oy-3", "90.00"),
        placed("w1", "2025-06-02T12:00:00Z", &weekly, "ow-1", "9.00"),
        placed("w2", "2025-06-09T12:00:00Z", &weekly, "ow-2", "9.00"),
        placed("w3", "2025-06-16T12:00:00Z", &weekly, "ow-3", "9.00"),
    ];
    let plan = plan("", &events, "2026-01-01T00:00:00Z");
    // The win-back after the third order (earlier ones wait the fixed 60
    // days, and some went out).
    let win_back = |order: &str| {
        plan.iter()
            .find(|l| l["template"] == "win_back" && l["order_id"] == order)
            .unwrap_or_else(|| panic!("no win_back for {order}"))
            .clone()
    };
    // Weekly: twice a week's gap is 14 days, raised to the 21-day floor.
    assert_eq!(win_back("ow-3")["due_at"], "2025-07-07T12:00:00Z");
    assert_eq!(win_back("ow-3")["status"], "sent");
    // Yearly: twice a year is past the 120-day ceiling.
    assert_eq!(win_back("oy-3")["due_at"], "2025-09-29T12:00:00Z");
    assert_eq!(win_back("oy-3")["status"], "sent");
}

#[test]
fn win_backs_re_anchored_after_their_time_go_out_after_the_cancel_under_the_policies() {
    // Two orders a minute apart, without consent; consent given 120 days
    // later (a replay of the first order that carries it); the second order
    // cancelled 140 days on, at 06:54 UTC. The first order's win-backs come
    // back, both their waits run out: they go out after the cancel (when
    // the customer has consented), not at their old times, outside quiet
    // hours, and the cap keeps them apart.
    let refusing =
        r#"{"id":"c-0","email":"c-0@example.com","timezone":"UTC","marketing_consent":false}"#;
    let silent = r#"{"id":"c-0","email":"c-0@example.com","timezone":"UTC"}"#;
    let consenting =
        r#"{"id":"c-0","email":"c-0@example.com","timezone":"UTC","marketing_consent":true}"#;
    let events = [
        placed("e1", "2025-01-06T09:00:00Z", refusing, "o-9", "1.00"),
        placed("e2", "2025-01-06T09:01:00Z", silent, "o-0", "1.00"),
        placed("e3", "2025-05-06T09:01:00Z", consenting, "o-9", "1.00"),
        format!(
            r#"{{"event_id":"e4","type":"order.cancelled","occurred_at":"2025-05-26T06:54:00Z","customer":{silent},"order":{{"id":"o-0"}}}}"#
        ),
    ];
    let plan = plan("", &events, "2025-07-01T00:00:00Z");
    let back = |template: &str| {
        plan.iter()
            .find(|l| l["template"] == template && l["status"] == "sent")
            .unwrap_or_else(|| panic!("no {template} sent in {plan:#?}"))
            .clone()
    };
    let time =
        |l: &Value, field: &str| -> jiff::Timestamp { l[field].as_str().unwrap().parse().unwrap() };

    let first = back("win_back");
    assert_eq!(first["order_id"], "o-9");
    assert_eq!(first["due_at"], "2025-05-26T06:54:00Z", "{first}");
    assert!(
        first["deferred_to"]
            .as_str()
            .unwrap()
            .starts_with("2025-05-26T08:"),
        "{first}"
    );
    assert_eq!(first["deferred"], "quiet hours 21:00-08:00 UTC");

    let last = back("win_back_final");
    assert_eq!(last["due_at"], "2025-05-26T06:54:00Z", "{last}");
    assert!(
        time(&last, "deferred_to").duration_since(time(&first, "deferred_to"))
            >= jiff::SignedDuration::from_hours(20),
        "{first}\n{last}"
    );
    assert!(
        last["deferred"]
            .as_str()
            .unwrap()
            .starts_with("frequency cap: one marketing email per 20h"),
        "{last}"
    );
    // Before the consent, every marketing email was held back.
    for l in &plan {
        if l["class"] == "marketing" && time(l, "due_at") < time(&first, "due_at") {
            assert_ne!(l["status"], "sent", "{l}");
        }
    }
}

#[test]
fn a_rule_for_vip_customers_reaches_them_only() {
    let big = customer("c-big", "UTC");
    let small = customer("c-small", "UTC");
    let config = r#"
[[journey]]
template = "thank_you"
on = "order.placed"
class = "marketing"
delay = "2h"
segments = ["vip"]
"#;
    let events = [
        placed("e1", "2026-02-02T10:00:00Z", &big, "o-1", "640.00"),
        placed("e2", "2026-02-02T11:00:00Z", &small, "o-2", "24.00"),
    ];
    let plan = plan(config, &events, "2026-02-10T00:00:00Z");
    let thanked: Vec<&str> = plan
        .iter()
        .filter(|l| l["template"] == "thank_you")
        .map(|l| l["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(thanked, ["c-big"]);
}

#[test]
fn crossing_a_tier_by_spend_congratulates_on_the_highest_tier() {
    let c = customer("c-1", "UTC");
    let events = [
        placed("e1", "2026-02-02T10:00:00Z", &c, "o-1", "400.00"),
        placed("e2", "2026-02-09T10:00:00Z", &c, "o-2", "700.00"),
        placed("e3", "2026-02-16T10:00:00Z", &c, "o-3", "10.00"),
    ];
    let plan = plan("", &events, "2026-02-20T00:00:00Z");
    let tiers: Vec<&Value> = plan
        .iter()
        .filter(|l| l["template"] == "loyalty_milestone")
        .collect();
    // 1,100 EUR with the second order: gold at once; the third order
    // (bronze by count) adds nothing.
    assert_eq!(tiers.len(), 1, "{tiers:#?}");
    assert_eq!(tiers[0]["order_id"], "o-2");
    assert_eq!(tiers[0]["status"], "sent");
}
