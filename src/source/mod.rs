//! Event sources: where raw events come from, and where bad ones go.
//!
//! A source hands out raw events with their coordinates; decoding happens in
//! the pipeline, so that every source dead-letters the same way. The
//! position after each event is what the store commits with the batch, and
//! what a restart resumes from.

mod dead_letter;
mod file;
pub mod kafka;
pub mod webhook;

pub use dead_letter::{DeadLetters, REASON_MAX_BYTES};
pub use file::FileSource;
pub use kafka::KafkaSource;
pub use webhook::WebhookSource;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;

use crate::mapping::{Mapper, Outcome, Record};

pub use crate::observe::SourceHealth;
use serde_json::Value;

/// One raw event and where it came from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub raw: Vec<u8>,
    /// The message key, if the source has one (Kafka: the customer id).
    pub key: Option<Vec<u8>>,
    /// Where the event is, for the dead-letter record and logs:
    /// `{"path": ..., "line": 12, "offset": 3456}` or
    /// `{"topic": ..., "partition": 0, "offset": 42}`.
    pub coordinates: Value,
    /// Which position this event advances (a file; a topic partition) and
    /// to what, once applied: the store commits it with the batch.
    pub position: Position,
    /// Set when the event is over `source.max_event_bytes`: `raw` is then
    /// only its first [`OVERSIZED_PREFIX`] bytes, kept for the dead letter.
    /// The source never holds the whole of such an event, so one line or
    /// message cannot take the worker's memory.
    pub oversized: Option<Oversized>,
    /// What a mapping made of the message, when mappings are configured
    /// (`None`: the source's event as it is).
    pub mapped: Option<Mapped>,
}

impl Entry {
    /// Whether applying this entry moves its stream's position on: not for
    /// an event a mapping emitted with more of the same message after it.
    /// A message is then read again after a crash between its events, and
    /// those already applied are duplicates.
    pub fn advances(&self) -> bool {
        match &self.mapped {
            Some(Mapped::Event { index, count, .. }) => index + 1 >= *count,
            _ => true,
        }
    }
}

/// What a mapping made of one message (see [`crate::mapping`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// `raw` is event `index` (from 0) of the `count` that mapping `rule`
    /// emitted for the message.
    Event {
        rule: String,
        index: usize,
        count: usize,
    },
    /// No event, on purpose: mapping `rule` emitted none, or the message
    /// is empty (a tombstone: `rule` is [`EMPTY_MESSAGE`]). Counted, not
    /// dead-lettered.
    Skipped { rule: String },
    /// No event could be made: `raw` is the message, `reason` says why.
    Failed { reason: String },
}

/// The `mapping` label of skipped empty messages (tombstones of compacted
/// topics, a CloudEvent without data): no mapping is run on them.
pub const EMPTY_MESSAGE: &str = "(empty message)";

/// A message as a source read it, before mapping.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub record: Record,
    pub coordinates: Value,
    pub position: Position,
    pub oversized: Option<Oversized>,
}

/// The entries the pipeline applies for `messages`, in order: each message
/// as it is (no mapper: a native event), or the events its mapping made of
/// it. Only the last entry of a message advances its position
/// ([`Entry::advances`]).
pub fn entries(mapper: Option<&Mapper>, messages: Vec<RawMessage>) -> Vec<Entry> {
    let Some(mapper) = mapper else {
        return messages
            .into_iter()
            .map(|m| Entry {
                raw: m.record.body,
                key: m.record.key,
                coordinates: m.coordinates,
                position: m.position,
                oversized: m.oversized,
                mapped: None,
            })
            .collect();
    };
    let mappable = |m: &RawMessage| m.oversized.is_none() && !is_empty(&m.record.body);
    let records = messages
        .iter()
        .filter(|m| mappable(m))
        .map(|m| m.record.clone())
        .collect();
    let mut outcomes = mapper.map(records).into_iter();
    let mut entries = Vec::with_capacity(messages.len());
    for m in messages {
        let as_it_is = |mapped| Entry {
            raw: m.record.body.clone(),
            key: m.record.key.clone(),
            coordinates: m.coordinates.clone(),
            position: m.position.clone(),
            oversized: m.oversized,
            mapped,
        };
        if m.oversized.is_some() {
            entries.push(as_it_is(None));
            continue;
        }
        if !mappable(&m) {
            entries.push(as_it_is(Some(Mapped::Skipped {
                rule: EMPTY_MESSAGE.to_owned(),
            })));
            continue;
        }
        let outcome = outcomes.next().unwrap_or_else(|| Outcome::Failed {
            rule: None,
            reason: "the mapping thread gave no answer (internal error)".to_owned(),
        });
        match outcome {
            Outcome::Native => entries.push(as_it_is(None)),
            Outcome::Failed { reason, .. } => {
                entries.push(as_it_is(Some(Mapped::Failed { reason })));
            }
            Outcome::Events { rule, events } if events.is_empty() => {
                entries.push(as_it_is(Some(Mapped::Skipped {
                    rule: mapper.name(rule).to_owned(),
                })));
            }
            Outcome::Events { rule, events } => {
                let name = mapper.name(rule);
                let count = events.len();
                for (index, raw) in events.into_iter().enumerate() {
                    let mut coordinates = m.coordinates.clone();
                    if let Value::Object(c) = &mut coordinates {
                        c.insert("mapping".into(), name.into());
                        if count > 1 {
                            c.insert("event".into(), (index + 1).into());
                        }
                    }
                    entries.push(Entry {
                        raw,
                        key: m.record.key.clone(),
                        coordinates,
                        position: m.position.clone(),
                        oversized: None,
                        mapped: Some(Mapped::Event {
                            rule: name.to_owned(),
                            index,
                            count,
                        }),
                    });
                }
            }
        }
    }
    entries
}

fn is_empty(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// How much of an oversized event is kept: enough to tell what it was.
pub const OVERSIZED_PREFIX: usize = 1024;

/// An event too large to be read: its size, and the limit it is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// The whole event's size in bytes (a line's without its line end).
    pub bytes: u64,
    pub limit: usize,
}

impl std::fmt::Display for Oversized {
    /// The dead-letter reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event of {} bytes is over source.max_event_bytes ({})",
            self.bytes, self.limit
        )
    }
}

impl Oversized {
    /// `Some` when an event of `bytes` is over `limit`.
    pub fn check(bytes: u64, limit: usize) -> Option<Oversized> {
        (bytes > limit as u64).then_some(Oversized { bytes, limit })
    }
}

/// A source position as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// `file:/path/events.jsonl`, `kafka:group:topic:partition`.
    pub key: String,
    /// Where to resume: the next byte offset and line, the next offset.
    pub value: String,
}

/// A batch of raw events.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The source has nothing more now (end of file).
    pub caught_up: bool,
    /// The source will never have more (end of a file that is not followed).
    pub finished: bool,
    /// Timers may fire up to this event time and no further: an event not
    /// yet read (a lagging partition) could still cancel them. `None`: the
    /// source reads in time order, each event's own time is the limit.
    pub watermark: Option<Timestamp>,
}

/// A source failure that stops the worker (the batch in hand is not
/// committed, so nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {name}: {error}")]
    Io { name: String, error: std::io::Error },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

pub trait Source: Send {
    /// For logs and the summary.
    fn name(&self) -> &str;
    /// Up to `max` events.
    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError>;
    /// Called once the positions of the last batch are committed to the
    /// store: a source with its own bookkeeping (Kafka group offsets) may
    /// record them too.
    fn committed(&mut self) {}
    /// For a source read by several workers sharing a store: the streams
    /// (position keys) this worker reads now, whose timers it fires. `None`:
    /// it reads everything, and fires every timer.
    fn streams(&self) -> Option<Vec<String>> {
        None
    }
    /// Assignment, lag and stalls, for metrics and readiness; a source
    /// without partitions has none of them.
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }
    /// A live flag: whether a connection to a broker is up (`None`: no
    /// broker).
    fn broker_up(&self) -> Option<Arc<AtomicBool>> {
        None
    }
    /// The worker reads no more: a source holding something other workers
    /// wait for (the webhook intake's lease) lets go of it now rather than
    /// when it would expire.
    fn stopped(&mut self) {}
}
