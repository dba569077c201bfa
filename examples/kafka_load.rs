//! Load for the Kafka ingest benchmark (`scripts/bench-kafka.sh`).
//!
//! `kafka_load produce BROKERS TOPIC N`: N `order.placed` events (new
//! customers, 5 items, dated 2030 so that nothing falls due), keyed by
//! customer, as fast as the broker takes them.
//!
//! `kafka_load count BROKERS TOPIC N`: the bare consumer: a new group reads
//! TOPIC from the start and only counts messages, until N. Prints seconds
//! from subscribing to the first message and to the last, and the rate.
//!
//! `kafka_load first-from BROKERS TOPIC PARTITION OFFSET`: the offset of
//! the first message a consumer assigned at OFFSET gets: OFFSET from a
//! broker that honours the fetch position.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn event(i: u64) -> String {
    let items: Vec<String> = (0..5)
        .map(|k| {
            format!(r#"{{"sku":"SKU-{k}","name":"Item {k}","quantity":1,"unit_price":"9.95"}}"#)
        })
        .collect();
    format!(
        r#"{{"event_id":"bench-{i}","type":"order.placed","occurred_at":"2030-01-01T10:00:00Z","customer":{{"id":"c-{i}","email":"customer{i}@example.com","name":"Customer {i}","locale":"en"}},"order":{{"id":"o-{i}","total":"49.75","currency":"EUR","items":[{}]}}}}"#,
        items.join(",")
    )
}

fn produce(brokers: &str, topic: &str, n: u64) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // One record per batch: tansu 0.6.0 answers a fetch from an offset
        // inside a batch with the next batch, skipping the rest of the one
        // asked for (see `first-from`), and the worker fetches from such
        // offsets when it resumes a paused partition or restarts.
        .set("linger.ms", "5")
        .set("batch.num.messages", "1")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2000000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..n {
        let (key, payload) = (format!("c-{i}"), event(i));
        bytes += payload.len();
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    // Queue full: let deliveries catch up.
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
    eprintln!(
        "produced {n} events of {} bytes on average in {:.1} s",
        bytes / n.max(1) as usize,
        start.elapsed().as_secs_f64()
    );
}

fn count(brokers: &str, topic: &str, n: u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bare-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let start = Instant::now();
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut seen, mut first) = (0u64, None);
    while seen < n {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {seen} of {n}"
        );
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(|| start.elapsed());
            seen += 1;
        }
    }
    let total = start.elapsed().as_secs_f64();
    let first = first.unwrap_or_default().as_secs_f64();
    println!(
        "{{\"messages\":{seen},\"first_s\":{first:.3},\"total_s\":{total:.3},\"per_s_after_first\":{:.0}}}",
        seen as f64 / (total - first)
    );
}

/// The first offset a consumer assigned at `offset` of `partition` gets:
/// `offset` from a broker that honours the fetch position.
fn first_from(brokers: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("probe-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("offset");
    consumer.assign(&tpl).expect("assign");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            println!("asked for {offset}, got {}", m.offset());
            return;
        }
    }
    println!("asked for {offset}, got nothing in 30 s");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: kafka_load produce|count BROKERS TOPIC N";
    if let [_, mode, brokers, topic, partition, offset] = args.as_slice()
        && mode == "first-from"
    {
        return first_from(
            brokers,
            topic,
            partition.parse().unwrap(),
            offset.parse().unwrap(),
        );
    }
    let [_, mode, brokers, topic, n] = args.as_slice() else {
        panic!("{usage}");
    };
    let n: u64 = n.parse().expect(usage);
    match mode.as_str() {
        "produce" => produce(brokers, topic, n),
        "count" => count(brokers, topic, n),
        _ => panic!("{usage}"),
    }
}
