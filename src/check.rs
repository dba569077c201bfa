//! `aftercare check`: the whole template set against its sample data.
//!
//! Every template of the journeys, in every locale, rendered with
//! `templates/samples/<template>.json` (the customer's locale set to the
//! locale under test, `shop` from the config, a signed-looking unsubscribe
//! link on marketing templates). Every problem is reported, not just the
//! first, each as `file:line:column: what`. Besides what rendering finds
//! (a missing variable, partial or helper), `check` refuses a subject
//! longer than `check.max_subject_chars` and customer data in triple
//! braces, which would reach the HTML unescaped.

use std::path::Path;

use serde_json::Value;

use std::collections::BTreeMap;

use crate::config::{Config, JourneyRule};
use crate::journey::Journeys;
use crate::render::{LoadOptions, PARTS, Problem, Problems, Rendered, Templates};

/// What a passing check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub locales: usize,
    pub templates: usize,
    pub renders: usize,
}

/// One template in one locale (and variant), rendered with its sample data.
pub struct Sample {
    /// The journey's template id, variant and the name rendered.
    pub renderable: Renderable,
    pub locale: String,
    pub rendered: Rendered,
    /// The locale whose files rendered it, when the template falls back.
    pub fallback: Option<String>,
}

/// One template of the journeys as it is rendered: an A/B variant apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renderable {
    /// The journey's template id (and its sample data's name).
    pub template: String,
    pub variant: Option<String>,
    /// The registered name: `review_request`, `review_request.b`.
    pub name: String,
}

/// Every template the journeys send, each A/B variant apart.
pub fn renderable(config: &Config) -> Vec<Renderable> {
    config
        .journeys
        .iter()
        .flat_map(|rule| {
            let variants: Vec<Option<String>> = if rule.variants.is_empty() {
                vec![None]
            } else {
                rule.variants.keys().cloned().map(Some).collect()
            };
            variants.into_iter().map(|variant| Renderable {
                name: JourneyRule::variant_template(&rule.template, variant.as_deref()),
                template: rule.template.clone(),
                variant,
            })
        })
        .collect()
}

fn names(renderable: &[Renderable]) -> Vec<&str> {
    renderable.iter().map(|r| r.name.as_str()).collect()
}

/// How the configuration loads the template set.
pub fn load_options(config: &Config) -> LoadOptions {
    LoadOptions {
        default_locale: config.default_locale.clone(),
        fallbacks: config.locale_fallback.clone(),
        shop: serde_json::to_value(&config.shop).unwrap_or(Value::Null),
    }
}

/// Loads the template set and requires every template (and variant) of the
/// journeys in every locale.
pub fn load(config: &Config) -> Result<Templates, Problems> {
    let templates = Templates::load(&config.templates_dir, &load_options(config))?;
    templates.require(&names(&renderable(config)))?;
    Ok(templates)
}

fn problem(file: &Path, line: Option<usize>, column: Option<usize>, message: String) -> Problem {
    Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    }
}

/// Renders every template in every locale with its sample data; fails with
/// every problem found.
pub fn render_samples(config: &Config) -> Result<(Templates, Vec<Sample>), Problems> {
    let templates = load(config)?;
    let shop = serde_json::to_value(&config.shop).unwrap_or(Value::Null);
    let renderable = renderable(config);
    let journeys = Journeys::from_config(config);
    let mut problems = unescaped_customer_data(&templates, &names(&renderable));
    // Each template's sample, read once for all its variants.
    let mut read: BTreeMap<&str, Option<Value>> = BTreeMap::new();
    let mut samples = Vec::new();
    for r in &renderable {
        let (id, name) = (r.template.as_str(), r.name.as_str());
        let sample = read.entry(id).or_insert_with(|| {
            let path = config
                .templates_dir
                .join("samples")
                .join(format!("{id}.json"));
            read_sample(&path).map_err(|p| problems.push(p)).ok()
        });
        let Some(sample) = sample else {
            continue;
        };
        for locale in templates.locales().available() {
            let mut data = sample.clone();
            data["shop"] = shop.clone();
            if data["customer"].is_object() {
                data["customer"]["locale"] = Value::String(locale.clone());
            }
            // Tiers speak the customer's language, as when sent.
            for pointer in ["/tier", "/customer/tier"] {
                if let Some(tier) = data.pointer_mut(pointer)
                    && let Some(id) = tier["id"].as_str()
                    && let Some(words) = journeys.tier_by_id(id, locale)
                {
                    *tier = words;
                }
            }
            match templates.render(name, locale, &data) {
                Ok(rendered) => {
                    let chars = rendered.subject.chars().count();
                    if chars > config.check.max_subject_chars {
                        problems.push(problem(
                            &templates.file(locale, name, "subject"),
                            None,
                            None,
                            format!(
                                "subject is {chars} characters, more than check.max_subject_chars ({})",
                                config.check.max_subject_chars
                            ),
                        ));
                    }
                    samples.push(Sample {
                        renderable: r.clone(),
                        locale: locale.clone(),
                        rendered,
                        fallback: templates.fallback_for(locale, name).map(str::to_owned),
                    });
                }
                Err(Problems(found)) => problems.extend(found),
            }
        }
    }
    if problems.is_empty() {
        Ok((templates, samples))
    } else {
        Err(Problems(problems))
    }
}

pub fn check(config: &Config) -> Result<Checked, Problems> {
    let (templates, samples) = render_samples(config)?;
    Ok(Checked {
        locales: templates.locales().available().len(),
        templates: renderable(config).len(),
        renders: samples.len(),
    })
}

/// `{{{customer...}}}` puts what a customer typed into the HTML as it is.
fn unescaped_customer_data(templates: &Templates, ids: &[&str]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for locale in templates.locales().available() {
        for id in ids {
            for part in PARTS {
                let file = templates.file(locale, id, part);
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                for (n, line) in text.lines().enumerate() {
                    let mut rest = line;
                    let mut offset = 0;
                    while let Some(at) = rest.find("{{{") {
                        let inner = rest[at + 3..].trim_start_matches(['~', ' ', '&']);
                        if inner.starts_with("customer.") || inner.starts_with("customer ") {
                            problems.push(problem(
                                &file,
                                Some(n + 1),
                                Some(offset + at + 1),
                                "customer data in triple braces is not HTML-escaped: use {{...}}"
                                    .to_owned(),
                            ));
                        }
                        offset += at + 3;
                        rest = &rest[at + 3..];
                    }
                }
            }
        }
    }
    problems
}

fn read_sample(path: &Path) -> Result<Value, Problem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(path, None, None, format!("missing sample data: {e}")))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        problem(
            path,
            Some(e.line()),
            Some(e.column()),
            format!("not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(problem(
            path,
            None,
            None,
            "sample data must be a JSON object".to_owned(),
        ));
    }
    Ok(value)
}
