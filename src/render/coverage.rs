//! Which branches of the templates the samples reach.
//!
//! `check` renders every template with its samples; a branch none of them
//! renders (the `{{else}}` of a delay without a date, the body of an
//! `{{#each}}` over an empty list) is a branch nobody has seen, where a typo
//! waits for the first real customer. [`blocks`] lists every branch of a
//! template part and the partials it includes; rendering with
//! [`Recorder`] active notes each branch body as it is rendered.
//!
//! A branch is known by the address of its body in the loaded template set
//! (`Helper::template()` and `Helper::inverse()` during rendering are the
//! same `Template` values the listing walks), so the two agree without
//! matching positions. Recording needs its own `if`, `unless`, `each` and
//! `with`: handlebars' built-in ones are not reachable to wrap. Those below
//! follow handlebars 6's own line for line (MIT licence), are registered
//! only in the registries `check` loads (`LoadOptions::record_branches`),
//! never in the ones that send, and a test renders every email of the repo
//! both ways and compares the output.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, JsonTruthy,
    Output, PathAndJson, RenderContext, RenderError, RenderErrorReason, Renderable, to_json,
};
use serde_json::Value;

/// A branch body: its address in the loaded template set.
pub type BranchId = usize;

fn id(template: &Template) -> BranchId {
    template as *const Template as usize
}

/// One branch of a template file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub id: BranchId,
    pub file: PathBuf,
    /// The opening tag's line and column.
    pub line: usize,
    pub column: usize,
    /// `{{#if order.placed_at}}`, or `{{else}} of {{#if order.placed_at}}`.
    pub what: String,
}

/// Partials within partials deeper than this are a loop (the walk says so).
const MAX_DEPTH: usize = 16;

/// Every branch of `template` (read from `file`) and of the partials it
/// includes; `partial_file` gives a partial's file by its name.
pub fn blocks(
    registry: &Handlebars<'static>,
    template: &Template,
    file: &Path,
    partial_file: &dyn Fn(&str) -> Option<PathBuf>,
) -> Vec<Branch> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    list(
        registry,
        template,
        file,
        partial_file,
        (1, 1),
        0,
        &mut seen,
        &mut found,
    );
    found
}

#[allow(clippy::too_many_arguments)]
fn list(
    registry: &Handlebars<'static>,
    template: &Template,
    file: &Path,
    partial_file: &dyn Fn(&str) -> Option<PathBuf>,
    at: (usize, usize),
    depth: usize,
    seen: &mut HashSet<BranchId>,
    found: &mut Vec<Branch>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    for (i, element) in template.elements.iter().enumerate() {
        let pos = template.mapping.get(i).map_or(at, |m| (m.0, m.1));
        match element {
            TemplateElement::HelperBlock(h) => {
                let name = h.name.as_name().unwrap_or_default();
                let tag = format!("{{{{#{name}{}}}}}", params(&h.params));
                let branch = |body: &Template, what: String| Branch {
                    id: id(body),
                    file: file.to_owned(),
                    line: pos.0,
                    column: pos.1,
                    what,
                };
                let recorded = matches!(name, "if" | "unless" | "each" | "with");
                for (body, what) in [
                    (h.template.as_ref(), tag.clone()),
                    (h.inverse.as_ref(), format!("{{{{else}}}} of {tag}")),
                ] {
                    let Some(body) = body else { continue };
                    if recorded && seen.insert(id(body)) {
                        found.push(branch(body, what));
                    }
                    list(registry, body, file, partial_file, pos, depth, seen, found);
                }
            }
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                if let Some(body) = &d.template {
                    list(registry, body, file, partial_file, pos, depth, seen, found);
                }
                let Some(name) = d.name.as_name() else {
                    continue;
                };
                if let (Some(partial), Some(pfile)) =
                    (registry.get_template(name), partial_file(name))
                {
                    list(
                        registry,
                        partial,
                        &pfile,
                        partial_file,
                        (1, 1),
                        depth + 1,
                        seen,
                        found,
                    );
                }
            }
            _ => {}
        }
    }
}

/// ` order.placed_at`: a block's parameters as written, roughly.
fn params(params: &[Parameter]) -> String {
    params
        .iter()
        .map(|p| match p {
            Parameter::Name(n) => format!(" {n}"),
            Parameter::Path(p) => format!(" {}", super::walk::p_raw(p)),
            Parameter::Literal(v) => format!(" {v}"),
            _ => " (...)".to_owned(),
        })
        .collect()
}

thread_local! {
    static REACHED: RefCell<Option<HashSet<BranchId>>> = const { RefCell::new(None) };
}

/// Records the branches rendered on this thread while it lives.
pub struct Recorder(());

impl Recorder {
    pub fn start() -> Recorder {
        REACHED.with(|r| *r.borrow_mut() = Some(HashSet::new()));
        Recorder(())
    }

    /// The branches rendered since [`Recorder::start`].
    pub fn finish(self) -> HashSet<BranchId> {
        REACHED.with(|r| r.borrow_mut().take()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        REACHED.with(|r| r.borrow_mut().take());
    }
}

fn reached(body: Option<&Template>) {
    if let Some(body) = body {
        REACHED.with(|r| {
            if let Some(set) = r.borrow_mut().as_mut() {
                set.insert(id(body));
            }
        });
    }
}

/// Replaces `if`, `unless`, `each` and `with` with their recording twins.
pub fn register(hb: &mut Handlebars<'static>) {
    hb.register_helper("if", Box::new(If { positive: true }));
    hb.register_helper("unless", Box::new(If { positive: false }));
    hb.register_helper("each", Box::new(Each));
    hb.register_helper("with", Box::new(With));
}

struct If {
    positive: bool,
}

impl HelperDef for If {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = if self.positive { "if" } else { "unless" };
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?;
        let include_zero = h
            .hash_get("includeZero")
            .and_then(|v| v.value().as_bool())
            .unwrap_or(false);
        let value = param.value().is_truthy(include_zero) == self.positive;
        let body = if value { h.template() } else { h.inverse() };
        reached(body);
        match body {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }
}

fn create_block<'rc>(param: &PathAndJson<'rc>) -> BlockContext<'rc> {
    let mut block = BlockContext::new();
    if let Some(path) = param.context_path() {
        block.base_path_mut().clone_from(path);
    } else {
        block.set_base_value(param.value().clone());
    }
    block
}

struct With;

impl HelperDef for With {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let param = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("with", 0))?;
        if param.value().is_truthy(false) {
            let mut block = create_block(param);
            if let Some(parent) = rc.block() {
                block
                    .local_variables_mut()
                    .clone_from(parent.local_variables());
            }
            if let Some(block_param) = h.block_param() {
                let mut params = BlockParams::new();
                if param.context_path().is_some() {
                    params.add_path(block_param, Vec::new())?;
                } else {
                    params.add_value(block_param, param.value().clone())?;
                }
                block.set_block_params(params);
            }
            reached(h.template());
            rc.push_block(block);
            if let Some(t) = h.template() {
                t.render(r, ctx, rc, out)?;
            }
            rc.pop_block();
            Ok(())
        } else if let Some(t) = h.inverse() {
            reached(Some(t));
            t.render(r, ctx, rc, out)
        } else if r.strict_mode() {
            Err(RenderError::strict_error(param.relative_path()))
        } else {
            Ok(())
        }
    }
}

struct Each;

impl HelperDef for Each {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(t) = h.template() else {
            return Ok(());
        };
        // The entries to iterate, keyed as handlebars keys them: an array's
        // by index, an object's by key.
        let entries: Option<Vec<(Value, String, &Value)>> = match value.value() {
            Value::Array(list) if !list.is_empty() || h.inverse().is_none() => Some(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| (to_json(i), i.to_string(), v))
                    .collect(),
            ),
            Value::Object(obj) if !obj.is_empty() || h.inverse().is_none() => Some(
                obj.iter()
                    .map(|(k, v)| (to_json(k), k.clone(), v))
                    .collect(),
            ),
            _ => None,
        };
        let Some(entries) = entries else {
            return if let Some(inverse) = h.inverse() {
                reached(Some(inverse));
                inverse.render(r, ctx, rc, out)
            } else if r.strict_mode() {
                Err(RenderError::strict_error(value.relative_path()))
            } else {
                Ok(())
            };
        };
        let is_object = value.value().is_object();
        if !entries.is_empty() {
            reached(Some(t));
        }
        rc.push_block(create_block(value));
        let base_path = value.context_path();
        let len = entries.len();
        for (i, (key, relative, v)) in entries.into_iter().enumerate() {
            if let Some(block) = rc.block_mut() {
                let is_first = i == 0;
                block.set_local_var("first", to_json(is_first));
                block.set_local_var("last", to_json(i == len - 1));
                if is_object {
                    block.set_local_var("key", key.clone());
                    block.set_local_var("index", to_json(i));
                } else {
                    block.set_local_var("index", key.clone());
                }
                match base_path {
                    Some(p) if is_first => {
                        let mut path = p.clone();
                        path.push(relative);
                        *block.base_path_mut() = path;
                    }
                    Some(_) => {
                        if let Some(last) = block.base_path_mut().last_mut() {
                            *last = relative;
                        }
                    }
                    None => block.set_base_value(v.clone()),
                }
                let mut params = BlockParams::new();
                let mut any = false;
                if let Some(name) = h.block_param() {
                    any = true;
                    match base_path {
                        Some(_) => params.add_path(name, Vec::new())?,
                        None => params.add_value(name, v.clone())?,
                    }
                } else if let Some((name, key_name)) = h.block_param_pair() {
                    any = true;
                    match base_path {
                        Some(_) => params.add_path(name, Vec::new())?,
                        None => params.add_value(name, v.clone())?,
                    }
                    params.add_value(key_name, key)?;
                }
                if any {
                    block.set_block_params(params);
                }
            }
            t.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

/// The branches of `all` no id in `reached` names, once per file and place.
pub fn unreached<'a>(all: &'a [Branch], reached: &HashSet<BranchId>) -> Vec<&'a Branch> {
    let mut by_place: BTreeMap<(&Path, usize, usize, &str), bool> = BTreeMap::new();
    for b in all {
        let hit = reached.contains(&b.id);
        *by_place
            .entry((b.file.as_path(), b.line, b.column, b.what.as_str()))
            .or_default() |= hit;
    }
    let mut said = HashSet::new();
    all.iter()
        .filter(|b| {
            let place = (b.file.as_path(), b.line, b.column, b.what.as_str());
            !by_place[&place] && said.insert(place)
        })
        .collect()
}
