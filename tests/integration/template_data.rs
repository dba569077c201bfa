//! No template can fail at send time on data the schema allows: random data
//! generated from `render::schema` (required paths filled with realistic
//! values, long and non-Latin text, big amounts; optional ones `null` or
//! not; lists of 0 to 20 items) rendered by every template in every locale
//! and A/B variant without an error. 48 cases in CI; `PROPTEST_CASES=2000`
//! for more.

use aftercare::check::{self, Renderable};
use aftercare::config::Config;
use aftercare::journey::JourneyRule;
use aftercare::render::schema::{ELEMENTS_IMPLY, Field, Kind, TOGETHER, TemplateSchema};
use proptest::prelude::*;
use proptest::test_runner::{TestError, TestRunner};
use serde_json::{Map, Value, json};

/// Text as customers and shops write it: short, long, Armenian, Amharic,
/// markup, quotes and control characters.
fn text() -> BoxedStrategy<Value> {
    prop_oneof![
        "[A-Za-z][A-Za-z '-]{0,30}",
        "\\PC{1,300}",
        Just("Անի Սարգսյան".to_owned()),
        Just("አበበ በቀለ".to_owned()),
        Just("<script>alert(1)</script> & \"quotes\" 'x'".to_owned()),
        "[a-z]{1,8}( [a-z]{1,12}){20,60}",
    ]
    .prop_map(Value::String)
    .boxed()
}

fn amount() -> BoxedStrategy<Value> {
    prop_oneof![
        (0u64..100_000).prop_map(|c| format!("{}.{:02}", c / 100, c % 100)),
        (0u64..u64::MAX / 2).prop_map(|c| format!("{}.{:02}", c / 100, c % 100)),
        (1u64..1_000_000_000).prop_map(|n| n.to_string()),
    ]
    .prop_map(Value::String)
    .boxed()
}

fn timestamp() -> BoxedStrategy<Value> {
    // 2000-01-01 to 2100-01-01.
    (946_684_800i64..4_102_444_800)
        .prop_map(|s| Value::String(jiff::Timestamp::from_second(s).unwrap().to_string()))
        .boxed()
}

fn scalar(field: &Field, rule: &JourneyRule) -> BoxedStrategy<Value> {
    let one_of = |items: &[&str]| {
        let items: Vec<Value> = items
            .iter()
            .map(|s| Value::String((*s).to_owned()))
            .collect();
        proptest::sample::select(items).boxed()
    };
    match field.kind {
        Kind::Text | Kind::Word => text(),
        Kind::Id => "[A-Za-z0-9-]{1,40}".prop_map(Value::String).boxed(),
        Kind::Email => "[a-z0-9.]{1,20}@[a-z]{1,10}\\.example"
            .prop_map(Value::String)
            .boxed(),
        // Set to the locale rendered.
        Kind::Locale => Just(Value::String("en".into())).boxed(),
        Kind::Region => one_of(&["US", "GB", "AM", "ET", "DE", "001", "ZZ"]),
        Kind::TimeZone => one_of(&[
            "UTC",
            "Europe/Berlin",
            "Asia/Yerevan",
            "Africa/Addis_Ababa",
            "Pacific/Kiritimati",
        ]),
        Kind::Count => prop_oneof![0u64..30, 0u64..4_000_000_000]
            .prop_map(|n| json!(n))
            .boxed(),
        Kind::Amount => amount(),
        Kind::Currency => one_of(&["EUR", "USD", "GBP", "AMD", "ETB", "JPY", "XYZ"]),
        Kind::Timestamp => timestamp(),
        Kind::Day => prop_oneof![
            timestamp(),
            (2000i16..2100, 1i8..=12, 1i8..=28)
                .prop_map(|(y, m, d)| Value::String(format!("{y:04}-{m:02}-{d:02}")))
        ]
        .boxed(),
        Kind::Url => prop_oneof![
            "https://[a-z]{1,10}\\.example/[a-z0-9/?=&]{0,40}",
            Just("javascript:alert(1)".to_owned()),
            "\\PC{0,40}",
        ]
        .prop_map(Value::String)
        .boxed(),
        Kind::Segment => one_of(&[
            "vip",
            "lapsed",
            "new",
            "frequent_small",
            "rare_large",
            "regular",
        ]),
        Kind::Class => Just(Value::String(rule.class.as_str().to_owned())).boxed(),
        Kind::Template => Just(Value::String(rule.template.clone())).boxed(),
        Kind::Color => "#[0-9a-f]{6}".prop_map(Value::String).boxed(),
        Kind::Object | Kind::List => unreachable!("not a scalar"),
    }
}

/// A value for `field` (its children generated from the schema).
fn value(
    schema: &TemplateSchema,
    field: &'static Field,
    rule: &JourneyRule,
) -> BoxedStrategy<Value> {
    let present = match field.kind {
        Kind::Object => object(schema, field.path, rule),
        Kind::List => {
            let element = schema
                .field(&format!("{}[]", field.path))
                .expect("a list has an element");
            proptest::collection::vec(value(schema, element, rule), 0..20)
                .prop_map(Value::Array)
                .boxed()
        }
        _ => scalar(field, rule),
    };
    if schema.optional(field.path) {
        prop_oneof![1 => Just(Value::Null), 2 => present].boxed()
    } else {
        present
    }
}

fn object(schema: &TemplateSchema, path: &str, rule: &JourneyRule) -> BoxedStrategy<Value> {
    let children: Vec<BoxedStrategy<(String, Value)>> = schema
        .children(path)
        .map(|f| {
            let key = f.path.rsplit('.').next().unwrap_or_default().to_owned();
            value(schema, f, rule)
                .prop_map(move |v| (key.clone(), v))
                .boxed()
        })
        .collect();
    children
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
        .boxed()
}

fn pointer(path: &str) -> String {
    format!("/{}", path.replace('.', "/"))
}

/// What the schema says besides each path alone: paths `null` together,
/// and lists whose elements imply others.
fn consistent(mut data: Value, schema: &TemplateSchema) -> Value {
    for group in TOGETHER {
        if group.iter().any(|p| schema.field(p).is_none()) {
            continue;
        }
        let null = group
            .iter()
            .any(|p| data.pointer(&pointer(p)).is_none_or(Value::is_null));
        if null {
            for p in group.iter() {
                if let Some(v) = data.pointer_mut(&pointer(p)) {
                    *v = Value::Null;
                }
            }
        }
    }
    for (list, implied) in ELEMENTS_IMPLY {
        let null = implied
            .iter()
            .any(|p| data.pointer(&pointer(p)).is_none_or(Value::is_null));
        if null && let Some(items) = data.pointer_mut(&pointer(list)) {
            *items = json!([]);
        }
    }
    data
}

#[test]
fn no_template_fails_on_data_the_schema_allows() {
    let config = Config::embedded();
    let templates = check::load(&config).expect("the shipped templates load");
    let shop = serde_json::to_value(&config.shop).unwrap();
    let renderable: Vec<Renderable> = check::renderable(&config);
    let mut strategies = Vec::new();
    for r in &renderable {
        let rule = config
            .journeys
            .iter()
            .find(|j| j.template == r.template)
            .unwrap()
            .clone();
        let schema = TemplateSchema::of(&rule);
        strategies.push(object(&schema, "", &rule).prop_map(move |d| consistent(d, &schema)));
    }
    let mut runner = TestRunner::default();
    let result = runner.run(&strategies, |datas| {
        for (r, data) in renderable.iter().zip(datas) {
            for locale in templates.locales().available() {
                let mut data = data.clone();
                data["shop"] = shop.clone();
                data["customer"]["locale"] = Value::String(locale.clone());
                let rendered = templates.render(&r.name, locale, &data);
                prop_assert!(
                    rendered.is_ok(),
                    "{} in {locale}: {}\n{data:#}",
                    r.name,
                    rendered.err().unwrap()
                );
            }
        }
        Ok(())
    });
    // The reason names the template and holds the data that failed it.
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, _)) => panic!("{reason}"),
        Err(e) => panic!("{e}"),
    }
}
