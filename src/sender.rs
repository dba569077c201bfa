//! Delivery: an approved email rendered, built and handed to the mailer,
//! and the outcome written back to the store.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use lettre::message::Mailbox;
use serde_json::Value;

use crate::config::{Config, EmailClass};
use crate::mailer::{self, MailError, Mailer, Outgoing};
use crate::pipeline::backoff;
use crate::render::Templates;
use crate::store::{EmailRow, Store, StoreError};

/// Attempts before a transiently failing email is given up as `failed`.
pub const MAX_ATTEMPTS: u32 = 8;

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent { reply: String },
    Retry { at: Timestamp, reply: String },
    Failed { reason: String },
}

pub struct Sender<M: Mailer> {
    templates: Arc<Templates>,
    mailer: M,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// Brand settings, `shop.*` in every template.
    shop: Value,
}

impl<M: Mailer> Sender<M> {
    pub fn new(config: &Config, templates: Arc<Templates>, mailer: M) -> Sender<M> {
        // Both were validated with the config.
        let from = config.mailer.from.parse().expect("validated mailer.from");
        let reply_to = config.mailer.reply_to.as_ref().and_then(|r| r.parse().ok());
        Sender {
            templates,
            mailer,
            from,
            reply_to,
            shop: serde_json::to_value(&config.shop).unwrap_or(Value::Null),
        }
    }

    /// Renders and sends one approved email. Never panics, never loses the
    /// email: every path ends in an [`Outcome`].
    pub async fn deliver(&self, email: &EmailRow, now: Timestamp) -> Outcome {
        let Some(recipient) = email.recipient.clone() else {
            return Outcome::Failed {
                reason: "no recipient".to_owned(),
            };
        };
        let locale = email.locale.as_deref().unwrap_or("en");
        let mut data = email.data.clone();
        data["shop"] = self.shop.clone();
        let rendered = match self.templates.render(&email.template, locale, &data) {
            Ok(r) => r,
            Err(problems) => {
                return Outcome::Failed {
                    reason: format!("render: {problems}"),
                };
            }
        };
        let message_id = mailer::message_id(&email.key, &self.from);
        let name = data["customer"]["name"].as_str();
        let unsubscribe = match email.class {
            EmailClass::Marketing => data["unsubscribe_url"].as_str(),
            EmailClass::Transactional => None,
        };
        let message = match mailer::build(
            &self.from,
            self.reply_to.as_ref(),
            &recipient,
            name,
            &rendered,
            &message_id,
            now,
            unsubscribe,
        ) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Failed {
                    reason: e.to_string(),
                };
            }
        };
        let outgoing = Outgoing {
            key: email.key.clone(),
            message_id,
            recipient,
            message,
        };
        match self.mailer.send(&outgoing).await {
            Ok(reply) => Outcome::Sent { reply },
            Err(MailError::Transient(reply)) if email.attempts + 1 < MAX_ATTEMPTS => {
                let jitter = f64::from(jitter_of(&email.key, email.attempts)) / f64::from(u16::MAX);
                Outcome::Retry {
                    at: now + backoff(email.attempts, jitter),
                    reply,
                }
            }
            Err(e) => Outcome::Failed {
                reason: e.to_string(),
            },
        }
    }

    /// Delivers and records the outcome in `store`.
    pub async fn deliver_and_record<S: Store>(
        &self,
        email: &EmailRow,
        store: &Arc<Mutex<S>>,
    ) -> Result<Outcome, StoreError> {
        let outcome = self.deliver(email, Timestamp::now()).await;
        let store = Arc::clone(store);
        let (id, recorded) = (email.id, outcome.clone());
        tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match recorded {
                Outcome::Sent { reply } => store.mark_sent(id, Timestamp::now(), &reply),
                Outcome::Retry { at, reply } => store.mark_retry(id, at, &reply),
                Outcome::Failed { reason } => store.mark_failed(id, &reason),
            }
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        Ok(outcome)
    }
}

/// Jitter that differs per email and attempt but needs no random source.
fn jitter_of(key: &str, attempt: u32) -> u16 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("{key}#{attempt}").as_bytes());
    u16::from_be_bytes([hash[0], hash[1]])
}
