//! `aftercare map`: what the worker makes of a message, said in full.
//!
//! The message goes the way `run` takes it (the sources' mapping step, then
//! the decoder): which mapping was chosen, each native event it emitted,
//! the optional fields the decoder dropped, and the reason of a refusal.
//! What an engineer runs when an email did not go out.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::record::{Record, parse_kcat};
use super::{Mapper, MappingSet};
use crate::event::Event;
use crate::source::{Entry, Mapped, Position, RawMessage, entries};

/// The messages of `input`: one per line when every line is a Kafka
/// record as `kcat -J` prints it; else the whole input as one message if
/// it is one JSON value (pretty-printed, say), or one message per line
/// (JSON lines); with `template`'s topic, key and headers.
pub fn messages(input: &[u8], template: &Record) -> Vec<RawMessage> {
    let lines: Vec<&[u8]> = input
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let records: Option<Vec<_>> = lines.iter().map(|l| parse_kcat(l)).collect();
    let position = Position {
        key: "map".to_owned(),
        value: String::new(),
    };
    match records {
        Some(records) if !records.is_empty() => records
            .into_iter()
            .enumerate()
            .map(|(n, (record, origin))| RawMessage {
                record,
                coordinates: json!({
                    "message": n + 1,
                    "topic": origin.topic,
                    "partition": origin.partition,
                    "offset": origin.offset,
                }),
                position: position.clone(),
                oversized: None,
            })
            .collect(),
        _ if lines.len() <= 1 || serde_json::from_slice::<serde::de::IgnoredAny>(input).is_ok() => {
            vec![RawMessage {
                record: Record {
                    body: input.trim_ascii().to_vec(),
                    ..template.clone()
                },
                coordinates: json!({"message": 1}),
                position,
                oversized: None,
            }]
        }
        _ => lines
            .iter()
            .enumerate()
            .map(|(n, line)| RawMessage {
                record: Record {
                    body: line.trim_ascii().to_vec(),
                    ..template.clone()
                },
                coordinates: json!({"message": n + 1}),
                position: position.clone(),
                oversized: None,
            })
            .collect(),
    }
}

/// What became of `messages`, as text, and whether every one made events
/// the decoder accepts (or was skipped on purpose).
pub fn explain(
    set: Option<&MappingSet>,
    mapper: Option<&Mapper>,
    messages: Vec<RawMessage>,
) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    for entry in entries(mapper, messages) {
        let n = &entry.coordinates["message"];
        let origin = match &entry.coordinates["topic"] {
            Value::String(topic) => format!(
                " ({topic}, partition {}, offset {})",
                entry.coordinates["partition"], entry.coordinates["offset"]
            ),
            _ => String::new(),
        };
        match &entry.mapped {
            None => {
                let _ = writeln!(out, "message {n}{origin}: read as a native event");
                ok &= decoded(&mut out, &entry);
            }
            Some(Mapped::Event { rule, index, count }) => {
                let _ = writeln!(
                    out,
                    "message {n}{origin}: mapping \"{rule}\" ({}), event {} of {count}:",
                    where_from(set, rule),
                    index + 1
                );
                ok &= decoded(&mut out, &entry);
            }
            Some(Mapped::Skipped { rule }) => {
                let _ = writeln!(
                    out,
                    "message {n}{origin}: skipped: mapping \"{rule}\" makes no event of it"
                );
            }
            Some(Mapped::Failed { reason }) => {
                ok = false;
                let _ = writeln!(out, "message {n}{origin}: not mapped: {reason}");
            }
        }
    }
    (out, ok)
}

/// Where a rule comes from: `config` or `preset NAME`.
fn where_from<'a>(set: Option<&'a MappingSet>, rule: &str) -> &'a str {
    set.and_then(|set| {
        let i = set.rules.iter().position(|r| r.name == rule)?;
        set.origins.get(i).map(String::as_str)
    })
    .unwrap_or("?")
}

/// The event, the fields dropped from it and the decoder's verdict.
fn decoded(out: &mut String, entry: &Entry) -> bool {
    let shown = serde_json::from_slice::<Value>(&entry.raw)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&entry.raw).into_owned());
    for line in shown.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let mut dropped = Vec::new();
    let verdict = Event::decode_noting(&entry.raw, &mut dropped);
    for d in &dropped {
        let _ = writeln!(out, "  dropped {}: {}", d.field, d.reason);
    }
    match verdict {
        Ok(event) => {
            let _ = writeln!(
                out,
                "  accepted: {} {}",
                event.kind.type_name(),
                match event.customer_id() {
                    Some(customer) => format!("of customer {customer}"),
                    None => format!(
                        "of order {} (its customer from the store)",
                        event.kind.order_id()
                    ),
                }
            );
            true
        }
        Err(e) => {
            let _ = writeln!(out, "  refused by the decoder (dead-lettered): {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::mapping::{MappingRule, presets};

    /// The preset as tests/presets/shopify/aftercare.toml sets it up.
    fn shopify() -> (MappingSet, Mapper) {
        let preset = presets::get("shopify").unwrap();
        let vars = BTreeMap::from([("currency".to_owned(), json!("USD"))]);
        let set = MappingSet::new(&[], Some(&preset), &vars, Duration::from_secs(1));
        let mapper = Mapper::start(&set).unwrap();
        (set, mapper)
    }

    #[test]
    fn a_record_file_is_explained_message_by_message() {
        let (set, mapper) = shopify();
        let fixture = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/presets/shopify/records.jsonl"
        ))
        .unwrap();
        let messages = messages(&fixture, &Record::default());
        let count = messages.len();
        assert!(count >= 5);
        let (text, ok) = explain(Some(&set), Some(&mapper), messages);
        assert!(ok, "{text}");
        assert!(text.contains("message 1 ("), "{text}");
        assert!(text.contains(&format!("message {count} (")), "{text}");
        assert!(text.contains("(preset shopify), event 1 of 1:"), "{text}");
        assert!(
            text.contains("  accepted: order.placed of customer "),
            "{text}"
        );
    }

    #[test]
    fn input_is_records_one_json_value_or_json_lines() {
        let template = Record {
            topic: Some("t".into()),
            ..Record::default()
        };
        let bodies = |input: &[u8]| -> Vec<String> {
            messages(input, &template)
                .into_iter()
                .map(|m| {
                    assert_eq!(m.record.topic.as_deref(), Some("t"));
                    String::from_utf8(m.record.body).unwrap()
                })
                .collect()
        };
        assert_eq!(bodies(b"{\n  \"a\": 1\n}\n"), ["{\n  \"a\": 1\n}"]);
        assert_eq!(
            bodies(b"{\"a\": 1}\n\n{\"a\": 2}\n"),
            ["{\"a\": 1}", "{\"a\": 2}"]
        );
        assert_eq!(bodies(b"not json"), ["not json"]);
        let record = br#"{"topic":"orders","partition":1,"offset":5,"key":"k","payload":"{}"}"#;
        let from_record = messages(record, &template);
        assert_eq!(from_record[0].record.topic.as_deref(), Some("orders"));
        assert_eq!(from_record[0].coordinates["offset"], 5);
    }

    #[test]
    fn failures_refusals_and_skips_are_told_apart() {
        let (set, mapper) = shopify();
        let (text, ok) = explain(
            Some(&set),
            Some(&mapper),
            messages(b"{\"id\": 1}", &Record::default()),
        );
        assert!(!ok);
        assert!(
            text.starts_with("message 1: not mapped: no mapping matched"),
            "{text}"
        );

        // The shop's own rule: one event the decoder refuses, one skip.
        let own = [
            MappingRule {
                name: "half".into(),
                when: ".kind == \"half\"".into(),
                emit: "{event_id: \"e-1\", type: \"order.placed\"}".into(),
                samples: Vec::new(),
            },
            MappingRule {
                name: "drafts".into(),
                when: ".kind == \"draft\"".into(),
                emit: "empty".into(),
                samples: Vec::new(),
            },
        ];
        let set = MappingSet::new(&own, None, &BTreeMap::new(), Duration::from_secs(1));
        let mapper = Mapper::start(&set).unwrap();
        let (text, ok) = explain(
            Some(&set),
            Some(&mapper),
            messages(b"{\"kind\": \"half\"}", &Record::default()),
        );
        assert!(!ok);
        assert!(
            text.contains("mapping \"half\" (config), event 1 of 1:"),
            "{text}"
        );
        assert!(
            text.contains("refused by the decoder (dead-lettered): "),
            "{text}"
        );
        let (text, ok) = explain(
            Some(&set),
            Some(&mapper),
            messages(b"{\"kind\": \"draft\"}", &Record::default()),
        );
        assert!(ok, "{text}");
        assert_eq!(
            text,
            "message 1: skipped: mapping \"drafts\" makes no event of it\n"
        );
        // No rule holds and no preset: a native event.
        let native = br#"{"event_id":"e-2","type":"shipment.delivered","occurred_at":"2026-01-02T10:00:00Z","order":{"id":"o-1"},"shipment":{"id":"s-1"}}"#;
        let (text, ok) = explain(
            Some(&set),
            Some(&mapper),
            messages(native, &Record::default()),
        );
        assert!(ok, "{text}");
        assert!(
            text.starts_with("message 1: read as a native event\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "accepted: shipment.delivered of order o-1 (its customer from the store)"
            ),
            "{text}"
        );
    }
}
