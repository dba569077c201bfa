//! Mappings against their samples: what `aftercare check` runs, and the
//! presets' tests.
//!
//! A sample is a message and the native events it must map to. It passes
//! when the rule it belongs to is the one chosen (the first whose `when`
//! holds), its events are exactly those expected, and the decoder accepts
//! each of them: an event it refuses would be dead-lettered in `run`.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{Mapper, MappingSet, Outcome};
use crate::bounded::clip;
use crate::event::Event;

/// A sample that does not give what it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFailure {
    /// The rule's index in its set, and the sample's in the rule.
    pub rule: usize,
    pub sample: usize,
    /// `sample 2: expected ..., got ...`.
    pub message: String,
}

/// Runs the samples of the rules of `set` that `wanted` selects, with
/// `mapper` (started from `set`).
pub fn failures(
    set: &MappingSet,
    mapper: &Mapper,
    wanted: impl Fn(usize) -> bool,
) -> Vec<SampleFailure> {
    let mut failures = Vec::new();
    for (index, rule) in set.rules.iter().enumerate().filter(|(i, _)| wanted(*i)) {
        for (n, sample) in rule.samples.iter().enumerate() {
            let outcome = mapper.map(vec![sample.record()]).remove(0);
            if let Err(what) = judge(index, &sample.expect, outcome, |i| mapper.name(i)) {
                failures.push(SampleFailure {
                    rule: index,
                    sample: n,
                    message: format!("sample {}: {what}", n + 1),
                });
            }
        }
    }
    failures
}

fn judge<'a>(
    index: usize,
    expect: &str,
    outcome: Outcome,
    name: impl Fn(usize) -> &'a str,
) -> Result<(), String> {
    let expected: Value = serde_json::from_str(expect).map_err(|e| {
        format!(
            "`expect` is not JSON: {}",
            crate::event::InvalidEvent::json_message(&e)
        )
    })?;
    let Value::Array(expected) = expected else {
        return Err("`expect` is not a JSON array of events".to_owned());
    };
    let events = match outcome {
        Outcome::Events { rule, events } if rule == index => events,
        Outcome::Events { rule, .. } => {
            return Err(format!(
                "mapping \"{}\", tried earlier, takes this message",
                name(rule)
            ));
        }
        Outcome::Failed { reason, .. } => return Err(reason),
        Outcome::Native => {
            return Err("no mapping's `when` holds: it would be read as a native event".to_owned());
        }
    };
    let got: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_slice(e).unwrap_or(Value::Null))
        .collect();
    if got != expected {
        return Err(match (got.len(), expected.len()) {
            (g, e) if g != e => format!(
                "expected {e} events, got {g}: {}",
                clip(&Value::Array(got).to_string(), 500)
            ),
            _ => {
                let (k, (g, e)) = got
                    .iter()
                    .zip(&expected)
                    .enumerate()
                    .find(|(_, (g, e))| g != e)
                    .expect("some event differs");
                format!(
                    "event {}: expected {}, got {}",
                    k + 1,
                    clip(&e.to_string(), 500),
                    clip(&g.to_string(), 500)
                )
            }
        });
    }
    for (k, event) in events.iter().enumerate() {
        if let Err(e) = Event::decode(event) {
            return Err(format!(
                "event {} is refused by the decoder, so it would be dead-lettered: {e}",
                k + 1
            ));
        }
    }
    Ok(())
}

/// The lines (from 1) of each `[[mapping]]` of a TOML file, and of each of
/// its samples, in order; empty if the text does not parse.
pub fn lines(text: &str) -> Vec<(usize, Vec<usize>)> {
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        mapping: Vec<toml::Spanned<Rule>>,
    }
    #[derive(Deserialize)]
    struct Rule {
        #[serde(default)]
        samples: Vec<toml::Spanned<IgnoredAny>>,
    }
    let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let Ok(file) = toml::from_str::<File>(text) else {
        return Vec::new();
    };
    file.mapping
        .iter()
        .map(|rule| {
            (
                line(rule.span().start),
                rule.get_ref()
                    .samples
                    .iter()
                    .map(|s| line(s.span().start))
                    .collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_rules_and_samples_are_found() {
        let text = r#"[source]
format = "native"

[[mapping]]
name = "a"
emit = "."

[[mapping.samples]]
body = "{}"
expect = "[]"

[[mapping.samples]]
body = "{}"
expect = "[]"

[[mapping]]
name = "b"
emit = "."
samples = [
  { body = "{}", expect = "[]" },
]
"#;
        let line_of = |needle: &str, nth: usize| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.contains(needle))
                .nth(nth)
                .map(|(i, _)| i + 1)
                .unwrap()
        };
        // A rule at its header, a sample at its header or inline table.
        assert_eq!(
            lines(text),
            vec![
                (
                    line_of("[[mapping]]", 0),
                    vec![
                        line_of("[[mapping.samples]]", 0),
                        line_of("[[mapping.samples]]", 1)
                    ]
                ),
                (line_of("[[mapping]]", 1), vec![line_of("{ body", 0)]),
            ]
        );
        assert!(lines("not = [toml").is_empty());
    }
}
