//! `aftercare check`: the whole template set against its sample data.
//!
//! Every template of the journeys, in every locale, rendered with each of
//! its samples, `templates/samples/<locale>/<template>.json` (the
//! customer's locale set to the locale under test, `shop` from the config).
//! Every branch of every template must be rendered by some sample: one
//! none reaches is reported with its opening tag (`render::coverage`). Every problem is reported, not just the
//! first, each as `file:line:column: what`. Before rendering, every
//! template is walked against the schema of its data (`render::schema`):
//! every branch and partial, for a path the data does not have, one that
//! may be `null` used outside a guard, and event data in triple braces,
//! which would reach the HTML unescaped. Besides what rendering finds (a
//! missing variable, partial or helper), `check` refuses a subject longer
//! than `check.max_subject_chars`, and a preheader that is empty or longer
//! than `check.max_preheader_chars`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use std::collections::{BTreeMap, HashSet};

use crate::config::Config;
use crate::journey::{HOLDOUT_VARIANT, Rulebook};
use crate::mapping::{Mapper, MappingSet, presets, samples};
use crate::render::schema::TemplateSchema;
use crate::render::{
    LoadOptions, Problem, Problems, Rendered, Templates, coverage, variant_template,
};

/// What a passing check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub locales: usize,
    pub templates: usize,
    pub renders: usize,
    /// Mapping rules (the config's and the preset's) and their samples run.
    pub mappings: usize,
    pub mapping_samples: usize,
}

/// A template's samples in one locale: name and data, in the file's order.
pub type NamedSamples = Vec<(String, Value)>;

/// One template in one locale (and variant), rendered with its sample data.
pub struct Sample {
    /// The journey's template id, variant and the name rendered.
    pub renderable: Renderable,
    pub locale: String,
    /// The sample's name in its file.
    pub sample: String,
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
                // The holdout sends nothing: no files to render.
                rule.variants
                    .keys()
                    .filter(|v| *v != HOLDOUT_VARIANT)
                    .cloned()
                    .map(Some)
                    .collect()
            };
            variants.into_iter().map(|variant| Renderable {
                name: variant_template(&rule.template, variant.as_deref()),
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
        locales: Some(config.locales.clone()),
        fallbacks: config.locale_fallback.clone(),
        shop: serde_json::to_value(&config.shop).unwrap_or(Value::Null),
        record_branches: false,
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

/// Renders every template in every locale with each of its samples (see
/// [`samples_of`]); fails with every problem found, a branch no sample
/// renders included.
pub fn render_samples(config: &Config) -> Result<(Templates, Vec<Sample>), Problems> {
    let mut options = load_options(config);
    options.record_branches = true;
    let templates = Templates::load(&config.templates_dir, &options)?;
    templates.require(&names(&renderable(config)))?;
    let shop = serde_json::to_value(&config.shop).unwrap_or(Value::Null);
    let renderable = renderable(config);
    let journeys = Rulebook::from_config(config.rulebook_config());
    let mut problems = walk_templates(config, &templates, &renderable);
    // What the walk found, a render with the sample finds again where the
    // sample reaches it: say it once, as the walk does.
    let walked: Vec<(PathBuf, Option<usize>, Option<usize>)> = problems
        .iter()
        .map(|p| (p.file.clone(), p.line, p.column))
        .collect();
    // Each template's samples in each locale, read once for all variants.
    let mut read: BTreeMap<(String, String), Option<NamedSamples>> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut branches = Vec::new();
    let mut reached = HashSet::new();
    for r in &renderable {
        let (id, name) = (r.template.as_str(), r.name.as_str());
        for locale in templates.locales().available() {
            branches.extend(templates.branches(locale, name));
            let named = read
                .entry((id.to_owned(), locale.clone()))
                .or_insert_with(|| {
                    samples_of(config, &templates, id, locale)
                        .map_err(|p| {
                            if !problems.contains(&p) {
                                problems.push(p)
                            }
                        })
                        .ok()
                });
            let Some(named) = named else {
                continue;
            };
            for (sample, data) in named.iter() {
                let data = sample_data(data, &shop, locale, &journeys);
                reached.extend(templates.reach(name, locale, &data));
                match templates.render(name, locale, &data) {
                    Ok(rendered) => {
                        let chars = rendered.subject.chars().count();
                        if chars > config.check.max_subject_chars {
                            problems.push(problem(
                                &templates.file(locale, name, "subject"),
                                None,
                                None,
                                format!(
                                    "subject is {chars} characters with sample \"{sample}\", more than check.max_subject_chars ({})",
                                    config.check.max_subject_chars
                                ),
                            ));
                        }
                        let chars = rendered.preheader.chars().count();
                        let max = config.check.max_preheader_chars;
                        if chars == 0 || chars > max {
                            problems.push(problem(
                                &templates.file(locale, name, "preheader"),
                                None,
                                None,
                                if chars == 0 {
                                    format!("preheader is empty with sample \"{sample}\": write the line an inbox shows after the subject")
                                } else {
                                    format!(
                                        "preheader is {chars} characters with sample \"{sample}\", more than check.max_preheader_chars ({max})"
                                    )
                                },
                            ));
                        }
                        samples.push(Sample {
                            renderable: r.clone(),
                            locale: locale.clone(),
                            sample: sample.clone(),
                            rendered,
                            fallback: templates.fallback_for(locale, name).map(str::to_owned),
                        });
                    }
                    Err(Problems(found)) => {
                        for mut p in found {
                            if !walked.contains(&(p.file.clone(), p.line, p.column))
                                && !problems.contains(&p)
                            {
                                p.message = format!("{} (sample \"{sample}\")", p.message);
                                problems.push(p);
                            }
                        }
                    }
                }
            }
        }
    }
    // Only a set that rendered is worth a coverage report.
    if problems.is_empty() {
        for b in coverage::unreached(&branches, &reached) {
            problems.push(problem(
                &b.file,
                Some(b.line),
                Some(b.column),
                format!(
                    "no sample renders this branch ({}): add a sample that does to templates/samples/",
                    b.what
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok((templates, samples))
    } else {
        Err(Problems(problems))
    }
}

/// A sample as it is rendered in `locale`: the shop from the config (a
/// sample may override single keys, a shop without a logo), the customer's
/// locale set to `locale`, tiers in that locale's words, as when sent.
pub fn sample_data(sample: &Value, shop: &Value, locale: &str, journeys: &Rulebook) -> Value {
    let mut data = sample.clone();
    let mut shop = shop.clone();
    if let (Some(shop), Some(own)) = (shop.as_object_mut(), sample["shop"].as_object()) {
        shop.extend(own.clone());
    }
    data["shop"] = shop;
    if data["customer"].is_object() {
        data["customer"]["locale"] = Value::String(locale.to_owned());
    }
    for pointer in ["/tier", "/customer/tier"] {
        if let Some(tier) = data.pointer_mut(pointer)
            && let Some(id) = tier["id"].as_str()
            && let Some(words) = journeys.tier_by_id(id, locale)
        {
            *tier = words;
        }
    }
    data
}

/// The samples of template `id` in `locale`, by name:
/// `templates/samples/<locale>/<id>.json`; for a locale without one, the
/// samples of the locale its templates fall back to
/// (`locale_fallback`), else `templates/samples/<id>.json`, shared by
/// every locale without its own.
pub fn samples_of(
    config: &Config,
    templates: &Templates,
    id: &str,
    locale: &str,
) -> Result<NamedSamples, Problem> {
    let dir = config.templates_dir.join("samples");
    let mut tried = Vec::new();
    let mut at = Some(locale.to_owned());
    while let Some(l) = at.take() {
        if tried.len() > config.locale_fallback.len() {
            break;
        }
        let path = dir.join(&l).join(format!("{id}.json"));
        if path.is_file() {
            return read_samples(&path);
        }
        tried.push(path);
        at = templates
            .fallback_for(&l, id)
            .map(str::to_owned)
            .or_else(|| config.locale_fallback.get(&l).cloned());
    }
    let shared = dir.join(format!("{id}.json"));
    if shared.is_file() {
        return read_samples(&shared);
    }
    Err(problem(
        &tried.into_iter().next().unwrap_or(shared),
        None,
        None,
        format!("missing sample data for `{id}` in `{locale}`"),
    ))
}

/// A sample file: an object of named samples, each an object of template
/// data. A file holding one sample's data itself (the former form, with
/// `customer` at the top) is that one sample.
fn read_samples(path: &Path) -> Result<NamedSamples, Problem> {
    // Read once, in the file's order: the first is the gallery's page of
    // the template.
    let map = read_sample(path)?;
    if map.contains_key("customer") {
        return Ok(vec![(
            "sample".to_owned(),
            Value::Object(map.into_iter().collect()),
        )]);
    }
    if map.is_empty() {
        return Err(problem(
            path,
            None,
            None,
            "no samples in the file".to_owned(),
        ));
    }
    map.into_iter()
        .map(|(name, data)| {
            if data.is_object() {
                Ok((name, data))
            } else {
                Err(problem(
                    path,
                    None,
                    None,
                    format!("sample \"{name}\" must be a JSON object of template data"),
                ))
            }
        })
        .collect()
}

pub fn check(config: &Config) -> Result<Checked, Problems> {
    let mappings = mapping_problems(config);
    let mapping_set = config.mapping_set().ok().flatten();
    let (templates, samples) = match render_samples(config) {
        Ok(rendered) if mappings.is_empty() => rendered,
        Ok(_) => return Err(Problems(mappings)),
        Err(Problems(mut problems)) => {
            problems.extend(mappings);
            return Err(Problems(problems));
        }
    };
    Ok(Checked {
        locales: templates.locales().available().len(),
        templates: renderable(config).len(),
        renders: samples.len(),
        mappings: mapping_set.as_ref().map_or(0, |s| s.rules.len()),
        mapping_samples: mapping_set
            .as_ref()
            .map_or(0, |s| s.rules.iter().map(|r| r.samples.len()).sum()),
    })
}

/// Every mapping (the config's `[[mapping]]` rules, the preset of
/// `source.format`) run on its samples: each failing one as
/// `file:line: mapping "name": sample N: what`. The config's rules run in
/// the whole set, with the config's `[mapping_vars]`; the preset's under
/// its own defaults, as shipped.
pub fn mapping_problems(config: &Config) -> Vec<Problem> {
    let Ok(Some(set)) = config.mapping_set() else {
        return Vec::new();
    };
    let own = config.mappings.len();
    let mut problems = Vec::new();
    let mut run = |set: &MappingSet, wanted: &dyn Fn(usize) -> bool, file: PathBuf, text: &str| {
        let lines = samples::lines(text);
        let mapper = match Mapper::start(set) {
            Ok(mapper) => mapper,
            // Validation compiled them: not reached.
            Err(errors) => {
                problems.extend(
                    errors
                        .iter()
                        .map(|e| problem(&file, None, None, e.to_string())),
                );
                return;
            }
        };
        for failure in samples::failures(set, &mapper, wanted) {
            let line = lines
                .get(failure.rule)
                .and_then(|(_, samples)| samples.get(failure.sample).copied());
            problems.push(problem(
                &file,
                line,
                None,
                format!(
                    "mapping \"{}\": {}",
                    set.rules[failure.rule].name, failure.message
                ),
            ));
        }
    };
    if own > 0 {
        // Rules set in the environment only have no file to point into.
        let (file, text) = match &config.file {
            Some(file) => (
                file.clone(),
                std::fs::read_to_string(file).unwrap_or_default(),
            ),
            None => (PathBuf::from("config"), String::new()),
        };
        run(&set, &|i| i < own, file, &text);
    }
    if let Some((name, text)) = presets::PRESETS
        .iter()
        .find(|(name, _)| *name == config.source.format)
        && let Some(preset) = presets::get(name)
    {
        let alone = MappingSet::new(&[], Some(&preset), &BTreeMap::new(), set.timeout);
        run(&alone, &|_| true, PathBuf::from(presets::path(name)), text);
    }
    problems
}

/// Every part of every template, in every locale, walked against the data
/// its journey rule gets (see `render::schema` and `render::walk`): every
/// branch, partial and `#each`, not only what the sample reaches.
fn walk_templates(
    config: &Config,
    templates: &Templates,
    renderable: &[Renderable],
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for r in renderable {
        let Some(rule) = config.journeys.iter().find(|j| j.template == r.template) else {
            continue;
        };
        let schema = TemplateSchema::of(rule);
        for locale in templates.locales().available() {
            for p in templates.walk(locale, &r.name, &r.template, &schema) {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        }
    }
    problems
}

/// A sample file's top-level object, keys in the file's order.
fn read_sample(path: &Path) -> Result<indexmap::IndexMap<String, Value>, Problem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| problem(path, None, None, format!("missing sample data: {e}")))?;
    serde_json::from_str(&text).map_err(|e| match e.classify() {
        // Valid JSON of another kind: an array, a string.
        serde_json::error::Category::Data => problem(
            path,
            None,
            None,
            "sample data must be a JSON object".to_owned(),
        ),
        _ => problem(
            path,
            Some(e.line()),
            Some(e.column()),
            format!("not valid JSON: {e}"),
        ),
    })
}
