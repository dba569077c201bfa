//! `aftercare run`: the ingest loop and the delivery workers, wired.
//!
//! The ingest loop runs on its own thread (the store, the file source and
//! librdkafka's consumer are synchronous): it applies batches, fires due
//! emails, and hands approved ones over a bounded channel to the delivery
//! workers, which send them concurrently and record each outcome. Emails
//! approved by this worker before a crash, or by another whose lease
//! expired, are delivered again.
//!
//! Shutdown: one [`CancellationToken`] is handed to the ingest thread and
//! the delivery workers. Once it is cancelled, the ingest loop stops after
//! the batch in hand (its transaction commits), the workers finish what
//! they hold and release what they had not started, and whatever still
//! runs when the grace period ends is left: those emails stay `sending`
//! and go out on the next start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::mailer::Mailer;
use crate::observe::{Observer, redact};
use crate::pipeline::{LeasePolicy, Pipeline, PipelineError, Stats, outage_pause};
use crate::sender::{Outcome, Phases, Sender};
use crate::source::{DeadLetters, Source, SourceError};
use crate::store::{EmailRow, Store, StoreError};

mod ledger;

use ledger::Ledger;

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

/// RunOptions of one run.
pub struct RunOptions {
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

/// Runs until the source is finished (with `once`, caught up) and what it
/// approved is delivered, or until `shutdown` is cancelled: then intake
/// stops and in-flight work gets `settings.grace`.
pub async fn run<S, M>(
    mut pipeline: Pipeline<S>,
    mut source: Box<dyn Source>,
    mut dead: DeadLetters,
    sender: Arc<Sender<M>>,
    settings: RunOptions,
    shutdown: CancellationToken,
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

    let mut workers = tokio::spawn(deliver_all(
        rx,
        Arc::clone(&sender),
        Arc::clone(&delivery_store),
        pipeline.lease().clone(),
        settings.concurrency,
        shutdown.clone(),
        Arc::clone(&settings.observer),
    ));
    for email in resumed {
        if tx.send(email).await.is_err() {
            break;
        }
    }

    let ingest_stop = shutdown.clone();
    let (batch_size, once) = (settings.batch_size, settings.once);
    let observer = Arc::clone(&settings.observer);
    let mut ingest = tokio::task::spawn_blocking(move || -> Result<Stats, DaemonError> {
        let mut last_reclaim = Instant::now();
        let mut read = || -> Result<(), DaemonError> {
            while !ingest_stop.is_cancelled() {
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

    let deadline;
    let stats = tokio::select! {
        result = &mut ingest => {
            deadline = None;
            result
        }
        () = shutdown.cancelled() => {
            tracing::info!(grace = ?settings.grace, "Stopping intake.");
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

    // Without a shutdown request, the workers finish what was approved; one
    // that comes meanwhile gives them the grace period, as during intake.
    let finished = match deadline {
        Some(until) => tokio::time::timeout_at(until, workers).await.ok(),
        None => tokio::select! {
            done = &mut workers => Some(done),
            () = shutdown.cancelled() => {
                tracing::info!(grace = ?settings.grace, "Stopping deliveries.");
                let until = tokio::time::Instant::now() + settings.grace;
                tokio::time::timeout_at(until, workers).await.ok()
            }
        },
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
    stop: &CancellationToken,
    observer: &Observer,
    step: &str,
    mut attempt: impl FnMut() -> Result<T, DaemonError>,
) -> Result<T, DaemonError> {
    let mut failures = 0;
    loop {
        match attempt() {
            Err(error) if error.is_transient() && !stop.is_cancelled() => {
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

/// Waits `pause`, or less if `stop` is cancelled meanwhile. For the ingest
/// thread (a blocking one of the runtime, where the runtime's handle is at
/// hand and blocking on it is allowed).
fn sleep_unless_stopped(pause: Duration, stop: &CancellationToken) {
    tokio::runtime::Handle::current().block_on(async {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => {}
        }
    });
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
        for (phase, spent) in took.phases() {
            observer.delivery_phase(phase, spent);
        }
        let Some(outcome) = outcome? else {
            return Ok(());
        };
        let (class, status) = match &outcome {
            Outcome::Sent { .. } => (Some("delivered"), "sent"),
            Outcome::Retry { .. } => (Some("transient"), "retried"),
            Outcome::Deferred { .. } => (Some("deferred"), "retried"),
            Outcome::Ambiguous { .. } => (Some("ambiguous"), "retried"),
            Outcome::Failed { .. } | Outcome::Bounced { .. } => (Some("permanent"), "failed"),
            Outcome::Expired { .. } => (None, crate::journey::late::EXPIRED),
        };
        if let Some(class) = class {
            observer.delivery(class, took.total);
        }
        observer.email(&email.template, status);
        match outcome {
            Outcome::Sent { reply, .. } => {
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

/// An email, what became of it (`None`: another worker took it over
/// while it waited here, and delivers it), and how long that took.
type Delivery = (EmailRow, Result<Option<Outcome>, StoreError>, Took);

/// How long one delivery took, in all and in each phase (`None`: not
/// reached; for the claim, not needed).
#[derive(Debug, Default)]
struct Took {
    total: Duration,
    /// Renewing the claim in the store as the delivery starts.
    claim: Option<Duration>,
    sender: Phases,
    /// Storing the outcome (the ledger's queue and transaction).
    record: Option<Duration>,
}

impl Took {
    /// Each phase reached, by its metric label.
    fn phases(&self) -> impl Iterator<Item = (&'static str, Duration)> {
        [
            ("claim", self.claim),
            ("render", self.sender.render),
            ("throttle", self.sender.throttle),
            ("mail", self.sender.mail),
            ("record", self.record),
        ]
        .into_iter()
        .filter_map(|(phase, spent)| Some((phase, spent?)))
    }
}

/// Where a delivery the heartbeat keeps the claim of stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being sent: a claim not renewed was taken over.
    Sending,
    /// The server answered; the outcome is on its way to the store, where
    /// it ends the claim (so a claim not renewed is expected).
    Recording,
}

/// Keeps this worker's claim on the emails it is delivering, renewed every
/// third of the lease, from the delivery's start until its outcome is
/// stored: a slow server, a long queue at the mailer or a slow store never
/// lets another worker take over an email this one is still sending or
/// has sent. Only a worker that stops (killed, frozen for a whole lease)
/// loses its claim.
struct Heartbeat {
    in_flight: Arc<Mutex<BTreeMap<i64, Phase>>>,
    lease: LeasePolicy,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    fn start<S: Store>(store: Arc<Mutex<S>>, lease: LeasePolicy) -> Heartbeat {
        let in_flight: Arc<Mutex<BTreeMap<i64, Phase>>> = Arc::default();
        let beating = Arc::clone(&in_flight);
        let every = (lease.duration.unsigned_abs() / 3).max(Duration::from_millis(100));
        let policy = lease.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let ids: Vec<i64> = lock(&beating).keys().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                match ledger::renew(&store, ids.clone(), &lease).await {
                    Ok(renewed) => {
                        // Of those not renewed, the ones still being sent
                        // (the others' outcomes were stored meanwhile).
                        let in_flight = lock(&beating);
                        let lost = ids
                            .iter()
                            .filter(|id| {
                                !renewed.contains(id) && in_flight.get(id) == Some(&Phase::Sending)
                            })
                            .count();
                        if lost > 0 {
                            tracing::warn!(
                                lost,
                                "Emails being sent were taken over by another worker: this one \
                                 stalled for longer than sender.lease."
                            );
                        }
                    }
                    Err(error) => tracing::error!(%error, "Renewing leases failed."),
                }
            }
        });
        Heartbeat {
            in_flight,
            lease: policy,
            task,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Delivers `email` unless another worker took it over while it waited in
/// this worker's queue (its lease ran out: a slow server, a long queue).
/// An email still held for more than half a lease is known to be this
/// worker's without asking the store (no worker takes over a claim before
/// it expires); any other is claimed again first. The heartbeat keeps the
/// claim while the delivery runs.
///
/// The delivery holds its slot until its outcome is written: an email
/// sent and not yet recorded is sent again if the worker dies, so there
/// are never more of those than deliveries running.
async fn deliver_one<M: Mailer>(
    email: &EmailRow,
    sender: &Sender<M>,
    ledger: &Ledger,
    heartbeat: &Heartbeat,
    took: &mut Took,
) -> Result<Option<Outcome>, StoreError> {
    let held = held_for_long(email, &heartbeat.lease, Timestamp::now());
    if !held {
        let claiming = Instant::now();
        let claimed = ledger.claim(email.id).await;
        took.claim = Some(claiming.elapsed());
        if !claimed? {
            tracing::info!(key = %email.key, "Another worker took this email over; not sending it here.");
            return Ok(None);
        }
    }
    lock(&heartbeat.in_flight).insert(email.id, Phase::Sending);
    let outcome = sender
        .deliver_timed(email, Timestamp::now(), &mut took.sender)
        .await;
    // Claimed until the store has the outcome: an email the server took,
    // its claim run out while the outcome waited for the store, would be
    // taken over and sent again by another worker.
    lock(&heartbeat.in_flight).insert(email.id, Phase::Recording);
    let recording = Instant::now();
    let recorded = ledger.record(email.id, outcome.clone()).await;
    took.record = Some(recording.elapsed());
    lock(&heartbeat.in_flight).remove(&email.id);
    recorded?;
    Ok(Some(outcome))
}

/// Whether this worker's claim on `email`, as read with it, lasts more
/// than half a lease from `now`: long enough for its delivery to start and
/// the heartbeat to renew it, so no store write is needed to start.
fn held_for_long(email: &EmailRow, lease: &LeasePolicy, now: Timestamp) -> bool {
    email
        .lease_until
        .is_some_and(|until| until.duration_since(now) > lease.duration / 2)
}

/// Delivers what comes down the channel, `concurrency` at a time. Once
/// `stop` is cancelled, what has not started (received, or waiting for a
/// free delivery slot) is released for other workers (or the next start)
/// instead.
async fn deliver_all<S: Store, M: Mailer>(
    mut rx: mpsc::Receiver<EmailRow>,
    sender: Arc<Sender<M>>,
    store: Arc<Mutex<S>>,
    lease: LeasePolicy,
    concurrency: usize,
    stop: CancellationToken,
    observer: Arc<Observer>,
) -> Result<Delivered, StoreError> {
    let heartbeat = Arc::new(Heartbeat::start(Arc::clone(&store), lease.clone()));
    let ledger = Arc::new(Ledger::start(Arc::clone(&store), lease));
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
        if stop.is_cancelled() {
            released.push(email.id);
            continue;
        }
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
            () = stop.cancelled() => {
                released.push(email.id);
                continue;
            }
        };
        let (sender, ledger) = (Arc::clone(&sender), Arc::clone(&ledger));
        let heartbeat = Arc::clone(&heartbeat);
        running.spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let mut took = Took::default();
            let outcome = deliver_one(&email, &sender, &ledger, &heartbeat, &mut took).await;
            took.total = start.elapsed();
            (email, outcome, took)
        });
    }
    if !released.is_empty() {
        tracing::info!(
            count = released.len(),
            "Released undelivered emails to other workers."
        );
        crate::store::blocking(&store, move |s| s.release(&released)).await?;
    }
    while let Some(result) = running.join_next().await {
        done.record(unwrap(result), &observer)?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;
    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::journey::Rulebook;
    use crate::mailer::{MailError, Outgoing};
    use crate::observe::MailerProbe;
    use crate::pipeline::Context;
    use crate::source::{Entry, Position};
    use crate::store::SqliteStore;
    use crate::unsubscribe::Signer;

    /// Takes `delay` over each message and keeps the keys it took.
    struct SlowMailer {
        delay: Duration,
        sent: Arc<Mutex<Vec<String>>>,
    }

    impl SlowMailer {
        /// The mailer, and the keys it will have taken.
        fn new(delay: Duration) -> (SlowMailer, Arc<Mutex<Vec<String>>>) {
            let sent = Arc::<Mutex<Vec<String>>>::default();
            let mailer = SlowMailer {
                delay,
                sent: Arc::clone(&sent),
            };
            (mailer, sent)
        }
    }

    impl Mailer for SlowMailer {
        async fn send(&self, email: &Outgoing) -> Result<String, MailError> {
            tokio::time::sleep(self.delay).await;
            lock(&self.sent).push(email.key.clone());
            Ok("250 2.0.0 Ok".into())
        }
    }

    /// Worker `owner`'s pipeline on the SQLite store in `dir`, leasing for
    /// `lease`.
    fn worker(dir: &std::path::Path, owner: &str, lease: Duration) -> Pipeline<SqliteStore> {
        let config = Config::embedded();
        let context = Context {
            locales: crate::render::Locales::new(vec!["en".into()], "en"),
            default_timezone: "UTC".into(),
            unsubscribe_url: "https://shop.example.com/unsubscribe".into(),
            signer: Signer::new(b"test secret"),
        };
        Pipeline::new(
            SqliteStore::open(&dir.join("aftercare.db")).unwrap(),
            Rulebook::from_config(config.rulebook_config()),
            context,
            10,
            LeasePolicy {
                owner: owner.into(),
                duration: SignedDuration::try_from(lease).unwrap(),
            },
        )
        .unwrap()
    }

    /// An order placed now: its confirmation, approved by `p`.
    /// Another worker on the store in `dir` trying `times` times, `every`
    /// apart, to take over claims that ran out: how many it took.
    fn taking_over(
        dir: &std::path::Path,
        times: u32,
        every: Duration,
    ) -> tokio::task::JoinHandle<usize> {
        let mut other = worker(dir, "w2", Duration::from_secs(60));
        tokio::spawn(async move {
            let mut taken = 0;
            for _ in 0..times {
                tokio::time::sleep(every).await;
                taken += tokio::task::block_in_place(|| other.reclaim(false).unwrap().len());
            }
            taken
        })
    }

    fn confirmation(p: &mut Pipeline<SqliteStore>, order: &str) -> EmailRow {
        let at = Timestamp::now();
        let raw = json!({
            "event_id": format!("e-{order}"), "type": "order.placed", "occurred_at": at.to_string(),
            "customer": {"id": format!("c-{order}"), "email": "anna@example.com", "locale": "en"},
            "order": {"id": order, "total": "5.00", "currency": "EUR",
                      "items": [{"sku": "TEA-01", "name": "Tea", "quantity": 1, "unit_price": "5.00"}]}
        });
        let entry = Entry {
            raw: raw.to_string().into_bytes(),
            key: None,
            coordinates: json!({"line": 1}),
            position: Position {
                key: "test".into(),
                value: order.into(),
            },
            oversized: None,
            mapped: None,
        };
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        p.ingest("test", &[entry], None, &mut dead, &mut approved)
            .unwrap();
        p.fire(at, &mut approved).unwrap();
        approved.retain(|e| e.template == "order_confirmation");
        assert_eq!(approved.len(), 1, "{approved:?}");
        approved.remove(0)
    }

    /// The shipped templates, loaded once (slow in a debug build: before
    /// any lease is taken).
    fn templates() -> Arc<arc_swap::ArcSwap<crate::render::Templates>> {
        static LOADED: std::sync::OnceLock<Arc<arc_swap::ArcSwap<crate::render::Templates>>> =
            std::sync::OnceLock::new();
        Arc::clone(LOADED.get_or_init(|| {
            let templates =
                crate::check::load(&Config::embedded()).expect("the shipped templates load");
            Arc::new(arc_swap::ArcSwap::from_pointee(templates))
        }))
    }

    /// Delivers `emails` as worker `p` does, through `mailer`.
    async fn deliver(
        p: &mut Pipeline<SqliteStore>,
        emails: Vec<EmailRow>,
        mailer: SlowMailer,
    ) -> Delivered {
        deliver_until(p, emails, mailer, CancellationToken::new()).await
    }

    /// As [`deliver`], until `stop` is cancelled.
    async fn deliver_until(
        p: &mut Pipeline<SqliteStore>,
        emails: Vec<EmailRow>,
        mailer: SlowMailer,
        stop: CancellationToken,
    ) -> Delivered {
        let sender = Arc::new(Sender::new(&Config::embedded(), templates(), mailer));
        let (tx, rx) = mpsc::channel(16);
        for email in emails {
            tx.send(email).await.unwrap();
        }
        drop(tx);
        let observer = Arc::new(Observer::new(
            MailerProbe::Folder(".".into()),
            Duration::from_secs(60),
        ));
        let store = Arc::new(Mutex::new(p.store().reopen().unwrap()));
        deliver_all(rx, sender, store, p.lease().clone(), 1, stop, observer)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_cancellation_an_email_waiting_for_a_free_slot_is_released() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_secs(60));
        let (first, second) = (confirmation(&mut w1, "o-1"), confirmation(&mut w1, "o-2"));
        // One slot, held by the first for longer than the run lasts.
        let (mailer, sent) = SlowMailer::new(Duration::from_millis(500));
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let done = deliver_until(&mut w1, vec![first.clone(), second], mailer, stop).await;
        assert_eq!(*lock(&sent), [first.key]);
        assert_eq!(done.sent.get("order_confirmation"), Some(&1));
        // Released: another worker takes it over at once, not after w1's
        // lease.
        let mut w2 = worker(dir.path(), "w2", Duration::from_secs(60));
        assert_eq!(w2.reclaim(false).unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_between_retries_ends_once_the_run_is_cancelled() {
        let stop = CancellationToken::new();
        let waiting = stop.clone();
        let pause = tokio::task::spawn_blocking(move || {
            sleep_unless_stopped(Duration::from_secs(60), &waiting);
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), pause)
            .await
            .expect("still pausing after the cancellation")
            .unwrap();
    }

    #[tokio::test]
    async fn an_email_taken_over_while_it_waited_in_the_queue_is_not_sent_here() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_millis(200));
        let email = confirmation(&mut w1, "o-1");
        // w1's lease runs out while the email waits behind a slow delivery;
        // w2 takes it over.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut w2 = worker(dir.path(), "w2", Duration::from_secs(60));
        let taken = w2.reclaim(false).unwrap();
        assert_eq!(taken.len(), 1);
        let (mailer, sent) = SlowMailer::new(Duration::ZERO);
        let done = deliver(&mut w1, vec![email], mailer).await;
        assert!(lock(&sent).is_empty(), "sent by both: {:?}", lock(&sent));
        assert!(done.sent.is_empty());
    }

    #[tokio::test]
    async fn a_lease_that_ran_out_unclaimed_is_renewed_and_the_email_sent() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_millis(200));
        let email = confirmation(&mut w1, "o-1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mailer, sent) = SlowMailer::new(Duration::ZERO);
        let done = deliver(&mut w1, vec![email.clone()], mailer).await;
        assert_eq!(*lock(&sent), [email.key]);
        assert_eq!(done.sent.get("order_confirmation"), Some(&1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_email_held_for_long_goes_while_the_store_is_busy_and_its_outcome_follows() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_secs(60));
        let emails = vec![confirmation(&mut w1, "o-1")];
        let ids: Vec<i64> = emails.iter().map(|e| e.id).collect();
        // Another connection holds the store's write lock: no claim, no
        // outcome can be written meanwhile.
        let db = rusqlite::Connection::open(dir.path().join("aftercare.db")).unwrap();
        db.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (mailer, sent) = SlowMailer::new(Duration::ZERO);
        let delivering = tokio::spawn(async move { deliver(&mut w1, emails, mailer).await });
        let started = Instant::now();
        while lock(&sent).is_empty() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lock(&sent).len(), 1, "held up by the store's lock");
        assert!(!delivering.is_finished(), "outcome written under the lock");
        db.execute_batch("COMMIT").unwrap();
        let done = delivering.await.unwrap();
        assert_eq!(done.sent.get("order_confirmation"), Some(&1));
        for id in ids {
            let status: String = db
                .query_row("SELECT status FROM emails WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(status, "sent");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_delivery_keeps_its_claim_against_other_workers() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_millis(300));
        let email = confirmation(&mut w1, "o-1");
        // Three leases long: renewed every 100 ms meanwhile.
        let (mailer, sent) = SlowMailer::new(Duration::from_millis(900));
        let other = taking_over(dir.path(), 8, Duration::from_millis(100));
        let done = deliver(&mut w1, vec![email.clone()], mailer).await;
        assert_eq!(other.await.unwrap(), 0, "taken over while being sent");
        assert_eq!(*lock(&sent), [email.key]);
        assert_eq!(done.sent.get("order_confirmation"), Some(&1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_email_sent_keeps_its_claim_until_its_outcome_is_stored() {
        templates();
        let dir = tempfile::tempdir().unwrap();
        let lease = Duration::from_secs(1);
        let mut w1 = worker(dir.path(), "w1", lease);
        let email = confirmation(&mut w1, "o-1");
        // The outcome's writer held up for two and a half leases (its
        // connection busy); the heartbeat writes on a connection of its own.
        let recording = Arc::new(Mutex::new(w1.store().reopen().unwrap()));
        let beating = Arc::new(Mutex::new(w1.store().reopen().unwrap()));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let recording = Arc::clone(&recording);
            std::thread::spawn(move || {
                let _busy = lock(&recording);
                held_tx.send(()).unwrap();
                std::thread::sleep(lease * 5 / 2);
            })
        };
        held_rx.recv().unwrap();
        let heartbeat = Heartbeat::start(beating, w1.lease().clone());
        let ledger = Ledger::start(Arc::clone(&recording), w1.lease().clone());
        let (mailer, sent) = SlowMailer::new(Duration::ZERO);
        let sender = Sender::new(&Config::embedded(), templates(), mailer);
        let other = taking_over(dir.path(), 15, Duration::from_millis(200));
        let mut took = Took::default();
        let outcome = deliver_one(&email, &sender, &ledger, &heartbeat, &mut took).await;
        assert!(
            matches!(outcome, Ok(Some(Outcome::Sent { .. }))),
            "{outcome:?}"
        );
        // The wait for the store shows as the outcome's phase.
        assert!(took.record.unwrap() >= lease, "{took:?}");
        assert!(took.sender.mail.is_some() && took.sender.render.is_some());
        assert_eq!(*lock(&sent), [email.key]);
        assert_eq!(
            other.await.unwrap(),
            0,
            "taken over before its outcome was stored"
        );
        holder.join().unwrap();
    }

    #[tokio::test]
    async fn the_ledger_answers_each_request_of_a_batch_for_its_own_email() {
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = worker(dir.path(), "w1", Duration::from_millis(200));
        let lost = confirmation(&mut w1, "o-1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut w2 = worker(dir.path(), "w2", Duration::from_secs(60));
        assert_eq!(w2.reclaim(false).unwrap().len(), 1);
        let [held, sent, retried] = ["o-2", "o-3", "o-4"].map(|o| confirmation(&mut w1, o));
        let store = Arc::new(Mutex::new(w1.store().reopen().unwrap()));
        let ledger = Ledger::start(store, w1.lease().clone());
        let retry_at = Timestamp::now() + SignedDuration::from_mins(5);
        // Asked together, before the ledger's task runs: one batch.
        let (held_claim, lost_claim, sent_record, retried_record) = tokio::join!(
            ledger.claim(held.id),
            ledger.claim(lost.id),
            ledger.record(
                sent.id,
                Outcome::Sent {
                    at: Timestamp::now(),
                    reply: "250 ok".into()
                }
            ),
            ledger.record(
                retried.id,
                Outcome::Retry {
                    at: retry_at,
                    reply: "451 later".into()
                }
            ),
        );
        assert!(held_claim.unwrap(), "w1 still holds o-2");
        assert!(!lost_claim.unwrap(), "w2 took o-1 over");
        sent_record.unwrap();
        retried_record.unwrap();
        let db = rusqlite::Connection::open(dir.path().join("aftercare.db")).unwrap();
        let status = |id: i64| -> (String, Option<String>) {
            db.query_row(
                "SELECT status, last_reply FROM emails WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(status(sent.id), ("sent".into(), Some("250 ok".into())));
        assert_eq!(
            status(retried.id),
            ("pending".into(), Some("451 later".into()))
        );
        assert_eq!(status(held.id), ("sending".into(), None));
    }
}
