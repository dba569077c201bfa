//! JSON lines from a file or standard input.
//!
//! A file's position is the byte offset of the next line, so a restart seeks
//! straight back to where the last committed batch ended. Standard input
//! cannot seek: a restart reads it from the start and the dedup of event ids
//! gives each event effect once. Standard input is a stream (`tail -f
//! events.jsonl | aftercare run`): a batch takes what has arrived, and when
//! nothing comes for `batch_wait` the worker goes on with its timers.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;

use super::{Batch, OVERSIZED_PREFIX, Oversized, Position, RawMessage, Source, SourceError};
use crate::mapping::Mapper;
use crate::mapping::record::{Record, parse_kcat};

pub struct FileSource {
    name: String,
    path: Option<PathBuf>,
    input: Input,
    offset: u64,
    line: u64,
    /// What tells this file from another put at its path since: a digest
    /// of its first line, kept in its positions (`offset:line:digest`).
    /// `None` until the first line is read (and for standard input).
    fingerprint: Option<String>,
    /// `source.max_event_bytes`: the most of one line held in memory.
    limit: usize,
    /// Maps each line (or record) to native events (`source.format`).
    mapper: Option<Arc<Mapper>>,
}

enum Input {
    File(Box<dyn BufRead + Send>),
    /// Lines read by a thread of their own; an empty one is the end.
    Stream {
        lines: Receiver<std::io::Result<Line>>,
        budget: Arc<Budget>,
        wait: Duration,
    },
}

/// One line as read.
#[derive(Debug, Default)]
struct Line {
    /// The whole line without its `\n`, or only the first
    /// [`OVERSIZED_PREFIX`] bytes of an oversized one.
    raw: Vec<u8>,
    /// Bytes it took in the input, line end included (0: the end).
    consumed: u64,
    oversized: Option<Oversized>,
}

/// The digest a file's positions carry: of its first line as handed out
/// (line end and trailing blanks cut; of an oversized line, the prefix
/// kept), so that appending to the file never changes it.
fn digest(first_line: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(first_line)[..8])
}

/// The [`digest`] of `file`'s first line; `None` while it has no whole
/// line (nothing of it was handed out yet).
fn first_line_digest(file: &mut File, limit: usize) -> std::io::Result<Option<String>> {
    file.seek(SeekFrom::Start(0))?;
    let mut line = read_line(&mut BufReader::new(&mut *file), limit)?;
    trim_end(&mut line.raw);
    Ok((line.consumed > 0).then(|| digest(&line.raw)))
}

/// A line as handed out: its line end and trailing blanks cut.
fn trim_end(raw: &mut Vec<u8>) {
    while raw.last().is_some_and(|b| b.is_ascii_whitespace()) {
        raw.pop();
    }
}

/// Whether the byte before `offset` ends a line: a position is always at a
/// line's start.
fn follows_a_line_end(file: &mut File, offset: u64) -> std::io::Result<bool> {
    use std::io::Read;
    file.seek(SeekFrom::Start(offset - 1))?;
    let mut byte = [0u8];
    file.read_exact(&mut byte)?;
    Ok(byte[0] == b'\n')
}

/// Reads one line, holding at most about `limit` bytes of it: the rest of
/// a longer line is read and dropped, counted but not stored, so that
/// offsets and line numbers stay right behind it.
fn read_line(reader: &mut dyn BufRead, limit: usize) -> std::io::Result<Line> {
    // The line's text (`\r` included) up to one byte past the limit: any
    // more and it is over, whatever its line end.
    let keep = limit.saturating_add(2);
    let mut line = Line::default();
    let mut text: u64 = 0;
    let mut last = None;
    let mut ended = false;
    while !ended {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let (part, used) = match memchr::memchr(b'\n', chunk) {
            Some(i) => {
                ended = true;
                (&chunk[..i], i + 1)
            }
            None => (chunk, chunk.len()),
        };
        last = part.last().copied().or(last);
        text += part.len() as u64;
        let room = keep.saturating_sub(line.raw.len());
        line.raw.extend_from_slice(&part[..part.len().min(room)]);
        reader.consume(used);
        line.consumed += used as u64;
    }
    let size = text - u64::from(ended && last == Some(b'\r'));
    line.oversized = Oversized::check(size, limit);
    if line.oversized.is_some() {
        let prefix = crate::bounded::prefix(&line.raw, OVERSIZED_PREFIX).len();
        line.raw.truncate(prefix);
        line.raw.shrink_to_fit();
    }
    Ok(line)
}

/// The bytes of events a batch holds, about (it ends after the line that
/// goes over), and how many may wait for it on standard input (at least two
/// lines): with lines of up to `max_event_bytes` each, a count of lines
/// alone would let a file or a fast writer fill the memory.
const BATCH_BYTES: usize = 16 << 20;

/// Bytes read from standard input and not yet taken by a batch. The reader
/// waits while they are over `max` (but always hands over one line).
struct Budget {
    held: Mutex<usize>,
    taken: Condvar,
    max: usize,
}

impl Budget {
    fn reserve(&self, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held > 0 && held.saturating_add(bytes) > self.max {
            held = self
                .taken
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *held += bytes;
    }

    fn release(&self, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held = held.saturating_sub(bytes);
        self.taken.notify_one();
    }
}

/// Reads standard input line by line on a thread of its own.
fn stdin_lines(limit: usize) -> (Receiver<std::io::Result<Line>>, Arc<Budget>) {
    let (tx, rx) = sync_channel(10_000);
    let budget = Arc::new(Budget {
        held: Mutex::new(0),
        taken: Condvar::new(),
        max: BATCH_BYTES.max(limit.saturating_mul(2)),
    });
    let reserved = Arc::clone(&budget);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let read = read_line(&mut stdin, limit);
            let end = matches!(read, Ok(Line { consumed: 0, .. }) | Err(_));
            if let Ok(line) = &read {
                reserved.reserve(line.raw.len());
            }
            if tx.send(read).is_err() || end {
                return;
            }
        }
    });
    (rx, budget)
}

impl FileSource {
    /// The store key of a file's position.
    pub fn position_key(&self) -> &str {
        &self.name
    }

    /// Resumes after a committed position (`offset:line:digest`).
    /// Standard input cannot seek. A file put at the path since the
    /// position was stored (its first line's digest differs, it is shorter
    /// than the position, or, for a position stored without a digest, the
    /// position is not at a line's start) is read from the start: the
    /// dedup of event ids sorts that out, where seeking would skip the new
    /// file's events up to the old offset.
    pub fn seek(&mut self, position: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut parts = position.splitn(3, ':');
        let (Some(offset), Some(line)) = (
            parts.next().and_then(|o| o.parse::<u64>().ok()),
            parts.next().and_then(|l| l.parse::<u64>().ok()),
        ) else {
            return Ok(());
        };
        let stored = parts.next();
        let mut file = File::open(path)?;
        let current = first_line_digest(&mut file, self.limit)?;
        let same = file.metadata()?.len() >= offset
            && match stored {
                Some(stored) => current.as_deref() == Some(stored),
                None => offset == 0 || follows_a_line_end(&mut file, offset)?,
            };
        if !same {
            tracing::warn!(
                source = %self.name,
                position,
                "The file at this path is not the one the stored position is in (replaced \
                 since); reading it from the start: events applied before count as duplicates."
            );
            return Ok(());
        }
        self.fingerprint = current;
        file.seek(SeekFrom::Start(offset))?;
        self.input = Input::File(Box::new(BufReader::new(file)));
        self.offset = offset;
        self.line = line;
        Ok(())
    }

    /// `-` reads standard input, as a stream: a batch waits at most `wait`
    /// for its first line. A line over `max_event_bytes` is handed out as
    /// [`super::Entry::oversized`], its first bytes only.
    pub fn open(path: &str, wait: Duration, max_event_bytes: usize) -> std::io::Result<FileSource> {
        if path == "-" {
            let (lines, budget) = stdin_lines(max_event_bytes);
            return Ok(FileSource {
                name: "stdin".to_owned(),
                path: None,
                input: Input::Stream {
                    lines,
                    budget,
                    wait,
                },
                offset: 0,
                line: 0,
                fingerprint: None,
                limit: max_event_bytes,
                mapper: None,
            });
        }
        let file = File::open(path)?;
        let canonical = std::fs::canonicalize(path)?;
        Ok(FileSource {
            name: format!("file:{}", canonical.display()),
            path: Some(canonical),
            input: Input::File(Box::new(BufReader::new(file))),
            offset: 0,
            line: 0,
            fingerprint: None,
            limit: max_event_bytes,
            mapper: None,
        })
    }

    /// Maps every line with `mapper` (lines that are Kafka records: their
    /// payload, with their topic, key and headers) before handing it out.
    pub fn with_mapper(mut self, mapper: Option<Arc<Mapper>>) -> FileSource {
        self.mapper = mapper;
        self
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        let mut messages = Vec::new();
        let mut held = 0;
        while messages.len() < max && held < BATCH_BYTES {
            let first = messages.is_empty();
            let line = match &mut self.input {
                Input::File(reader) => read_line(reader.as_mut(), self.limit),
                Input::Stream {
                    lines,
                    budget,
                    wait,
                } => {
                    let next = if first {
                        lines
                            .recv_timeout(*wait)
                            .map_err(|e| e == RecvTimeoutError::Timeout)
                    } else {
                        lines.try_recv().map_err(|e| e == TryRecvError::Empty)
                    };
                    match next {
                        Ok(line) => {
                            if let Ok(line) = &line {
                                budget.release(line.raw.len());
                            }
                            line
                        }
                        // Nothing more for now.
                        Err(true) => {
                            batch.caught_up = true;
                            break;
                        }
                        // The reader thread is gone: the end.
                        Err(false) => Ok(Line::default()),
                    }
                }
            };
            let Line {
                mut raw,
                consumed,
                oversized,
            } = line.map_err(|error| SourceError::Io {
                name: self.name.clone(),
                error,
            })?;
            if consumed == 0 {
                batch.caught_up = true;
                batch.finished = true;
                break;
            }
            let start = self.offset;
            self.offset += consumed;
            self.line += 1;
            trim_end(&mut raw);
            if start == 0 && self.path.is_some() {
                self.fingerprint = Some(digest(&raw));
            }
            if oversized.is_none() && raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut coordinates = match &self.path {
                Some(path) => json!({"path": path, "line": self.line, "offset": start}),
                None => json!({"path": "-", "line": self.line, "offset": start}),
            };
            held += raw.len();
            // A line that is a Kafka record (a topic dumped with `kcat -J`)
            // stands for its message.
            let record = match oversized.is_none().then(|| parse_kcat(&raw)).flatten() {
                Some((record, origin)) => {
                    coordinates["record"] = json!({
                        "topic": origin.topic,
                        "partition": origin.partition,
                        "offset": origin.offset,
                    });
                    record
                }
                None => Record {
                    body: raw,
                    ..Record::default()
                },
            };
            messages.push(RawMessage {
                record,
                coordinates,
                position: Position {
                    key: self.name.clone(),
                    value: match &self.fingerprint {
                        Some(digest) => format!("{}:{}:{digest}", self.offset, self.line),
                        None => format!("{}:{}", self.offset, self.line),
                    },
                },
                oversized,
            });
        }
        batch.entries = super::entries(self.mapper.as_deref(), messages);
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn resumes_after_a_committed_position() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{{\"a\":1}}\n\n{{\"a\":2}}\r\n{{\"a\":3}}").unwrap();
        let path = f.path().to_str().unwrap();
        let mut src = open(path);
        let first = src.next_batch(2).unwrap();
        assert_eq!(first.entries.len(), 2);
        assert_eq!(first.entries[1].raw, b"{\"a\":2}");
        assert_eq!(first.entries[1].coordinates["line"], 3);
        assert!(!first.finished);

        let mut again = open(path);
        again.seek(&first.entries[1].position.value).unwrap();
        let rest = again.next_batch(10).unwrap();
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.entries[0].raw, b"{\"a\":3}");
        assert_eq!(rest.entries[0].coordinates["line"], 4);
        assert!(rest.finished);
    }

    /// `path` as `run` opens it, events up to 1 MiB.
    fn open(path: &str) -> FileSource {
        FileSource::open(path, Duration::ZERO, 1 << 20).unwrap()
    }

    /// The lines `src` hands out from here to the end.
    fn rest(src: &mut FileSource) -> Vec<String> {
        let batch = src.next_batch(100).unwrap();
        assert!(batch.finished);
        batch
            .entries
            .iter()
            .map(|e| String::from_utf8(e.raw.clone()).unwrap())
            .collect()
    }

    #[test]
    fn lines_appended_after_a_position_are_read_on_from_it() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{{\"a\":1}}\n{{\"a\":2}}").unwrap();
        let path = f.path().to_str().unwrap().to_owned();
        let path = path.as_str();
        let mut src = open(path);
        let read = src.next_batch(10).unwrap();
        let position = read.entries[1].position.value.clone();
        assert_eq!(position.split(':').count(), 3, "{position}");
        writeln!(f, "{{\"a\":3}}").unwrap();
        let mut again = open(path);
        again.seek(&position).unwrap();
        assert_eq!(rest(&mut again), ["{\"a\":3}"]);
        // The position of what follows still names the same file.
        let mut third = open(path);
        third.seek(&position).unwrap();
        let batch = third.next_batch(10).unwrap();
        assert_eq!(
            batch.entries[0].position.value.rsplit(':').next(),
            position.rsplit(':').next()
        );
    }

    #[test]
    fn a_file_put_at_the_path_since_its_position_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n").unwrap();
        let path = path.to_str().unwrap();
        let mut src = open(path);
        let position = src.next_batch(10).unwrap().entries[1]
            .position
            .value
            .clone();
        // Another file, longer than the position: seeking to it would skip
        // its first events and cut a line in two.
        std::fs::write(path, "{\"b\":1}\n{\"b\":22}\n{\"b\":3}\n").unwrap();
        let mut again = open(path);
        again.seek(&position).unwrap();
        assert_eq!(rest(&mut again), ["{\"b\":1}", "{\"b\":22}", "{\"b\":3}"]);
    }

    #[test]
    fn a_position_stored_without_a_digest_is_trusted_only_at_a_line_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"b\":1}\n{\"b\":22}\n{\"b\":3}\n").unwrap();
        let path = path.to_str().unwrap();
        // Stored by an earlier version: `offset:line`. 8 is the start of
        // the second line...
        let mut at_start = open(path);
        at_start.seek("8:1").unwrap();
        assert_eq!(rest(&mut at_start), ["{\"b\":22}", "{\"b\":3}"]);
        // ...9 is inside it: another file was there.
        let mut inside = open(path);
        inside.seek("9:1").unwrap();
        assert_eq!(rest(&mut inside), ["{\"b\":1}", "{\"b\":22}", "{\"b\":3}"]);
    }

    /// A source over any reader, as `open` makes one over a file.
    fn over(reader: impl std::io::Read + Send + 'static, limit: usize) -> FileSource {
        FileSource {
            name: "test".to_owned(),
            path: None,
            input: Input::File(Box::new(BufReader::new(reader))),
            offset: 0,
            line: 0,
            fingerprint: None,
            limit,
            mapper: None,
        }
    }

    #[test]
    fn a_line_over_the_limit_is_skipped_to_its_end_and_the_next_line_read() {
        let big = format!("{{\"name\":\"{}\"}}", "ա".repeat(25_000));
        let text = format!("{{\"a\":1}}\n{big}\r\n{{\"a\":3}}\n");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let path = f.path().to_str().unwrap();
        let mut src = FileSource::open(path, Duration::ZERO, 1024).unwrap();
        let batch = src.next_batch(10).unwrap();
        assert_eq!(batch.entries.len(), 3);
        let [first, oversized, third] = &batch.entries[..] else {
            unreachable!()
        };
        assert_eq!(first.oversized, None);
        assert_eq!(
            oversized.oversized,
            Some(Oversized {
                bytes: big.len() as u64,
                limit: 1024
            })
        );
        assert!(oversized.raw.len() <= OVERSIZED_PREFIX);
        assert!(big.as_bytes().starts_with(&oversized.raw));
        std::str::from_utf8(&oversized.raw).expect("cut on a character boundary");
        assert_eq!(oversized.coordinates["line"], 2);
        assert_eq!(oversized.coordinates["offset"], 8);
        assert_eq!(third.raw, b"{\"a\":3}");
        assert_eq!(third.oversized, None);
        assert_eq!(third.coordinates["line"], 3);
        assert_eq!(third.coordinates["offset"], 8 + big.len() + 2);

        // A restart after the oversized line reads on from the next one.
        let mut again = FileSource::open(path, Duration::ZERO, 1024).unwrap();
        again.seek(&oversized.position.value).unwrap();
        let rest = again.next_batch(10).unwrap();
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.entries[0].raw, b"{\"a\":3}");
        assert_eq!(rest.entries[0].coordinates["line"], 3);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_read_whole_whatever_its_line_end() {
        let exact = "x".repeat(1024);
        for text in [format!("{exact}\n"), format!("{exact}\r\n"), exact.clone()] {
            let mut src = over(std::io::Cursor::new(text.clone().into_bytes()), 1024);
            let batch = src.next_batch(10).unwrap();
            assert_eq!(batch.entries.len(), 1, "{text:?}");
            assert_eq!(batch.entries[0].oversized, None, "{text:?}");
            assert_eq!(batch.entries[0].raw, exact.as_bytes());
        }
        let mut src = over(std::io::Cursor::new(format!("{exact}y\n")), 1024);
        let batch = src.next_batch(10).unwrap();
        assert_eq!(batch.entries[0].oversized.map(|o| o.bytes), Some(1025));
    }

    /// Lines just under the limit: a batch holds a bounded number of bytes,
    /// not `max` lines of them.
    #[test]
    fn a_batch_of_large_lines_is_bounded_in_bytes() {
        let line = format!("{}\n", "x".repeat(1 << 20));
        let mut src = over(std::io::Cursor::new(line.repeat(40)), 2 << 20);
        let mut read = 0;
        loop {
            let batch = src.next_batch(500).unwrap();
            let held: usize = batch.entries.iter().map(|e| e.raw.len()).sum();
            assert!(held <= BATCH_BYTES + (1 << 20), "{held}");
            read += batch.entries.len();
            if batch.finished {
                break;
            }
            assert!(!batch.entries.is_empty());
        }
        assert_eq!(read, 40);
    }

    /// A line of hundreds of megabytes is read through without being held:
    /// what the entry keeps is a bounded prefix.
    #[test]
    fn a_huge_line_is_not_held_in_memory() {
        let huge: u64 = 256 << 20;
        let input = std::io::Read::chain(
            std::io::Read::take(std::io::repeat(b'x'), huge),
            std::io::Cursor::new(b"\n{\"a\":2}\n".to_vec()),
        );
        let mut src = over(input, 1 << 20);
        let batch = src.next_batch(10).unwrap();
        assert_eq!(batch.entries.len(), 2);
        let oversized = &batch.entries[0];
        assert_eq!(oversized.oversized.map(|o| o.bytes), Some(huge));
        assert_eq!(oversized.raw.len(), OVERSIZED_PREFIX);
        assert!(oversized.raw.capacity() <= 2 * OVERSIZED_PREFIX);
        assert_eq!(batch.entries[1].raw, b"{\"a\":2}");
        assert_eq!(batch.entries[1].coordinates["offset"], huge + 1);
        assert_eq!(batch.entries[1].position.value, format!("{}:2", huge + 9));
    }
}
