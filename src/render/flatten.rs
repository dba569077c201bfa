//! Partials written into the templates that call them, once, at load.
//!
//! handlebars renders `{{> partial}}` on a copy of the whole context (its
//! `merge_json`), with the hash parameters added, and an `{{#each}}` inside
//! such a copy copies each item again: the template data (order, customer,
//! shop) was copied about five times per part of every email. A template's
//! partials are the same for every email, so [`flatten`] puts each partial's
//! syntax tree in place of its call, before the first render:
//!
//! - `{{> @partial-block}}` becomes the block the call wrapped;
//! - a hash parameter given as a literal (`item_label="Item"`) becomes that
//!   literal wherever the partial uses it (as text, escaped as the registry
//!   escapes, or as a helper's parameter);
//! - one given as a path (`href=shop.url`) becomes that path, where the
//!   partial uses it in the context of the call.
//!
//! The output is the same as handlebars' own rendering of the call (the
//! tests render every template both ways). A call whose rendering could
//! differ stays a call, rendered by handlebars as before: an indented
//! partial, a context or block parameter passed (`{{> p order}}`), `../`
//! or `this.` inside the partial, a hash parameter that is a subexpression
//! written as a value, a partial block used other than once at the top of
//! its partial, inline partials, a partial that includes itself. Inside a
//! partial being written in place, any of these keeps the outermost call.

use std::collections::HashMap;

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement, TemplateMapping};
use handlebars::{Handlebars, JsonRender, Path, PathSeg};

use super::walk::HELPERS;

/// The partial block's name in a partial.
const PARTIAL_BLOCK: &str = "@partial-block";

/// A call that stays a call.
#[derive(Debug)]
struct Kept;

/// Elements with their positions (for error messages; a template's
/// `mapping` runs beside its elements).
type Elements = Vec<(TemplateElement, Option<TemplateMapping>)>;

/// `template` with the partials it calls written in place, or `None` when
/// it calls none that can be (or defines inline partials, which would
/// change which partial a call names).
pub fn flatten(registry: &Handlebars<'_>, template: &Template) -> Option<Template> {
    let mut top = Scope::default();
    let elements = top.template(registry, template).ok()?;
    if top.written == 0 {
        return None;
    }
    let mut flat = template.clone();
    set_elements(&mut flat, elements);
    Some(flat)
}

fn set_elements(template: &mut Template, elements: Elements) {
    let (elements, mapping): (Vec<_>, Vec<_>) = elements.into_iter().unzip();
    template.elements = elements;
    // Positions as far as every element has one (`mapping.get(i)`).
    template.mapping = mapping.into_iter().map_while(|m| m).collect();
}

/// Where the walk is: the template itself, or a partial being written in
/// place.
#[derive(Default)]
struct Scope {
    /// The partials being written in place, outermost first; empty in the
    /// template itself.
    partials: Vec<String>,
    /// The partial's hash parameters, in its caller's terms.
    hash: HashMap<String, Parameter>,
    /// Blocks entered since the partial's start that may change the
    /// context (all but `#if` and `#unless`).
    depth: usize,
    /// Inside a block of any kind since the partial's start.
    in_block: bool,
    /// What `{{> @partial-block}}` stands for, in the caller's terms.
    partial_block: Option<Elements>,
    /// How many times the partial used it.
    partial_block_uses: usize,
    /// Calls written in place (in the template itself).
    written: usize,
}

impl Scope {
    fn in_partial(&self) -> bool {
        !self.partials.is_empty()
    }

    fn template(&mut self, hb: &Handlebars<'_>, template: &Template) -> Result<Elements, Kept> {
        let mut out = Vec::with_capacity(template.elements.len());
        for (i, element) in template.elements.iter().enumerate() {
            self.element(hb, element, template.mapping.get(i).cloned(), &mut out)?;
        }
        Ok(out)
    }

    /// `template`'s elements replaced in place.
    fn template_in_place(
        &mut self,
        hb: &Handlebars<'_>,
        template: &mut Template,
    ) -> Result<(), Kept> {
        let elements = self.template(hb, template)?;
        set_elements(template, elements);
        Ok(())
    }

    fn element(
        &mut self,
        hb: &Handlebars<'_>,
        element: &TemplateElement,
        mapping: Option<TemplateMapping>,
        out: &mut Elements,
    ) -> Result<(), Kept> {
        use TemplateElement::*;
        match element {
            RawString(_) | Comment(_) => out.push((element.clone(), mapping)),
            Expression(ht) | HtmlExpression(ht) => {
                let escaped = matches!(element, Expression(_));
                let mut ht = ht.clone();
                match self.value_of(&ht)? {
                    Some(Parameter::Literal(value)) => {
                        let text = value.render();
                        let text = if escaped {
                            (hb.get_escape_fn())(&text)
                        } else {
                            text
                        };
                        out.push((RawString(text), mapping));
                        return Ok(());
                    }
                    Some(path @ Parameter::Path(_)) => ht.name = path,
                    // A subexpression as the name would be called twice.
                    Some(_) => return Err(Kept),
                    None => self.helper(&mut ht)?,
                }
                out.push((
                    if escaped {
                        Expression(ht)
                    } else {
                        HtmlExpression(ht)
                    },
                    mapping,
                ));
            }
            HelperBlock(ht) => {
                let mut ht = ht.clone();
                // A block named by a path (`{{#order}}`) or an unknown helper.
                if self.in_partial() && !name_of(&ht.name).is_some_and(|n| HELPERS.contains(&n)) {
                    return Err(Kept);
                }
                self.helper(&mut ht)?;
                let same_context = matches!(name_of(&ht.name), Some("if" | "unless"));
                let (depth, in_block) = (self.depth, self.in_block);
                self.in_block = true;
                if !same_context {
                    self.depth += 1;
                }
                let mut inner = || {
                    if let Some(t) = ht.template.as_mut() {
                        self.template_in_place(hb, t)?;
                    }
                    if let Some(t) = ht.inverse.as_mut() {
                        self.template_in_place(hb, t)?;
                    }
                    Ok(())
                };
                let done = inner();
                (self.depth, self.in_block) = (depth, in_block);
                done?;
                out.push((HelperBlock(ht), mapping));
            }
            PartialExpression(dt) | PartialBlock(dt) => {
                let block = if matches!(element, PartialBlock(_)) {
                    dt.template.as_ref()
                } else {
                    None
                };
                match self.partial(hb, dt, block) {
                    Ok(elements) => {
                        if !self.in_partial() {
                            self.written += 1;
                        }
                        out.extend(elements);
                    }
                    // In the template itself, the call stays a call.
                    Err(Kept) if !self.in_partial() => out.push((element.clone(), mapping)),
                    Err(kept) => return Err(kept),
                }
            }
            // Inline partials (`{{#*inline}}`) and other decorators.
            _ => return Err(Kept),
        }
        Ok(())
    }

    /// The partial `dt` names, written in place; `block` is what a
    /// `{{#> partial}}` call wraps.
    fn partial(
        &mut self,
        hb: &Handlebars<'_>,
        dt: &handlebars::template::DecoratorTemplate,
        block: Option<&Template>,
    ) -> Result<Elements, Kept> {
        let name = name_of(&dt.name).ok_or(Kept)?;
        if !dt.params.is_empty() || dt.indent.as_deref().is_some_and(|i| !i.is_empty()) {
            return Err(Kept);
        }
        if name == PARTIAL_BLOCK {
            // handlebars renders the block once, before the partial, in
            // the context of the call: the same only where the partial
            // uses it once, outside any block.
            if block.is_some() || !dt.hash.is_empty() || self.in_block || self.depth > 0 {
                return Err(Kept);
            }
            let content = self.partial_block.as_ref().ok_or(Kept)?;
            self.partial_block_uses += 1;
            return Ok(content.clone());
        }
        if self.partials.iter().any(|p| p == name) {
            return Err(Kept);
        }
        let partial = hb.get_template(name).ok_or(Kept)?;
        let mut hash = HashMap::new();
        for (key, value) in &dt.hash {
            if HELPERS.contains(&key.as_str()) {
                return Err(Kept);
            }
            let mut value = value.clone();
            self.param(&mut value)?;
            hash.insert(key.clone(), value);
        }
        let partial_block = match block {
            // The block sees the hash parameters too.
            Some(_) if !hash.is_empty() => return Err(Kept),
            Some(block) => Some(self.template(hb, block)?),
            None => None,
        };
        let mut inner = Scope {
            partials: self
                .partials
                .iter()
                .cloned()
                .chain([name.to_owned()])
                .collect(),
            hash,
            partial_block,
            ..Scope::default()
        };
        let elements = inner.template(hb, partial)?;
        if block.is_some() && inner.partial_block_uses != 1 {
            return Err(Kept);
        }
        Ok(elements)
    }

    /// A helper call's parameters in the caller's terms.
    fn helper(&mut self, ht: &mut HelperTemplate) -> Result<(), Kept> {
        if name_of(&ht.name).is_some_and(|n| self.hash.contains_key(n)) {
            return Err(Kept);
        }
        if ht.block_param.is_some() && !self.hash.is_empty() {
            return Err(Kept);
        }
        for p in &mut ht.params {
            self.param(p)?;
        }
        for p in ht.hash.values_mut() {
            self.param(p)?;
        }
        Ok(())
    }

    fn param(&mut self, p: &mut Parameter) -> Result<(), Kept> {
        match p {
            Parameter::Path(path) => {
                if let Some(value) = self.path(path)? {
                    *p = value;
                }
                Ok(())
            }
            Parameter::Subexpression(sub) => match sub.element.as_mut() {
                TemplateElement::Expression(ht) => self.helper(ht),
                _ => Err(Kept),
            },
            _ => Ok(()),
        }
    }

    /// What a `{{name}}` expression stands for when `name` is a hash
    /// parameter of the partial.
    fn value_of(&mut self, ht: &HelperTemplate) -> Result<Option<Parameter>, Kept> {
        let name_only = !ht.block && ht.params.is_empty() && ht.hash.is_empty();
        if !name_only {
            return Ok(None);
        }
        match &ht.name {
            // A helper called without parameters, whatever the hash says.
            name if name_of(name).is_some_and(|n| HELPERS.contains(&n)) => Ok(None),
            Parameter::Path(path) => self.path(path),
            Parameter::Name(name) => self.hashed(name, false),
            _ => Ok(None),
        }
    }

    /// What `path` stands for in the caller's terms, when not itself.
    fn path(&self, path: &Path) -> Result<Option<Parameter>, Kept> {
        if !self.in_partial() {
            return Ok(None);
        }
        let (segments, raw) = match path {
            // `@index` and friends: the partial sees its caller's.
            Path::Local((0, _, _)) => return Ok(None),
            Path::Local(_) => return Err(Kept),
            Path::Relative((segments, raw)) => (segments, raw),
        };
        if raw.starts_with("@root") {
            return Ok(None);
        }
        // `../` counts the block handlebars pushes for the partial.
        if raw.contains("..") {
            return Err(Kept);
        }
        if self.hash.is_empty() {
            return Ok(None);
        }
        let Some(PathSeg::Named(first)) = segments.first() else {
            // `this`, `.`: inside `#each` or `#with`, that block's own
            // context; at the partial's top, its context, which holds the
            // hash parameters too.
            return if self.depth > 0 { Ok(None) } else { Err(Kept) };
        };
        if segments.iter().any(|s| !matches!(s, PathSeg::Named(_))) {
            return Err(Kept);
        }
        self.hashed(first, segments.len() > 1)
    }

    /// What the hash parameter `name` stands for (`None`: `name` is not
    /// one); `more` when the path goes on into it (`label.x`).
    fn hashed(&self, name: &str, more: bool) -> Result<Option<Parameter>, Kept> {
        match self.hash.get(name) {
            None => Ok(None),
            Some(_) if more => Err(Kept),
            Some(literal @ Parameter::Literal(_)) => Ok(Some(literal.clone())),
            // A path given is read in the context of the call.
            Some(_) if self.depth > 0 => Err(Kept),
            // A path named like a helper would call it.
            Some(Parameter::Path(p)) if HELPERS.contains(&raw(p)) => Err(Kept),
            Some(value) => Ok(Some(value.clone())),
        }
    }
}

/// A helper's or partial's name as written.
fn name_of(p: &Parameter) -> Option<&str> {
    match p {
        Parameter::Name(n) => Some(n),
        Parameter::Path(p) => Some(raw(p)),
        _ => None,
    }
}

fn raw(p: &Path) -> &str {
    match p {
        Path::Relative((_, raw)) | Path::Local((_, _, raw)) => raw,
    }
}
