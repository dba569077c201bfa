//! The template data, written once: every path an email's data has, in
//! which templates, whether it is always there, and who wrote it.
//!
//! This table is what `aftercare check` checks every template against
//! (an unknown path, an optional one used outside a guard, event data in
//! triple braces), what the property test generates random data from, and
//! what the tables of `templates/README.md` are generated from. A test
//! renders the data the pipeline really builds for every template and
//! holds it to this table, so the table cannot drift from the code.

use std::collections::BTreeMap;

use crate::journey::{EmailClass, JourneyRule, Trigger};

/// What a value is: for the docs and for generating data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    /// A list; its elements are the path with `[]` appended.
    List,
    /// Free text from an event: a name, a reason.
    Text,
    /// An id from an event.
    Id,
    Email,
    /// `en`, `hy`, `am`: the locale the email is rendered in.
    Locale,
    /// A region code (`US`, `GB`, `AM`, `419`).
    Region,
    /// An IANA time zone name.
    TimeZone,
    /// A whole number (a count, a quantity, days).
    Count,
    /// A decimal amount as a string (`"59.90"`): for `money`.
    Amount,
    /// An ISO 4217 code.
    Currency,
    /// An RFC 3339 moment: for `date`.
    Timestamp,
    /// A day (`2026-01-08`) or a moment: for `date`.
    Day,
    /// A link, possibly hostile when it comes from an event: through `url`.
    Url,
    /// A segment name (`vip`, `lapsed`...).
    Segment,
    /// `transactional` or `marketing`.
    Class,
    /// A template id.
    Template,
    /// A `#rgb` or `#rrggbb` colour.
    Color,
    /// A word from the configuration (a tier's name).
    Word,
}

/// Who wrote a value: what decides whether it may be written unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From an event: whatever the shop's customers and systems typed.
    /// Never in triple braces.
    Event,
    /// From the configuration (`[shop]`, `[[tier]]`): the shop's own.
    Config,
    /// Computed by aftercare: counts, segments, the locale, signed links.
    Aftercare,
}

/// Which templates get a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Every,
    /// Templates of journey rules on one of these triggers.
    On(&'static [Trigger]),
    /// Templates of rules that congratulate on an order count (`tiers` or
    /// `milestones`).
    Milestone,
}

/// Whether a path may be `null` (when its parent object is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Always,
    /// May be `null`: use it inside `{{#if}}` (see templates/README.md).
    Optional,
    /// Never `null` in templates on these triggers, optional elsewhere.
    AlwaysOn(&'static [Trigger]),
    /// Never `null` in emails of this class, `null` in the others.
    AlwaysIn(EmailClass),
}

/// One path of the template data.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// `order.items[].name`: `[]` is an element of the list before it.
    pub path: &'static str,
    pub kind: Kind,
    pub presence: Presence,
    pub origin: Origin,
    pub when: When,
    /// What it is, for templates/README.md.
    pub about: &'static str,
}

use Kind::*;
use Origin::{Aftercare, Config, Event};
use Presence::{Always, AlwaysIn, AlwaysOn, Optional};
use Trigger as T;

const SHIPMENTS: &[Trigger] = &[
    T::ShipmentDispatched,
    T::ShipmentDelayed,
    T::ShipmentDelivered,
];
const RETURNS: &[Trigger] = &[T::ReturnRequested, T::ReturnReceived];
const REFUNDS: &[Trigger] = &[T::RefundIssued];
const INACTIVITY: &[Trigger] = &[T::Inactivity];
/// Templates whose order is the one just placed (the win-backs carry the
/// last order, as placed).
const PLACED: &[Trigger] = &[T::OrderPlaced, T::Inactivity];

const fn f(
    path: &'static str,
    kind: Kind,
    presence: Presence,
    origin: Origin,
    when: When,
    about: &'static str,
) -> Field {
    Field {
        path,
        kind,
        presence,
        origin,
        when,
        about,
    }
}

const EVERY: When = When::Every;

/// The template data. A parent comes before its children.
pub const FIELDS: &[Field] = &[
    f("customer", Object, Always, Event, EVERY, "the customer"),
    f("customer.id", Id, Always, Event, EVERY, "the customer's id"),
    f(
        "customer.email",
        Email,
        Always,
        Event,
        EVERY,
        "their current address",
    ),
    f("customer.name", Text, Optional, Event, EVERY, "their name"),
    f(
        "customer.first_name",
        Text,
        Optional,
        Event,
        EVERY,
        "their given name: the event's `first_name`, else the first word of `name` (after the comma in `Family, Given`); for greetings and subjects",
    ),
    f(
        "customer.locale",
        Locale,
        Always,
        Aftercare,
        EVERY,
        "the locale the email is rendered in (`en`, `hy`, `am`)",
    ),
    f(
        "customer.region",
        Region,
        Optional,
        Event,
        EVERY,
        "the region of their locale tag (`US` of `en-US`), if it has one; `money` and `date` write as that region does",
    ),
    f(
        "customer.timezone",
        TimeZone,
        Always,
        Event,
        EVERY,
        "their IANA time zone, or the configured default; `date` uses it",
    ),
    f(
        "customer.segment",
        Segment,
        Always,
        Aftercare,
        EVERY,
        "their first segment by precedence (`vip`, `lapsed`, `new`, `frequent_small`, `rare_large`, `regular`)",
    ),
    f(
        "customer.segments",
        List,
        Always,
        Aftercare,
        EVERY,
        "all their segments",
    ),
    f(
        "customer.segments[]",
        Segment,
        Always,
        Aftercare,
        EVERY,
        "one segment",
    ),
    f(
        "customer.order_count",
        Count,
        Always,
        Aftercare,
        EVERY,
        "orders placed and not cancelled",
    ),
    f(
        "customer.currency",
        Currency,
        Optional,
        Event,
        EVERY,
        "the currency of their orders",
    ),
    f(
        "customer.lifetime_spend",
        Amount,
        Optional,
        Aftercare,
        EVERY,
        "what they spent in that currency",
    ),
    f(
        "customer.expected_next_order_at",
        Timestamp,
        Optional,
        Aftercare,
        EVERY,
        "last order + their usual gap between orders (2+ orders)",
    ),
    f(
        "customer.tier",
        Object,
        Optional,
        Config,
        EVERY,
        "the highest loyalty tier they reached",
    ),
    f(
        "customer.tier.id",
        Id,
        Always,
        Config,
        EVERY,
        "its id (`silver`, `gold`...)",
    ),
    f(
        "customer.tier.name",
        Word,
        Always,
        Config,
        EVERY,
        "its name in the email's locale",
    ),
    f(
        "customer.tier.benefits",
        Word,
        Optional,
        Config,
        EVERY,
        "its benefits in the email's locale",
    ),
    f(
        "shop",
        Object,
        Always,
        Config,
        EVERY,
        "brand settings from `[shop]` in the config",
    ),
    f("shop.name", Word, Always, Config, EVERY, "the shop's name"),
    f("shop.url", Url, Always, Config, EVERY, "its web site"),
    f(
        "shop.support_email",
        Email,
        Always,
        Config,
        EVERY,
        "where customers write to",
    ),
    f(
        "shop.address",
        Word,
        Always,
        Config,
        EVERY,
        "postal address, for the footer",
    ),
    f(
        "shop.logo_url",
        Url,
        Always,
        Config,
        EVERY,
        "the logo (empty: the name is shown)",
    ),
    f(
        "shop.review_url",
        Url,
        Always,
        Config,
        EVERY,
        "where reviews are written",
    ),
    f(
        "shop.returns_url",
        Url,
        Always,
        Config,
        EVERY,
        "the returns page",
    ),
    f(
        "shop.unsubscribe_url",
        Url,
        Always,
        Config,
        EVERY,
        "the unsubscribe endpoint (templates use `unsubscribe_url`)",
    ),
    f(
        "shop.colors",
        Object,
        Always,
        Config,
        EVERY,
        "brand colours, `[shop.colors]`",
    ),
    f(
        "shop.colors.primary",
        Color,
        Always,
        Config,
        EVERY,
        "headings, links, buttons",
    ),
    f(
        "shop.colors.on_primary",
        Color,
        Always,
        Config,
        EVERY,
        "text on a button",
    ),
    f(
        "shop.colors.text",
        Color,
        Always,
        Config,
        EVERY,
        "body text",
    ),
    f(
        "shop.colors.muted",
        Color,
        Always,
        Config,
        EVERY,
        "footer, small print",
    ),
    f(
        "shop.colors.background",
        Color,
        Always,
        Config,
        EVERY,
        "around the email",
    ),
    f(
        "shop.colors.surface",
        Color,
        Always,
        Config,
        EVERY,
        "behind the content",
    ),
    f(
        "shop.colors.border",
        Color,
        Always,
        Config,
        EVERY,
        "lines between sections",
    ),
    f(
        "shop.dark_colors",
        Object,
        Always,
        Config,
        EVERY,
        "the same in dark mode, `[shop.dark_colors]`",
    ),
    f(
        "shop.dark_colors.primary",
        Color,
        Always,
        Config,
        EVERY,
        "`primary` in dark mode",
    ),
    f(
        "shop.dark_colors.on_primary",
        Color,
        Always,
        Config,
        EVERY,
        "`on_primary` in dark mode",
    ),
    f(
        "shop.dark_colors.text",
        Color,
        Always,
        Config,
        EVERY,
        "`text` in dark mode",
    ),
    f(
        "shop.dark_colors.muted",
        Color,
        Always,
        Config,
        EVERY,
        "`muted` in dark mode",
    ),
    f(
        "shop.dark_colors.background",
        Color,
        Always,
        Config,
        EVERY,
        "`background` in dark mode",
    ),
    f(
        "shop.dark_colors.surface",
        Color,
        Always,
        Config,
        EVERY,
        "`surface` in dark mode",
    ),
    f(
        "shop.dark_colors.border",
        Color,
        Always,
        Config,
        EVERY,
        "`border` in dark mode",
    ),
    f(
        "email",
        Object,
        Always,
        Aftercare,
        EVERY,
        "the email itself",
    ),
    f(
        "email.template",
        Template,
        Always,
        Aftercare,
        EVERY,
        "the template id",
    ),
    f(
        "email.class",
        Class,
        Always,
        Aftercare,
        EVERY,
        "`transactional` or `marketing`",
    ),
    f(
        "unsubscribe_url",
        Url,
        AlwaysIn(EmailClass::Marketing),
        Aftercare,
        EVERY,
        "the customer's signed one-click unsubscribe link",
    ),
    f(
        "tier",
        Object,
        Optional,
        Config,
        EVERY,
        "the tier a `loyalty_milestone` congratulates on, else `null`",
    ),
    f("tier.id", Id, Always, Config, EVERY, "its id"),
    f(
        "tier.name",
        Word,
        Always,
        Config,
        EVERY,
        "its name in the email's locale",
    ),
    f(
        "tier.benefits",
        Word,
        Optional,
        Config,
        EVERY,
        "its benefits in the email's locale",
    ),
    f(
        "order",
        Object,
        Always,
        Event,
        EVERY,
        "the order (in `win_back*`, the customer's last order)",
    ),
    f("order.id", Id, Always, Event, EVERY, "its id"),
    f(
        "order.total",
        Amount,
        AlwaysOn(PLACED),
        Event,
        EVERY,
        "its total, for `money`",
    ),
    f(
        "order.currency",
        Currency,
        AlwaysOn(PLACED),
        Event,
        EVERY,
        "its currency",
    ),
    f(
        "order.placed_at",
        Timestamp,
        AlwaysOn(PLACED),
        Event,
        EVERY,
        "when it was placed",
    ),
    f(
        "order.items",
        List,
        Always,
        Event,
        EVERY,
        "its lines (empty when the order is not known)",
    ),
    f("order.items[]", Object, Always, Event, EVERY, "one line"),
    f("order.items[].sku", Id, Optional, Event, EVERY, "the SKU"),
    f(
        "order.items[].name",
        Text,
        Always,
        Event,
        EVERY,
        "the product's name (the SKU when it has none)",
    ),
    f(
        "order.items[].quantity",
        Count,
        Always,
        Event,
        EVERY,
        "how many",
    ),
    f(
        "order.items[].unit_price",
        Amount,
        Optional,
        Event,
        EVERY,
        "the price of one",
    ),
    f(
        "order.items[].line_total",
        Amount,
        Optional,
        Aftercare,
        EVERY,
        "quantity x price",
    ),
    f(
        "shipment",
        Object,
        Always,
        Event,
        When::On(SHIPMENTS),
        "the parcel",
    ),
    f(
        "shipment.id",
        Id,
        Always,
        Event,
        When::On(SHIPMENTS),
        "its id",
    ),
    f(
        "shipment.carrier",
        Text,
        Optional,
        Event,
        When::On(SHIPMENTS),
        "the carrier: on a delay or a delivery, as the parcel's dispatch gave it",
    ),
    f(
        "shipment.tracking_number",
        Text,
        Optional,
        Event,
        When::On(SHIPMENTS),
        "the tracking number",
    ),
    f(
        "shipment.tracking_url",
        Url,
        Optional,
        Event,
        When::On(SHIPMENTS),
        "the tracking link: through `url`",
    ),
    f(
        "shipment.estimated_delivery",
        Day,
        Optional,
        Event,
        When::On(SHIPMENTS),
        "the expected day, for `date` (`null` after a delay without a new date, and once delivered)",
    ),
    f(
        "return",
        Object,
        Always,
        Event,
        When::On(RETURNS),
        "the return",
    ),
    f("return.id", Id, Always, Event, When::On(RETURNS), "its id"),
    f(
        "return.reason",
        Text,
        Optional,
        Event,
        When::On(RETURNS),
        "the customer's reason",
    ),
    f(
        "return.items",
        List,
        Always,
        Event,
        When::On(RETURNS),
        "what comes back (empty in `return_received`)",
    ),
    f(
        "return.items[]",
        Object,
        Always,
        Event,
        When::On(RETURNS),
        "one line",
    ),
    f(
        "return.items[].sku",
        Id,
        Optional,
        Event,
        When::On(RETURNS),
        "the SKU",
    ),
    f(
        "return.items[].name",
        Text,
        Always,
        Event,
        When::On(RETURNS),
        "the product's name",
    ),
    f(
        "return.items[].quantity",
        Count,
        Always,
        Event,
        When::On(RETURNS),
        "how many",
    ),
    f(
        "refund",
        Object,
        Always,
        Event,
        When::On(REFUNDS),
        "the refund",
    ),
    f("refund.id", Id, Always, Event, When::On(REFUNDS), "its id"),
    f(
        "refund.amount",
        Amount,
        Always,
        Event,
        When::On(REFUNDS),
        "the amount, for `money`",
    ),
    f(
        "refund.currency",
        Currency,
        Always,
        Event,
        When::On(REFUNDS),
        "its currency",
    ),
    f(
        "milestone",
        Object,
        Always,
        Aftercare,
        When::Milestone,
        "the order count congratulated on",
    ),
    f(
        "milestone.order_count",
        Count,
        Always,
        Aftercare,
        When::Milestone,
        "3, 5, 10...",
    ),
    f(
        "days_since_last_order",
        Count,
        Optional,
        Aftercare,
        When::On(INACTIVITY),
        "whole days since `order.placed_at`",
    ),
];

/// Paths that are `null` together and only together: a guard on one holds
/// for all. An order's total, currency and time are all known, or none is
/// (news of an order not seen yet).
pub const TOGETHER: &[&[&str]] = &[&["order.total", "order.currency", "order.placed_at"]];

/// Lists that have elements only when these paths are not `null`: inside
/// `{{#each order.items}}` the order is known.
pub const ELEMENTS_IMPLY: &[(&str, &[&str])] = &[(
    "order.items",
    &["order.total", "order.currency", "order.placed_at"],
)];

impl Field {
    /// Whether a template of `rule` gets this path.
    pub fn applies(&self, rule: &JourneyRule) -> bool {
        match self.when {
            When::Every => true,
            When::On(triggers) => triggers.contains(&rule.on),
            When::Milestone => rule.tiers || !rule.milestones.is_empty(),
        }
    }

    /// Whether, in a template of `rule`, the path is never `null` when its
    /// parent is there.
    pub fn required(&self, rule: &JourneyRule) -> bool {
        match self.presence {
            Always => true,
            Optional => false,
            AlwaysOn(triggers) => triggers.contains(&rule.on),
            AlwaysIn(class) => class == rule.class,
        }
    }
}

/// The path a path is inside: `order.items[].name` -> `order.items[]` ->
/// `order.items` -> `order` -> none.
pub fn parent(path: &str) -> Option<&str> {
    if let Some(list) = path.strip_suffix("[]") {
        return Some(list);
    }
    path.rfind('.').map(|at| &path[..at])
}

/// The data of one template: its paths, each with whether it is required.
#[derive(Debug, Clone)]
pub struct TemplateSchema {
    fields: BTreeMap<&'static str, (&'static Field, bool)>,
}

impl TemplateSchema {
    /// The data every template of `rule` gets.
    pub fn of(rule: &JourneyRule) -> TemplateSchema {
        TemplateSchema {
            fields: FIELDS
                .iter()
                .filter(|f| f.applies(rule))
                .map(|f| (f.path, (f, f.required(rule))))
                .collect(),
        }
    }

    pub fn field(&self, path: &str) -> Option<&'static Field> {
        self.fields.get(path).map(|(f, _)| *f)
    }

    /// Whether `path` may be `null` (unknown paths are not).
    pub fn optional(&self, path: &str) -> bool {
        self.fields.get(path).is_some_and(|(_, required)| !required)
    }

    /// What a guard on `path` (`{{#if path}}`) shows is not `null`: the path
    /// and those `null` only together with it ([`TOGETHER`]).
    pub fn guarded_by(&self, path: &str) -> Vec<String> {
        let mut guarded = vec![path.to_owned()];
        for group in TOGETHER.iter().filter(|g| g.contains(&path)) {
            guarded.extend(group.iter().map(|p| (*p).to_owned()));
        }
        guarded
    }

    /// What an element of `list` shows is not `null` ([`ELEMENTS_IMPLY`]).
    pub fn implied_by_elements(&self, list: &str) -> Vec<String> {
        ELEMENTS_IMPLY
            .iter()
            .filter(|(l, _)| *l == list)
            .flat_map(|(_, paths)| paths.iter().map(|p| (*p).to_owned()))
            .collect()
    }

    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.keys().copied()
    }

    /// The paths directly inside `path` (`""`: the top level).
    pub fn children<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'static Field> + 'a {
        self.fields
            .values()
            .map(|(f, _)| *f)
            .filter(move |f| parent(f.path).unwrap_or("") == path)
    }

    /// The closest path to a misspelt one, when it is close enough to be
    /// what was meant.
    pub fn nearest(&self, wanted: &str) -> Option<&'static str> {
        let (best, distance) = self
            .paths()
            .map(|p| (p, strsim::damerau_levenshtein(wanted, p)))
            .min_by_key(|(p, d)| (*d, p.len()))?;
        // A typo or two; more than that is another name, not a slip.
        let allowed = (wanted.rsplit('.').next().unwrap_or(wanted).chars().count() / 3).clamp(1, 3);
        (distance <= allowed).then_some(best)
    }
}

/// The trigger's name as the config writes it.
pub fn trigger_name(trigger: Trigger) -> String {
    serde_json::to_value(trigger)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn presence_text(presence: Presence) -> String {
    match presence {
        Always => "yes".to_owned(),
        Optional => "may be `null`".to_owned(),
        AlwaysOn(triggers) => format!(
            "on {}; elsewhere may be `null`",
            triggers
                .iter()
                .map(|t| format!("`{}`", trigger_name(*t)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AlwaysIn(class) => format!("in {} emails; `null` in the others", class.as_str()),
    }
}

fn origin_text(origin: Origin) -> &'static str {
    match origin {
        Event => "event",
        Config => "config",
        Aftercare => "aftercare",
    }
}

/// The key of a path in the docs: `order.items[].name` is written so.
fn key(field: &Field) -> String {
    format!("`{}`", field.path)
}

/// The two tables of templates/README.md ("What every template gets", "What
/// each trigger adds"), from [`FIELDS`]; the templates of `rules` (the
/// shipped journeys) are named for each trigger.
pub fn markdown(rules: &[JourneyRule]) -> String {
    let mut out = String::new();
    out.push_str("## What every template gets\n\n");
    out.push_str("| key | always there | from | what it is |\n|---|---|---|---|\n");
    for field in FIELDS.iter().filter(|f| f.when == When::Every) {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            key(field),
            presence_text(field.presence),
            origin_text(field.origin),
            field.about
        ));
    }
    out.push_str("\n## What each trigger adds\n\n");
    out.push_str("| key | in | always there | from | what it is |\n|---|---|---|---|---|\n");
    for field in FIELDS.iter().filter(|f| f.when != When::Every) {
        let templates: Vec<String> = rules
            .iter()
            .filter(|r| field.applies(r))
            .map(|r| format!("`{}`", r.template))
            .collect();
        let when = match field.when {
            When::On(triggers) => triggers
                .iter()
                .map(|t| format!("`{}`", trigger_name(*t)))
                .collect::<Vec<_>>()
                .join(", "),
            When::Milestone => "rules with `tiers` or `milestones`".to_owned(),
            When::Every => String::new(),
        };
        out.push_str(&format!(
            "| {} | {when} ({}) | {} | {} | {} |\n",
            key(field),
            templates.join(", "),
            presence_text(field.presence),
            origin_text(field.origin),
            field.about
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::{SignedDuration, Timestamp};
    use serde_json::Value;

    use super::*;
    use crate::config::Config;
    use crate::journey::Rulebook;
    use crate::pipeline::{Context, LeasePolicy, Pipeline};
    use crate::render::Locales;
    use crate::source::{DeadLetters, FileSource, Source};
    use crate::store::SqliteStore;
    use crate::unsubscribe::Signer;

    fn pointer(path: &str) -> String {
        format!("/{}", path.replace('.', "/"))
    }

    /// What of `value` (at `path`) the schema does not allow.
    fn against(schema: &TemplateSchema, path: &str, value: &Value, wrong: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    if schema.field(&child).is_none() {
                        wrong.push(format!("`{child}` is not in the schema"));
                        continue;
                    }
                    against(schema, &child, v, wrong);
                }
                for field in schema.children(path) {
                    let key = field.path.rsplit('.').next().unwrap_or_default();
                    match map.get(key) {
                        None => wrong.push(format!("`{}` is missing", field.path)),
                        Some(Value::Null) if !schema.optional(field.path) => {
                            wrong.push(format!("`{}` is required and null", field.path))
                        }
                        Some(_) => {}
                    }
                }
            }
            Value::Array(items) => {
                let element = format!("{path}[]");
                match schema.field(&element) {
                    None => wrong.push(format!("`{element}` is not in the schema")),
                    Some(_) => items.iter().for_each(|v| {
                        if v.is_null() && !schema.optional(&element) {
                            wrong.push(format!("`{element}` is required and null"));
                        }
                        against(schema, &element, v, wrong);
                    }),
                }
            }
            _ => {}
        }
        if path.is_empty() {
            for group in TOGETHER {
                let nulls = group
                    .iter()
                    .filter(|p| value.pointer(&pointer(p)).is_none_or(Value::is_null))
                    .count();
                if nulls != 0 && nulls != group.len() {
                    wrong.push(format!("{group:?} are not null together"));
                }
            }
            for (list, implied) in ELEMENTS_IMPLY {
                let has = value
                    .pointer(&pointer(list))
                    .and_then(Value::as_array)
                    .is_some_and(|l| !l.is_empty());
                for p in implied.iter() {
                    if has && value.pointer(&pointer(p)).is_none_or(Value::is_null) {
                        wrong.push(format!("`{list}` has elements and `{p}` is null"));
                    }
                }
            }
        }
    }

    /// The data the pipeline really builds for every email of the example
    /// log (every template is sent there, see tests/integration/cli.rs), with `shop` as
    /// the sender adds it.
    fn pipeline_data(config: &Config) -> Vec<(String, Value)> {
        let context = Context {
            locales: Locales::new(vec!["en".into(), "hy".into(), "am".into()], "en"),
            default_timezone: "UTC".into(),
            unsubscribe_url: config.shop.unsubscribe_url.clone(),
            signer: Signer::new(b"schema test secret"),
        };
        let mut pipeline = Pipeline::new(
            SqliteStore::in_memory().unwrap(),
            Rulebook::from_config(config.rulebook_config()),
            context,
            100,
            LeasePolicy {
                owner: "test".into(),
                duration: SignedDuration::from_mins(5),
            },
        )
        .unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl");
        let mut source = FileSource::open(path, Duration::ZERO, 1 << 20).unwrap();
        let mut approved = Vec::new();
        let mut dead = DeadLetters::discard();
        loop {
            let batch = source.next_batch(100).unwrap();
            pipeline
                .ingest("test", &batch.entries, None, &mut dead, &mut approved)
                .unwrap();
            if batch.finished {
                break;
            }
        }
        let end: Timestamp = "2027-06-01T00:00:00Z".parse().unwrap();
        pipeline.fire(end, &mut approved).unwrap();
        let shop = serde_json::to_value(&config.shop).unwrap();
        approved
            .into_iter()
            .map(|e| {
                let mut data = e.data;
                data["shop"] = shop.clone();
                (e.template, data)
            })
            .collect()
    }

    #[test]
    fn the_data_the_pipeline_builds_for_every_template_holds_to_the_schema() {
        let config = Config::embedded();
        let emails = pipeline_data(&config);
        for rule in &config.journeys {
            let of_rule: Vec<&Value> = emails
                .iter()
                .filter(|(t, _)| *t == rule.template)
                .map(|(_, d)| d)
                .collect();
            assert!(!of_rule.is_empty(), "no {} in the examples", rule.template);
            let schema = TemplateSchema::of(rule);
            for data in of_rule {
                let mut wrong = Vec::new();
                against(&schema, "", data, &mut wrong);
                assert!(wrong.is_empty(), "{}: {wrong:?}\n{data:#}", rule.template);
            }
        }
    }

    #[test]
    fn the_check_of_data_against_the_schema_can_fail() {
        let config = Config::embedded();
        let rule = config
            .journeys
            .iter()
            .find(|r| r.template == "shipping_delay");
        let schema = TemplateSchema::of(rule.unwrap());
        let (_, mut data) = pipeline_data(&config)
            .into_iter()
            .find(|(t, _)| t == "shipping_delay")
            .unwrap();
        data["shipment"]["carier"] = "DHL".into();
        data["shipment"]["id"] = Value::Null;
        data["order"]["currency"] = Value::Null;
        let mut wrong = Vec::new();
        against(&schema, "", &data, &mut wrong);
        wrong.sort();
        assert_eq!(
            wrong,
            [
                "[\"order.total\", \"order.currency\", \"order.placed_at\"] are not null together",
                "`order.items` has elements and `order.currency` is null",
                "`shipment.carier` is not in the schema",
                "`shipment.id` is required and null",
            ]
        );
    }

    const BEGIN: &str = "<!-- generated from src/render/schema.rs: begin -->\n";
    const END: &str = "<!-- generated from src/render/schema.rs: end -->";

    #[test]
    fn the_tables_of_templates_readme_are_the_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let start = readme.find(BEGIN).expect("begin marker") + BEGIN.len();
        let end = readme.find(END).expect("end marker");
        let expected = markdown(&Config::embedded().journeys);
        if std::env::var_os("UPDATE_TEMPLATES_README").is_some() {
            let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert!(
            readme[start..end] == expected,
            "templates/README.md differs from the schema (UPDATE_TEMPLATES_README=1 writes it); between the markers it should read:\n\n{expected}"
        );
    }

    #[test]
    fn a_misspelt_path_finds_the_one_meant_and_a_different_name_does_not() {
        let config = Config::embedded();
        let rule = config
            .journeys
            .iter()
            .find(|r| r.template == "shipping_delay");
        let schema = TemplateSchema::of(rule.unwrap());
        assert_eq!(schema.nearest("shipment.carier"), Some("shipment.carrier"));
        assert_eq!(schema.nearest("customer.nmae"), Some("customer.name"));
        assert_eq!(schema.nearest("shipment.weight"), None);
    }
}
