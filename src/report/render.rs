//! The report as a table for a terminal, JSON for a pipeline, CSV for a
//! spreadsheet, or one self-contained HTML page with SVG charts (charts-rs;
//! no script, no network), readable offline.

mod cohorts;
mod gaps;

use std::fmt::Write as _;

use charts_rs::{BarChart, HorizontalBarChart, Series};
use handlebars::html_escape;
use rust_decimal::Decimal;

use super::holdout::Holdout;
use super::{EmailResult, Report, Retention};
use crate::render::format_money;

/// An amount as written in the text formats: the number, then the code.
fn plain(amount: Decimal, currency: &str) -> String {
    format!("{amount} {currency}")
}

/// An amount for the page: the currency's usual decimals and symbol, as the
/// emails write it in English (`€6,800.00`, `AMD 23,500`).
fn shown(amount: Decimal, currency: &str) -> String {
    format_money(amount, currency, "en")
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2} %"))
}

fn num(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
}

fn variant_name(e: &EmailResult) -> String {
    match &e.variant {
        Some(v) => format!("{} ({v})", e.template),
        None => e.template.clone(),
    }
}

/// The lift of a holdout comparison and its interval, in percentage
/// points: `+9.00 pp (-2.08 to +15.85)`.
fn lift(h: &Holdout) -> String {
    match (h.lift, h.lift_low, h.lift_high) {
        (Some(l), Some(low), Some(high)) => format!("{l:+.2} pp ({low:+.2} to {high:+.2})"),
        _ => "-".to_owned(),
    }
}

/// A holdout comparison's figures, as its table's cells: sent, ordered,
/// rate; held out, ordered, rate; lift.
fn holdout_cells(h: &Holdout) -> [String; 7] {
    [
        h.sent.to_string(),
        h.sent_ordered.to_string(),
        rate(h.sent_rate),
        h.held_out.to_string(),
        h.held_out_ordered.to_string(),
        rate(h.held_out_rate),
        lift(h),
    ]
}

const HOLDOUT_COLUMNS: [&str; 7] = [
    "sent",
    "ordered",
    "rate",
    "held out",
    "ordered",
    "rate",
    "lift, 95 % interval",
];

/// The columns of a segment's row.
const SEGMENT_COLUMNS: [&str; 10] = [
    "S",
    "K",
    "L",
    "N",
    "R",
    "E",
    "retention",
    "churn",
    "repeat",
    "orders",
];

/// S, K, L, N, R, E, retention, churn, repeat purchases, orders: one
/// segment's row.
fn segment_cells(r: &Retention) -> [String; 10] {
    [
        r.active_at_start.to_string(),
        r.kept.to_string(),
        r.lost.to_string(),
        r.new_customers.to_string(),
        r.won_back.to_string(),
        r.active_at_end.to_string(),
        rate(r.retention_rate),
        rate(r.churn_rate),
        rate(r.repeat_purchase_rate),
        r.orders.to_string(),
    ]
}

/// The 95 % interval of a conversion rate, or `-`.
fn interval(e: &EmailResult) -> String {
    match (e.conversion_low, e.conversion_high) {
        (Some(l), Some(h)) => format!("{l:.2}-{h:.2} %"),
        _ => "-".to_owned(),
    }
}

/// The figures of all customers, label and value, with money written by
/// `money`.
fn retention_rows(r: &Retention, money: fn(Decimal, &str) -> String) -> Vec<(String, String)> {
    let count = |label: &str, n: u64| (label.to_owned(), n.to_string());
    let mut rows = vec![
        count("Active at the start (S)", r.active_at_start),
        count("Kept: of S, active at the end (K)", r.kept),
        count("Lost: of S, not active at the end (L)", r.lost),
        count("New, active at the end (N)", r.new_customers),
        count("Won back, active at the end (R)", r.won_back),
        count("Active at the end (E = K+N+R)", r.active_at_end),
        (
            "Retention rate K/S = (E-N-R)/S".to_owned(),
            rate(r.retention_rate),
        ),
        ("Churn rate L/S".to_owned(), rate(r.churn_rate)),
        (
            "Repeat purchase rate".to_owned(),
            rate(r.repeat_purchase_rate),
        ),
        ("Purchase frequency".to_owned(), num(r.purchase_frequency)),
        count("Orders", r.orders),
    ];
    for (currency, m) in &r.money {
        rows.push((
            format!("Gross revenue ({currency})"),
            money(m.revenue, currency),
        ));
        rows.push((format!("Refunds ({currency})"), money(m.refunds, currency)));
        rows.push((
            format!("Net revenue ({currency})"),
            money(m.net_revenue, currency),
        ));
        rows.push((
            format!("Average order value ({currency})"),
            money(m.average_order_value, currency),
        ));
        rows.push((
            format!("Purchase frequency ({currency})"),
            num(m.purchase_frequency),
        ));
        rows.push((
            format!("Customer lifetime value ({currency})"),
            m.lifetime_value
                .map_or_else(|| "-".to_owned(), |v| money(v, currency)),
        ));
    }
    rows
}

/// The report for a terminal.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Retention report {} to {} (active: an order in the last {} days; attribution: {} days, \
         orders up to {})\n",
        report.from,
        report.to,
        report.active_window_days,
        report.attribution_window_days,
        report.attribution_until
    );
    for (label, value) in retention_rows(&report.customers, plain) {
        let _ = writeln!(out, "  {label:<38} {value:>16}");
    }
    if !report.segments.is_empty() {
        let _ = write!(out, "\n  {:<20}", "segment (at the end)");
        for (i, column) in SEGMENT_COLUMNS.iter().enumerate() {
            let _ = write!(out, " {column:>w$}", w = if i < 6 { 6 } else { 9 });
        }
        let _ = writeln!(out);
        for (name, r) in &report.segments {
            let _ = write!(out, "  {name:<20}");
            for (i, cell) in segment_cells(r).iter().enumerate() {
                let _ = write!(out, " {cell:>w$}", w = if i < 6 { 6 } else { 9 });
            }
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(
        out,
        "\n  {:<30} {:>6} {:>9} {:>7} {:>10} {:>17}",
        "email", "sent", "converted", "orders", "rate", "95 % interval"
    );
    for e in &report.emails {
        let _ = writeln!(
            out,
            "  {:<30} {:>6} {:>9} {:>7} {:>10} {:>17}",
            variant_name(e),
            e.sent,
            e.converted,
            e.attributed_orders,
            rate(e.conversion_rate),
            interval(e)
        );
    }
    for t in &report.ab_tests {
        let _ = writeln!(
            out,
            "\n  A/B {}: {} leads {} with {:.2} % confidence",
            t.template, t.leader, t.runner_up, t.confidence
        );
    }
    if !report.holdouts.is_empty() {
        let _ = write!(out, "\n  {:<22}", "holdout");
        for column in HOLDOUT_COLUMNS {
            let _ = write!(out, " {column:>9}");
        }
        let _ = writeln!(out);
        for h in &report.holdouts {
            let _ = write!(out, "  {:<22}", h.template);
            for cell in holdout_cells(h) {
                let _ = write!(out, " {cell:>9}");
            }
            let _ = writeln!(out, "\n  {:<22} {}", "", h.verdict());
        }
    }
    let r = &report.returns;
    let _ = writeln!(
        out,
        "\n  Returns: {} of {} orders ({})",
        r.returned_orders,
        r.orders,
        rate(r.return_rate)
    );
    for (reason, n) in &r.reasons {
        let _ = writeln!(out, "    {n:>5}  {reason}");
    }
    cohorts::table(&mut out, &report.cohorts);
    gaps::table(&mut out, report);
    out
}

/// The report as pretty JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// SVG of a bar chart, or a note when charts-rs refuses the data.
fn svg(result: charts_rs::Result<String>) -> String {
    result.unwrap_or_else(|e| format!("<p>(chart not drawn: {})</p>", html_escape(&e.to_string())))
}

/// A horizontal bar chart of `(label, value)` rows, or `empty` in words.
fn bars(title: &str, series: &str, rows: Vec<(String, f64)>, empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p>{}</p>", html_escape(empty));
    }
    let height = 80.0 + 34.0 * rows.len() as f32;
    let (labels, values): (Vec<String>, Vec<f32>) =
        rows.into_iter().map(|(l, v)| (l, v as f32)).unzip();
    let mut chart = HorizontalBarChart::new(vec![Series::new(series.into(), values)], labels);
    chart.title.text = title.into();
    chart.width = 760.0;
    chart.height = height;
    chart.series_list[0].label_show = true;
    svg(chart.svg())
}

/// One self-contained HTML page with the tables and SVG charts.
pub fn html(report: &Report, shop: &str) -> String {
    let c = &report.customers;
    let customers_chart = {
        let mut chart = BarChart::new(
            vec![Series::new(
                "Customers".into(),
                vec![
                    c.active_at_start as f32,
                    c.kept as f32,
                    c.lost as f32,
                    c.new_customers as f32,
                    c.won_back as f32,
                    c.active_at_end as f32,
                ],
            )],
            vec![
                "Active at start".into(),
                "Kept".into(),
                "Lost".into(),
                "New".into(),
                "Won back".into(),
                "Active at end".into(),
            ],
        );
        chart.title.text = "Customers".into();
        chart.width = 760.0;
        chart.height = 320.0;
        chart.series_list[0].label_show = true;
        svg(chart.svg())
    };
    // Marketing emails only: transactional ones are never credited.
    let credited: Vec<&EmailResult> = report
        .emails
        .iter()
        .filter(|e| e.conversion_rate.is_some())
        .collect();
    let conversion_chart = bars(
        "Conversion rate by marketing email (%)",
        "Conversion rate (%)",
        credited
            .iter()
            .map(|e| (variant_name(e), e.conversion_rate.unwrap_or(0.0)))
            .collect(),
        "No marketing email was sent in the period.",
    );
    // The chart draws its first row at the bottom: the most frequent reason
    // goes last, to read first.
    let returns_chart = bars(
        "Return reasons",
        "Returns",
        report
            .returns
            .reasons
            .iter()
            .rev()
            .map(|(reason, n)| (reason.clone(), *n as f64))
            .collect(),
        "No return was requested in the period.",
    );
    let mut summary = String::new();
    for (label, value) in retention_rows(c, shown) {
        let _ = write!(
            summary,
            "<tr><th>{}</th><td>{}</td></tr>",
            html_escape(&label),
            html_escape(&value)
        );
    }
    let mut segments = String::new();
    for (name, r) in &report.segments {
        let cells: String = segment_cells(r)
            .iter()
            .map(|c| format!("<td>{}</td>", html_escape(c)))
            .collect();
        let _ = write!(segments, "<tr><th>{}</th>{cells}</tr>", html_escape(name));
    }
    let mut emails = String::new();
    for e in &report.emails {
        let revenue: Vec<String> = e.revenue.iter().map(|(c, v)| shown(*v, c)).collect();
        let _ = write!(
            emails,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&variant_name(e)),
            e.sent,
            e.converted,
            e.attributed_orders,
            html_escape(&revenue.join(", ")),
            rate(e.conversion_rate),
            interval(e)
        );
    }
    let mut tests = String::new();
    for t in &report.ab_tests {
        let _ = write!(
            tests,
            "<li><strong>{}</strong>: variant {} leads {} with {:.2} % confidence{}</li>",
            html_escape(&t.template),
            html_escape(&t.leader),
            html_escape(&t.runner_up),
            t.confidence,
            if t.confidence >= 95.0 {
                ""
            } else {
                " (not yet conclusive: keep the test running)"
            }
        );
    }
    let holdouts = holdouts_html(report);
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Retention report: {shop}</title><style>\
body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:right}}\
th:first-child{{text-align:left}}figure{{margin:1.5em 0}}.chart svg{{max-width:100%;height:auto}}\
caption{{caption-side:bottom;text-align:left;color:#555;padding-top:.5em}}\
table.cohorts td{{text-align:center;min-width:3em;border:1px solid #fff}}\
table.cohorts td.partial{{font-style:italic;outline:1px dashed #555;outline-offset:-3px}}\
</style></head><body>\
<h1>Retention report: {shop}</h1>\
<p>From {from} to {to}. A customer is active with an order in the last {active} days; \
an order is credited to the last marketing email in the {attribution} days before it, \
orders up to {until} included (the period's last emails have their whole window).</p>\
<h2>Customers</h2><table>{summary}</table>\
<figure class=\"chart\" id=\"customers-chart\">{customers_chart}</figure>\
<h2>By segment (as of the period's end)</h2><table><tr><th>segment</th>{segment_columns}</tr>\
{segments}</table>\
<h2>Emails</h2><table><tr><th>email</th><th>sent</th><th>converted</th><th>orders</th>\
<th>revenue</th><th>rate</th><th>95 % interval</th></tr>{emails}</table>\
<ul>{tests}</ul>\
<figure class=\"chart\" id=\"conversion-chart\">{conversion_chart}</figure>\
{holdouts}\
<h2>Returns</h2><p>{returned} of {orders} orders ({return_rate}).</p>\
<figure class=\"chart\" id=\"returns-chart\">{returns_chart}</figure>\
{cohorts}{gaps}</body></html>",
        shop = html_escape(shop),
        from = report.from,
        to = report.to,
        active = report.active_window_days,
        attribution = report.attribution_window_days,
        until = report.attribution_until,
        segment_columns = SEGMENT_COLUMNS
            .iter()
            .map(|c| format!("<th>{c}</th>"))
            .collect::<String>(),
        returned = report.returns.returned_orders,
        orders = report.returns.orders,
        return_rate = rate(report.returns.return_rate),
        cohorts = cohorts::html(&report.cohorts),
        gaps = gaps::html(report),
    )
}

/// The holdout section of the page: nothing when no rule holds customers
/// out.
fn holdouts_html(report: &Report) -> String {
    if report.holdouts.is_empty() {
        return String::new();
    }
    let mut rows = String::new();
    for h in &report.holdouts {
        let cells: String = holdout_cells(h)
            .iter()
            .map(|c| format!("<td>{}</td>", html_escape(c)))
            .collect();
        let _ = write!(
            rows,
            "<tr><th>{}</th>{cells}<td>{}</td></tr>",
            html_escape(&h.template),
            html_escape(h.verdict())
        );
    }
    let columns: String = HOLDOUT_COLUMNS
        .iter()
        .map(|c| format!("<th>{}</th>", html_escape(c)))
        .collect();
    format!(
        "<h2>Did the emails cause the orders? (holdout)</h2>\
<p>Each template's customers in its holdout group were decided like the others and sent \
nothing. Ordered: an order within {days} days after the email (or the moment it would have \
gone). The lift is the senders' rate minus the holdout's, in percentage points, with its \
95 % interval: above 0 throughout, the email brings orders.</p>\
<table id=\"holdouts\"><tr><th>email</th>{columns}<th>verdict</th></tr>{rows}</table>",
        days = report.attribution_window_days
    )
}

/// One CSV field, quoted when it must be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One row of the CSV's `section,group,figure,value`.
fn csv_row(section: &str, group: &str, figure: &str, value: String) -> [String; 4] {
    [section.into(), group.into(), figure.into(), value]
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// The report as CSV: one row per figure, `section,group,figure,value`, so
/// that one table holds every section and a pivot gives any view of it.
/// Rates are in %, money in the currency's units; an unknown figure is an
/// empty value.
pub fn csv(report: &Report) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |section: &str, group: &str, figure: &str, value: String| {
        rows.push([section.into(), group.into(), figure.into(), value]);
    };
    row("period", "", "from", report.from.to_string());
    row("period", "", "to", report.to.to_string());
    row(
        "period",
        "",
        "active_window_days",
        report.active_window_days.to_string(),
    );
    row(
        "period",
        "",
        "attribution_window_days",
        report.attribution_window_days.to_string(),
    );
    row(
        "period",
        "",
        "attribution_until",
        report.attribution_until.to_string(),
    );
    let groups = std::iter::once(("all", &report.customers))
        .chain(report.segments.iter().map(|(n, r)| (n.as_str(), r)));
    for (group, r) in groups {
        let section = if group == "all" {
            "customers"
        } else {
            "segment"
        };
        for (figure, value) in [
            ("active_at_start", r.active_at_start.to_string()),
            ("kept", r.kept.to_string()),
            ("lost", r.lost.to_string()),
            ("new_customers", r.new_customers.to_string()),
            ("won_back", r.won_back.to_string()),
            ("active_at_end", r.active_at_end.to_string()),
            ("retention_rate", opt(r.retention_rate)),
            ("churn_rate", opt(r.churn_rate)),
            ("ordering_customers", r.ordering_customers.to_string()),
            ("orders", r.orders.to_string()),
            ("repeat_purchase_rate", opt(r.repeat_purchase_rate)),
            ("purchase_frequency", opt(r.purchase_frequency)),
        ] {
            row(section, group, figure, value);
        }
        for (currency, m) in &r.money {
            let group = format!("{group} {currency}");
            for (figure, value) in [
                ("orders", m.orders.to_string()),
                ("customers", m.customers.to_string()),
                ("revenue", m.revenue.to_string()),
                ("refunds", m.refunds.to_string()),
                ("net_revenue", m.net_revenue.to_string()),
                ("average_order_value", m.average_order_value.to_string()),
                ("purchase_frequency", opt(m.purchase_frequency)),
                ("lifetime_value", opt(m.lifetime_value)),
            ] {
                row("money", &group, figure, value);
            }
        }
    }
    for e in &report.emails {
        let name = variant_name(e);
        for (figure, value) in [
            ("sent", e.sent.to_string()),
            ("converted", e.converted.to_string()),
            ("attributed_orders", e.attributed_orders.to_string()),
            ("conversion_rate", opt(e.conversion_rate)),
            ("conversion_low", opt(e.conversion_low)),
            ("conversion_high", opt(e.conversion_high)),
        ] {
            row("email", &name, figure, value);
        }
        for (currency, v) in &e.revenue {
            row(
                "email",
                &name,
                &format!("revenue {currency}"),
                v.to_string(),
            );
        }
    }
    for t in &report.ab_tests {
        row("ab_test", &t.template, "leader", t.leader.clone());
        row("ab_test", &t.template, "runner_up", t.runner_up.clone());
        row(
            "ab_test",
            &t.template,
            "confidence",
            t.confidence.to_string(),
        );
    }
    for h in &report.holdouts {
        for (figure, value) in [
            ("sent", h.sent.to_string()),
            ("sent_ordered", h.sent_ordered.to_string()),
            ("sent_rate", opt(h.sent_rate)),
            ("held_out", h.held_out.to_string()),
            ("held_out_ordered", h.held_out_ordered.to_string()),
            ("held_out_rate", opt(h.held_out_rate)),
            ("lift", opt(h.lift)),
            ("lift_low", opt(h.lift_low)),
            ("lift_high", opt(h.lift_high)),
        ] {
            row("holdout", &h.template, figure, value);
        }
    }
    let r = &report.returns;
    row("returns", "all", "orders", r.orders.to_string());
    row(
        "returns",
        "all",
        "returned_orders",
        r.returned_orders.to_string(),
    );
    row("returns", "all", "return_rate", opt(r.return_rate));
    for (reason, n) in &r.reasons {
        row("return_reason", reason, "requests", n.to_string());
    }
    rows.extend(cohorts::csv(&report.cohorts));
    rows.extend(gaps::csv(report));
    let mut out = String::from("section,group,figure,value\n");
    for r in rows {
        let line: Vec<String> = r.iter().map(|f| field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}
