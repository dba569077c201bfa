//! The pure parts, one core: decoding events, stepping journeys, rendering
//! and building the MIME message, the Message-ID, mapping a shop's webhook
//! to an event.
//!
//! `cargo bench --bench pure`; figures and method in BENCHMARKS.md.

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use aftercare::event::Event;
use aftercare::journey::EmailClass;
use aftercare::journey::{Journey, Rulebook, ShopStats};
use aftercare::mailer;
use aftercare::mapping::{Mapper, MappingSet, Outcome, presets, record};
use aftercare::source::DeadLetters;
use aftercare::store::{EmailRow, SqliteStore};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use lettre::message::Mailbox;
use serde_json::{Value, json};

const AT: &str = "2026-03-01T10:00:00Z";

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let placed = support::order_placed(1, "hy", AT);
    let delivered = support::shipment_delivered(1, AT);
    g.bench_function("order_placed_5_items", |b| {
        b.iter(|| Event::decode(black_box(&placed)).unwrap())
    });
    g.bench_function("shipment_delivered", |b| {
        b.iter(|| Event::decode(black_box(&delivered)).unwrap())
    });
    g.finish();
}

fn step(c: &mut Criterion) {
    let journeys = Rulebook::from_config(support::config().rulebook_config());
    let shop = ShopStats::default();
    let mut g = c.benchmark_group("step");
    g.throughput(Throughput::Elements(1));
    // A new customer's first order: confirmation, welcome, win-backs.
    let first = Event::decode(&support::order_placed(1, "en", AT))
        .unwrap()
        .named()
        .unwrap();
    g.bench_function("first_order", |b| {
        b.iter(|| journeys.step_with(None, black_box(&first), &shop).unwrap())
    });
    // A customer with four orders places a fifth: a loyalty tier, the
    // waiting win-backs cancelled and set again.
    let mut state: Option<Journey> = None;
    for n in 0..4 {
        let raw = String::from_utf8(support::order_placed(1, "en", AT))
            .unwrap()
            .replace("o-1", &format!("o-1-{n}"))
            .replace("bench-1", &format!("bench-1-{n}"))
            .replace("2026-03-01", &format!("2026-0{}-01", n + 1));
        let event = Event::decode(raw.as_bytes()).unwrap().named().unwrap();
        state = Some(journeys.step_with(state, &event, &shop).unwrap().state);
    }
    let fifth = Event::decode(&support::order_placed(1, "en", "2026-06-01T10:00:00Z"))
        .unwrap()
        .named()
        .unwrap();
    g.bench_function("fifth_order", |b| {
        b.iter_batched(
            || state.clone(),
            |state| journeys.step_with(state, black_box(&fifth), &shop).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Order confirmations approved by the pipeline for customers 0, 1, 2
/// (en, hy, am), with the whole template data, as the sender gets them.
fn approved_confirmations(config: &aftercare::config::Config) -> Vec<EmailRow> {
    let mut pipeline = support::pipeline(config, SqliteStore::in_memory().unwrap());
    let entries: Vec<_> = support::LOCALES
        .iter()
        .enumerate()
        .map(|(i, locale)| support::entry(support::order_placed(i as u64, locale, AT), i as u64))
        .collect();
    let mut approved = Vec::new();
    let mut dead = DeadLetters::discard();
    pipeline
        .ingest("bench", &entries, None, &mut dead, &mut approved)
        .unwrap();
    pipeline.fire(AT.parse().unwrap(), &mut approved).unwrap();
    approved.retain(|e| e.template == "order_confirmation");
    assert_eq!(approved.len(), 3, "one confirmation per locale");
    approved
}

fn render(c: &mut Criterion) {
    let config = support::config();
    let templates = aftercare::check::load(&config).expect("templates");
    let from: Mailbox = config.mailer.from.parse().unwrap();
    let reply_to: Option<Mailbox> = config.mailer.reply_to.as_ref().map(|r| r.parse().unwrap());
    let shop = serde_json::to_value(&config.shop).unwrap();
    let now: Timestamp = AT.parse().unwrap();
    let emails = approved_confirmations(&config);

    // What `Sender::deliver` does before handing over: render the three
    // parts, build the MIME message, and format it to the bytes sent.
    let mime = |email: &EmailRow| {
        let mut data = email.data.clone();
        data["shop"] = shop.clone();
        let data = handlebars::Context::from(data);
        let locale = email.locale.as_deref().unwrap();
        let rendered = templates
            .render_context(&email.template, locale, &data)
            .unwrap();
        let message_id = mailer::message_id(&email.key, &from);
        let name = data.data()["customer"]["name"].as_str();
        assert_eq!(email.class, EmailClass::Transactional);
        let message = mailer::build(
            &from,
            reply_to.as_ref(),
            email.recipient.as_deref().unwrap(),
            name,
            &rendered,
            &message_id,
            now,
            None,
        )
        .unwrap();
        message.formatted()
    };

    let mut g = c.benchmark_group("render_mime");
    g.throughput(Throughput::Elements(1));
    for email in &emails {
        let locale = email.locale.clone().unwrap();
        let size = mime(email).len();
        println!("render_mime/{locale}: message of {size} bytes");
        g.bench_function(&locale, |b| b.iter(|| mime(black_box(email))));
    }
    g.finish();

    // The same, part by part (English): where the time goes.
    let email = &emails[0];
    let mut data: Value = email.data.clone();
    data["shop"] = shop.clone();
    let data = handlebars::Context::from(data);
    let mut g = c.benchmark_group("render_parts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_en", |b| {
        b.iter(|| {
            templates
                .render_context("order_confirmation", "en", black_box(&data))
                .unwrap()
        })
    });
    let rendered = templates
        .render_context("order_confirmation", "en", &data)
        .unwrap();
    let message_id = mailer::message_id(&email.key, &from);
    let build = || {
        mailer::build(
            &from,
            reply_to.as_ref(),
            email.recipient.as_deref().unwrap(),
            Some("Customer 0"),
            black_box(&rendered),
            &message_id,
            now,
            None,
        )
        .unwrap()
    };
    g.bench_function("build_en", |b| b.iter(build));
    let message = build();
    g.bench_function("formatted_en", |b| {
        b.iter(|| black_box(&message).formatted())
    });
    g.bench_function("message_id", |b| {
        b.iter(|| mailer::message_id(black_box(&email.key), &from))
    });
    g.finish();
}

/// A Shopify `orders/create` webhook of four line items (the fixture's
/// first order, its two items and two more like them).
fn shopify_order() -> record::Record {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/presets/shopify");
    let records = std::fs::read(root.join("records.jsonl")).unwrap();
    let line = records.split(|b| *b == b'\n').next().unwrap();
    let (mut record, _) = record::parse_kcat(line).unwrap();
    let mut body: Value = serde_json::from_slice(&record.body).unwrap();
    let items = body["line_items"].as_array().unwrap().clone();
    let more = items.iter().enumerate().map(|(n, item)| {
        let mut item = item.clone();
        item["id"] = json!(466157049 + n as u64);
        item["sku"] = json!(format!("TEA-1{n}"));
        item
    });
    body["line_items"] = Value::Array(items.iter().cloned().chain(more).collect());
    record.body = serde_json::to_vec(&body).unwrap();
    record
}

/// The events of a mapped batch, decoded as the pipeline decodes them.
fn decode_all(outcomes: Vec<Outcome>) -> usize {
    let mut decoded = 0;
    for outcome in outcomes {
        let Outcome::Events { events, .. } = outcome else {
            panic!("{outcome:?}")
        };
        for event in events {
            Event::decode_noting(&event, &mut Vec::new()).unwrap();
            decoded += 1;
        }
    }
    decoded
}

fn mapping(c: &mut Criterion) {
    let preset = presets::get("shopify").unwrap();
    let vars = BTreeMap::from([("currency".to_owned(), json!("USD"))]);
    let set = MappingSet::new(&[], Some(&preset), &vars, Duration::from_secs(1));
    let mapper = Mapper::start(&set).unwrap();
    let order = shopify_order();
    // The native event the webhook maps to: what a shop sending native
    // events would send instead.
    let native = match mapper.map(vec![order.clone()]).remove(0) {
        Outcome::Events { mut events, .. } if events.len() == 1 => events.remove(0),
        other => panic!("{other:?}"),
    };
    println!(
        "mapping: webhook of {} bytes, native order.placed of {} bytes",
        order.body.len(),
        native.len()
    );

    let mut g = c.benchmark_group("mapping");
    g.throughput(Throughput::Elements(1));
    g.bench_function("native_order_placed_decode", |b| {
        b.iter(|| Event::decode_noting(black_box(&native), &mut Vec::new()).unwrap())
    });
    g.bench_function("shopify_orders_create_map_decode", |b| {
        b.iter_batched(
            || vec![order.clone()],
            |records| decode_all(mapper.map(records)),
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(500));
    g.bench_function("shopify_orders_create_batch_500", |b| {
        b.iter_batched(
            || vec![order.clone(); 500],
            |records| assert_eq!(decode_all(mapper.map(records)), 500),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = decode, step, render, mapping
}
criterion_main!(benches);
