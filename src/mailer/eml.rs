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
    /// Makes the folder (and its missing parents) private to the owner
    /// (0700), whatever the umask: emails hold addresses and orders. An
    /// existing folder is left as it is.
    pub fn new(dir: &Path) -> std::io::Result<EmlMailer> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)?;
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
        write_private(&tmp, &email.message.formatted())
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        Ok(format!("written to {}", path.display()))
    }
}

/// Writes `bytes` to a file only its owner can read (0600), whatever the
/// umask; a file left there by a crash is truncated and made 0600 too.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;

    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .await?;
    file.write_all(bytes).await?;
    file.flush().await
}
