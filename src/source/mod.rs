//! Event sources: where raw events come from, and where bad ones go.
//!
//! A source hands out raw events with their coordinates; decoding happens in
//! the pipeline, so that every source dead-letters the same way. The
//! position after each event is what the store commits with the batch, and
//! what a restart resumes from.

mod dead_letter;
mod file;

pub use dead_letter::DeadLetters;
pub use file::FileSource;

use serde_json::Value;

/// One raw event and where it came from.
#[derive(Debug, Clone)]
pub struct Entry {
    pub raw: Vec<u8>,
    /// Where the event is, for the dead-letter record and logs:
    /// `{"path": ..., "line": 12, "offset": 3456}`.
    pub coordinates: Value,
    /// The position to commit once this event is applied (the next one's
    /// start), as the store keeps it.
    pub position_after: String,
}

/// A batch of raw events.
#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The source has nothing more now (end of file).
    pub caught_up: bool,
    /// The source will never have more (end of a file that is not followed).
    pub finished: bool,
}

pub trait Source: Send {
    /// The key under which the store keeps this source's position.
    fn name(&self) -> &str;
    /// Resumes after a committed position.
    fn seek(&mut self, position: &str) -> std::io::Result<()>;
    /// Up to `max` events.
    fn next_batch(&mut self, max: usize) -> std::io::Result<Batch>;
}
