//! Property tests over generated inputs (proptest): the promises that must
//! hold for any event log, not only the examples.
//!
//! - The journey machine with the shipped policies, through the real
//!   pipeline (`simulate`): no marketing email goes out after its order was
//!   cancelled, or to a customer without consent at that moment, or inside
//!   quiet hours, or within the frequency cap of another; transactional
//!   emails are never held back; nothing goes out before it is due.
//! - The event decoder never panics on any bytes, and refuses what breaks
//!   the contract with a reason.
//! - Extreme numbers and dates (amounts past what a decimal holds, times in
//!   the year 9999, huge quantities) never panic the decoder, the journeys
//!   or the shop's figures: each event is applied or refused.
//! - Customer data can never add a header to an email, nor an element or
//!   attribute to its HTML, and a link from an event is never a script.
//!
//! Case counts are small by default (CI); `PROPTEST_CASES=2000` runs more.

use std::collections::BTreeMap;

use aftercare::check;
use aftercare::config::Config;
use aftercare::event::Event;
use aftercare::journey::Rulebook;
use aftercare::pipeline::{Context, LeasePolicy, Pipeline};
use aftercare::render::Rendered;
use aftercare::simulate::{PlanLine, simulate};
use aftercare::source::FileSource;
use aftercare::store::SqliteStore;
use aftercare::unsubscribe::Signer;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

/// One generated event: which customer, what happens, how long after the
/// previous event.
#[derive(Debug, Clone)]
enum Step {
    Place { order: u8, total_cents: u32 },
    Cancel { order: u8 },
    Dispatch { order: u8 },
    Deliver { order: u8 },
    Return { order: u8 },
    Consent(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4, 100u32..90_000).prop_map(|(order, total_cents)| Step::Place { order, total_cents }),
        1 => (0u8..4).prop_map(|order| Step::Cancel { order }),
        2 => (0u8..4).prop_map(|order| Step::Dispatch { order }),
        2 => (0u8..4).prop_map(|order| Step::Deliver { order }),
        1 => (0u8..4).prop_map(|order| Step::Return { order }),
        1 => any::<bool>().prop_map(Step::Consent),
    ]
}

const ZONES: [&str; 3] = ["UTC", "Europe/Berlin", "Asia/Yerevan"];

/// `(customer, step, minutes after the previous event)`.
fn log() -> impl Strategy<Value = Vec<(u8, Step, u32)>> {
    prop::collection::vec((0u8..3, step(), 0u32..(20 * 24 * 60)), 1..40)
}

struct Known {
    cancelled_at: BTreeMap<(String, String), Timestamp>,
    /// Consent changes per customer, in time order.
    consent: BTreeMap<String, Vec<(Timestamp, bool)>>,
}

/// The JSONL log, and what the checks need to know about it.
fn render_log(steps: &[(u8, Step, u32)]) -> (String, Known) {
    let mut at: Timestamp = "2025-01-06T09:00:00Z".parse().unwrap();
    let mut lines = Vec::new();
    let mut known = Known {
        cancelled_at: BTreeMap::new(),
        consent: BTreeMap::new(),
    };
    for (i, (c, step, gap)) in steps.iter().enumerate() {
        at += SignedDuration::from_mins(i64::from(*gap));
        let customer = format!("c-{c}");
        let zone = ZONES[*c as usize % ZONES.len()];
        let order = |o: &u8| format!("o-{c}-{o}");
        let who = |consent: Option<bool>| {
            let consent = consent.map_or(String::new(), |b| format!(r#","marketing_consent":{b}"#));
            format!(
                r#"{{"id":"{customer}","email":"{customer}@example.com","timezone":"{zone}"{consent}}}"#
            )
        };
        let head = format!(r#""event_id":"e-{i}","occurred_at":"{at}""#);
        let line = match step {
            Step::Place {
                order: o,
                total_cents,
            } => format!(
                r#"{{{head},"type":"order.placed","customer":{},"order":{{"id":"{}","total":"{}.{:02}","currency":"EUR","items":[]}}}}"#,
                who(None),
                order(o),
                total_cents / 100,
                total_cents % 100
            ),
            Step::Cancel { order: o } => {
                known
                    .cancelled_at
                    .entry((customer.clone(), order(o)))
                    .or_insert(at);
                format!(
                    r#"{{{head},"type":"order.cancelled","customer":{},"order":{{"id":"{}"}}}}"#,
                    who(None),
                    order(o)
                )
            }
            Step::Dispatch { order: o } => format!(
                r#"{{{head},"type":"shipment.dispatched","customer":{},"order":{{"id":"{}"}},"shipment":{{"id":"s-{}","carrier":"DHL","tracking_number":"T1","tracking_url":"https://t.example.com/1","estimated_delivery":"{at}"}}}}"#,
                who(None),
                order(o),
                order(o)
            ),
            Step::Deliver { order: o } => format!(
                r#"{{{head},"type":"shipment.delivered","customer":{},"order":{{"id":"{}"}},"shipment":{{"id":"s-{}"}}}}"#,
                who(None),
                order(o),
                order(o)
            ),
            Step::Return { order: o } => format!(
                r#"{{{head},"type":"return.requested","customer":{},"order":{{"id":"{}"}},"return":{{"id":"r-{}","reason":"too small","items":[]}}}}"#,
                who(None),
                order(o),
                order(o)
            ),
            Step::Consent(b) => {
                known
                    .consent
                    .entry(customer.clone())
                    .or_default()
                    .push((at, *b));
                // A consent change rides on an order of its own (`o-C-9`:
                // a real order the first time, a replay after that).
                format!(
                    r#"{{{head},"type":"order.placed","customer":{},"order":{{"id":"{}","total":"1.00","currency":"EUR","items":[]}}}}"#,
                    who(Some(*b)),
                    order(&9)
                )
            }
        };
        lines.push(line);
    }
    (lines.join("\n") + "\n", known)
}

fn plan(jsonl: &str) -> Vec<PlanLine> {
    let config = Config::embedded();
    let templates = check::load(&config).unwrap();
    let context = Context {
        locales: templates.locales().clone(),
        default_timezone: config.default_timezone.clone(),
        unsubscribe_url: config.shop.unsubscribe_url.clone(),
        signer: Signer::new(b"property tests"),
    };
    let pipeline = Pipeline::new(
        SqliteStore::in_memory().unwrap(),
        Rulebook::from_config(config.rulebook_config()),
        context,
        100,
        LeasePolicy {
            owner: "props".into(),
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
    simulate(pipeline, &mut source, None).unwrap().lines
}

fn sent_at(line: &PlanLine) -> Timestamp {
    line.deferred_to
        .as_deref()
        .unwrap_or(&line.due_at)
        .parse()
        .unwrap()
}

/// Every template the journeys send, in every locale, with each of its
/// samples (`templates/samples/<locale>/`), as `check` renders them.
struct Gallery {
    templates: aftercare::render::Templates,
    /// `(registered name, locale, data)`.
    renders: Vec<(String, String, serde_json::Value)>,
}

fn gallery() -> &'static Gallery {
    static GALLERY: std::sync::OnceLock<Gallery> = std::sync::OnceLock::new();
    GALLERY.get_or_init(|| {
        let config = Config::embedded();
        let templates = check::load(&config).unwrap();
        let shop = serde_json::to_value(&config.shop).unwrap();
        let journeys = aftercare::journey::Rulebook::from_config(config.rulebook_config());
        let mut renders = Vec::new();
        for r in check::renderable(&config) {
            for locale in templates.locales().available() {
                for (_, sample) in
                    check::samples_of(&config, &templates, &r.template, locale).unwrap()
                {
                    let data = check::sample_data(&sample, &shop, locale, &journeys);
                    renders.push((r.name.clone(), locale.clone(), data));
                }
            }
        }
        Gallery { templates, renders }
    })
}

/// Puts `text` in every field of `data` an event fills with free text
/// (names, ids, SKUs, carrier, tracking number, return reason), and `link`
/// in its tracking URL. The shop's own settings and the tier (from the
/// config) are left alone.
fn from_events(data: &mut serde_json::Value, text: &str, link: &str) {
    use serde_json::Value;
    const TEXT: [&str; 6] = ["name", "id", "sku", "carrier", "tracking_number", "reason"];
    fn walk(v: &mut Value, text: &str, link: &str) {
        match v {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match (key.as_str(), &*value) {
                        ("shop" | "tier" | "email", _) => {}
                        ("tracking_url", Value::String(_)) => *value = link.into(),
                        (k, Value::String(_)) if TEXT.contains(&k) => *value = text.into(),
                        _ => walk(value, text, link),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, text, link)),
            _ => {}
        }
    }
    walk(data, text, link);
}

/// How many of the characters that make HTML structure the page has.
fn structure(html: &str) -> [usize; 4] {
    ['<', '>', '"', '\''].map(|c| html.matches(c).count())
}

fn render_html(name: &str, locale: &str, data: &serde_json::Value) -> String {
    gallery()
        .templates
        .render(name, locale, data)
        .unwrap_or_else(|e| panic!("{name} in {locale}: {e:?}"))
        .html
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn text_from_events_never_adds_an_element_or_attribute(
        text in prop_oneof![
            "[a-z<>\"'&=/ ;:()`\u{531}-\u{556}\u{1200}-\u{1210}]{1,30}",
            prop::sample::select(vec![
                "<script>alert(1)</script>".to_owned(),
                "\"><img src=x onerror=alert(1)>".to_owned(),
                "' onmouseover='x".to_owned(),
                "{{shop.name}}".to_owned(),
            ]),
        ],
    ) {
        let benign_link = "https://track.example.com/1";
        for (name, locale, sample) in &gallery().renders {
            let mut plain = sample.clone();
            from_events(&mut plain, "x", benign_link);
            let mut hostile = sample.clone();
            from_events(&mut hostile, &text, benign_link);
            let html = render_html(name, locale, &hostile);
            prop_assert_eq!(
                structure(&html),
                structure(&render_html(name, locale, &plain)),
                "{} in {} with {:?}", name, locale, text
            );
            prop_assert!(!html.to_lowercase().contains("<script"), "{name} in {locale}");
        }
    }

    #[test]
    fn a_link_from_an_event_is_never_a_script(
        scheme in prop::sample::select(vec![
            "javascript:", "JavaScript:", " javascript:", "java\tscript:", "vbscript:",
            "data:text/html,", "https://ok.example/",
        ]),
        rest in "[a-z<>\"'()/ ]{0,20}",
    ) {
        let link = format!("{scheme}{rest}");
        for (name, locale, sample) in &gallery().renders {
            let mut data = sample.clone();
            from_events(&mut data, "x", &link);
            let html = render_html(name, locale, &data).to_lowercase();
            for attribute in ["href=\"", "src=\""] {
                for (at, _) in html.match_indices(attribute) {
                    let value: String = html[at + attribute.len()..]
                        .chars()
                        .take_while(|c| *c != '"')
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    prop_assert!(
                        !["javascript:", "vbscript:", "data:"].iter().any(|s| value.starts_with(s)),
                        "{} in {}: {}{}", name, locale, attribute, value
                    );
                }
            }
            prop_assert!(!html.contains("<script"), "{name} in {locale}");
        }
    }
}

/// Amounts at, inside and past every bound: past what a decimal holds,
/// exponents, negatives, too many places.
fn extreme_amount() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "79228162514264337593543950335",
            "7.9e28",
            "5e28",
            "1000000000000",
            "1000000000000.01",
            "0.00000001",
            "0.000000001",
            "-0",
            "-1.00",
            "0",
        ])
        .prop_map(str::to_owned),
        "-?[0-9]{1,30}(\\.[0-9]{1,30})?",
    ]
}

fn extreme_quantity() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        prop::sample::select(vec![
            0u64,
            1,
            2,
            1_000_000,
            1_000_001,
            u64::from(u32::MAX) + 1,
            u64::MAX
        ])
        .prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(1.5e300)),
    ]
}

/// Times anywhere jiff can write one, and at the decoder's bounds.
fn extreme_time() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "9999-12-30T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "-009999-01-02T01:59:59Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2199-12-31T23:59:59Z",
            "2200-01-01T00:00:00Z",
            "2026-01-01T10:00:00Z",
        ])
        .prop_map(str::to_owned),
        (Timestamp::MIN.as_second()..=Timestamp::MAX.as_second())
            .prop_map(|s| Timestamp::from_second(s).unwrap().to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_promises_hold_for_any_event_log(steps in log()) {
        let (jsonl, known) = render_log(&steps);
        let plan = plan(&jsonl);
        let mut last_marketing: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut sent: Vec<&PlanLine> = plan.iter().filter(|l| l.status == "sent").collect();
        sent.sort_by_key(|l| sent_at(l));
        for line in sent {
            let at = sent_at(line);
            let due: Timestamp = line.due_at.parse().unwrap();
            prop_assert!(at >= due, "sent before due: {line:?}");
            if line.class == "transactional" {
                prop_assert!(line.deferred.is_none(), "a transactional email held back: {line:?}");
                continue;
            }
            // Not after its order was cancelled.
            if let Some(order) = &line.order_id
                && let Some(cancelled) = known.cancelled_at.get(&(line.customer_id.clone(), order.clone()))
            {
                prop_assert!(at <= *cancelled, "sent after its order was cancelled at {cancelled}: {line:?}");
            }
            // Consent at that moment: the last change before it.
            let consent = known
                .consent
                .get(&line.customer_id)
                .and_then(|changes| changes.iter().rev().find(|(t, _)| *t < at))
                .is_some_and(|(_, b)| *b);
            prop_assert!(consent, "marketing without consent: {line:?}");
            // Outside quiet hours, local time.
            let zone = ZONES[line.customer_id[2..].parse::<usize>().unwrap() % ZONES.len()];
            let local = at.to_zoned(jiff::tz::TimeZone::get(zone).unwrap()).time();
            prop_assert!(
                local >= jiff::civil::time(8, 0, 0, 0) && local < jiff::civil::time(21, 0, 0, 0),
                "in quiet hours ({local} in {zone}): {line:?}"
            );
            // At most one marketing email per customer in 20 hours.
            if let Some(previous) = last_marketing.insert(line.customer_id.clone(), at) {
                prop_assert!(
                    at.duration_since(previous) >= SignedDuration::from_hours(20),
                    "two marketing emails within 20 h ({previous}, {at}): {line:?}"
                );
            }
        }
    }

    #[test]
    fn extreme_numbers_and_dates_are_applied_or_refused_never_a_panic(
        events in prop::collection::vec(
            (0u8..2, extreme_amount(), extreme_amount(), extreme_quantity(), extreme_time(), extreme_time()),
            1..8,
        ),
    ) {
        let lines: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, (customer, total, price, quantity, at, eta))| {
                let (kind, extra) = if i % 3 == 2 {
                    ("shipment.delayed", serde_json::json!({"shipment": {"id": format!("s-{i}"), "estimated_delivery": eta}}))
                } else {
                    ("order.placed", serde_json::json!({}))
                };
                let mut v = serde_json::json!({
                    "event_id": format!("e-{i}"), "type": kind, "occurred_at": at,
                    "customer": {"id": format!("c-{customer}"), "email": "a@example.com", "marketing_consent": true},
                    "order": {"id": format!("o-{i}"), "total": total, "currency": "EUR",
                              "items": [{"sku": "T", "name": "Tea", "quantity": quantity, "unit_price": price}]},
                });
                if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                    v.extend(extra);
                }
                v.to_string()
            })
            .collect();
        // Each decodes or is refused with a reason...
        for line in &lines {
            if let Err(e) = Event::decode(line.as_bytes()) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
        // ...and the whole log runs through the pipeline: a panic fails.
        let plan = plan(&(lines.join("\n") + "\n"));
        for line in plan {
            prop_assert!(line.due_at.parse::<Timestamp>().is_ok(), "{line:?}");
        }
    }

    #[test]
    fn the_decoder_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Event::decode(&bytes);
    }

    #[test]
    fn a_valid_event_with_a_field_broken_is_refused_with_a_reason(
        field in prop::sample::select(vec!["event_id", "type", "occurred_at", "customer"]),
        junk in prop_oneof![Just(serde_json::Value::Null), Just(serde_json::json!(4.5)), Just(serde_json::json!("")), Just(serde_json::json!([1]))],
    ) {
        let mut v: serde_json::Value = serde_json::from_str(
            r#"{"event_id":"e-1","type":"order.placed","occurred_at":"2026-01-01T00:00:00Z","customer":{"id":"c-1","email":"a@example.com"},"order":{"id":"o-1","total":"1.00","currency":"EUR","items":[]}}"#,
        ).unwrap();
        v[field] = junk;
        let err = Event::decode(v.to_string().as_bytes()).unwrap_err();
        prop_assert!(!err.to_string().is_empty());
    }

    #[test]
    fn customer_data_never_adds_a_header(
        name in "[a-zA-Z \\r\\n:<>\"\u{531}-\u{556}\u{1200}-\u{1210}]{0,40}",
        subject in "[a-zA-Z \\r\\n:]{1,40}",
    ) {
        let from: lettre::message::Mailbox = "Shop <shop@example.com>".parse().unwrap();
        let rendered = Rendered { subject, preheader: String::new(), html: "<p>x</p>".into(), text: "x".into() };
        let message = aftercare::mailer::build(
            &from,
            None,
            "anna@example.com",
            Some(&name),
            &rendered,
            "<id@example.com>",
            "2026-01-01T00:00:00Z".parse().unwrap(),
            None,
        ).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap();
        // Every header line is a known header or a folded continuation.
        for line in head.split("\r\n") {
            let known = ["From:", "To:", "Subject:", "Date:", "Message-ID:", "MIME-Version:", "Content-Type:"]
                .iter()
                .any(|h| line.starts_with(h));
            prop_assert!(known || line.starts_with(' ') || line.starts_with('\t'), "header line {line:?} in\n{head}");
        }
        prop_assert_eq!(head.matches("\r\nTo:").count() + usize::from(head.starts_with("To:")), 1);
    }
}
