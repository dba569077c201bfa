//! Ingest and schedule: events into the store, due emails out of it.
//!
//! [`Pipeline::ingest`] applies a batch of raw events in one transaction:
//! decode (invalid ones to the dead-letter file), dedup, step the journey,
//! write the emails and the position. [`Pipeline::fire`] claims the emails
//! due by a given time, checks each against the journey as it is then
//! ([`Rulebook::decide`], with what the store says of the customer), and
//! approves it for delivery or ends it with a reason.
//!
//! Time follows the events while there is a backlog: before an event is
//! applied, every email due by its `occurred_at` is fired first. So a
//! win-back due during a long outage goes out if no order came before it,
//! and stays cancelled if one did, exactly as if the events had arrived
//! live, and exactly as `simulate` plans it.
//!
//! An event may name its order and no customer (feeds of shipments,
//! returns and refunds often do): it is applied to the customer who placed
//! the order (the store's order index). One whose order is not placed yet
//! is parked in the store and applied in the transaction of the
//! `order.placed` that names its order, after it; if the order does not
//! come within `source.unknown_order_wait` of the event's time, it goes to
//! the dead letters ([`Pipeline::expire`]). That wait runs on event time,
//! as timers do: a backlog replayed days late parks and resolves exactly
//! as it did live, and `simulate`, which has no wall clock, plans the same.
//! An event naming a customer other than the one who placed its order is
//! dead-lettered with both ids: one of the two is wrong, and guessing
//! which would send one customer's shipping news to another.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::bounded::clip;
use crate::event::{Event, EventKind, Unresolved};
use crate::journey::insight::Counted;
use crate::journey::late::{self, BEFORE_GO_LIVE};
use crate::journey::{
    Command, DueEmail, EmailClass, Facts, Fate, Journey, Lateness, Round, Rulebook, ShopStats,
    Trigger, Verdict, later,
};
use crate::observe::Observer;
use crate::render::Locales;
use crate::source::webhook::INTAKE_STREAM;
use crate::source::{DeadLetters, Entry, Mapped, Position, REASON_MAX_BYTES};
use crate::store::{
    Addressee, EmailRow, Lease, ParkedEvent, Status, Store, StoreError, Transaction,
};
use crate::unsubscribe::Signer;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Dead letters could not be made durable: the batch is not committed
    /// and can be tried again.
    #[error("writing dead letters to {place}: {error}")]
    DeadLetter {
        place: String,
        error: std::io::Error,
    },
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
    /// Marketing emails held back by a policy (counted per deferral).
    pub deferred: u64,
    /// Events naming no customer and an order not placed yet, parked when
    /// read (not in `events`).
    pub parked: u64,
    /// Parked events applied once their order came.
    pub unparked: u64,
    /// Parked events whose order did not come in time: dead-lettered (not
    /// in `invalid`).
    pub expired: u64,
    /// Messages a mapping made no event of, on purpose (not in `events`).
    pub skipped: u64,
    /// Emails due before the shop went live, not sent (in `suppressed`).
    pub before_go_live: u64,
    /// Emails that would have gone out later than their rule's
    /// `expires_after`, not sent (in `suppressed`).
    pub emails_expired: u64,
    /// Emails of a rule's holdout group: decided, not sent (a sent one's
    /// control group in the report).
    pub held_out: u64,
}

/// What the templates need beyond the journey.
#[derive(Debug, Clone)]
pub struct Context {
    pub locales: Locales,
    pub default_timezone: String,
    /// Base of the unsubscribe link on marketing emails...
    pub unsubscribe_url: String,
    /// ...and what signs the token appended to it.
    pub signer: Signer,
}

/// How this worker claims the emails it approves.
#[derive(Debug, Clone)]
pub struct LeasePolicy {
    /// The worker's id: the same after a restart, distinct between workers
    /// that share a store.
    pub owner: String,
    /// How long a claim lasts unless renewed (the delivery workers renew
    /// it as a delivery starts and while it runs).
    pub duration: SignedDuration,
}

pub struct Pipeline<S: Store> {
    store: S,
    journeys: Rulebook,
    context: Context,
    fire_batch: usize,
    lease: LeasePolicy,
    /// The streams whose emails this worker fires (`None`: all). A timer
    /// belongs to the stream of the event that set it: its reader knows how
    /// far that stream's events are applied, so when it may fire.
    streams: Option<Vec<String>>,
    /// Earliest fire time of a pending email, kept so that the ingest loop
    /// need not ask the store before every event.
    next_fire: Option<Timestamp>,
    /// Earliest expiry of a parked event (of `streams`), kept likewise.
    next_expiry: Option<Timestamp>,
    /// How long, in event time, an event naming no customer waits for the
    /// order that names it.
    unknown_order_wait: SignedDuration,
    /// The go-live cut-off and the clock lateness is measured on.
    lateness: Lateness,
    pub stats: Stats,
    /// Metrics, when the process exports them.
    observer: Option<Arc<Observer>>,
}

enum Applied {
    New,
    Duplicate,
    Rejected(String),
    /// Kept until its order comes, or `expires_at`.
    Parked {
        expires_at: Timestamp,
    },
}

/// The default of `source.unknown_order_wait`.
pub const UNKNOWN_ORDER_WAIT: SignedDuration = SignedDuration::from_hours(24);

/// Parked events dead-lettered per transaction, at most.
const EXPIRE_BATCH: usize = 500;

/// The [`Deciding`] parts of pipeline `$p`, borrowed field by field so
/// that its store's transaction may be open meanwhile.
macro_rules! deciding {
    ($p:ident) => {
        Deciding {
            journeys: &$p.journeys,
            context: &$p.context,
            lateness: $p.lateness,
            lease: &$p.lease,
            streams: $p.streams.as_deref(),
            batch: $p.fire_batch,
            stats: &mut $p.stats,
            observer: &$p.observer,
        }
    };
}

impl<S: Store> Pipeline<S> {
    pub fn new(
        mut store: S,
        journeys: Rulebook,
        context: Context,
        fire_batch: usize,
        lease: LeasePolicy,
    ) -> Result<Pipeline<S>, StoreError> {
        let next_fire = store.next_fire(None)?;
        let next_expiry = store.next_expiry(None)?;
        Ok(Pipeline {
            store,
            journeys,
            context,
            fire_batch,
            lease,
            streams: None,
            next_fire,
            next_expiry,
            unknown_order_wait: UNKNOWN_ORDER_WAIT,
            lateness: Lateness::NONE,
            stats: Stats::default(),
            observer: None,
        })
    }

    /// How long an event naming no customer waits for its order
    /// (`source.unknown_order_wait`; [`UNKNOWN_ORDER_WAIT`] unless set).
    pub fn with_unknown_order_wait(mut self, wait: SignedDuration) -> Pipeline<S> {
        self.unknown_order_wait = wait;
        self
    }

    /// Judges lateness by `lateness` ([`Lateness::NONE`] unless set: no
    /// cut-off, every email decided at its own due time).
    pub fn with_lateness(mut self, lateness: Lateness) -> Pipeline<S> {
        self.lateness = lateness;
        self
    }

    /// Counts events and decisions in `observer` from now on.
    pub fn observe(&mut self, observer: Arc<Observer>) {
        self.observer = Some(observer);
    }

    /// How this worker claims the emails it approves.
    pub fn lease(&self) -> &LeasePolicy {
        &self.lease
    }

    pub fn store(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn next_fire(&self) -> Option<Timestamp> {
        self.next_fire
    }

    /// Sets the streams this worker reads (after a rebalance, say).
    pub fn set_streams(&mut self, streams: Option<Vec<String>>) -> Result<(), StoreError> {
        if streams != self.streams {
            self.streams = streams;
            self.next_fire = self.store.next_fire(self.streams.as_deref())?;
            self.next_expiry = self.store.next_expiry(self.streams.as_deref())?;
        }
        Ok(())
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
            // Counted again if the transaction fails and is tried again.
            let counted = self.stats;
            let fire_until = self
                .ingest_some(source, entries, &mut i, now, dead, approved)
                .inspect_err(|_| self.stats = counted)?;
            if let Some(until) = fire_until {
                self.expire(until, dead)?;
                self.fire(until, approved)?;
            }
        }
        Ok(())
    }

    /// Applies entries from `*i` on in one transaction, up to the end or to
    /// the first event that must wait for timers that cannot be decided in
    /// it (parked events to expire, due emails another worker's transaction
    /// holds): then the time to fire up to is returned. Where the store
    /// allows it ([`Store::DECIDES_DUE_IN_INGEST`]), emails due before an
    /// event are decided in the transaction, before the event; those
    /// approved are appended to `approved` once it commits.
    fn ingest_some(
        &mut self,
        source: &str,
        entries: &[Entry],
        i: &mut usize,
        now: Option<Timestamp>,
        dead: &mut DeadLetters,
        approved: &mut Vec<EmailRow>,
    ) -> Result<Option<Timestamp>, PipelineError> {
        let mut fire_until = None;
        let mut fired = Vec::new();
        let start = *i;
        let mut positions: Vec<&Position> = Vec::new();
        let mut tx = self.store.begin()?;
        let mut shop = tx.shop_stats()?;
        // Whether an event of the batch changed the shop's figures.
        let mut shop_changed = false;
        while let Some(entry) = entries.get(*i) {
            // An event over the size limit is not even parsed: the source
            // kept only its first bytes.
            let mut dropped = Vec::new();
            let decoded = match (entry.oversized, &entry.mapped) {
                (Some(oversized), _) => Err(oversized.to_string()),
                (None, Some(Mapped::Failed { reason })) => Err(reason.clone()),
                (None, Some(Mapped::Skipped { rule })) => {
                    self.stats.skipped += 1;
                    if let Some(o) = &self.observer {
                        o.event_skipped(rule);
                    }
                    tracing::debug!(source, coordinates = %entry.coordinates, mapping = %rule, "Skipped a message its mapping makes no event of.");
                    advance(&mut positions, entry);
                    *i += 1;
                    continue;
                }
                (None, mapped) => Event::decode_noting(&entry.raw, &mut dropped)
                    .map_err(|e| mapped_reason(mapped.as_ref(), &e.to_string())),
            };
            match decoded {
                Err(invalid) => {
                    self.stats.invalid += 1;
                    if let Some(o) = &self.observer {
                        o.invalid_event(source_label(source, entry));
                    }
                    let invalid = clip(&invalid, REASON_MAX_BYTES);
                    tracing::warn!(source, coordinates = %entry.coordinates, error = %invalid, "Skipped invalid event.");
                    write_dead(dead, source, entry, &invalid)?;
                }
                Ok(event) => {
                    let bound = now.map_or(event.occurred_at, |n| n.min(event.occurred_at));
                    if S::DECIDES_DUE_IN_INGEST
                        && self.next_fire.is_some_and(|t| t <= bound)
                        && self.next_expiry.is_none_or(|t| t > bound)
                    {
                        // Emails due before the event are decided before
                        // it, in this transaction: an order confirmation is
                        // due as its order is applied, and transactions of
                        // their own would make two of every event. One
                        // batch at most: a backlog is decided in
                        // transactions of its own, below. Only where the
                        // store allows it (SQLite, one writer): elsewhere
                        // a transaction holding claimed emails must not go
                        // on to wait for the locks the events take.
                        let mut d = deciding!(self);
                        decide_due(&mut d, &mut tx, bound, Some(&shop), &mut fired)?;
                        self.next_fire = tx.next_fire(self.streams.as_deref())?;
                    }
                    // Still due (more than a batch, held by another
                    // worker's transaction, a retry put back within the
                    // time), or events to expire: decided in transactions
                    // of their own first.
                    if [self.next_fire, self.next_expiry]
                        .into_iter()
                        .any(|t| t.is_some_and(|t| t <= bound))
                    {
                        fire_until = Some(bound);
                        break;
                    }
                    for d in &dropped {
                        if let Some(o) = &self.observer {
                            o.field_dropped(d.field);
                        }
                        tracing::warn!(source, coordinates = %entry.coordinates, field = d.field, reason = %clip(&d.reason, REASON_MAX_BYTES), "Dropped a malformed optional field; the event goes on.");
                    }
                    let applied = apply(
                        &mut tx,
                        &self.journeys,
                        &self.context.locales,
                        (&mut shop, &mut shop_changed),
                        &self.observer,
                        &event,
                        (source, entry, self.unknown_order_wait),
                        (&mut self.next_fire, &mut self.next_expiry),
                        &mut self.stats,
                        dead,
                    )?;
                    match applied {
                        Applied::New => {
                            self.stats.events += 1;
                            if let Some(o) = &self.observer {
                                o.event(source_label(source, entry), event.kind.type_name());
                            }
                        }
                        Applied::Duplicate => {
                            self.stats.duplicates += 1;
                            tracing::debug!(event_id = %event.id, "Skipped duplicate event.");
                        }
                        Applied::Rejected(reason) => {
                            self.stats.invalid += 1;
                            if let Some(o) = &self.observer {
                                o.invalid_event(source_label(source, entry));
                            }
                            let reason = clip(&reason, REASON_MAX_BYTES);
                            tracing::warn!(source, coordinates = %entry.coordinates, customer_id = %clip(event.customer_id().unwrap_or_default(), ID_MAX_BYTES), error = %reason, "Skipped invalid event.");
                            write_dead(dead, source, entry, &reason)?;
                        }
                        Applied::Parked { expires_at } => {
                            self.stats.parked += 1;
                            count_parked(&self.observer, "parked");
                            tracing::info!(source, coordinates = %entry.coordinates, event_id = %event.id, order_id = %event.kind.order_id(), %expires_at, "Parked an event naming no customer until its order comes.");
                        }
                    }
                }
            }
            advance(&mut positions, entry);
            *i += 1;
        }
        for position in positions {
            tx.set_position(&position.key, &position.value)?;
        }
        // Webhook deliveries are consumed each by its own mark, with the
        // effects of their events (the last event of one, as a position).
        let delivered: Vec<i64> = entries[start..*i]
            .iter()
            .filter(|e| e.position.key == INTAKE_STREAM && e.advances())
            .filter_map(|e| e.position.value.parse().ok())
            .collect();
        if !delivered.is_empty() {
            tx.intake_applied(&delivered, Timestamp::now())?;
        }
        if shop_changed {
            tx.save_shop_stats(&shop)?;
        }
        dead.sync().map_err(|error| PipelineError::DeadLetter {
            place: dead.place(),
            error,
        })?;
        tx.commit()?;
        approved.append(&mut fired);
        Ok(fire_until)
    }

    /// Dead-letters the parked events (of this worker's streams) whose
    /// order has not come by `until` (event time, as for [`Pipeline::fire`]),
    /// each with its own coordinates, and forgets their ids so that the
    /// shop can send them again.
    pub fn expire(
        &mut self,
        until: Timestamp,
        dead: &mut DeadLetters,
    ) -> Result<(), PipelineError> {
        let mut held_since: Option<std::time::Instant> = None;
        while self.next_expiry.is_some_and(|t| t <= until) {
            let mut tx = self.store.begin()?;
            let expired = tx.expire_parked(until, self.streams.as_deref(), EXPIRE_BATCH)?;
            for parked in &expired {
                write_dead(
                    dead,
                    &parked.source,
                    &parked_entry(parked),
                    &expiry_reason(parked),
                )?;
            }
            dead.sync().map_err(|error| PipelineError::DeadLetter {
                place: dead.place(),
                error,
            })?;
            tx.commit()?;
            // Counted once committed: a failed attempt is made again whole.
            for parked in &expired {
                self.stats.expired += 1;
                if let Some(o) = &self.observer {
                    o.invalid_event(source_label(&parked.source, &parked_entry(parked)));
                }
                count_parked(&self.observer, "expired");
                tracing::warn!(source = %parked.source, coordinates = %parked.coordinates, event_id = %parked.event.id, error = %expiry_reason(parked), "Gave up on an event waiting for its order.");
            }
            self.next_expiry = self.store.next_expiry(self.streams.as_deref())?;
            if expired.is_empty() {
                // What is due is held by another worker's transaction
                // (PostgreSQL), taking it for its order: wait for that to
                // end, briefly, as `fire` does, rather than spin; what is
                // still held then is looked at on a later call.
                let held = held_since.get_or_insert_with(std::time::Instant::now);
                if held.elapsed() >= HELD_WAIT {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            } else {
                held_since = None;
            }
        }
        Ok(())
    }

    /// Claims emails approved but never recorded as sent: with `own`, this
    /// worker's from before a restart (and any whose lease expired); without,
    /// only expired ones of other workers.
    pub fn reclaim(&mut self, own: bool) -> Result<Vec<EmailRow>, StoreError> {
        let now = Timestamp::now();
        let lease = Lease {
            owner: self.lease.owner.clone(),
            until: later(now, self.lease.duration),
        };
        self.store.reclaim(&lease, now, own)
    }

    /// Decides every email due by `until`: approved ones are appended to
    /// `approved`, the others end cancelled or suppressed with a reason.
    pub fn fire(
        &mut self,
        until: Timestamp,
        approved: &mut Vec<EmailRow>,
    ) -> Result<(), StoreError> {
        let mut held_since: Option<std::time::Instant> = None;
        loop {
            let mut tx = self.store.begin()?;
            let mut batch = Vec::new();
            let mut d = deciding!(self);
            if !decide_due(&mut d, &mut tx, until, None, &mut batch)? {
                drop(tx);
                // Nothing left, or what is left is held for a moment by
                // another worker's transaction (a shared store): wait for
                // that to end, briefly, so that a return leaves nothing due
                // this worker could have taken.
                self.next_fire = self.store.next_fire(self.streams.as_deref())?;
                let held = held_since.get_or_insert_with(std::time::Instant::now);
                if self.next_fire.is_some_and(|t| t <= until) && held.elapsed() < HELD_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                return Ok(());
            }
            held_since = None;
            tx.commit()?;
            approved.append(&mut batch);
        }
    }
}

/// What deciding due emails needs of a pipeline, borrowed beside its
/// store's open transaction.
struct Deciding<'a> {
    journeys: &'a Rulebook,
    context: &'a Context,
    lateness: Lateness,
    lease: &'a LeasePolicy,
    streams: Option<&'a [String]>,
    batch: usize,
    stats: &'a mut Stats,
    observer: &'a Option<Arc<Observer>>,
}

/// Decides the next batch (at most `d.batch`) of emails due by `until`,
/// in `tx`: approved ones are appended to `approved` (to deliver once `tx`
/// commits), the others end cancelled, suppressed or deferred. `shop`: the
/// shop's figures as the transaction has them, or `None` to read them once
/// the due emails are claimed (PostgreSQL then reads them without a lock).
/// `false` when nothing was due.
fn decide_due<T: Transaction>(
    d: &mut Deciding<'_>,
    tx: &mut T,
    until: Timestamp,
    shop: Option<&ShopStats>,
    approved: &mut Vec<EmailRow>,
) -> Result<bool, StoreError> {
    // Leases run on the wall clock, whatever time the events are at.
    let lease = Lease {
        owner: d.lease.owner.clone(),
        until: later(Timestamp::now(), d.lease.duration),
    };
    let due = tx.due(until, d.streams, d.batch)?;
    if due.is_empty() {
        return Ok(false);
    }
    let read;
    let shop = match shop {
        Some(shop) => shop,
        None => {
            read = tx.shop_stats()?;
            &read
        }
    };
    let now = Timestamp::now();
    let round = Round {
        until,
        now,
        lateness: d.lateness,
    };
    for mut email in due {
        let journey = tx.journey(&email.customer_id)?.unwrap_or_default();
        let to = addressee(&d.context.locales, &journey);
        let this = due_email(&email);
        let bounced = match &to.recipient {
            Some(address) => tx.is_suppressed(address)?,
            None => false,
        };
        let pending = if d.journeys.needs_pending(&this, &d.lateness) {
            tx.pending_of(&email.customer_id, now)?
        } else {
            Vec::new()
        };
        let pending: Vec<DueEmail<'_>> = pending.iter().map(due_email).collect();
        let facts = Facts {
            journey: &journey,
            has_address: to.recipient.is_some(),
            bounced,
            pending: &pending,
        };
        let fate = guarded(|| d.journeys.decide(&this, &facts, &round)).unwrap_or_else(|reason| {
            Fate::NotSent {
                verdict: Verdict::Suppressed,
                reason,
            }
        });
        let at = round.decided_at(&this);
        let counts = (&mut *d.stats, d.observer);
        match fate {
            Fate::Send => {}
            Fate::NotSent {
                verdict: Verdict::HeldOut,
                reason,
            } => {
                // The cap counts a held-out email too, so that the
                // groups differ by this email alone.
                not_sent(tx, counts, &email, &to, Verdict::HeldOut, &reason)?;
                under_cap(tx, &email, journey, at)?;
                continue;
            }
            Fate::NotSent { verdict, reason } => {
                not_sent(tx, counts, &email, &to, verdict, &reason)?;
                continue;
            }
            Fate::Retry { fire_at, reason } => {
                tx.postpone(email.id, fire_at, reason)?;
                d.stats.deferred += 1;
                count_email(d.observer, &email.template, "deferred");
                continue;
            }
            Fate::Defer { fire_at, reason } => {
                wait(tx, counts, &email, fire_at, &reason)?;
                // The rest of the batch may fall due after the new
                // time: take it again in time order.
                break;
            }
        }
        let data = guarded(|| template_data(d.journeys, d.context, &email, &journey, &to, shop));
        let data = match data {
            Ok(data) => data,
            Err(reason) => {
                let counts = (&mut *d.stats, d.observer);
                not_sent(tx, counts, &email, &to, Verdict::Suppressed, &reason)?;
                continue;
            }
        };
        email.data = data;
        tx.approve(email.id, &to, &email.data, &lease)?;
        under_cap(tx, &email, journey, at)?;
        email.status = Status::Sending;
        email.recipient = to.recipient;
        email.locale = Some(to.locale);
        email.lease_until = Some(lease.until);
        d.stats.approved += 1;
        approved.push(email);
    }
    Ok(true)
}

/// A marketing email approved (or held out) `at`: the customer's frequency
/// cap counts from then.
fn under_cap<T: Transaction>(
    tx: &mut T,
    email: &EmailRow,
    mut journey: Journey,
    at: Timestamp,
) -> Result<(), StoreError> {
    if email.class == EmailClass::Marketing {
        journey.last_marketing_at = Some(at);
        tx.save_journey(&email.customer_id, &journey)?;
    }
    Ok(())
}

/// Puts `email` back to wait until `fire_at`, for `reason`, and counts it.
fn wait<T: Transaction>(
    tx: &mut T,
    (stats, observer): (&mut Stats, &Option<Arc<Observer>>),
    email: &EmailRow,
    fire_at: Timestamp,
    reason: &str,
) -> Result<(), StoreError> {
    tracing::debug!(key = %email.key, %fire_at, %reason, "Email deferred.");
    tx.postpone(email.id, fire_at, reason)?;
    stats.deferred += 1;
    count_email(observer, &email.template, "deferred");
    Ok(())
}

/// Records that `email` is not sent, for `reason`, and counts it.
fn not_sent<T: Transaction>(
    tx: &mut T,
    (stats, observer): (&mut Stats, &Option<Arc<Observer>>),
    email: &EmailRow,
    to: &Addressee,
    verdict: Verdict,
    reason: &str,
) -> Result<(), StoreError> {
    if reason.starts_with(INTERNAL_ERROR) {
        tracing::error!(key = %email.key, %reason, "Email not sent.");
    } else {
        tracing::debug!(key = %email.key, %reason, "Email not sent.");
    }
    tx.decide(email.id, verdict, reason, to)?;
    match verdict {
        Verdict::Cancelled => stats.cancelled += 1,
        Verdict::Suppressed => stats.suppressed += 1,
        Verdict::HeldOut => stats.held_out += 1,
    }
    if reason == BEFORE_GO_LIVE {
        stats.before_go_live += 1;
        if let Some(o) = observer {
            o.email_not_sent(&email.template, BEFORE_GO_LIVE);
        }
    } else if reason.starts_with(late::EXPIRED) {
        stats.emails_expired += 1;
        count_email(observer, &email.template, late::EXPIRED);
    } else {
        count_email(observer, &email.template, Status::from(verdict).as_str());
    }
    Ok(())
}

/// The email as the journey's decision sees it.
fn due_email(email: &EmailRow) -> DueEmail<'_> {
    DueEmail {
        id: email.id,
        customer_id: &email.customer_id,
        template: &email.template,
        class: email.class,
        order_id: email.order_id.as_deref(),
        variant: email.variant.as_deref(),
        due_at: email.due_at,
        fire_at: email.fire_at,
        retry: email.first_attempt_at.is_some(),
    }
}

/// The most of a customer id a log line about an invalid event quotes.
const ID_MAX_BYTES: usize = 100;

/// How long `fire` waits for due emails another worker's transaction
/// holds before it returns without them (they are fired on a later call).
const HELD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The whole template data but `shop` (added at render time, so that a
/// brand change applies to emails already approved).
fn template_data(
    journeys: &Rulebook,
    context: &Context,
    email: &EmailRow,
    journey: &Journey,
    to: &Addressee,
    shop: &ShopStats,
) -> Value {
    // The moment it goes out, in event time.
    let now = email.fire_at;
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
        let mut customer = json!({
            "id": email.customer_id,
            "email": to.recipient,
            "name": p.name,
            "first_name": p.first_name(),
            "locale": to.locale,
            // The region of the customer's own tag (`US` of `en-US`): the
            // template folder is the language's, money and dates follow
            // the region.
            "region": p.locale.as_deref().and_then(crate::render::region_of),
            "timezone": timezone,
        });
        if let (Value::Object(c), Value::Object(more)) = (
            &mut customer,
            journeys.insights(journey, now, shop, &to.locale),
        ) {
            c.extend(more);
        }
        data["customer"] = customer;
        // Every email has `tier`: the one it congratulates on, or null.
        data["tier"] = data["tier"]["id"]
            .as_str()
            .and_then(|id| journeys.tier_by_id(id, &to.locale))
            .unwrap_or(Value::Null);
        data["email"] = json!({"template": email.template, "class": email.class.as_str()});
        data["unsubscribe_url"] = match email.class {
            EmailClass::Marketing => json!(
                context
                    .signer
                    .url(&context.unsubscribe_url, &email.customer_id)
            ),
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

fn count_email(observer: &Option<Arc<Observer>>, template: &str, status: &str) {
    if let Some(o) = observer {
        o.email(template, status);
    }
}

/// The topic of a Kafka event, else the source's name (a file).
fn source_label<'a>(source: &'a str, entry: &'a Entry) -> &'a str {
    entry.coordinates["topic"].as_str().unwrap_or(source)
}

fn write_dead(
    dead: &mut DeadLetters,
    source: &str,
    entry: &Entry,
    reason: &str,
) -> Result<(), PipelineError> {
    dead.write(source, entry, reason)
        .map_err(|error| PipelineError::DeadLetter {
            place: dead.place(),
            error,
        })
}

fn addressee(locales: &Locales, journey: &Journey) -> Addressee {
    Addressee {
        recipient: journey.profile.email.clone(),
        locale: locales
            .resolve(journey.profile.locale.as_deref())
            .to_owned(),
    }
}

/// Where an event came from, and how long it may wait for its order.
type Arrival<'a> = (&'a str, &'a Entry, SignedDuration);

/// Applies one decoded event: finds its customer (named, or from its
/// order), parks it if neither is known, steps the journey, and after an
/// `order.placed` applies the events parked for that order.
#[allow(clippy::too_many_arguments)]
fn apply<T: Transaction>(
    tx: &mut T,
    journeys: &Rulebook,
    locales: &Locales,
    (shop, shop_changed): (&mut ShopStats, &mut bool),
    observer: &Option<Arc<Observer>>,
    event: &Unresolved,
    (source, entry, wait): Arrival<'_>,
    (next_fire, next_expiry): (&mut Option<Timestamp>, &mut Option<Timestamp>),
    stats: &mut Stats,
    dead: &mut DeadLetters,
) -> Result<Applied, PipelineError> {
    let order_id = event.kind.order_id();
    // Looked up before the journey is read: on PostgreSQL this locks the
    // order, and every transaction takes the order before the customer.
    let owner = tx.order_customer(order_id)?;
    let digest = digest(event);
    match tx.seen(&event.id)? {
        // Applied before digests were kept: a redelivery, most likely.
        Some(before) if before.is_empty() => return Ok(Applied::Duplicate),
        Some(before) if redelivered(event, owner.as_deref(), &before) => {
            return Ok(Applied::Duplicate);
        }
        Some(before) => {
            return Ok(Applied::Rejected(format!(
                "event id already applied with different content (digest {before} then, {digest} now)"
            )));
        }
        None => {}
    }
    let customer = match (event.customer_id(), owner) {
        (Some(named), Some(owner)) if named != owner => {
            return Ok(Applied::Rejected(format!(
                "order {order_id} was placed by customer {owner}; the event names customer {named}"
            )));
        }
        (Some(named), _) => named.to_owned(),
        (None, Some(owner)) => owner,
        (None, None) => {
            let parked = ParkedEvent {
                event: event.clone(),
                expires_at: later(event.occurred_at, wait),
                raw: entry.raw.clone(),
                key: entry.key.clone(),
                source: source.to_owned(),
                coordinates: entry.coordinates.clone(),
                stream: entry.position.key.clone(),
            };
            if !tx.park(&parked)? {
                return Ok(Applied::Duplicate);
            }
            // Its id is taken from now on: a redelivery while it waits is
            // a duplicate, and so is one naming the customer.
            tx.mark_seen(&event.id, &digest)?;
            *next_expiry =
                Some(next_expiry.map_or(parked.expires_at, |t| t.min(parked.expires_at)));
            return Ok(Applied::Parked {
                expires_at: parked.expires_at,
            });
        }
    };
    let event = event.clone().resolve(customer);
    let mut journey = Journeying {
        tx,
        journeys,
        locales,
        shop,
        shop_changed,
        observer,
        next_fire,
        stats,
    };
    let applied = journey.step(&event, &entry.position.key, Some(&digest))?;
    if matches!(applied, Applied::New) && matches!(event.kind, EventKind::OrderPlaced { .. }) {
        journey.tx.index_order(order_id, &event.customer.id)?;
        journey.unpark(order_id, &event.customer.id, dead)?;
    }
    Ok(applied)
}

/// Whether an event whose id was applied before with `before` (a digest)
/// is that event again. Its digest is kept as the event came, so the same
/// event is recognised with or without its customer id: one naming none
/// where the first named the order's customer, or one naming its customer
/// where the first (parked, or resolved by its order) named none.
fn redelivered(event: &Unresolved, owner: Option<&str>, before: &str) -> bool {
    if digest(event) == before {
        return true;
    }
    let mut other = event.clone();
    other.customer.id = match event.customer_id() {
        Some(_) => None,
        None => owner.map(str::to_owned),
    };
    other.customer.id.is_some() != event.customer.id.is_some() && digest(&other) == before
}

/// The pipeline's part that steps journeys in one transaction, borrowed
/// apart from the store so that it can run within the store's transaction.
struct Journeying<'a, T> {
    tx: &'a mut T,
    journeys: &'a Rulebook,
    locales: &'a Locales,
    shop: &'a mut ShopStats,
    shop_changed: &'a mut bool,
    observer: &'a Option<Arc<Observer>>,
    next_fire: &'a mut Option<Timestamp>,
    stats: &'a mut Stats,
}

impl<T: Transaction> Journeying<'_, T> {
    /// Steps the customer's journey on `event` and writes what it decided,
    /// firing from `stream`. With `digest`, records the event as applied
    /// (a parked event was recorded when it was parked).
    fn step(
        &mut self,
        event: &Event,
        stream: &str,
        digest: Option<&str>,
    ) -> Result<Applied, StoreError> {
        let tx = &mut *self.tx;
        let customer_id = &event.customer.id;
        let state = tx.journey(customer_id)?;
        let before = state.as_ref().map(Counted::of).unwrap_or_default();
        let shop = &*self.shop;
        // The step is pure: a panic in it (a bug, or a state no bound
        // foresaw) leaves nothing half done, so the event goes to the dead
        // letters and the events behind it are applied. Otherwise the
        // worker would stop on it at every start.
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.journeys.step_with(state, event, shop)
        }));
        let transition = match stepped {
            Ok(Ok(t)) => t,
            // Not recorded as seen: the shop may fix the event and send it
            // again.
            Ok(Err(rejection)) => return Ok(Applied::Rejected(rejection.to_string())),
            Err(panic) => {
                return Ok(Applied::Rejected(format!(
                    "could not be applied (internal error: {})",
                    panic_message(panic.as_ref())
                )));
            }
        };
        if let Some(digest) = digest {
            tx.mark_seen(&event.id, digest)?;
        }
        tx.save_journey(customer_id, &transition.state)?;
        *self.shop_changed |= self.shop.record(&before, &Counted::of(&transition.state));
        let to = addressee(self.locales, &transition.state);
        for command in &transition.commands {
            match command {
                Command::Schedule(email) => {
                    if tx.schedule(email, stream)? {
                        self.stats.scheduled += 1;
                        *self.next_fire =
                            Some(self.next_fire.map_or(email.due_at, |t| t.min(email.due_at)));
                    }
                }
                Command::Cancel { selector, reason } => {
                    for template in tx.cancel(selector, reason, &to)? {
                        self.stats.cancelled += 1;
                        count_email(self.observer, &template, "cancelled");
                    }
                }
                Command::Decide {
                    email,
                    verdict,
                    reason,
                } => {
                    if tx.record(email, *verdict, reason, &to)? {
                        self.stats.cancelled += 1;
                        count_email(
                            self.observer,
                            &email.template,
                            Status::from(*verdict).as_str(),
                        );
                    }
                }
            }
        }
        Ok(Applied::New)
    }

    /// Applies the events parked for `order_id`, now known to be
    /// `customer_id`'s, in event order, each firing from its own stream.
    fn unpark(
        &mut self,
        order_id: &str,
        customer_id: &str,
        dead: &mut DeadLetters,
    ) -> Result<(), PipelineError> {
        for parked in self.tx.unpark(order_id)? {
            let event = parked.event.clone().resolve(customer_id.to_owned());
            let entry = parked_entry(&parked);
            let label = source_label(&parked.source, &entry);
            match self.step(&event, &parked.stream, None)? {
                Applied::Rejected(reason) => {
                    // It stays recorded as applied (it was when parked): a
                    // step rejects only an order without an address, or
                    // panics on a bug, and the same event sent again would
                    // meet the same.
                    self.stats.invalid += 1;
                    if let Some(o) = self.observer {
                        o.invalid_event(label);
                    }
                    let reason = clip(&reason, REASON_MAX_BYTES);
                    tracing::warn!(source = %parked.source, coordinates = %parked.coordinates, error = %reason, "Skipped invalid event.");
                    write_dead(dead, &parked.source, &entry, &reason)?;
                }
                _ => {
                    self.stats.unparked += 1;
                    if let Some(o) = self.observer {
                        o.event(label, event.kind.type_name());
                    }
                    count_parked(self.observer, "applied");
                    tracing::info!(source = %parked.source, coordinates = %parked.coordinates, event_id = %event.id, order_id, "Applied an event that waited for its order.");
                }
            }
        }
        Ok(())
    }
}

/// Notes the position `entry` moves its stream to, if it does.
fn advance<'a>(positions: &mut Vec<&'a Position>, entry: &'a Entry) {
    if !entry.advances() {
        return;
    }
    match positions.iter_mut().find(|p| p.key == entry.position.key) {
        Some(p) => *p = &entry.position,
        None => positions.push(&entry.position),
    }
}

/// Why an event is refused, naming the mapping that made it, if one did.
fn mapped_reason(mapped: Option<&Mapped>, reason: &str) -> String {
    match mapped {
        Some(Mapped::Event { rule, count: 1, .. }) => format!("mapping \"{rule}\": {reason}"),
        Some(Mapped::Event { rule, index, count }) => {
            format!(
                "mapping \"{rule}\", event {} of {count}: {reason}",
                index + 1
            )
        }
        _ => reason.to_owned(),
    }
}

/// The source entry a parked event came as: what its dead letter holds.
fn parked_entry(parked: &ParkedEvent) -> Entry {
    Entry {
        raw: parked.raw.clone(),
        key: parked.key.clone(),
        coordinates: parked.coordinates.clone(),
        position: Position {
            key: parked.stream.clone(),
            value: String::new(),
        },
        oversized: None,
        mapped: None,
    }
}

/// Why a parked event went to the dead letters.
fn expiry_reason(parked: &ParkedEvent) -> String {
    // In the milliseconds the store keeps the expiry in.
    let waited = SignedDuration::from_millis(
        parked.expires_at.as_millisecond() - parked.event.occurred_at.as_millisecond(),
    );
    format!(
        "order {} not seen within {waited:#}; the event names no customer",
        parked.event.kind.order_id()
    )
}

fn count_parked(observer: &Option<Arc<Observer>>, outcome: &str) {
    if let Some(o) = observer {
        o.parked_event(outcome);
    }
}

/// What an event says, as decoded: the same for a redelivery however its
/// JSON is laid out, different for another event under the same id. The
/// first 16 bytes of a SHA-256, in hex. An event naming its customer is
/// serialized as before customer ids were optional, so its digest is too.
fn digest(event: &Unresolved) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(event).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..16])
}

/// The start of the reason of an email a bug kept from going out.
const INTERNAL_ERROR: &str = "internal error";

/// Runs a pure decision; a panic in it becomes a reason (`internal error:
/// ...`) for the one email it was about, instead of stopping the worker on
/// that email at every start.
fn guarded<T>(decide: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decide))
        .map_err(|panic| format!("{INTERNAL_ERROR}: {}", panic_message(panic.as_ref())))
}

/// What a caught panic said, for a reason or a log line.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic");
    text.chars().take(200).collect()
}

/// The pause before trying again a step that failed for a passing reason
/// (the store unreachable): from half a second, doubling after each
/// attempt, up to 30 s.
pub fn outage_pause(attempts: u32) -> std::time::Duration {
    backoff(
        attempts,
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(30),
        0.0,
    )
    .unsigned_abs()
}

/// A retry delay: doubling from `first` after each attempt, capped at
/// `max`, with up to a fifth of jitter (`jitter` in 0..=1) so that a
/// recovering server is not hit by every email at once.
pub fn backoff(
    attempts: u32,
    first: std::time::Duration,
    max: std::time::Duration,
    jitter: f64,
) -> SignedDuration {
    let base = first.as_secs_f64() * 2f64.powi(attempts.min(30) as i32);
    let secs = base.min(max.as_secs_f64()) * (1.0 + 0.2 * jitter.clamp(0.0, 1.0));
    SignedDuration::from_secs_f64(secs)
}

#[cfg(test)]
mod catch_up_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::journey::HOLDOUT_VARIANT;
    use crate::store::SqliteStore;

    fn pipeline() -> Pipeline<SqliteStore> {
        let context = Context {
            locales: Locales::new(vec!["en".into(), "hy".into()], "en"),
            default_timezone: "UTC".into(),
            unsubscribe_url: "https://shop.example.com/unsubscribe".into(),
            signer: Signer::new(b"test secret"),
        };
        Pipeline::new(
            SqliteStore::in_memory().unwrap(),
            Rulebook::new(Config::embedded().journeys),
            context,
            10,
            LeasePolicy {
                owner: "test".into(),
                duration: SignedDuration::from_mins(5),
            },
        )
        .unwrap()
    }

    fn placed(id: &str, at: &str, order: &str, email: Option<&str>) -> Entry {
        let email = email.map_or(String::new(), |e| format!(r#","email":"{e}""#));
        let raw = format!(
            r#"{{"event_id":"{id}","type":"order.placed","occurred_at":"{at}","customer":{{"id":"c-1"{email},"locale":"hy-AM","marketing_consent":true}},"order":{{"id":"{order}","total":"5.00","currency":"EUR","items":[]}}}}"#
        );
        Entry {
            raw: raw.into_bytes(),
            key: None,
            coordinates: json!({"line": id}),
            position: Position {
                key: "test".into(),
                value: id.to_owned(),
            },
            oversized: None,
            mapped: None,
        }
    }

    fn status_of(p: &mut Pipeline<SqliteStore>, key: &str) -> Option<(Status, Option<String>)> {
        let store = p.store();
        let mut tx = store.begin().unwrap();
        let rows = tx.due(Timestamp::MAX, None, 1000).unwrap();
        drop(tx);
        let pending = rows
            .iter()
            .find(|e| e.key == key)
            .map(|e| (e.status, e.reason.clone()));
        pending.or_else(|| {
            store
                .decisions()
                .unwrap()
                .into_iter()
                .chain(
                    store
                        .reclaim(
                            &Lease {
                                owner: "test".into(),
                                until: Timestamp::MAX,
                            },
                            Timestamp::MAX,
                            true,
                        )
                        .unwrap(),
                )
                .find(|e| e.key == key)
                .map(|e| (e.status, e.reason))
        })
    }

    #[test]
    fn timers_due_between_events_fire_before_the_later_event_is_applied() {
        // One batch spanning a long gap, as after an outage: the win-back of
        // o-1 fell due before o-2 was placed, so it goes out; o-2's own
        // win-back is cancelled by o-3, which came before it fell due.
        let mut p = pipeline();
        let mut approved = Vec::new();
        let batch = [
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
            placed("e2", "2026-03-15T10:00:00Z", "o-2", None),
            placed("e3", "2026-04-01T10:00:00Z", "o-3", None),
        ];
        p.ingest(
            "test",
            &batch,
            Some(t("2026-11-01T00:00:00Z")),
            &mut DeadLetters::discard(),
            &mut approved,
        )
        .unwrap();
        let approved: Vec<&str> = approved.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            approved,
            [
                "c-1/order_confirmation/o-1",
                "c-1/welcome/o-1",
                "c-1/win_back/o-1",
                "c-1/order_confirmation/o-2",
            ]
        );
        assert_eq!(
            status_of(&mut p, "c-1/win_back/o-2"),
            Some((Status::Cancelled, Some("new order o-3".into())))
        );
        assert_eq!(
            status_of(&mut p, "c-1/win_back/o-3").map(|s| s.0),
            Some(Status::Pending)
        );
        assert_eq!(p.store().position("test").unwrap().as_deref(), Some("e3"));
    }

    fn dispatched(id: &str, at: &str, order: &str) -> Entry {
        let raw = format!(
            r#"{{"event_id":"{id}","type":"shipment.dispatched","occurred_at":"{at}","customer":{{"id":"c-1"}},"order":{{"id":"{order}"}},"shipment":{{"id":"s-1","carrier":"DHL","tracking_number":"T1"}}}}"#
        );
        Entry {
            raw: raw.into_bytes(),
            ..placed(id, at, order, None)
        }
    }

    #[test]
    fn an_email_waits_for_an_address_that_comes_from_another_topic_then_gives_up() {
        // The shipment's event is applied before the order that brings the
        // customer's address (another topic, read first).
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        let shipped = [dispatched("e1", "2026-01-01T10:00:05Z", "o-1")];
        p.ingest(
            "test",
            &shipped,
            Some(t("2026-01-01T10:00:10Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        assert!(approved.is_empty());
        let waiting = status_of(&mut p, "c-1/shipping_update/s-1").unwrap();
        assert_eq!(waiting.0, Status::Pending);
        // The order comes 30 s later: the update goes out, with the address.
        let order = [placed(
            "e2",
            "2026-01-01T10:00:00Z",
            "o-1",
            Some("anna@example.com"),
        )];
        p.ingest(
            "test",
            &order,
            Some(t("2026-01-01T10:00:40Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T10:01:20Z"), &mut approved).unwrap();
        let update = approved
            .iter()
            .find(|e| e.key == "c-1/shipping_update/s-1")
            .expect("sent once the address came");
        assert_eq!(update.recipient.as_deref(), Some("anna@example.com"));

        // Another customer's order never comes: suppressed after an hour.
        let mut p = pipeline();
        let mut approved = Vec::new();
        p.ingest(
            "test",
            &shipped,
            Some(t("2026-01-01T10:00:10Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T10:30:00Z"), &mut approved).unwrap();
        assert_eq!(
            status_of(&mut p, "c-1/shipping_update/s-1").map(|s| s.0),
            Some(Status::Pending)
        );
        p.fire(t("2026-01-01T11:30:00Z"), &mut approved).unwrap();
        assert!(approved.is_empty());
        assert_eq!(
            status_of(&mut p, "c-1/shipping_update/s-1"),
            Some((Status::Suppressed, Some("no address".into())))
        );
    }

    #[test]
    fn news_of_an_order_never_seen_waits_for_it_then_is_not_sent() {
        // A known customer (an address), and a dispatch and a cancellation
        // of orders never placed: questionable events send nothing.
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        let cancelled = Entry {
            raw: br#"{"event_id":"e3","type":"order.cancelled","occurred_at":"2026-01-01T10:00:06Z","customer":{"id":"c-1"},"order":{"id":"o-8"}}"#.to_vec(),
            ..placed("e3", "2026-01-01T10:00:06Z", "o-8", None)
        };
        let batch = [
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
            dispatched("e2", "2026-01-01T10:00:05Z", "o-9"),
            cancelled,
        ];
        p.ingest(
            "test",
            &batch,
            Some(t("2026-01-01T10:00:10Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T10:30:00Z"), &mut approved).unwrap();
        let keys: Vec<&str> = approved.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["c-1/order_confirmation/o-1"]);
        p.fire(t("2026-01-01T11:30:00Z"), &mut approved).unwrap();
        assert_eq!(approved.len(), 1);
        assert_eq!(
            status_of(&mut p, "c-1/shipping_update/s-1"),
            Some((Status::Suppressed, Some("order o-9 never seen".into())))
        );
        assert_eq!(
            status_of(&mut p, "c-1/order_cancelled/o-8"),
            Some((Status::Suppressed, Some("order o-8 never seen".into())))
        );

        // The order placed late, within the wait: the update goes.
        let mut p = pipeline();
        let mut approved = Vec::new();
        let batch = [
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
            dispatched("e2", "2026-01-01T10:00:05Z", "o-9"),
        ];
        p.ingest(
            "test",
            &batch,
            Some(t("2026-01-01T10:00:10Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        let late = [placed("e3", "2026-01-01T10:00:01Z", "o-9", None)];
        p.ingest(
            "test",
            &late,
            Some(t("2026-01-01T10:10:00Z")),
            &mut dead,
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T10:10:00Z"), &mut approved).unwrap();
        assert!(approved.iter().any(|e| e.key == "c-1/shipping_update/s-1"));
    }

    #[test]
    fn nothing_fires_after_now() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let batch = [
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
            placed("e2", "2026-03-15T10:00:00Z", "o-2", None),
        ];
        p.ingest(
            "test",
            &batch,
            Some(t("2026-01-01T12:00:00Z")),
            &mut DeadLetters::discard(),
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T12:00:00Z"), &mut approved).unwrap();
        // o-2 is stamped after "now" (a skewed clock): even its
        // confirmation waits until its own time.
        let keys: Vec<&str> = approved.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["c-1/order_confirmation/o-1"]);
        assert_eq!(
            status_of(&mut p, "c-1/welcome/o-1").map(|s| s.0),
            Some(Status::Pending)
        );
    }

    /// Anna's first order (2026-01-01), applied; the emails approved up
    /// to `until`.
    fn anna_orders(p: &mut Pipeline<SqliteStore>, until: &str) -> Vec<EmailRow> {
        let mut approved = Vec::new();
        let batch = [placed(
            "e1",
            "2026-01-01T10:00:00Z",
            "o-1",
            Some("anna@example.com"),
        )];
        p.ingest(
            "test",
            &batch,
            None,
            &mut DeadLetters::discard(),
            &mut approved,
        )
        .unwrap();
        p.fire(t(until), &mut approved).unwrap();
        approved
    }

    #[test]
    fn approved_emails_carry_the_whole_template_data() {
        let mut p = pipeline();
        let approved = anna_orders(&mut p, "2026-03-05T10:00:00Z");
        let welcome = approved.iter().find(|e| e.template == "welcome").unwrap();
        assert_eq!(welcome.locale.as_deref(), Some("hy"));
        assert_eq!(welcome.recipient.as_deref(), Some("anna@example.com"));
        assert_eq!(welcome.data["customer"]["timezone"], "UTC");
        assert_eq!(welcome.data["email"]["class"], "marketing");
        let signer = Signer::new(b"test secret");
        assert_eq!(
            welcome.data["unsubscribe_url"],
            signer.url("https://shop.example.com/unsubscribe", "c-1")
        );
        let confirmation = approved
            .iter()
            .find(|e| e.template == "order_confirmation")
            .unwrap();
        assert_eq!(confirmation.data["unsubscribe_url"], Value::Null);
        let win_back = approved.iter().find(|e| e.template == "win_back").unwrap();
        // Counted at the email's own time (60 days), however late the
        // worker gets to it.
        assert_eq!(win_back.data["days_since_last_order"], 60);
        // What the history says, for templates.
        let customer = &win_back.data["customer"];
        assert_eq!(customer["segment"], "lapsed");
        assert_eq!(customer["segments"], json!(["lapsed", "new"]));
        assert_eq!(customer["order_count"], 1);
        assert_eq!(customer["lifetime_spend"], "5.00");
        assert_eq!(customer["expected_next_order_at"], Value::Null);
        assert_eq!(customer["tier"], Value::Null);
    }

    #[test]
    fn a_held_out_email_is_decided_like_a_sent_one_and_never_approved() {
        // Every customer in the welcome's holdout (a config the loader
        // refuses, which needs a variant that sends: here the draw is sure).
        let mut rules = Config::embedded().journeys;
        let welcome = rules.iter_mut().find(|r| r.template == "welcome").unwrap();
        welcome.variants = [(HOLDOUT_VARIANT.to_owned(), 1)].into();
        let mut p = pipeline();
        p.journeys = Rulebook::new(rules);
        let approved = anna_orders(&mut p, "2026-01-20T10:00:00Z");
        let sent: Vec<&str> = approved.iter().map(|e| e.template.as_str()).collect();
        assert!(sent.contains(&"order_confirmation"), "{sent:?}");
        assert!(!sent.contains(&"welcome"), "{sent:?}");
        let welcome = p
            .store()
            .decisions()
            .unwrap()
            .into_iter()
            .find(|e| e.template == "welcome")
            .unwrap();
        assert_eq!(welcome.status, Status::HeldOut);
        assert_eq!(welcome.variant.as_deref(), Some(HOLDOUT_VARIANT));
        assert_eq!(welcome.recipient.as_deref(), Some("anna@example.com"));
        assert_eq!(p.stats.held_out, 1);
        // The cap counts it as though it went: the groups differ by this
        // email alone.
        let journey = p.store().begin().unwrap().journey("c-1").unwrap().unwrap();
        assert_eq!(journey.last_marketing_at, Some(welcome.fire_at));
        // The report reads it as held out.
        let held: Vec<bool> = p
            .store()
            .sent_emails()
            .unwrap()
            .iter()
            .filter(|e| e.template == "welcome")
            .map(|e| e.held_out)
            .collect();
        assert_eq!(held, [true]);
    }

    #[test]
    fn duplicates_have_effect_once_and_rejected_events_can_be_sent_again() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        let batch = [
            placed("e0", "2026-01-01T09:00:00Z", "o-0", None),
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
            placed(
                "e1",
                "2026-01-01T10:00:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
        ];
        p.ingest("test", &batch, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(
            (p.stats.events, p.stats.duplicates, p.stats.invalid),
            (1, 1, 1)
        );
        assert_eq!(dead.written, 1);
        // The shop fixes e0 and sends it again under the same id.
        let fixed = [placed(
            "e0",
            "2026-01-01T09:00:00Z",
            "o-0",
            Some("anna@example.com"),
        )];
        p.ingest("test", &fixed, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(p.stats.events, 2);
    }

    #[test]
    fn an_oversized_event_is_dead_lettered_unparsed_and_the_next_is_applied() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetters::new(&path, 1 << 20);
        // What the source kept of it happens to parse: it must not count.
        let mut big = placed("e1", "2026-01-01T10:00:00Z", "o-1", Some("a@example.com"));
        big.oversized = Some(crate::source::Oversized {
            bytes: 52_428_800,
            limit: 1 << 20,
        });
        let next = placed("e2", "2026-01-01T11:00:00Z", "o-2", Some("a@example.com"));
        p.ingest("test", &[big, next], None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!((p.stats.events, p.stats.invalid), (1, 1));
        assert_eq!(p.store().position("test").unwrap().as_deref(), Some("e2"));
        let record: Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(
            record["reason"],
            "event of 52428800 bytes is over source.max_event_bytes (1048576)"
        );
        assert_eq!(record["event_bytes"], 52_428_800);
        assert_eq!(record["truncated"], true);
        assert_eq!(record["coordinates"]["line"], "e1");
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// An event as raw JSON, at a line of its own.
    fn raw(line: &str, json: serde_json::Value) -> Entry {
        Entry {
            raw: serde_json::to_vec(&json).unwrap(),
            ..placed(line, "2026-01-01T10:00:00Z", "o", None)
        }
    }

    /// The emails approved once `batch` is applied and the clock is at
    /// its events' time.
    fn applied_and_fired(p: &mut Pipeline<SqliteStore>, batch: &[Entry]) -> Vec<EmailRow> {
        let mut approved = Vec::new();
        p.ingest(
            "test",
            batch,
            None,
            &mut DeadLetters::discard(),
            &mut approved,
        )
        .unwrap();
        p.fire(t("2026-01-01T10:00:00Z"), &mut approved).unwrap();
        approved
    }

    fn order(id: &str, customer: &str, order: &str, name: &str) -> serde_json::Value {
        json!({
            "event_id": id, "type": "order.placed", "occurred_at": "2026-01-01T10:00:00Z",
            "customer": {"id": customer, "email": "anna@example.com", "name": name},
            "order": {"id": order, "total": "5.00", "currency": "EUR", "items": []},
        })
    }

    #[test]
    fn ids_with_a_slash_never_make_one_key_of_two_emails() {
        // `customer/template/scope` made the same key of these two orders,
        // and the second confirmation was dropped as a duplicate.
        let mut p = pipeline();
        let approved = applied_and_fired(
            &mut p,
            &[
                raw("1", order("e1", "a/order_confirmation/o", "1", "A")),
                raw("2", order("e2", "a", "o/order_confirmation/1", "B")),
            ],
        );
        let mut confirmations: Vec<(&str, &str)> = approved
            .iter()
            .filter(|e| e.template == "order_confirmation")
            .map(|e| (e.customer_id.as_str(), e.key.as_str()))
            .collect();
        confirmations.sort();
        assert_eq!(
            confirmations,
            [
                ("a", "a/order_confirmation/o%2Forder_confirmation%2F1"),
                (
                    "a/order_confirmation/o",
                    "a%2Forder_confirmation%2Fo/order_confirmation/1"
                ),
            ]
        );
    }

    #[test]
    fn a_step_that_panics_dead_letters_its_event_and_the_next_is_applied() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        let batch = [
            raw(
                "1",
                order(crate::journey::PANIC_FOR_TESTS, "c-1", "o-1", "Anna"),
            ),
            raw("2", order("e2", "c-2", "o-2", "Ben")),
        ];
        p.ingest("test", &batch, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!((p.stats.events, p.stats.invalid), (1, 1));
        assert_eq!(dead.written, 1);
        // Applied, and the position is past both.
        assert_eq!(p.store().position("test").unwrap().as_deref(), Some("2"));
        p.fire(t("2026-01-01T10:00:00Z"), &mut approved).unwrap();
        assert!(approved.iter().any(|e| e.customer_id == "c-2"));
        assert!(!approved.iter().any(|e| e.customer_id == "c-1"));
    }

    #[test]
    fn an_email_whose_data_panics_ends_suppressed_and_the_others_go() {
        let mut p = pipeline();
        let approved = applied_and_fired(
            &mut p,
            &[
                raw(
                    "1",
                    order("e1", "c-1", "o-1", crate::journey::PANIC_FOR_TESTS),
                ),
                raw("2", order("e2", "c-2", "o-2", "Ben")),
            ],
        );
        let keys: Vec<&str> = approved.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["c-2/order_confirmation/o-2"]);
        let (status, reason) = status_of(&mut p, "c-1/order_confirmation/o-1").unwrap();
        assert_eq!(status, Status::Suppressed);
        assert!(reason.unwrap().starts_with("internal error: "));
    }

    #[test]
    fn a_reused_event_id_with_other_content_is_dead_lettered_a_redelivery_is_not() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        let first = order("e1", "c-1", "o-1", "Anna");
        // The same event laid out otherwise: a redelivery.
        let same = serde_json::to_vec_pretty(&first).unwrap();
        let batch = [
            raw("1", first),
            Entry {
                raw: same,
                ..raw("2", json!({}))
            },
            raw("3", order("e1", "c-1", "o-9", "Anna")),
        ];
        p.ingest("test", &batch, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(
            (p.stats.events, p.stats.duplicates, p.stats.invalid),
            (1, 1, 1)
        );
        assert_eq!(dead.written, 1);
        assert!(status_of(&mut p, "c-1/order_confirmation/o-9").is_none());
    }

    /// `kind` of shipment s-1 of `order`, naming no customer.
    fn unnamed(kind: &str, id: &str, at: &str, order: &str) -> Entry {
        let raw = format!(
            r#"{{"event_id":"{id}","type":"shipment.{kind}","occurred_at":"{at}","order":{{"id":"{order}"}},"shipment":{{"id":"s-1","carrier":"DHL","tracking_number":"T1"}}}}"#
        );
        Entry {
            raw: raw.into_bytes(),
            ..placed(id, at, order, None)
        }
    }

    fn dead_letters(path: &std::path::Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn an_event_naming_its_order_only_is_applied_to_the_customer_who_placed_it() {
        let mut p = pipeline();
        let approved = applied_and_fired(
            &mut p,
            &[
                placed(
                    "e1",
                    "2026-01-01T09:00:00Z",
                    "o-1",
                    Some("anna@example.com"),
                ),
                unnamed("dispatched", "e2", "2026-01-01T09:30:00Z", "o-1"),
            ],
        );
        let update = approved
            .iter()
            .find(|e| e.key == "c-1/shipping_update/s-1")
            .expect("the shipping update");
        assert_eq!(update.recipient.as_deref(), Some("anna@example.com"));
        assert_eq!((p.stats.events, p.stats.parked), (2, 0));
        // Sent again, with or without the customer: the same event.
        let again = [
            unnamed("dispatched", "e2", "2026-01-01T09:30:00Z", "o-1"),
            dispatched("e2", "2026-01-01T09:30:00Z", "o-1"),
        ];
        applied_and_fired(&mut p, &again);
        assert_eq!((p.stats.events, p.stats.duplicates), (2, 2));
    }

    #[test]
    fn events_before_their_order_wait_for_it_and_follow_it_in_event_order() {
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        // The delivery came first, then the dispatch: both before the order.
        let early = [
            unnamed("delivered", "e3", "2026-01-01T09:50:00Z", "o-1"),
            unnamed("dispatched", "e2", "2026-01-01T09:40:00Z", "o-1"),
            // Redelivered while they wait, once naming the customer.
            unnamed("delivered", "e3", "2026-01-01T09:50:00Z", "o-1"),
            dispatched("e2", "2026-01-01T09:40:00Z", "o-1"),
        ];
        p.ingest("test", &early, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(
            (p.stats.parked, p.stats.duplicates, p.stats.events),
            (2, 2, 0)
        );
        assert_eq!(
            p.store().backlog(t("2026-01-01T10:00:00Z")).unwrap().parked,
            2
        );
        assert!(status_of(&mut p, "c-1/shipping_update/s-1").is_none());

        let order = [placed(
            "e1",
            "2026-01-01T09:30:00Z",
            "o-1",
            Some("anna@example.com"),
        )];
        p.ingest("test", &order, None, &mut dead, &mut approved)
            .unwrap();
        p.fire(t("2026-01-01T10:00:00Z"), &mut approved).unwrap();
        assert_eq!((p.stats.events, p.stats.unparked), (1, 2));
        assert_eq!(
            p.store().backlog(t("2026-01-01T10:00:00Z")).unwrap().parked,
            0
        );
        // The dispatch was applied before the delivery: in the other order
        // its update would be cancelled as news of a delivered parcel.
        let keys: Vec<&str> = approved.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"c-1/shipping_update/s-1"), "{keys:?}");
        assert!(keys.contains(&"c-1/order_confirmation/o-1"), "{keys:?}");
        assert_eq!(
            status_of(&mut p, "c-1/review_request/o-1").map(|s| s.0),
            Some(Status::Pending)
        );
        // Applied once: the parked events are not applied again.
        p.ingest("test", &early, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!((p.stats.unparked, p.stats.duplicates), (2, 6));
        assert_eq!(dead.written, 0);
    }

    #[test]
    fn an_event_whose_order_never_comes_is_dead_lettered_after_the_wait_in_event_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetters::new(&path, 1 << 20);
        let mut p = pipeline().with_unknown_order_wait(SignedDuration::from_hours(2));
        let mut approved = Vec::new();
        let mut waiting = unnamed("dispatched", "e1", "2026-01-01T10:00:00Z", "o-9");
        waiting.coordinates = json!({"path": "events.jsonl", "line": 7, "offset": 512});
        let batch = [
            waiting.clone(),
            // Within the wait: it still waits.
            placed(
                "e2",
                "2026-01-01T11:59:00Z",
                "o-1",
                Some("anna@example.com"),
            ),
        ];
        p.ingest("test", &batch, None, &mut dead, &mut approved)
            .unwrap();
        assert!(dead_letters(&path).is_empty());
        // An event past the wait: the clock has moved past it first.
        let later = [placed("e3", "2026-01-01T12:00:01Z", "o-2", None)];
        p.ingest("test", &later, None, &mut dead, &mut approved)
            .unwrap();
        let records = dead_letters(&path);
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(
            records[0]["reason"],
            "order o-9 not seen within 2h; the event names no customer"
        );
        assert_eq!(records[0]["coordinates"]["line"], 7);
        assert_eq!(records[0]["coordinates"]["offset"], 512);
        assert_eq!(
            records[0]["raw"].as_str().map(str::as_bytes),
            Some(waiting.raw.as_slice())
        );
        assert_eq!((p.stats.expired, p.stats.invalid), (1, 0));
        assert_eq!(
            p.store().backlog(t("2026-01-01T13:00:00Z")).unwrap().parked,
            0
        );

        // The order comes too late: nothing waits for it any more...
        let too_late = [placed("e4", "2026-01-01T12:30:00Z", "o-9", None)];
        p.ingest("test", &too_late, None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(p.stats.unparked, 0);
        // ...and the event, never applied, may be sent again: now its order
        // is known, it is applied.
        p.ingest("test", &[waiting], None, &mut dead, &mut approved)
            .unwrap();
        p.fire(t("2026-01-01T13:00:00Z"), &mut approved).unwrap();
        assert!(approved.iter().any(|e| e.key == "c-1/shipping_update/s-1"));
    }

    #[test]
    fn waiting_events_expire_on_the_clock_the_timers_fire_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetters::new(&path, 1 << 20);
        let mut p = pipeline();
        let mut approved = Vec::new();
        let waiting = [unnamed("dispatched", "e1", "2026-01-01T10:00:00Z", "o-9")];
        p.ingest("test", &waiting, None, &mut dead, &mut approved)
            .unwrap();
        // As the worker does when its source is idle.
        p.expire(t("2026-01-02T09:59:59Z"), &mut dead).unwrap();
        assert_eq!(p.stats.expired, 0);
        p.expire(t("2026-01-02T10:00:00Z"), &mut dead).unwrap();
        assert_eq!(p.stats.expired, 1);
        let records = dead_letters(&path);
        assert_eq!(
            records[0]["reason"],
            "order o-9 not seen within 24h; the event names no customer"
        );
    }

    #[test]
    fn an_event_naming_another_customer_than_its_order_is_dead_lettered_with_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetters::new(&path, 1 << 20);
        let mut p = pipeline();
        let mut approved = Vec::new();
        let mut other = raw("2", order("e2", "c-2", "o-1", "Ben"));
        other.coordinates = json!({"line": 2});
        let batch = [
            raw("1", order("e1", "c-1", "o-1", "Anna")),
            other,
            raw(
                "3",
                json!({
                    "event_id": "e3", "type": "shipment.dispatched",
                    "occurred_at": "2026-01-01T10:00:00Z", "customer": {"id": "c-2"},
                    "order": {"id": "o-1"}, "shipment": {"id": "s-1"},
                }),
            ),
        ];
        p.ingest("test", &batch, None, &mut dead, &mut approved)
            .unwrap();
        let reasons: Vec<String> = dead_letters(&path)
            .iter()
            .map(|r| r["reason"].as_str().unwrap().to_owned())
            .collect();
        let both = "order o-1 was placed by customer c-1; the event names customer c-2";
        assert_eq!(reasons, [both, both]);
        assert_eq!((p.stats.events, p.stats.invalid), (1, 2));
        assert!(status_of(&mut p, "c-2/order_confirmation/o-1").is_none());
    }

    /// An entry as a mapping made it: event `index` of `count`.
    fn mapped(entry: Entry, rule: &str, index: usize, count: usize) -> Entry {
        Entry {
            mapped: Some(Mapped::Event {
                rule: rule.into(),
                index,
                count,
            }),
            ..entry
        }
    }

    #[test]
    fn a_message_mapped_to_several_events_moves_its_position_after_the_last() {
        let mut p = pipeline();
        let first = mapped(
            placed("m1", "2026-01-01T10:00:00Z", "o-1", Some("a@example.com")),
            "two",
            0,
            2,
        );
        let second = mapped(
            unnamed("delivered", "m1b", "2026-01-01T11:00:00Z", "o-1"),
            "two",
            1,
            2,
        );
        let second = Entry {
            position: first.position.clone(),
            ..second
        };
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        // Only the first event applied (a crash before the second, say):
        // the message is read again, its first event then a duplicate.
        p.ingest(
            "test",
            std::slice::from_ref(&first),
            None,
            &mut dead,
            &mut approved,
        )
        .unwrap();
        assert_eq!(p.store().position("test").unwrap(), None);
        p.ingest("test", &[first, second], None, &mut dead, &mut approved)
            .unwrap();
        assert_eq!(p.store().position("test").unwrap().as_deref(), Some("m1"));
        assert_eq!((p.stats.events, p.stats.duplicates), (2, 1));
    }

    #[test]
    fn skipped_messages_are_counted_and_failed_or_refused_ones_dead_lettered_with_their_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut dead = DeadLetters::new(&path, 1 << 20);
        let mut p = pipeline();
        let skipped = Entry {
            raw: br#"{"status":"draft"}"#.to_vec(),
            mapped: Some(Mapped::Skipped {
                rule: "drafts".into(),
            }),
            ..placed("s1", "2026-01-01T10:00:00Z", "o", None)
        };
        let failed = Entry {
            raw: br#"{"id":1}"#.to_vec(),
            mapped: Some(Mapped::Failed {
                reason: "no mapping matched (tried: orders)".into(),
            }),
            ..placed("s2", "2026-01-01T10:00:00Z", "o", None)
        };
        let refused = mapped(
            raw("s3", json!({"event_id": "e-3", "type": "order.placed"})),
            "orders",
            1,
            2,
        );
        let refused = Entry {
            position: failed.position.clone(),
            ..refused
        };
        let mut approved = Vec::new();
        p.ingest(
            "test",
            &[skipped, failed, refused],
            None,
            &mut dead,
            &mut approved,
        )
        .unwrap();
        assert_eq!(
            (p.stats.skipped, p.stats.invalid, p.stats.events),
            (1, 2, 0)
        );
        // The last advancing entry is the failed message's.
        assert_eq!(p.store().position("test").unwrap().as_deref(), Some("s2"));
        let letters = dead_letters(&path);
        let reasons: Vec<&str> = letters
            .iter()
            .map(|l| l["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons[0], "no mapping matched (tried: orders)");
        assert!(
            reasons[1].starts_with("mapping \"orders\", event 2 of 2: missing required field"),
            "{reasons:?}"
        );
        assert_eq!(letters.len(), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (first, max) = (
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(3600),
        );
        assert_eq!(backoff(0, first, max, 0.0), SignedDuration::from_secs(30));
        assert_eq!(backoff(1, first, max, 0.0), SignedDuration::from_secs(60));
        assert_eq!(
            backoff(20, first, max, 0.0),
            SignedDuration::from_secs(3600)
        );
        assert_eq!(backoff(0, first, max, 1.0), SignedDuration::from_secs(36));
    }
}
