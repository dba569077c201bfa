//! SMTP through lettre's pooled async transport.
//!
//! Plain SMTP for now; TLS, AUTH, retries by reply class and per-domain
//! limits build on this.

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{MailError, Mailer, Outgoing};
use crate::config::SmtpConfig;

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl SmtpMailer {
    pub fn new(config: &SmtpConfig) -> SmtpMailer {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(config.timeout))
            .pool_config(PoolConfig::new().max_size(config.pool_size))
            .build();
        SmtpMailer { transport }
    }
}

impl Mailer for SmtpMailer {
    async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
        match self.transport.send(email.message.clone()).await {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
            Err(e) => Err(MailError::Transient(e.to_string())),
        }
    }
}
