//! What we remember of one customer between events.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::{CustomerPatch, Eta, Item, Shipment};

/// One customer's journey. Stored as one row per customer; every field has a
/// default so that rows written by an older version still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Journey {
    pub profile: Profile,
    pub orders: BTreeMap<String, OrderState>,
    /// Any order was ever placed (for `only = "first_order"`).
    pub ordered_before: bool,
    /// Any shipment was ever delivered (for `only = "first_delivery"`).
    pub delivered_before: bool,
    /// Milestones (order counts) already congratulated.
    pub milestones: BTreeSet<u32>,
    /// Loyalty tiers reached (ids).
    pub tiers: BTreeSet<String>,
    /// The order inactivity timers count from, and when it was placed.
    pub last_order: Option<(String, Timestamp)>,
    /// When the last marketing email went out (approved at its fire
    /// time): the frequency cap counts from it.
    pub last_marketing_at: Option<Timestamp>,
}

/// The customer as the latest events describe them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub email: Option<String>,
    pub name: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub marketing_consent: bool,
    /// Set by the unsubscribe link; never cleared by an event.
    pub unsubscribed: bool,
}

impl Profile {
    /// Takes what the event knows; keeps what it does not mention.
    pub fn apply(&mut self, patch: &CustomerPatch) {
        if let Some(email) = &patch.email {
            self.email = Some(email.clone());
        }
        if let Some(name) = &patch.name {
            self.name = Some(name.clone());
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderState {
    /// `None` while only later events of the order were seen.
    pub placed_at: Option<Timestamp>,
    pub total: Option<Decimal>,
    pub currency: Option<String>,
    pub items: Vec<Item>,
    pub cancelled: bool,
    pub return_requested: bool,
    pub delivered_shipments: BTreeSet<String>,
    /// What the order's shipment events said of each parcel, so that a
    /// later email (a delay, a delivery follow-up) knows the carrier and
    /// tracking its dispatch gave.
    pub shipments: BTreeMap<String, ShipmentNote>,
    /// The milestone this order reached, if any.
    pub milestone: Option<u32>,
    /// The tiers this order reached, the highest last.
    pub tiers_reached: Vec<String>,
    /// Returns requested for this order, for the retention report.
    pub returns: Vec<ReturnNote>,
}

/// A parcel as its events described it, the latest word on each field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShipmentNote {
    pub carrier: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_url: Option<String>,
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

impl OrderState {
    /// Whether the order counts as one of the customer's orders.
    pub fn counts(&self) -> bool {
        self.placed_at.is_some() && !self.cancelled
    }
}
