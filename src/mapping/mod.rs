//! Mappings: a shop's own messages as native events, in jq.
//!
//! A mapping set is a list of rules, each a `when` condition and an `emit`
//! program (see README, "Connecting your order system"). For each message
//! the first rule whose condition holds emits zero, one or several native
//! events, which then go through the same decoder as native events do: one
//! contract, whatever the shop sends. A preset is a rule set shipped in the
//! binary (`source.format`); a shop's own `[[mapping]]` rules are tried
//! before the preset's.
//!
//! Programs run on a thread of their own ([`Mapper`]), with a large stack
//! and the bounds of [`jq`], so that no message can hang or abort the
//! worker: a message whose program fails or runs away is dead-lettered
//! with the reason.

pub mod explain;
pub mod jq;
pub mod presets;
pub mod record;
pub mod samples;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use jaq_json::Val;
use serde::{Deserialize, Serialize};

pub use record::Record;

/// The most events one message may map to.
pub const MAX_EVENTS: usize = 100;

/// One rule, as written in a preset or a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRule {
    pub name: String,
    /// A jq condition on the message; the rule applies when its first
    /// result is neither false nor null.
    #[serde(default = "always")]
    pub when: String,
    /// A jq program whose results are native events.
    pub emit: String,
    /// Messages with the events they must map to, run by `aftercare check`.
    #[serde(default)]
    pub samples: Vec<Sample>,
}

fn always() -> String {
    "true".to_owned()
}

/// A sample message and what it must map to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The message body, JSON text.
    pub body: String,
    /// The events expected, a JSON array.
    pub expect: String,
}

impl Sample {
    pub fn record(&self) -> Record {
        Record {
            body: self.body.clone().into_bytes(),
            topic: self.topic.clone(),
            key: self.key.clone().map(String::into_bytes),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        }
    }
}

/// The rules a worker maps with, and the variables they read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappingSet {
    pub rules: Vec<MappingRule>,
    /// `$vars`: the preset's defaults under the config's `[mapping_vars]`.
    pub vars: serde_json::Map<String, serde_json::Value>,
    /// Where each rule comes from, for messages: `config` or `preset NAME`.
    pub origins: Vec<String>,
    pub timeout: Duration,
    /// Whether a message no rule holds for is a native event (no preset:
    /// the shop's own rules map some messages, the rest are native).
    pub native_fallback: bool,
}

impl MappingSet {
    /// The shop's own rules first, then the preset's (`None`: native events
    /// only, unless there are own rules).
    pub fn new(
        own: &[MappingRule],
        preset: Option<&presets::Preset>,
        vars: &BTreeMap<String, serde_json::Value>,
        timeout: Duration,
    ) -> MappingSet {
        let mut set = MappingSet {
            timeout,
            native_fallback: preset.is_none(),
            ..MappingSet::default()
        };
        for rule in own {
            set.rules.push(rule.clone());
            set.origins.push("config".to_owned());
        }
        if let Some(preset) = preset {
            set.vars = preset.vars.clone();
            for rule in &preset.rules {
                set.rules.push(rule.clone());
                set.origins.push(format!("preset {}", preset.name));
            }
        }
        for (k, v) in vars {
            set.vars.insert(k.clone(), v.clone());
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Compiles every program, to report all errors at once.
    pub fn compile(&self) -> Result<Vec<Compiled>, Vec<RuleError>> {
        let mut compiled = Vec::new();
        let mut errors = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let when = jq::Program::compile(&rule.when).map_err(|e| (Part::When, e));
            let emit = jq::Program::compile(&rule.emit).map_err(|e| (Part::Emit, e));
            match (when, emit) {
                (Ok(when), Ok(emit)) => compiled.push(Compiled { when, emit }),
                (when, emit) => {
                    for (part, list) in [when.err(), emit.err()].into_iter().flatten() {
                        for error in list {
                            errors.push(RuleError {
                                index,
                                name: rule.name.clone(),
                                part,
                                error,
                            });
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }
}

/// A rule's programs, compiled.
pub struct Compiled {
    when: jq::Program,
    emit: jq::Program,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    When,
    Emit,
}

impl Part {
    pub fn key(self) -> &'static str {
        match self {
            Part::When => "when",
            Part::Emit => "emit",
        }
    }
}

/// A program that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub part: Part,
    pub error: jq::CompileError,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mapping \"{}\": {}, {}",
            self.name,
            self.part.key(),
            self.error
        )
    }
}

/// What a message mapped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The rule used (an index into the set) and the events it emitted, as
    /// JSON text: none means the message was skipped on purpose.
    Events { rule: usize, events: Vec<Vec<u8>> },
    /// The message cannot be mapped: the dead-letter reason.
    Failed { rule: Option<usize>, reason: String },
    /// No rule holds and the set has no preset: the message is a native
    /// event, as it is.
    Native,
}

/// The thread that runs mappings.
pub struct Mapper {
    jobs: mpsc::Sender<Job>,
    names: Vec<String>,
}

struct Job {
    records: Vec<Record>,
    reply: mpsc::Sender<Vec<Outcome>>,
}

impl Mapper {
    /// Compiles the set and starts its thread.
    pub fn start(set: &MappingSet) -> Result<Mapper, Vec<RuleError>> {
        // Compiled here to report errors; the thread compiles its own copy
        // (a compiled program stays on the thread that runs it).
        set.compile()?;
        let (jobs, incoming) = mpsc::channel::<Job>();
        let names = set.rules.iter().map(|r| r.name.clone()).collect();
        let set = set.clone();
        std::thread::Builder::new()
            .name("mapping".into())
            .stack_size(jq::STACK_BYTES)
            .spawn(move || {
                let compiled = set.compile().unwrap_or_default();
                let vars = jq::from_json(&serde_json::Value::Object(set.vars.clone()));
                for job in incoming {
                    // A panic in the engine (a bug, past what jq.rs
                    // bounds) costs its message only, never the thread.
                    let outcomes = job
                        .records
                        .iter()
                        .map(|r| {
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                map_one(&set, &compiled, &vars, r)
                            }))
                            .unwrap_or_else(|payload| {
                                Outcome::Failed {
                                    rule: None,
                                    reason: format!(
                                        "the mapping failed (internal error: {})",
                                        crate::pipeline::panic_message(payload.as_ref())
                                    ),
                                }
                            })
                        })
                        .collect();
                    // The caller went away: nothing to tell it.
                    let _ = job.reply.send(outcomes);
                }
            })
            .expect("spawning the mapping thread");
        Ok(Mapper { jobs, names })
    }

    /// The name of a rule, for metrics and logs.
    pub fn name(&self, rule: usize) -> &str {
        self.names.get(rule).map_or("?", String::as_str)
    }

    /// Maps `records`, in order.
    pub fn map(&self, records: Vec<Record>) -> Vec<Outcome> {
        let count = records.len();
        let (reply, outcomes) = mpsc::channel();
        let sent = self.jobs.send(Job { records, reply });
        match sent.ok().and_then(|()| outcomes.recv().ok()) {
            Some(outcomes) => outcomes,
            // The thread is gone only if a mapping panicked outside the
            // bounds jq.rs catches: a bug, reported for each message.
            None => vec![
                Outcome::Failed {
                    rule: None,
                    reason: "the mapping thread stopped (internal error)".into(),
                };
                count
            ],
        }
    }
}

fn map_one(set: &MappingSet, compiled: &[Compiled], vars: &Val, record: &Record) -> Outcome {
    let failed = |rule, reason: String| Outcome::Failed { rule, reason };
    let body: serde_json::Value = match serde_json::from_slice(&record.body) {
        Ok(body) => body,
        // The decoder says what is wrong with it.
        Err(_) if set.native_fallback => return Outcome::Native,
        Err(e) => {
            return failed(
                None,
                format!(
                    "the message is not valid JSON: {}",
                    crate::event::InvalidEvent::json_message(&e)
                ),
            );
        }
    };
    let input = jq::from_json(&body);
    let globals = || {
        [
            record.topic.as_deref().map_or(Val::Null, jq::string),
            record
                .key
                .as_deref()
                .map_or(Val::Null, |k| jq::string(&String::from_utf8_lossy(k))),
            jq::from_json(&serde_json::Value::Object(record.header_map())),
            vars.clone(),
        ]
    };
    for (rule, (spec, programs)) in set.rules.iter().zip(compiled).enumerate() {
        let holds = programs
            .when
            .run(input.clone(), globals(), set.timeout, 1)
            .map(|results| {
                results
                    .first()
                    .is_some_and(|v| !matches!(v, Val::Null | Val::Bool(false)))
            });
        match holds {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => return failed(Some(rule), format!("mapping \"{}\": when: {e}", spec.name)),
        }
        return match programs.emit.run(input, globals(), set.timeout, MAX_EVENTS) {
            Err(e) => failed(Some(rule), format!("mapping \"{}\": {e}", spec.name)),
            Ok(results) => {
                let mut events = Vec::with_capacity(results.len());
                for (i, v) in results.iter().enumerate() {
                    if !matches!(v, Val::Obj(_)) {
                        return failed(
                            Some(rule),
                            format!(
                                "mapping \"{}\": result {} is not an object but {}",
                                spec.name,
                                i + 1,
                                crate::bounded::clip(&v.to_string(), 40)
                            ),
                        );
                    }
                    events.push(v.to_string().into_bytes());
                }
                Outcome::Events { rule, events }
            }
        };
    }
    if set.native_fallback {
        return Outcome::Native;
    }
    let tried: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    failed(
        None,
        crate::bounded::clip(
            &format!("no mapping matched (tried: {})", tried.join(", ")),
            300,
        )
        .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, when: &str, emit: &str) -> MappingRule {
        MappingRule {
            name: name.into(),
            when: when.into(),
            emit: emit.into(),
            samples: Vec::new(),
        }
    }

    fn record(body: &str, topic: &str) -> Record {
        Record {
            body: body.as_bytes().to_vec(),
            topic: Some(topic.into()),
            key: None,
            headers: vec![("X-Kind".into(), b"order".to_vec())],
        }
    }

    #[test]
    fn the_first_rule_that_holds_maps_and_failures_say_why() {
        let vars = BTreeMap::from([("currency".to_owned(), serde_json::json!("EUR"))]);
        let set = MappingSet::new(
            &[
                rule("skip", ".status == \"draft\"", "empty"),
                rule(
                    "orders",
                    "$headers[\"x-kind\"] == \"order\" and $topic == \"shop\"",
                    "{event_id: \"e-\\(.id)\", currency: $vars.currency}, {event_id: \"f-\\(.id)\"}",
                ),
                rule("broken", "$topic == \"broken\"", ".x.y"),
                rule("scalar", "$topic == \"scalar\"", "1"),
            ],
            None,
            &vars,
            Duration::from_secs(1),
        );
        // As with a preset: what no rule holds for is not a native event.
        let native = Mapper::start(&set).unwrap();
        let mut set = set;
        set.native_fallback = false;
        let mapper = Mapper::start(&set).unwrap();
        let outcomes = mapper.map(vec![
            record(r#"{"id": 9007199254740993, "status": "draft"}"#, "shop"),
            record(r#"{"id": 9007199254740993}"#, "shop"),
            record(r#"{"x": 3}"#, "broken"),
            record("{}", "scalar"),
            record("{}", "elsewhere"),
            record("{not json", "shop"),
        ]);
        assert_eq!(
            outcomes[0],
            Outcome::Events {
                rule: 0,
                events: vec![]
            }
        );
        assert_eq!(
            outcomes[1],
            Outcome::Events {
                rule: 1,
                events: vec![
                    br#"{"event_id":"e-9007199254740993","currency":"EUR"}"#.to_vec(),
                    br#"{"event_id":"f-9007199254740993"}"#.to_vec()
                ]
            }
        );
        assert_eq!(mapper.name(1), "orders");
        let reason = |o: &Outcome| match o {
            Outcome::Failed { reason, .. } => reason.clone(),
            other => panic!("{other:?}"),
        };
        assert!(
            reason(&outcomes[2]).starts_with("mapping \"broken\": "),
            "{outcomes:?}"
        );
        assert!(
            reason(&outcomes[3]).contains("result 1 is not an object"),
            "{outcomes:?}"
        );
        assert_eq!(
            reason(&outcomes[4]),
            "no mapping matched (tried: skip, orders, broken, scalar)"
        );
        assert!(
            reason(&outcomes[5]).starts_with("the message is not valid JSON"),
            "{outcomes:?}"
        );
        // Without a preset, a message no rule holds for is a native event,
        // and the decoder says what is wrong with one that is not JSON.
        assert_eq!(
            native.map(vec![record("{}", "elsewhere"), record("{not json", "shop")]),
            vec![Outcome::Native, Outcome::Native]
        );
        assert_eq!(native.map(vec![record("{}", "scalar")]), outcomes[3..4]);
    }

    #[test]
    fn compile_errors_name_the_rule_and_part() {
        let set = MappingSet::new(
            &[rule("bad", "true", "{a: (1 +}")],
            None,
            &BTreeMap::new(),
            Duration::from_secs(1),
        );
        let errors = Mapper::start(&set).err().unwrap();
        assert_eq!((errors[0].index, errors[0].part), (0, Part::Emit));
        assert!(
            errors[0]
                .to_string()
                .starts_with("mapping \"bad\": emit, line 1"),
            "{errors:?}"
        );
    }
}
