//! The journey core's vocabulary: what starts a rule, the classes of
//! email, the segments, the rules themselves, and the settings of tiers,
//! segments and the timing policy.
//!
//! The configuration file spells them (`[[journey]]`, `[[tier]]`,
//! `[segments]`, `[policy]`), and the configuration embeds them as they
//! are here, `#[serde]` attributes and all; the core needs nothing else of
//! the configuration. [`RulebookConfig`] gathers them for [`super::Rulebook`].

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The configuration's part the journeys follow: the rules, the timing
/// policy, the tiers and segments, and the defaults of customers who say
/// nothing of their locale or time zone. Read with the same names as in
/// the configuration file, other keys ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct RulebookConfig {
    #[serde(rename = "journey")]
    pub rules: Vec<JourneyRule>,
    pub policy: PolicyConfig,
    #[serde(rename = "tier", default)]
    pub tiers: Vec<TierConfig>,
    pub segments: SegmentsConfig,
    pub default_timezone: String,
    pub default_locale: String,
}

/// The shipped configuration file, whose journey parts are
/// [`RulebookConfig::shipped`].
const SHIPPED_TOML: &str = include_str!("../../config/aftercare.toml");

impl RulebookConfig {
    /// The shipped configuration's settings (`config/aftercare.toml`), as
    /// they are compiled in.
    pub fn shipped() -> RulebookConfig {
        toml::from_str(SHIPPED_TOML).expect("the shipped config is valid")
    }
}

/// When a marketing email may go out. Transactional emails are never held
/// back by a policy and do not count toward the cap.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// At most one marketing email per customer in this long (`0s`: no
    /// cap). One over the cap waits for the next allowed moment.
    #[serde(with = "humantime_serde")]
    pub frequency_cap: Duration,
    /// How long the cap or quiet hours may hold a marketing email: from its
    /// due time in a plan, from the moment it is decided on the machine's
    /// clock (its rule's `expires_after` bounds the whole lateness); longer
    /// and it is skipped. A journey rule may set its own `max_delay`.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub quiet_hours: QuietHoursConfig,
    pub adaptive_win_back: AdaptiveWinBackConfig,
}

/// The first win-back at the customer's own rhythm instead of a fixed wait.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveWinBackConfig {
    pub enabled: bool,
    /// Customers with at least this many orders (gaps need a history).
    pub min_orders: usize,
    /// The first win-back at this multiple of the median gap between the
    /// customer's orders...
    pub multiplier: f64,
    /// ...but no sooner than `min` and no later than `max` after the last
    /// order. Later win-backs keep their distance from the first.
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

/// Thresholds of the segments (see the README).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentsConfig {
    /// How far back "recent" orders count.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Recent orders that make a customer frequent.
    pub frequent_orders: usize,
    /// Lifetime spend that makes a customer VIP, by currency (money is
    /// never added across currencies): `{ EUR = "500.00" }`.
    pub vip_spend: BTreeMap<String, Decimal>,
    /// Customers in this top percentage of lifetime spend are VIP too
    /// (`0`: off), once the shop has `vip_min_customers`.
    pub vip_top_percent: f64,
    pub vip_min_customers: u64,
}

/// A loyalty tier: reached by order count or lifetime spend, whichever
/// comes first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Stable id, for templates (`{{#if (eq tier.id "gold")}}`).
    pub id: String,
    pub min_orders: Option<u32>,
    /// Lifetime spend by currency: `{ EUR = "1000.00", AMD = "450000" }`.
    #[serde(default)]
    pub min_spend: BTreeMap<String, Decimal>,
    /// The tier's name and benefits by locale; `default_locale` is
    /// required, other locales fall back to it.
    pub name: BTreeMap<String, String>,
    #[serde(default)]
    pub benefits: BTreeMap<String, String>,
}

/// Local hours in the customer's time zone when no marketing email goes out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    pub enabled: bool,
    /// `HH:MM`, local time; the window may span midnight (`21:00`-`08:00`).
    pub start: String,
    pub end: String,
    /// Emails held until the window's end go out spread over this long
    /// (a fixed offset per customer), not all at once.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
}

impl QuietHoursConfig {
    /// `(start, end)`, validated with the config.
    pub fn window(&self) -> Option<(jiff::civil::Time, jiff::civil::Time)> {
        if !self.enabled {
            return None;
        }
        Some((parse_hhmm(&self.start)?, parse_hhmm(&self.end)?))
    }
}

/// A time of day as the quiet hours spell it, `HH:MM`.
pub fn parse_hhmm(s: &str) -> Option<jiff::civil::Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    jiff::civil::Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// What starts a journey rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Trigger {
    #[serde(rename = "order.placed")]
    OrderPlaced,
    #[serde(rename = "order.cancelled")]
    OrderCancelled,
    #[serde(rename = "shipment.dispatched")]
    ShipmentDispatched,
    #[serde(rename = "shipment.delayed")]
    ShipmentDelayed,
    #[serde(rename = "shipment.delivered")]
    ShipmentDelivered,
    #[serde(rename = "return.requested")]
    ReturnRequested,
    #[serde(rename = "return.received")]
    ReturnReceived,
    #[serde(rename = "refund.issued")]
    RefundIssued,
    /// No order for `delay` after the customer's last one.
    #[serde(rename = "inactivity")]
    Inactivity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailClass {
    /// Always sent (unless the address hard-bounced).
    Transactional,
    /// Needs marketing consent and no unsubscribe.
    Marketing,
}

impl EmailClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Marketing => "marketing",
        }
    }

    /// As the stores keep it; anything but `marketing` is transactional.
    pub fn from_stored(s: &str) -> EmailClass {
        if s == "marketing" {
            Self::Marketing
        } else {
            Self::Transactional
        }
    }
}

/// Narrows a trigger to the first time it happens for a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Only {
    FirstOrder,
    FirstDelivery,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyRule {
    /// Template id: `templates/<locale>/<template>.*.hbs`.
    pub template: String,
    pub on: Trigger,
    pub class: EmailClass,
    /// Time after the trigger's `occurred_at` (for `inactivity`: after the
    /// last order) at which the email is due.
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    pub only: Option<Only>,
    /// For `order.placed`: send only when the order is the customer's n-th
    /// (cancelled orders do not count).
    #[serde(default)]
    pub milestones: Vec<u32>,
    /// Events about the same order that cancel this email while it waits.
    /// (`order.cancelled` always cancels every pending email of its order.)
    #[serde(default)]
    pub cancel_on: Vec<Trigger>,
    /// A/B test: variant name to weight. Variant `a` is the template's own
    /// files; any other, say `b`, is `<template>.b.{subject,html,txt}.hbs`.
    /// Each customer gets one variant per template, always the same (a hash
    /// of customer and template), so a resend or a replay never switches.
    #[serde(default)]
    pub variants: BTreeMap<String, u32>,
    /// Overrides `policy.max_delay` for this template (marketing only).
    #[serde(with = "humantime_serde", default)]
    pub max_delay: Option<Duration>,
    /// An email of this rule that would go out later than its due time
    /// plus this is not sent (`suppressed`, `expired`), whatever made it
    /// late. Default: [`JourneyRule::DEFAULT_EXPIRY_TRANSACTIONAL`] or
    /// [`JourneyRule::DEFAULT_EXPIRY_MARKETING`].
    #[serde(with = "humantime_serde", default)]
    pub expires_after: Option<Duration>,
    /// For `order.placed`: send when the order makes the customer reach a
    /// loyalty tier (`[[tier]]`).
    #[serde(default)]
    pub tiers: bool,
    /// Only for customers in one of these segments (as of the trigger).
    #[serde(default)]
    pub segments: Vec<Segment>,
    /// Another delay for customers in a segment (the first that applies).
    #[serde(default, with = "segment_delays")]
    pub delay_by_segment: BTreeMap<Segment, Duration>,
    /// `false` removes the rule (of this template, from the layers under
    /// the file too).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Groups of customers by their history (see the README for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Vip,
    Lapsed,
    New,
    FrequentSmall,
    RareLarge,
    Regular,
}

impl Segment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vip => "vip",
            Self::Lapsed => "lapsed",
            Self::New => "new",
            Self::FrequentSmall => "frequent_small",
            Self::RareLarge => "rare_large",
            Self::Regular => "regular",
        }
    }
}

/// `{ vip = "30d" }` with humantime durations.
mod segment_delays {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Segment;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Segment, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        map.iter()
            .map(|(k, v)| (*k, humantime::format_duration(*v).to_string()))
            .collect::<BTreeMap<_, _>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Segment, Duration>, D::Error> {
        BTreeMap::<Segment, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k, d))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

impl JourneyRule {
    /// How late a transactional email may still go out, unless its rule
    /// says otherwise.
    pub const DEFAULT_EXPIRY_TRANSACTIONAL: Duration = Duration::from_secs(2 * 86_400);
    /// How late a marketing email may still go out, unless its rule says
    /// otherwise.
    pub const DEFAULT_EXPIRY_MARKETING: Duration = Duration::from_secs(7 * 86_400);

    /// `expires_after`, or the default of the rule's class.
    pub fn expiry(&self) -> Duration {
        self.expires_after
            .unwrap_or_else(|| Self::default_expiry(self.class))
    }

    /// How late an email of `class` may go out when no rule says: a rule
    /// without `expires_after`, or an email whose rule was removed.
    pub fn default_expiry(class: EmailClass) -> Duration {
        match class {
            EmailClass::Transactional => Self::DEFAULT_EXPIRY_TRANSACTIONAL,
            EmailClass::Marketing => Self::DEFAULT_EXPIRY_MARKETING,
        }
    }
}

/// The variant whose files are the template's own.
pub const BASE_VARIANT: &str = "a";

/// The variant that sends nothing: its customers are the holdout group the
/// report compares the senders with (marketing rules only).
pub const HOLDOUT_VARIANT: &str = "holdout";

fn yes() -> bool {
    true
}
