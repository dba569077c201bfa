//! Delivery: an approved email rendered, built and handed to the mailer,
//! and the outcome written back to the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use jiff::{SignedDuration, Timestamp};
use lettre::message::Mailbox;
use serde_json::Value;

use crate::config::{ClockKind, Config, RetryConfig};
use crate::journey::{EmailClass, JourneyRule, later};
use crate::mailer::{self, MailError, Mailer, Outgoing};
use crate::pipeline::{backoff, panic_message};
use crate::render::{Templates, variant_template};
use crate::store::EmailRow;
pub use crate::store::Outcome;
use crate::throttle::{Throttle, domain_of, is_deferral};

/// Whether a permanent reply says the mailbox does not exist: an enhanced
/// status code 5.1.x (RFC 3463: bad destination mailbox address).
pub fn is_bounce(reply: &str) -> bool {
    reply
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|word| {
            let mut parts = word.split('.');
            matches!(
                (parts.next(), parts.next(), parts.next(), parts.next()),
                (Some("5"), Some("1"), Some(d), None) if !d.is_empty()
            )
        })
}

/// How long one delivery spent in each phase the sender runs; `None`: a
/// phase not reached (an email expired, one that failed to render).
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// Rendering the templates and building the MIME message.
    pub render: Option<Duration>,
    /// Waiting for the recipient domain's turn (its concurrency, its rate).
    pub throttle: Option<Duration>,
    /// Handing the message to the mailer: the SMTP transaction, with the
    /// wait for a pooled session, or writing the `.eml` file.
    pub mail: Option<Duration>,
}

pub struct Sender<M: Mailer> {
    /// Swapped whole by a reload: a render sees one set, old or new.
    templates: Arc<ArcSwap<Templates>>,
    mailer: M,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// Brand settings, `shop.*` in every template.
    shop: Value,
    retry: RetryConfig,
    domains: Throttle,
    /// Each template's `expires_after`, on the machine's clock
    /// (`journeys.clock = "wall"`); `None`: nothing expires here.
    expiry: Option<HashMap<String, Duration>>,
}

impl<M: Mailer> Sender<M> {
    pub fn new(config: &Config, templates: Arc<ArcSwap<Templates>>, mailer: M) -> Sender<M> {
        // Both were validated with the config.
        let from = config.mailer.from.parse().expect("validated mailer.from");
        let reply_to = config.mailer.reply_to.as_ref().and_then(|r| r.parse().ok());
        Sender {
            templates,
            mailer,
            from,
            reply_to,
            shop: serde_json::to_value(&config.shop).unwrap_or(Value::Null),
            retry: config.sender.retry.clone(),
            domains: Throttle::new(config.sender.domains.clone()),
            expiry: (config.catch_up.clock == ClockKind::Wall).then(|| {
                config
                    .journeys
                    .iter()
                    .map(|rule| (rule.template.clone(), rule.expiry()))
                    .collect()
            }),
        }
    }

    /// Why `email` may not go out at `now` any more, if it may not.
    fn expired(&self, email: &EmailRow, now: Timestamp) -> Option<String> {
        let expiry = self.expiry.as_ref()?;
        let expiry = expiry
            .get(&email.template)
            .copied()
            .unwrap_or_else(|| JourneyRule::default_expiry(email.class));
        crate::journey::late::expired(email.due_at, now, expiry)
    }

    /// Renders and sends one approved email. Never panics, never loses the
    /// email: every path ends in an [`Outcome`].
    pub async fn deliver(&self, email: &EmailRow, now: Timestamp) -> Outcome {
        self.deliver_timed(email, now, &mut Phases::default()).await
    }

    /// [`Sender::deliver`], noting in `phases` how long each phase took.
    pub async fn deliver_timed(
        &self,
        email: &EmailRow,
        now: Timestamp,
        phases: &mut Phases,
    ) -> Outcome {
        if let Some(reason) = self.expired(email, now) {
            return Outcome::Expired { reason };
        }
        let Some(recipient) = email.recipient.clone() else {
            return Outcome::Failed {
                reason: "no recipient".to_owned(),
            };
        };
        let locale = email.locale.as_deref().unwrap_or("en");
        let mut data = email.data.clone();
        data["shop"] = self.shop.clone();
        // Wrapped once: every part renders from it without a copy.
        let data = handlebars::Context::from(data);
        let template = variant_template(&email.template, email.variant.as_deref());
        let message_id = mailer::message_id(&email.key, &self.from);
        let rendering = Instant::now();
        // A panic while rendering (a helper meeting data no bound foresaw)
        // fails this email alone, instead of the worker.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rendered = self
                .templates
                .load()
                .render_context(&template, locale, &data)
                .map_err(|problems| format!("render: {problems}"))?;
            let data = data.data();
            let name = data["customer"]["name"].as_str();
            let unsubscribe = match email.class {
                EmailClass::Marketing => data["unsubscribe_url"].as_str(),
                EmailClass::Transactional => None,
            };
            mailer::build(
                &self.from,
                self.reply_to.as_ref(),
                &recipient,
                name,
                &rendered,
                &message_id,
                now,
                unsubscribe,
            )
            .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|panic| Err(format!("internal error: {}", panic_message(panic.as_ref()))));
        phases.render = Some(rendering.elapsed());
        let message = match built {
            Ok(m) => m,
            Err(reason) => return Outcome::Failed { reason },
        };
        let outgoing = Outgoing {
            key: email.key.clone(),
            message_id,
            recipient,
            message,
        };
        let recipient = outgoing.recipient.clone();
        let domain = domain_of(&recipient);
        let first = email.first_attempt_at.unwrap_or(now);
        let max_age = SignedDuration::try_from(self.retry.max_age).unwrap_or(SignedDuration::MAX);
        let wait = |at: Timestamp, reply: String| {
            if at > later(first, max_age) {
                Outcome::Failed {
                    reason: format!("still deferred after {:?}: {reply}", self.retry.max_age),
                }
            } else {
                Outcome::Deferred { at, reply }
            }
        };
        let waiting = Instant::now();
        let slot = self.domains.slot(&domain).await;
        phases.throttle = Some(waiting.elapsed());
        // Checked with the slot in hand: a delivery queued behind the one
        // that was deferred must not go out.
        if let Some(until) = self.domains.deferred(&domain, Timestamp::now()) {
            return wait(until, format!("{domain} deferred delivery"));
        }
        let mailing = Instant::now();
        let sent = self.mailer.send(&outgoing).await;
        phases.mail = Some(mailing.elapsed());
        drop(slot);
        match sent {
            Ok(reply) => Outcome::Sent {
                at: Timestamp::now(),
                reply,
            },
            Err(MailError::Transient(reply)) if is_deferral(&reply) => {
                let reply = format!("transient: {reply}");
                let until = self.domains.defer(&domain, now);
                tracing::warn!(%domain, %until, %reply, "Domain deferred delivery; pausing it.");
                wait(until, reply)
            }
            Err(e @ (MailError::Transient(_) | MailError::Ambiguous(_))) => {
                let ambiguous = matches!(e, MailError::Ambiguous(_));
                let reply = e.to_string();
                let jitter = f64::from(jitter_of(&email.key, email.attempts)) / f64::from(u16::MAX);
                let at = later(
                    now,
                    backoff(
                        email.attempts,
                        self.retry.first_wait,
                        self.retry.max_wait,
                        jitter,
                    ),
                );
                let too_old = at > later(first, max_age);
                if email.attempts + 1 >= self.retry.max_attempts || too_old {
                    Outcome::Failed {
                        reason: format!("gave up after {} attempts: {reply}", email.attempts + 1),
                    }
                } else if ambiguous {
                    Outcome::Ambiguous { at, reply }
                } else {
                    Outcome::Retry { at, reply }
                }
            }
            Err(MailError::Permanent(reply)) if is_bounce(&reply) => Outcome::Bounced {
                address: recipient,
                reason: format!("permanent: {reply}"),
            },
            Err(e @ MailError::Permanent(_)) => Outcome::Failed {
                reason: e.to_string(),
            },
        }
    }
}

/// Jitter that differs per email and attempt but needs no random source.
fn jitter_of(key: &str, attempt: u32) -> u16 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(format!("{key}#{attempt}").as_bytes());
    u16::from_be_bytes([hash[0], hash[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_is_an_enhanced_code_5_1_x() {
        assert!(is_bounce("550 5.1.1 <gone@example.com>: no such mailbox"));
        assert!(is_bounce(
            "permanent: 550 5.1.10 Recipient address rejected"
        ));
        assert!(!is_bounce("550 5.7.1 Message rejected as spam"));
        assert!(!is_bounce("500 5.3.0 Error: command failed"));
        assert!(!is_bounce("550 5.1 half a code"));
        assert!(!is_bounce("550 15.1.1 not one"));
    }
}
