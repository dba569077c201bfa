//! The embedded default mailer: one `.eml` file per email in a folder.
//!
//! The file name derives from the email's key and is written atomically
//! (temporary file, then rename), so a resend after a crash finds the file
//! already there and does not make a second one: delivery to a folder is
//! exactly once.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{MailError, Mailer, Outgoing};

pub struct EmlMailer {
    dir: PathBuf,
}

impl EmlMailer {
    pub fn new(dir: &Path) -> std::io::Result<EmlMailer> {
        std::fs::create_dir_all(dir)?;
        Ok(EmlMailer {
            dir: dir.to_owned(),
        })
    }

    /// `c-1001_welcome_o-5001-1a2b3c4d.eml`: readable, and unique even when
    /// two keys differ only in characters a file name cannot hold.
    pub fn file_name(key: &str) -> String {
        let readable: String = key
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' => c,
                _ => '_',
            })
            .take(120)
            .collect();
        let hash = Sha256::digest(key.as_bytes());
        format!("{readable}-{}.eml", hex::encode(&hash[..4]))
    }
}

impl Mailer for EmlMailer {
    async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
        let path = self.dir.join(Self::file_name(&email.key));
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(format!("already in {}", path.display()));
        }
        let tmp = path.with_extension("eml.tmp");
        let io = |e: std::io::Error| MailError::Transient(format!("{}: {e}", path.display()));
        tokio::fs::write(&tmp, email.message.formatted())
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(format!("written to {}", path.display()))
    }
}
