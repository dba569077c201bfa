//! `aftercare check` and `aftercare preview`: the whole template set against
//! its sample data.
//!
//! Every template of the journeys, in every locale, rendered with
//! `templates/samples/<template>.json` (the customer's locale set to the
//! locale under test, `shop` from the config, a signed-looking unsubscribe
//! link on marketing templates). Every problem is reported, not just the
//! first, each as `file:line:column: what`. Besides what rendering finds
//! (a missing variable, partial or helper), `check` refuses a subject
//! longer than `check.max_subject_chars` and customer data in triple
//! braces, which would reach the HTML unescaped.

use std::path::{Path, PathBuf};

use handlebars::html_escape;
use serde_json::Value;

use crate::config::Config;
use crate::render::{PARTS, Problem, Problems, Rendered, Templates};

/// What a passing check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub locales: usize,
    pub templates: usize,
    pub renders: usize,
}

/// One template in one locale, rendered with its sample data.
pub struct Sample {
    pub template: String,
    pub locale: String,
    pub rendered: Rendered,
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
    let templates = Templates::load(&config.templates_dir, &config.default_locale)?;
    let ids: Vec<&str> = config
        .journeys
        .iter()
        .map(|r| r.template.as_str())
        .collect();
    templates.require(&ids)?;
    let shop = serde_json::to_value(&config.shop).unwrap_or(Value::Null);
    let mut problems = unescaped_customer_data(&templates, &ids);
    let mut samples = Vec::new();
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
            match templates.render(id, locale, &data) {
                Ok(rendered) => {
                    let chars = rendered.subject.chars().count();
                    if chars > config.check.max_subject_chars {
                        problems.push(problem(
                            &templates.file(locale, id, "subject"),
                            None,
                            None,
                            format!(
                                "subject is {chars} characters, more than check.max_subject_chars ({})",
                                config.check.max_subject_chars
                            ),
                        ));
                    }
                    samples.push(Sample {
                        template: (*id).to_owned(),
                        locale: locale.clone(),
                        rendered,
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
        templates: config.journeys.len(),
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

/// `aftercare preview`: a static gallery of every template in every locale.
///
/// `DIR/index.html` links a page per template and locale, which shows the
/// subject, the HTML part in an iframe (`DIR/<locale>/<template>.html`, the
/// email as sent) and the text part.
pub fn preview(config: &Config, out: &Path) -> Result<PathBuf, PreviewError> {
    let (templates, samples) = render_samples(config).map_err(PreviewError::Templates)?;
    let write = |path: &Path, text: &str| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)
    };
    let locales = templates.locales().available().to_vec();
    for s in &samples {
        let dir = out.join(&s.locale);
        write(&dir.join(format!("{}.html", s.template)), &s.rendered.html)?;
        let page = format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{template} ({locale})</title>\
             <style>body{{font-family:sans-serif;margin:1.5em}}iframe{{width:100%;height:70vh;\
             border:1px solid #ccc}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:1em}}\
             </style></head><body><p><a href=\"../index.html\">All templates</a></p>\
             <h1>{template} <small>({locale})</small></h1>\
             <p><strong>Subject:</strong> <span class=\"subject\">{subject}</span></p>\
             <h2>HTML</h2><iframe src=\"{template}.html\" title=\"HTML part\"></iframe>\
             <h2>Text</h2><pre class=\"text\">{text}</pre></body></html>",
            template = html_escape(&s.template),
            locale = html_escape(&s.locale),
            subject = html_escape(&s.rendered.subject),
            text = html_escape(&s.rendered.text),
        );
        write(&dir.join(format!("{}.page.html", s.template)), &page)?;
    }
    let mut rows = String::new();
    for rule in &config.journeys {
        rows.push_str(&format!("<tr><th>{}</th>", html_escape(&rule.template)));
        for locale in &locales {
            let subject = samples
                .iter()
                .find(|s| s.template == rule.template && &s.locale == locale)
                .map_or(String::new(), |s| html_escape(&s.rendered.subject));
            rows.push_str(&format!(
                "<td><a href=\"{locale}/{template}.page.html\">{subject}</a></td>",
                locale = html_escape(locale),
                template = html_escape(&rule.template),
            ));
        }
        rows.push_str("</tr>");
    }
    let header: String = locales
        .iter()
        .map(|l| format!("<th>{}</th>", html_escape(l)))
        .collect();
    let index = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Email previews</title>\
         <style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:.4em .8em;\
         text-align:left;border-bottom:1px solid #ddd}}</style></head><body>\
         <h1>Email previews</h1><p>{n} templates in {l} locales, rendered with the sample \
         data in <code>templates/samples/</code>.</p>\
         <table><tr><th>template</th>{header}</tr>{rows}</table></body></html>",
        n = config.journeys.len(),
        l = locales.len(),
    );
    let index_path = out.join("index.html");
    write(&index_path, &index)?;
    Ok(index_path)
}

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{0}")]
    Templates(Problems),
    #[error("writing the preview: {0}")]
    Write(#[from] std::io::Error),
}
