//! The event contract: decoding and validating what the shop sends.
//!
//! Decoding is two steps: serde reads a permissive wire shape (every field
//! optional, unknown fields ignored), then [`Event::decode`] checks it against
//! the contract (README, "What an event may carry"; `src/event.schema.json`) and builds a typed [`Event`]. The second step is
//! ours, so the error names the field a shop engineer has to fix.
//!
//! Everything the shop sends is bounded here, before any of it reaches a
//! journey, a store, a log line or an email ([`limits`]): ids and texts by
//! length and never with control characters, money and quantities by size
//! and sign, times by year. An event past a bound is refused with the field
//! and the bound, so arithmetic further in cannot overflow on it.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why an event was rejected. Always the "skip" class: the event goes to the
/// dead-letter place and the stream moves on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("field `{field}`: {reason}")]
    BadField { field: &'static str, reason: String },
}

/// How much of serde's message a JSON error keeps: all of every syntax
/// error's, and of a quoted string (`invalid type: string "...`, 22 bytes
/// before the quote) at most 39 bytes, as [`shown`] would.
const JSON_MESSAGE_MAX_BYTES: usize = 64;

impl InvalidEvent {
    /// serde's message, which may quote the input (`invalid type: string
    /// "..."`), with the quote clipped and the position kept.
    fn json(e: serde_json::Error) -> InvalidEvent {
        InvalidEvent::Json(InvalidEvent::json_message(&e))
    }

    /// serde's message, which may quote the input, clipped as [`InvalidEvent::Json`]
    /// keeps it.
    pub fn json_message(e: &serde_json::Error) -> String {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&position).unwrap_or(&text);
        let position = if message.len() < text.len() {
            position.as_str()
        } else {
            ""
        };
        format!(
            "{}{position}",
            crate::bounded::clip(message, JSON_MESSAGE_MAX_BYTES)
        )
    }

    fn unknown_type(name: &str) -> InvalidEvent {
        InvalidEvent::UnknownType(shown(name))
    }
}

/// A validated event, whose customer is known: what a journey steps on.
///
/// The decoder gives an [`Unresolved`] event (`Event<Option<String>>`):
/// follow-up events of real feeds (shipments, returns, refunds) often name
/// the order only, and the pipeline finds the customer from the order. Only
/// [`Unresolved::named`] and [`Unresolved::resolve`] make an `Event` of
/// one, so no code can step a journey on an event whose customer it has
/// not settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<CustomerId = String> {
    pub id: String,
    pub occurred_at: Timestamp,
    pub customer: CustomerPatch<CustomerId>,
    pub kind: EventKind,
}

/// An event as decoded: the customer id is `None` when the event names
/// none (never on `order.placed`). Serialized alike to [`Event`] when the
/// id is there, so digests of events applied before ids were optional
/// still match their redeliveries.
pub type Unresolved = Event<Option<String>>;

/// The customer fields an event carries. Each present field updates the
/// customer; an absent one leaves what we know alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerPatch<Id = String> {
    pub id: Id,
    pub email: Option<String>,
    pub name: Option<String>,
    /// The given name, when the shop knows it apart from the full name
    /// (greetings and subjects use it; without it, it is derived from
    /// `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub marketing_consent: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventKind {
    OrderPlaced {
        order: Order,
    },
    OrderCancelled {
        order_id: String,
    },
    ShipmentDispatched {
        order_id: String,
        shipment: Shipment,
    },
    ShipmentDelayed {
        order_id: String,
        shipment: Shipment,
    },
    ShipmentDelivered {
        order_id: String,
        shipment_id: String,
    },
    ReturnRequested {
        order_id: String,
        ret: Return,
    },
    ReturnReceived {
        order_id: String,
        return_id: String,
    },
    RefundIssued {
        order_id: String,
        refund: Refund,
    },
}

impl EventKind {
    /// The wire name of the type, as in `src/event.schema.json`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "order.placed",
            Self::OrderCancelled { .. } => "order.cancelled",
            Self::ShipmentDispatched { .. } => "shipment.dispatched",
            Self::ShipmentDelayed { .. } => "shipment.delayed",
            Self::ShipmentDelivered { .. } => "shipment.delivered",
            Self::ReturnRequested { .. } => "return.requested",
            Self::ReturnReceived { .. } => "return.received",
            Self::RefundIssued { .. } => "refund.issued",
        }
    }

    /// The order every event type refers to.
    pub fn order_id(&self) -> &str {
        match self {
            Self::OrderPlaced { order } => &order.id,
            Self::OrderCancelled { order_id }
            | Self::ShipmentDispatched { order_id, .. }
            | Self::ShipmentDelayed { order_id, .. }
            | Self::ShipmentDelivered { order_id, .. }
            | Self::ReturnRequested { order_id, .. }
            | Self::ReturnReceived { order_id, .. }
            | Self::RefundIssued { order_id, .. } => order_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub total: Decimal,
    pub currency: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// An item has a SKU, a name, or both.
    pub sku: Option<String>,
    /// The name, or the SKU when the event gave no (valid) name: what an
    /// email shows.
    pub name: String,
    pub quantity: u32,
    /// Absent on return items.
    pub unit_price: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    pub id: String,
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
    pub estimated_delivery: Option<Eta>,
}

/// When a parcel is expected: a day (`2026-01-08`, as carriers and
/// schema.org give it) or a moment. Templates show either as a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Eta {
    Time(Timestamp),
    Date(jiff::civil::Date),
}

impl std::fmt::Display for Eta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Eta::Time(t) => t.fmt(f),
            Eta::Date(d) => d.fmt(f),
        }
    }
}

/// An optional field that was malformed and left out: the event was kept
/// without it (and the field is logged and counted), since no journey
/// needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Return {
    pub id: String,
    pub reason: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: Decimal,
    pub currency: String,
}

/// The wire shape: everything optional, so that missing fields become our
/// own errors naming the field, not serde's.
mod wire {
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    pub struct Event {
        pub event_id: Option<Value>,
        #[serde(rename = "type")]
        pub kind: Option<Value>,
        pub occurred_at: Option<Value>,
        pub customer: Option<Value>,
        pub order: Option<Value>,
        pub shipment: Option<Value>,
        #[serde(rename = "return")]
        pub ret: Option<Value>,
        pub refund: Option<Value>,
    }
}

use serde_json::Value;

impl Unresolved {
    /// Decodes and validates one raw event.
    pub fn decode(raw: &[u8]) -> Result<Unresolved, InvalidEvent> {
        Self::decode_noting(raw, &mut Vec::new())
    }

    /// [`Event::decode`], noting in `dropped` the malformed optional fields
    /// left out (a tracking URL, an estimated delivery, a locale, a time
    /// zone, an item's name): enrichment an email can go without, never
    /// the reason it is lost.
    pub fn decode_noting(
        raw: &[u8],
        dropped: &mut Vec<Dropped>,
    ) -> Result<Unresolved, InvalidEvent> {
        let w: wire::Event = serde_json::from_slice(raw).map_err(InvalidEvent::json)?;
        let id = req_str(w.event_id.as_ref(), "event_id", Bound::Id)?;
        let type_name = req_str(w.kind.as_ref(), "type", Bound::Id)?;
        let occurred_at = req_time(w.occurred_at.as_ref(), "occurred_at")?;
        let customer = customer(w.customer.as_ref(), dropped)?;
        // An order is where the shop tells us whose it is: every later
        // event of the order may name the order alone.
        if type_name == "order.placed" && customer.id.is_none() {
            return Err(InvalidEvent::Missing("customer.id"));
        }
        let order = w.order.as_ref();
        let kind = match type_name.as_str() {
            "order.placed" => EventKind::OrderPlaced {
                order: placed_order(order, dropped)?,
            },
            "order.cancelled" => EventKind::OrderCancelled {
                order_id: order_id(order)?,
            },
            "shipment.dispatched" => EventKind::ShipmentDispatched {
                order_id: order_id(order)?,
                shipment: shipment(w.shipment.as_ref(), dropped)?,
            },
            "shipment.delayed" => EventKind::ShipmentDelayed {
                order_id: order_id(order)?,
                shipment: shipment(w.shipment.as_ref(), dropped)?,
            },
            "shipment.delivered" => EventKind::ShipmentDelivered {
                order_id: order_id(order)?,
                shipment_id: req_str(field(w.shipment.as_ref(), "id"), "shipment.id", Bound::Id)?,
            },
            "return.requested" => EventKind::ReturnRequested {
                order_id: order_id(order)?,
                ret: ret(w.ret.as_ref(), dropped)?,
            },
            "return.received" => EventKind::ReturnReceived {
                order_id: order_id(order)?,
                return_id: req_str(field(w.ret.as_ref(), "id"), "return.id", Bound::Id)?,
            },
            "refund.issued" => EventKind::RefundIssued {
                order_id: order_id(order)?,
                refund: refund(w.refund.as_ref())?,
            },
            other => return Err(InvalidEvent::unknown_type(other)),
        };
        Ok(Event {
            id,
            occurred_at,
            customer,
            kind,
        })
    }

    /// The customer the event names itself, if any.
    pub fn customer_id(&self) -> Option<&str> {
        self.customer.id.as_deref()
    }

    /// The event as it came, if it names its customer.
    pub fn named(mut self) -> Option<Event> {
        let id = self.customer.id.take()?;
        Some(self.resolve(id))
    }

    /// The event as `customer_id`'s, whatever it named (the caller has
    /// checked the two agree).
    pub fn resolve(self, customer_id: String) -> Event {
        let c = self.customer;
        Event {
            id: self.id,
            occurred_at: self.occurred_at,
            customer: CustomerPatch {
                id: customer_id,
                email: c.email,
                name: c.name,
                first_name: c.first_name,
                locale: c.locale,
                timezone: c.timezone,
                marketing_consent: c.marketing_consent,
            },
            kind: self.kind,
        }
    }
}

/// The bounds on what an event may carry. Generous for any real shop, and
/// small enough that sums of a customer's orders, line totals and event
/// times plus any configured delay stay far inside what the types hold.
pub mod limits {
    use jiff::Timestamp;
    use rust_decimal::Decimal;

    /// Ids (event, customer, order, shipment, return, refund), in bytes.
    pub const ID_BYTES: usize = 256;
    /// Names, SKUs, carriers, tracking numbers, locales, time zones.
    pub const TEXT_CHARS: usize = 500;
    /// A return's reason, a tracking URL.
    pub const LONG_TEXT_CHARS: usize = 2_000;
    /// An address, as RFC 5321 bounds a path.
    pub const EMAIL_BYTES: usize = 254;
    /// Items of one order or return.
    pub const ITEMS: usize = 1_000;
    /// Units of one item.
    pub const QUANTITY: u64 = 1_000_000;
    /// Decimal places of an amount.
    pub const MONEY_SCALE: u32 = 8;
    /// Earliest event time: 1970-01-01T00:00:00Z.
    pub const EARLIEST: Timestamp = Timestamp::UNIX_EPOCH;
    /// Event times are before 2200-01-01T00:00:00Z.
    pub const LATEST: Timestamp = Timestamp::constant(7_258_118_400, 0);

    /// The largest amount of money, in any currency: 10^12.
    pub fn max_amount() -> Decimal {
        Decimal::from(1_000_000_000_000_i64)
    }
}

fn field<'a>(obj: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    obj.and_then(|o| o.get(key)).filter(|v| !v.is_null())
}

/// How long a string field may be.
#[derive(Clone, Copy)]
enum Bound {
    /// An id: at most [`limits::ID_BYTES`] bytes.
    Id,
    /// A text of at most this many characters.
    Chars(usize),
}

const SHORT: Bound = Bound::Chars(limits::TEXT_CHARS);
const LONG: Bound = Bound::Chars(limits::LONG_TEXT_CHARS);

fn req_str(v: Option<&Value>, name: &'static str, bound: Bound) -> Result<String, InvalidEvent> {
    opt_str(v, name, bound)?.ok_or(InvalidEvent::Missing(name))
}

fn opt_str(
    v: Option<&Value>,
    name: &'static str,
    bound: Bound,
) -> Result<Option<String>, InvalidEvent> {
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        // Shops' ids are often integers, some above 2^53 (Shopify's): read
        // exactly, every digit kept.
        Some(Value::Number(n)) if matches!(bound, Bound::Id) && (n.is_u64() || n.is_i64()) => {
            return Ok(Some(n.to_string()));
        }
        Some(_) if matches!(bound, Bound::Id) => {
            return Err(bad(name, "must be a string or an integer"));
        }
        Some(_) => return Err(bad(name, "must be a string")),
    };
    if s.trim().is_empty() {
        return Err(bad(name, "must not be empty"));
    }
    match bound {
        Bound::Id if s.len() > limits::ID_BYTES => {
            return Err(bad(
                name,
                format!(
                    "{} bytes long, over the limit of {}",
                    s.len(),
                    limits::ID_BYTES
                ),
            ));
        }
        Bound::Chars(max) if s.chars().nth(max).is_some() => {
            return Err(bad(name, format!("longer than {max} characters")));
        }
        _ => {}
    }
    // Control characters would forge log lines, clear a terminal or break
    // a header; no store keeps a NUL (PostgreSQL refuses it).
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(bad(
            name,
            format!("contains the control character U+{:04X}", u32::from(c)),
        ));
    }
    Ok(Some(s.clone()))
}

/// At most 40 characters of `s`, control characters escaped: what a reason
/// may repeat of a value the shop sent.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).flat_map(char::escape_debug).collect();
    if s.chars().nth(40).is_some() {
        out.push('…');
    }
    out
}

/// A day (`2026-01-08`) or an RFC 3339 time, within the years of event
/// times.
fn eta(v: Option<&Value>) -> Result<Option<Eta>, InvalidEvent> {
    const NAME: &str = "shipment.estimated_delivery";
    let Some(s) = opt_str(v, NAME, Bound::Chars(64))? else {
        return Ok(None);
    };
    if let Ok(day) = s.parse::<jiff::civil::Date>()
        && !s.contains('T')
    {
        let first = jiff::civil::date(1970, 1, 1);
        let end = jiff::civil::date(2200, 1, 1);
        if !(first..end).contains(&day) {
            return Err(bad(NAME, format!("{day} is not between 1970 and 2199")));
        }
        return Ok(Some(Eta::Date(day)));
    }
    Ok(opt_time(v, NAME)?.map(Eta::Time))
}

fn req_time(v: Option<&Value>, name: &'static str) -> Result<Timestamp, InvalidEvent> {
    opt_time(v, name)?.ok_or(InvalidEvent::Missing(name))
}

fn opt_time(v: Option<&Value>, name: &'static str) -> Result<Option<Timestamp>, InvalidEvent> {
    let Some(s) = opt_str(v, name, Bound::Chars(64))? else {
        return Ok(None);
    };
    let t = s
        .parse::<Timestamp>()
        .map_err(|e| bad(name, format!("not an RFC 3339 timestamp: {e}")))?;
    if !(limits::EARLIEST..limits::LATEST).contains(&t) {
        return Err(bad(name, format!("{t} is not between 1970 and 2199")));
    }
    Ok(Some(t))
}

/// Whether an amount may be negative, zero, or must be positive.
#[derive(Clone, Copy, PartialEq)]
enum Sign {
    /// Zero or more: a total, a price (a free order exists).
    NotNegative,
    /// More than zero: a refund.
    Positive,
}

fn req_money(v: Option<&Value>, name: &'static str, sign: Sign) -> Result<Decimal, InvalidEvent> {
    opt_money(v, name, sign)?.ok_or(InvalidEvent::Missing(name))
}

/// Money is a decimal string or a JSON number, read from its literal text:
/// `59.90` and `"59.90"` are the same amount, exactly.
fn opt_money(
    v: Option<&Value>,
    name: &'static str,
    sign: Sign,
) -> Result<Option<Decimal>, InvalidEvent> {
    let literal;
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        // The number's own text (serde_json keeps it: the
        // `arbitrary_precision` feature), never a float.
        Some(Value::Number(n)) => {
            literal = n.to_string();
            &literal
        }
        Some(_) => return Err(bad(name, "must be a decimal such as \"59.90\" or 59.90")),
    };
    let parsed = if s.contains(['e', 'E']) {
        // Bounded before it is expanded: `1e999999` is no amount.
        let exponent_ok = s
            .rsplit(['e', 'E'])
            .next()
            .and_then(|e| e.parse::<i32>().ok())
            .is_some_and(|e| e.abs() <= 28);
        exponent_ok
            .then(|| Decimal::from_scientific(s).ok())
            .flatten()
    } else {
        s.parse::<Decimal>().ok()
    };
    let amount =
        parsed.ok_or_else(|| bad(name, format!("`{}` is not a decimal amount", shown(s))))?;
    if amount.scale() > limits::MONEY_SCALE {
        return Err(bad(
            name,
            format!("more than {} decimal places", limits::MONEY_SCALE),
        ));
    }
    if amount.abs() > limits::max_amount() {
        return Err(bad(name, "larger than 1000000000000"));
    }
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(bad(name, "must not be negative"));
    }
    if sign == Sign::Positive && amount.is_zero() {
        return Err(bad(name, "must be more than zero"));
    }
    Ok(Some(amount))
}

fn currency(v: Option<&Value>, name: &'static str) -> Result<String, InvalidEvent> {
    let c = req_str(v, name, SHORT)?;
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(c)
    } else {
        Err(bad(
            name,
            format!("`{}` is not an ISO 4217 code", shown(&c)),
        ))
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent::BadField {
        field,
        reason: reason.into(),
    }
}

/// The value of an optional field, or `None` with a note in `dropped` when
/// it is malformed.
fn lenient<T>(value: Result<Option<T>, InvalidEvent>, dropped: &mut Vec<Dropped>) -> Option<T> {
    match value {
        Ok(value) => value,
        Err(InvalidEvent::BadField { field, reason }) => {
            dropped.push(Dropped { field, reason });
            None
        }
        Err(other) => {
            dropped.push(Dropped {
                field: "?",
                reason: other.to_string(),
            });
            None
        }
    }
}

fn customer(
    v: Option<&Value>,
    dropped: &mut Vec<Dropped>,
) -> Result<CustomerPatch<Option<String>>, InvalidEvent> {
    // Absent (or null) is fine; anything but an object is a mistake that
    // must not pass for "no customer named".
    if v.is_some_and(|v| !v.is_object() && !v.is_null()) {
        return Err(bad("customer", "must be an object"));
    }
    let id = opt_str(field(v, "id"), "customer.id", Bound::Id)?;
    let email = opt_str(field(v, "email"), "customer.email", SHORT)?
        .map(|e| address(&e))
        .transpose()?;
    let marketing_consent = match field(v, "marketing_consent") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad("customer.marketing_consent", "must be true or false")),
    };
    Ok(CustomerPatch {
        id,
        email,
        name: opt_str(field(v, "name"), "customer.name", SHORT)?,
        first_name: opt_str(field(v, "first_name"), "customer.first_name", SHORT)?,
        locale: lenient(
            opt_str(field(v, "locale"), "customer.locale", Bound::Chars(35)),
            dropped,
        ),
        timezone: lenient(
            opt_str(field(v, "timezone"), "customer.timezone", Bound::Chars(64)),
            dropped,
        ),
        marketing_consent,
    })
}

/// An address an SMTP server will take from us: `local@domain`, split at
/// the last `@`, whose parts are valid as lettre's parser checks them (the
/// `email_address` crate; a domain in its Unicode or its ASCII form), with
/// a plain (dot-atom) ASCII local part and a host name for a domain.
/// Quoted local parts and address literals (`a@[127.0.0.1]`) are valid but
/// no real mailbox uses them and many servers refuse them; a non-ASCII
/// local part needs SMTPUTF8, which this mailer does not speak. An
/// internationalized domain is kept in its ASCII (punycode) form, which
/// every server takes. The address itself is never in the reason: reasons
/// are logged, and addresses only at debug.
fn address(email: &str) -> Result<String, InvalidEvent> {
    use email_address::EmailAddress;

    const NAME: &str = "customer.email";
    if email.len() > limits::EMAIL_BYTES {
        return Err(bad(
            NAME,
            format!("longer than {} bytes", limits::EMAIL_BYTES),
        ));
    }
    let (local, domain) = email
        .rsplit_once('@')
        .ok_or_else(|| bad(NAME, "not an address: no `@`"))?;
    if !EmailAddress::is_valid_local_part(local) {
        return Err(bad(NAME, "not an address: the local part is not valid"));
    }
    let ascii = idna::domain_to_ascii(domain);
    if !EmailAddress::is_valid_domain(domain)
        && !ascii.as_deref().is_ok_and(EmailAddress::is_valid_domain)
    {
        return Err(bad(NAME, "not an address: the domain is not valid"));
    }
    if local.starts_with('"') {
        return Err(bad(NAME, "a quoted local part is not accepted"));
    }
    if !local.is_ascii() {
        return Err(bad(
            NAME,
            "a non-ASCII local part needs SMTPUTF8, which is not supported",
        ));
    }
    if domain.starts_with('[') {
        return Err(bad(NAME, "an address literal is not accepted as a domain"));
    }
    let domain = ascii.map_err(|_| bad(NAME, "the domain is not a valid host name"))?;
    let host_name = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !host_name {
        return Err(bad(NAME, "the domain is not a host name with a dot"));
    }
    Ok(format!("{local}@{domain}"))
}

fn order_id(order: Option<&Value>) -> Result<String, InvalidEvent> {
    req_str(field(order, "id"), "order.id", Bound::Id)
}

fn placed_order(order: Option<&Value>, dropped: &mut Vec<Dropped>) -> Result<Order, InvalidEvent> {
    let id = order_id(order)?;
    let total = req_money(field(order, "total"), "order.total", Sign::NotNegative)?;
    let currency = currency(field(order, "currency"), "order.currency")?;
    let items = items(field(order, "items"), "order.items", dropped)?;
    Ok(Order {
        id,
        total,
        currency,
        items,
    })
}

fn items(
    v: Option<&Value>,
    name: &'static str,
    dropped: &mut Vec<Dropped>,
) -> Result<Vec<Item>, InvalidEvent> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad(name, "must be an array")),
    };
    if list.len() > limits::ITEMS {
        return Err(bad(
            name,
            format!("{} items, over the limit of {}", list.len(), limits::ITEMS),
        ));
    }
    list.iter()
        .map(|item| {
            let item = Some(item);
            let quantity = match field(item, "quantity") {
                None => 1,
                Some(q) => q
                    .as_u64()
                    .filter(|q| (1..=limits::QUANTITY).contains(q))
                    .and_then(|q| u32::try_from(q).ok())
                    .ok_or_else(|| {
                        bad(
                            "items[].quantity",
                            format!("must be an integer from 1 to {}", limits::QUANTITY),
                        )
                    })?,
            };
            // Enrichment: emails show an item without a price without
            // its price, never a made-up one.
            let unit_price = lenient(
                opt_money(
                    field(item, "unit_price"),
                    "items[].unit_price",
                    Sign::NotNegative,
                ),
                dropped,
            );
            let sku = opt_str(field(item, "sku"), "items[].sku", SHORT)?;
            let name = match &sku {
                // A name is enrichment where the SKU says what it is.
                Some(sku) => lenient(opt_str(field(item, "name"), "items[].name", SHORT), dropped)
                    .unwrap_or_else(|| sku.clone()),
                None => opt_str(field(item, "name"), "items[].name", SHORT)?
                    .ok_or(InvalidEvent::Missing("items[].sku` or `items[].name"))?,
            };
            Ok(Item {
                sku,
                name,
                quantity,
                unit_price,
            })
        })
        .collect()
}

fn shipment(v: Option<&Value>, dropped: &mut Vec<Dropped>) -> Result<Shipment, InvalidEvent> {
    Ok(Shipment {
        id: req_str(field(v, "id"), "shipment.id", Bound::Id)?,
        carrier: opt_str(field(v, "carrier"), "shipment.carrier", SHORT)?,
        tracking_number: opt_str(
            field(v, "tracking_number"),
            "shipment.tracking_number",
            SHORT,
        )?,
        tracking_url: lenient(
            opt_str(field(v, "tracking_url"), "shipment.tracking_url", LONG),
            dropped,
        ),
        estimated_delivery: lenient(eta(field(v, "estimated_delivery")), dropped),
    })
}

fn ret(v: Option<&Value>, dropped: &mut Vec<Dropped>) -> Result<Return, InvalidEvent> {
    Ok(Return {
        id: req_str(field(v, "id"), "return.id", Bound::Id)?,
        reason: opt_str(field(v, "reason"), "return.reason", LONG)?,
        items: items(field(v, "items"), "return.items", dropped)?,
    })
}

fn refund(v: Option<&Value>) -> Result<Refund, InvalidEvent> {
    Ok(Refund {
        id: req_str(field(v, "id"), "refund.id", Bound::Id)?,
        amount: req_money(field(v, "amount"), "refund.amount", Sign::Positive)?,
        currency: currency(field(v, "currency"), "refund.currency")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLACED: &str = r#"{"event_id":"evt-1","type":"order.placed","occurred_at":"2026-11-20T12:00:00Z",
        "customer":{"id":"c-1","email":"anna@example.com","name":"Anna","locale":"hy","timezone":"Asia/Yerevan","marketing_consent":true},
        "order":{"id":"o-1","total":"59.90","currency":"EUR","items":[{"sku":"TEA-01","name":"Green tea","quantity":2,"unit_price":"9.95"}]},
        "extra":"ignored"}"#;

    fn with(patch: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(PLACED).unwrap();
        patch(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_first_name_is_decoded_and_absent_from_the_digest_without_one() {
        let e = Event::decode(&with(|v| v["customer"]["first_name"] = "Ani".into())).unwrap();
        assert_eq!(e.customer.first_name.as_deref(), Some("Ani"));
        let without = Event::decode(PLACED.as_bytes()).unwrap();
        assert_eq!(without.customer.first_name, None);
        // Events applied before first names existed keep their digest.
        let stored = serde_json::to_string(&without).unwrap();
        assert!(!stored.contains("first_name"), "{stored}");
        assert!(
            serde_json::to_string(&e)
                .unwrap()
                .contains(r#""first_name":"Ani""#)
        );
    }

    #[test]
    fn decodes_the_design_example_with_decimal_money() {
        let e = Event::decode(PLACED.as_bytes()).unwrap();
        assert_eq!(e.id, "evt-1");
        assert_eq!(e.customer.locale.as_deref(), Some("hy"));
        let EventKind::OrderPlaced { order } = e.kind else {
            panic!("wrong kind")
        };
        assert_eq!(order.total.to_string(), "59.90");
        assert_eq!(order.items[0].unit_price.unwrap().to_string(), "9.95");
    }

    #[test]
    fn decodes_every_type() {
        let cases = [
            (
                r#""order.cancelled","order":{"id":"o-1"}"#,
                "order.cancelled",
            ),
            (
                r#""shipment.dispatched","order":{"id":"o-1"},"shipment":{"id":"s-1","carrier":"DHL","tracking_number":"1","tracking_url":"https://t/1","estimated_delivery":"2026-11-25T00:00:00Z"}"#,
                "shipment.dispatched",
            ),
            (
                r#""shipment.delayed","order":{"id":"o-1"},"shipment":{"id":"s-1","estimated_delivery":"2026-11-28T00:00:00Z"}"#,
                "shipment.delayed",
            ),
            (
                r#""shipment.delivered","order":{"id":"o-1"},"shipment":{"id":"s-1"}"#,
                "shipment.delivered",
            ),
            (
                r#""return.requested","order":{"id":"o-1"},"return":{"id":"r-1","reason":"too big","items":[{"sku":"A","name":"Cup","quantity":1}]}"#,
                "return.requested",
            ),
            (
                r#""return.received","order":{"id":"o-1"},"return":{"id":"r-1"}"#,
                "return.received",
            ),
            (
                r#""refund.issued","order":{"id":"o-1"},"refund":{"id":"f-1","amount":"9.95","currency":"EUR"}"#,
                "refund.issued",
            ),
        ];
        for (body, name) in cases {
            let raw = format!(
                r#"{{"event_id":"e","occurred_at":"2026-11-20T12:00:00Z","customer":{{"id":"c"}},"type":{body}}}"#
            );
            let e = Event::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(e.kind.type_name(), name);
            assert_eq!(e.kind.order_id(), "o-1");
        }
    }

    #[test]
    fn the_customer_may_be_left_out_on_every_type_but_an_order_placed() {
        let follow_ups = [
            r#""order.cancelled","order":{"id":"o-1"}"#,
            r#""shipment.dispatched","order":{"id":"o-1"},"shipment":{"id":"s-1"}"#,
            r#""shipment.delayed","order":{"id":"o-1"},"shipment":{"id":"s-1"}"#,
            r#""shipment.delivered","order":{"id":"o-1"},"shipment":{"id":"s-1"}"#,
            r#""return.requested","order":{"id":"o-1"},"return":{"id":"r-1","items":[]}"#,
            r#""return.received","order":{"id":"o-1"},"return":{"id":"r-1"}"#,
            r#""refund.issued","order":{"id":"o-1"},"refund":{"id":"f-1","amount":"1","currency":"EUR"}"#,
        ];
        for body in follow_ups {
            for customer in ["", r#","customer":null"#, r#","customer":{"id":null}"#] {
                let raw = format!(
                    r#"{{"event_id":"e","occurred_at":"2026-11-20T12:00:00Z"{customer},"type":{body}}}"#
                );
                let e = Event::decode(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw}: {e}"));
                assert_eq!(e.customer_id(), None, "{raw}");
                assert_eq!(e.kind.order_id(), "o-1");
            }
        }
        // What it says of the customer still counts, once they are known.
        let raw = br#"{"event_id":"e","type":"shipment.delivered","occurred_at":"2026-11-20T12:00:00Z","customer":{"locale":"hy","email":"anna@example.com"},"order":{"id":"o-1"},"shipment":{"id":"s-1"}}"#;
        let e = Event::decode(raw).unwrap();
        assert_eq!(e.customer.locale.as_deref(), Some("hy"));
        assert_eq!(e.customer.email.as_deref(), Some("anna@example.com"));
        // Something that is no customer is not "no customer".
        for junk in [json!("c-1"), json!(7), json!(["c-1"])] {
            let mut v: Value = serde_json::from_slice(raw).unwrap();
            v["customer"] = junk;
            assert_eq!(refused_field(v.to_string().as_bytes()), "customer");
        }
        // An order is where the shop says whose it is.
        let without_customer = with(|v| {
            v.as_object_mut().unwrap().remove("customer");
        });
        let without_id = with(|v| {
            v["customer"].as_object_mut().unwrap().remove("id");
        });
        for raw in [without_customer, without_id] {
            assert_eq!(
                Event::decode(&raw).unwrap_err(),
                InvalidEvent::Missing("customer.id")
            );
        }
    }

    #[test]
    fn an_event_is_stepped_only_once_its_customer_is_settled() {
        let named = Event::decode(&with(|_| {})).unwrap();
        let as_stored = serde_json::to_string(&named).unwrap();
        let event = named.named().unwrap();
        assert_eq!(event.customer.id, "c-1");
        // Serialized as before ids were optional: digests of events
        // applied by earlier versions still match.
        assert_eq!(serde_json::to_string(&event).unwrap(), as_stored);

        let raw = br#"{"event_id":"e","type":"refund.issued","occurred_at":"2026-11-20T12:00:00Z","customer":{"name":"Anna"},"order":{"id":"o-1"},"refund":{"id":"f-1","amount":"1","currency":"EUR"}}"#;
        let unnamed = Event::decode(raw).unwrap();
        assert_eq!(unnamed.clone().named(), None);
        let event = unnamed.clone().resolve("c-7".into());
        assert_eq!(event.customer.id, "c-7");
        assert_eq!(event.customer.name.as_deref(), Some("Anna"));
        assert_eq!(event.customer.first_name, None);
        assert_eq!((event.id, event.kind), (unnamed.id, unnamed.kind));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: Vec<(Vec<u8>, InvalidEvent)> = vec![
            (
                b"{not json".to_vec(),
                InvalidEvent::Json("key must be a string at line 1 column 2".into()),
            ),
            (
                with(|v| v["type"] = "order.exploded".into()),
                InvalidEvent::UnknownType("order.exploded".into()),
            ),
            (
                with(|v| {
                    v.as_object_mut().unwrap().remove("event_id");
                }),
                InvalidEvent::Missing("event_id"),
            ),
            (
                with(|v| {
                    v["customer"].as_object_mut().unwrap().remove("id");
                }),
                InvalidEvent::Missing("customer.id"),
            ),
            (
                with(|v| {
                    v["order"].as_object_mut().unwrap().remove("total");
                }),
                InvalidEvent::Missing("order.total"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(Event::decode(&raw).unwrap_err(), want);
        }
    }

    /// The field named in the rejection of `raw`.
    fn refused_field(raw: &[u8]) -> String {
        match Event::decode(raw) {
            Err(InvalidEvent::BadField { field, .. }) => field.to_owned(),
            Err(InvalidEvent::Missing(field)) => field.to_owned(),
            other => panic!("expected a rejection naming a field, got {other:?}"),
        }
    }

    #[test]
    fn extreme_numbers_and_dates_are_refused_at_the_door() {
        // Each of these passed decoding and then panicked in the journey
        // (line total, lifetime spend, due time overflowing), at every start.
        // An item's price is enrichment: one past the bounds is dropped,
        // the item kept without a price (and no line total to overflow).
        let mut dropped = Vec::new();
        let huge =
            with(|v| v["order"]["items"][0]["unit_price"] = "79228162514264337593543950335".into());
        let EventKind::OrderPlaced { order } =
            Event::decode_noting(&huge, &mut dropped).unwrap().kind
        else {
            panic!("an order.placed")
        };
        assert_eq!(order.items[0].unit_price, None);
        assert_eq!(dropped[0].field, "items[].unit_price");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with(|v| v["order"]["total"] = "7.9e28".into()),
                "order.total",
            ),
            (
                with(|v| v["order"]["total"] = "1000000000000.01".into()),
                "order.total",
            ),
            (
                with(|v| v["order"]["total"] = "-5.00".into()),
                "order.total",
            ),
            (
                with(|v| v["order"]["total"] = "0.000000001".into()),
                "order.total",
            ),
            (
                with(|v| v["occurred_at"] = "9999-12-30T00:00:00Z".into()),
                "occurred_at",
            ),
            (
                with(|v| v["occurred_at"] = "1969-12-31T23:59:59Z".into()),
                "occurred_at",
            ),
            (
                with(|v| v["occurred_at"] = "2200-01-01T00:00:00Z".into()),
                "occurred_at",
            ),
            (
                with(|v| v["order"]["items"][0]["quantity"] = 1_000_001.into()),
                "items[].quantity",
            ),
            (
                with(|v| v["order"]["items"][0]["quantity"] = u64::MAX.into()),
                "items[].quantity",
            ),
            (
                with(|v| {
                    let item = v["order"]["items"][0].clone();
                    v["order"]["items"] = Value::Array(vec![item; limits::ITEMS + 1]);
                }),
                "order.items",
            ),
        ];
        for (raw, field) in cases {
            assert_eq!(refused_field(&raw), field);
        }
        // The bounds themselves are in.
        let at_bounds = with(|v| {
            v["occurred_at"] = "2199-12-31T23:59:59Z".into();
            v["order"]["total"] = "1000000000000".into();
            v["order"]["items"][0]["quantity"] = limits::QUANTITY.into();
            v["order"]["items"][0]["unit_price"] = "0".into();
        });
        Event::decode(&at_bounds).unwrap();
    }

    #[test]
    fn money_may_be_a_json_number_read_from_its_text_never_a_float() {
        let total = |literal: &str| {
            let raw = PLACED.replacen(r#""total":"59.90""#, &format!(r#""total":{literal}"#), 1);
            match Event::decode(raw.as_bytes()) {
                Ok(Event {
                    kind: EventKind::OrderPlaced { order },
                    ..
                }) => Ok(order.total.to_string()),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(total("59.90"), Ok("59.90".to_owned()));
        // 18 significant digits: no float holds them.
        assert_eq!(
            total("1234567890.12345678"),
            Ok("1234567890.12345678".to_owned())
        );
        assert_eq!(total("1e2"), Ok("100".to_owned()));
        assert_eq!(total("0"), Ok("0".to_owned()));
        for refused in ["1e999999", "7.9e28", "-1", "1.000000001", "1e-30"] {
            let err = total(refused).unwrap_err();
            assert!(err.contains("order.total"), "{refused}: {err}");
        }
    }

    #[test]
    fn a_refund_must_be_more_than_zero() {
        let refund = |amount: &str| {
            format!(
                r#"{{"event_id":"e","type":"refund.issued","occurred_at":"2026-11-20T12:00:00Z","customer":{{"id":"c"}},"order":{{"id":"o"}},"refund":{{"id":"f","amount":"{amount}","currency":"EUR"}}}}"#
            )
        };
        for amount in ["0", "-1.00", "0.00"] {
            assert_eq!(refused_field(refund(amount).as_bytes()), "refund.amount");
        }
        Event::decode(refund("0.01").as_bytes()).unwrap();
    }

    #[test]
    fn control_characters_are_refused_in_every_id_and_text_or_the_field_dropped() {
        // A CR/LF forges a log line, an ESC clears a terminal.
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with(|v| v["event_id"] = "e\r\nINFO forged".into()),
                "event_id",
            ),
            (
                with(|v| v["customer"]["id"] = "c\u{1b}[2J".into()),
                "customer.id",
            ),
            (with(|v| v["order"]["id"] = "o\n1".into()), "order.id"),
            (
                with(|v| v["order"]["items"][0]["sku"] = "A\tB".into()),
                "items[].sku",
            ),
            (with(|v| v["type"] = "order.placed\r\n".into()), "type"),
        ];
        for (raw, field) in cases {
            assert_eq!(refused_field(&raw), field);
        }
        // Optional ones are left out instead, never kept.
        let raw = with(|v| {
            v["order"]["items"][0]["name"] = "Tea\u{7f}".into();
            v["customer"]["timezone"] = "UTC\u{85}".into();
        });
        let mut dropped = Vec::new();
        let e = Event::decode_noting(&raw, &mut dropped).unwrap();
        let fields: Vec<&str> = dropped.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["customer.timezone", "items[].name"]);
        assert_eq!(e.customer.timezone, None);
        let EventKind::OrderPlaced { order } = e.kind else {
            panic!("wrong kind")
        };
        assert_eq!(order.items[0].name, "TEA-01");
    }

    #[test]
    fn long_ids_and_texts_are_refused_and_reasons_never_repeat_them() {
        let long = "x".repeat(600_000);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (with(|v| v["event_id"] = long.clone().into()), "event_id"),
            (with(|v| v["type"] = long.clone().into()), "type"),
            (
                with(|v| v["customer"]["name"] = long.clone().into()),
                "customer.name",
            ),
            (
                with(|v| v["customer"]["first_name"] = long.clone().into()),
                "customer.first_name",
            ),
            (
                with(|v| v["order"]["items"][0]["sku"] = long.clone().into()),
                "items[].sku",
            ),
            (
                with(|v| v["order"]["total"] = long.clone().into()),
                "order.total",
            ),
            (
                with(|v| v["order"]["currency"] = long.clone().into()),
                "order.currency",
            ),
            (
                with(|v| v["customer"]["email"] = format!("{long}@example.com").into()),
                "customer.email",
            ),
        ];
        for (raw, field) in cases {
            let reason = Event::decode(&raw).unwrap_err().to_string();
            assert!(reason.contains(field), "{reason}");
            assert!(
                reason.len() < 200,
                "{field}: {} bytes of reason",
                reason.len()
            );
        }
        let id = "i".repeat(limits::ID_BYTES);
        Event::decode(&with(|v| v["order"]["id"] = id.into())).unwrap();
    }

    #[test]
    fn addresses_no_server_takes_are_refused_and_never_shown() {
        for address in [
            r#""a b"@example.com"#,
            "a@[127.0.0.1]",
            "anna@localhost",
            "аня@example.com",
            "anna@-example.com",
        ] {
            let reason = Event::decode(&with(|v| v["customer"]["email"] = address.into()))
                .unwrap_err()
                .to_string();
            assert!(reason.contains("customer.email"), "{address}: {reason}");
            // Reasons are logged at warn; addresses only at debug.
            assert!(!reason.contains(address), "{reason}");
        }
    }

    #[test]
    fn an_internationalized_domain_is_kept_in_its_ascii_form() {
        let raw = with(|v| v["customer"]["email"] = "anna@bücher.example".into());
        let e = Event::decode(&raw).unwrap();
        assert_eq!(
            e.customer.email.as_deref(),
            Some("anna@xn--bcher-kva.example")
        );
    }

    #[test]
    fn reasons_quote_at_most_a_bounded_part_of_the_input() {
        let raw = with(|v| v["type"] = "x".repeat(limits::ID_BYTES).into());
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert_eq!(err, format!("unknown event type `{}…`", "x".repeat(40)));

        let long = "x".repeat(600_000);
        let raw = serde_json::to_vec(&long).unwrap();
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "not valid JSON: invalid type: string \"{}… at line 1 column 600002",
                "x".repeat(39)
            )
        );
    }

    #[test]
    fn ids_may_be_integers_and_keep_every_digit() {
        // Shopify's ids exceed 2^53: a float would lose the last digit.
        let raw = with(|v| {
            v["event_id"] = json!(9_007_199_254_740_993_u64);
            v["customer"]["id"] = json!(7);
            v["order"]["id"] = json!(-1);
        });
        let e = Event::decode(&raw).unwrap();
        assert_eq!(e.id, "9007199254740993");
        assert_eq!(e.customer_id(), Some("7"));
        assert_eq!(e.kind.order_id(), "-1");
        for junk in [json!(1.5), json!(true), json!([1])] {
            let raw = with(|v| v["order"]["id"] = junk.clone());
            assert_eq!(refused_field(&raw), "order.id", "{junk}");
        }
    }

    fn shipped(shipment: Value) -> Vec<u8> {
        json!({"event_id": "e", "type": "shipment.dispatched", "occurred_at": "2026-01-05T10:00:00Z",
               "customer": {"id": "c", "locale": "x".repeat(40), "timezone": "Mars/Olympus\u{7}"},
               "order": {"id": "o"}, "shipment": shipment})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn an_estimated_delivery_is_a_day_or_a_moment() {
        let eta = |value: &str| {
            let raw = shipped(json!({"id": "s", "estimated_delivery": value}));
            match Event::decode(&raw).unwrap().kind {
                EventKind::ShipmentDispatched { shipment, .. } => shipment.estimated_delivery,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            eta("2026-01-08"),
            Some(Eta::Date(jiff::civil::date(2026, 1, 8)))
        );
        assert_eq!(
            eta("2026-01-08T12:00:00+02:00"),
            Some(Eta::Time("2026-01-08T10:00:00Z".parse().unwrap()))
        );
        assert_eq!(eta("2026-01-08").unwrap().to_string(), "2026-01-08");
        // Out of the years of event times, or no day at all: dropped.
        assert_eq!(eta("9999-01-08"), None);
        assert_eq!(eta("next week"), None);
    }

    #[test]
    fn malformed_optional_fields_are_dropped_and_noted_and_the_event_kept() {
        let raw = shipped(json!({
            "id": "s", "carrier": "DHL",
            "tracking_url": "https://t.example/1\r\nX: y",
            "estimated_delivery": "soon",
        }));
        let mut dropped = Vec::new();
        let e = Event::decode_noting(&raw, &mut dropped).unwrap();
        let EventKind::ShipmentDispatched { shipment, .. } = e.kind else {
            panic!("wrong kind")
        };
        assert_eq!(shipment.carrier.as_deref(), Some("DHL"));
        assert_eq!(
            (shipment.tracking_url, shipment.estimated_delivery),
            (None, None)
        );
        assert_eq!((e.customer.locale, e.customer.timezone), (None, None));
        let fields: Vec<&str> = dropped.iter().map(|d| d.field).collect();
        assert_eq!(
            fields,
            [
                "customer.locale",
                "customer.timezone",
                "shipment.tracking_url",
                "shipment.estimated_delivery"
            ]
        );
        assert!(dropped.iter().all(|d| !d.reason.is_empty()));
    }

    #[test]
    fn an_item_needs_a_sku_or_a_name_and_shows_the_sku_without_a_name() {
        let returned = |items: Value| {
            json!({"event_id": "e", "type": "return.requested", "occurred_at": "2026-01-05T10:00:00Z",
                   "customer": {"id": "c"}, "order": {"id": "o"},
                   "return": {"id": "r", "items": items}})
            .to_string()
            .into_bytes()
        };
        let mut dropped = Vec::new();
        let raw = returned(json!([
            {"sku": "TEA-01", "quantity": 2},
            {"sku": "TEA-02", "name": "Tea\u{1b}[2J"},
            {"name": "Cup"},
        ]));
        let e = Event::decode_noting(&raw, &mut dropped).unwrap();
        let EventKind::ReturnRequested { ret, .. } = e.kind else {
            panic!("wrong kind")
        };
        let items: Vec<(Option<&str>, &str, u32)> = ret
            .items
            .iter()
            .map(|i| (i.sku.as_deref(), i.name.as_str(), i.quantity))
            .collect();
        assert_eq!(
            items,
            [
                (Some("TEA-01"), "TEA-01", 2),
                (Some("TEA-02"), "TEA-02", 1),
                (None, "Cup", 1)
            ]
        );
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].field, "items[].name");
        let err = Event::decode(&returned(json!([{"quantity": 1}]))).unwrap_err();
        assert!(err.to_string().contains("items[].sku"), "{err}");
    }

    #[test]
    fn a_nul_character_in_an_id_is_bad_input() {
        let raw = with(|v| v["customer"]["id"] = "c-\u{0}1".into());
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert!(
            err.contains("customer.id") && err.contains("U+0000"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with(|v| v["occurred_at"] = "yesterday".into()),
                "occurred_at",
            ),
            (
                with(|v| v["occurred_at"] = "2026-11-20 12:00".into()),
                "occurred_at",
            ),
            (with(|v| v["order"]["total"] = true.into()), "order.total"),
            (
                with(|v| v["order"]["currency"] = "euro".into()),
                "order.currency",
            ),
            (
                with(|v| v["customer"]["email"] = "anna@example.com\r\nBcc: x@evil".into()),
                "customer.email",
            ),
            (
                with(|v| v["customer"]["name"] = "Anna\r\nBcc: x@evil".into()),
                "customer.name",
            ),
            (
                with(|v| v["customer"]["first_name"] = "Anna\r\nBcc: x@evil".into()),
                "customer.first_name",
            ),
            (
                with(|v| v["customer"]["first_name"] = "".into()),
                "customer.first_name",
            ),
            (
                with(|v| v["customer"]["marketing_consent"] = "yes".into()),
                "customer.marketing_consent",
            ),
            (
                with(|v| v["order"]["items"][0]["quantity"] = 0.into()),
                "items[].quantity",
            ),
        ];
        for (raw, field) in cases {
            match Event::decode(&raw) {
                Err(InvalidEvent::BadField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected BadField, got {other:?}"),
            }
        }
    }
}
