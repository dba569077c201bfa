//! Every preset against its samples and its fixture: a record file built
//! from the vendor's documented payloads (tests/presets/NAME/records.jsonl,
//! as `kcat -J` prints records), which must map to exactly the native events
//! of expected.jsonl, each of which the decoder accepts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use aftercare::event::Event;
use aftercare::mapping::{Mapper, MappingRule, MappingSet, Outcome, presets, record, samples};
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

/// Runs every sample of the rules of `set` that `wanted` selects.
fn sample_failures(set: &MappingSet, wanted: impl Fn(usize) -> bool) -> Vec<String> {
    let mapper = Mapper::start(set).unwrap_or_else(|e| panic!("{e:?}"));
    samples::failures(set, &mapper, wanted)
        .into_iter()
        .map(|f| {
            format!(
                "{}: mapping \"{}\", {}",
                set.origins[f.rule], set.rules[f.rule].name, f.message
            )
        })
        .collect()
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
        let mut failures = sample_failures(&alone, |_| true);
        failures.extend(sample_failures(&set, |i| i < config.mapping.len()));
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
                Outcome::Native => panic!("{name}: record {}: read as native", i + 1),
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

/// `aftercare check` and `aftercare map` with each fixture's config, as a
/// shop's engineer runs them: the samples pass, and every record of the
/// fixture maps to events the decoder accepts.
#[test]
fn check_and_map_pass_on_every_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in presets::PRESETS {
        let dir = root.join("tests/presets").join(name);
        let config = dir.join("aftercare.toml");
        let check = Command::new(env!("CARGO_BIN_EXE_aftercare"))
            .current_dir(root)
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success(),
            "{name}: check: {stdout}{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(
            stdout.contains(&format!("mappings ({name}) mapped their")),
            "{name}: {stdout}"
        );

        let mut map = Command::new(env!("CARGO_BIN_EXE_aftercare"))
            .current_dir(root)
            .arg("--config")
            .arg(&config)
            .arg("map")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let records = std::fs::read(dir.join("records.jsonl")).unwrap();
        map.stdin.take().unwrap().write_all(&records).unwrap();
        let out = map.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: map:\n{text}");
        let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
        assert_eq!(
            text.matches("\n  accepted: ").count(),
            expected.lines().filter(|l| !l.trim().is_empty()).count(),
            "{name}:\n{text}"
        );
    }
}

/// A shop's own mapping: a program that does not compile stops the config
/// (exit 64, naming the key); a sample that does not give its events fails
/// `check` (exit 65) at the sample's line.
#[test]
fn check_names_a_broken_mapping_and_a_failing_sample() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str| {
        let config = dir.path().join("aftercare.toml");
        std::fs::write(&config, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_aftercare"))
            .current_dir(root)
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            config,
        )
    };
    let (code, text, _) = run(r#"
[[mapping]]
name = "legacy"
when = '$topic == "legacy"'
emit = '{event_id: .id,'
"#);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("config key `mapping[0].emit`"), "{text}");
    assert!(text.contains("mapping \"legacy\""), "{text}");

    let (code, text, _) = run(r#"
[source]
format = "shopfiy"
"#);
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains(
            "config key `source.format`: `shopfiy` is not a format; one of: native, shopify"
        ),
        "{text}"
    );

    let toml = r#"
[[mapping]]
name = "legacy"
when = '$topic == "legacy"'
emit = '{event_id: "legacy-\(.id)", type: "order.cancelled", occurred_at: .at, customer: {id: .who}, order: {id: .id}}'

[[mapping.samples]]
topic = "legacy"
body = '{"id": 7, "at": "2026-01-05T10:00:00Z", "who": "c-1"}'
expect = '[{"event_id": "legacy-7", "type": "order.cancelled", "occurred_at": "2026-01-05T10:00:00Z", "customer": {"id": "c-1"}, "order": {"id": 7}}]'

[[mapping.samples]]
topic = "legacy"
body = '{"id": 8, "at": "2026-01-05T10:00:00Z", "who": "c-1"}'
expect = '[{"event_id": "legacy-8", "type": "order.cancelled", "occurred_at": "2026-01-05T10:00:00Z", "customer": {"id": "c-1"}, "order": {"id": 8}}]'
"#;
    // The second sample fails: its id is a number, the program keeps it
    // one; the first expects as much and passes.
    let (code, text, config) =
        run(&toml.replace("\"order\": {\"id\": 8}", "\"order\": {\"id\": \"8\"}"));
    let line = toml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[mapping.samples]]"))
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    assert_eq!(code, Some(65), "{text}");
    assert!(
        text.contains(&format!(
            "{}:{line}: mapping \"legacy\": sample 2: event 1: expected ",
            config.display()
        )),
        "{text}"
    );
    assert!(!text.contains("sample 1"), "{text}");
    let (code, text, _) = run(toml);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("ok: 1 mappings (native) mapped their 2 samples"),
        "{text}"
    );
}

fn aftercare(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

/// `aftercare [--config CONFIG] simulate LOG`'s plan; it must succeed.
fn simulate(config: Option<&Path>, log: &Path) -> String {
    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
    if let Some(config) = config {
        args.extend(["--config".as_ref(), config.as_os_str()]);
    }
    args.extend(["simulate".as_ref(), log.as_os_str()]);
    let out = aftercare(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The README's promise: a Shopify topic dumped with `kcat -J`, read with
/// `source.format = "shopify"`, plans the same emails as the equivalent
/// native log, and `run` sends them.
#[test]
fn a_shopify_record_file_plans_and_sends_what_its_native_log_does() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/presets/shopify");
    let config = dir.join("aftercare.toml");
    let records = dir.join("records.jsonl");
    let plan = simulate(Some(&config), &records);
    assert_eq!(plan, simulate(None, &dir.join("expected.jsonl")));
    let planned = plan.lines().count();
    assert!(planned >= 5, "{plan}");

    // `run`: the emails of the plan due by now (every one of them: the
    // fixture's events are months old, replayed on their own clock, and
    // nothing is sent twice).
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let run = Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AFTERCARE_DATA_DIR", &data)
        .env("AFTERCARE_JOURNEYS__CLOCK", "events")
        .arg("--config")
        .arg(&config)
        .args(["run", "--input"])
        .arg(&records)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sent: Vec<String> = std::fs::read_dir(data.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    let sent_plan = plan
        .lines()
        .filter(|line| line.contains("\"status\":\"sent\""))
        .count();
    assert_eq!(sent.len(), sent_plan, "{stdout}\n{plan}");
    assert!(stdout.contains("0 invalid"), "{stdout}");
    assert!(stdout.contains("Skipped "), "{stdout}");
}

/// The README's worked mapping (examples/legacy-shop): its samples pass,
/// and its messages plan the emails of two orders, one cancelled and
/// refunded, with the stock message skipped.
#[test]
fn the_worked_custom_mapping_checks_and_plans() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/legacy-shop");
    let config = dir.join("aftercare.toml");
    let check = aftercare(&["--config".as_ref(), config.as_os_str(), "check".as_ref()]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        text.contains("ok: 4 mappings (native) mapped their 3 samples"),
        "{text}"
    );

    let messages = dir.join("messages.jsonl");
    let plan: Vec<serde_json::Value> = simulate(Some(&config), &messages)
        .lines()
        .map(|l| json(l.as_bytes()))
        .collect();
    let of = |template: &str, order: &str| {
        plan.iter()
            .find(|e| e["template"] == template && e["order_id"] == order)
            .map(|e| {
                (
                    e["status"].as_str().unwrap().to_owned(),
                    e["due_at"].as_str().unwrap().to_owned(),
                )
            })
    };
    // 09:05 in Berlin (CET) is 08:05 UTC.
    assert_eq!(
        of("order_confirmation", "100231"),
        Some(("sent".into(), "2026-03-02T08:05:00Z".into()))
    );
    assert_eq!(of("shipping_update", "100231").unwrap().0, "sent");
    assert_eq!(of("order_cancelled", "100232").unwrap().0, "sent");
    assert_eq!(of("refund_issued", "100232").unwrap().0, "sent");
}
