//! What the benches share: events as the shop sends them, and a pipeline
//! wired as `aftercare run` wires it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aftercare::config::Config;
use aftercare::journey::Rulebook;
use aftercare::pipeline::{Context, LeasePolicy, Pipeline};
use aftercare::render::Locales;
use aftercare::source::{Entry, Position};
use aftercare::store::Store;
use aftercare::unsubscribe::Signer;
use jiff::SignedDuration;
use serde_json::json;

/// Locales of the shipped templates.
pub const LOCALES: [&str; 3] = ["en", "hy", "am"];

/// Whether the binary runs as a benchmark (`cargo bench`), not once as a
/// smoke test (`cargo test --all-targets`).
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The embedded configuration, with paths anchored at the crate root.
pub fn config() -> Config {
    let mut config = Config::embedded();
    config.templates_dir = root().join("templates");
    config
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

/// `target/bench-data/`, made if missing.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("bench-data");
    std::fs::create_dir_all(&dir).expect("create target/bench-data");
    dir
}

/// An `order.placed` event of customer `i` with five items, as
/// `scripts/bench-smtp.sh` makes them.
pub fn order_placed(i: u64, locale: &str, at: &str) -> Vec<u8> {
    let items: Vec<_> = (0..5)
        .map(|k| {
            json!({
                "sku": format!("SKU-{k}"), "name": format!("Item {k}"),
                "quantity": 1, "unit_price": "9.95",
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "event_id": format!("bench-{i}"), "type": "order.placed", "occurred_at": at,
        "customer": {"id": format!("c-{i}"), "email": format!("customer{i}@example.com"),
                     "name": format!("Customer {i}"), "locale": locale,
                     "marketing_consent": true},
        "order": {"id": format!("o-{i}"), "total": "49.75", "currency": "EUR", "items": items},
    }))
    .unwrap()
}

/// A `shipment.delivered` event of customer `i`'s order.
pub fn shipment_delivered(i: u64, at: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": format!("bench-delivered-{i}"), "type": "shipment.delivered",
        "occurred_at": at, "customer": {"id": format!("c-{i}")},
        "order": {"id": format!("o-{i}")}, "shipment": {"id": format!("s-{i}")},
    }))
    .unwrap()
}

/// A file-source entry of line `line`.
pub fn entry(raw: Vec<u8>, line: u64) -> Entry {
    Entry {
        raw,
        key: None,
        coordinates: json!({"path": "bench.jsonl", "line": line}),
        position: Position {
            key: "file:bench.jsonl".to_owned(),
            value: line.to_string(),
        },
        oversized: None,
        mapped: None,
    }
}

/// A pipeline on `store` with the embedded journeys and policies, as
/// `aftercare run` builds it.
pub fn pipeline<S: Store>(config: &Config, store: S) -> Pipeline<S> {
    let context = Context {
        locales: Locales::new(LOCALES.iter().map(|l| l.to_string()).collect(), "en"),
        default_timezone: config.default_timezone.clone(),
        unsubscribe_url: config.shop.unsubscribe_url.clone(),
        signer: Signer::new(b"bench secret, not a real one"),
    };
    let lease = LeasePolicy {
        owner: "bench".to_owned(),
        duration: SignedDuration::from_mins(5),
    };
    Pipeline::new(
        store,
        Rulebook::from_config(config.rulebook_config()),
        context,
        config.sender.batch_size,
        lease,
    )
    .expect("pipeline")
}
