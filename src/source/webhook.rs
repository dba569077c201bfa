//! Webhook deliveries, read back from the store's intake.
//!
//! The HTTP handler (`crate::http`) stores each signed delivery and
//! answers at once; this source reads the stored deliveries in arrival
//! order, as a file source reads lines, and hands them to the mappings
//! like Kafka records (body and headers). A delivery is marked applied in
//! the transaction that applies its events (see
//! [`crate::pipeline::Pipeline`]), so a crash between the two reads it
//! again, and never loses it.
//!
//! Workers sharing a PostgreSQL store all take webhooks; one at a time
//! reads the intake, the one holding its lease, so that deliveries are
//! applied in the order they came. Another takes over when a holder stops
//! renewing it.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{Batch, Position, RawMessage, Source, SourceError, entries};
use crate::mapping::Mapper;
use crate::mapping::record::Record;
use crate::store::{IntakeRow, Store, StoreError};

/// The stream (position key) of webhook deliveries: the emails their
/// events schedule belong to it.
pub const INTAKE_STREAM: &str = "webhook:intake";

/// How long the intake's lease lasts without renewal: a reader that
/// stops (killed, partitioned from the store) is replaced after this.
pub const INTAKE_LEASE: SignedDuration = SignedDuration::from_secs(30);

/// Rung by the HTTP handler when it stored a delivery, so that the reader
/// does not wait out its poll to see it.
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: Mutex<u64>,
    wake: Condvar,
}

impl Doorbell {
    pub fn ring(&self) {
        *self.rung.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.wake.notify_all();
    }

    /// Waits until rung after `seen`, or `timeout`; returns the count.
    fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        let (rung, _) = self
            .wake
            .wait_timeout_while(rung, timeout, |n| *n == seen)
            .unwrap_or_else(PoisonError::into_inner);
        *rung
    }

    fn count(&self) -> u64 {
        *self.rung.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct WebhookSource<S> {
    store: S,
    /// Who holds the lease: the worker's id.
    owner: String,
    doorbell: Arc<Doorbell>,
    /// How long a batch waits for a delivery when the intake is empty.
    wait: Duration,
    /// How long applied deliveries are kept, for their duplicates.
    keep_applied: Duration,
    /// When they were last purged.
    purged: Option<Instant>,
    /// The store failed the last read (said once, not at every poll).
    unavailable: bool,
    /// This worker held the intake's lease at the last read.
    holding: bool,
    mapper: Option<Arc<Mapper>>,
}

/// How often the holder of the intake purges applied deliveries.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl<S: Store> WebhookSource<S> {
    pub fn new(
        store: S,
        owner: String,
        doorbell: Arc<Doorbell>,
        (wait, keep_applied): (Duration, Duration),
    ) -> Self {
        WebhookSource {
            store,
            owner,
            doorbell,
            wait,
            keep_applied,
            purged: None,
            unavailable: false,
            holding: false,
            mapper: None,
        }
    }

    pub fn with_mapper(mut self, mapper: Option<Arc<Mapper>>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Up to `max` deliveries, if this worker holds (or now takes) the
    /// intake's lease.
    fn read(&mut self, max: usize) -> Result<Vec<IntakeRow>, SourceError> {
        match self.try_read(max) {
            Ok(rows) => {
                if std::mem::take(&mut self.unavailable) {
                    tracing::info!("The webhook intake answers again.");
                }
                Ok(rows)
            }
            // A store that is away for a while (a PostgreSQL restart, a
            // failover) stops nothing: the deliveries wait in it, the HTTP
            // side answers 503 meanwhile, and the next poll tries again.
            Err(e) if e.is_transient() => {
                if !std::mem::replace(&mut self.unavailable, true) {
                    tracing::warn!(error = %e, "The webhook intake cannot be read; trying again.");
                }
                Ok(Vec::new())
            }
            Err(e) => Err(SourceError::Io {
                name: INTAKE_STREAM.to_owned(),
                error: std::io::Error::other(e.to_string()),
            }),
        }
    }

    fn try_read(&mut self, max: usize) -> Result<Vec<IntakeRow>, StoreError> {
        let now = Timestamp::now();
        let until = now.checked_add(INTAKE_LEASE).unwrap_or(Timestamp::MAX);
        let held = self.store.intake_lease(&self.owner, now, until);
        self.holding = matches!(held, Ok(true));
        if !held? {
            return Ok(Vec::new());
        }
        if self.purged.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
            self.purged = Some(Instant::now());
            let before = now
                .checked_sub(
                    SignedDuration::try_from(self.keep_applied).unwrap_or(SignedDuration::MAX),
                )
                .unwrap_or(Timestamp::MIN);
            let purged = self.store.intake_purge(before)?;
            if purged > 0 {
                tracing::debug!(purged, "Purged applied webhook deliveries.");
            }
        }
        self.store.intake_next(max)
    }
}

/// A stored delivery as the mappings see a message: its body, and its
/// request's headers (the presets read the topic and the delivery id
/// from them).
fn message(row: IntakeRow) -> RawMessage {
    RawMessage {
        coordinates: json!({
            "webhook": row.source,
            "intake": row.id,
            "delivery": row.delivery_id,
            "received_at": row.received_at.to_string(),
        }),
        position: Position {
            key: INTAKE_STREAM.to_owned(),
            value: row.id.to_string(),
        },
        record: Record {
            body: row.body,
            topic: None,
            key: None,
            headers: row.headers,
        },
        oversized: None,
    }
}

impl<S: Store> Source for WebhookSource<S> {
    fn name(&self) -> &str {
        INTAKE_STREAM
    }

    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        let seen = self.doorbell.count();
        let mut rows = self.read(max)?;
        if rows.is_empty() {
            // Ours or another worker's delivery may come meanwhile: ours
            // rings, another's is seen at the next poll.
            self.doorbell.wait(seen, self.wait);
            rows = self.read(max)?;
        }
        let caught_up = rows.len() < max;
        let messages = rows.into_iter().map(message).collect();
        Ok(Batch {
            caught_up,
            finished: false,
            watermark: None,
            entries: entries(self.mapper.as_deref(), messages),
        })
    }

    /// The timers of webhook events are the intake reader's to fire, as a
    /// Kafka partition's are its reader's: the other workers only take
    /// deliveries.
    fn streams(&self) -> Option<Vec<String>> {
        Some(if self.holding {
            vec![INTAKE_STREAM.to_owned()]
        } else {
            Vec::new()
        })
    }

    /// Ends the lease now (renewed to expire at once), so that another
    /// worker reads on without waiting out [`INTAKE_LEASE`].
    fn stopped(&mut self) {
        if !std::mem::take(&mut self.holding) {
            return;
        }
        let now = Timestamp::now();
        match self.store.intake_lease(&self.owner, now, now) {
            Ok(_) => tracing::debug!("Released the webhook intake's lease."),
            Err(e) => tracing::warn!(error = %e, "Releasing the webhook intake's lease failed."),
        }
    }
}
