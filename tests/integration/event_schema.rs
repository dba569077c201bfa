//! `src/event.schema.json`, the published contract of the native event,
//! kept in step with the decoder (`src/event.rs`): every example event is
//! valid, and each event of a table gets the same verdict from both (an
//! event the schema refuses only for a droppable field is applied by the
//! decoder, with that field left out).

use aftercare::event::Event;
use serde_json::{Value, json};

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../src/event.schema.json"))
        .expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

#[test]
fn every_example_event_is_valid_and_decodes_with_nothing_dropped() {
    let validator = validator();
    let examples = include_str!("../../examples/events.jsonl");
    let mut n = 0;
    for line in examples.lines().filter(|l| !l.trim().is_empty()) {
        let event: Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        let mut dropped = Vec::new();
        let decoded = Event::decode_noting(line.as_bytes(), &mut dropped);
        assert_eq!(
            errors.is_empty(),
            decoded.is_ok(),
            "schema {errors:?}, decoder {decoded:?}: {line}"
        );
        assert!(dropped.is_empty(), "{dropped:?}: {line}");
        n += 1;
    }
    assert!(n > 40, "{n} examples");
}

/// The design's example, changed by `patch`.
fn placed(patch: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "event_id": "evt-000123", "type": "order.placed", "occurred_at": "2026-11-20T12:00:00Z",
        "customer": {"id": "c-1001", "email": "anna@example.com", "name": "Anna", "locale": "hy",
                     "timezone": "Asia/Yerevan", "marketing_consent": true},
        "order": {"id": "o-5001", "total": "59.90", "currency": "EUR",
                  "items": [{"sku": "TEA-01", "name": "Green tea", "quantity": 2, "unit_price": "9.95"}]},
    });
    patch(&mut v);
    v
}

fn shipped(patch: impl FnOnce(&mut Value)) -> Value {
    let mut v = json!({
        "event_id": "evt-2", "type": "shipment.dispatched", "occurred_at": "2026-11-21T08:00:00+04:00",
        "customer": {"id": 1001}, "order": {"id": "o-5001"},
        "shipment": {"id": "s-1", "carrier": "DHL", "tracking_url": "https://t.example/1",
                     "estimated_delivery": "2026-11-25"},
    });
    patch(&mut v);
    v
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Valid,
    /// Applied without a droppable field.
    Dropped,
    Invalid,
}

#[test]
fn the_schema_and_the_decoder_agree() {
    use Verdict::*;
    let cases: Vec<(&str, Value, Verdict)> = vec![
        ("the design's example", placed(|_| {}), Valid),
        (
            "money as a number",
            placed(|v| v["order"]["total"] = json!(59.90)),
            Valid,
        ),
        (
            "an integer id",
            placed(|v| v["order"]["id"] = json!(5_550_000_000_000_000_001_u64)),
            Valid,
        ),
        (
            "an item without a name",
            placed(|v| {
                v["order"]["items"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("name");
            }),
            Valid,
        ),
        (
            "the largest amount",
            placed(|v| v["order"]["total"] = json!("1000000000000")),
            Valid,
        ),
        ("a dispatch with a day", shipped(|_| {}), Valid),
        (
            "a dispatch with a time",
            shipped(|v| v["shipment"]["estimated_delivery"] = json!("2026-11-25T12:00:00Z")),
            Valid,
        ),
        (
            "no event id",
            placed(|v| {
                v.as_object_mut().unwrap().remove("event_id");
            }),
            Invalid,
        ),
        (
            "an unknown type",
            placed(|v| v["type"] = json!("order.exploded")),
            Invalid,
        ),
        (
            "a time without a zone",
            placed(|v| v["occurred_at"] = json!("2026-11-20T12:00:00")),
            Invalid,
        ),
        (
            "the year 9999",
            placed(|v| v["occurred_at"] = json!("9999-12-30T00:00:00Z")),
            Invalid,
        ),
        (
            "an order without a total",
            placed(|v| {
                v["order"].as_object_mut().unwrap().remove("total");
            }),
            Invalid,
        ),
        (
            "a negative total",
            placed(|v| v["order"]["total"] = json!("-1.00")),
            Invalid,
        ),
        (
            "an amount past the bound",
            placed(|v| v["order"]["total"] = json!("1000000000000.01")),
            Invalid,
        ),
        (
            "nine decimal places",
            placed(|v| v["order"]["total"] = json!("1.000000001")),
            Invalid,
        ),
        (
            "a currency in words",
            placed(|v| v["order"]["currency"] = json!("euro")),
            Invalid,
        ),
        (
            "a CR LF in an id",
            placed(|v| v["customer"]["id"] = json!("c\r\n1")),
            Invalid,
        ),
        (
            "an id of 257 bytes",
            placed(|v| v["order"]["id"] = json!("o".repeat(257))),
            Invalid,
        ),
        (
            "a float id",
            placed(|v| v["order"]["id"] = json!(1.5)),
            Invalid,
        ),
        (
            "a quantity of 0",
            placed(|v| v["order"]["items"][0]["quantity"] = json!(0)),
            Invalid,
        ),
        (
            "an item with neither sku nor name",
            placed(|v| {
                let item = v["order"]["items"][0].as_object_mut().unwrap();
                item.remove("sku");
                item.remove("name");
            }),
            Invalid,
        ),
        (
            "an order item without a price",
            placed(|v| {
                v["order"]["items"][0]
                    .as_object_mut()
                    .unwrap()
                    .remove("unit_price");
            }),
            Valid,
        ),
        (
            "an order item with a price in words",
            placed(|v| v["order"]["items"][0]["unit_price"] = json!("nine ninety-five")),
            Dropped,
        ),
        (
            "a quoted local part",
            placed(|v| v["customer"]["email"] = json!("\"a b\"@example.com")),
            Invalid,
        ),
        (
            "an address literal",
            placed(|v| v["customer"]["email"] = json!("a@[127.0.0.1]")),
            Invalid,
        ),
        (
            "a refund of zero",
            json!({
                "event_id": "e", "type": "refund.issued", "occurred_at": "2026-11-20T12:00:00Z",
                "customer": {"id": "c"}, "order": {"id": "o"},
                "refund": {"id": "f", "amount": "0.00", "currency": "EUR"},
            }),
            Invalid,
        ),
        (
            "a dispatch naming its order only",
            shipped(|v| {
                v.as_object_mut().unwrap().remove("customer");
            }),
            Valid,
        ),
        (
            "a refund with a customer and no id",
            json!({
                "event_id": "e", "type": "refund.issued", "occurred_at": "2026-11-20T12:00:00Z",
                "customer": {"locale": "hy"}, "order": {"id": "o"},
                "refund": {"id": "f", "amount": "1.00", "currency": "EUR"},
            }),
            Valid,
        ),
        (
            "a customer that is a string",
            shipped(|v| v["customer"] = json!("c-1")),
            Invalid,
        ),
        (
            "an order without a customer",
            placed(|v| {
                v.as_object_mut().unwrap().remove("customer");
            }),
            Invalid,
        ),
        (
            "an order without a customer id",
            placed(|v| {
                v["customer"].as_object_mut().unwrap().remove("id");
            }),
            Invalid,
        ),
        (
            "a dispatch without a shipment",
            shipped(|v| {
                v.as_object_mut().unwrap().remove("shipment");
            }),
            Invalid,
        ),
        (
            "a tracking URL with a control character",
            shipped(|v| v["shipment"]["tracking_url"] = json!("https://t/\u{7}")),
            Dropped,
        ),
        (
            "an estimated delivery of 'soon'",
            shipped(|v| v["shipment"]["estimated_delivery"] = json!("soon")),
            Dropped,
        ),
        (
            "a locale of 40 characters",
            placed(|v| v["customer"]["locale"] = json!("x".repeat(40))),
            Dropped,
        ),
        (
            "a first name beside the name",
            placed(|v| v["customer"]["first_name"] = json!("Անի")),
            Valid,
        ),
        (
            "a first name with a line break",
            placed(|v| v["customer"]["first_name"] = json!("Ani\r\nBcc: x@evil")),
            Invalid,
        ),
        (
            "a blank first name",
            placed(|v| v["customer"]["first_name"] = json!("  ")),
            Invalid,
        ),
        (
            "a first name of 501 characters",
            placed(|v| v["customer"]["first_name"] = json!("x".repeat(501))),
            Invalid,
        ),
        (
            "a first name that is a number",
            placed(|v| v["customer"]["first_name"] = json!(7)),
            Invalid,
        ),
        (
            "an item name with an ESC, beside a sku",
            placed(|v| v["order"]["items"][0]["name"] = json!("Tea\u{1b}")),
            Dropped,
        ),
    ];
    let validator = validator();
    let mut disagreements = Vec::new();
    for (what, event, want) in &cases {
        let schema_ok = validator.is_valid(event);
        let mut dropped = Vec::new();
        let decoded = Event::decode_noting(event.to_string().as_bytes(), &mut dropped);
        let decoder = match (&decoded, dropped.is_empty()) {
            (Err(_), _) => Invalid,
            (Ok(_), true) => Valid,
            (Ok(_), false) => Dropped,
        };
        let schema = match (schema_ok, want) {
            (true, _) => Valid,
            // The schema cannot say "left out": a droppable field it
            // refuses is one the decoder drops.
            (false, Dropped) => Dropped,
            (false, _) => Invalid,
        };
        if decoder != *want || schema != *want {
            disagreements.push(format!(
                "{what}: want {want:?}, decoder {decoder:?} ({decoded:?}), schema {schema:?}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
