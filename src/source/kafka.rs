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
//! Timers across partitions: the source tracks, per partition, the time of
//! the last event read and whether the partition is read to its end. Timers
//! may fire up to the earliest time of a partition that still has unread
//! events ([`Batch::watermark`]): an unread event there might cancel them.
//!
//! A watchdog recreates the consumer when it gets nothing for
//! `stall_timeout` while its partitions have unread messages (librdkafka can
//! stall silently).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::Deserialize;
use serde_json::json;

use super::{Batch, Entry, Position, Source, SourceError};
use crate::config::KafkaConfig;

/// Reads a committed store position (`None`: none yet).
pub type PositionLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The store key of a partition's position.
pub fn position_key(group: &str, topic: &str, partition: i32) -> String {
    format!("kafka:{group}:{topic}:{partition}")
}

/// How long the lag behind each partition's end may be left unchecked.
const WATERMARK_INTERVAL: Duration = Duration::from_secs(1);

type Partition = (String, i32);

/// What the rebalance callback tells the loop.
#[derive(Default)]
struct Shared {
    revoked: Mutex<Vec<Partition>>,
    assigned: Mutex<Vec<Partition>>,
}

struct GroupContext {
    group: String,
    positions: PositionLookup,
    shared: Arc<Shared>,
}

impl rdkafka::ClientContext for GroupContext {}

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
                for (topic, partition) in &partitions {
                    let stored = (self.positions)(&position_key(&self.group, topic, *partition))
                        .and_then(|p| p.parse::<i64>().ok());
                    let offset = stored.map_or(Offset::Stored, Offset::Offset);
                    tracing::info!(topic, partition, ?offset, "Assigned partition.");
                    if let Err(e) = assignment.add_partition_offset(topic, *partition, offset) {
                        tracing::error!(topic, partition, error = %e, "Cannot set the start offset.");
                    }
                }
                lock(&self.shared.assigned).extend(partitions);
                if cooperative {
                    consumer.incremental_assign(&assignment)
                } else {
                    consumer.assign(&assignment)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(?partitions, "Partitions revoked.");
                lock(&self.shared.revoked).extend(partitions);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Rebalance failed.");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Applying the rebalance failed.");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What we know of one assigned partition.
#[derive(Debug, Default, Clone)]
struct PartitionState {
    /// The next offset to read, once we know it.
    next: Option<i64>,
    /// The partition's end (high watermark) at the last check.
    high: Option<i64>,
    /// Time of the last event read.
    last_time: Option<Timestamp>,
}

impl PartitionState {
    fn at_end(&self) -> bool {
        matches!((self.next, self.high), (Some(n), Some(h)) if n >= h)
    }
}

/// Only the event time, to move the partition's clock.
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
    shared: Arc<Shared>,
    positions: Arc<PositionLookup>,
    partitions: BTreeMap<Partition, PartitionState>,
    /// Offsets handed out in the last batch: committed to Kafka once the
    /// store has them.
    uncommitted: BTreeMap<Partition, i64>,
    last_check: Instant,
    last_activity: Instant,
    /// Times the watchdog recreated the consumer.
    pub recoveries: u64,
}

/// The librdkafka settings of the consumer (and, minus the group, of the
/// dead-letter producer).
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
    pub fn new(
        config: &KafkaConfig,
        batch_wait: Duration,
        positions: PositionLookup,
    ) -> Result<KafkaSource, KafkaError> {
        let mut client = client_config(config);
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let positions = Arc::new(positions);
        let shared = Arc::new(Shared::default());
        let consumer = Self::consumer(&client, config, &positions, &shared)?;
        let now = Instant::now();
        Ok(KafkaSource {
            name: format!("kafka:{}", config.group_id),
            config: config.clone(),
            client,
            batch_wait,
            consumer,
            shared,
            positions,
            partitions: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            last_check: now,
            last_activity: now,
            recoveries: 0,
        })
    }

    fn consumer(
        client: &ClientConfig,
        config: &KafkaConfig,
        positions: &Arc<PositionLookup>,
        shared: &Arc<Shared>,
    ) -> Result<BaseConsumer<GroupContext>, KafkaError> {
        let lookup = Arc::clone(positions);
        let context = GroupContext {
            group: config.group_id.clone(),
            positions: Box::new(move |key| lookup(key)),
            shared: Arc::clone(shared),
        };
        let consumer: BaseConsumer<GroupContext> = client.create_with_context(context)?;
        consumer.subscribe(&config.topics.all())?;
        Ok(consumer)
    }

    /// Takes in what the rebalance callback saw; drops what was revoked.
    fn apply_rebalances(&mut self, entries: &mut Vec<Entry>) {
        for partition in lock(&self.shared.assigned).drain(..) {
            self.partitions.insert(partition, PartitionState::default());
        }
        let revoked: Vec<Partition> = lock(&self.shared.revoked).drain(..).collect();
        if revoked.is_empty() {
            return;
        }
        for partition in &revoked {
            self.partitions.remove(partition);
            self.uncommitted.remove(partition);
        }
        let before = entries.len();
        entries.retain(|e| {
            let topic = e.coordinates["topic"].as_str().unwrap_or_default();
            let partition = e.coordinates["partition"].as_i64().unwrap_or(-1) as i32;
            !revoked.iter().any(|(t, p)| t == topic && *p == partition)
        });
        if entries.len() < before {
            tracing::info!(
                dropped = before - entries.len(),
                "Left the events of revoked partitions to their next owner."
            );
        }
    }

    /// Asks the brokers where each partition ends.
    fn check_ends(&mut self) {
        self.last_check = Instant::now();
        let positions = self.consumer.position().ok();
        for ((topic, partition), state) in self.partitions.iter_mut() {
            if state.next.is_none()
                && let Some(Offset::Offset(n)) = positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, *partition))
                    .map(|e| e.offset())
            {
                state.next = Some(n);
            }
            match self
                .consumer
                .fetch_watermarks(topic, *partition, Duration::from_millis(500))
            {
                Ok((low, high)) => {
                    state.high = Some(high);
                    if state.next.is_none() && low == high {
                        // Empty: nothing to wait for.
                        state.next = Some(high);
                    }
                }
                Err(e) => tracing::debug!(topic, partition, error = %e, "No watermarks."),
            }
        }
    }

    /// Partitions behind their end: (topic, partition, messages behind).
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

    /// Recreates the consumer when it gets nothing while there is lag.
    fn watchdog(&mut self) -> Result<(), KafkaError> {
        let stalled = self.last_activity.elapsed() >= self.config.stall_timeout
            && self.partitions.values().any(|s| !s.at_end());
        if !stalled {
            return Ok(());
        }
        self.recoveries += 1;
        tracing::warn!(
            lag = ?self.lag(),
            idle = ?self.last_activity.elapsed(),
            recoveries = self.recoveries,
            "Consumer stalled with unread messages; recreating it."
        );
        lock(&self.shared.assigned).clear();
        lock(&self.shared.revoked).clear();
        self.partitions.clear();
        self.uncommitted.clear();
        self.consumer = Self::consumer(&self.client, &self.config, &self.positions, &self.shared)?;
        self.last_activity = Instant::now();
        Ok(())
    }

    fn entry(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Entry {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        state.next = Some(offset + 1);
        if let Ok(EventTime {
            occurred_at: Some(at),
        }) = serde_json::from_slice(payload)
            && let Ok(at) = at.parse::<Timestamp>()
        {
            state.last_time = Some(state.last_time.map_or(at, |t| t.max(at)));
        }
        self.uncommitted
            .insert((topic.to_owned(), partition), offset + 1);
        Entry {
            raw: payload.to_vec(),
            key: key.map(<[u8]>::to_vec),
            coordinates: json!({"topic": topic, "partition": partition, "offset": offset}),
            position: Position {
                key: position_key(&self.config.group_id, topic, partition),
                value: (offset + 1).to_string(),
            },
        }
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_batch(&mut self, max: usize) -> Result<Batch, SourceError> {
        let deadline = Instant::now() + self.batch_wait;
        let mut entries = Vec::new();
        while entries.len() < max {
            let wait = deadline.saturating_duration_since(Instant::now());
            let polled = self.consumer.poll(wait);
            let message = match polled {
                None => None,
                Some(Ok(m)) => Some((
                    m.topic().to_owned(),
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                )),
                Some(Err(KafkaError::PartitionEOF(_))) => None,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    None
                }
            };
            self.apply_rebalances(&mut entries);
            if let Some((topic, partition, offset, key, payload)) = message {
                self.last_activity = Instant::now();
                if self.partitions.contains_key(&(topic.clone(), partition)) {
                    let entry = self.entry(&topic, partition, offset, key.as_deref(), &payload);
                    entries.push(entry);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if entries.is_empty() || self.last_check.elapsed() >= WATERMARK_INTERVAL {
            self.check_ends();
        }
        if entries.is_empty() {
            self.watchdog()?;
        }
        let caught_up = self.partitions.values().all(PartitionState::at_end);
        // Timers wait for the slowest partition that still has unread
        // events; one not read at all yet holds them entirely.
        let watermark = self
            .partitions
            .values()
            .filter(|s| !s.at_end())
            .map(|s| s.last_time.unwrap_or(Timestamp::MIN))
            .min();
        Ok(Batch {
            entries,
            caught_up,
            finished: false,
            watermark: Some(watermark.unwrap_or(Timestamp::MAX)),
        })
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
        // are for lag tools and for a store that is lost.
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "Committing group offsets failed; the store has the positions.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_at_its_end_only_when_both_ends_are_known() {
        let state = |next, high| PartitionState {
            next,
            high,
            last_time: None,
        };
        assert!(state(Some(5), Some(5)).at_end());
        assert!(state(Some(6), Some(5)).at_end());
        assert!(!state(Some(4), Some(5)).at_end());
        assert!(!state(None, Some(5)).at_end());
        assert!(!state(Some(5), None).at_end());
    }

    #[test]
    fn position_keys_are_per_group() {
        assert_eq!(position_key("g", "orders", 3), "kafka:g:orders:3");
        assert_ne!(
            position_key("g1", "orders", 3),
            position_key("g2", "orders", 3)
        );
    }
}
