//! No email can fail at send time on any event the decoder accepts.
//!
//! Random event logs (orders of 0 to 20 items with extreme amounts and
//! many currencies, cancellations, dispatches with and without carrier,
//! tracking and expected day, delays without a date, deliveries, returns,
//! refunds, enough orders for the loyalty milestones; customers with and
//! without a name, a first name, a locale with or without a region, a time
//! zone; long, Armenian, Amharic and markup text; times from 1970 to 2199)
//! go through the real pipeline (`simulate_with`, which builds the
//! template data `run` renders). Every approved email is then sent by the
//! real `Sender` (render, then build the message) to a mailer that keeps
//! nothing, in every locale (`en`, `hy`, `am`, each also with a region),
//! and must be sent, never `failed`.
//!
//! `tests/integration/template_data.rs` holds the templates to data generated from
//! the schema; this test holds the schema and the pipeline to the events.
//! 24 logs in CI; `PROPTEST_CASES=500` runs more.

use std::sync::Arc;

use aftercare::check;
use aftercare::config::Config;
use aftercare::event::Event;
use aftercare::journey::Rulebook;
use aftercare::mailer::AnyMailer;
use aftercare::pipeline::{Context, LeasePolicy, Pipeline};
use aftercare::render::variant_template;
use aftercare::sender::{Outcome, Sender};
use aftercare::simulate::simulate_with;
use aftercare::source::FileSource;
use aftercare::store::{EmailRow, SqliteStore};
use aftercare::unsubscribe::Signer;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Free text as shops and customers write it, at most `max` characters,
/// never blank (the decoder refuses blank text).
fn text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z][A-Za-z '-]{0,20}",
        1 => Just("Անի Սարգսյան".to_owned()),
        1 => Just("አበበ በቀለ".to_owned()),
        1 => Just("<b>bold</b> & \"quotes\" 'x' {{shop.name}}".to_owned()),
        1 => "\\PC{1,60}",
        1 => proptest::string::string_regex(&format!("\\PC{{{max}}}")).unwrap(),
    ]
    .prop_map(move |s| s.chars().take(max).collect::<String>())
    .prop_filter("not blank", |s| !s.trim().is_empty())
    .boxed()
}

/// A full name: one word, given name first, `Family, Given`, a title, or
/// anything.
fn name() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => "[A-Z][a-z]{0,12}".prop_map(Some),
        2 => ("[A-Z][a-z]{1,12}", "[A-Z][a-z]{1,12}").prop_map(|(g, f)| Some(format!("{g} {f}"))),
        1 => ("[A-Z][a-z]{1,12}", "[A-Z][a-z]{1,12}").prop_map(|(g, f)| Some(format!("{f}, {g}"))),
        1 => prop::sample::select(vec![
            "Անի Սարգսյան", "Սարգսյան, Անի", "አበበ በቀለ", "አበበ፡በቀለ", "Dr. Anna Smith", "J. Smith", ",",
        ])
        .prop_map(|s| Some(s.to_owned())),
        1 => text(500).prop_map(Some),
    ]
    .boxed()
}

/// An amount the decoder takes: zero to 10^12, up to 8 places, as a
/// string or as a JSON number.
fn amount(positive: bool) -> BoxedStrategy<Value> {
    let low = u64::from(positive);
    prop_oneof![
        (low..100_000).prop_map(|c| format!("{}.{:02}", c / 100, c % 100)),
        (low..=1_000_000_000_000).prop_map(|n| n.to_string()),
        (0u64..10_000, 1u64..100_000_000).prop_map(|(i, f)| format!("{i}.{f:08}")),
        prop::sample::select(vec!["1000000000000", "999999999999.99999999", "0.00000001"])
            .prop_map(str::to_owned),
    ]
    .prop_filter("positive", move |s| {
        !positive || s.parse::<f64>().unwrap() > 0.0
    })
    .prop_flat_map(|s| {
        let number = serde_json::from_str::<Value>(&s).unwrap();
        prop_oneof![Just(Value::String(s)), Just(number)]
    })
    .boxed()
}

fn currency() -> BoxedStrategy<String> {
    prop::sample::select(vec!["EUR", "USD", "AMD", "ETB", "JPY", "BHD", "GBP", "XYZ"])
        .prop_map(str::to_owned)
        .boxed()
}

/// An item: a SKU, a name, or both; quantity and price optional.
fn item() -> BoxedStrategy<Value> {
    (
        prop_oneof![
            Just((Some("TEA-01".to_owned()), None)),
            text(500).prop_map(|n| (None, Some(n))),
            ("[A-Z]{2,5}-[0-9]{1,4}", text(500)).prop_map(|(s, n)| (Some(s), Some(n))),
        ],
        prop::option::of(prop_oneof![Just(1u64), 1u64..=1_000_000]),
        prop::option::of(amount(false)),
    )
        .prop_map(|((sku, name), quantity, unit_price)| {
            let mut item = json!({});
            for (key, value) in [
                ("sku", sku.map(Value::from)),
                ("name", name.map(Value::from)),
                ("quantity", quantity.map(Value::from)),
                ("unit_price", unit_price),
            ] {
                if let Some(value) = value {
                    item[key] = value;
                }
            }
            item
        })
        .boxed()
}

fn items() -> BoxedStrategy<Vec<Value>> {
    prop::collection::vec(item(), 0..=20).boxed()
}

/// An expected delivery: a day or a moment with an offset.
fn eta() -> BoxedStrategy<String> {
    prop_oneof![
        (1970i16..2200, 1i8..=12, 1i8..=28).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        (0i64..7_258_118_400, -12i32..=14).prop_map(|(s, h)| {
            let offset = jiff::tz::Offset::from_hours(h as i8).unwrap();
            Timestamp::from_second(s)
                .unwrap()
                .display_with_offset(offset)
                .to_string()
        }),
    ]
    .boxed()
}

/// Whatever a shop puts in a tracking link: the decoder keeps any text.
fn link() -> BoxedStrategy<String> {
    prop_oneof![
        "https://track\\.example/[a-z0-9/?=&]{0,40}",
        Just("javascript:alert(1)".to_owned()),
        text(2_000),
    ]
    .boxed()
}

/// What the customer fields of an event say: each absent or a value.
#[derive(Debug, Clone)]
struct Who {
    name: Option<String>,
    first_name: Option<String>,
    locale: Option<&'static str>,
    timezone: Option<&'static str>,
    consent: Option<bool>,
}

fn who() -> impl Strategy<Value = Who> {
    (
        name(),
        prop::option::of(text(500)),
        prop::option::of(prop::sample::select(vec![
            "en", "en-US", "en-GB", "hy", "hy-AM", "am", "am-ET", "HY_am", "fr-FR", "zz",
        ])),
        prop::option::of(prop::sample::select(vec![
            "UTC",
            "Asia/Yerevan",
            "Africa/Addis_Ababa",
            "America/New_York",
            "Pacific/Kiritimati",
            "Mars/Olympus_Mons",
        ])),
        prop_oneof![3 => Just(Some(true)), 1 => Just(Some(false)), 1 => Just(None)],
    )
        .prop_map(|(name, first_name, locale, timezone, consent)| Who {
            name,
            first_name,
            locale,
            timezone,
            consent,
        })
}

/// One event of a customer's order.
#[derive(Debug, Clone)]
enum Step {
    Place {
        total: Value,
        currency: String,
        items: Vec<Value>,
    },
    Cancel,
    Dispatch {
        carrier: Option<String>,
        tracking_number: Option<String>,
        tracking_url: Option<String>,
        eta: Option<String>,
    },
    Delay {
        eta: Option<String>,
    },
    Deliver,
    ReturnRequested {
        reason: Option<String>,
        items: Vec<Value>,
    },
    ReturnReceived,
    Refund {
        amount: Value,
        currency: String,
    },
}

fn step() -> BoxedStrategy<Step> {
    prop_oneof![
        5 => (amount(false), currency(), items())
            .prop_map(|(total, currency, items)| Step::Place { total, currency, items }),
        1 => Just(Step::Cancel),
        2 => (
            prop::option::of(text(500)),
            prop::option::of(text(500)),
            prop::option::of(link()),
            prop::option::of(eta()),
        )
            .prop_map(|(carrier, tracking_number, tracking_url, eta)| Step::Dispatch {
                carrier,
                tracking_number,
                tracking_url,
                eta,
            }),
        2 => prop::option::of(eta()).prop_map(|eta| Step::Delay { eta }),
        2 => Just(Step::Deliver),
        1 => (prop::option::of(text(2_000)), items())
            .prop_map(|(reason, items)| Step::ReturnRequested { reason, items }),
        1 => Just(Step::ReturnReceived),
        1 => (amount(true), currency()).prop_map(|(amount, currency)| Step::Refund { amount, currency }),
    ]
    .boxed()
}

/// One line of the log: customer (0 or 1), their order (0 to 3), the step,
/// whether the event names its customer (an order always does) and with
/// which fields, minutes after the previous event.
type Line = (u8, u8, Step, bool, Who, u32);

fn log() -> impl Strategy<Value = (String, String, Vec<Line>)> {
    (
        // The first event: in 1970, today, or near the end of the range
        // (the log then spans at most five years).
        prop::sample::select(vec![
            "1970-01-01T00:00:00Z".to_owned(),
            "2026-01-06T09:00:00Z".to_owned(),
            "2194-12-01T00:00:00Z".to_owned(),
        ]),
        // How order ids look: short, a shop's `#`, Armenian, near 256 bytes.
        prop::sample::select(vec![
            "o-".to_owned(),
            "#".to_owned(),
            "Պատվեր-".to_owned(),
            "9".repeat(240),
        ]),
        prop::collection::vec(
            (
                0u8..2,
                0u8..4,
                step(),
                any::<bool>(),
                who(),
                // Up to 60 days.
                0u32..(60 * 24 * 60),
            ),
            1..40,
        ),
    )
}

/// The JSONL of a log.
fn jsonl(start: &str, prefix: &str, lines: &[Line]) -> String {
    let mut at: Timestamp = start.parse().unwrap();
    let mut out = String::new();
    for (i, (c, o, step, named, who, gap)) in lines.iter().enumerate() {
        at += SignedDuration::from_mins(i64::from(*gap));
        let order = format!("{prefix}{c}-{o}");
        let mut customer = json!({"id": format!("c-{c}"), "email": format!("c{c}@example.com")});
        for (key, value) in [
            ("name", who.name.clone().map(Value::from)),
            ("first_name", who.first_name.clone().map(Value::from)),
            ("locale", who.locale.map(Value::from)),
            ("timezone", who.timezone.map(Value::from)),
            ("marketing_consent", who.consent.map(Value::from)),
        ] {
            if let Some(value) = value {
                customer[key] = value;
            }
        }
        let mut event = json!({"event_id": format!("e-{i}"), "occurred_at": at.to_string()});
        let shipment = format!("s-{order}");
        let (kind, body) = match step {
            Step::Place {
                total,
                currency,
                items,
            } => (
                "order.placed",
                json!({"order": {"id": order, "total": total, "currency": currency, "items": items}}),
            ),
            Step::Cancel => ("order.cancelled", json!({"order": {"id": order}})),
            Step::Dispatch {
                carrier,
                tracking_number,
                tracking_url,
                eta,
            } => (
                "shipment.dispatched",
                json!({"order": {"id": order}, "shipment": {
                    "id": shipment, "carrier": carrier, "tracking_number": tracking_number,
                    "tracking_url": tracking_url, "estimated_delivery": eta,
                }}),
            ),
            Step::Delay { eta } => (
                "shipment.delayed",
                json!({"order": {"id": order}, "shipment": {"id": shipment, "estimated_delivery": eta}}),
            ),
            Step::Deliver => (
                "shipment.delivered",
                json!({"order": {"id": order}, "shipment": {"id": shipment}}),
            ),
            Step::ReturnRequested { reason, items } => (
                "return.requested",
                json!({"order": {"id": order}, "return": {"id": format!("r-{order}"), "reason": reason, "items": items}}),
            ),
            Step::ReturnReceived => (
                "return.received",
                json!({"order": {"id": order}, "return": {"id": format!("r-{order}")}}),
            ),
            Step::Refund { amount, currency } => (
                "refund.issued",
                json!({"order": {"id": order}, "refund": {"id": format!("f-{order}"), "amount": amount, "currency": currency}}),
            ),
        };
        event["type"] = kind.into();
        if let (Value::Object(event), Value::Object(body)) = (&mut event, body) {
            event.extend(body);
        }
        if *named || kind == "order.placed" {
            event["customer"] = customer;
        }
        let line = event.to_string();
        // The generators make only events the decoder accepts.
        if let Err(e) = Event::decode(line.as_bytes()) {
            panic!("the decoder refuses a generated event: {e}\n{line}");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The shipped configuration and templates, loaded once.
struct Shop {
    config: Config,
    templates: Arc<arc_swap::ArcSwap<aftercare::render::Templates>>,
    runtime: tokio::runtime::Runtime,
}

fn shop() -> &'static Shop {
    static SHOP: std::sync::OnceLock<Shop> = std::sync::OnceLock::new();
    SHOP.get_or_init(|| {
        let config = Config::embedded();
        let templates = check::load(&config).expect("the shipped templates load");
        Shop {
            config,
            templates: Arc::new(arc_swap::ArcSwap::from_pointee(templates)),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    })
}

/// The approved emails of a log, with the data the daemon renders.
fn approved(jsonl: &str) -> Vec<EmailRow> {
    let shop = shop();
    let config = &shop.config;
    let context = Context {
        locales: shop.templates.load().locales().clone(),
        default_timezone: config.default_timezone.clone(),
        unsubscribe_url: config.shop.unsubscribe_url.clone(),
        signer: Signer::new(b"random events"),
    };
    let pipeline = Pipeline::new(
        SqliteStore::in_memory().unwrap(),
        Rulebook::from_config(config.rulebook_config()),
        context,
        100,
        LeasePolicy {
            owner: "random-events".into(),
            duration: SignedDuration::from_mins(5),
        },
    )
    .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), jsonl).unwrap();
    let mut source = FileSource::open(
        file.path().to_str().unwrap(),
        std::time::Duration::ZERO,
        1 << 20,
    )
    .unwrap();
    let mut emails = Vec::new();
    simulate_with(pipeline, &mut source, None, &mut |e| emails.push(e.clone())).unwrap();
    emails
}

/// A region for each locale, as customers' tags carry one.
fn with_region(locale: &str) -> String {
    match locale {
        "en" => "en-US".to_owned(),
        "hy" => "hy-AM".to_owned(),
        "am" => "am-ET".to_owned(),
        other => format!("{other}-001"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_email_fails_at_send_time_on_any_event_the_decoder_accepts((start, prefix, lines) in log()) {
        let log = jsonl(&start, &prefix, &lines);
        let emails = approved(&log);
        let shop = shop();
        let sender = Sender::new(&shop.config, Arc::clone(&shop.templates), AnyMailer::Null);
        let locales = shop.templates.load().locales().available().to_vec();
        for email in &emails {
            prop_assert!(email.recipient.is_some(), "approved without an address: {email:?}");
            for locale in &locales {
                for tag in [locale.clone(), with_region(locale)] {
                    let mut email = email.clone();
                    email.locale = Some(locale.clone());
                    email.data["customer"]["locale"] = tag.clone().into();
                    let outcome = shop.runtime.block_on(sender.deliver(&email, email.fire_at));
                    prop_assert!(
                        matches!(outcome, Outcome::Sent { .. }),
                        "{} ({}) in {tag}: {outcome:?}\ndata: {:#}\nlog:\n{log}",
                        variant_template(&email.template, email.variant.as_deref()),
                        email.key,
                        email.data
                    );
                }
            }
        }
    }
}
