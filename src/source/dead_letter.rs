//! Dead letters: invalid events, kept with why and where.
//!
//! The file source writes them to a file, one JSON object per line: `raw`
//! (the event as received), `reason`, `source` and `coordinates`. The Kafka
//! source produces them to a topic: the raw payload and key as they came,
//! and headers `aftercare-source-topic`, `aftercare-source-partition`,
//! `aftercare-source-offset` and `aftercare-reason`.
//!
//! Either way they are made durable ([`DeadLetters::sync`]) before the
//! batch's positions are committed, so a bad event is never lost; after a
//! crash in between it may be written twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use serde_json::{Value, json};

enum Sink {
    /// Count and log only (`simulate` has no side effects).
    Discard,
    File {
        path: PathBuf,
        file: Option<BufWriter<File>>,
    },
    Kafka {
        producer: BaseProducer<DeliveryCounter>,
        topic: String,
    },
}

pub struct DeadLetters {
    sink: Sink,
    /// Records written since the last sync.
    unsynced: usize,
    pub written: usize,
}

/// Counts failed deliveries of dead letters, so that `sync` can refuse to
/// let the batch commit.
#[derive(Clone, Default)]
pub struct DeliveryCounter {
    failed: Arc<AtomicUsize>,
}

impl rdkafka::ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            tracing::error!(%error, "Dead letter not delivered.");
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl DeadLetters {
    /// A dead-letter file; nothing is created until the first invalid event.
    pub fn new(path: &Path) -> DeadLetters {
        Self::with(Sink::File {
            path: path.to_owned(),
            file: None,
        })
    }

    /// Counts invalid events without writing them anywhere.
    pub fn discard() -> DeadLetters {
        Self::with(Sink::Discard)
    }

    /// A dead-letter topic, produced to with `config` (brokers, security).
    pub fn kafka(config: &ClientConfig, topic: &str) -> Result<DeadLetters, KafkaError> {
        let mut config = config.clone();
        // Written once, even if the producer retries.
        config.set("enable.idempotence", "true");
        let producer = config.create_with_context(DeliveryCounter::default())?;
        Ok(Self::with(Sink::Kafka {
            producer,
            topic: topic.to_owned(),
        }))
    }

    fn with(sink: Sink) -> DeadLetters {
        DeadLetters {
            sink,
            unsynced: 0,
            written: 0,
        }
    }

    /// Where dead letters go, for messages.
    pub fn place(&self) -> String {
        match &self.sink {
            Sink::Discard => "nowhere".to_owned(),
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Kafka { topic, .. } => format!("topic {topic}"),
        }
    }

    pub fn write(
        &mut self,
        source: &str,
        coordinates: &Value,
        key: Option<&[u8]>,
        raw: &[u8],
        reason: &str,
    ) -> std::io::Result<()> {
        self.written += 1;
        match &mut self.sink {
            Sink::Discard => return Ok(()),
            Sink::File { path, file } => {
                if file.is_none() {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    let f = OpenOptions::new().create(true).append(true).open(&*path)?;
                    *file = Some(BufWriter::new(f));
                }
                let record = json!({
                    "raw": String::from_utf8_lossy(raw),
                    "reason": reason,
                    "source": source,
                    "coordinates": coordinates,
                });
                let file = file.as_mut().expect("opened above");
                serde_json::to_writer(&mut *file, &record)?;
                file.write_all(b"\n")?;
            }
            Sink::Kafka { producer, topic } => {
                let text = |k: &str| match &coordinates[k] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let (source_topic, partition, offset) =
                    (text("topic"), text("partition"), text("offset"));
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "aftercare-source-topic",
                        value: Some(&source_topic),
                    })
                    .insert(Header {
                        key: "aftercare-source-partition",
                        value: Some(&partition),
                    })
                    .insert(Header {
                        key: "aftercare-source-offset",
                        value: Some(&offset),
                    })
                    .insert(Header {
                        key: "aftercare-reason",
                        value: Some(reason),
                    });
                let mut record = BaseRecord::<[u8], [u8]>::to(topic)
                    .payload(raw)
                    .headers(headers);
                if let Some(key) = key {
                    record = record.key(key);
                }
                producer
                    .send(record)
                    .map_err(|(e, _)| std::io::Error::other(e))?;
                producer.poll(Duration::ZERO);
            }
        }
        self.unsynced += 1;
        Ok(())
    }

    /// Makes what was written durable; call before committing positions.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Discard => {}
            Sink::File { file, .. } => {
                if let Some(file) = file.as_mut() {
                    file.flush()?;
                    file.get_ref().sync_data()?;
                }
            }
            Sink::Kafka { producer, .. } => {
                producer
                    .flush(Duration::from_secs(30))
                    .map_err(std::io::Error::other)?;
                let failed = producer.context().failed.swap(0, Ordering::SeqCst);
                if failed > 0 {
                    return Err(std::io::Error::other(format!(
                        "{failed} dead letters were not delivered"
                    )));
                }
            }
        }
        self.unsynced = 0;
        Ok(())
    }
}
