//! The Kafka source: one consumer in a group, on the orders, shipments and
//! returns topics.
//!
//! The store is the truth about positions. Each batch's positions
//! (`kafka:<group>:<topic>:<partition>` -> next offset) commit in the same
//! store transaction as its effects; only then are the group offsets
//! committed to Kafka, so that lag tools see the truth. On assignment the
//! consumer starts every partition at the store's position (falling back to
//! the group's committed offset, then `auto.offset.reset`), so no event is
//! applied twice or skipped across restarts and rebalances.
//!
//! Rebalances happen inside `poll`, which only this loop calls between
//! batches: on revoke, the events of the revoked partitions that were read
//! but not yet handed out are dropped (the next owner reads them from the
//! committed position), so a batch never carries a partition we no longer
//! own.
//!
//! Event time across partitions: the three topics are read at different
//! speeds, but a customer's events must be applied in the order they
//! happened, and a timer must not fire before an earlier event that might
//! cancel it. So the source keeps a queue per partition and hands events out
//! merged by `occurred_at`: the earliest head first, and only while every
//! partition that still has unread messages has something queued (else it
//! might hold an earlier event). Within a partition the offset order is
//! kept. A partition whose queue grows long (in events or in bytes) is
//! paused until it drains.
//! Timers may fire up to the earliest event not yet handed out
//! ([`Batch::watermark`]).
//!
//! A watchdog recreates the consumer when a partition with unread messages
//! sends nothing for `stall_timeout` (librdkafka can stall silently).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Deserialize;
use serde_json::json;

use super::{
    Batch, Entry, Mapped, OVERSIZED_PREFIX, Oversized, Position, RawMessage, Source, SourceError,
};
use crate::config::KafkaConfig;
use crate::mapping::{Mapper, Record};

/// Reads a committed store position (`None`: none yet).
pub type PositionLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The store key of a partition's position.
pub fn position_key(group: &str, topic: &str, partition: i32) -> String {
    format!("kafka:{group}:{topic}:{partition}")
}

/// How often librdkafka reports where each partition ends (its statistics,
/// from the fetch responses: no extra requests). The merge may wait this
/// long on a partition before it knows it has read everything.
const STATS_INTERVAL_MS: &str = "250";
/// Events queued per partition before it is paused...
const QUEUE_HIGH: usize = 5_000;
/// ...or bytes of them: events may be up to `source.max_event_bytes` each.
/// Also how much a batch's polling reads ahead, at most.
const QUEUE_HIGH_BYTES: usize = 16 << 20;

type Partition = (String, i32);

/// How long a newly assigned partition's end is asked of the broker before
/// the loop goes on without it (librdkafka's statistics will tell it).
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(1);

/// A change of the assignment, as the rebalance callback heard it.
#[derive(Debug)]
enum Rebalance {
    /// Newly assigned, with the store's position when it has one (where
    /// reading starts).
    Assigned(Partition, Option<i64>),
    Revoked(Partition),
    /// The rebalance failed and everything was unassigned.
    RevokedAll,
}

/// What one consumer's callbacks tell the loop. Each consumer has its own:
/// a consumer the watchdog drops hears its partitions revoked as it
/// closes, and that must not reach its successor.
#[derive(Default)]
struct Shared {
    /// In the order heard: a partition revoked and assigned again between
    /// two looks is owned; assigned and revoked, it is not.
    rebalances: Mutex<Vec<Rebalance>>,
    /// An assignment (perhaps empty) has been received.
    joined: AtomicBool,
    /// Since when the consumer has waited for an assignment: from its
    /// creation, and from each revocation of all it had, until the group
    /// assigns it partitions (or none).
    waiting_since: Mutex<Option<Instant>>,
    /// From librdkafka's statistics: where each partition ends.
    ends: Mutex<BTreeMap<Partition, Ends>>,
    /// From the same statistics: whether a broker connection is up. Read
    /// live by the readiness check, which must not wait for the ingest
    /// loop (it may be blocked on the very broker that is gone).
    broker_up: Arc<AtomicBool>,
}

/// librdkafka's view of a partition.
///
/// librdkafka keeps a partition's figures across assignments: after a
/// rebalance they may describe where this consumer stood when it last owned
/// the partition, before another member read on. So the figures are
/// forgotten when a partition is assigned, and only those of a partition
/// being fetched (`active`) are taken in.
#[derive(Debug, Clone, Copy)]
struct Ends {
    /// The fetcher is running for this assignment.
    active: bool,
    /// The high watermark (the offset the next produced message gets).
    high: i64,
    /// The next offset to fetch, and how many fetched messages wait in
    /// librdkafka's queue.
    next_fetch: i64,
    fetched: i64,
}

struct GroupContext {
    group: String,
    positions: PositionLookup,
    shared: Arc<Shared>,
}

impl rdkafka::ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.shared.broker_up.store(up, Ordering::SeqCst);
        let mut ends = lock(&self.shared.ends);
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let now = Ends {
                    active: p.fetch_state == "active",
                    high: p.hi_offset,
                    next_fetch: p.next_offset,
                    fetched: p.fetchq_cnt,
                };
                let key = (topic.clone(), *partition);
                if ends
                    .get(&key)
                    .is_none_or(|before| before.active != now.active)
                {
                    tracing::debug!(
                        topic,
                        partition,
                        fetch_state = p.fetch_state,
                        high = now.high,
                        next_fetch = now.next_fetch,
                        "Fetch state."
                    );
                }
                ends.insert(key, now);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<Partition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut assignment = TopicPartitionList::new();
                let mut heard = Vec::with_capacity(partitions.len());
                for (topic, partition) in partitions {
                    let stored = (self.positions)(&position_key(&self.group, &topic, partition))
                        .and_then(|p| p.parse::<i64>().ok());
                    let offset = stored.map_or(Offset::Stored, Offset::Offset);
                    tracing::info!(topic, partition, ?offset, "Assigned partition.");
                    if let Err(e) = assignment.add_partition_offset(&topic, partition, offset) {
                        tracing::error!(topic, partition, error = %e, "Cannot set the start offset.");
                    }
                    heard.push(Rebalance::Assigned((topic, partition), stored));
                }
                // Figures from an earlier assignment are stale. (Not
                // locked across the store lookups above.)
                let mut ends = lock(&self.shared.ends);
                for event in &heard {
                    if let Rebalance::Assigned(key, _) = event {
                        ends.remove(key);
                    }
                }
                drop(ends);
                lock(&self.shared.rebalances).extend(heard);
                self.shared.joined.store(true, Ordering::SeqCst);
                *lock(&self.shared.waiting_since) = None;
                if cooperative {
                    consumer.incremental_assign(&assignment)
                } else {
                    consumer.assign(&assignment)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(?partitions, "Partitions revoked.");
                lock(&self.shared.rebalances)
                    .extend(partitions.into_iter().map(Rebalance::Revoked));
                resume_before_losing(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    // Everything goes: a new assignment is to follow.
                    *lock(&self.shared.waiting_since) = Some(Instant::now());
                    consumer.unassign()
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Rebalance failed.");
                lock(&self.shared.rebalances).push(Rebalance::RevokedAll);
                *lock(&self.shared.waiting_since) = Some(Instant::now());
                if let Ok(assigned) = consumer.assignment() {
                    resume_before_losing(consumer, &assigned);
                }
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Applying the rebalance failed.");
        }
    }
}

/// Resumes `partitions` as they are taken from this consumer. Flow control
/// pauses a partition with a long queue, and librdkafka keeps that pause on
/// the partition after it is revoked (it resets only its own pause at an
/// assignment): assigned here again, it would stay paused while its state
/// here starts afresh, unpaused, so nothing would ever resume it, and it
/// would go unread until the watchdog's `stall_timeout`.
fn resume_before_losing(consumer: &BaseConsumer<GroupContext>, partitions: &TopicPartitionList) {
    if let Err(e) = consumer.resume(partitions) {
        tracing::warn!(error = %e, "Resuming revoked partitions failed.");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What we know of one assigned partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset to read, once we know it.
    next: Option<i64>,
    /// One past the last offset queued in this assignment: an offset below
    /// it was queued already (fetched again after a pause or a seek).
    received: Option<i64>,
    /// The partition's end (high watermark) at the last check.
    high: Option<i64>,
    /// Read, not yet handed out: `(event time, entry)`. An event without a
    /// readable time (an invalid one) sorts first: it only goes to the
    /// dead letters.
    queue: VecDeque<(Option<Timestamp>, Entry)>,
    /// The raw bytes in `queue`.
    queued_bytes: usize,
    /// The last time anything arrived from this partition (or since it
    /// was assigned).
    last_message: Option<Instant>,
    paused: bool,
}

impl PartitionState {
    /// Read to the end, as far as we know.
    fn at_end(&self) -> bool {
        matches!((self.next, self.high), (Some(n), Some(h)) if n >= h)
    }

    /// A partition just assigned, read from `start` when the store has a
    /// position for it, with its end when the broker told it.
    fn assigned(start: Option<i64>, high: Option<i64>) -> PartitionState {
        PartitionState {
            next: start,
            high,
            last_message: Some(Instant::now()),
            ..PartitionState::default()
        }
    }

    /// Takes in librdkafka's latest statistics for the partition.
    fn update(&mut self, ends: &Ends) {
        if !ends.active {
            return;
        }
        // The end only moves on: a lower figure is an older one.
        if ends.high >= 0 && self.high.is_none_or(|high| ends.high > high) {
            self.high = Some(ends.high);
        }
        // Nothing handed to us yet: where the fetcher stands counts, once
        // nothing it fetched is waiting for us.
        if self.next.is_none() && ends.next_fetch >= 0 && ends.fetched == 0 {
            self.next = Some(ends.next_fetch);
        }
    }

    /// Whether a message at `offset` is new to this assignment (and if so,
    /// takes it as read). Only what was actually queued counts: where
    /// reading was expected to start never drops a message.
    fn accept(&mut self, offset: i64) -> Read {
        if self.received.is_some_and(|received| offset < received) {
            return Read::Again;
        }
        let read = match self.next {
            Some(next) if offset > next => Read::Skipped { from: next },
            _ => Read::New,
        };
        self.received = Some(offset + 1);
        self.next = Some(offset + 1);
        self.last_message = Some(Instant::now());
        read
    }

    /// Whether to pause (or keep paused) its fetching: its queue is long,
    /// in events or in bytes. A paused one is resumed once half drained.
    fn wants_pause(&self) -> bool {
        if self.paused {
            self.queue.len() > QUEUE_HIGH / 2 || self.queued_bytes > QUEUE_HIGH_BYTES / 2
        } else {
            self.queue.len() >= QUEUE_HIGH || self.queued_bytes >= QUEUE_HIGH_BYTES
        }
    }

    /// Nothing more to hand out until something new is produced.
    fn drained(&self) -> bool {
        self.at_end() && self.queue.is_empty()
    }
}

/// What a message is to its partition's state.
#[derive(Debug, PartialEq)]
enum Read {
    New,
    /// New, after a gap from `from`: offsets can skip (compaction,
    /// transaction markers); a broker that skips records on a fetch inside
    /// a batch looks the same.
    Skipped {
        from: i64,
    },
    /// Queued already (fetched again after a pause or a seek).
    Again,
}

/// Applies the rebalances heard, in the order heard, to the partitions
/// read; `high` asks a newly assigned partition's end.
fn apply_rebalances(
    partitions: &mut BTreeMap<Partition, PartitionState>,
    uncommitted: &mut BTreeMap<Partition, i64>,
    heard: Vec<Rebalance>,
    high: impl Fn(&Partition) -> Option<i64>,
) {
    let mut revoke = |partition: &Partition, state: PartitionState| {
        if !state.queue.is_empty() {
            tracing::info!(
                topic = partition.0,
                partition = partition.1,
                dropped = state.queue.len(),
                "Left the events of a revoked partition to its next owner."
            );
        }
        uncommitted.remove(partition);
    };
    for event in heard {
        match event {
            Rebalance::Assigned(partition, start) => {
                let high = high(&partition);
                tracing::debug!(
                    topic = partition.0,
                    partition = partition.1,
                    ?start,
                    ?high,
                    "Reading partition."
                );
                partitions.insert(partition, PartitionState::assigned(start, high));
            }
            Rebalance::Revoked(partition) => {
                if let Some(state) = partitions.remove(&partition) {
                    revoke(&partition, state);
                }
            }
            Rebalance::RevokedAll => {
                for (partition, state) in std::mem::take(partitions) {
                    revoke(&partition, state);
                }
            }
        }
    }
}

/// Hands out up to `max` queued events in event-time order, as long as no
/// partition that may still hold an earlier event is empty. Records the
/// offsets handed out in `uncommitted`. Also returns the time of the last
/// event handed out: every timer up to it may fire before it is applied.
fn merge(
    partitions: &mut BTreeMap<Partition, PartitionState>,
    uncommitted: &mut BTreeMap<Partition, i64>,
    max: usize,
) -> (Vec<Entry>, Option<Timestamp>) {
    let mut out = Vec::new();
    let mut last = None;
    while out.len() < max {
        let blocked = partitions
            .values()
            .any(|s| s.queue.is_empty() && !s.at_end());
        if blocked {
            break;
        }
        let earliest = partitions
            .iter()
            .filter_map(|(key, s)| s.queue.front().map(|(time, _)| (*time, key)))
            .min()
            .map(|(_, key)| key.clone());
        let Some(key) = earliest else { break };
        let state = partitions.get_mut(&key).expect("found above");
        let (time, entry) = state.queue.pop_front().expect("found above");
        state.queued_bytes = state.queued_bytes.saturating_sub(entry.raw.len());
        if let Some(next) = entry
            .advances()
            .then(|| entry.position.value.parse::<i64>().ok())
            .flatten()
        {
            uncommitted.insert(key, next);
        }
        last = time.max(last);
        out.push(entry);
    }
    (out, last)
}

/// Whether the queues hold a whole batch of `max` that [`merge`] can hand
/// out: `max` events queued, and as many in every partition not at its end
/// (or enough that it is about to be paused). The merge takes events in
/// time order and stops at a partition with nothing queued, so a batch cut
/// as soon as `max` were queued in all is only as large as the partition
/// furthest behind is ahead of its queue: with the others full (and
/// paused), a partition catching up came one message per batch, one store
/// transaction each.
fn batch_ready(partitions: &BTreeMap<Partition, PartitionState>, max: usize) -> bool {
    let each = max.min(QUEUE_HIGH / 2);
    let queued: usize = partitions.values().map(|s| s.queue.len()).sum();
    queued >= max
        && partitions
            .values()
            .all(|s| s.at_end() || s.queue.len() >= each)
}

/// A partition that has unread messages (as far as we know), nothing
/// queued, is not paused by us, and has sent nothing for `timeout`.
fn stalled(
    partitions: &BTreeMap<Partition, PartitionState>,
    created: Instant,
    timeout: Duration,
) -> bool {
    partitions.values().any(|s| {
        !s.at_end()
            && s.queue.is_empty()
            && !s.paused
            && s.last_message.unwrap_or(created).elapsed() >= timeout
    })
}

/// The earliest event time not handed out yet: timers may fire up to it.
fn watermark(partitions: &BTreeMap<Partition, PartitionState>) -> Timestamp {
    partitions
        .values()
        .filter(|s| !s.drained())
        .map(|s| match s.queue.front() {
            Some((time, _)) => time.unwrap_or(Timestamp::MIN),
            // It may hold anything: nothing fires until it reports.
            None => Timestamp::MIN,
        })
        .min()
        .unwrap_or(Timestamp::MAX)
}

/// What is kept of a message: a copy, but of an oversized payload only its
/// first bytes (librdkafka frees the message; one too large must not be
/// copied whole into the queue).
struct Polled {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    /// Read only by mappings (`$headers`).
    headers: Vec<(String, Vec<u8>)>,
    payload: Vec<u8>,
    oversized: Option<Oversized>,
}

impl Polled {
    fn copy(m: &impl Message, limit: usize) -> Polled {
        let payload = m.payload().unwrap_or_default();
        let oversized = Oversized::check(payload.len() as u64, limit);
        let kept = match oversized {
            Some(_) => crate::bounded::prefix(payload, OVERSIZED_PREFIX),
            None => payload,
        };
        Polled {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers: m
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
            payload: kept.to_vec(),
            oversized,
        }
    }
}

/// Only the event time, to merge partitions by it.
#[derive(Deserialize)]
struct EventTime {
    occurred_at: Option<String>,
}

pub struct KafkaSource {
    name: String,
    config: KafkaConfig,
    client: ClientConfig,
    batch_wait: Duration,
    consumer: BaseConsumer<GroupContext>,
    /// What this consumer's callbacks heard (a new one with each consumer).
    shared: Arc<Shared>,
    /// Whether a broker connection is up, across consumers.
    broker_up: Arc<AtomicBool>,
    positions: Arc<PositionLookup>,
    partitions: BTreeMap<Partition, PartitionState>,
    /// Offsets handed out in the last batch: committed to Kafka once the
    /// store has them.
    uncommitted: BTreeMap<Partition, i64>,
    /// When the consumer was created: a partition that never sent anything
    /// counts as silent since then.
    created: Instant,
    /// Times the watchdog recreated the consumer.
    pub recoveries: u64,
    /// `source.max_event_bytes`: a larger message is only dead-lettered.
    limit: usize,
    /// Maps each message to native events (`source.format`).
    mapper: Option<Arc<Mapper>>,
}

/// The librdkafka settings shared by the consumer and the dead-letter
/// producer.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("auto.offset.reset", "earliest");
    for (key, value) in &config.options {
        client.set(key, value);
    }
    client
}

impl KafkaSource {
    /// A message over `max_event_bytes` is handed out as
    /// [`Entry::oversized`], its first bytes only.
    pub fn new(
        config: &KafkaConfig,
        batch_wait: Duration,
        max_event_bytes: usize,
        positions: PositionLookup,
    ) -> Result<KafkaSource, KafkaError> {
        let mut client = client_config(config);
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        if !config.options.contains_key("statistics.interval.ms") {
            client.set("statistics.interval.ms", STATS_INTERVAL_MS);
        }
        let positions = Arc::new(positions);
        let broker_up = Arc::new(AtomicBool::new(false));
        let (consumer, shared) = Self::consumer(&client, config, &positions, &broker_up)?;
        let now = Instant::now();
        Ok(KafkaSource {
            name: format!("kafka:{}", config.group_id),
            config: config.clone(),
            client,
            batch_wait,
            consumer,
            shared,
            broker_up,
            positions,
            partitions: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            created: now,
            recoveries: 0,
            limit: max_event_bytes,
            mapper: None,
        })
    }

    fn consumer(
        client: &ClientConfig,
        config: &KafkaConfig,
        positions: &Arc<PositionLookup>,
        broker_up: &Arc<AtomicBool>,
    ) -> Result<(BaseConsumer<GroupContext>, Arc<Shared>), KafkaError> {
        let shared = Arc::new(Shared {
            broker_up: Arc::clone(broker_up),
            waiting_since: Mutex::new(Some(Instant::now())),
            ..Shared::default()
        });
        let lookup = Arc::clone(positions);
        let context = GroupContext {
            group: config.group_id.clone(),
            positions: Box::new(move |key| lookup(key)),
            shared: Arc::clone(&shared),
        };
        let consumer: BaseConsumer<GroupContext> = client.create_with_context(context)?;
        consumer.subscribe(&config.topics.all())?;
        Ok((consumer, shared))
    }

    /// Takes in what the rebalance callback heard, in order; drops what
    /// was revoked (queued events included: the next owner reads them
    /// from the committed position).
    fn apply_rebalances(&mut self) {
        let heard: Vec<Rebalance> = lock(&self.shared.rebalances).drain(..).collect();
        let consumer = &self.consumer;
        apply_rebalances(
            &mut self.partitions,
            &mut self.uncommitted,
            heard,
            |(topic, partition)| {
                // The partition's end from the broker itself: librdkafka's
                // figure may be from before another member read on.
                match consumer.fetch_watermarks(topic, *partition, WATERMARK_TIMEOUT) {
                    Ok((_, high)) => Some(high),
                    Err(e) => {
                        tracing::debug!(topic, partition, error = %e, "Partition end unknown yet.");
                        None
                    }
                }
            },
        );
    }

    /// Takes in where librdkafka last saw each partition end.
    fn update_ends(&mut self) {
        let ends = lock(&self.shared.ends);
        for (key, state) in self.partitions.iter_mut() {
            if let Some(e) = ends.get(key) {
                state.update(e);
            }
        }
    }

    /// Partitions behind their end: (topic, partition, messages behind).
    /// Maps every message with `mapper` (`source.format`) before handing
    /// it out.
    pub fn with_mapper(mut self, mapper: Option<Arc<Mapper>>) -> KafkaSource {
        self.mapper = mapper;
        self
    }

    pub fn lag(&self) -> Vec<(String, i32, Option<i64>)> {
        self.partitions
            .iter()
            .filter(|(_, s)| !s.at_end())
            .map(|((t, p), s)| {
                let behind = s.high.zip(s.next).map(|(h, n)| (h - n).max(0));
                (t.clone(), *p, behind)
            })
            .collect()
    }

    /// Whether the consumer is stuck: a partition with unread messages has
    /// sent nothing for `stall_timeout`, or the group has not given it an
    /// assignment (not even an empty one) for that long since it was made
    /// or since it lost all it had, or it reads other partitions than those
    /// followed here ([`KafkaSource::out_of_step`]).
    /// A join can hang: a group member that never hears its assignment
    /// keeps the partitions the group gave it from every other member.
    fn stuck(&self) -> Option<&'static str> {
        let timeout = self.config.stall_timeout;
        let waiting = lock(&self.shared.waiting_since).map(|since| since.elapsed());
        if waiting.is_some_and(|waited| waited >= timeout) {
            Some("Consumer got no assignment from its group; recreating it.")
        } else if stalled(&self.partitions, self.created, timeout) {
            Some("Consumer stalled with unread messages; recreating it.")
        } else if self.out_of_step() {
            Some("Consumer reads other partitions than the source follows; recreating it.")
        } else {
            None
        }
    }

    /// Whether librdkafka's assignment and the partitions followed here
    /// differ, once every rebalance heard is taken in. A partition assigned
    /// but not followed would go unread with nothing to show for it; this
    /// turns such a slip into a recovery.
    fn out_of_step(&self) -> bool {
        if !lock(&self.shared.rebalances).is_empty() {
            return false;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return false;
        };
        let elements = assignment.elements();
        elements.len() != self.partitions.len()
            || elements.iter().any(|e| {
                !self
                    .partitions
                    .contains_key(&(e.topic().to_owned(), e.partition()))
            })
    }

    /// Recreates the consumer when it is stuck (see [`KafkaSource::stuck`]).
    fn watchdog(&mut self) -> Result<(), KafkaError> {
        let Some(why) = self.stuck() else {
            return Ok(());
        };
        self.recoveries += 1;
        tracing::warn!(lag = ?self.lag(), recoveries = self.recoveries, "{why}");
        self.recreate()
    }

    /// Drops the consumer and makes a new one, which joins the group
    /// afresh (what the watchdog does to a stuck consumer).
    pub fn recreate(&mut self) -> Result<(), KafkaError> {
        self.partitions.clear();
        self.uncommitted.clear();
        // The new consumer first, then the old one goes: its callbacks, as
        // it closes, write to its own `Shared`, dropped with it.
        let (consumer, shared) =
            Self::consumer(&self.client, &self.config, &self.positions, &self.broker_up)?;
        self.consumer = consumer;
        self.shared = shared;
        self.created = Instant::now();
        Ok(())
    }

    /// Pauses partitions with long queues, resumes drained ones, so that
    /// one partition racing ahead cannot fill the memory.
    fn flow_control(&mut self) {
        for ((topic, partition), state) in self.partitions.iter_mut() {
            let want_paused = state.wants_pause();
            if want_paused == state.paused {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, *partition);
            let result = if want_paused {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            };
            tracing::debug!(topic, partition, paused = want_paused, next = ?state.next, queued = state.queue.len(), "Flow control.");
            match result {
                Ok(()) => state.paused = want_paused,
                Err(e) => tracing::warn!(topic, partition, error = %e, "Pause/resume failed."),
            }
        }
    }

    /// Queues a message read from a partition we own.
    fn enqueue(&mut self, message: Polled) {
        let Polled {
            topic,
            partition,
            offset,
            key,
            headers,
            payload,
            oversized,
        } = message;
        let topic = topic.as_str();
        let position = Position {
            key: position_key(&self.config.group_id, topic, partition),
            value: (offset + 1).to_string(),
        };
        let Some(state) = self.partitions.get_mut(&(topic.to_owned(), partition)) else {
            tracing::debug!(
                topic,
                partition,
                offset,
                "Message of a partition not assigned here dropped."
            );
            return;
        };
        match state.accept(offset) {
            Read::New => {}
            Read::Skipped { from } => {
                tracing::debug!(topic, partition, offset, from, "Offsets skipped.");
            }
            Read::Again => return,
        }
        let message = RawMessage {
            record: Record {
                body: payload,
                topic: Some(topic.to_owned()),
                key,
                headers,
            },
            coordinates: json!({"topic": topic, "partition": partition, "offset": offset}),
            position,
            oversized,
        };
        for entry in super::entries(self.mapper.as_deref(), vec![message]) {
            // An event that is not one (oversized, unmappable, skipped) has
            // no time: it sorts first, to the dead letters.
            let time = (entry.oversized.is_none()
                && matches!(entry.mapped, None | Some(Mapped::Event { .. })))
            .then(|| serde_json::from_slice::<EventTime>(&entry.raw).ok())
            .flatten()
            .and_then(|e| e.occurred_at)
            .and_then(|at| at.parse::<Timestamp>().ok());
            state.queued_bytes += entry.raw.len();
            state.queue.push_back((time, entry));
        }
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        let deadline = Instant::now() + self.batch_wait;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let polled = match self.consumer.poll(wait) {
                None => None,
                Some(Ok(m)) => Some(Polled::copy(&m, self.limit)),
                Some(Err(KafkaError::PartitionEOF(_))) => None,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    None
                }
            };
            self.apply_rebalances();
            if let Some(message) = polled {
                self.enqueue(message);
            }
            let bytes: usize = self.partitions.values().map(|s| s.queued_bytes).sum();
            if Instant::now() >= deadline
                || bytes >= QUEUE_HIGH_BYTES
                || batch_ready(&self.partitions, max)
            {
                break;
            }
        }
        self.update_ends();
        let (entries, handed_out) = merge(&mut self.partitions, &mut self.uncommitted, max);
        tracing::trace!(
            handed_out = entries.len(),
            partitions = ?self
                .partitions
                .iter()
                .map(|((t, p), s)| format!("{t}:{p} next={:?} high={:?} queued={}", s.next, s.high, s.queue.len()))
                .collect::<Vec<_>>(),
            "Merged partitions."
        );
        self.flow_control();
        if entries.is_empty() {
            self.watchdog()?;
        }
        // Until the group gives us partitions we know nothing of the
        // topics: timers wait.
        let joined = self.shared.joined.load(Ordering::SeqCst);
        let caught_up = joined && self.partitions.values().all(PartitionState::drained);
        // What was handed out was safe to apply when it was handed out: the
        // timers up to it may fire, whatever is left queued.
        let watermark = if joined {
            watermark(&self.partitions).max(handed_out.unwrap_or(Timestamp::MIN))
        } else {
            Timestamp::MIN
        };
        Ok(Batch {
            entries,
            caught_up,
            finished: false,
            watermark: Some(watermark),
        })
    }

    fn streams(&self) -> Option<Vec<String>> {
        Some(
            self.partitions
                .keys()
                .map(|(topic, partition)| position_key(&self.config.group_id, topic, *partition))
                .collect(),
        )
    }

    fn health(&self) -> super::SourceHealth {
        super::SourceHealth {
            assigned: Some(self.partitions.len()),
            lag: self
                .partitions
                .iter()
                .map(|((topic, partition), s)| {
                    let behind = s.high.zip(s.next).map_or(0, |(h, n)| (h - n).max(0));
                    (topic.clone(), *partition, behind)
                })
                .collect(),
            stalled: self.stuck().is_some(),
            joining: lock(&self.shared.waiting_since).is_some(),
        }
    }

    fn broker_up(&self) -> Option<Arc<AtomicBool>> {
        Some(Arc::clone(&self.broker_up))
    }

    fn committed(&mut self) {
        if self.uncommitted.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in std::mem::take(&mut self.uncommitted) {
            if let Err(e) = offsets.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(topic, partition, error = %e, "Cannot commit offset.");
            }
        }
        // Async: the store already has these positions; the group offsets
        // are for lag tools, and for a store that is lost.
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "Committing group offsets failed; the store has the positions.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: i32, offset: i64) -> Entry {
        Entry {
            raw: Vec::new(),
            key: None,
            coordinates: json!({"topic": "t", "partition": partition, "offset": offset}),
            position: Position {
                key: position_key("g", "t", partition),
                value: (offset + 1).to_string(),
            },
            oversized: None,
            mapped: None,
        }
    }

    fn state(next: Option<i64>, high: Option<i64>, queue: &[(&str, i64)]) -> PartitionState {
        PartitionState {
            next,
            high,
            queue: queue
                .iter()
                .map(|(t, o)| (Some(t.parse().unwrap()), entry(0, *o)))
                .collect(),
            ..PartitionState::default()
        }
    }

    #[test]
    fn a_batch_is_ready_once_every_partition_behind_holds_a_batch() {
        let full: Vec<(&str, i64)> = (0..1000).map(|o| ("2030-01-01T00:00:00Z", o)).collect();
        let partitions = |p0: &[(&str, i64)], p0_high: i64| {
            BTreeMap::from([
                (("t".to_owned(), 0), state(Some(100), Some(p0_high), p0)),
                (("t".to_owned(), 1), state(Some(5000), Some(9000), &full)),
                (("t".to_owned(), 2), state(Some(5000), Some(9000), &full)),
            ])
        };
        // Partition 0 far behind, with one message queued: merging now
        // would hand out one event.
        let one = [("2029-01-01T00:00:00Z", 100)];
        assert!(!batch_ready(&partitions(&one, 9000), 1000));
        assert_eq!(
            merge(&mut partitions(&one, 9000), &mut BTreeMap::new(), 1000)
                .0
                .len(),
            1
        );
        // Holding a batch of its own, it is ready: the merge fills it.
        assert!(batch_ready(&partitions(&full, 9000), 1000));
        assert_eq!(
            merge(&mut partitions(&full, 9000), &mut BTreeMap::new(), 1000)
                .0
                .len(),
            1000
        );
        // A partition at its end holds nothing back.
        assert!(batch_ready(&partitions(&[], 100), 1000));
        // Fewer than a batch queued in all: wait (for batch_wait) to fill.
        let few = [("2030-01-01T00:00:00Z", 1)];
        let sparse = BTreeMap::from([
            (("t".to_owned(), 0), state(Some(2), Some(2), &few)),
            (("t".to_owned(), 1), state(Some(2), Some(2), &few)),
        ]);
        assert!(!batch_ready(&sparse, 1000));
        assert!(batch_ready(&sparse, 2));
        // A batch larger than a partition's queue may grow (it is paused
        // at QUEUE_HIGH): half of that in each partition behind will do.
        let half: Vec<(&str, i64)> = (0..QUEUE_HIGH as i64 / 2)
            .map(|o| ("2030-01-01T00:00:00Z", o))
            .collect();
        let behind = BTreeMap::from([
            (("t".to_owned(), 0), state(Some(0), Some(50_000), &half)),
            (("t".to_owned(), 1), state(Some(0), Some(50_000), &half)),
            (("t".to_owned(), 2), state(Some(0), Some(50_000), &half)),
        ]);
        assert!(batch_ready(&behind, 5_000));
    }

    #[test]
    fn a_partition_is_at_its_end_only_when_both_ends_are_known() {
        assert!(state(Some(5), Some(5), &[]).at_end());
        assert!(state(Some(6), Some(5), &[]).at_end());
        assert!(!state(Some(4), Some(5), &[]).at_end());
        assert!(!state(None, Some(5), &[]).at_end());
        assert!(!state(Some(5), None, &[]).at_end());
    }

    fn ends(active: bool, high: i64, next_fetch: i64) -> Ends {
        Ends {
            active,
            high,
            next_fetch,
            fetched: 0,
        }
    }

    /// After a rebalance librdkafka may still report where this consumer
    /// stood when it last owned the partition, past where another member
    /// has since read to: no message may be dropped for it.
    #[test]
    fn a_message_before_where_the_figures_said_reading_starts_is_kept() {
        let mut s = PartitionState::assigned(None, None);
        s.update(&ends(true, 200, 200));
        assert_eq!(s.next, Some(200));
        assert_eq!(s.accept(130), Read::New);
        assert_eq!(s.accept(131), Read::New);
        assert_eq!(s.accept(130), Read::Again, "fetched twice");
        assert_eq!(s.accept(135), Read::Skipped { from: 132 });
        assert_eq!(s.next, Some(136));
    }

    #[test]
    fn figures_of_a_partition_not_fetched_or_older_ones_are_ignored() {
        let mut s = PartitionState::assigned(Some(150), Some(170));
        s.update(&ends(false, 120, 120));
        assert_eq!((s.next, s.high), (Some(150), Some(170)));
        s.update(&ends(true, 160, 150));
        assert_eq!(s.high, Some(170), "an older end");
        assert!(!s.at_end());
        s.update(&ends(true, 180, 150));
        assert_eq!(s.high, Some(180));
        // The store's position stands: the fetcher's is only taken in when
        // nothing else is known.
        s.update(&ends(true, 180, 175));
        assert_eq!(s.next, Some(150));
    }

    /// A consumer whose group never assigns it anything (here: no broker
    /// at all) is stuck once `stall_timeout` has passed, not before.
    #[test]
    fn a_consumer_the_group_assigns_nothing_is_stuck_after_the_stall_timeout() {
        let source = |stall_timeout| {
            let mut config = crate::config::Config::embedded().source.kafka;
            config.brokers = "127.0.0.1:9".to_owned();
            config.stall_timeout = stall_timeout;
            KafkaSource::new(
                &config,
                Duration::from_millis(10),
                1 << 20,
                Box::new(|_| None),
            )
            .unwrap()
        };
        assert_eq!(
            source(Duration::ZERO).stuck(),
            Some("Consumer got no assignment from its group; recreating it.")
        );
        assert_eq!(source(Duration::from_secs(3600)).stuck(), None);
    }

    fn owned(heard: Vec<Rebalance>) -> Vec<Partition> {
        let mut partitions = BTreeMap::new();
        let mut uncommitted = BTreeMap::new();
        let queued = state(Some(4), Some(9), &[("2026-11-20T12:00:00Z", 4)]);
        partitions.insert(("orders".to_owned(), 0), queued);
        uncommitted.insert(("orders".to_owned(), 0), 4);
        apply_rebalances(&mut partitions, &mut uncommitted, heard, |_| Some(9));
        for key in uncommitted.keys() {
            assert!(
                partitions.contains_key(key),
                "{key:?} uncommitted, not owned"
            );
        }
        partitions.into_keys().collect()
    }

    #[test]
    fn rebalances_are_applied_in_the_order_heard() {
        let p = |n: i32| ("orders".to_owned(), n);
        // Revoked, then given back (by the next generation, or to the
        // consumer that replaced one closing): owned.
        assert_eq!(
            owned(vec![
                Rebalance::Revoked(p(0)),
                Rebalance::Assigned(p(0), Some(4))
            ]),
            vec![p(0)]
        );
        // Given, then taken away before the loop looked: not owned.
        assert_eq!(
            owned(vec![
                Rebalance::Assigned(p(1), None),
                Rebalance::Revoked(p(1))
            ]),
            vec![p(0)]
        );
        // A failed rebalance unassigns everything.
        assert_eq!(
            owned(vec![Rebalance::Assigned(p(1), None), Rebalance::RevokedAll]),
            Vec::<Partition>::new()
        );
    }

    /// Large events fill the memory long before 5,000 of them are queued.
    #[test]
    fn a_partition_is_paused_by_the_bytes_queued_too() {
        let mut s = state(Some(0), Some(100), &[("2026-11-20T12:00:00Z", 0)]);
        s.queued_bytes = QUEUE_HIGH_BYTES;
        assert!(s.wants_pause());
        s.paused = true;
        s.queued_bytes = QUEUE_HIGH_BYTES / 2 + 1;
        assert!(s.wants_pause(), "resumed only once half drained");
        s.queued_bytes = QUEUE_HIGH_BYTES / 2;
        assert!(!s.wants_pause());

        // What the merge hands out no longer counts.
        let mut entry = entry(0, 0);
        entry.raw = vec![b'x'; 1000];
        let mut s = state(Some(1), Some(1), &[]);
        s.queue.push_back((None, entry));
        s.queued_bytes = 1000;
        let mut p = BTreeMap::from([(("t".to_owned(), 0), s)]);
        merge(&mut p, &mut BTreeMap::new(), 10);
        assert_eq!(p[&("t".to_owned(), 0)].queued_bytes, 0);
    }

    #[test]
    fn position_keys_are_per_group() {
        assert_eq!(position_key("g", "orders", 3), "kafka:g:orders:3");
        assert_ne!(
            position_key("g1", "orders", 3),
            position_key("g2", "orders", 3)
        );
    }

    /// The merge and the watermark on hand-built partitions.
    fn merged(partitions: Vec<(i32, PartitionState)>, max: usize) -> (Vec<i64>, Timestamp) {
        let mut p: BTreeMap<Partition, PartitionState> = partitions
            .into_iter()
            .map(|(n, s)| (("t".to_owned(), n), s))
            .collect();
        let mut uncommitted = BTreeMap::new();
        let out = merge(&mut p, &mut uncommitted, max)
            .0
            .iter()
            .map(|e| e.coordinates["offset"].as_i64().unwrap())
            .collect();
        (out, watermark(&p))
    }

    #[test]
    fn a_silent_partition_with_unread_messages_is_a_stall() {
        let long_ago = Instant::now() - Duration::from_secs(120);
        let silent_behind = PartitionState {
            last_message: Some(long_ago),
            ..state(Some(3), Some(9), &[])
        };
        let silent_at_end = PartitionState {
            last_message: Some(long_ago),
            ..state(Some(9), Some(9), &[])
        };
        let recent_behind = PartitionState {
            last_message: Some(Instant::now()),
            ..state(Some(3), Some(9), &[])
        };
        let paused_behind = PartitionState {
            paused: true,
            last_message: Some(long_ago),
            ..state(Some(3), Some(9), &[])
        };
        let timeout = Duration::from_secs(60);
        let one = |s: PartitionState| BTreeMap::from([(("t".to_owned(), 0), s)]);
        assert!(stalled(&one(silent_behind), Instant::now(), timeout));
        assert!(!stalled(&one(silent_at_end), Instant::now(), timeout));
        assert!(!stalled(&one(recent_behind), Instant::now(), timeout));
        assert!(!stalled(&one(paused_behind), Instant::now(), timeout));
        // Never heard from since the consumer was made.
        let never = state(None, None, &[]);
        assert!(stalled(&one(never), long_ago, timeout));
    }

    #[test]
    fn events_come_out_in_time_order_across_partitions() {
        let a = state(
            Some(3),
            Some(3),
            &[("2024-01-01T10:00:00Z", 0), ("2024-01-03T10:00:00Z", 1)],
        );
        let b = state(Some(9), Some(9), &[("2024-01-02T10:00:00Z", 7)]);
        let (order, watermark) = merged(vec![(0, a), (1, b)], 10);
        assert_eq!(order, [0, 7, 1]);
        assert_eq!(watermark, Timestamp::MAX, "everything read and handed out");
    }

    #[test]
    fn a_partition_that_may_hold_an_earlier_event_holds_the_merge() {
        let a = state(Some(1), Some(5), &[("2024-01-03T10:00:00Z", 0)]);
        let behind = state(Some(2), Some(8), &[]);
        let (order, watermark) = merged(vec![(0, a), (1, behind)], 10);
        assert!(order.is_empty());
        assert_eq!(watermark, Timestamp::MIN);
        // Once it is known to be at its end, the merge goes on.
        let a = state(Some(1), Some(5), &[("2024-01-03T10:00:00Z", 0)]);
        let done = state(Some(8), Some(8), &[]);
        let (order, watermark) = merged(vec![(0, a), (1, done)], 10);
        assert_eq!(order, [0]);
        assert_eq!(
            watermark,
            Timestamp::MIN,
            "partition 0 is not read to its end"
        );
    }
}
