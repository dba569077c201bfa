//! The event contract: decoding and validating what the shop sends.
//!
//! Decoding is two steps: serde reads a permissive wire shape (every field
//! optional, unknown fields ignored), then [`Event::decode`] checks it against
//! the contract in DESIGN.md and builds a typed [`Event`]. The second step is
//! ours, so the error names the field a shop engineer has to fix.

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

/// How much of the input a reason may quote: the type named, the text a
/// JSON error echoes. An event may be megabytes; its reason stays a line.
const ECHO_MAX_BYTES: usize = 100;

impl InvalidEvent {
    /// serde's message, which may quote the input (`invalid type: string
    /// "..."`), with the quote clipped and the position kept.
    fn json(e: serde_json::Error) -> InvalidEvent {
        let text = e.to_string();
        let position = format!(" at line {} column {}", e.line(), e.column());
        let message = text.strip_suffix(&position).unwrap_or(&text);
        let position = if message.len() < text.len() {
            position.as_str()
        } else {
            ""
        };
        InvalidEvent::Json(format!(
            "{}{position}",
            crate::bounded::clip(message, ECHO_MAX_BYTES)
        ))
    }

    fn unknown_type(name: &str) -> InvalidEvent {
        InvalidEvent::UnknownType(crate::bounded::clip(name, ECHO_MAX_BYTES).into_owned())
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub occurred_at: Timestamp,
    pub customer: CustomerPatch,
    pub kind: EventKind,
}

/// The customer fields an event carries. Each present field updates the
/// customer; an absent one leaves what we know alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomerPatch {
    pub id: String,
    pub email: Option<String>,
    pub name: Option<String>,
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
    /// The wire name of the type, as in DESIGN.md.
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
    pub sku: String,
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
    pub estimated_delivery: Option<Timestamp>,
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

impl Event {
    /// Decodes and validates one raw event.
    pub fn decode(raw: &[u8]) -> Result<Event, InvalidEvent> {
        let w: wire::Event = serde_json::from_slice(raw).map_err(InvalidEvent::json)?;
        let id = req_str(w.event_id.as_ref(), "event_id")?;
        let type_name = req_str(w.kind.as_ref(), "type")?;
        let occurred_at = req_time(w.occurred_at.as_ref(), "occurred_at")?;
        let customer = customer(w.customer.as_ref())?;
        let order = w.order.as_ref();
        let kind = match type_name.as_str() {
            "order.placed" => EventKind::OrderPlaced {
                order: placed_order(order)?,
            },
            "order.cancelled" => EventKind::OrderCancelled {
                order_id: order_id(order)?,
            },
            "shipment.dispatched" => EventKind::ShipmentDispatched {
                order_id: order_id(order)?,
                shipment: shipment(w.shipment.as_ref())?,
            },
            "shipment.delayed" => EventKind::ShipmentDelayed {
                order_id: order_id(order)?,
                shipment: shipment(w.shipment.as_ref())?,
            },
            "shipment.delivered" => EventKind::ShipmentDelivered {
                order_id: order_id(order)?,
                shipment_id: req_str(field(w.shipment.as_ref(), "id"), "shipment.id")?,
            },
            "return.requested" => EventKind::ReturnRequested {
                order_id: order_id(order)?,
                ret: ret(w.ret.as_ref())?,
            },
            "return.received" => EventKind::ReturnReceived {
                order_id: order_id(order)?,
                return_id: req_str(field(w.ret.as_ref(), "id"), "return.id")?,
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
}

fn field<'a>(obj: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    obj.and_then(|o| o.get(key)).filter(|v| !v.is_null())
}

fn req_str(v: Option<&Value>, name: &'static str) -> Result<String, InvalidEvent> {
    opt_str(v, name)?.ok_or(InvalidEvent::Missing(name))
}

fn opt_str(v: Option<&Value>, name: &'static str) -> Result<Option<String>, InvalidEvent> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad(name, "must not be empty")),
        // No store keeps a NUL in text (PostgreSQL refuses it): bad input,
        // not a store failure.
        Some(Value::String(s)) if s.contains('\0') => {
            Err(bad(name, "must not contain a NUL character"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(name, "must be a string")),
    }
}

fn req_time(v: Option<&Value>, name: &'static str) -> Result<Timestamp, InvalidEvent> {
    opt_time(v, name)?.ok_or(InvalidEvent::Missing(name))
}

fn opt_time(v: Option<&Value>, name: &'static str) -> Result<Option<Timestamp>, InvalidEvent> {
    opt_str(v, name)?
        .map(|s| {
            s.parse::<Timestamp>()
                .map_err(|e| bad(name, format!("not an RFC 3339 timestamp: {e}")))
        })
        .transpose()
}

fn req_money(v: Option<&Value>, name: &'static str) -> Result<Decimal, InvalidEvent> {
    opt_money(v, name)?.ok_or(InvalidEvent::Missing(name))
}

/// Money is a decimal string. A JSON number is refused: it may already have
/// gone through a float on the shop's side.
fn opt_money(v: Option<&Value>, name: &'static str) -> Result<Option<Decimal>, InvalidEvent> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Decimal>()
            .map(Some)
            .map_err(|_| bad(name, format!("`{s}` is not a decimal amount"))),
        Some(_) => Err(bad(name, "must be a decimal string such as \"59.90\"")),
    }
}

fn currency(v: Option<&Value>, name: &'static str) -> Result<String, InvalidEvent> {
    let c = req_str(v, name)?;
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(c)
    } else {
        Err(bad(name, format!("`{c}` is not an ISO 4217 code")))
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> InvalidEvent {
    InvalidEvent::BadField {
        field,
        reason: reason.into(),
    }
}

fn customer(v: Option<&Value>) -> Result<CustomerPatch, InvalidEvent> {
    let id = req_str(field(v, "id"), "customer.id")?;
    let email = opt_str(field(v, "email"), "customer.email")?;
    if let Some(email) = &email {
        validate_address(email)?;
    }
    let name = opt_str(field(v, "name"), "customer.name")?;
    if name
        .as_deref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        return Err(bad("customer.name", "contains control characters"));
    }
    let marketing_consent = match field(v, "marketing_consent") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(bad("customer.marketing_consent", "must be true or false")),
    };
    Ok(CustomerPatch {
        id,
        email,
        name,
        locale: opt_str(field(v, "locale"), "customer.locale")?,
        timezone: opt_str(field(v, "timezone"), "customer.timezone")?,
        marketing_consent,
    })
}

/// An address we can put in a `To:` header: lettre's parser, which rejects
/// whitespace, control characters and anything that is not `local@domain`.
fn validate_address(email: &str) -> Result<(), InvalidEvent> {
    email.parse::<lettre::Address>().map(|_| ()).map_err(|e| {
        bad(
            "customer.email",
            format!("`{email}` is not an address: {e}"),
        )
    })
}

fn order_id(order: Option<&Value>) -> Result<String, InvalidEvent> {
    req_str(field(order, "id"), "order.id")
}

fn placed_order(order: Option<&Value>) -> Result<Order, InvalidEvent> {
    let id = order_id(order)?;
    let total = req_money(field(order, "total"), "order.total")?;
    let currency = currency(field(order, "currency"), "order.currency")?;
    let items = items(field(order, "items"), "order.items", true)?;
    Ok(Order {
        id,
        total,
        currency,
        items,
    })
}

fn items(v: Option<&Value>, name: &'static str, priced: bool) -> Result<Vec<Item>, InvalidEvent> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad(name, "must be an array")),
    };
    list.iter()
        .map(|item| {
            let item = Some(item);
            let quantity = match field(item, "quantity") {
                None => 1,
                Some(q) => q
                    .as_u64()
                    .and_then(|q| u32::try_from(q).ok())
                    .filter(|q| *q > 0)
                    .ok_or_else(|| bad("items[].quantity", "must be a positive integer"))?,
            };
            let unit_price = opt_money(field(item, "unit_price"), "items[].unit_price")?;
            if priced && unit_price.is_none() {
                return Err(InvalidEvent::Missing("order.items[].unit_price"));
            }
            Ok(Item {
                sku: req_str(field(item, "sku"), "items[].sku")?,
                name: req_str(field(item, "name"), "items[].name")?,
                quantity,
                unit_price,
            })
        })
        .collect()
}

fn shipment(v: Option<&Value>) -> Result<Shipment, InvalidEvent> {
    Ok(Shipment {
        id: req_str(field(v, "id"), "shipment.id")?,
        carrier: opt_str(field(v, "carrier"), "shipment.carrier")?,
        tracking_number: opt_str(field(v, "tracking_number"), "shipment.tracking_number")?,
        tracking_url: opt_str(field(v, "tracking_url"), "shipment.tracking_url")?,
        estimated_delivery: opt_time(
            field(v, "estimated_delivery"),
            "shipment.estimated_delivery",
        )?,
    })
}

fn ret(v: Option<&Value>) -> Result<Return, InvalidEvent> {
    Ok(Return {
        id: req_str(field(v, "id"), "return.id")?,
        reason: opt_str(field(v, "reason"), "return.reason")?,
        items: items(field(v, "items"), "return.items", false)?,
    })
}

fn refund(v: Option<&Value>) -> Result<Refund, InvalidEvent> {
    Ok(Refund {
        id: req_str(field(v, "id"), "refund.id")?,
        amount: req_money(field(v, "amount"), "refund.amount")?,
        currency: currency(field(v, "currency"), "refund.currency")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn reasons_quote_at_most_a_bounded_part_of_the_input() {
        let long = "x".repeat(600_000);
        let raw = with(|v| v["type"] = long.clone().into());
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert!(err.len() < 200, "{} bytes", err.len());
        assert!(err.starts_with("unknown event type `xxx"), "{err}");
        assert!(err.ends_with("…`"), "{err}");

        let raw = serde_json::to_vec(&long).unwrap();
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert!(err.len() < 200, "{} bytes", err.len());
        assert!(
            err.starts_with("not valid JSON: invalid type: string"),
            "{err}"
        );
        assert!(err.ends_with("at line 1 column 600002"), "{err}");
    }

    #[test]
    fn a_nul_character_in_an_id_is_bad_input() {
        let raw = with(|v| v["customer"]["id"] = "c-\u{0}1".into());
        let err = Event::decode(&raw).unwrap_err().to_string();
        assert!(err.contains("customer.id") && err.contains("NUL"), "{err}");
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
            (with(|v| v["order"]["total"] = 59.9.into()), "order.total"),
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
