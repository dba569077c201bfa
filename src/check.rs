//! `aftercare check`: the whole template set against its sample data.
//!
//! Every template of the journeys, in every locale, rendered with
//! `templates/samples/<template>.json` (the customer's locale set to the
//! locale under test, `shop` from the config). Every problem is reported,
//! not just the first, each as `file:line:column: what`.

use std::path::Path;

use serde_json::Value;

use crate::config::Config;
use crate::render::{Problem, Problems, Templates};

/// What a passing check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub locales: usize,
    pub templates: usize,
    pub renders: usize,
}

pub fn check(config: &Config) -> Result<Checked, Problems> {
    let templates = Templates::load(&config.templates_dir, &config.default_locale)?;
    let ids: Vec<&str> = config
        .journeys
        .iter()
        .map(|r| r.template.as_str())
        .collect();
    templates.require(&ids)?;
    let shop = serde_json::to_value(&config.shop).unwrap_or(Value::Null);
    let mut problems = Vec::new();
    let mut renders = 0;
    for id in &ids {
        let sample_path = config
            .templates_dir
            .join("samples")
            .join(format!("{id}.json"));
        let sample = match read_sample(&sample_path) {
            Ok(sample) => sample,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        for locale in templates.locales().available() {
            let mut data = sample.clone();
            data["shop"] = shop.clone();
            if data["customer"].is_object() {
                data["customer"]["locale"] = Value::String(locale.clone());
            }
            renders += 1;
            if let Err(Problems(found)) = templates.render(id, locale, &data) {
                problems.extend(found);
            }
        }
    }
    if problems.is_empty() {
        Ok(Checked {
            locales: templates.locales().available().len(),
            templates: ids.len(),
            renders,
        })
    } else {
        Err(Problems(problems))
    }
}

fn read_sample(path: &Path) -> Result<Value, Problem> {
    let problem = |message: String| Problem {
        file: path.to_owned(),
        line: None,
        column: None,
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| problem(format!("missing sample data: {e}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Problem {
        file: path.to_owned(),
        line: Some(e.line()),
        column: Some(e.column()),
        message: format!("not valid JSON: {e}"),
    })?;
    if !value.is_object() {
        return Err(problem("sample data must be a JSON object".to_owned()));
    }
    Ok(value)
}
