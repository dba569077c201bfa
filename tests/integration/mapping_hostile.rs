//! Hostile messages through the mapping thread: bodies nested far deeper
//! than the parser allows, megabyte strings, an order of 10,000 items,
//! numbers no float holds, broken escapes, duplicate keys, and programs
//! that try to fill the memory. Each gives an outcome (events, or a reason
//! to dead-letter the message) in bounded time, and the thread maps the
//! next ordinary message as if nothing had happened.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use aftercare::mapping::{Mapper, MappingRule, MappingSet, Outcome, Record, presets, record};
use serde_json::{Value, json};

/// The Shopify preset with the fixture's vars, after a rule that builds a
/// string by doubling it (stopped by the size bound, not the deadline).
fn mapper() -> Mapper {
    mapper_within(Duration::from_secs(2))
}

fn mapper_within(timeout: Duration) -> Mapper {
    let doubling = MappingRule {
        name: "doubling".into(),
        when: "$topic == \"doubling\"".into(),
        emit: "\"x\" | def f: . + . | f; f".into(),
        samples: Vec::new(),
    };
    let preset = presets::get("shopify").unwrap();
    let vars = BTreeMap::from([("currency".to_owned(), json!("USD"))]);
    let set = MappingSet::new(&[doubling], Some(&preset), &vars, timeout);
    Mapper::start(&set).unwrap()
}

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/presets/shopify")
            .join(file),
    )
    .unwrap()
}

/// The fixture's first `orders/create` webhook, and the event it maps to.
fn ordinary() -> (Record, Value) {
    let records = fixture("records.jsonl");
    let line = records.split(|b| *b == b'\n').next().unwrap();
    let (record, _) = record::parse_kcat(line).unwrap();
    let expected = fixture("expected.jsonl");
    let first = expected.split(|b| *b == b'\n').next().unwrap();
    (record, serde_json::from_slice(first).unwrap())
}

/// The ordinary webhook with another body.
fn with_body(body: Vec<u8>) -> Record {
    Record {
        body,
        ..ordinary().0
    }
}

/// The ordinary order, changed by `change`.
fn order(change: impl FnOnce(&mut Value)) -> Record {
    let mut body: Value = serde_json::from_slice(&ordinary().0.body).unwrap();
    change(&mut body);
    with_body(serde_json::to_vec(&body).unwrap())
}

/// Maps `record` within 30 s, then checks the thread still maps the
/// ordinary webhook to its event.
fn map(mapper: &Mapper, record: Record) -> Outcome {
    let started = Instant::now();
    let mut outcomes = mapper.map(vec![record]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let (ordinary, expected) = ordinary();
    match &mapper.map(vec![ordinary])[..] {
        [Outcome::Events { events, .. }] if events.len() == 1 => {
            let got: Value = serde_json::from_slice(&events[0]).unwrap();
            assert_eq!(got, expected, "the ordinary webhook afterwards");
        }
        other => panic!("the ordinary webhook afterwards: {other:?}"),
    }
    outcomes.remove(0)
}

fn reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed { reason, .. } => reason,
        other => panic!("expected a failure, got {}", shown(other)),
    }
}

/// The one event of an outcome.
fn event(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Events { events, .. } if events.len() == 1 => {
            serde_json::from_slice(&events[0]).unwrap()
        }
        other => panic!("expected one event, got {}", shown(other)),
    }
}

fn shown(outcome: &Outcome) -> String {
    aftercare::bounded::clip(&format!("{outcome:?}"), 500).into_owned()
}

#[test]
fn bodies_nested_half_a_million_deep_are_refused_by_the_parser() {
    let mapper = mapper();
    let arrays = [b"[".repeat(500_000), b"]".repeat(500_000)].concat();
    assert_eq!(arrays.len(), 1_000_000);
    let objects = [b"{\"a\":".repeat(174_763), b"}".repeat(174_763)].concat();
    assert!(objects.len() >= 1 << 20);
    for body in [arrays, objects] {
        let outcome = map(&mapper, with_body(body));
        let reason = reason(&outcome);
        assert!(
            reason.starts_with("the message is not valid JSON") && reason.contains("recursion"),
            "{reason}"
        );
        assert!(reason.len() < 400, "{reason}");
    }
}

#[test]
fn a_megabyte_string_is_carried_whole_to_the_decoder() {
    let mapper = mapper();
    let name = "n".repeat(1 << 20);
    let outcome = map(
        &mapper,
        order(|o| o["line_items"][0]["name"] = name.clone().into()),
    );
    let placed = event(&outcome);
    assert_eq!(placed["order"]["items"][0]["name"], json!(name));
    // The decoder is the one gate: it keeps the order and drops the name.
    let raw = serde_json::to_vec(&placed).unwrap();
    let mut dropped = Vec::new();
    let decoded = aftercare::event::Event::decode_noting(&raw, &mut dropped);
    assert!(decoded.is_ok(), "{:?}", decoded.err());
    assert!(
        dropped.iter().any(|d| d.field == "items[].name"),
        "{dropped:?}"
    );
}

#[test]
fn an_order_of_ten_thousand_items_maps_to_one_event_with_every_item() {
    // About 7 MB of webhook: more than a debug build maps in the default
    // second (a release build takes a fraction of it, see BENCHMARKS.md).
    let mapper = mapper_within(Duration::from_secs(25));
    let outcome = map(
        &mapper,
        order(|o| {
            let item = o["line_items"][0].clone();
            o["line_items"] = Value::Array(
                (0..10_000)
                    .map(|n| {
                        let mut item = item.clone();
                        item["sku"] = format!("SKU-{n}").into();
                        item
                    })
                    .collect(),
            );
        }),
    );
    let placed = event(&outcome);
    let items = placed["order"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 10_000);
    assert_eq!(items[9_999]["sku"], "SKU-9999");
}

#[test]
fn money_beyond_any_float_keeps_its_text_for_the_decoder_to_judge() {
    let mapper = mapper();
    // serde_json writes the exponent with its sign.
    for (literal, text) in [
        ("1e999999", "1e+999999"),
        // An integer is read as one: minus zero is zero.
        ("-0", "0"),
        ("18446744073709551617", "18446744073709551617"),
    ] {
        let body = String::from_utf8(ordinary().0.body)
            .unwrap()
            .replace(
                "\"total_price\":\"95.90\"",
                &format!("\"total_price\":{literal}"),
            )
            .replace("\"price\":\"12.50\"", &format!("\"price\":{literal}"));
        let body = body.replacen("\"total_price_set\":", "\"total_price_set_\":", 1);
        let body = body.replace("\"price_set\":", "\"price_set_\":");
        let outcome = map(&mapper, with_body(body.into_bytes()));
        let placed = event(&outcome);
        assert_eq!(placed["order"]["total"], json!(text), "{literal}");
        assert_eq!(
            placed["order"]["items"][0]["unit_price"],
            json!(text),
            "{literal}"
        );
    }
}

#[test]
fn broken_escapes_are_refused_and_duplicate_keys_keep_the_last() {
    let mapper = mapper();
    let body = String::from_utf8(ordinary().0.body).unwrap();
    for bad in [r#"\ud800"#, r#"\udc00x"#, r#"\uZZZZ"#] {
        let broken = body.replace("\"name\":\"#1001\"", &format!("\"name\":\"{bad}\""));
        assert_ne!(broken, body);
        let outcome = map(&mapper, with_body(broken.into_bytes()));
        let reason = reason(&outcome);
        assert!(
            reason.starts_with("the message is not valid JSON"),
            "{bad}: {reason}"
        );
    }
    assert!(body.starts_with("{\"id\":820982911946154508,"));
    let twice = body.replacen("{\"id\":", "{\"id\":1,\"id\":", 1);
    assert_ne!(twice, body);
    let placed = event(&map(&mapper, with_body(twice.into_bytes())));
    assert_eq!(placed, ordinary().1);
}

#[test]
fn a_program_that_fills_the_memory_is_stopped_and_the_thread_maps_on() {
    let mapper = mapper();
    let doubling = Record {
        topic: Some("doubling".into()),
        ..ordinary().0
    };
    for _ in 0..3 {
        let outcome = map(&mapper, doubling.clone());
        assert_eq!(
            reason(&outcome),
            "mapping \"doubling\": +: a string of 33554432 bytes exceeds the limit of 16 MiB"
        );
    }
}
