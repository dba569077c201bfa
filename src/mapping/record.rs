//! A message as mappings see it, and Kafka records written as JSON lines.
//!
//! `kcat -C -J` prints each record of a topic as one JSON object:
//! `{"topic":"orders","partition":0,"offset":42,"tstype":"create","ts":...,
//! "broker":0,"headers":["name","value",...],"key":"...","payload":"..."}`.
//! A file of such lines (a dump of a topic) can be read by the file source
//! and `simulate` as if it came from the broker: the payload is the message,
//! with its topic, key and headers.

use serde::Deserialize;

/// A message: its body, and what the broker says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub body: Vec<u8>,
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    /// In the order the broker gave them; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// `$headers`: lower-cased names (HTTP bridges and clients differ in
    /// case), values as text; of a repeated name, the last.
    pub fn header_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_ascii_lowercase(),
                    serde_json::Value::String(String::from_utf8_lossy(value).into_owned()),
                )
            })
            .collect()
    }
}

/// A Kafka record as `kcat -J` prints it.
#[derive(Debug, Deserialize)]
struct KcatRecord {
    topic: String,
    partition: i64,
    offset: i64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Option<Vec<Option<String>>>,
    payload: Option<String>,
}

/// Where a record line came from in its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOrigin {
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
}

/// `line` as a Kafka record, if it is one: an object with `topic`,
/// `partition`, `offset` and `payload` (a native event has none of them).
/// A record without a payload (a tombstone) has an empty body.
pub fn parse_kcat(line: &[u8]) -> Option<(Record, RecordOrigin)> {
    // Cheap test first: most lines of a native log are not records.
    memchr::memmem::find(line, b"\"payload\"")?;
    memchr::memmem::find(line, b"\"partition\"")?;
    let record: KcatRecord = serde_json::from_slice(line).ok()?;
    let headers = record
        .headers
        .unwrap_or_default()
        .chunks(2)
        .filter_map(|pair| match pair {
            [Some(name), value] => {
                Some((name.clone(), value.clone().unwrap_or_default().into_bytes()))
            }
            _ => None,
        })
        .collect();
    Some((
        Record {
            body: record.payload.unwrap_or_default().into_bytes(),
            topic: Some(record.topic.clone()),
            key: record.key.map(String::into_bytes),
            headers,
        },
        RecordOrigin {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcat_records_are_read_and_native_events_are_not_records() {
        let line = br#"{"topic":"shop","partition":2,"offset":41,"tstype":"create","ts":1767225600000,"broker":0,"headers":["X-Shopify-Topic","orders/create","empty",null],"key":"820982911946154508","payload":"{\"id\":1}"}"#;
        let (record, origin) = parse_kcat(line).expect("a record");
        assert_eq!(record.body, br#"{"id":1}"#);
        assert_eq!(record.key.as_deref(), Some(&b"820982911946154508"[..]));
        assert_eq!(
            origin,
            RecordOrigin {
                topic: "shop".into(),
                partition: 2,
                offset: 41
            }
        );
        let headers = record.header_map();
        assert_eq!(headers["x-shopify-topic"], "orders/create");
        assert_eq!(headers["empty"], "");

        let tombstone = br#"{"topic":"shop","partition":0,"offset":1,"key":"k","payload":null}"#;
        assert_eq!(parse_kcat(tombstone).unwrap().0.body, b"");

        let native = br#"{"event_id":"e-1","type":"order.placed","payload":"x"}"#;
        assert!(parse_kcat(native).is_none());
        assert!(parse_kcat(b"not json \"payload\" \"partition\"").is_none());
    }
}
