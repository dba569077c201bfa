//! What `check` finds in a template without rendering it.
//!
//! Rendering with a sample only tries the branches the sample reaches. This
//! walks the whole syntax tree instead: both sides of every `#if`,
//! `#unless` and `#with`, every `#each` body, the partials a template
//! includes (with their hash parameters bound, the locale's own partial
//! first, as rendering picks them), helpers' parameters and
//! subexpressions. Each path is resolved against the template's
//! [`TemplateSchema`] and reported when:
//!
//! - the schema does not have it (with the nearest path when it looks like
//!   a typo);
//! - it may be `null` and is used outside a guard: `{{#if path}}`, the
//!   `{{else}}` of `{{#unless path}}`, `{{#with path}}`, or as a parameter
//!   that accepts `null` (see [`accepts_null`]);
//! - it comes from an event and is written unescaped, in triple braces or
//!   with `{{& }}`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use handlebars::Handlebars;
use handlebars::template::{
    BlockParam, DecoratorTemplate, HelperTemplate, Parameter, Template, TemplateElement,
};

use super::Problem;
use super::schema::{Kind, Origin, TemplateSchema, parent};

/// Helpers a template may call: handlebars' own and ours.
pub const HELPERS: [&str; 21] = [
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", "money", "date", "plural", "url",
];

fn known_helper(name: &str) -> bool {
    HELPERS.contains(&name)
}

/// Whether parameter `index` of `helper` may be `null` without failing the
/// email. `money`, `date`, `plural`'s count and `url`'s link fail on
/// `null`; the comparisons (`eq`, `ne`, `gt`...), `and`, `or`, `not`,
/// `len`, and `plural`'s words and `url`'s named parameters take it.
pub fn accepts_null(helper: &str, index: usize) -> bool {
    match helper {
        "money" => false,
        "date" | "url" | "plural" => index > 0,
        _ => true,
    }
}

/// Helpers whose output is safe unescaped whatever their input: a link
/// `url` made safe, an amount, a date, a boolean or a count. Any other
/// helper's output is as unsafe as its parameters.
const SAFE_OUTPUT: [&str; 13] = [
    "url", "money", "date", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];

/// What an expression stands for.
#[derive(Debug, Clone)]
enum Val {
    /// A path of the schema.
    Path(String),
    /// A literal, or something aftercare writes (`@index`).
    Literal,
    /// A helper's output; `tainted` when it may carry event data.
    Output { tainted: bool },
    /// Not known (already reported, or not checkable).
    Unknown,
}

#[derive(Debug, Clone)]
struct Scope {
    /// The schema path the context is at (`""`: the top), `None` when it
    /// is not known.
    base: Option<String>,
    /// Names bound here: hash parameters of a partial, block parameters.
    locals: HashMap<String, Val>,
    /// Inside `#each`: `@index` and friends exist.
    in_each: bool,
}

/// A partial block's body, rendered where the partial says
/// `{{> @partial-block}}`, in the caller's state.
struct Block<'a> {
    template: &'a Template,
    file: PathBuf,
    state: State<'a>,
}

#[derive(Clone)]
struct State<'a> {
    scopes: Vec<Scope>,
    /// Paths known not to be `null` here.
    guards: HashSet<String>,
    blocks: Vec<Rc<Block<'a>>>,
}

/// Partials within partials deeper than this are a loop.
const MAX_DEPTH: usize = 16;

/// One template part walked with one template's schema.
pub struct Walk<'a> {
    pub schema: &'a TemplateSchema,
    /// The template id, for messages.
    pub template: &'a str,
    /// The registry the part and its partials are in.
    pub registry: &'a Handlebars<'static>,
    /// A partial's file by its name.
    pub partial_file: &'a dyn Fn(&str) -> Option<PathBuf>,
    pub problems: Vec<Problem>,
}

type Pos = (usize, usize);

impl<'a> Walk<'a> {
    /// Walks `template` (read from `file`) from the top of the data.
    pub fn run(&mut self, template: &'a Template, file: &Path) {
        let state = State {
            scopes: vec![Scope {
                base: Some(String::new()),
                locals: HashMap::new(),
                in_each: false,
            }],
            guards: HashSet::new(),
            blocks: Vec::new(),
        };
        self.template(template, file, &state, (1, 1), 0);
    }

    fn report(&mut self, file: &Path, (line, column): Pos, message: String) {
        let problem = Problem {
            file: file.to_owned(),
            line: Some(line),
            column: Some(column),
            message,
        };
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn template(
        &mut self,
        template: &'a Template,
        file: &Path,
        state: &State<'a>,
        at: Pos,
        depth: usize,
    ) {
        for (i, element) in template.elements.iter().enumerate() {
            let pos = template.mapping.get(i).map_or(at, |m| (m.0, m.1));
            match element {
                TemplateElement::Expression(h) => {
                    self.expression(h, true, file, state, pos);
                }
                TemplateElement::HtmlExpression(h) => {
                    self.expression(h, false, file, state, pos);
                }
                TemplateElement::HelperBlock(h) => self.block(h, file, state, pos, depth),
                TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                    self.partial(d, file, state, pos, depth)
                }
                // Text, comments, decorators (`{{*inline}}`).
                _ => {}
            }
        }
    }

    /// `{{x}}` (`escaped`) or `{{{x}}}`.
    fn expression(
        &mut self,
        h: &HelperTemplate,
        escaped: bool,
        file: &Path,
        state: &State<'_>,
        pos: Pos,
    ) {
        let value = self.call(h, file, state, pos, false);
        if !escaped && self.tainted(&value) {
            let what = match &value {
                Val::Path(p) => format!("`{p}`"),
                _ => "event data".to_owned(),
            };
            self.report(
                file,
                pos,
                format!(
                    "customer data in triple braces is not HTML-escaped: {what} comes from an event; write it in double braces"
                ),
            );
        }
    }

    /// The value of a name with its parameters: a helper's output or a
    /// path. `null_ok`: where the value goes takes `null`.
    fn call(
        &mut self,
        h: &HelperTemplate,
        file: &Path,
        state: &State<'_>,
        pos: Pos,
        null_ok: bool,
    ) -> Val {
        let name = match &h.name {
            Parameter::Name(n) => n.as_str(),
            Parameter::Path(p) => p_raw(p),
            Parameter::Subexpression(_) | Parameter::Literal(_) => return Val::Unknown,
            _ => return Val::Unknown,
        };
        let is_call = !h.params.is_empty() || !h.hash.is_empty() || known_helper(name);
        if is_call {
            return self.helper(name, &h.params, &h.hash, file, state, pos);
        }
        let value = self.resolve(name, file, state, pos);
        self.use_value(&value, null_ok, file, state, pos);
        value
    }

    fn helper(
        &mut self,
        name: &str,
        params: &[Parameter],
        hash: &HashMap<String, Parameter>,
        file: &Path,
        state: &State<'_>,
        pos: Pos,
    ) -> Val {
        if !known_helper(name) {
            self.report(file, pos, format!("unknown helper `{name}`"));
            return Val::Unknown;
        }
        let mut tainted = false;
        for (i, p) in params.iter().enumerate() {
            let v = self.param(p, accepts_null(name, i), file, state, pos);
            tainted |= self.tainted(&v);
            // `lookup` reads into what it is given: an event's object
            // gives event data.
            if let (Val::Path(path), "lookup", 0) = (&v, name, i) {
                tainted |= self
                    .schema
                    .field(path)
                    .is_some_and(|f| f.origin == Origin::Event);
            }
        }
        let mut keys: Vec<&String> = hash.keys().collect();
        keys.sort();
        for k in keys {
            let v = self.param(&hash[k], true, file, state, pos);
            tainted |= self.tainted(&v);
        }
        Val::Output {
            tainted: tainted && !SAFE_OUTPUT.contains(&name),
        }
    }

    fn param(
        &mut self,
        p: &Parameter,
        null_ok: bool,
        file: &Path,
        state: &State<'_>,
        pos: Pos,
    ) -> Val {
        match p {
            Parameter::Literal(_) => Val::Literal,
            Parameter::Name(n) => {
                let value = self.resolve(n, file, state, pos);
                self.use_value(&value, null_ok, file, state, pos);
                value
            }
            Parameter::Path(path) => {
                let value = self.resolve(p_raw(path), file, state, pos);
                self.use_value(&value, null_ok, file, state, pos);
                value
            }
            Parameter::Subexpression(sub) => match sub.as_element() {
                TemplateElement::Expression(h) => self.call(h, file, state, pos, null_ok),
                _ => Val::Unknown,
            },
            _ => Val::Unknown,
        }
    }

    fn tainted(&self, value: &Val) -> bool {
        match value {
            Val::Path(p) => self
                .schema
                .field(p)
                .is_some_and(|f| f.origin == Origin::Event && f.kind != Kind::Object),
            Val::Output { tainted } => *tainted,
            Val::Literal | Val::Unknown => false,
        }
    }

    /// Reports a path that may be `null` where it is used, or that is inside
    /// one that may be, unless a guard holds.
    fn use_value(&mut self, value: &Val, null_ok: bool, file: &Path, state: &State<'_>, pos: Pos) {
        let Val::Path(path) = value else {
            return;
        };
        let mut outermost = None;
        let mut current = Some(path.as_str());
        let mut first = true;
        while let Some(p) = current {
            let may_be_null = self.schema.optional(p) && !state.guards.contains(p);
            if may_be_null && !(first && null_ok) {
                outermost = Some(p.to_owned());
            }
            first = false;
            current = parent(p);
        }
        if let Some(p) = outermost {
            self.report(
                file,
                pos,
                format!(
                    "`{p}` may be null in `{}`: use it inside {{{{#if {p}}}}}",
                    self.template
                ),
            );
        }
    }

    /// A path as written (`../name`, `@root.order.id`, `this`) to a schema
    /// path, reporting one the schema does not have.
    fn resolve(&mut self, raw: &str, file: &Path, state: &State<'_>, pos: Pos) -> Val {
        let mut rest = raw;
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("../") {
            up += 1;
            rest = r;
        }
        let root = rest == "@root" || rest.starts_with("@root.") || rest.starts_with("@root/");
        if root {
            rest = rest["@root".len()..].trim_start_matches(['.', '/']);
        } else if rest.starts_with('@') {
            // @index, @first, @last, @key: written by #each.
            let in_each = state.scopes.iter().rev().skip(up).any(|s| s.in_each);
            if !in_each {
                self.report(
                    file,
                    pos,
                    format!("`{raw}` is only set inside {{{{#each}}}}"),
                );
            }
            return Val::Literal;
        }
        let mut segments: Vec<&str> = split_path(rest);
        if segments.first().is_some_and(|s| *s == "this" || *s == ".") {
            segments.remove(0);
        }
        let scope = if root {
            &state.scopes[0]
        } else {
            match state.scopes.len().checked_sub(up + 1) {
                Some(i) => &state.scopes[i],
                None => {
                    self.report(file, pos, format!("`{raw}` goes above the top of the data"));
                    return Val::Unknown;
                }
            }
        };
        let mut path = match (segments.first(), root) {
            (Some(first), false) if scope.locals.contains_key(*first) => {
                match &scope.locals[*first] {
                    Val::Path(p) => {
                        segments.remove(0);
                        p.clone()
                    }
                    other if segments.len() == 1 => return other.clone(),
                    _ => return Val::Unknown,
                }
            }
            _ => match &scope.base {
                Some(base) => base.clone(),
                None => return Val::Unknown,
            },
        };
        for segment in segments {
            let is_list = self
                .schema
                .field(&path)
                .is_some_and(|f| f.kind == Kind::List);
            if is_list && segment.bytes().all(|b| b.is_ascii_digit()) {
                path.push_str("[]");
            } else {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(segment);
            }
        }
        if path.is_empty() || self.schema.field(&path).is_some() {
            return Val::Path(path);
        }
        let base = scope.base.clone().unwrap_or_default();
        let hint = match self.schema.nearest(&path) {
            // Said as it was written: relative inside `#each`.
            Some(near) => {
                let near = match near.strip_prefix(&format!("{base}.")) {
                    Some(relative) if !base.is_empty() && !root => relative,
                    _ => near,
                };
                format!(": did you mean `{near}`?")
            }
            None => String::new(),
        };
        self.report(
            file,
            pos,
            format!("`{raw}` is not in the data of `{}`{hint}", self.template),
        );
        Val::Unknown
    }

    fn block(
        &mut self,
        h: &'a HelperTemplate,
        file: &Path,
        state: &State<'a>,
        pos: Pos,
        depth: usize,
    ) {
        let name = h.name.as_name().unwrap_or_default().to_owned();
        let schema = self.schema;
        match name.as_str() {
            "if" | "unless" | "each" | "with" if h.params.len() == 1 => {
                let value = self.param(&h.params[0], true, file, state, pos);
                let guarded = match &value {
                    Val::Path(p) => Some(p.clone()),
                    _ => None,
                };
                let guarded: Vec<String> = guarded.map_or(Vec::new(), |p| schema.guarded_by(&p));
                let mut inner = state.clone();
                let mut other = state.clone();
                match name.as_str() {
                    "if" => {
                        inner.guards.extend(guarded);
                    }
                    "unless" => {
                        other.guards.extend(guarded);
                    }
                    _ => {
                        inner.guards.extend(guarded);
                        if let (Val::Path(p), "each") = (&value, name.as_str()) {
                            inner.guards.extend(schema.implied_by_elements(p));
                        }
                        let is_list =
                            |p: &String| schema.field(p).is_some_and(|f| f.kind == Kind::List);
                        let base = match (&value, name.as_str()) {
                            (Val::Path(p), "each") if is_list(p) => Some(format!("{p}[]")),
                            (Val::Path(p), "with") => Some(p.clone()),
                            _ => None,
                        };
                        let mut locals = HashMap::new();
                        let element = base.clone().map_or(Val::Unknown, Val::Path);
                        match &h.block_param {
                            Some(BlockParam::Single(p)) => {
                                if let Some(n) = p.as_name() {
                                    locals.insert(n.to_owned(), element);
                                }
                            }
                            Some(BlockParam::Pair((a, b))) => {
                                if let Some(n) = a.as_name() {
                                    locals.insert(n.to_owned(), element);
                                }
                                if let Some(n) = b.as_name() {
                                    locals.insert(n.to_owned(), Val::Literal);
                                }
                            }
                            _ => {}
                        }
                        inner.scopes.push(Scope {
                            base,
                            locals,
                            in_each: name == "each",
                        });
                    }
                }
                if let Some(t) = &h.template {
                    self.template(t, file, &inner, pos, depth);
                }
                if let Some(t) = &h.inverse {
                    self.template(t, file, &other, pos, depth);
                }
            }
            _ => {
                // Another block helper (`{{#eq a b}}`), or one with the
                // wrong number of parameters: its parameters, and both
                // sides as they are.
                self.helper(&name, &h.params, &h.hash, file, state, pos);
                for t in [&h.template, &h.inverse].into_iter().flatten() {
                    self.template(t, file, state, pos, depth);
                }
            }
        }
    }

    fn partial(
        &mut self,
        d: &'a DecoratorTemplate,
        file: &Path,
        state: &State<'a>,
        pos: Pos,
        depth: usize,
    ) {
        let Some(name) = d.name.as_name() else {
            return;
        };
        if name == "@partial-block" {
            let mut outer = state.clone();
            if let Some(block) = outer.blocks.pop() {
                self.template(block.template, &block.file, &block.state, pos, depth + 1);
            }
            return;
        }
        let mut locals = HashMap::new();
        let mut keys: Vec<&String> = d.hash.keys().collect();
        keys.sort();
        for k in keys {
            let v = self.param(&d.hash[k], true, file, state, pos);
            locals.insert(k.clone(), v);
        }
        let base = match d.params.first() {
            Some(p) => match self.param(p, true, file, state, pos) {
                Val::Path(p) => Some(p),
                _ => None,
            },
            None => state.scopes.last().and_then(|s| s.base.clone()),
        };
        let partial = self.registry.get_template(name);
        let partial_file = (self.partial_file)(name);
        let (Some(partial), Some(partial_file)) = (partial, partial_file) else {
            self.report(file, pos, format!("missing partial `{name}`"));
            if let Some(body) = &d.template {
                self.template(body, file, state, pos, depth);
            }
            return;
        };
        if depth >= MAX_DEPTH {
            self.report(file, pos, format!("partial `{name}` includes itself"));
            return;
        }
        let mut inner = state.clone();
        inner.scopes.push(Scope {
            base,
            locals,
            in_each: state.scopes.last().is_some_and(|s| s.in_each),
        });
        if let Some(body) = &d.template {
            inner.blocks.push(Rc::new(Block {
                template: body,
                file: file.to_owned(),
                state: state.clone(),
            }));
        }
        self.template(partial, &partial_file, &inner, (1, 1), depth + 1);
    }
}

/// The opening tag of a block that is never closed, as line, column and
/// message: the parser only sees the end of the file (or another block's
/// `{{/name}}`) and lists the tokens it expected there.
pub fn unclosed_block(source: &str) -> Option<(usize, usize, String)> {
    // (as written, the name `{{/name}}` closes it with, line, column)
    let mut open: Vec<(String, String, usize, usize)> = Vec::new();
    let mut from = 0;
    while let Some(found) = source[from..].find("{{") {
        let at = from + found;
        let rest = &source[at + 2..];
        if at > 0 && source.as_bytes()[at - 1] == b'\\' {
            from = at + 2;
            continue;
        }
        let closing = if rest.starts_with("!--") {
            "--}}"
        } else {
            "}}"
        };
        let Some(end) = rest.find(closing) else {
            break;
        };
        from = at + 2 + end + closing.len();
        let tag = rest[..end].trim_start_matches('~').trim_start();
        let (line, column) = line_column(source, at);
        let ident = |s: &str| -> String {
            s.trim_start()
                .split(|c: char| c.is_whitespace() || c == '~' || c == '}')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        if let Some(block) = tag.strip_prefix('#') {
            let (shown, name) = match block.strip_prefix('>') {
                Some(partial) => (format!("#> {}", ident(partial)), ident(partial)),
                None => {
                    let name = ident(block.trim_start_matches('*'));
                    (format!("#{}", ident(block)), name)
                }
            };
            open.push((shown, name, line, column));
        } else if let Some(inverse) = tag.strip_prefix('^').filter(|n| !ident(n).is_empty()) {
            let name = ident(inverse);
            open.push((format!("^{name}"), name, line, column));
        } else if let Some(close) = tag.strip_prefix('/') {
            let name = ident(close);
            match open.pop() {
                Some((_, opened, _, _)) if opened == name => {}
                Some((shown, _, l, c)) => {
                    return Some((l, c, format!("`{{{{{shown}}}}}` is never closed")));
                }
                None => {
                    return Some((line, column, format!("`{{{{/{name}}}}}` closes no block")));
                }
            }
        }
    }
    open.pop()
        .map(|(shown, _, l, c)| (l, c, format!("`{{{{{shown}}}}}` is never closed")))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, at: usize) -> (usize, usize) {
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |n| n + 1);
    (line, before[start..].chars().count() + 1)
}

pub(super) fn p_raw(path: &handlebars::Path) -> &str {
    match path {
        handlebars::Path::Relative((_, raw)) => raw,
        handlebars::Path::Local((_, _, raw)) => raw,
    }
}

/// `order.items.[0].name` -> `order`, `items`, `0`, `name`.
fn split_path(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']').unwrap_or(inner.len());
            segments.push(&inner[..end]);
            rest = inner.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '/']).unwrap_or(rest.len());
            if end > 0 {
                segments.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
        rest = rest.strip_prefix(['.', '/']).unwrap_or(rest);
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::{split_path, unclosed_block};

    #[test]
    fn an_unclosed_block_is_reported_at_its_opening_tag() {
        let at = |s: &str| unclosed_block(s).map(|(l, c, m)| format!("{l}:{c}: {m}"));
        assert_eq!(
            at("a\n  {{#if x}}\n{{#each y}}{{/each}}\n").as_deref(),
            Some("2:3: `{{#if}}` is never closed")
        );
        assert_eq!(
            at("{{#each y}}\n {{#if x}}\n{{/each}}").as_deref(),
            Some("2:2: `{{#if}}` is never closed")
        );
        assert_eq!(
            at("{{#> layout}}\nx").as_deref(),
            Some("1:1: `{{#> layout}}` is never closed")
        );
        assert_eq!(
            at("x {{/if}}").as_deref(),
            Some("1:3: `{{/if}}` closes no block")
        );
        assert_eq!(
            at("{{!-- {{#if}} --}}\\{{#if}} {{#if a}}{{else}}{{/if}}"),
            None
        );
        assert_eq!(
            at("ա {{^x}}").as_deref(),
            Some("1:3: `{{^x}}` is never closed")
        );
    }

    use crate::config::Config;
    use crate::render::schema::TemplateSchema;
    use crate::render::{LoadOptions, Templates};

    /// What the walk reports for `html` as `template`'s HTML part in `en`,
    /// with `partials` (`name.html.hbs`, text) shared.
    fn walked(template: &str, html: &str, partials: &[(&str, &str)]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let en = dir.path().join("en");
        std::fs::create_dir_all(&en).unwrap();
        std::fs::create_dir_all(dir.path().join("partials")).unwrap();
        std::fs::write(en.join(format!("{template}.subject.hbs")), "s").unwrap();
        std::fs::write(en.join(format!("{template}.html.hbs")), html).unwrap();
        for (name, text) in partials {
            std::fs::write(dir.path().join("partials").join(name), text).unwrap();
        }
        let templates = Templates::load(dir.path(), &LoadOptions::new("en")).unwrap();
        let config = Config::embedded();
        let rule = config
            .journeys
            .iter()
            .find(|r| r.template == template)
            .unwrap();
        templates
            .walk("en", template, template, &TemplateSchema::of(rule))
            .into_iter()
            .map(|p| {
                let file = p.file.file_name().unwrap().to_string_lossy().into_owned();
                format!(
                    "{file}:{}:{}: {}",
                    p.line.unwrap(),
                    p.column.unwrap(),
                    p.message
                )
            })
            .collect()
    }

    #[test]
    fn guards_hold_in_their_branch_only() {
        let html = "{{#if customer.name}}{{customer.name}}{{else}}{{customer.name}}{{/if}}\n\
                    {{#unless shipment.carrier}}{{shipment.carrier}}{{else}}{{shipment.carrier}}{{/unless}}\n\
                    {{#with shipment.tracking_url}}{{url this}}{{/with}}{{url shipment.tracking_url}}";
        assert_eq!(
            walked("shipping_update", html, &[]),
            [
                "shipping_update.html.hbs:1:47: `customer.name` may be null in `shipping_update`: use it inside {{#if customer.name}}",
                "shipping_update.html.hbs:2:29: `shipment.carrier` may be null in `shipping_update`: use it inside {{#if shipment.carrier}}",
                "shipping_update.html.hbs:3:53: `shipment.tracking_url` may be null in `shipping_update`: use it inside {{#if shipment.tracking_url}}",
            ]
        );
    }

    #[test]
    fn each_scopes_resolve_this_parents_the_root_and_block_params() {
        let html = "{{#each order.items}}{{this.name}} {{@index}} {{../order.id}} \
                    {{@root.customer.id}} {{nmae}}{{/each}}\n\
                    {{#each order.items as |item i|}}{{item.quantity}} {{i}} {{item.price}}{{/each}}\n\
                    {{@index}}";
        assert_eq!(
            walked("order_confirmation", html, &[]),
            [
                "order_confirmation.html.hbs:1:85: `nmae` is not in the data of `order_confirmation`: did you mean `name`?",
                "order_confirmation.html.hbs:2:58: `item.price` is not in the data of `order_confirmation`",
                "order_confirmation.html.hbs:3:1: `@index` is only set inside {{#each}}",
            ]
        );
    }

    #[test]
    fn helpers_take_null_where_they_can_and_their_output_is_judged() {
        let html = "{{#if (eq customer.name \"x\")}}{{/if}}{{len customer.name}}\
                    {{money order.total order.currency}}{{date order.placed_at}}\n\
                    {{{money order.total order.currency}}}{{{lookup order \"id\"}}}{{nope 1}}";
        assert_eq!(
            walked("order_cancelled", html, &[]),
            [
                "order_cancelled.html.hbs:1:59: `order.total` may be null in `order_cancelled`: use it inside {{#if order.total}}",
                "order_cancelled.html.hbs:1:59: `order.currency` may be null in `order_cancelled`: use it inside {{#if order.currency}}",
                "order_cancelled.html.hbs:1:95: `order.placed_at` may be null in `order_cancelled`: use it inside {{#if order.placed_at}}",
                "order_cancelled.html.hbs:2:1: `order.total` may be null in `order_cancelled`: use it inside {{#if order.total}}",
                "order_cancelled.html.hbs:2:1: `order.currency` may be null in `order_cancelled`: use it inside {{#if order.currency}}",
                "order_cancelled.html.hbs:2:39: customer data in triple braces is not HTML-escaped: event data comes from an event; write it in double braces",
                "order_cancelled.html.hbs:2:62: unknown helper `nope`",
            ]
        );
    }

    #[test]
    fn partials_see_their_parameters_and_the_callers_guards() {
        let partials = [
            ("raw.html.hbs", "{{{text}}} {{{label}}} {{missing}}"),
            ("frame.html.hbs", "<div>{{> @partial-block}}</div>"),
        ];
        let html = "{{#if customer.name}}{{> raw text=customer.name label=\"ok\"}}{{/if}}\n\
                    {{#> frame}}{{shipment.id}}{{/frame}}{{> nothing}}";
        assert_eq!(
            walked("welcome", html, &partials),
            [
                "raw.html.hbs:1:1: customer data in triple braces is not HTML-escaped: `customer.name` comes from an event; write it in double braces",
                "raw.html.hbs:1:24: `missing` is not in the data of `welcome`",
                "welcome.html.hbs:2:13: `shipment.id` is not in the data of `welcome`",
                "welcome.html.hbs:2:38: missing partial `nothing`",
            ]
        );
    }

    #[test]
    fn paths_split_into_their_segments() {
        assert_eq!(
            split_path("order.items.[0].name"),
            ["order", "items", "0", "name"]
        );
        assert_eq!(split_path("a/b"), ["a", "b"]);
        assert_eq!(split_path("this"), ["this"]);
        assert_eq!(split_path(""), Vec::<&str>::new());
    }
}
