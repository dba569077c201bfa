//! `aftercare run`: the ingest loop and the delivery workers, wired.
//!
//! The ingest loop runs on its own thread (the store, the file source and
//! librdkafka's consumer are synchronous): it applies batches, fires due
//! emails, and hands approved ones over a bounded channel to the delivery
//! workers, which send them concurrently and record each outcome. Emails
//! approved by this worker before a crash, or by another whose lease
//! expired, are delivered again.
//!
//! Shutdown: the `shutdown` future stops intake after the batch in hand
//! (its transaction commits), the workers finish what they hold, and
//! whatever still runs when the grace period ends is left: those emails
//! stay `sending` and go out on the next start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::mailer::Mailer;
use crate::observe::{Observer, redact};
use crate::pipeline::{Pipeline, PipelineError, Stats, outage_pause};
use crate::sender::{Outcome, Sender};
use crate::source::{DeadLetters, Source, SourceError};
use crate::store::{EmailRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the ingest thread stopped unexpectedly")]
    Panicked,
}

impl DaemonError {
    /// Whether waiting may cure it (see [`StoreError::is_transient`]).
    fn is_transient(&self) -> bool {
        match self {
            Self::Pipeline(PipelineError::DeadLetter { .. }) => true,
            Self::Pipeline(PipelineError::Store(e)) | Self::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ingest: Stats,
    /// Sent emails by template.
    pub sent: BTreeMap<String, u64>,
    pub retried: u64,
    pub failed: u64,
    /// Approved emails that were too late by the time they were to go out.
    pub expired: u64,
    /// Emails handed to the mailer again after an earlier run stopped.
    pub resumed: u64,
    /// The grace period ended with work still running.
    pub cut_short: bool,
}

/// Settings of one run.
pub struct Settings {
    pub batch_size: usize,
    /// Concurrent deliveries.
    pub concurrency: usize,
    /// How long in-flight work may take after shutdown is asked.
    pub grace: Duration,
    /// Stop once the source is drained and what is due is sent (always so
    /// for a file; for Kafka, once every partition is read to its end).
    pub once: bool,
    /// Metrics and health, shared with the HTTP server.
    pub observer: Arc<Observer>,
}

/// How often the loop looks for expired leases of other workers.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run<S, M>(
    mut pipeline: Pipeline<S>,
    mut source: Box<dyn Source>,
    mut dead: DeadLetters,
    sender: Arc<Sender<M>>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, DaemonError>
where
    S: Store,
    M: Mailer,
{
    let delivery_store = Arc::new(Mutex::new(pipeline.store().reopen()?));
    pipeline.observe(Arc::clone(&settings.observer));
    if let Some(flag) = source.broker_up() {
        settings.observer.watch_broker(flag);
    }
    let resumed = pipeline.reclaim(true)?;
    let (tx, rx) = mpsc::channel::<EmailRow>(settings.batch_size.max(64));
    let stop = Arc::new(AtomicBool::new(false));
    let mut summary = Summary {
        resumed: resumed.len() as u64,
        ..Summary::default()
    };
    if !resumed.is_empty() {
        tracing::info!(
            count = resumed.len(),
            "Delivering emails left in flight by an earlier run."
        );
    }

    let workers = tokio::spawn(deliver_all(
        rx,
        Arc::clone(&sender),
        Arc::clone(&delivery_store),
        settings.concurrency,
        Arc::clone(&stop),
        Arc::clone(&settings.observer),
    ));
    for email in resumed {
        if tx.send(email).await.is_err() {
            break;
        }
    }

    let ingest_stop = Arc::clone(&stop);
    let (batch_size, once) = (settings.batch_size, settings.once);
    let observer = Arc::clone(&settings.observer);
    let mut ingest = tokio::task::spawn_blocking(move || -> Result<Stats, DaemonError> {
        let mut last_reclaim = Instant::now();
        let mut read = || -> Result<(), DaemonError> {
            while !ingest_stop.load(Ordering::Relaxed) {
                let batch = source.next_batch(batch_size)?;
                observer.source_polled(source.health());
                let now = Timestamp::now();
                let limit = batch.watermark.map_or(now, |w| w.min(now));
                let mut approved = Vec::new();
                // This worker fires the timers of the streams it reads, up to
                // the earliest event of theirs not yet applied.
                retrying(&ingest_stop, &observer, "ingest", || {
                    pipeline.set_streams(source.streams())?;
                    let result = pipeline.ingest(
                        source.name(),
                        &batch.entries,
                        Some(limit),
                        &mut dead,
                        &mut approved,
                    );
                    Ok(result?)
                })?;
                source.committed();
                if batch.caught_up || batch.watermark.is_some() {
                    let until = if batch.caught_up { now } else { limit };
                    retrying(&ingest_stop, &observer, "expire", || {
                        Ok(pipeline.expire(until, &mut dead)?)
                    })?;
                    retrying(&ingest_stop, &observer, "fire", || {
                        Ok(pipeline.fire(until, &mut approved)?)
                    })?;
                }
                if last_reclaim.elapsed() >= RECLAIM_INTERVAL {
                    last_reclaim = Instant::now();
                    let taken = retrying(&ingest_stop, &observer, "reclaim", || {
                        Ok(pipeline.reclaim(false)?)
                    })?;
                    if !taken.is_empty() {
                        tracing::warn!(
                            count = taken.len(),
                            "Took over emails whose worker's lease expired."
                        );
                    }
                    approved.extend(taken);
                }
                for email in approved {
                    if tx.blocking_send(email).is_err() {
                        return Ok(());
                    }
                }
                // A source that waits for events (Kafka) waits in next_batch.
                if batch.finished || (once && batch.caught_up) {
                    break;
                }
            }
            Ok(())
        };
        let read = read();
        source.stopped();
        read.map(|()| pipeline.stats)
    });

    tokio::pin!(shutdown);
    let deadline;
    let stats = tokio::select! {
        result = &mut ingest => {
            deadline = None;
            result
        }
        () = &mut shutdown => {
            tracing::info!(grace = ?settings.grace, "Stopping intake.");
            stop.store(true, Ordering::Relaxed);
            let until = tokio::time::Instant::now() + settings.grace;
            deadline = Some(until);
            match tokio::time::timeout_at(until, &mut ingest).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("The ingest loop did not stop within the grace period.");
                    summary.cut_short = true;
                    return Ok(summary);
                }
            }
        }
    };
    summary.ingest = stats.map_err(|_| DaemonError::Panicked)??;

    // Without a shutdown request, the workers finish what was approved.
    let finished = match deadline {
        Some(until) => tokio::time::timeout_at(until, workers).await.ok(),
        None => Some(workers.await),
    };
    match finished {
        Some(Ok(done)) => {
            let done = done?;
            summary.sent = done.sent;
            summary.retried = done.retried;
            summary.failed = done.failed;
            summary.expired = done.expired;
        }
        Some(Err(_)) => return Err(DaemonError::Panicked),
        None => {
            summary.cut_short = true;
            tracing::warn!(
                "Deliveries still running at the end of the grace period; they resume on the next start."
            );
        }
    }
    Ok(summary)
}

/// Runs `attempt` (of `step`) until it succeeds or fails for good.
///
/// A transient failure (the store unreachable or busy, dead letters not
/// writable) is logged and tried again after a pause that doubles up to
/// 30 s, so the worker waits out an outage instead of exiting (its
/// readiness says why meanwhile). Trying again is safe: a failed
/// transaction rolls back, and events of a committed one are recognised as
/// duplicates. Once a shutdown is asked, the last error is returned.
fn retrying<T>(
    stop: &AtomicBool,
    observer: &Observer,
    step: &str,
    mut attempt: impl FnMut() -> Result<T, DaemonError>,
) -> Result<T, DaemonError> {
    let mut failures = 0;
    loop {
        match attempt() {
            Err(error) if error.is_transient() && !stop.load(Ordering::Relaxed) => {
                observer.step_failed(step);
                let pause = outage_pause(failures);
                failures += 1;
                tracing::error!(%error, step, retry_in = ?pause, "A step failed; trying it again.");
                sleep_unless_stopped(pause, stop);
            }
            other => return other,
        }
    }
}

fn sleep_unless_stopped(mut left: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(left.min(step));
        left = left.saturating_sub(step);
    }
}

#[derive(Default)]
struct Delivered {
    sent: BTreeMap<String, u64>,
    retried: u64,
    failed: u64,
    expired: u64,
}

impl Delivered {
    fn record(
        &mut self,
        (email, outcome, took): Delivery,
        observer: &Observer,
    ) -> Result<(), StoreError> {
        let outcome = outcome?;
        let (class, status) = match &outcome {
            Outcome::Sent { .. } => (Some("delivered"), "sent"),
            Outcome::Retry { .. } => (Some("transient"), "retried"),
            Outcome::Deferred { .. } => (Some("deferred"), "retried"),
            Outcome::Ambiguous { .. } => (Some("ambiguous"), "retried"),
            Outcome::Failed { .. } | Outcome::Bounced { .. } => (Some("permanent"), "failed"),
            Outcome::Expired { .. } => (None, crate::journey::late::EXPIRED),
        };
        if let Some(class) = class {
            observer.delivery(class, took);
        }
        observer.email(&email.template, status);
        match outcome {
            Outcome::Sent { reply } => {
                observer.sent_late(jiff::Timestamp::now().duration_since(email.due_at));
                tracing::info!(template = %email.template, customer_id = %email.customer_id, key = %email.key, "Sent email.");
                tracing::debug!(to = ?email.recipient, %reply, "Sent email.");
                *self.sent.entry(email.template).or_default() += 1;
            }
            Outcome::Retry { at, reply }
            | Outcome::Deferred { at, reply }
            | Outcome::Ambiguous { at, reply } => {
                tracing::warn!(key = %email.key, retry_at = %at, reply = %redact(&reply), "Delivery failed; will retry.");
                self.retried += 1;
            }
            Outcome::Failed { reason } => {
                tracing::error!(key = %email.key, reason = %redact(&reason), "Delivery failed for good.");
                self.failed += 1;
            }
            Outcome::Expired { reason } => {
                tracing::warn!(key = %email.key, %reason, "Email too late to go out; not sent.");
                self.expired += 1;
            }
            Outcome::Bounced { reason, .. } => {
                tracing::warn!(key = %email.key, customer_id = %email.customer_id, reason = %redact(&reason), "Mailbox does not exist; address suppressed.");
                self.failed += 1;
            }
        }
        Ok(())
    }
}

/// An email, what became of it, and how long that took.
type Delivery = (EmailRow, Result<Outcome, StoreError>, Duration);

/// Delivers what comes down the channel, `concurrency` at a time. Once
/// `stop` is set, what has not started is released for other workers (or
/// the next start) instead.
async fn deliver_all<S: Store, M: Mailer>(
    mut rx: mpsc::Receiver<EmailRow>,
    sender: Arc<Sender<M>>,
    store: Arc<Mutex<S>>,
    concurrency: usize,
    stop: Arc<AtomicBool>,
    observer: Arc<Observer>,
) -> Result<Delivered, StoreError> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running: JoinSet<Delivery> = JoinSet::new();
    let mut done = Delivered::default();
    let unwrap = |r: Result<Delivery, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    };
    let mut released = Vec::new();
    loop {
        // Outcomes are recorded as they come (metrics, logs), not only when
        // the next email arrives.
        let email = tokio::select! {
            Some(result) = running.join_next(), if !running.is_empty() => {
                done.record(unwrap(result), &observer)?;
                continue;
            }
            email = rx.recv() => email,
        };
        let Some(email) = email else {
            break;
        };
        if stop.load(Ordering::Relaxed) {
            released.push(email.id);
            continue;
        }
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (sender, store) = (Arc::clone(&sender), Arc::clone(&store));
        running.spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let outcome = sender.deliver_and_record(&email, &store).await;
            (email, outcome, start.elapsed())
        });
    }
    if !released.is_empty() {
        tracing::info!(
            count = released.len(),
            "Released undelivered emails to other workers."
        );
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            store.release(&released)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    }
    while let Some(result) = running.join_next().await {
        done.record(unwrap(result), &observer)?;
    }
    Ok(done)
}
