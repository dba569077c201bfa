//! The layers, read and merged: the compiled-in defaults (or the shipped
//! file on disk), the file given, the environment; and figment's and the
//! TOML crate's errors said in the config's own words.

use std::collections::BTreeSet;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;

use super::{Config, ConfigError, DEFAULT_TOML, invalid};
use crate::journey::JourneyRule;

impl Config {
    /// Loads the layers and validates the result. `env` is passed in so that
    /// tests do not have to touch the process environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load_over(None, file, env)
    }

    /// [`Config::load`] over `base` (the shipped file on disk, see
    /// [`super::SHIPPED_FILE`]) instead of the compiled-in defaults. The
    /// `[[journey]]` lists merge by template: a rule of a later layer
    /// replaces the earlier layer's rule of the same template and leaves
    /// the others; `enabled = false` removes a rule; `default_journeys =
    /// false` keeps the file's list alone.
    pub fn load_over(
        base: Option<&Path>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let base_text = match base {
            Some(base) => {
                let text = std::fs::read_to_string(base)
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", base.display())))?;
                check_syntax(base, &text)?;
                text
            }
            None => DEFAULT_TOML.to_owned(),
        };
        let mut figment = Figment::from(Toml::string(&base_text));
        let mut file_journeys = None;
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError::Parse(format!("{}: {e}", file.display())))?;
            check_syntax(file, &text)?;
            figment = figment.merge(Toml::file_exact(file));
            // Read again below, whole, to merge with the rules under it;
            // a mistake in them is reported by the extraction first.
            file_journeys = Some(text);
        }
        for (key, value) in env {
            let Some(path) = key.strip_prefix("AFTERCARE_") else {
                continue;
            };
            let path = path.to_lowercase().replace("__", ".");
            // Parsed as TOML (numbers, booleans, `[...]`, `{...}`), except a
            // number that would not read back as written (`007`, or too
            // many digits for an integer): a secret keeps every digit.
            let parsed: figment::value::Value = value.parse().expect("infallible");
            let value = match &parsed {
                figment::value::Value::Num(_, n) if num_text(n) != value.trim() => {
                    figment::value::Value::from(value)
                }
                _ => parsed,
            };
            figment = figment.merge(EnvVar {
                name: key.clone(),
                path,
                value,
            });
        }
        let mut config: Config = figment.extract().map_err(describe)?;
        config.file = file.map(Path::to_path_buf);
        config.base_file = base.map(Path::to_path_buf);
        if let (Some(text), Some(file)) = (&file_journeys, file)
            && config.default_journeys
            && let Some(over) = journey_list(text, &file.display())?
        {
            let base_name = base.map_or("the compiled-in defaults".into(), |b| {
                b.display().to_string()
            });
            let mut seen = BTreeSet::new();
            for (i, rule) in over.iter().enumerate() {
                if !seen.insert(rule.template.as_str()) {
                    return Err(invalid(
                        format!("journey[{i}].template"),
                        format!("`{}` is used by two journey rules", rule.template),
                    ));
                }
            }
            let under = journey_list(&base_text, &base_name)?.unwrap_or_default();
            let (keys, rules) = merge_journeys(under, &base_name, over)
                .into_iter()
                .filter(|(_, rule)| rule.enabled)
                .unzip();
            config.journey_keys = keys;
            config.journeys = rules;
        }
        if config.journeys.iter().any(|rule| !rule.enabled) {
            let (keys, rules) = config
                .journeys
                .drain(..)
                .enumerate()
                .filter(|(_, rule)| rule.enabled)
                .map(|(i, rule)| (format!("journey[{i}]"), rule))
                .unzip();
            config.journey_keys = keys;
            config.journeys = rules;
        }
        config.validate()?;
        Ok(config)
    }
}

/// The `[[journey]]` list of a TOML text, if it has one.
fn journey_list(
    text: &str,
    name: &dyn std::fmt::Display,
) -> Result<Option<Vec<JourneyRule>>, ConfigError> {
    #[derive(Deserialize)]
    struct JourneyList {
        journey: Option<Vec<JourneyRule>>,
    }
    toml::from_str::<JourneyList>(text)
        .map(|j| j.journey)
        .map_err(|e| ConfigError::Parse(format!("{name}: {}", e.message())))
}

/// `over`'s rules replace `under`'s of the same template, in place; the
/// others are added after them. Each rule keeps its key in its own file.
fn merge_journeys(
    under: Vec<JourneyRule>,
    under_name: &str,
    over: Vec<JourneyRule>,
) -> Vec<(String, JourneyRule)> {
    let mut merged: Vec<(String, JourneyRule)> = under
        .into_iter()
        .enumerate()
        .map(|(i, rule)| (format!("journey[{i}] (in {under_name})"), rule))
        .collect();
    for (i, rule) in over.into_iter().enumerate() {
        let key = format!("journey[{i}]");
        match merged.iter_mut().find(|(_, r)| r.template == rule.template) {
            Some(slot) => *slot = (key, rule),
            None => merged.push((key, rule)),
        }
    }
    merged
}

fn num_text(n: &figment::value::Num) -> String {
    use figment::value::Num;
    match *n {
        Num::U8(v) => v.to_string(),
        Num::U16(v) => v.to_string(),
        Num::U32(v) => v.to_string(),
        Num::U64(v) => v.to_string(),
        Num::U128(v) => v.to_string(),
        Num::USize(v) => v.to_string(),
        Num::I8(v) => v.to_string(),
        Num::I16(v) => v.to_string(),
        Num::I32(v) => v.to_string(),
        Num::I64(v) => v.to_string(),
        Num::I128(v) => v.to_string(),
        Num::ISize(v) => v.to_string(),
        Num::F32(v) => v.to_string(),
        Num::F64(v) => v.to_string(),
    }
}

/// One `AFTERCARE_*` variable as a figment provider, named after the
/// variable (figment would name a `(key, value)` pair by its Rust types).
struct EnvVar {
    name: String,
    /// The config key, dotted.
    path: String,
    value: figment::value::Value,
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        figment::providers::Serialized::global(&self.path, &self.value).data()
    }
}

/// A TOML syntax error as file, line, column and what is wrong: never the
/// line itself, which may hold a secret (the TOML crate's own message
/// quotes it).
fn check_syntax(file: &Path, text: &str) -> Result<(), ConfigError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let at = e.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let what = e.message().lines().collect::<Vec<_>>().join(", ");
    Err(ConfigError::Parse(format!(
        "{}, line {line}, column {column}: {what}",
        file.display()
    )))
}

/// figment's error, without its internals: the key as `a.b[0].c` (not
/// `default.a.b.0.c`), where it was set (a file, a variable), and the
/// value's expected kind in words rather than a Rust type.
fn describe(error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let messages: Vec<(String, String)> = error
        .into_iter()
        .map(|e| {
            let what = match &e.kind {
                Kind::InvalidType(actual, expected) => {
                    format!(
                        "invalid type: found {actual}, expected {}",
                        expected_kind(expected)
                    )
                }
                Kind::InvalidValue(actual, expected) => {
                    format!(
                        "invalid value {actual}, expected {}",
                        expected_kind(expected)
                    )
                }
                Kind::InvalidLength(_, expected) => {
                    format!("expected {}", expected_kind(expected))
                }
                Kind::UnknownField(_, known) => {
                    format!("unknown key; the keys here: {}", known.join(", "))
                }
                Kind::UnknownVariant(value, known) => {
                    format!("unknown value `{value}`; one of: {}", known.join(", "))
                }
                Kind::Message(m) if m.contains("untagged enum") => "expected a string".to_owned(),
                other => other.to_string(),
            };
            let place = match &e.metadata {
                Some(md) => match &md.source {
                    Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                    _ if md.name.starts_with("environment variable") => {
                        format!(" (in {})", md.name)
                    }
                    _ => String::new(),
                },
                None => String::new(),
            };
            let key = e.path.iter().fold(String::new(), |mut key, part| {
                if part.parse::<usize>().is_ok() {
                    key.push_str(&format!("[{part}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(part);
                }
                key
            });
            (key, format!("{what}{place}"))
        })
        .collect();
    match <[_; 1]>::try_from(messages) {
        Ok([(key, reason)]) if !key.is_empty() => ConfigError::Invalid { key, reason },
        Ok(messages) => ConfigError::Parse(list(&messages)),
        Err(messages) => ConfigError::Parse(list(&messages)),
    }
}

/// Several errors, each with its key.
fn list(messages: &[(String, String)]) -> String {
    messages
        .iter()
        .map(|(key, reason)| match key.as_str() {
            "" => reason.clone(),
            key => format!("key `{key}`: {reason}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// serde's name of what it expected, in words: `usize` is "a whole number
/// (0 or more)", `struct ShopConfig` "a table".
fn expected_kind(expected: &str) -> String {
    let plain = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e if e.starts_with("enum ") || e.starts_with("variant identifier") => {
            "a string naming one of its values"
        }
        e if e.starts_with("a Decimal") => "an amount in quotes, like \"500.00\"",
        e if e.starts_with("tuple") || e == "a sequence" => "a list",
        e if e.starts_with("field identifier") => "a known key",
        other => other,
    };
    plain.to_owned()
}
