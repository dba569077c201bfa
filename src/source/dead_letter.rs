//! Dead letters: invalid events, kept with why and where.
//!
//! The file source writes them to a file (created `0600`: events carry
//! personal data), one JSON object per line: `raw` (the event as
//! received), `reason`, `source` and `coordinates`. The Kafka source
//! produces them to a topic: the raw payload and key as they came, and
//! headers `aftercare-source-topic`, `aftercare-source-partition`,
//! `aftercare-source-offset` and `aftercare-reason`.
//!
//! A record is bounded, whatever the event: the reason is cut to
//! [`REASON_MAX_BYTES`], and the raw event to what fits (in a file,
//! `source.max_event_bytes`; on a topic, the producer's
//! `message.max.bytes` with the headers and key). A record whose raw is cut
//! says so: `"truncated": true` and `"event_bytes"` in the file, header
//! `aftercare-event-bytes` on the topic. A record the producer or the broker
//! still refuses for its size is produced again without payload or key, with
//! header `aftercare-dropped` saying why: an event that cannot be kept
//! whole must not hold its partition back forever.
//!
//! Either way they are made durable ([`DeadLetters::sync`]) before the
//! batch's positions are committed, so a bad event is never lost; after a
//! crash in between it may be written twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use serde_json::{Value, json};

use super::Entry;
use crate::bounded::{clip, prefix};

/// The most of a reason a record keeps: a reason may quote the event.
pub const REASON_MAX_BYTES: usize = 1024;
/// librdkafka's default `message.max.bytes`, when the consumer's options do
/// not set it.
const KAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left below `message.max.bytes` for what librdkafka and the broker
/// add around a record (36 bytes a record, 61 a batch).
const KAFKA_FRAMING: usize = 128;
/// What one header costs beyond its name and value (two length varints).
const HEADER_OVERHEAD: usize = 10;

enum Sink {
    /// Count and log only (`simulate` has no side effects).
    Discard,
    File {
        path: PathBuf,
        file: Option<BufWriter<File>>,
        /// The most of a raw event a record keeps.
        max_raw: usize,
    },
    Kafka {
        producer: BaseProducer<DeliveryCounter>,
        topic: String,
        /// The most a record may take (payload, key and headers), below
        /// the producer's `message.max.bytes`.
        max_record: usize,
    },
}

pub struct DeadLetters {
    sink: Sink,
    /// Records written since the last sync.
    unsynced: usize,
    pub written: usize,
}

/// Counts failed deliveries of dead letters, so that `sync` can refuse to
/// let the batch commit, and keeps those refused for their size, so that
/// `sync` can produce them again without their payload.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    failed: Arc<AtomicUsize>,
    refused: Arc<Mutex<Vec<Minimal>>>,
}

/// A dead letter without payload or key: where the event was, why it was
/// refused, its size, and why its payload is not there.
#[derive(Debug)]
pub struct Minimal {
    headers: Vec<(&'static str, String)>,
    /// This is the record without payload already: refused again, it
    /// fails the sync.
    fallback: bool,
}

impl Minimal {
    fn dropped(mut self, error: &KafkaError) -> Minimal {
        self.headers.push(("aftercare-dropped", error.to_string()));
        self.fallback = true;
        self
    }
}

/// Whether a produce error is about the record itself (its size or form):
/// sending the same record again cannot succeed.
fn refuses_the_record(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

impl rdkafka::ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = Box<Minimal>;

    fn delivery(&self, result: &DeliveryResult<'_>, minimal: Box<Minimal>) {
        if let Err((error, _)) = result {
            self.not_delivered(error, *minimal);
        }
    }
}

impl DeliveryCounter {
    /// A record refused for its size or form is kept to be produced again
    /// without its payload; any other failure fails the sync.
    fn not_delivered(&self, error: &KafkaError, minimal: Minimal) {
        if refuses_the_record(error) && !minimal.fallback {
            tracing::warn!(%error, "Dead letter refused; producing it without its payload.");
            self.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(minimal.dropped(error));
        } else {
            tracing::error!(%error, "Dead letter not delivered.");
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl DeadLetters {
    /// A dead-letter file; nothing is created until the first invalid
    /// event. A record keeps at most `max_raw` bytes of the event.
    pub fn new(path: &Path, max_raw: usize) -> DeadLetters {
        Self::with(Sink::File {
            path: path.to_owned(),
            file: None,
            max_raw,
        })
    }

    /// Counts invalid events without writing them anywhere.
    pub fn discard() -> DeadLetters {
        Self::with(Sink::Discard)
    }

    /// A dead-letter topic, produced to with `config` (brokers, security):
    /// the consumer's settings, so its `message.max.bytes` (librdkafka's
    /// default if unset) bounds the records.
    pub fn kafka(config: &ClientConfig, topic: &str) -> Result<DeadLetters, KafkaError> {
        let mut config = config.clone();
        // Written once, even if the producer retries.
        config.set("enable.idempotence", "true");
        let max_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(KAFKA_MESSAGE_MAX_BYTES);
        config.set("message.max.bytes", max_bytes.to_string());
        let producer = config.create_with_context(DeliveryCounter::default())?;
        Ok(Self::with(Sink::Kafka {
            producer,
            topic: topic.to_owned(),
            max_record: max_bytes.saturating_sub(KAFKA_FRAMING),
        }))
    }

    fn with(sink: Sink) -> DeadLetters {
        DeadLetters {
            sink,
            unsynced: 0,
            written: 0,
        }
    }

    /// Where dead letters go, for messages.
    pub fn place(&self) -> String {
        match &self.sink {
            Sink::Discard => "nowhere".to_owned(),
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Kafka { topic, .. } => format!("topic {topic}"),
        }
    }

    /// Writes `entry` of `source` with `reason`, both cut to fit.
    pub fn write(&mut self, source: &str, entry: &Entry, reason: &str) -> std::io::Result<()> {
        self.written += 1;
        // The event's size as received: an oversized one is only a prefix.
        let event_bytes = entry.oversized.map_or(entry.raw.len() as u64, |o| o.bytes);
        match &mut self.sink {
            Sink::Discard => return Ok(()),
            Sink::File {
                path,
                file,
                max_raw,
            } => {
                let raw = prefix(&entry.raw, *max_raw);
                let mut record = json!({
                    "raw": String::from_utf8_lossy(raw),
                    "reason": clip(reason, REASON_MAX_BYTES),
                    "source": source,
                    "coordinates": entry.coordinates,
                });
                if (raw.len() as u64) < event_bytes {
                    record["truncated"] = json!(true);
                    record["event_bytes"] = json!(event_bytes);
                }
                let mut line = serde_json::to_vec(&record)?;
                line.push(b'\n');
                let writer = match file {
                    Some(writer) => writer,
                    None => file.insert(BufWriter::new(open_private(path)?)),
                };
                if let Err(error) = writer.write_all(&line) {
                    discard(file);
                    return Err(error);
                }
            }
            Sink::Kafka {
                producer,
                topic,
                max_record,
            } => {
                let fitted = fit(entry, reason, event_bytes, *max_record);
                let mut record = BaseRecord::with_opaque_to(topic, Box::new(fitted.minimal))
                    .payload(fitted.payload)
                    .headers(owned(&fitted.headers));
                if let Some(key) = fitted.key {
                    record = record.key(key);
                }
                match producer.send(record) {
                    Ok(()) => {}
                    Err((error, record)) if refuses_the_record(&error) => {
                        tracing::warn!(%error, coordinates = %entry.coordinates, "Dead letter refused; producing it without its payload.");
                        send_minimal(producer, topic, (*record.delivery_opaque).dropped(&error))?;
                    }
                    Err((error, _)) => return Err(std::io::Error::other(error)),
                }
                producer.poll(Duration::ZERO);
            }
        }
        self.unsynced += 1;
        Ok(())
    }

    /// Makes what was written durable; call before committing positions.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Discard => {}
            Sink::File { file, .. } => {
                if let Some(writer) = file.as_mut() {
                    let synced = writer.flush().and_then(|()| writer.get_ref().sync_data());
                    if let Err(error) = synced {
                        discard(file);
                        return Err(error);
                    }
                }
            }
            Sink::Kafka {
                producer, topic, ..
            } => {
                let flush = |producer: &BaseProducer<DeliveryCounter>| {
                    producer
                        .flush(Duration::from_secs(30))
                        .map_err(std::io::Error::other)
                };
                flush(producer)?;
                let refused = std::mem::take(
                    &mut *producer
                        .context()
                        .refused
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                if !refused.is_empty() {
                    for minimal in refused {
                        send_minimal(producer, topic, minimal)?;
                    }
                    flush(producer)?;
                }
                let failed = producer.context().failed.swap(0, Ordering::SeqCst);
                if failed > 0 {
                    return Err(std::io::Error::other(format!(
                        "{failed} dead letters were not delivered"
                    )));
                }
            }
        }
        self.unsynced = 0;
        Ok(())
    }
}

/// Opens the dead-letter file for appending, creating it (and its folder)
/// if need be: readable by the service user only, whatever the umask. A
/// last record left half written (the process killed, or a write failed,
/// before its batch was synced, so the batch did not commit and writes it
/// again) is cut off, so that every line stays one whole record.
fn open_private(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)?;
    let whole = whole_records(&file)?;
    if whole < file.metadata()?.len() {
        tracing::warn!(path = %path.display(), kept_bytes = whole, "Cut a dead letter left half written by an earlier run; its batch was not committed and writes it again.");
        file.set_len(whole)?;
    }
    Ok(file)
}

/// How many bytes of `file` are whole lines: up to its last newline.
fn whole_records(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = file.metadata()?.len();
    let mut block = vec![0; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let read = &mut block[..(end - start) as usize];
        file.read_exact_at(read, start)?;
        if let Some(i) = memchr::memrchr(b'\n', read) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Drops the writer without writing what it still holds: after a failed
/// write or sync, the file may end inside a record, and the next write
/// opens it again (cutting that record off).
fn discard(file: &mut Option<BufWriter<File>>) {
    if let Some(writer) = file.take() {
        drop(writer.into_parts());
    }
}

/// A dead-letter record cut to `max_record` bytes.
struct Fitted<'a> {
    headers: Vec<(&'static str, String)>,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    /// The same without payload, should it be refused all the same.
    minimal: Minimal,
}

/// Cuts the record of `entry` to fit in `max_record` bytes, as librdkafka
/// counts them (payload, key, and each header's name and value): the reason
/// first, then the key (dropped when it would take over half the room:
/// a customer id is short, and the payload is the evidence), then the
/// payload.
fn fit<'a>(entry: &'a Entry, reason: &str, event_bytes: u64, max_record: usize) -> Fitted<'a> {
    let text = |k: &str| match &entry.coordinates[k] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let reason_max = REASON_MAX_BYTES.min(max_record / 4);
    let mut headers = vec![
        ("aftercare-source-topic", text("topic")),
        ("aftercare-source-partition", text("partition")),
        ("aftercare-source-offset", text("offset")),
        ("aftercare-reason", clip(reason, reason_max).into_owned()),
    ];
    let size = ("aftercare-event-bytes", event_bytes.to_string());
    let mut minimal = headers.clone();
    minimal.push(size.clone());
    // Room for the size header, whether or not it is needed.
    let taken: usize = minimal
        .iter()
        .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
        .sum();
    let mut room = max_record.saturating_sub(taken);
    let key = entry.key.as_deref().filter(|k| k.len() <= room / 2);
    room -= key.map_or(0, <[u8]>::len);
    let payload = prefix(&entry.raw, room);
    if (payload.len() as u64) < event_bytes {
        headers.push(size);
    }
    Fitted {
        headers,
        key,
        payload,
        minimal: Minimal {
            headers: minimal,
            fallback: false,
        },
    }
}

fn owned(headers: &[(&str, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            })
        },
    )
}

/// Produces `minimal`: headers only, no payload, no key.
fn send_minimal(
    producer: &BaseProducer<DeliveryCounter>,
    topic: &str,
    minimal: Minimal,
) -> std::io::Result<()> {
    let headers = owned(&minimal.headers);
    let record = BaseRecord::<[u8], [u8], Box<Minimal>>::with_opaque_to(topic, Box::new(minimal))
        .payload(&[])
        .headers(headers);
    producer
        .send(record)
        .map_err(|(e, _)| std::io::Error::other(e))?;
    producer.poll(Duration::ZERO);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{OVERSIZED_PREFIX, Oversized, Position};
    use std::os::unix::fs::PermissionsExt;

    fn entry(raw: Vec<u8>, oversized: Option<Oversized>) -> Entry {
        Entry {
            raw,
            key: Some(b"c-1".to_vec()),
            coordinates: json!({"topic": "orders", "partition": 2, "offset": 41}),
            position: Position {
                key: "kafka:g:orders:2".to_owned(),
                value: "42".to_owned(),
            },
            oversized,
            mapped: None,
        }
    }

    fn record_size(f: &Fitted<'_>) -> usize {
        f.payload.len()
            + f.key.map_or(0, <[u8]>::len)
            + f.headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
                .sum::<usize>()
    }

    #[test]
    fn a_record_that_fits_keeps_the_whole_event_and_its_key() {
        let e = entry(vec![b'x'; 600_000], None);
        let long_reason = format!("unknown event type `{}`", "x".repeat(600_000));
        let f = fit(&e, &long_reason, 600_000, 1_000_000 - KAFKA_FRAMING);
        assert_eq!(f.payload.len(), 600_000);
        assert_eq!(f.key, Some(&b"c-1"[..]));
        let reason = &f
            .headers
            .iter()
            .find(|(k, _)| *k == "aftercare-reason")
            .unwrap()
            .1;
        assert!(reason.len() <= REASON_MAX_BYTES, "{}", reason.len());
        assert!(!f.headers.iter().any(|(k, _)| *k == "aftercare-event-bytes"));
        assert!(record_size(&f) <= 1_000_000 - KAFKA_FRAMING);
    }

    #[test]
    fn a_record_too_large_is_cut_and_says_how_large_the_event_was() {
        for max_record in [1000 - KAFKA_FRAMING, 100_000] {
            let mut e = entry(vec![b'x'; 300_000], None);
            e.key = Some(vec![b'k'; 200_000]);
            let f = fit(&e, &"r".repeat(5000), 300_000, max_record);
            assert!(
                record_size(&f) <= max_record,
                "{max_record}: {}",
                record_size(&f)
            );
            assert_eq!(f.key, None, "a key larger than half the room goes");
            assert!(f.payload.len() < 300_000);
            assert!(
                f.headers
                    .contains(&("aftercare-event-bytes", "300000".to_owned()))
            );
        }
    }

    #[test]
    fn an_oversized_event_is_recorded_with_its_size() {
        let over = Oversized {
            bytes: 52_428_800,
            limit: 1 << 20,
        };
        let e = entry(vec![b'x'; OVERSIZED_PREFIX], Some(over));
        let f = fit(&e, &over.to_string(), over.bytes, 1_000_000);
        assert_eq!(f.payload.len(), OVERSIZED_PREFIX);
        assert!(
            f.headers
                .contains(&("aftercare-event-bytes", "52428800".to_owned()))
        );
        assert!(f.headers.contains(&(
            "aftercare-reason",
            "event of 52428800 bytes is over source.max_event_bytes (1048576)".to_owned()
        )));
    }

    /// Should a record still be refused for its size (here the producer's
    /// limit is below what the sink was told), it goes without its
    /// payload instead of failing the batch for ever.
    #[test]
    fn a_record_the_producer_refuses_for_its_size_goes_without_its_payload() {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.max.bytes", "10000");
        let mut dead = DeadLetters::kafka(&config, "dead").unwrap();
        if let Sink::Kafka { max_record, .. } = &mut dead.sink {
            *max_record = 1_000_000;
        }
        let e = entry(vec![b'x'; 600_000], None);
        dead.write("kafka:g", &e, "unknown event type `x`")
            .expect("produced without its payload, not failed");
        let Sink::Kafka { producer, .. } = &dead.sink else {
            unreachable!()
        };
        assert!(
            producer.in_flight_count() >= 1,
            "the record without payload"
        );
        assert_eq!(dead.written, 1);
    }

    /// The broker may refuse a record the producer let through (a topic's
    /// `max.message.bytes` below the producer's): kept to go again without
    /// its payload, once; any other failure fails the sync.
    #[test]
    fn a_record_the_broker_refuses_for_its_size_is_kept_to_go_without_its_payload() {
        let counter = DeliveryCounter::default();
        let e = entry(vec![b'x'; 10], None);
        let f = fit(&e, "why", 10, 10_000);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        counter.not_delivered(&too_large, f.minimal);
        let refused = std::mem::take(&mut *counter.refused.lock().unwrap());
        assert_eq!(refused.len(), 1);
        let again = &refused[0];
        assert!(again.fallback);
        assert!(
            again
                .headers
                .contains(&("aftercare-event-bytes", "10".to_owned()))
        );
        assert!(
            again
                .headers
                .iter()
                .any(|(k, v)| *k == "aftercare-dropped" && v.contains("too large")),
            "{:?}",
            again.headers
        );
        assert_eq!(counter.failed.load(Ordering::SeqCst), 0);
        // Refused again without its payload, or failed otherwise: counted.
        let refused = refused.into_iter().next().unwrap();
        counter.not_delivered(&too_large, refused);
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let f = fit(&e, "why", 10, 10_000);
        counter.not_delivered(&timed_out, f.minimal);
        assert_eq!(counter.failed.load(Ordering::SeqCst), 2);
        assert!(counter.refused.lock().unwrap().is_empty());
    }

    #[test]
    fn the_dead_letter_file_is_private_and_its_records_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dead.jsonl");
        let mut dead = DeadLetters::new(&path, 2048);
        let mut file_entry = entry(vec![b'y'; 5000], None);
        file_entry.coordinates = json!({"path": "-", "line": 7, "offset": 99});
        dead.write("stdin", &file_entry, &"why ".repeat(10_000))
            .unwrap();
        dead.sync().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let record: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(record["raw"].as_str().unwrap().len(), 2048);
        assert!(record["reason"].as_str().unwrap().len() <= REASON_MAX_BYTES);
        assert_eq!(record["truncated"], true);
        assert_eq!(record["event_bytes"], 5000);
        assert_eq!(record["coordinates"]["line"], 7);
    }

    #[test]
    fn a_record_left_half_written_is_cut_before_the_next_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let whole = r#"{"raw":"a","reason":"bad","source":"-","coordinates":{"line":1}}"#;
        // A big record, killed mid-write: its first 100 KB reached the file.
        let torn = format!(r#"{{"raw":"{}"#, "x".repeat(100_000));
        std::fs::write(&path, format!("{whole}\n{torn}")).unwrap();
        let mut dead = DeadLetters::new(&path, 2048);
        let mut again = entry(b"y".to_vec(), None);
        again.coordinates = json!({"line": 2});
        dead.write("-", &again, "bad again").unwrap();
        dead.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text:.200}");
        assert_eq!(lines[0]["coordinates"]["line"], 1);
        assert_eq!(lines[1]["coordinates"]["line"], 2);
        // A file holding only a torn record is emptied the same way.
        std::fs::write(&path, &torn).unwrap();
        let mut dead = DeadLetters::new(&path, 2048);
        dead.write("-", &again, "bad again").unwrap();
        dead.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let record: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(record["raw"], "y");
    }
}
