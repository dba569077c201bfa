//! SMTP through lettre's pooled async transport, with TLS (STARTTLS
//! required, or implicit) and AUTH (PLAIN, LOGIN).

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{MailError, Mailer, Outgoing};
use crate::config::{ConfigError, SmtpConfig, TlsMode};

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Limit on one whole transaction, connection included.
    transaction_timeout: std::time::Duration,
}

impl SmtpMailer {
    /// Builds the transport; reads the CA file and the password. Fails on a
    /// setting that cannot work (exit 64).
    pub fn new(config: &SmtpConfig) -> Result<SmtpMailer, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            key: key.to_owned(),
            reason,
        };
        let tls_parameters = || {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(ca) = &config.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| bad("mailer.smtp.ca_file", format!("{}: {e}", ca.display())))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| bad("mailer.smtp.ca_file", e.to_string()))?;
                params = params.add_root_certificate(cert);
            }
            params
                .build_rustls()
                .map_err(|e| bad("mailer.smtp.tls", e.to_string()))
        };
        let tls = match config.tls {
            TlsMode::None => Tls::None,
            TlsMode::Starttls => Tls::Required(tls_parameters()?),
            TlsMode::Tls => Tls::Wrapper(tls_parameters()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.pool_size));
        if let Some(user) = &config.username {
            builder = builder
                .credentials(Credentials::new(user.clone(), config.password()?))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(SmtpMailer {
            transport: builder.build(),
            transaction_timeout: config.transaction_timeout,
        })
    }
}

/// The outcome class of a failed transaction.
///
/// A reply code says it all: 4xx transient, 5xx permanent. Without one:
/// failing to connect (or to set up TLS) is transient, since the server
/// never saw the message; a connection that broke or a reply that never
/// came once the session was up is ambiguous, since lettre's pooled
/// transport does not say whether that was before or after the message
/// was sent. That counts some failures before DATA as ambiguous, never the
/// other way round.
fn classify(e: &lettre::transport::smtp::Error) -> MailError {
    let text = e.to_string();
    if e.is_permanent() {
        MailError::Permanent(text)
    } else if e.is_transient() {
        MailError::Transient(text)
    } else if e.is_tls() || e.is_client() || text.starts_with("Connection error") {
        if e.is_tls() || e.is_client() {
            tracing::error!(error = %e, "SMTP session refused on our side (TLS, or a required extension missing).");
        }
        MailError::Transient(text)
    } else {
        MailError::Ambiguous(text)
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
        let sent = tokio::time::timeout(
            self.transaction_timeout,
            self.transport.send(email.message.clone()),
        )
        .await;
        match sent {
            Ok(Ok(response)) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(MailError::Ambiguous(format!(
                "no reply within {:?}",
                self.transaction_timeout
            ))),
        }
    }
}
