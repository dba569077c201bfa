//! Template helpers: money, dates and plurals in the customer's locale, and
//! safe links.
//!
//! The locale and time zone come from the data (`customer.locale`,
//! `customer.timezone`), so a template never passes them by hand.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use intl_pluralrules::{PluralCategory, PluralRuleType, PluralRules};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::Value;

pub fn register(hb: &mut Handlebars<'_>) {
    hb.register_helper("money", Box::new(money));
    hb.register_helper("date", Box::new(date));
    hb.register_helper("plural", Box::new(plural));
    hb.register_helper("url", Box::new(url));
}

/// `{{url base key=value ...}}`: a link that is safe to put in an `href`.
///
/// The base must be an `http`, `https` or `mailto` URL: anything else (a
/// `javascript:` tracking link in an event, say) becomes `#`, and is
/// logged. The named arguments are added as query parameters,
/// percent-encoded (`{{url shop.review_url order=order.id rating=5}}`).
fn url(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let base = param(h, "url", 0)?
        .as_str()
        .ok_or(RenderErrorReason::InvalidParamType("URL string"))?;
    let mut params: Vec<(&str, String)> = h
        .hash()
        .iter()
        .map(|(k, v)| {
            let value = match v.value() {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (*k, value)
        })
        .collect();
    // The hash is unordered: keep links stable.
    params.sort();
    out.write(&safe_url(base, &params))?;
    Ok(())
}

/// `base` with `params` added, or `#` when `base` is not a web or mail link.
pub fn safe_url(base: &str, params: &[(&str, String)]) -> String {
    match url::Url::parse(base.trim()) {
        Ok(mut link) if matches!(link.scheme(), "http" | "https" | "mailto") => {
            if !params.is_empty() {
                let mut query = link.query_pairs_mut();
                for (k, v) in params {
                    query.append_pair(k, v);
                }
            }
            link.into()
        }
        _ => {
            tracing::warn!(url = base, "Unsafe or invalid link replaced by #.");
            "#".to_owned()
        }
    }
}

fn root_str<'a>(ctx: &'a Context, pointer: &str) -> Option<&'a str> {
    ctx.data().pointer(pointer).and_then(Value::as_str)
}

fn locale(ctx: &Context) -> &str {
    root_str(ctx, "/customer/locale").unwrap_or("en")
}

fn param<'a>(
    h: &'a Helper<'_>,
    name: &'static str,
    i: usize,
) -> Result<&'a Value, RenderErrorReason> {
    h.param(i)
        .map(|p| p.value())
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, i))
}

/// `{{money amount currency}}`: `€59.90` in English, `59,90 €` in Armenian.
fn money(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let amount = match param(h, "money", 0)? {
        Value::String(s) => s.parse::<Decimal>().ok(),
        Value::Number(n) => n.to_string().parse::<Decimal>().ok(),
        _ => None,
    }
    .ok_or(RenderErrorReason::InvalidParamType("decimal amount"))?;
    let currency = param(h, "money", 1)?
        .as_str()
        .ok_or(RenderErrorReason::InvalidParamType("currency code"))?;
    out.write(&format_money(amount, currency, locale(ctx)))?;
    Ok(())
}

pub fn format_money(amount: Decimal, currency: &str, locale: &str) -> String {
    let symbol = match (currency, locale) {
        ("EUR", _) => "€",
        ("USD", _) => "$",
        ("GBP", _) => "£",
        ("AMD", _) => "֏",
        ("ETB", "am") => "ብር",
        ("ETB", _) => "Br",
        (code, _) => code,
    };
    let digits = if currency == "AMD" { 0 } else { 2 };
    let amount = amount.round_dp(digits);
    let negative = amount.is_sign_negative() && !amount.is_zero();
    let plain = format!("{:.*}", digits as usize, amount.abs());
    let (int, frac) = plain.split_once('.').unwrap_or((&plain, ""));
    let (group, decimal) = match locale {
        // CLDR: Armenian groups with a no-break space and uses a comma.
        "hy" => ('\u{a0}', ','),
        _ => (',', '.'),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(c);
    }
    if !frac.is_empty() {
        grouped.push(decimal);
        grouped.push_str(frac);
    }
    let sign = if negative { "-" } else { "" };
    match locale {
        "hy" => format!("{sign}{grouped}\u{a0}{symbol}"),
        _ if symbol.chars().count() == 1 => format!("{sign}{symbol}{grouped}"),
        _ => format!("{sign}{symbol}\u{a0}{grouped}"),
    }
}

/// `{{date timestamp}}`: the day in the customer's time zone and locale.
fn date(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let text = param(h, "date", 0)?
        .as_str()
        .ok_or(RenderErrorReason::InvalidParamType(
            "RFC 3339 timestamp or date",
        ))?;
    // A day (an estimated delivery as carriers give it) is that day in
    // every time zone; a moment is the day it is in the customer's.
    let day = match text.parse::<Timestamp>() {
        Ok(ts) => {
            let tz = root_str(ctx, "/customer/timezone")
                .and_then(|name| TimeZone::get(name).ok())
                .unwrap_or(TimeZone::UTC);
            ts.to_zoned(tz).date()
        }
        Err(_) => text
            .parse::<jiff::civil::Date>()
            .map_err(|_| RenderErrorReason::InvalidParamType("RFC 3339 timestamp or date"))?,
    };
    out.write(&format_day(day, locale(ctx)))?;
    Ok(())
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
/// Genitive month names, as Armenian dates use them.
const MONTHS_HY: [&str; 12] = [
    "հունվարի",
    "փետրվարի",
    "մարտի",
    "ապրիլի",
    "մայիսի",
    "հունիսի",
    "հուլիսի",
    "օգոստոսի",
    "սեպտեմբերի",
    "հոկտեմբերի",
    "նոյեմբերի",
    "դեկտեմբերի",
];
const MONTHS_AM: [&str; 12] = [
    "ጃንዋሪ",
    "ፌብሩዋሪ",
    "ማርች",
    "ኤፕሪል",
    "ሜይ",
    "ጁን",
    "ጁላይ",
    "ኦገስት",
    "ሴፕቴምበር",
    "ኦክቶበር",
    "ኖቬምበር",
    "ዲሴምበር",
];

pub fn format_date(ts: Timestamp, tz: &TimeZone, locale: &str) -> String {
    format_day(ts.to_zoned(tz.clone()).date(), locale)
}

/// A day as `locale` writes it.
pub fn format_day(d: jiff::civil::Date, locale: &str) -> String {
    let m = (d.month() - 1) as usize;
    match locale {
        "hy" => format!("{} {} {} թ.", d.day(), MONTHS_HY[m], d.year()),
        "am" => format!("{} {} {}", MONTHS_AM[m], d.day(), d.year()),
        _ => format!("{} {} {}", d.day(), MONTHS_EN[m], d.year()),
    }
}

/// `{{plural count "item" "items"}}`: the word for the count, by the
/// locale's CLDR rules (in Armenian and Amharic 0 and 1 are both "one").
fn plural(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    ctx: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let n = param(h, "plural", 0)?
        .as_u64()
        .ok_or(RenderErrorReason::InvalidParamType("count"))?;
    let one = param(h, "plural", 1)?.as_str().unwrap_or_default();
    let other = param(h, "plural", 2)?.as_str().unwrap_or_default();
    let word = if is_one(n, locale(ctx)) { one } else { other };
    out.write(word)?;
    Ok(())
}

fn is_one(n: u64, locale: &str) -> bool {
    let lang: unic_langid::LanguageIdentifier = locale.parse().unwrap_or_default();
    match PluralRules::create(lang, PluralRuleType::CARDINAL) {
        Ok(rules) => rules.select(n) == Ok(PluralCategory::ONE),
        Err(_) => n == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_by_locale() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(format_money(d("59.90"), "EUR", "en"), "€59.90");
        assert_eq!(format_money(d("1234.5"), "USD", "en"), "$1,234.50");
        assert_eq!(format_money(d("59.90"), "EUR", "hy"), "59,90\u{a0}€");
        assert_eq!(format_money(d("25000"), "AMD", "hy"), "25\u{a0}000\u{a0}֏");
        assert_eq!(format_money(d("59.9"), "ETB", "am"), "ብር\u{a0}59.90");
        assert_eq!(format_money(d("-5"), "EUR", "en"), "-€5.00");
    }

    #[test]
    fn dates_in_the_customers_zone() {
        let ts: Timestamp = "2026-11-24T22:30:00Z".parse().unwrap();
        let yerevan = TimeZone::get("Asia/Yerevan").unwrap();
        assert_eq!(format_date(ts, &TimeZone::UTC, "en"), "24 November 2026");
        assert_eq!(format_date(ts, &yerevan, "hy"), "25 նոյեմբերի 2026 թ.");
        assert_eq!(format_date(ts, &yerevan, "am"), "ኖቬምበር 25 2026");
    }

    #[test]
    fn links_are_web_or_mail_links_with_encoded_parameters() {
        let p = |k: &'static str, v: &str| (k, v.to_owned());
        assert_eq!(
            safe_url(
                "https://shop.example.com/review",
                &[p("order", "o 1&x=2"), p("rating", "5")]
            ),
            "https://shop.example.com/review?order=o+1%26x%3D2&rating=5"
        );
        assert_eq!(
            safe_url("https://track.example.com/T1?lang=hy", &[]),
            "https://track.example.com/T1?lang=hy"
        );
        assert_eq!(
            safe_url("mailto:help@shop.example.com", &[]),
            "mailto:help@shop.example.com"
        );
        for bad in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,x",
            "/relative",
            "",
        ] {
            assert_eq!(safe_url(bad, &[]), "#", "{bad}");
        }
    }

    #[test]
    fn the_url_helper_escapes_for_html_too() {
        let mut hb = Handlebars::new();
        register(&mut hb);
        hb.register_template_string("t", r#"<a href="{{url base order=id}}">x</a>"#)
            .unwrap();
        let out = hb
            .render(
                "t",
                &serde_json::json!({"base": "https://s.example.com/r", "id": "a\"b"}),
            )
            .unwrap();
        assert_eq!(
            out,
            r#"<a href="https://s.example.com/r?order=a%22b">x</a>"#
        );
        let out = hb
            .render(
                "t",
                &serde_json::json!({"base": "javascript:alert(1)", "id": "1"}),
            )
            .unwrap();
        assert_eq!(out, r##"<a href="#">x</a>"##);
    }

    #[test]
    fn plural_rules_differ_by_locale() {
        assert!(is_one(1, "en"));
        assert!(!is_one(0, "en"));
        assert!(is_one(0, "am"));
        assert!(is_one(1, "hy"));
        assert!(!is_one(2, "hy"));
    }
}
