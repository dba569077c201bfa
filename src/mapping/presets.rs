//! The mapping sets shipped with aftercare, chosen by `source.format`.

use serde::Deserialize;

use super::MappingRule;

/// A preset, as its file in src/mapping/presets/ says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(skip)]
    pub name: &'static str,
    /// One line: what it reads.
    pub description: String,
    /// Defaults for `$vars`, under the config's `[mapping_vars]`.
    #[serde(default)]
    pub vars: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "mapping")]
    pub rules: Vec<MappingRule>,
}

/// Every preset: its name and its file's text.
pub const PRESETS: &[(&str, &str)] = &[
    ("shopify", include_str!("presets/shopify.toml")),
    ("woocommerce", include_str!("presets/woocommerce.toml")),
    ("commercetools", include_str!("presets/commercetools.toml")),
    ("segment", include_str!("presets/segment.toml")),
    (
        "debezium-outbox",
        include_str!("presets/debezium-outbox.toml"),
    ),
    ("cloudevents", include_str!("presets/cloudevents.toml")),
];

/// The names `source.format` accepts: `native` and the presets.
pub fn names() -> Vec<&'static str> {
    std::iter::once("native")
        .chain(PRESETS.iter().map(|(name, _)| *name))
        .collect()
}

/// The preset of that name (a test proves every shipped file parses).
pub fn get(name: &str) -> Option<Preset> {
    let (name, text) = PRESETS.iter().find(|(n, _)| *n == name)?;
    let mut preset: Preset =
        toml::from_str(text).unwrap_or_else(|e| panic!("src/mapping/presets/{name}.toml: {e}"));
    preset.name = name;
    Some(preset)
}

/// Where a preset's file is in the repository, for messages.
pub fn path(name: &str) -> String {
    format!("src/mapping/presets/{name}.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_compiles() {
        for (name, _) in PRESETS {
            let preset = get(name).unwrap();
            assert!(!preset.rules.is_empty(), "{name}");
            let set = super::super::MappingSet::new(
                &[],
                Some(&preset),
                &Default::default(),
                std::time::Duration::from_secs(1),
            );
            if let Err(errors) = set.compile() {
                panic!("{name}: {errors:?}");
            }
        }
    }
}
