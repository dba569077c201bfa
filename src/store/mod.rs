//! Persistence: everything that must survive a restart.
//!
//! One [`Transaction`] per batch of events holds the dedup of event ids, the
//! journeys, the emails they schedule or cancel, and the source position, so
//! a crash either keeps all of a batch or none of it. Timers are email rows
//! with a `fire_at` time and an index on it, never only in memory.
//!
//! An email moves `pending -> sending -> sent`, or ends `cancelled`,
//! `suppressed` or `failed` with a reason. `sending` means approved at its
//! due time (consent and cancellations checked) and handed to the mailer; a
//! crash there re-delivers it with the same key, hence the same Message-ID.

mod outcome;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

use jiff::Timestamp;
use serde_json::Value;

use crate::event::Unresolved;
use crate::journey::{EmailClass, Journey, NewEmail, Selector, ShopStats, Verdict};

pub use outcome::Outcome;
pub use postgres::{PostgresStore, PostgresTx};
pub use sqlite::SqliteStore;

/// A store failure. Always the "fatal" class for the caller: the batch was
/// not committed, so nothing is lost by stopping.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A failure of the SQLite backend.
    #[error(transparent)]
    Sqlite(#[from] sqlite::SqliteError),
    /// A failure of the PostgreSQL backend.
    #[error(transparent)]
    Postgres(#[from] postgres::PostgresError),
    #[error("journey of customer `{customer}` cannot be read: {error}")]
    Corrupt {
        customer: String,
        error: serde_json::Error,
    },
    #[error("event `{event_id}` waiting for its order cannot be read: {error}")]
    CorruptParked {
        event_id: String,
        error: serde_json::Error,
    },
    #[error("no random bytes for a secret: {0}")]
    Random(String),
    #[error("opening the store at {path}: {error}")]
    Open { path: String, error: std::io::Error },
    /// A failure opening or migrating the SQLite file at `path`: SQLite's
    /// own message ("unable to open database file") does not name it.
    #[error("store {path}: {error}")]
    At {
        path: String,
        error: Box<StoreError>,
    },
    /// A batch marked webhook deliveries applied that another worker's
    /// batch had applied first: this worker's lease on the intake ran out
    /// while it worked and another took over. Its batch must roll back, or
    /// they would take effect twice; read the intake again.
    #[error("webhook deliveries {ids:?} were applied by another worker meanwhile")]
    IntakeTakenOver { ids: Vec<i64> },
    /// Another worker's transaction applied an event of this id after this
    /// one found it not applied yet (on PostgreSQL, an id reused for two
    /// orders, whose locks do not order them). The batch must roll back;
    /// applied again, it finds the event applied.
    #[error("event `{event_id}` was applied by another worker meanwhile")]
    SeenMeanwhile { event_id: String },
}

impl StoreError {
    /// Whether trying again later may succeed: the database is unreachable,
    /// restarting, busy or out of disk, or a transaction lost a conflict.
    /// The daemon waits out these instead of exiting; the others (a corrupt
    /// row, a failed migration) are errors to report. Each backend tells
    /// of its own failures.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite(e) => e.is_transient(),
            Self::Postgres(e) => e.is_transient(),
            Self::IntakeTakenOver { .. } | Self::SeenMeanwhile { .. } => true,
            Self::At { error, .. } => error.is_transient(),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Runs `f` on a store shared by async tasks, off the async threads: a
/// blocking-pool thread takes the lock (a poisoned one too: a panic there
/// left no transaction open) and makes the synchronous calls. A panic in
/// `f` goes on in the caller.
pub async fn blocking<S: Store, T: Send + 'static>(
    store: &std::sync::Arc<std::sync::Mutex<S>>,
    f: impl FnOnce(&mut S) -> T + Send + 'static,
) -> T {
    let store = std::sync::Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut store)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Whether `url` names a store this worker can open, or what is wrong with
/// it: `sqlite:PATH`, or a PostgreSQL URL (`postgres://...` or
/// `postgresql://...`) that [`PostgresStore::connect`] can use. Checked
/// with the configuration, before anything connects.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    if !["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(format!("`{url}`: use `sqlite:PATH` or `postgres://...`"));
    }
    postgres::check_url(url)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Sending,
    Sent,
    Cancelled,
    Suppressed,
    Failed,
    /// In its rule's holdout group: decided like a sent email, not sent.
    HeldOut,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Cancelled => "cancelled",
            Self::Suppressed => "suppressed",
            Self::Failed => "failed",
            Self::HeldOut => "held_out",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Self::Pending,
            Self::Sending,
            Self::Sent,
            Self::Cancelled,
            Self::Suppressed,
            Self::Failed,
            Self::HeldOut,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl From<Verdict> for Status {
    fn from(v: Verdict) -> Status {
        match v {
            Verdict::Cancelled => Status::Cancelled,
            Verdict::Suppressed => Status::Suppressed,
            Verdict::HeldOut => Status::HeldOut,
        }
    }
}

/// One email as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailRow {
    /// Creation order; ties in due time keep it.
    pub id: i64,
    pub key: String,
    pub customer_id: String,
    pub template: String,
    pub class: EmailClass,
    pub order_id: Option<String>,
    pub due_at: Timestamp,
    pub status: Status,
    pub reason: Option<String>,
    /// Template data: the trigger's part while pending; the whole of it
    /// (customer included) once approved.
    pub data: Value,
    /// Address and locale as decided: set when the email leaves `pending`.
    pub recipient: Option<String>,
    pub locale: Option<String>,
    pub attempts: u32,
    /// When it was first approved for delivery.
    pub first_attempt_at: Option<Timestamp>,
    /// The A/B variant rendered, when the template has variants.
    pub variant: Option<String>,
    /// When it falls due: `due_at`, or later if it was deferred or waits
    /// for a retry.
    pub fire_at: Timestamp,
    /// Why it was deferred past its due time (frequency cap, quiet hours).
    pub deferred: Option<String>,
    /// Until when the worker that claimed it (`sending`) holds it, as
    /// stored when it was read: no other worker takes it over before then.
    pub lease_until: Option<Timestamp>,
}

/// A claim on approved emails: whoever holds it delivers them. A worker
/// that dies leaves its claims to expire; the same worker (same id) started
/// again takes its own back at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: Timestamp,
}

/// An email that went out, or was held out (its rule's holdout group), as
/// the report counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEmail {
    pub customer_id: String,
    pub template: String,
    pub class: EmailClass,
    pub variant: Option<String>,
    pub at: Timestamp,
    /// Held out: decided as a sent one would have been, never sent.
    pub held_out: bool,
}

/// Emails and events waiting, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    /// Pending emails more than [`OVERDUE_AFTER`] past their fire time: the
    /// workers are not keeping up (or none is running).
    pub overdue: u64,
    /// Events naming no customer that wait for their order.
    pub parked: u64,
    /// Webhook deliveries stored and not applied yet.
    pub intake: u64,
}

/// An event that names no customer and an order not placed yet, kept until
/// the order comes or its wait is over.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    /// What is applied once the order names the customer.
    pub event: Unresolved,
    /// When it stops waiting and goes to the dead letters.
    pub expires_at: Timestamp,
    /// The event as received (a source's `Entry::raw`), its message key
    /// and where it came from: the dead-letter record, should the order
    /// never come.
    pub raw: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub source: String,
    pub coordinates: Value,
    /// The stream (position key) it came on: its reader gives up on it,
    /// and fires the emails it schedules once applied.
    pub stream: String,
}

impl ParkedEvent {
    /// The event as stored (JSON text).
    fn event_json(&self) -> Result<String> {
        serde_json::to_string(&self.event).map_err(|error| StoreError::CorruptParked {
            event_id: self.event.id.clone(),
            error,
        })
    }

    /// A parked event from its stored columns.
    #[allow(clippy::too_many_arguments)]
    fn from_stored(
        event_id: &str,
        event: &str,
        expires_at: Timestamp,
        raw: Vec<u8>,
        key: Option<Vec<u8>>,
        source: String,
        coordinates: &str,
        stream: String,
    ) -> Result<ParkedEvent> {
        let corrupt = |error| StoreError::CorruptParked {
            event_id: event_id.to_owned(),
            error,
        };
        Ok(ParkedEvent {
            event: serde_json::from_str(event).map_err(corrupt)?,
            expires_at,
            raw,
            key,
            source,
            coordinates: serde_json::from_str(coordinates).map_err(corrupt)?,
            stream,
        })
    }
}

/// How late a pending email may be before it counts as overdue.
pub const OVERDUE_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// A webhook delivery as received, waiting to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeRow {
    /// Arrival order: deliveries are applied by it.
    pub id: i64,
    /// Which shop connection (webhook endpoint) it came on.
    pub source: String,
    /// The platform's id of the delivery (Shopify's `X-Shopify-Webhook-Id`,
    /// WooCommerce's `X-WC-Webhook-Delivery-ID`), the same on its retries;
    /// `None` when the request carried none (then never a duplicate).
    pub delivery_id: Option<String>,
    /// What it is about, as the platform named it (`orders/create`).
    /// The request's headers, as the mappings read a message's.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The request body, byte for byte as signed.
    pub body: Vec<u8>,
    pub received_at: Timestamp,
}

/// What became of a delivery handed to [`Store::intake_put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored under this id: it will be applied.
    Stored(i64),
    /// Its (source, delivery id) was stored before: a retry of a delivery
    /// whose answer the platform did not get. Nothing stored; answer 2xx
    /// all the same, or the platform keeps retrying.
    Duplicate,
}

/// The lease that makes one worker at a time the intake's consumer.
pub const INTAKE_LEASE: &str = "intake";

/// The error for deliveries among `ids` that an `UPDATE ... WHERE
/// applied_at IS NULL` did not mark (`marked`): another worker's batch
/// applied them. Ids that were never stored, or were purged, count too:
/// nothing of this batch's must commit for them either.
fn taken_over(ids: &[i64], marked: &[i64]) -> Result<()> {
    let marked: std::collections::BTreeSet<i64> = marked.iter().copied().collect();
    let ids: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !marked.contains(id))
        .collect();
    if ids.is_empty() {
        Ok(())
    } else {
        Err(StoreError::IntakeTakenOver { ids })
    }
}

/// Who an email goes to, fixed when it is approved or decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Addressee {
    pub recipient: Option<String>,
    pub locale: String,
}

/// The writes of one batch, all or nothing.
pub trait Transaction {
    /// The digest of the event applied before under this id (empty for
    /// one applied before digests were kept); `None` if there was none.
    fn seen(&mut self, event_id: &str) -> Result<Option<String>>;
    /// Records that the event was applied, with the digest of its content,
    /// so that a reuse of its id for another event can be told apart from
    /// a redelivery.
    fn mark_seen(&mut self, event_id: &str, digest: &str) -> Result<()>;
    fn journey(&mut self, customer_id: &str) -> Result<Option<Journey>>;
    fn save_journey(&mut self, customer_id: &str, journey: &Journey) -> Result<()>;
    /// Inserts a pending email, fired by whoever reads `stream` (the
    /// position key of the event that scheduled it); `false` if its key
    /// exists (nothing changes).
    fn schedule(&mut self, email: &NewEmail, stream: &str) -> Result<bool>;
    /// Inserts an email already decided; `false` if its key exists.
    fn record(
        &mut self,
        email: &NewEmail,
        verdict: Verdict,
        reason: &str,
        to: &Addressee,
    ) -> Result<bool>;
    /// Cancels the pending emails `selector` names; returns their
    /// templates (for the metrics).
    fn cancel(&mut self, selector: &Selector, reason: &str, to: &Addressee) -> Result<Vec<String>>;
    /// The earliest fire time of a pending email (of `streams`, if given),
    /// as this transaction sees it.
    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>>;
    /// Pending emails whose fire time is at or before `until`, oldest
    /// first; of `streams` only, when given.
    fn due(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<EmailRow>>;
    /// Moves a pending email to `sending` with its final data, claimed by
    /// `lease`.
    fn approve(&mut self, id: i64, to: &Addressee, data: &Value, lease: &Lease) -> Result<()>;
    /// The shop-wide figures segments compare customers with.
    fn shop_stats(&mut self) -> Result<ShopStats>;
    fn save_shop_stats(&mut self, stats: &ShopStats) -> Result<()>;
    /// Makes a pending email wait until `fire_at`, for `reason`.
    fn postpone(&mut self, id: i64, fire_at: Timestamp, reason: &str) -> Result<()>;
    /// The customer's pending emails that fall due by `until`: those due
    /// together with one being decided.
    fn pending_of(&mut self, customer_id: &str, until: Timestamp) -> Result<Vec<EmailRow>>;
    /// Ends a pending email as cancelled or suppressed.
    fn decide(&mut self, id: i64, verdict: Verdict, reason: &str, to: &Addressee) -> Result<()>;
    fn is_suppressed(&mut self, address: &str) -> Result<bool>;
    fn set_position(&mut self, source: &str, position: &str) -> Result<()>;
    /// The customer who placed `order_id`, if their `order.placed` was
    /// applied. On PostgreSQL it waits for a transaction indexing the
    /// order, so an event is never parked for an order being placed.
    fn order_customer(&mut self, order_id: &str) -> Result<Option<String>>;
    /// Records that `customer_id` placed `order_id`; the first customer to
    /// place an order keeps it.
    fn index_order(&mut self, order_id: &str, customer_id: &str) -> Result<()>;
    /// Keeps an event until its order comes; `false` if an event of its id
    /// waits already (nothing changes).
    fn park(&mut self, parked: &ParkedEvent) -> Result<bool>;
    /// Takes the events waiting for `order_id`, by event time, then in the
    /// order they came.
    fn unpark(&mut self, order_id: &str) -> Result<Vec<ParkedEvent>>;
    /// Takes up to `limit` waiting events whose expiry is at or before
    /// `until` (of `streams` only, when given), oldest expiry first, and
    /// forgets their ids as applied: they were never applied, and the shop
    /// may send them again.
    fn expire_parked(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>>;
    /// Marks these deliveries applied at `at`, with the effects of the
    /// batch that applied them: their bodies are dropped, their rows kept
    /// (for [`Store::intake_put`]'s duplicates) until
    /// [`Store::intake_purge`].
    ///
    /// Fails with [`StoreError::IntakeTakenOver`] if one of them was
    /// applied already, by a worker that took the intake over when this
    /// one's lease ran out: the batch must not commit.
    fn intake_applied(&mut self, ids: &[i64], at: Timestamp) -> Result<()>;
    fn commit(self) -> Result<()>;
}

/// A store. Synchronous on purpose: the ingest loop runs on its own thread
/// and each call is a short local transaction.
pub trait Store: Send + 'static {
    type Tx<'a>: Transaction
    where
        Self: 'a;

    /// Whether an ingest transaction may also decide the emails due before
    /// its events (claiming them). Only where nothing can wait on those
    /// claims: SQLite has one writer at a time. PostgreSQL's workers share
    /// the store, and a transaction holding claimed emails must never wait
    /// for another's locks (two workers would deadlock, see
    /// `Session::claim_customers`), which applying events does.
    const DECIDES_DUE_IN_INGEST: bool;

    fn begin(&mut self) -> Result<Self::Tx<'_>>;
    fn position(&mut self, source: &str) -> Result<Option<String>>;
    /// The earliest fire time of a pending email (of `streams`, if given).
    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>>;
    /// The earliest expiry of an event waiting for its order (of
    /// `streams`, if given).
    fn next_expiry(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>>;
    /// Claims emails approved but not known to be sent, whose lease has
    /// expired (and, with `own`, those of `lease.owner` whatever their
    /// lease: a restarted worker's). They are delivered again with the same
    /// key, hence the same Message-ID.
    fn reclaim(&mut self, lease: &Lease, now: Timestamp, own: bool) -> Result<Vec<EmailRow>>;
    /// A random secret by name, made on first use and the same for every
    /// worker sharing the store.
    fn secret(&mut self, name: &str) -> Result<Vec<u8>>;
    /// The secret by name if one was made, without making it: a key that
    /// signed nothing must not be accepted.
    fn stored_secret(&mut self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Records that the customer unsubscribed from marketing emails; from
    /// the commit on, none is sent to them, queued ones included (they are
    /// checked again when due). `false`: no such customer.
    fn unsubscribe(&mut self, customer_id: &str) -> Result<bool> {
        let mut tx = self.begin()?;
        let Some(mut journey) = tx.journey(customer_id)? else {
            return Ok(false);
        };
        journey.profile.unsubscribed = true;
        tx.save_journey(customer_id, &journey)?;
        tx.commit()?;
        Ok(true)
    }
    /// Gives up this worker's claim on approved emails it will not deliver
    /// (shutting down): any worker may take them at once.
    fn release(&mut self, ids: &[i64]) -> Result<()>;
    /// Extends `lease.owner`'s claim on the approved emails `ids` to
    /// `lease.until`, for those it still holds (`sending` and its own,
    /// whether or not the lease ran out meanwhile): the ids renewed. One
    /// missing was taken over by another worker, whose lease had run out
    /// while it waited in this one's delivery queue: this worker must not
    /// send it.
    fn renew(&mut self, ids: &[i64], lease: &Lease) -> Result<Vec<i64>>;
    /// Records what became of approved emails, each `(id, outcome)`: sent,
    /// back to wait, failed or too late (see [`Outcome`]); a bounce fails
    /// the email and suppresses its address, transactional emails
    /// included. One transaction for them all: the delivery side records
    /// the outcomes that come in while the previous ones are written
    /// together.
    fn record_deliveries(&mut self, outcomes: &[(i64, Outcome)]) -> Result<()>;
    /// Records what became of the approved email `id` alone (see
    /// [`Store::record_deliveries`]).
    fn record_delivery(&mut self, id: i64, outcome: &Outcome) -> Result<()> {
        self.record_deliveries(&[(id, outcome.clone())])
    }
    /// When this shop went live: recorded on the first call (`now`, or the
    /// Unix epoch for a store that holds journeys already: one that went
    /// live before this was recorded), the same ever after.
    fn go_live(&mut self, now: Timestamp) -> Result<Timestamp>;
    /// The pending emails whose fire time is past `now`: template and due
    /// time, for the word at start on what will become of them.
    fn overdue(&mut self, now: Timestamp) -> Result<Vec<(String, Timestamp)>>;
    /// Every decided email, by due time then creation.
    fn decisions(&mut self) -> Result<Vec<EmailRow>>;
    /// How many emails wait, and how many of them are overdue at `now`.
    fn backlog(&mut self, now: Timestamp) -> Result<Backlog>;
    /// Every customer's journey, for the report (a batch job: all of them
    /// in memory at once).
    fn journeys(&mut self) -> Result<Vec<(String, Journey)>>;
    /// Every email sent: customer, template, variant and when it went out
    /// (its fire time), for the report.
    fn sent_emails(&mut self) -> Result<Vec<SentEmail>>;
    /// Stores one webhook delivery, durably: it is committed on its own
    /// before the call returns, so that a crash of the worker or of its
    /// machine after the HTTP handler answered 2xx (the platform will not
    /// send it again) loses nothing.
    ///
    /// With a delivery id, a second delivery of the same (source,
    /// delivery id) while its row is kept, applied or not, is
    /// [`Accepted::Duplicate`] and stores nothing: a retried webhook has
    /// effect once.
    fn intake_put(
        &mut self,
        source: &str,
        delivery_id: Option<&str>,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Accepted>;
    /// How many deliveries are stored and not applied yet: the HTTP side
    /// answers 503 past a limit (the platform retries later) and reports it
    /// as a metric.
    fn intake_depth(&mut self) -> Result<u64>;
    /// Takes or renews, for `owner`, the right to consume the intake until
    /// `until`; `true` when `owner` holds it now (it was free, expired at
    /// or before `now`, or `owner`'s already). One holder at a time among
    /// the workers sharing the store, so deliveries are applied in arrival
    /// order; a holder that dies is replaced once its lease expires.
    ///
    /// `now` is the caller's wall clock: workers whose clocks disagree by
    /// more than the margin between renewing and `until` may overlap, which
    /// [`Transaction::intake_applied`] turns into a failed batch rather
    /// than a delivery applied twice.
    fn intake_lease(&mut self, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool>;
    /// Up to `max` deliveries not applied yet, in arrival (id) order.
    ///
    /// Read by their mark, not from a position: on PostgreSQL a delivery
    /// may commit after a later one was read (its id taken first), and it
    /// is then the next one returned rather than skipped.
    fn intake_next(&mut self, max: usize) -> Result<Vec<IntakeRow>>;
    /// Deletes the deliveries applied before `before`; how many. They are
    /// kept until then so that a late retry is still a duplicate (Shopify
    /// retries for 48 hours).
    fn intake_purge(&mut self, before: Timestamp) -> Result<u64>;
    /// A second handle on the same store, for the delivery workers.
    fn reopen(&self) -> Result<Self>
    where
        Self: Sized;
}

/// A delivery's headers as the intake keeps them: JSON `[[name, value]]`,
/// values as text (header values are ASCII; anything else is replaced).
fn headers_json(headers: &[(String, Vec<u8>)]) -> String {
    let pairs: Vec<(&str, std::borrow::Cow<'_, str>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value)))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

/// The headers [`headers_json`] kept (none for a row without).
fn headers_from_json(stored: Option<String>) -> Vec<(String, Vec<u8>)> {
    stored
        .and_then(|s| serde_json::from_str::<Vec<(String, String)>>(&s).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn a_store_url_is_sqlite_or_a_postgres_url_the_store_can_use() {
        assert_eq!(check_url("sqlite:/var/lib/aftercare/aftercare.db"), Ok(()));
        assert_eq!(check_url("postgres://u@h/db?sslmode=require"), Ok(()));
        assert_eq!(check_url("postgresql://u@h/db"), Ok(()));
        assert_eq!(
            check_url("mysql://u@h/db"),
            Err("`mysql://u@h/db`: use `sqlite:PATH` or `postgres://...`".to_owned())
        );
        // The postgres crate reads `key=value` strings too; a store URL is
        // a URL.
        assert!(check_url("host=h user=u").is_err());
        let err = check_url("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("unknown sslmode `verify`"), "{err}");
    }
}
