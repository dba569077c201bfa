//! Event sources: where raw events come from, and where bad ones go.
//!
//! A source hands out raw events with their coordinates; decoding happens in
//! the pipeline, so that every source dead-letters the same way. The
//! position after each event is what the store commits with the batch, and
//! what a restart resumes from.

mod dead_letter;
mod file;
pub mod kafka;

pub use dead_letter::{DeadLetters, REASON_MAX_BYTES};
pub use file::FileSource;
pub use kafka::KafkaSource;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;

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
}
