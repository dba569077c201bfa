//! Every preset against its samples and its fixture: a record file built
//! from the vendor's documented payloads (tests/presets/NAME/records.jsonl,
//! as `kcat -J` prints records), which must map to exactly the native events
//! of expected.jsonl, each of which the decoder accepts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aftercare::event::Event;
use aftercare::mapping::{Mapper, MappingRule, MappingSet, Outcome, presets, record};
use serde::Deserialize;

/// The parts of a shop's config file a mapping set is made of.
#[derive(Deserialize)]
struct ShopConfig {
    source: Source,
    #[serde(default)]
    mapping: Vec<MappingRule>,
    #[serde(default)]
    mapping_vars: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Source {
    format: String,
}

fn json(text: &[u8]) -> serde_json::Value {
    serde_json::from_slice(text)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(text)))
}

/// Runs every sample of `set` and says which do not give their `expect`.
fn sample_failures(set: &MappingSet, mapper: &Mapper) -> Vec<String> {
    let mut failures = Vec::new();
    for (index, rule) in set.rules.iter().enumerate() {
        for (n, sample) in rule.samples.iter().enumerate() {
            let expected = json(sample.expect.as_bytes());
            let outcome = mapper.map(vec![sample.record()]).remove(0);
            let got = match &outcome {
                Outcome::Events { rule: used, events } if *used == index => {
                    serde_json::Value::Array(events.iter().map(|e| json(e)).collect())
                }
                other => serde_json::json!(format!("{other:?}")),
            };
            if got != expected {
                failures.push(format!(
                    "{}: mapping \"{}\", sample {}: expected {expected}, got {got}",
                    set.origins[index],
                    rule.name,
                    n + 1
                ));
            }
        }
    }
    failures
}

#[test]
fn every_preset_maps_its_samples_and_its_fixture_to_the_expected_events() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/presets");
    let mut seen = Vec::new();
    for (name, _) in presets::PRESETS {
        let dir = root.join(name);
        let config: ShopConfig =
            toml::from_str(&std::fs::read_to_string(dir.join("aftercare.toml")).unwrap())
                .unwrap_or_else(|e| panic!("{name}/aftercare.toml: {e}"));
        assert_eq!(&config.source.format, name);
        let preset = presets::get(name).unwrap();
        let set = MappingSet::new(
            &config.mapping,
            Some(&preset),
            &config.mapping_vars,
            Duration::from_secs(1),
        );
        let mapper = Mapper::start(&set).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        // The preset's samples hold under its own defaults; the shop's
        // rules' samples under the shop's vars.
        let alone = MappingSet::new(&[], Some(&preset), &BTreeMap::new(), Duration::from_secs(1));
        let mut failures = sample_failures(&alone, &Mapper::start(&alone).unwrap());
        failures.retain(|f| f.starts_with("preset"));
        let mut own = sample_failures(&set, &mapper);
        own.retain(|f| f.starts_with("config"));
        failures.extend(own);
        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));

        let records = std::fs::read(dir.join("records.jsonl")).unwrap();
        let records: Vec<_> = records
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|line| {
                record::parse_kcat(line)
                    .unwrap_or_else(|| {
                        panic!("{name}: not a record: {}", String::from_utf8_lossy(line))
                    })
                    .0
            })
            .collect();
        assert!(
            records.len() >= 5,
            "{name}: a fixture of {} records",
            records.len()
        );
        let mut got = Vec::new();
        for (i, outcome) in mapper.map(records).into_iter().enumerate() {
            match outcome {
                Outcome::Events { events, .. } => got.extend(events.iter().map(|e| json(e))),
                Outcome::Failed { reason, .. } => panic!("{name}: record {}: {reason}", i + 1),
            }
        }
        let expected: Vec<_> = std::fs::read(dir.join("expected.jsonl"))
            .unwrap()
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(json)
            .collect();
        assert_eq!(got, expected, "{name}: the fixture's events");
        for event in &expected {
            let raw = serde_json::to_vec(event).unwrap();
            if let Err(e) = Event::decode(&raw) {
                panic!("{name}: the decoder refuses {event}: {e}");
            }
        }
        seen.push(*name);
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
}
