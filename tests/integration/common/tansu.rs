//! A real Kafka-protocol broker for the tests: tansu, in memory, on a
//! loopback port. Topics are created and events produced with rdkafka.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{free_port, wait_for_port};

/// The shop's topics.
pub const TOPICS: [&str; 3] = ["orders", "shipments", "returns"];

/// A broker with the three topics (3 partitions each) and the dead-letter
/// topic, and `log` produced onto them keyed by customer.
pub fn broker_with(log: &str) -> Tansu {
    let tansu = Tansu::start();
    tansu.create_topics(&TOPICS, 3);
    tansu.create_topics(&["aftercare.dead-letter"], 1);
    tansu.produce(&records(log));
    tansu
}

/// The config of a worker reading `tansu` in `group`, with short group
/// timeouts (a dead member is noticed in seconds), and `extra` appended.
pub fn kafka_config(tansu: &Tansu, group: &str, extra: &str) -> String {
    format!(
        "shutdown_grace = \"5s\"\n\
         [source]\nkind = \"kafka\"\nbatch_size = 50\nbatch_wait = \"50ms\"\n\
         [source.kafka]\nbrokers = \"{}\"\ngroup_id = \"{group}\"\nstall_timeout = \"20s\"\n\
         [source.kafka.options]\n\
         \"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         {extra}",
        tansu.brokers()
    )
}

fn binary() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let installed = home.join("bin/tansu");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("tansu")
}

pub struct Tansu {
    pub port: u16,
    /// Where it keeps its data: `memory://tansu/` (lost on restart) or a
    /// SQLite file.
    storage: String,
    child: Option<Child>,
    /// The working directory, with the SQLite file; removed on drop.
    dir: Option<tempfile::TempDir>,
}

impl Tansu {
    /// A broker in memory: a restart empties it.
    pub fn start() -> Tansu {
        Self::start_with("memory://tansu/".to_owned(), None)
    }

    /// A broker that keeps its topics in a SQLite file: they survive a
    /// restart.
    pub fn start_durable() -> Tansu {
        // tansu takes the path as relative to its working directory.
        let dir = tempfile::tempdir().unwrap();
        Self::start_with("sqlite://tansu.db".to_owned(), Some(dir))
    }

    fn start_with(storage: String, dir: Option<tempfile::TempDir>) -> Tansu {
        let port = free_port();
        let mut tansu = Tansu {
            port,
            storage,
            child: None,
            dir,
        };
        tansu.spawn();
        tansu
    }

    /// Starts the broker (again, after `stop`) on its port. With TEST_LOG
    /// set (see `common::spawn`), its group coordinator's log is kept in
    /// /tmp too (TANSU_LOG: its filter, `info` by default).
    pub fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let (log_filter, log) = broker_log();
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(
                self.dir
                    .as_ref()
                    .map_or(std::env::temp_dir(), |d| d.path().to_owned()),
            )
            .env("RUST_LOG", log_filter)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (scripts/test.sh installs it with cargo install)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20));
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (in memory: empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the broker (SIGKILL: as a crash or a network outage looks).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        c
    }

    pub fn create_topics(&self, topics: &[&str], partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let results = runtime
            .block_on(admin.create_topics(&new, &AdminOptions::new()))
            .expect("create topics");
        for r in results {
            r.expect("topic created");
        }
    }

    fn producer(&self) -> FutureProducer {
        self.client()
            .set("message.timeout.ms", "20000")
            .create()
            .unwrap()
    }

    /// Produces `(topic, key, payload)` in order and waits for every ack.
    pub fn produce(&self, records: &[(String, String, String)]) {
        let producer = self.producer();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            for (topic, key, payload) in records {
                producer
                    .send(
                        FutureRecord::to(topic).key(key).payload(payload),
                        Duration::from_secs(20),
                    )
                    .await
                    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
            }
        });
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// Produces `payloads` onto partition `partition` of `topic`, all sent
    /// at once, one record per batch, and waits for every ack. (tansu 0.6.0
    /// answers a fetch from an offset inside a batch of several records
    /// with the batches after it: the rest of that batch is never read, so
    /// these records go one per batch.)
    pub fn produce_to(&self, topic: &str, partition: i32, payloads: &[String]) {
        let producer: FutureProducer = self
            .client()
            .set("message.timeout.ms", "20000")
            .set("batch.num.messages", "1")
            .create()
            .unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let sent: Vec<_> = payloads
                .iter()
                .map(|payload| {
                    producer.send(
                        FutureRecord::<(), _>::to(topic)
                            .partition(partition)
                            .payload(payload),
                        Duration::from_secs(20),
                    )
                })
                .collect();
            for ack in futures::future::join_all(sent).await {
                ack.unwrap_or_else(|(e, _)| panic!("produce to {topic}:{partition}: {e}"));
            }
        });
    }

    /// Produces records as `kcat -J` prints them (a dump of a topic: its
    /// topic, key, headers and payload; the partition is the broker's
    /// choice) in order, and waits for every ack.
    pub fn produce_kcat(&self, lines: &str) {
        let producer = self.producer();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            for line in lines.lines().filter(|l| !l.trim().is_empty()) {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                let topic = r["topic"].as_str().unwrap();
                let mut headers = OwnedHeaders::new();
                let list = r["headers"].as_array().cloned().unwrap_or_default();
                for pair in list.chunks(2) {
                    headers = headers.insert(Header {
                        key: pair[0].as_str().unwrap(),
                        value: pair.get(1).and_then(|v| v.as_str()),
                    });
                }
                let mut record = FutureRecord::<str, str>::to(topic).headers(headers);
                if let Some(key) = r["key"].as_str() {
                    record = record.key(key);
                }
                if let Some(payload) = r["payload"].as_str() {
                    record = record.payload(payload);
                }
                producer
                    .send(record, Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
            }
        });
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    /// The members of consumer group `group` as the broker sees them: for
    /// a failure's post-mortem (a member the broker kept after its worker
    /// died holds partitions no live worker reads).
    pub fn describe_group(&self, group: &str) -> String {
        let consumer: BaseConsumer = match self.client().create() {
            Ok(c) => c,
            Err(e) => return format!("no client: {e}"),
        };
        match consumer.fetch_group_list(Some(group), Duration::from_secs(5)) {
            Ok(list) => list
                .groups()
                .iter()
                .map(|g| {
                    let members: Vec<String> = g
                        .members()
                        .iter()
                        .map(|m| format!("{} ({})", m.id(), m.client_host()))
                        .collect();
                    format!(
                        "group {} {}: {} members: {members:?}",
                        g.name(),
                        g.state(),
                        members.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            Err(e) => format!("group {group}: not described: {e}"),
        }
    }

    /// Whether consumer group `group` is stable with exactly `members`
    /// members: no rebalance under way, and no member the broker kept
    /// after its worker died. (tansu 0.6.0 describes no member's
    /// assignment, so that cannot be asked too.)
    pub fn group_settled(&self, group: &str, members: usize) -> bool {
        let Ok(consumer) = self.client().create::<BaseConsumer>() else {
            return false;
        };
        consumer
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .is_ok_and(|list| {
                list.groups().iter().any(|g| {
                    g.name() == group && g.state() == "Stable" && g.members().len() == members
                })
            })
    }

    /// Every message of `topic` as `(partition, offset, payload)`: for a
    /// failure's post-mortem (which offsets of which partition were never
    /// applied).
    pub fn read_placed(&self, topic: &str, expected: usize) -> Vec<(i32, i64, String)> {
        self.read(topic, expected, |m| (m.partition(), m.offset(), payload(m)))
    }

    /// Every message of `topic`: payload and headers.
    pub fn read_all(&self, topic: &str, expected: usize) -> Vec<(String, Vec<(String, String)>)> {
        self.read(topic, expected, |m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (payload(m), headers)
        })
    }

    /// `expected` messages of `topic` from its start (or what came within
    /// 30 s), by a reader of a group of its own, each as `take` makes it.
    fn read<T>(
        &self,
        topic: &str,
        expected: usize,
        take: impl Fn(&BorrowedMessage<'_>) -> T,
    ) -> Vec<T> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", format!("reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        while out.len() < expected && start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(take(&m));
            }
        }
        out
    }
}

fn payload(m: &BorrowedMessage<'_>) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The topic an event belongs on, by its type.
pub fn topic_of(event: &str) -> &'static str {
    let v: serde_json::Value = serde_json::from_str(event).unwrap_or_default();
    match v["type"].as_str().unwrap_or_default() {
        t if t.starts_with("order.") => "orders",
        t if t.starts_with("shipment.") => "shipments",
        _ => "returns",
    }
}

/// `(topic, customer key, event)` for every line of a JSONL log.
pub fn records(log: &str) -> Vec<(String, String, String)> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let key = v["customer"]["id"].as_str().unwrap_or("unknown").to_owned();
            (topic_of(l).to_owned(), key, l.to_owned())
        })
        .collect()
}

/// The broker's log filter and where its log (on its stdout) goes:
/// nowhere, or with TEST_LOG a file in /tmp.
fn broker_log() -> (String, Stdio) {
    if std::env::var_os("TEST_LOG").is_none() {
        return ("warn".to_owned(), Stdio::null());
    }
    let filter = std::env::var("TANSU_LOG").unwrap_or_else(|_| "info".to_owned());
    let (file, _) = tempfile::Builder::new()
        .prefix("aftercare-tansu-")
        .suffix(".log")
        .tempfile()
        .unwrap()
        .keep()
        .unwrap();
    (filter, Stdio::from(file))
}
