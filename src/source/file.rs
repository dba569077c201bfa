//! JSON lines from a file or standard input.
//!
//! A file's position is the byte offset of the next line, so a restart seeks
//! straight back to where the last committed batch ended. Standard input
//! cannot seek: a restart reads it from the start and the dedup of event ids
//! gives each event effect once.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::json;

use super::{Batch, Entry, Position, Source, SourceError};

pub struct FileSource {
    name: String,
    path: Option<PathBuf>,
    reader: Box<dyn BufRead + Send>,
    offset: u64,
    line: u64,
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
        self.reader = Box::new(BufReader::new(file));
        self.offset = offset;
        self.line = line;
        Ok(())
    }

    /// `-` reads standard input.
    pub fn open(path: &str) -> std::io::Result<FileSource> {
        if path == "-" {
            return Ok(FileSource {
                name: "stdin".to_owned(),
                path: None,
                reader: Box::new(BufReader::new(std::io::stdin())),
                offset: 0,
                line: 0,
            });
        }
        let file = File::open(path)?;
        let canonical = std::fs::canonicalize(path)?;
        Ok(FileSource {
            name: format!("file:{}", canonical.display()),
            path: Some(canonical),
            reader: Box::new(BufReader::new(file)),
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
            let mut raw = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut raw)
                .map_err(|error| SourceError::Io {
                    name: self.name.clone(),
                    error,
                })?;
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
        let mut src = FileSource::open(path).unwrap();
        let first = src.next_batch(2).unwrap();
        assert_eq!(first.entries.len(), 2);
        assert_eq!(first.entries[1].raw, b"{\"a\":2}");
        assert_eq!(first.entries[1].coordinates["line"], 3);
        assert!(!first.finished);

        let mut again = FileSource::open(path).unwrap();
        again.seek(&first.entries[1].position.value).unwrap();
        let rest = again.next_batch(10).unwrap();
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.entries[0].raw, b"{\"a\":3}");
        assert_eq!(rest.entries[0].coordinates["line"], 4);
        assert!(rest.finished);
    }
}
