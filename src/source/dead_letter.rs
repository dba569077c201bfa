//! The dead-letter file: invalid events, kept with why and where.
//!
//! One JSON object per line: `raw` (the event as received), `reason`,
//! `source` and `coordinates`. Written and synced before the batch's
//! position is committed, so a bad event is never lost; after a crash in
//! between it may be written twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub struct DeadLetters {
    /// `None`: count and log only (`simulate` has no side effects).
    path: Option<PathBuf>,
    file: Option<BufWriter<File>>,
    /// Records written since the last sync.
    unsynced: usize,
    pub written: usize,
}

impl DeadLetters {
    /// Nothing is created until the first invalid event.
    pub fn new(path: &Path) -> DeadLetters {
        DeadLetters {
            path: Some(path.to_owned()),
            file: None,
            unsynced: 0,
            written: 0,
        }
    }

    /// Counts invalid events without writing them anywhere.
    pub fn discard() -> DeadLetters {
        DeadLetters {
            path: None,
            file: None,
            unsynced: 0,
            written: 0,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn write(
        &mut self,
        source: &str,
        coordinates: &Value,
        raw: &[u8],
        reason: &str,
    ) -> std::io::Result<()> {
        self.written += 1;
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.file.is_none() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            self.file = Some(BufWriter::new(file));
        }
        let record = json!({
            "raw": String::from_utf8_lossy(raw),
            "reason": reason,
            "source": source,
            "coordinates": coordinates,
        });
        let file = self.file.as_mut().expect("opened above");
        serde_json::to_writer(&mut *file, &record)?;
        file.write_all(b"\n")?;
        self.unsynced += 1;
        Ok(())
    }

    /// Makes what was written durable; call before committing positions.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        if let Some(file) = self.file.as_mut() {
            file.flush()?;
            file.get_ref().sync_data()?;
        }
        self.unsynced = 0;
        Ok(())
    }
}
