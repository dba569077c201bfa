//! `aftercare run`: the ingest loop and the delivery workers, wired.
//!
//! The ingest loop runs on its own thread (the store and the file source are
//! synchronous): it applies batches, fires due emails, and hands approved
//! ones over a bounded channel to the delivery workers, which send them
//! concurrently and record each outcome. Emails approved before a crash but
//! not recorded as sent are delivered again first.
//!
//! Shutdown: the `shutdown` future stops intake after the batch in hand
//! (its transaction commits), the workers finish what they hold, and
//! whatever is still running when the grace period ends is dropped; those
//! emails stay `sending` and go out on the next start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::mailer::Mailer;
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::sender::{Outcome, Sender};
use crate::source::{DeadLetters, Source};
use crate::store::{EmailRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading events from {source_name}: {error}")]
    Source {
        source_name: String,
        error: std::io::Error,
    },
    #[error("the ingest thread stopped unexpectedly")]
    Panicked,
}

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub ingest: Stats,
    /// Sent emails by template.
    pub sent: BTreeMap<String, u64>,
    pub retried: u64,
    pub failed: u64,
    /// Emails handed to the mailer again after an earlier run stopped.
    pub resumed: u64,
}

/// Settings of one run.
pub struct Settings {
    pub batch_size: usize,
    pub poll_interval: Duration,
    /// Concurrent deliveries.
    pub concurrency: usize,
    /// How long in-flight deliveries may take after shutdown is asked.
    pub grace: Duration,
}

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
    let resumed = pipeline.store().in_flight()?;
    if let Some(position) = pipeline.store().position(source.name())? {
        source
            .seek(&position)
            .map_err(|error| DaemonError::Source {
                source_name: source.name().to_owned(),
                error,
            })?;
        tracing::info!(source = source.name(), %position, "Resuming from the stored position.");
    }

    let (tx, rx) = mpsc::channel::<EmailRow>(settings.batch_size.max(64));
    let stop = Arc::new(AtomicBool::new(false));
    let mut summary = Summary {
        resumed: resumed.len() as u64,
        ..Summary::default()
    };
    if !resumed.is_empty() {
        tracing::info!(
            count = resumed.len(),
            "Delivering emails left in flight by the last run."
        );
    }

    let workers = tokio::spawn(deliver_all(
        rx,
        Arc::clone(&sender),
        Arc::clone(&delivery_store),
        settings.concurrency,
    ));
    for email in resumed {
        if tx.send(email).await.is_err() {
            break;
        }
    }

    let ingest_stop = Arc::clone(&stop);
    let batch_size = settings.batch_size;
    let poll = settings.poll_interval;
    let mut ingest = tokio::task::spawn_blocking(move || -> Result<Stats, DaemonError> {
        loop {
            if ingest_stop.load(Ordering::Relaxed) {
                break;
            }
            let name = source.name().to_owned();
            let batch = source
                .next_batch(batch_size)
                .map_err(|error| DaemonError::Source {
                    source_name: name.clone(),
                    error,
                })?;
            let mut approved = Vec::new();
            pipeline.ingest(
                &name,
                &batch.entries,
                Some(Timestamp::now()),
                &mut dead,
                &mut approved,
            )?;
            if batch.caught_up {
                pipeline.fire(Timestamp::now(), &mut approved)?;
            }
            for email in approved {
                if tx.blocking_send(email).is_err() {
                    return Ok(pipeline.stats);
                }
            }
            if batch.finished {
                break;
            }
            if batch.caught_up && batch.entries.is_empty() {
                idle(&pipeline, poll, &ingest_stop);
            }
        }
        Ok(pipeline.stats)
    });

    tokio::pin!(shutdown);
    let stats = tokio::select! {
        result = &mut ingest => result,
        () = &mut shutdown => {
            tracing::info!("Stopping intake.");
            stop.store(true, Ordering::Relaxed);
            ingest.await
        }
    };
    summary.ingest = stats.map_err(|_| DaemonError::Panicked)??;

    match tokio::time::timeout(settings.grace, workers).await {
        Ok(Ok(done)) => {
            let done = done?;
            summary.sent = done.sent;
            summary.retried = done.retried;
            summary.failed = done.failed;
        }
        Ok(Err(_)) => return Err(DaemonError::Panicked),
        Err(_) => {
            tracing::warn!(grace = ?settings.grace, "Deliveries still running at the end of the grace period; they resume on the next start.");
        }
    }
    Ok(summary)
}

/// Sleeps until the next email is due or `poll` passes, whichever is first,
/// waking early when asked to stop.
fn idle<S: Store>(pipeline: &Pipeline<S>, poll: Duration, stop: &AtomicBool) {
    let until_due = pipeline
        .next_fire()
        .map(|t| t.duration_since(Timestamp::now()))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(poll);
    let mut left = until_due.min(poll);
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
}

async fn deliver_all<S: Store, M: Mailer>(
    mut rx: mpsc::Receiver<EmailRow>,
    sender: Arc<Sender<M>>,
    store: Arc<Mutex<S>>,
    concurrency: usize,
) -> Result<Delivered, StoreError> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    let mut done = Delivered::default();
    let record = |result: Result<
        (EmailRow, Result<Outcome, StoreError>),
        tokio::task::JoinError,
    >,
                  done: &mut Delivered|
     -> Result<(), StoreError> {
        let (email, outcome) = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match outcome? {
            Outcome::Sent { reply } => {
                tracing::info!(template = %email.template, customer_id = %email.customer_id, key = %email.key, "Sent email.");
                tracing::debug!(to = ?email.recipient, %reply, "Sent email.");
                *done.sent.entry(email.template).or_default() += 1;
            }
            Outcome::Retry { at, reply } => {
                tracing::warn!(key = %email.key, retry_at = %at, %reply, "Delivery failed; will retry.");
                done.retried += 1;
            }
            Outcome::Failed { reason } => {
                tracing::error!(key = %email.key, %reason, "Delivery failed for good.");
                done.failed += 1;
            }
        }
        Ok(())
    };
    while let Some(email) = rx.recv().await {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (sender, store) = (Arc::clone(&sender), Arc::clone(&store));
        running.spawn(async move {
            let _permit = permit;
            let outcome = sender.deliver_and_record(&email, &store).await;
            (email, outcome)
        });
        while let Some(result) = running.try_join_next() {
            record(result, &mut done)?;
        }
    }
    while let Some(result) = running.join_next().await {
        record(result, &mut done)?;
    }
    Ok(done)
}
