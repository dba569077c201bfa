//! Rendering: the template set, loaded once and checked as a whole.
//!
//! Each locale gets two handlebars registries in strict mode: one for HTML
//! (escaping on) and one for subjects and text parts (escaping off, since a
//! text part is not HTML). Shared partials from `templates/partials/` are
//! registered in every locale; a locale's own `partials/` folder wins.
//!
//! Errors are reported as `file:line:column: what`, naming the missing
//! variable or partial, so `aftercare check` points a marketer at the spot.
//!
//! [`schema`] says what data each template gets; [`Templates::walk`] checks
//! a template against it in every branch and partial, without rendering.

pub mod coverage;
mod flatten;
mod format;
mod helpers;
mod inline;
pub mod schema;
mod walk;

pub use format::{format_date, format_day, format_money, formatting_tag, region_of};
pub use inline::{InlineError, inline_template};
pub use walk::{HELPERS, accepts_null};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use handlebars::{
    Context, Handlebars, RenderError, RenderErrorReason, TemplateError, TemplateErrorReason,
};
use serde_json::Value;

use crate::journey::BASE_VARIANT;

/// The template to render for an A/B `variant` of `template`:
/// `review_request` for `a` (or none), whose files are the template's own;
/// `review_request.b` for `b`, whose files are
/// `review_request.b.{subject,html,txt}.hbs`.
pub fn variant_template(template: &str, variant: Option<&str>) -> String {
    match variant {
        None | Some(BASE_VARIANT) => template.to_owned(),
        Some(v) => format!("{template}.{v}"),
    }
}

/// The parts of every email template. The preheader is the line an inbox
/// shows after the subject; it is written as plain text, like the subject,
/// and put at the top of the HTML part, hidden (see `PREHEADER_BLOCK`).
pub const PARTS: [&str; 4] = ["subject", "preheader", "html", "txt"];

/// The parts a template must have; the text part, when missing, is derived
/// from the HTML.
const REQUIRED_PARTS: [&str; 3] = ["subject", "preheader", "html"];

/// The parts rendered as one line of plain text, whitespace folded.
const LINE_PARTS: [&str; 2] = ["subject", "preheader"];

/// The brand stylesheet, inlined into every HTML template at load time.
pub const STYLESHEET: &str = "style.css.hbs";

/// Width of a text part derived from HTML.
const TEXT_WIDTH: usize = 78;

/// What the configuration says about loading a template set.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Customers without a locale we have templates for get this one.
    pub default_locale: String,
    /// The locales expected, each with its folder (`None`: every folder).
    pub locales: Option<Vec<String>>,
    /// Where a locale's missing templates come from (`am = "en"`). Without
    /// one, a template missing in a locale is a problem.
    pub fallbacks: BTreeMap<String, String>,
    /// The brand settings the stylesheet is rendered with (`shop.*`).
    pub shop: Value,
    /// Note which branches rendering reaches ([`coverage`]): for `check`,
    /// never for sending.
    pub record_branches: bool,
}

impl LoadOptions {
    pub fn new(default_locale: &str) -> LoadOptions {
        LoadOptions {
            default_locale: default_locale.to_owned(),
            locales: None,
            fallbacks: BTreeMap::new(),
            shop: Value::Null,
            record_branches: false,
        }
    }
}

/// Folders of the template directory that are not locales.
const NOT_LOCALES: [&str; 2] = ["partials", "samples"];

/// One thing wrong with the template set, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

fn problem(file: impl Into<PathBuf>, message: impl Into<String>) -> Problem {
    Problem {
        file: file.into(),
        line: None,
        column: None,
        message: message.into(),
    }
}

/// A template set that could not be loaded or rendered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line: newlines and runs of spaces folded.
    pub subject: String,
    /// The inbox preview text, one line like the subject (empty when the
    /// template has none); already at the top of `html`, hidden.
    pub preheader: String,
    pub html: String,
    pub text: String,
}

/// The locales templates exist for, and how a customer's locale maps to one.
#[derive(Debug, Clone)]
pub struct Locales {
    available: Vec<String>,
    default: String,
}

impl Locales {
    pub fn new(mut available: Vec<String>, default: &str) -> Locales {
        available.sort();
        Locales {
            available,
            default: default.to_owned(),
        }
    }

    pub fn available(&self) -> &[String] {
        &self.available
    }

    /// `hy-AM` -> `hy` -> the default (README, "For marketers: templates").
    pub fn resolve(&self, wanted: Option<&str>) -> &str {
        let Some(wanted) = wanted else {
            return &self.default;
        };
        let wanted = wanted.replace('_', "-").to_lowercase();
        let language = wanted.split('-').next().unwrap_or_default();
        self.available
            .iter()
            .find(|l| l.to_lowercase() == wanted)
            .or_else(|| self.available.iter().find(|l| l.to_lowercase() == language))
            .map_or(&self.default, |l| l)
    }
}

struct LocaleSet {
    /// HTML with the stylesheet inlined.
    html: Handlebars<'static>,
    /// HTML as written: rendered again only when the inlined one fails, so
    /// that the error's line and column point into the file as written.
    html_as_written: Handlebars<'static>,
    /// Subjects, preheaders and text parts, as written.
    text: Handlebars<'static>,
    /// What is sent: `html` and `text` with the partials written into the
    /// templates that call them (see the `flatten` module). An error is
    /// reported from the registries above, as written.
    flat_html: Handlebars<'static>,
    flat_text: Handlebars<'static>,
    /// Registered name (`welcome.html`, or a partial's name) to its file.
    files: HashMap<String, PathBuf>,
}

/// The loaded template set.
pub struct Templates {
    dir: PathBuf,
    locales: Locales,
    sets: BTreeMap<String, LocaleSet>,
    fallbacks: BTreeMap<String, String>,
    /// The hidden preheader `<div>` styled by the stylesheet, cut where
    /// the text goes: what comes before it, and after it (the padding and
    /// the closing tag).
    preheader: (String, String),
}

/// Where the preheader's text goes in [`PREHEADER_BLOCK`].
const PREHEADER_TEXT: &str = "{{preheader}}";

/// The preheader as every inbox expects it: the first text of the body,
/// never shown in the email itself. The hiding is written here, not in the
/// stylesheet, so that a shop's own stylesheet cannot make it visible; the
/// stylesheet adds the rest (`div.preheader`: the font).
const PREHEADER_BLOCK: &str = "<div class=\"preheader\" style=\"display:none;font-size:1px;line-height:1px;\
     max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all\">{{preheader}}</div>";

/// After the preheader: without it, an inbox fills the rest of the preview
/// with the first words of the body ("View in browser", the greeting).
/// Zero-width non-joiners and no-break spaces show as nothing.
const PREHEADER_PADDING: &str = "&zwnj;&nbsp;";

/// How many [`PREHEADER_PADDING`]s follow the text: enough for the longest
/// preview an inbox shows (about 200 characters) after a short preheader.
const PREHEADER_PADDING_COUNT: usize = 100;

/// The hidden block `block` (see [`PREHEADER_BLOCK`]) cut where the text
/// goes, the padding added after it: the same for every email of a set.
fn preheader_parts(block: &str) -> (String, String) {
    match block.split_once(PREHEADER_TEXT) {
        Some((before, after)) => (
            before.to_owned(),
            format!(
                "{}{after}",
                PREHEADER_PADDING.repeat(PREHEADER_PADDING_COUNT)
            ),
        ),
        // No place for the text (a stylesheet the inliner choked on):
        // the block alone.
        None => (block.to_owned(), String::new()),
    }
}

/// Where the first thing in `html`'s `<body>` goes: after the tag (or at
/// the start, for a template without one).
fn after_body_tag(html: &str) -> usize {
    let bytes = html.as_bytes();
    let mut from = 0;
    while let Some(i) = html[from..].find('<').map(|i| from + i) {
        from = i + 1;
        let tag = bytes.get(i + 1..i + 5);
        let next = bytes.get(i + 5);
        if tag.is_some_and(|t| t.eq_ignore_ascii_case(b"body"))
            && next.is_some_and(|c| *c == b'>' || c.is_ascii_whitespace())
        {
            return html[i..].find('>').map_or(0, |end| i + end + 1);
        }
    }
    0
}

/// `html` with the hidden block `(before, after)` holding `preheader`,
/// HTML-escaped, as the first thing in its `<body>`.
fn with_preheader(html: &str, (before, after): &(String, String), preheader: &str) -> String {
    let at = after_body_tag(html);
    let text = if after.is_empty() {
        String::new()
    } else {
        handlebars::html_escape(preheader)
    };
    let mut out = String::with_capacity(html.len() + before.len() + text.len() + after.len());
    out.push_str(&html[..at]);
    out.push_str(before);
    out.push_str(&text);
    out.push_str(after);
    out.push_str(&html[at..]);
    out
}

/// Folds newlines and runs of spaces into one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn registry(escape: bool, record_branches: bool) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    if !escape {
        hb.register_escape_fn(handlebars::no_escape);
    }
    helpers::register(&mut hb);
    if record_branches {
        coverage::register(&mut hb);
    }
    hb
}

/// `welcome.html.hbs` -> (`welcome`, `html`).
fn split_name(file: &Path) -> Option<(String, String)> {
    let name = file.file_name()?.to_str()?.strip_suffix(".hbs")?;
    let (stem, part) = name.rsplit_once('.')?;
    Some((stem.to_owned(), part.to_owned()))
}

fn hbs_files(dir: &Path) -> Result<Vec<PathBuf>, Problem> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(problem(dir, e.to_string())),
    };
    for entry in entries {
        let path = entry.map_err(|e| problem(dir, e.to_string()))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "hbs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn template_error(file: &Path, e: &TemplateError) -> Problem {
    let (line, column) = e.pos().map_or((None, None), |(l, c)| (Some(l), Some(c)));
    Problem {
        file: file.to_owned(),
        line,
        column,
        message: e.reason().to_string(),
    }
}

/// A syntax error of `source`; a block left open is reported at its
/// opening tag (`{{#if}}` is never closed), not where the parser gave up.
fn syntax_error(file: &Path, e: &TemplateError, source: &str) -> Problem {
    let unbalanced = matches!(
        e.reason(),
        TemplateErrorReason::InvalidSyntax(_)
            | TemplateErrorReason::MismatchingClosedHelper(..)
            | TemplateErrorReason::MismatchingClosedDecorator(..)
    );
    match walk::unclosed_block(source).filter(|_| unbalanced) {
        Some((line, column, message)) => Problem {
            file: file.to_owned(),
            line: Some(line),
            column: Some(column),
            message,
        },
        None => template_error(file, e),
    }
}

impl Templates {
    /// Loads every locale folder of `dir`. Fails with every syntax error
    /// found, not just the first.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Templates, Problems> {
        let default_locale = options.default_locale.as_str();
        let mut problems = Vec::new();
        let mut locale_names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if entry.path().is_dir() && !NOT_LOCALES.contains(&name.as_str()) {
                        locale_names.push(name);
                    }
                }
            }
            Err(e) => return Err(Problems(vec![problem(dir, e.to_string())])),
        }
        if let Some(expected) = &options.locales {
            // The configuration says which locales there are: a folder
            // gone is a locale whose customers would silently get another.
            for locale in expected {
                if !locale_names.contains(locale) {
                    problems.push(problem(
                        dir.join(locale),
                        format!("locale `{locale}` is in `locales` but has no template folder"),
                    ));
                }
            }
            locale_names.retain(|name| {
                let wanted = expected.contains(name);
                if !wanted {
                    tracing::warn!(folder = %dir.join(name).display(), "A template folder not in `locales` is not used.");
                }
                wanted
            });
        }
        if !locale_names.iter().any(|l| l == default_locale) {
            problems.push(problem(
                dir.join(default_locale),
                format!("no templates for the default locale `{default_locale}`"),
            ));
        }
        for (from, to) in &options.fallbacks {
            for locale in [from, to] {
                if !locale_names.contains(locale) {
                    problems.push(problem(
                        dir.join(locale),
                        format!(
                            "locale_fallback.{from} = \"{to}\": no templates for locale `{locale}`"
                        ),
                    ));
                }
            }
        }
        let css = match stylesheet(dir, &options.shop) {
            Ok(css) => css,
            Err(p) => {
                problems.push(p);
                String::new()
            }
        };
        let preheader = inline_template(PREHEADER_BLOCK, &css).unwrap_or_else(|e| {
            problems.push(problem(
                dir.join(STYLESHEET),
                format!("inlining the stylesheet into the preheader: {e}"),
            ));
            PREHEADER_BLOCK.to_owned()
        });
        let shared = match hbs_files(&dir.join("partials")) {
            Ok(files) => files,
            Err(p) => {
                problems.push(p);
                Vec::new()
            }
        };
        let mut sets = BTreeMap::new();
        for locale in &locale_names {
            let mut set = LocaleSet {
                html: registry(true, false),
                // The walk and the branch listing read these two.
                html_as_written: registry(true, options.record_branches),
                text: registry(false, options.record_branches),
                flat_html: registry(true, false),
                flat_text: registry(false, false),
                files: HashMap::new(),
            };
            let own_partials = hbs_files(&dir.join(locale).join("partials"));
            let templates = hbs_files(&dir.join(locale));
            let (own_partials, templates) = match (own_partials, templates) {
                (Ok(p), Ok(t)) => (p, t),
                (Err(p), _) | (_, Err(p)) => {
                    problems.push(p);
                    continue;
                }
            };
            // Shared first, so that the locale's own partials replace them.
            for file in shared.iter().chain(&own_partials) {
                if let Err(p) = set.add(file, true, &css) {
                    problems.push(p);
                }
            }
            for file in &templates {
                if let Err(p) = set.add(file, false, &css) {
                    problems.push(p);
                }
            }
            set.flatten();
            sets.insert(locale.clone(), set);
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Templates {
            dir: dir.to_owned(),
            locales: Locales::new(locale_names, default_locale),
            sets,
            fallbacks: options.fallbacks.clone(),
            preheader: preheader_parts(&preheader),
        })
    }

    pub fn locales(&self) -> &Locales {
        &self.locales
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every template (and variant) with files in some locale:
    /// `welcome`, `review_request.b`.
    pub fn names(&self) -> BTreeSet<&str> {
        self.sets
            .values()
            .flat_map(|set| set.files.keys())
            .filter(|name| !name.starts_with("partial:"))
            .filter_map(|name| name.strip_suffix(".html"))
            .collect()
    }

    /// The file a template part would be read from.
    pub fn file(&self, locale: &str, template: &str, part: &str) -> PathBuf {
        self.dir.join(locale).join(format!("{template}.{part}.hbs"))
    }

    /// The locale whose files render `template` for `locale`: the locale
    /// itself, or where its fallbacks lead.
    fn source_locale<'a>(&'a self, locale: &'a str, template: &str) -> Option<&'a str> {
        let mut current = locale;
        for _ in 0..=self.fallbacks.len() {
            let set = self.sets.get(current)?;
            if set.files.contains_key(&format!("{template}.html")) {
                return Some(current);
            }
            current = self.fallbacks.get(current)?;
        }
        None
    }

    /// Whether `template` renders in `locale` from another locale's files.
    pub fn fallback_for<'a>(&'a self, locale: &'a str, template: &str) -> Option<&'a str> {
        self.source_locale(locale, template)
            .filter(|source| *source != locale)
    }

    /// Every template renders in every locale: its subject and HTML parts
    /// are there, in the locale or by its fallback.
    pub fn require(&self, templates: &[&str]) -> Result<(), Problems> {
        let mut problems = Vec::new();
        for locale in self.sets.keys() {
            for template in templates {
                let source = self.source_locale(locale, template).unwrap_or(locale);
                let set = &self.sets[source];
                for part in REQUIRED_PARTS {
                    if !set.files.contains_key(&format!("{template}.{part}")) {
                        let hint = match self.fallbacks.get(locale.as_str()) {
                            Some(to) => format!(" (nor in its fallback `{to}`)"),
                            None => {
                                format!(" (to send another locale's, set locale_fallback.{locale})")
                            }
                        };
                        problems.push(problem(
                            self.file(locale, template, part),
                            format!(
                                "missing: template `{template}` has no {part} part in locale `{locale}`{hint}"
                            ),
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// Walks every part of `name` (a template or variant) as `locale` renders
    /// it, against the data `schema` says it gets (see the `walk` module).
    /// `id` is the template id the messages name.
    pub fn walk(
        &self,
        locale: &str,
        name: &str,
        id: &str,
        schema: &schema::TemplateSchema,
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.each_part_as_written(locale, name, |file, registry, template, partial_file| {
            let mut walk = walk::Walk {
                schema,
                template: id,
                registry,
                partial_file,
                problems: Vec::new(),
            };
            walk.run(template, file);
            for p in walk.problems {
                if !problems.contains(&p) {
                    problems.push(p);
                }
            }
        });
        problems
    }

    /// Calls `f` with each part of `name` as `locale` renders it, as
    /// written (positions point into the files): its file, its registry,
    /// its syntax tree, and a partial's file by the partial's name.
    fn each_part_as_written(
        &self,
        locale: &str,
        name: &str,
        mut f: impl FnMut(
            &Path,
            &'_ Handlebars<'static>,
            &'_ handlebars::Template,
            &dyn Fn(&str) -> Option<PathBuf>,
        ),
    ) {
        let source = self.source_locale(locale, name).unwrap_or(locale);
        let Some(set) = self.sets.get(source) else {
            return;
        };
        for part in PARTS {
            let key = format!("{name}.{part}");
            if !set.files.contains_key(&key) {
                continue;
            }
            let (registry, ext) = match part {
                "html" => (&set.html_as_written, "html"),
                _ => (&set.text, "txt"),
            };
            let Some(template) = registry.get_template(&key) else {
                continue;
            };
            let partial_file =
                |partial: &str| set.files.get(&format!("partial:{partial}.{ext}")).cloned();
            f(
                &self.file(source, name, part),
                registry,
                template,
                &partial_file,
            );
        }
    }

    /// Every branch of every part of `name` as `locale` renders it, and of
    /// the partials they include (see the `coverage` module).
    pub fn branches(&self, locale: &str, name: &str) -> Vec<coverage::Branch> {
        let mut branches = Vec::new();
        self.each_part_as_written(locale, name, |file, registry, template, partial_file| {
            branches.extend(coverage::blocks(registry, template, file, partial_file));
        });
        branches
    }

    /// The branches rendering `name` in `locale` with `data` goes through,
    /// on a set loaded with [`LoadOptions::record_branches`] (empty
    /// otherwise). Errors are [`Templates::render`]'s to report.
    pub fn reach(&self, name: &str, locale: &str, data: &Value) -> HashSet<coverage::BranchId> {
        let source = self.source_locale(locale, name).unwrap_or(locale);
        let Some(set) = self.sets.get(source) else {
            return HashSet::new();
        };
        let recorder = coverage::Recorder::start();
        for part in PARTS {
            let registry = match part {
                "html" => &set.html_as_written,
                _ => &set.text,
            };
            let _ = registry.render(&format!("{name}.{part}"), data);
        }
        recorder.finish()
    }

    /// Renders one email. `locale` must be one of [`Locales::available`];
    /// a template it lacks comes from its fallback locale.
    pub fn render(&self, template: &str, locale: &str, data: &Value) -> Result<Rendered, Problems> {
        self.render_context(template, locale, &Context::from(data.clone()))
    }

    /// [`Templates::render`] on data already wrapped for handlebars: the
    /// four parts render from it without a copy each.
    pub fn render_context(
        &self,
        template: &str,
        locale: &str,
        data: &Context,
    ) -> Result<Rendered, Problems> {
        let source = self.source_locale(locale, template).unwrap_or(locale);
        let set = self.sets.get(source).ok_or_else(|| {
            Problems(vec![problem(
                self.dir.join(locale),
                format!("no locale `{locale}`"),
            )])
        })?;
        let part = |hb: &Handlebars<'_>, part: &str| {
            hb.render_with_context(&format!("{template}.{part}"), data)
                .map_err(|e| set.render_problem(&self.file(source, template, part), &e))
        };
        // What is sent renders from the flattened registries; a failure is
        // rendered again as written, for its position in the file.
        let text_part = |name: &str| {
            part(&set.flat_text, name).map_err(|flat| part(&set.text, name).err().unwrap_or(flat))
        };
        let subject = text_part("subject");
        let preheader = if set.files.contains_key(&format!("{template}.preheader")) {
            text_part("preheader").map(|p| one_line(&p))
        } else {
            // `require` (and so `check` and `run`) refuse a template without
            // one; a set loaded without it renders none.
            Ok(String::new())
        };
        let html = part(&set.flat_html, "html").map_err(|inlined| {
            // Same data, same failure: take its position in the file as
            // written.
            part(&set.html_as_written, "html").err().unwrap_or(inlined)
        });
        let text = if set.files.contains_key(&format!("{template}.txt")) {
            text_part("txt")
        } else {
            // No text part written: derive it from the HTML.
            match &html {
                Ok(html) => html2text::from_read(html.as_bytes(), TEXT_WIDTH).map_err(|e| {
                    problem(
                        self.file(source, template, "html"),
                        format!("deriving the text part: {e}"),
                    )
                }),
                Err(_) => Ok(String::new()),
            }
        };
        match (subject, preheader, html, text) {
            (Ok(subject), Ok(preheader), Ok(html), Ok(text)) => Ok(Rendered {
                subject: one_line(&subject),
                // After the text part is derived: the preheader is not in it.
                html: if preheader.is_empty() {
                    html
                } else {
                    with_preheader(&html, &self.preheader, &preheader)
                },
                preheader,
                text,
            }),
            (s, p, h, t) => Err(Problems(
                [s.err(), p.err(), h.err(), t.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
        }
    }

    /// [`Templates::render`] with handlebars' own partials, without
    /// [`flatten`]: what the flattened templates must render the same as.
    #[cfg(test)]
    fn render_nested(
        &self,
        template: &str,
        locale: &str,
        data: &Value,
    ) -> Option<(String, String, String, String)> {
        let source = self.source_locale(locale, template).unwrap_or(locale);
        let set = self.sets.get(source)?;
        let part = |hb: &Handlebars<'_>, part: &str| {
            let name = format!("{template}.{part}");
            if hb.get_template(&name).is_none() {
                return Some(String::new());
            }
            hb.render(&name, data).ok()
        };
        Some((
            part(&set.text, "subject")?,
            part(&set.text, "preheader")?,
            part(&set.html, "html")?,
            part(&set.text, "txt")?,
        ))
    }

    /// [`Templates::render`]'s parts before the preheader is put in the
    /// HTML and lines are folded, for comparing with [`Templates::render_nested`].
    #[cfg(test)]
    fn render_flat(
        &self,
        template: &str,
        locale: &str,
        data: &Value,
    ) -> Option<(String, String, String, String)> {
        let source = self.source_locale(locale, template).unwrap_or(locale);
        let set = self.sets.get(source)?;
        let ctx = Context::from(data.clone());
        let part = |hb: &Handlebars<'_>, part: &str| {
            let name = format!("{template}.{part}");
            if hb.get_template(&name).is_none() {
                return Some(String::new());
            }
            hb.render_with_context(&name, &ctx).ok()
        };
        Some((
            part(&set.flat_text, "subject")?,
            part(&set.flat_text, "preheader")?,
            part(&set.flat_html, "html")?,
            part(&set.flat_text, "txt")?,
        ))
    }
}

/// The brand stylesheet, rendered with the shop settings; empty when the
/// folder has none.
fn stylesheet(dir: &Path, shop: &Value) -> Result<String, Problem> {
    let file = dir.join(STYLESHEET);
    let source = match std::fs::read_to_string(&file) {
        Ok(source) => source,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(problem(&file, e.to_string())),
    };
    let mut hb = registry(false, false);
    hb.register_template_string(STYLESHEET, source)
        .map_err(|e| template_error(&file, &e))?;
    hb.render(STYLESHEET, &serde_json::json!({ "shop": shop }))
        .map_err(|e| {
            let mut p = problem(&file, e.reason().to_string());
            p.line = e.line_no;
            p.column = e.column_no;
            if let RenderErrorReason::MissingVariable(Some(var)) = e.reason() {
                p.message = format!("missing variable `{var}`");
            }
            p
        })
}

fn register(
    hb: &mut Handlebars<'static>,
    name: &str,
    partial: bool,
    source: String,
) -> Result<(), TemplateError> {
    if partial {
        hb.register_partial(name, source)
    } else {
        hb.register_template_string(name, source)
    }
}

impl LocaleSet {
    fn add(&mut self, file: &Path, partial: bool, css: &str) -> Result<(), Problem> {
        let Some((stem, part)) = split_name(file) else {
            return Err(problem(
                file,
                "not named <template>.<subject|preheader|html|txt>.hbs",
            ));
        };
        let mut source = std::fs::read_to_string(file).map_err(|e| problem(file, e.to_string()))?;
        let name = if partial {
            stem.clone()
        } else {
            format!("{stem}.{part}")
        };
        if part == "html" {
            // As written first: syntax errors point into the file.
            register(&mut self.html_as_written, &name, partial, source.clone())
                .map_err(|e| syntax_error(file, &e, &source))?;
            source = inline_template(&source, css)
                .map_err(|e| problem(file, format!("inlining the stylesheet: {e}")))?;
        }
        let hb = match part.as_str() {
            "html" => &mut self.html,
            "txt" => &mut self.text,
            line if LINE_PARTS.contains(&line) && !partial => &mut self.text,
            _ => {
                return Err(problem(
                    file,
                    format!("unknown part `{part}`: use subject, preheader, html or txt"),
                ));
            }
        };
        let written = if part == "html" {
            None
        } else {
            Some(source.clone())
        };
        register(hb, &name, partial, source).map_err(|e| match &written {
            Some(source) => syntax_error(file, &e, source),
            None => template_error(file, &e),
        })?;
        self.files.insert(
            if partial {
                format!("partial:{name}.{part}")
            } else {
                name
            },
            file.to_owned(),
        );
        Ok(())
    }

    /// Fills `flat_html` and `flat_text`: the registries as loaded, each
    /// template with the partials it calls written in place.
    fn flatten(&mut self) {
        for (from, to) in [
            (&self.html, &mut self.flat_html),
            (&self.text, &mut self.flat_text),
        ] {
            for (name, template) in from.get_templates() {
                let partial = !self.files.contains_key(name);
                let flat = if partial {
                    None
                } else {
                    flatten::flatten(from, template)
                };
                to.register_template(name, flat.unwrap_or_else(|| template.clone()));
            }
        }
    }

    /// Maps a handlebars error to the file it happened in.
    fn render_problem(&self, file: &Path, e: &RenderError) -> Problem {
        let file = e
            .template_name
            .as_ref()
            .and_then(|name| {
                self.files.get(name).or_else(|| {
                    let ext = file.to_str()?.rsplit('.').nth(1)?;
                    self.files.get(&format!("partial:{name}.{ext}"))
                })
            })
            .cloned()
            .unwrap_or_else(|| file.to_owned());
        let message = match e.reason() {
            RenderErrorReason::MissingVariable(Some(var)) => format!("missing variable `{var}`"),
            RenderErrorReason::MissingVariable(None) => "missing variable".to_owned(),
            RenderErrorReason::PartialNotFound(name) => format!("missing partial `{name}`"),
            RenderErrorReason::HelperNotFound(name) => format!("unknown helper `{name}`"),
            other => other.to_string(),
        };
        Problem {
            file,
            line: e.line_no,
            column: e.column_no,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
