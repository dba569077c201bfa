//! Template helpers: money, dates and plurals in the customer's locale, and
//! safe links.
//!
//! The locale and time zone come from the data (`customer.locale`,
//! `customer.timezone`), so a template never passes them by hand.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::Value;

use super::format::{format_day, format_money, formatting_tag, is_one};

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

/// `customer.<field>` of the email's data, if a string. (Not
/// `Value::pointer`: it allocates for every segment, and the helpers run
/// dozens of times per email.)
fn customer_str<'a>(ctx: &'a Context, field: &str) -> Option<&'a str> {
    ctx.data().get("customer")?.get(field)?.as_str()
}

/// The locale to format in: the email's (`customer.locale`) with the
/// customer's region (`customer.region`) when known, `en-US` say.
fn locale(ctx: &Context) -> String {
    formatting_tag(
        customer_str(ctx, "locale").unwrap_or("en"),
        customer_str(ctx, "region"),
    )
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

/// `{{money amount currency}}`: `€59.90` in English, `18 500 դր.` in
/// Armenian, `1,500.00 ብር` in Amharic (see [`format_money`]).
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
    out.write(&format_money(amount, currency, &locale(ctx)))?;
    Ok(())
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
            let tz = customer_str(ctx, "timezone")
                .and_then(|name| TimeZone::get(name).ok())
                .unwrap_or(TimeZone::UTC);
            ts.to_zoned(tz).date()
        }
        Err(_) => text
            .parse::<jiff::civil::Date>()
            .map_err(|_| RenderErrorReason::InvalidParamType("RFC 3339 timestamp or date"))?,
    };
    out.write(&format_day(day, &locale(ctx)))?;
    Ok(())
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
    let word = if is_one(n, &locale(ctx)) { one } else { other };
    out.write(word)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, customer: serde_json::Value) -> String {
        let mut hb = Handlebars::new();
        register(&mut hb);
        hb.register_template_string("t", template).unwrap();
        hb.render(
            "t",
            &serde_json::json!({
                "customer": customer,
                "total": "1500",
                "at": "2026-12-06T10:00:00Z",
            }),
        )
        .unwrap()
    }

    #[test]
    fn the_helpers_write_as_the_customers_region_does() {
        let t = "{{money total \"USD\"}} {{date at}}";
        let us = serde_json::json!({"locale": "en", "region": "US"});
        assert_eq!(render(t, us), "$1,500.00 December 6, 2026");
        let gb = serde_json::json!({"locale": "en", "region": "GB"});
        assert_eq!(render(t, gb), "US$1,500.00 6 December 2026");
        // No region: English as written outside the US.
        let en = serde_json::json!({"locale": "en", "region": null});
        assert_eq!(render(t, en), "US$1,500.00 6 December 2026");
        // A region that is not one is ignored.
        let odd = serde_json::json!({"locale": "en", "region": "<b>"});
        assert_eq!(render(t, odd), "US$1,500.00 6 December 2026");
        let yerevan = serde_json::json!({"locale": "hy", "timezone": "Asia/Yerevan"});
        assert_eq!(render("{{money total \"AMD\"}}", yerevan), "1500\u{a0}դր.");
    }

    #[test]
    fn dates_in_the_customers_zone() {
        let t = "{{date at}}";
        let at = |customer: serde_json::Value| {
            let mut hb = Handlebars::new();
            register(&mut hb);
            hb.register_template_string("t", t).unwrap();
            hb.render(
                "t",
                &serde_json::json!({"customer": customer, "at": "2026-11-24T22:30:00Z"}),
            )
            .unwrap()
        };
        assert_eq!(at(serde_json::json!({"locale": "en"})), "24 November 2026");
        assert_eq!(
            at(serde_json::json!({"locale": "am", "timezone": "Africa/Addis_Ababa"})),
            "ኖቬምበር 25 ቀን 2026"
        );
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
}
