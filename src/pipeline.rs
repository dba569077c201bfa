//! Ingest and schedule: events into the store, due emails out of it.
//!
//! [`Pipeline::ingest`] applies a batch of raw events in one transaction:
//! decode (invalid ones to the dead-letter file), dedup, step the journey,
//! write the emails and the position. [`Pipeline::fire`] claims the emails
//! due by a given time, checks each against the journey as it is then, and
//! approves it for delivery or ends it with a reason.
//!
//! Time follows the events while there is a backlog: before an event is
//! applied, every email due by its `occurred_at` is fired first. So a
//! win-back due during a long outage goes out if no order came before it,
//! and stays cancelled if one did, exactly as if the events had arrived
//! live, and exactly as `simulate` plans it.

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::config::{EmailClass, Trigger};
use crate::event::Event;
use crate::journey::{Command, Journey, Journeys, Verdict};
use crate::render::Locales;
use crate::source::{DeadLetters, Entry};
use crate::store::{Addressee, EmailRow, Status, Store, StoreError, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the dead-letter file {path}: {error}")]
    DeadLetter { path: String, error: std::io::Error },
}

/// Counters for the summary and the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub duplicates: u64,
    pub invalid: u64,
    pub scheduled: u64,
    pub approved: u64,
    pub cancelled: u64,
    pub suppressed: u64,
}

/// What the templates need beyond the journey.
#[derive(Debug, Clone)]
pub struct Context {
    pub locales: Locales,
    pub default_timezone: String,
    /// Base of the unsubscribe link on marketing emails.
    pub unsubscribe_url: String,
}

pub struct Pipeline<S: Store> {
    store: S,
    journeys: Journeys,
    context: Context,
    fire_batch: usize,
    /// Earliest fire time of a pending email, kept so that the ingest loop
    /// need not ask the store before every event.
    next_fire: Option<Timestamp>,
    pub stats: Stats,
}

enum Applied {
    New,
    Duplicate,
    Rejected(String),
}

impl<S: Store> Pipeline<S> {
    pub fn new(
        mut store: S,
        journeys: Journeys,
        context: Context,
        fire_batch: usize,
    ) -> Result<Pipeline<S>, StoreError> {
        let next_fire = store.next_fire()?;
        Ok(Pipeline {
            store,
            journeys,
            context,
            fire_batch,
            next_fire,
            stats: Stats::default(),
        })
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn next_fire(&self) -> Option<Timestamp> {
        self.next_fire
    }

    /// Applies `entries` from `source`. `now` bounds how far timers may fire
    /// (`None`: follow the events only, for `simulate`). Approved emails are
    /// appended to `approved` for delivery once their transaction committed.
    pub fn ingest(
        &mut self,
        source: &str,
        entries: &[Entry],
        now: Option<Timestamp>,
        dead: &mut DeadLetters,
        approved: &mut Vec<EmailRow>,
    ) -> Result<(), PipelineError> {
        let mut i = 0;
        while i < entries.len() {
            let mut fire_until = None;
            let mut position = None;
            let mut tx = self.store.begin()?;
            while let Some(entry) = entries.get(i) {
                match Event::decode(&entry.raw) {
                    Err(invalid) => {
                        self.stats.invalid += 1;
                        tracing::warn!(source, coordinates = %entry.coordinates, error = %invalid, "Skipped invalid event.");
                        write_dead(dead, source, entry, &invalid.to_string())?;
                    }
                    Ok(event) => {
                        let bound = now.map_or(event.occurred_at, |n| n.min(event.occurred_at));
                        if self.next_fire.is_some_and(|t| t <= bound) {
                            fire_until = Some(bound);
                            break;
                        }
                        let applied = apply(
                            &mut tx,
                            &self.journeys,
                            &self.context.locales,
                            &event,
                            &mut self.next_fire,
                            &mut self.stats,
                        )?;
                        match applied {
                            Applied::New => self.stats.events += 1,
                            Applied::Duplicate => {
                                self.stats.duplicates += 1;
                                tracing::debug!(event_id = %event.id, "Skipped duplicate event.");
                            }
                            Applied::Rejected(reason) => {
                                self.stats.invalid += 1;
                                tracing::warn!(source, coordinates = %entry.coordinates, customer_id = %event.customer.id, error = %reason, "Skipped invalid event.");
                                write_dead(dead, source, entry, &reason)?;
                            }
                        }
                    }
                }
                position = Some(&entry.position_after);
                i += 1;
            }
            if let Some(position) = position {
                tx.set_position(source, position)?;
            }
            dead.sync().map_err(|error| PipelineError::DeadLetter {
                path: dead_path(dead),
                error,
            })?;
            tx.commit()?;
            if let Some(until) = fire_until {
                self.fire(until, approved)?;
            }
        }
        Ok(())
    }

    /// Decides every email due by `until`: approved ones are appended to
    /// `approved`, the others end cancelled or suppressed with a reason.
    pub fn fire(
        &mut self,
        until: Timestamp,
        approved: &mut Vec<EmailRow>,
    ) -> Result<(), StoreError> {
        loop {
            let mut tx = self.store.begin()?;
            let due = tx.due(until, self.fire_batch)?;
            if due.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(due.len());
            for mut email in due {
                let journey = tx.journey(&email.customer_id)?.unwrap_or_default();
                let to = addressee(&self.context.locales, &journey);
                let verdict = match &to.recipient {
                    None => Some((Verdict::Suppressed, "no address".to_owned())),
                    Some(address) if tx.is_suppressed(address)? => {
                        Some((Verdict::Suppressed, "address bounced".to_owned()))
                    }
                    Some(_) => {
                        self.journeys
                            .recheck(&journey, &email.template, email.order_id.as_deref())
                    }
                };
                if let Some((verdict, reason)) = verdict {
                    tracing::debug!(key = %email.key, %reason, "Email not sent.");
                    tx.decide(email.id, verdict, &reason, &to)?;
                    match verdict {
                        Verdict::Cancelled => self.stats.cancelled += 1,
                        Verdict::Suppressed => self.stats.suppressed += 1,
                    }
                    continue;
                }
                email.data =
                    template_data(&self.journeys, &self.context, &email, &journey, &to, until);
                tx.approve(email.id, &to, &email.data)?;
                email.status = Status::Sending;
                email.recipient = to.recipient;
                email.locale = Some(to.locale);
                self.stats.approved += 1;
                batch.push(email);
            }
            tx.commit()?;
            approved.append(&mut batch);
        }
        self.next_fire = self.store.next_fire()?;
        Ok(())
    }
}

/// The whole template data but `shop` (added at render time, so that a
/// brand change applies to emails already approved).
fn template_data(
    journeys: &Journeys,
    context: &Context,
    email: &EmailRow,
    journey: &Journey,
    to: &Addressee,
    now: Timestamp,
) -> Value {
    {
        let mut data = match &email.data {
            Value::Object(_) => email.data.clone(),
            _ => json!({}),
        };
        let p = &journey.profile;
        let timezone = p
            .timezone
            .as_deref()
            .filter(|tz| jiff::tz::TimeZone::get(tz).is_ok())
            .unwrap_or(&context.default_timezone);
        data["customer"] = json!({
            "id": email.customer_id,
            "email": to.recipient,
            "name": p.name,
            "locale": to.locale,
            "timezone": timezone,
        });
        data["email"] = json!({"template": email.template, "class": email.class.as_str()});
        data["unsubscribe_url"] = match email.class {
            EmailClass::Marketing => json!(format!(
                "{}?customer={}",
                context.unsubscribe_url, email.customer_id
            )),
            EmailClass::Transactional => Value::Null,
        };
        if journeys
            .rule(&email.template)
            .is_some_and(|r| r.on == Trigger::Inactivity)
        {
            let placed = data["order"]["placed_at"]
                .as_str()
                .and_then(|s| s.parse::<Timestamp>().ok());
            if let Some(placed) = placed {
                let days = now.duration_since(placed).as_secs() / 86_400;
                data["days_since_last_order"] = json!(days.max(0));
            } else {
                data["days_since_last_order"] = Value::Null;
            }
        }
        data
    }
}

fn write_dead(
    dead: &mut DeadLetters,
    source: &str,
    entry: &Entry,
    reason: &str,
) -> Result<(), PipelineError> {
    dead.write(source, &entry.coordinates, &entry.raw, reason)
        .map_err(|error| PipelineError::DeadLetter {
            path: dead_path(dead),
            error,
        })
}

fn dead_path(dead: &DeadLetters) -> String {
    dead.path()
        .map_or_else(String::new, |p| p.display().to_string())
}

fn addressee(locales: &Locales, journey: &Journey) -> Addressee {
    Addressee {
        recipient: journey.profile.email.clone(),
        locale: locales
            .resolve(journey.profile.locale.as_deref())
            .to_owned(),
    }
}

fn apply<T: Transaction>(
    tx: &mut T,
    journeys: &Journeys,
    locales: &Locales,
    event: &Event,
    next_fire: &mut Option<Timestamp>,
    stats: &mut Stats,
) -> Result<Applied, StoreError> {
    if tx.seen(&event.id)? {
        return Ok(Applied::Duplicate);
    }
    let customer_id = &event.customer.id;
    let state = tx.journey(customer_id)?;
    let transition = match journeys.step(state, event) {
        Ok(t) => t,
        // Not recorded as seen: the shop may fix the event and send it again.
        Err(rejection) => return Ok(Applied::Rejected(rejection.to_string())),
    };
    tx.mark_seen(&event.id)?;
    tx.save_journey(customer_id, &transition.state)?;
    let to = addressee(locales, &transition.state);
    for command in &transition.commands {
        match command {
            Command::Schedule(email) => {
                if tx.schedule(email)? {
                    stats.scheduled += 1;
                    *next_fire = Some(next_fire.map_or(email.due_at, |t| t.min(email.due_at)));
                }
            }
            Command::Cancel { selector, reason } => {
                stats.cancelled += tx.cancel(selector, reason, &to)? as u64;
            }
            Command::Decide {
                email,
                verdict,
                reason,
            } => {
                if tx.record(email, *verdict, reason, &to)? {
                    stats.cancelled += 1;
                }
            }
        }
    }
    Ok(Applied::New)
}

/// A retry delay: exponential from 30 s, capped at an hour, with up to a
/// fifth of jitter so that a recovering server is not hit all at once.
pub fn backoff(attempts: u32, jitter: f64) -> SignedDuration {
    let base = 30.0 * 2f64.powi(attempts.min(16) as i32);
    let secs = base.min(3600.0) * (1.0 + 0.2 * jitter.clamp(0.0, 1.0));
    SignedDuration::from_secs_f64(secs)
}
