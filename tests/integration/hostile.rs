//! Hostile input through the real binary: what a shop's bug or an attacker
//! sends goes to the dead letters with its reason, and never stops the
//! worker, on the first start or any later one.

use mail_parser::MessageParser;
use serde_json::{Value, json};

use crate::common::{self, Work, stderr, stdout};

fn placed(id: &str, customer: &str, order: &str, total: &str, price: &str, at: &str) -> String {
    json!({
        "event_id": id, "type": "order.placed", "occurred_at": at,
        "customer": {"id": customer, "email": "anna@example.com", "marketing_consent": true},
        "order": {"id": order, "total": total, "currency": "EUR",
                  "items": [{"sku": "TEA-01", "name": "Green tea", "quantity": 2, "unit_price": price}]},
    })
    .to_string()
}

const AT: &str = "2026-01-01T10:00:00Z";

/// The events that passed decoding and then panicked in the journey step,
/// with a valid event behind each.
fn poison_log() -> Vec<String> {
    vec![
        // The line total overflowed: now the price is dropped, the order
        // applied without it.
        placed(
            "p-1",
            "c-1",
            "o-1",
            "1.00",
            "79228162514264337593543950335",
            AT,
        ),
        placed("g-1", "c-1", "o-2", "1.00", "0.50", AT),
        // Two orders whose sum overflows the lifetime spend.
        placed("p-2", "c-2", "o-3", "7.9e28", "0.50", AT),
        placed("p-3", "c-2", "o-4", "7.9e28", "0.50", AT),
        placed("g-2", "c-2", "o-5", "1.00", "0.50", AT),
        // A delay added to this overflows.
        placed("p-4", "c-3", "o-6", "1.00", "0.50", "9999-12-30T00:00:00Z"),
        placed("g-3", "c-3", "o-7", "1.00", "0.50", AT),
    ]
}

fn dead_letters(work: &Work) -> Vec<Value> {
    std::fs::read_to_string(work.path("data/dead-letter.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sent_confirmations(work: &Work) -> Vec<String> {
    work.stored()
        .into_iter()
        .filter(|e| e.template == "order_confirmation" && e.status == "sent")
        .map(|e| e.key)
        .collect()
}

#[test]
fn poison_events_go_to_the_dead_letters_and_the_events_behind_them_are_applied() {
    let work = Work::new("");
    let log = work.path("events.jsonl");
    common::write(&log, &(poison_log().join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 invalid"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Dropped a malformed optional field")
            && stderr(&out).contains("items[].unit_price"),
        "{}",
        stderr(&out)
    );
    let dead = dead_letters(&work);
    let reasons: Vec<(u64, &str)> = dead
        .iter()
        .map(|d| {
            (
                d["coordinates"]["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap(),
            )
        })
        .collect();
    let fields: Vec<(u64, bool)> = [(3, "order.total"), (4, "order.total"), (6, "occurred_at")]
        .iter()
        .map(|(line, field)| {
            (
                *line,
                reasons
                    .iter()
                    .any(|(l, r)| l == line && r.contains(&format!("`{field}`"))),
            )
        })
        .collect();
    assert_eq!(fields, [(3, true), (4, true), (6, true)], "{reasons:?}");
    assert_eq!(
        sent_confirmations(&work),
        [
            "c-1/order_confirmation/o-1",
            "c-1/order_confirmation/o-2",
            "c-2/order_confirmation/o-5",
            "c-3/order_confirmation/o-7",
        ]
    );

    // A restart reads nothing new and fails on nothing: no crash loop.
    let again = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(dead_letters(&work).len(), 3);

    // `simulate` plans the same, and exits 65 for the invalid events
    // instead of panicking.
    let plan = work.run(&["simulate", log.to_str().unwrap()]);
    assert_eq!(plan.status.code(), Some(65), "{}", stderr(&plan));
    let planned = stdout(&plan);
    for order in ["o-1", "o-2", "o-5", "o-7"] {
        assert!(
            planned.contains(&format!(r#""order_id":"{order}""#)),
            "{planned}"
        );
    }
}

#[test]
fn two_customers_whose_ids_would_make_one_key_both_get_their_confirmation() {
    let work = Work::new("");
    let log = work.path("events.jsonl");
    let lines = [
        placed("e-1", "a/order_confirmation/o", "1", "1.00", "0.50", AT),
        placed("e-2", "a", "o/order_confirmation/1", "1.00", "0.50", AT),
    ];
    common::write(&log, &(lines.join("\n") + "\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: std::collections::BTreeSet<String> = work
        .outbox()
        .iter()
        .map(|path| {
            let raw = std::fs::read(path).unwrap();
            let message = MessageParser::default().parse(&raw).unwrap();
            message.message_id().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        sent_confirmations(&work),
        [
            "a%2Forder_confirmation%2Fo/order_confirmation/1",
            "a/order_confirmation/o%2Forder_confirmation%2F1",
        ]
    );
    // Every email written has a Message-ID of its own.
    assert_eq!(ids.len(), work.outbox().len(), "{ids:?}");
    assert!(ids.len() >= 2, "{ids:?}");
}

#[test]
fn control_characters_never_reach_the_logs() {
    let work = Work::new("");
    let log = work.path("events.jsonl");
    let forged = json!({
        "event_id": "e-1\nINFO forged line", "type": "order.placed\u{1b}[2J", "occurred_at": AT,
        "customer": {"id": "c-1\r\nWARN forged", "email": "anna@example.com"},
        "order": {"id": "o-1", "total": "1.00", "currency": "EUR", "items": []},
    });
    let item = json!({
        "event_id": "e-2", "type": "order.placed", "occurred_at": AT,
        "customer": {"id": "c-2", "email": "\"a b\"@example.com"},
        "order": {"id": "o-2", "total": "1.00", "currency": "EUR",
                  "items": [{"sku": "A\u{1b}]0;title\u{7}", "name": "Tea", "unit_price": "1.00"}]},
    });
    common::write(&log, &format!("{forged}\n{item}\n"));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = stderr(&out);
    assert!(!logs.contains('\u{1b}'), "{logs}");
    assert!(!logs.contains("forged line"), "{logs}");
    assert!(
        !logs.lines().any(|l| l.starts_with("WARN forged")),
        "{logs}"
    );
    // Addresses are personal data: only at debug.
    assert!(!logs.contains("a b\"@example.com"), "{logs}");
    assert_eq!(dead_letters(&work).len(), 2);
}

#[test]
fn debug_logs_never_show_a_customer_name_from_the_template_data() {
    // handlebars logs the data it renders at debug.
    let work = Work::new("");
    let log = work.path("events.jsonl");
    let event = json!({
        "event_id": "e-1", "type": "order.placed", "occurred_at": AT,
        "customer": {"id": "c-1", "email": "anna@example.com", "name": "Zabel Yesayan"},
        "order": {"id": "o-1", "total": "1.00", "currency": "EUR", "items": []},
    });
    common::write(&log, &format!("{event}\n"));
    let out = work
        .command(&["run", "--input", log.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!work.outbox().is_empty());
    let logs = stderr(&out);
    assert!(logs.contains("DEBUG"), "not at debug: {logs}");
    assert!(!logs.contains("Zabel"), "{logs}");
}
