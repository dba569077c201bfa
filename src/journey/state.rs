//! What we remember of one customer between events.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::{CustomerPatch, Eta, Item, Shipment};

/// One customer's journey. Stored as one row per customer; every field has a
/// default so that rows written by an older version still load, and a field
/// at its default is not written (the row is read and written with every
/// event of the customer: most of an order's fields stay empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Journey {
    #[serde(skip_serializing_if = "is_default")]
    pub profile: Profile,
    #[serde(skip_serializing_if = "is_default")]
    pub orders: BTreeMap<String, OrderState>,
    /// Any order was ever placed (for `only = "first_order"`).
    #[serde(skip_serializing_if = "is_default")]
    pub ordered_before: bool,
    /// Any shipment was ever delivered (for `only = "first_delivery"`).
    #[serde(skip_serializing_if = "is_default")]
    pub delivered_before: bool,
    /// Milestones (order counts) already congratulated.
    #[serde(skip_serializing_if = "is_default")]
    pub milestones: BTreeSet<u32>,
    /// Loyalty tiers reached (ids).
    #[serde(skip_serializing_if = "is_default")]
    pub tiers: BTreeSet<String>,
    /// The order inactivity timers count from, and when it was placed.
    #[serde(skip_serializing_if = "is_default")]
    pub last_order: Option<(String, Timestamp)>,
    /// When the last marketing email went out: the frequency cap counts
    /// from it. The time it was approved at: on the machine's clock, the
    /// real time, so that a backlog does not send a customer several
    /// marketing emails at once; in a plan, its fire time.
    #[serde(skip_serializing_if = "is_default")]
    pub last_marketing_at: Option<Timestamp>,
}

/// The customer as the latest events describe them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    #[serde(skip_serializing_if = "is_default")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub name: Option<String>,
    /// The given name as an event gave it; `None` when events gave only
    /// the full name (see [`Profile::first_name`]). Absent in rows written
    /// before it existed.
    #[serde(skip_serializing_if = "is_default")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub timezone: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub marketing_consent: bool,
    /// Set by the unsubscribe link; never cleared by an event.
    #[serde(skip_serializing_if = "is_default")]
    pub unsubscribed: bool,
}

impl Profile {
    /// Takes what the event knows; keeps what it does not mention.
    pub fn apply(&mut self, patch: &CustomerPatch) {
        if let Some(email) = &patch.email {
            self.email = Some(email.clone());
        }
        if let Some(name) = &patch.name {
            // A new full name without a given name: the one kept went with
            // the old name (a corrected or changed name), so derive again.
            if patch.first_name.is_none() && self.name.as_ref() != Some(name) {
                self.first_name = None;
            }
            self.name = Some(name.clone());
        }
        if let Some(first_name) = &patch.first_name {
            self.first_name = Some(first_name.clone());
        }
        if let Some(locale) = &patch.locale {
            self.locale = Some(locale.clone());
        }
        if let Some(tz) = &patch.timezone {
            self.timezone = Some(tz.clone());
        }
        if let Some(consent) = patch.marketing_consent {
            self.marketing_consent = consent;
        }
    }

    /// What greetings and subjects call the customer: the given name an
    /// event gave, else one derived from the full name
    /// ([`first_name_of`]), else `None`.
    pub fn first_name(&self) -> Option<String> {
        self.first_name
            .clone()
            .or_else(|| self.name.as_deref().and_then(first_name_of))
    }
}

/// The given name in a full name, for a shop whose customers (English,
/// Armenian, Amharic) write the given name first: the first word of
/// `name`, or of what follows the comma in `Family, Given`. Words are
/// separated by white space or the Ethiopic wordspace `፡`. A name of one
/// word is its own first name. `None` when there is no word, or when the
/// first word is an initial or an abbreviated title (`J. Smith`,
/// `Dr. Anna Smith`, `A Smith`): "Hello" reads better than "Hi Dr.".
pub fn first_name_of(name: &str) -> Option<String> {
    let given = match name.split_once(',') {
        Some((_, given)) if !given.trim().is_empty() => given,
        Some((family, _)) => family,
        None => name,
    };
    let mut words = given
        .split(|c: char| c.is_whitespace() || c == '\u{1361}')
        .filter(|w| !w.is_empty());
    let first = words.next()?;
    let initial = first.chars().count() == 1 && words.next().is_some();
    (!first.ends_with('.') && !initial).then(|| first.to_owned())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderState {
    /// `None` while only later events of the order were seen.
    #[serde(skip_serializing_if = "is_default")]
    pub placed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "is_default")]
    pub total: Option<Decimal>,
    #[serde(skip_serializing_if = "is_default")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub items: Vec<Item>,
    #[serde(skip_serializing_if = "is_default")]
    pub cancelled: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub return_requested: bool,
    #[serde(skip_serializing_if = "is_default")]
    pub delivered_shipments: BTreeSet<String>,
    /// What the order's shipment events said of each parcel, so that a
    /// later email (a delay, a delivery follow-up) knows the carrier and
    /// tracking its dispatch gave.
    #[serde(skip_serializing_if = "is_default")]
    pub shipments: BTreeMap<String, ShipmentNote>,
    /// The milestone this order reached, if any.
    #[serde(skip_serializing_if = "is_default")]
    pub milestone: Option<u32>,
    /// The tiers this order reached, the highest last.
    #[serde(skip_serializing_if = "is_default")]
    pub tiers_reached: Vec<String>,
    /// Returns requested for this order, for the retention report; at most
    /// [`MAX_NOTES`].
    #[serde(skip_serializing_if = "is_default")]
    pub returns: Vec<ReturnNote>,
    /// Refunds issued on this order, for the retention report's refunds and
    /// net revenue; at most [`MAX_NOTES`].
    #[serde(skip_serializing_if = "is_default")]
    pub refunds: Vec<RefundNote>,
}

/// The most return requests, and the most refunds, one order keeps. A real
/// order has a handful; a feed sending thousands of ids for one order must
/// not grow the customer's row without end (the row is read and written
/// with every event of the customer). What is past it is not reported.
pub const MAX_NOTES: usize = 100;

/// A parcel as its events described it, the latest word on each field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipmentNote {
    #[serde(skip_serializing_if = "is_default")]
    pub carrier: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub tracking_number: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub tracking_url: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub estimated_delivery: Option<Eta>,
}

impl ShipmentNote {
    /// Takes what `shipment` says; keeps what it does not mention.
    pub fn apply(&mut self, shipment: &Shipment) {
        let take = |kept: &mut Option<String>, said: &Option<String>| {
            if said.is_some() {
                kept.clone_from(said);
            }
        };
        take(&mut self.carrier, &shipment.carrier);
        take(&mut self.tracking_number, &shipment.tracking_number);
        take(&mut self.tracking_url, &shipment.tracking_url);
        if shipment.estimated_delivery.is_some() {
            self.estimated_delivery = shipment.estimated_delivery;
        }
    }
}

/// A return request as the report needs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReturnNote {
    pub id: String,
    pub reason: Option<String>,
    pub requested_at: Option<Timestamp>,
}

/// A refund as the report needs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefundNote {
    pub id: String,
    pub amount: Decimal,
    /// The refund's own: a refund says its currency, as an order does.
    pub currency: String,
    /// The event's time.
    pub issued_at: Option<Timestamp>,
}

/// Whether `value` is its type's default: such a field is left out of the
/// stored JSON and read back as the default.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl OrderState {
    /// Whether the order counts as one of the customer's orders.
    pub fn counts(&self) -> bool {
        self.placed_at.is_some() && !self.cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_name_of_a_full_name() {
        let cases = [
            ("Anna", Some("Anna")),
            ("Anna Miller", Some("Anna")),
            ("  Anna   Miller ", Some("Anna")),
            ("Anna-Maria von Berg", Some("Anna-Maria")),
            ("Miller, Anna", Some("Anna")),
            ("Miller,Anna Sophie", Some("Anna")),
            ("Miller,", Some("Miller")),
            ("Անի Սարգսյան", Some("Անի")),
            ("Սարգսյան, Անի", Some("Անի")),
            ("አበበ በቀለ", Some("አበበ")),
            ("አበበ፡በቀለ", Some("አበበ")),
            ("Anna\u{a0}Miller", Some("Anna")),
            ("J. Smith", None),
            ("Dr. Anna Smith", None),
            ("A Smith", None),
            ("Q", Some("Q")),
            (",", None),
            ("", None),
            ("   ", None),
        ];
        for (name, want) in cases {
            assert_eq!(first_name_of(name).as_deref(), want, "{name:?}");
        }
    }

    fn patch(name: Option<&str>, first_name: Option<&str>) -> CustomerPatch {
        CustomerPatch {
            id: "c-1".into(),
            name: name.map(Into::into),
            first_name: first_name.map(Into::into),
            ..CustomerPatch::default()
        }
    }

    #[test]
    fn the_given_first_name_wins_until_the_full_name_changes_without_one() {
        let mut p = Profile::default();
        assert_eq!(p.first_name(), None);
        p.apply(&patch(Some("Miller Anna"), None));
        assert_eq!(p.first_name().as_deref(), Some("Miller"));
        p.apply(&patch(Some("Miller Anna"), Some("Anna")));
        assert_eq!(p.first_name().as_deref(), Some("Anna"));
        // Later events without names, or with the same name, keep it.
        p.apply(&patch(None, None));
        p.apply(&patch(Some("Miller Anna"), None));
        assert_eq!(p.first_name().as_deref(), Some("Anna"));
        // A first name alone updates it.
        p.apply(&patch(None, Some("Ani")));
        assert_eq!(p.first_name().as_deref(), Some("Ani"));
        // A new full name alone: the kept first name was the old name's.
        p.apply(&patch(Some("Maria Petrosyan"), None));
        assert_eq!(p.first_name.as_deref(), None);
        assert_eq!(p.first_name().as_deref(), Some("Maria"));
    }

    #[test]
    fn a_profile_stored_before_first_names_loads_and_derives_one() {
        let stored = r#"{"email":"anna@example.com","name":"Anna Miller","locale":"hy","timezone":null,"marketing_consent":true,"unsubscribed":false}"#;
        let p: Profile = serde_json::from_str(stored).unwrap();
        assert_eq!(p.first_name, None);
        assert_eq!(p.first_name().as_deref(), Some("Anna"));
        let again: Profile = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn fields_at_their_default_are_not_stored_and_load_as_defaults() {
        let mut journey = Journey::default();
        journey.profile.email = Some("anna@example.com".into());
        journey.orders.insert(
            "o-1".into(),
            OrderState {
                total: Some(Decimal::new(995, 2)),
                ..OrderState::default()
            },
        );
        let stored = serde_json::to_string(&journey).unwrap();
        assert_eq!(
            stored,
            r#"{"profile":{"email":"anna@example.com"},"orders":{"o-1":{"total":"9.95"}}}"#
        );
        assert_eq!(serde_json::from_str::<Journey>(&stored).unwrap(), journey);
        // As rows written with every field still read.
        let full = r#"{"profile":{"email":"anna@example.com","name":null,"first_name":null,"locale":null,"timezone":null,"marketing_consent":false,"unsubscribed":false},"orders":{"o-1":{"placed_at":null,"total":"9.95","currency":null,"items":[],"cancelled":false,"return_requested":false,"delivered_shipments":[],"shipments":{},"milestone":null,"tiers_reached":[],"returns":[],"refunds":[]}},"ordered_before":false,"delivered_before":false,"milestones":[],"tiers":[],"last_order":null,"last_marketing_at":null}"#;
        assert_eq!(serde_json::from_str::<Journey>(full).unwrap(), journey);
    }
}
