//! JSON lines from a file or standard input.
//!
//! A file's position is the byte offset of the next line, so a restart seeks
//! straight back to where the last committed batch ended. Standard input
//! cannot seek: a restart reads it from the start and the dedup of event ids
//! gives each event effect once. Standard input is a stream (`tail -f
//! events.jsonl | aftercare run`): a batch takes what has arrived, and when
//! nothing comes for `batch_wait` the worker goes on with its timers.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, sync_channel};
use std::time::Duration;

use serde_json::json;

use super::{Batch, Entry, Position, Source, SourceError};

pub struct FileSource {
    name: String,
    path: Option<PathBuf>,
    input: Input,
    offset: u64,
    line: u64,
}

enum Input {
    File(Box<dyn BufRead + Send>),
    /// Lines read by a thread of their own; an empty line is the end.
    Stream {
        lines: Receiver<std::io::Result<Vec<u8>>>,
        wait: Duration,
    },
}

/// Reads standard input line by line on a thread of its own.
fn stdin_lines() -> Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = sync_channel(10_000);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let read = stdin.read_until(b'\n', &mut line);
            let end = matches!(read, Ok(0) | Err(_));
            if tx.send(read.map(|_| line)).is_err() || end {
                return;
            }
        }
    });
    rx
}

impl FileSource {
    /// The store key of a file's position.
    pub fn position_key(&self) -> &str {
        &self.name
    }

    /// Resumes after a committed position (`offset:line`). Standard input
    /// cannot seek; a file shorter than the position was replaced and is
    /// read from the start (the dedup of event ids sorts that out).
    pub fn seek(&mut self, position: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let Some((offset, line)) = position
            .split_once(':')
            .and_then(|(o, l)| Some((o.parse::<u64>().ok()?, l.parse::<u64>().ok()?)))
        else {
            return Ok(());
        };
        let mut file = File::open(path)?;
        if file.metadata()?.len() < offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(offset))?;
        self.input = Input::File(Box::new(BufReader::new(file)));
        self.offset = offset;
        self.line = line;
        Ok(())
    }

    /// `-` reads standard input, as a stream: a batch waits at most `wait`
    /// for its first line.
    pub fn open(path: &str, wait: Duration) -> std::io::Result<FileSource> {
        if path == "-" {
            return Ok(FileSource {
                name: "stdin".to_owned(),
                path: None,
                input: Input::Stream {
                    lines: stdin_lines(),
                    wait,
                },
                offset: 0,
                line: 0,
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
        })
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        while batch.entries.len() < max {
            let first = batch.entries.is_empty();
            let raw = match &mut self.input {
                Input::File(reader) => {
                    let mut raw = Vec::new();
                    reader.read_until(b'\n', &mut raw).map(|_| raw)
                }
                Input::Stream { lines, wait } => {
                    let next = if first {
                        lines
                            .recv_timeout(*wait)
                            .map_err(|e| e == RecvTimeoutError::Timeout)
                    } else {
                        lines.try_recv().map_err(|e| e == TryRecvError::Empty)
                    };
                    match next {
                        Ok(line) => line,
                        // Nothing more for now.
                        Err(true) => {
                            batch.caught_up = true;
                            break;
                        }
                        // The reader thread is gone: the end.
                        Err(false) => Ok(Vec::new()),
                    }
                }
            };
            let mut raw = raw.map_err(|error| SourceError::Io {
                name: self.name.clone(),
                error,
            })?;
            let n = raw.len();
            if n == 0 {
                batch.caught_up = true;
                batch.finished = true;
                break;
            }
            let start = self.offset;
            self.offset += n as u64;
            self.line += 1;
            while raw.last().is_some_and(|b| b.is_ascii_whitespace()) {
                raw.pop();
            }
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let coordinates = match &self.path {
                Some(path) => json!({"path": path, "line": self.line, "offset": start}),
                None => json!({"path": "-", "line": self.line, "offset": start}),
            };
            batch.entries.push(Entry {
                raw,
                key: None,
                coordinates,
                position: Position {
                    key: self.name.clone(),
                    value: format!("{}:{}", self.offset, self.line),
                },
            });
        }
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
        let mut src = FileSource::open(path, Duration::ZERO).unwrap();
        let first = src.next_batch(2).unwrap();
        assert_eq!(first.entries.len(), 2);
        assert_eq!(first.entries[1].raw, b"{\"a\":2}");
        assert_eq!(first.entries[1].coordinates["line"], 3);
        assert!(!first.finished);

        let mut again = FileSource::open(path, Duration::ZERO).unwrap();
        again.seek(&first.entries[1].position.value).unwrap();
        let rest = again.next_batch(10).unwrap();
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.entries[0].raw, b"{\"a\":3}");
        assert_eq!(rest.entries[0].coordinates["line"], 4);
        assert!(rest.finished);
    }
}
