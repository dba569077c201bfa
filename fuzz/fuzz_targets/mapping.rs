//! Every preset on arbitrary messages: a message (a `kcat -J` record line,
//! headers and all, or a bare body) maps to events or to a reason, within
//! the mapping's bounds, and never panics the mapping thread; every event
//! a mapping emits the decoder takes or refuses with a reason.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use aftercare::event::Event;
use aftercare::mapping::record::{Record, parse_kcat};
use aftercare::mapping::{Mapper, MappingSet, Outcome, presets};
use libfuzzer_sys::fuzz_target;

/// One mapper per preset, with the vars a shop sets (a currency, a zone).
fn mappers() -> &'static Vec<Mapper> {
    static MAPPERS: OnceLock<Vec<Mapper>> = OnceLock::new();
    MAPPERS.get_or_init(|| {
        let vars = BTreeMap::from([
            ("currency".to_owned(), serde_json::json!("EUR")),
            ("timezone".to_owned(), serde_json::json!("Europe/Berlin")),
        ]);
        presets::PRESETS
            .iter()
            .map(|(name, _)| {
                let preset = presets::get(name).expect("a shipped preset");
                let set = MappingSet::new(&[], Some(&preset), &vars, Duration::from_millis(200));
                Mapper::start(&set).expect("a shipped preset compiles")
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let record = parse_kcat(data).map_or_else(
        || Record {
            body: data.to_vec(),
            ..Record::default()
        },
        |(record, _)| record,
    );
    for mapper in mappers() {
        match mapper.map(vec![record.clone()]).remove(0) {
            Outcome::Events { events, .. } => {
                for event in events {
                    if let Err(e) = Event::decode(&event) {
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
            Outcome::Failed { reason, .. } => {
                assert!(!reason.is_empty());
                assert!(!reason.contains("internal error"), "{reason}");
            }
            Outcome::Native => unreachable!("a preset has no native fallback"),
        }
    }
});
