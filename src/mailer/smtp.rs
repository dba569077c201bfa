//! SMTP with a pool of lettre connections, TLS (STARTTLS required, or
//! implicit) and AUTH (PLAIN, LOGIN).
//!
//! The transaction is driven command by command with lettre's
//! `AsyncSmtpConnection`, so that the outcome class is exact:
//! - *transient*: a 4xx reply, or a failure before the message was sent
//!   (connecting, TLS, a connection that broke at MAIL, RCPT or DATA);
//! - *permanent*: a 5xx reply;
//! - *ambiguous*: the connection broke or timed out while the message was
//!   being sent or its reply awaited: the server may have it.
//!
//! Sockets are opened with `TCP_NODELAY`: each command goes in a small
//! write of its own (and lettre's `message`, the fallback below, writes a
//! message's final `.` apart), which Nagle's algorithm would otherwise hold
//! back for a delayed ACK (some 40 ms per message).
//!
//! The message itself is dot-stuffed here, once per email and in one pass
//! ([`Content`]), and written with its final dot at once: lettre's
//! `message` stuffs byte by byte (a `Vec::push` each, 6 % of the worker's
//! CPU end to end) and again for every attempt.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::ClientId;
use tokio::sync::Semaphore;

use super::{MailError, Mailer, Outgoing};
use crate::config::{ConfigError, SmtpConfig, TlsMode};

/// A pooled connection unused for longer is checked with NOOP first.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(10);

pub struct SmtpMailer {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Limit on connecting and on each command.
    timeout: Duration,
    /// Limit on one whole transaction.
    transaction_timeout: Duration,
    /// Connections in use at once.
    slots: Semaphore,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl SmtpMailer {
    /// Reads the CA file and the password. Fails on a setting that cannot
    /// work (exit 64).
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let tls_parameters = match config.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Tls => {
                let mut params = TlsParameters::builder(config.host.clone());
                if let Some(ca) = &config.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| {
                        bad("mailer.smtp.ca_file", format!("{}: {e}", ca.display()))
                    })?;
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| bad("mailer.smtp.ca_file", e.to_string()))?;
                    params = params.add_root_certificate(cert);
                }
                Some(
                    params
                        .build_rustls()
                        .map_err(|e| bad("mailer.smtp.tls", e.to_string()))?,
                )
            }
        };
        let credentials = match &config.username {
            Some(user) => Some(Credentials::new(user.clone(), config.password()?)),
            None => None,
        };
        let hello = gethostname::gethostname()
            .into_string()
            .map(ClientId::Domain)
            .unwrap_or_default();
        Ok(SmtpMailer {
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            tls_parameters,
            credentials,
            hello,
            timeout: config.timeout,
            transaction_timeout: config.transaction_timeout,
            slots: Semaphore::new(config.pool_size.max(1) as usize),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A new session: connected, TLS as configured, authenticated.
    async fn connect(&self) -> Result<AsyncSmtpConnection, MailError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            MailError::Transient(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let mut conn = if self.tls == TlsMode::Tls {
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                self.tls_parameters.clone(),
                None,
            )
            .await
            .map_err(|e| transient("connecting to", &e))?
        } else {
            let tcp = tokio::time::timeout(
                self.timeout,
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| transient("timed out connecting to", &"no answer"))?
            .map_err(|e| transient("connecting to", &e))?;
            tcp.set_nodelay(true)
                .map_err(|e| transient("connecting to", &e))?;
            let stream: Box<dyn AsyncTokioStream> = Box::new(tcp);
            tokio::time::timeout(
                self.timeout,
                AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
            )
            .await
            .map_err(|_| transient("no greeting from", &"timeout"))?
            .map_err(|e| by_code(&e).unwrap_or_else(|| transient("greeting from", &e)))?
        };
        if self.tls == TlsMode::Starttls {
            let params = self.tls_parameters.clone().expect("made for STARTTLS");
            // Required: a server that does not offer it gets nothing.
            if let Err(e) = conn.starttls(params, &self.hello).await {
                tracing::error!(host = %self.host, error = %e, "STARTTLS failed; nothing is sent in plaintext.");
                return Err(by_code(&e).unwrap_or_else(|| transient("STARTTLS with", &e)));
            }
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| by_code(&e).unwrap_or_else(|| transient("AUTH with", &e)))?;
        }
        Ok(conn)
    }

    /// A pooled session if one is fit, else a new one. `true`: pooled.
    async fn session(&self) -> Result<(AsyncSmtpConnection, bool), MailError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some((mut conn, since)) = pooled else {
                return Ok((self.connect().await?, false));
            };
            if conn.has_broken() {
                continue;
            }
            if since.elapsed() < CHECK_IDLE_AFTER || conn.test_connected().await {
                return Ok((conn, true));
            }
        }
    }

    /// One transaction on `conn`; `sent` is set once the message itself
    /// starts to go out.
    async fn transact(
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        body: &Content<'_>,
        sent: &AtomicBool,
    ) -> Result<String, Failure> {
        let before = |e: lettre::transport::smtp::Error| match by_code(&e) {
            Some(m) => Failure::Replied(m),
            None => Failure::Broken(MailError::Transient(e.to_string())),
        };
        conn.command(Mail::new(envelope.from().cloned(), vec![]))
            .await
            .map_err(before)?;
        for to in envelope.to() {
            conn.command(Rcpt::new(to.clone(), vec![]))
                .await
                .map_err(before)?;
        }
        conn.command(Data).await.map_err(before)?;
        sent.store(true, Ordering::SeqCst);
        let reply = match body {
            Content::Stuffed(text) => conn.command(text).await,
            Content::Raw(bytes) => conn.message(bytes).await,
        };
        match reply {
            Ok(reply) => Ok(format!(
                "{} {}",
                reply.code(),
                reply.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => Err(match by_code(&e) {
                // The server answered the final dot: that answer stands.
                Some(m) => Failure::Replied(m),
                None => Failure::Broken(MailError::Ambiguous(e.to_string())),
            }),
        }
    }
}

/// A message as it goes after `DATA`.
enum Content<'a> {
    /// Dot-stuffed, with the final `CRLF . CRLF`: given to lettre's
    /// `command`, which writes what it is given as it is and reads the
    /// reply (what its `message` does after stuffing).
    Stuffed(String),
    /// Not UTF-8 (lettre's messages are 7-bit, so never in practice):
    /// lettre stuffs it.
    Raw(&'a [u8]),
}

impl Content<'_> {
    fn of(message: &[u8]) -> Content<'_> {
        match String::from_utf8(dot_stuffed(message)) {
            Ok(text) => Content::Stuffed(text),
            Err(_) => Content::Raw(message),
        }
    }
}

/// `message` made transparent (RFC 5321, 4.5.2): a dot that starts a line
/// doubled, a line being what follows `CRLF` or the start; then the final
/// `CRLF . CRLF`. The same bytes as lettre's codec and final write.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 256 + 8);
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut rest = message;
    while let Some(at) = memchr::memmem::find(rest, b"\r\n.") {
        out.extend_from_slice(&rest[..at + 3]);
        out.push(b'.');
        rest = &rest[at + 3..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

/// How a transaction failed.
enum Failure {
    /// The server answered with a code; the session may go on.
    Replied(MailError),
    /// The session broke.
    Broken(MailError),
}

/// A 4xx or 5xx reply, as our class.
fn by_code(e: &lettre::transport::smtp::Error) -> Option<MailError> {
    if e.is_permanent() {
        Some(MailError::Permanent(e.to_string()))
    } else if e.is_transient() {
        Some(MailError::Transient(e.to_string()))
    } else {
        None
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
        let _slot = self.slots.acquire().await.expect("never closed");
        let envelope = email.message.envelope().clone();
        let formatted = email.message.formatted();
        let body = Content::of(&formatted);
        let sent = AtomicBool::new(false);
        let attempt = async {
            // A pooled session the server dropped fails before the message
            // goes out: then one fresh session is tried at once.
            let (mut conn, pooled) = self.session().await?;
            let mut result = Self::transact(&mut conn, &envelope, &body, &sent).await;
            if pooled && matches!(result, Err(Failure::Broken(_))) && !sent.load(Ordering::SeqCst) {
                conn = self.connect().await?;
                result = Self::transact(&mut conn, &envelope, &body, &sent).await;
            }
            match result {
                Ok(reply) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((conn, Instant::now()));
                    Ok(reply)
                }
                Err(Failure::Replied(e)) => {
                    // Refused, but the session is fine: reset it for the next.
                    if conn.command(Rset).await.is_ok() {
                        self.idle
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((conn, Instant::now()));
                    }
                    Err(e)
                }
                Err(Failure::Broken(e)) => {
                    conn.abort().await;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(self.transaction_timeout, attempt).await {
            Ok(result) => result,
            Err(_) if sent.load(Ordering::SeqCst) => Err(MailError::Ambiguous(format!(
                "no reply within {:?} after the message was sent",
                self.transaction_timeout
            ))),
            Err(_) => Err(MailError::Transient(format!(
                "no progress within {:?}",
                self.transaction_timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// lettre's codec (`ClientCodec::encode`, private), byte by byte, and
    /// the final dot its `message` writes after it.
    fn lettre_stuffed(message: &[u8]) -> Vec<u8> {
        #[derive(Clone, Copy)]
        enum At {
            Middle,
            Cr,
            Start,
        }
        let mut out = Vec::new();
        let mut at = At::Start;
        for &b in message {
            out.push(b);
            at = match (b, at) {
                (b'\r', _) => At::Cr,
                (b'\n', At::Cr) => At::Start,
                (b'.', At::Start) => {
                    out.push(b'.');
                    At::Middle
                }
                (_, At::Cr | At::Start) => At::Middle,
                (_, at) => at,
            };
        }
        out.extend_from_slice(b"\r\n.\r\n");
        out
    }

    #[test]
    fn dots_that_start_a_line_are_doubled() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b"\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b"a\r\n.b", b"a\r\n..b\r\n.\r\n"),
            (b"a\r\n.\r\n.", b"a\r\n..\r\n..\r\n.\r\n"),
            // Only after CRLF: a bare LF or CR does not start a line.
            (b"a\n.b\r.c", b"a\n.b\r.c\r\n.\r\n"),
            (b"a.b\r\n..", b"a.b\r\n...\r\n.\r\n"),
        ];
        for (message, sent) in cases {
            assert_eq!(
                dot_stuffed(message),
                sent,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
    }

    proptest! {
        #[test]
        fn stuffing_in_one_pass_sends_what_lettre_sends(
            message in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), any::<u8>()],
                0..200,
            )
        ) {
            prop_assert_eq!(dot_stuffed(&message), lettre_stuffed(&message));
        }
    }

    #[test]
    fn a_message_that_is_not_utf8_is_left_to_lettre() {
        assert!(matches!(Content::of(b"\xff\r\n."), Content::Raw(_)));
        assert!(
            matches!(Content::of(b"ok\r\n."), Content::Stuffed(ref s) if s == "ok\r\n..\r\n.\r\n")
        );
    }
}
