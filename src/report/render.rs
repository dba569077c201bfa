//! The report as a table for a terminal, JSON for a pipeline, or one
//! self-contained HTML page with SVG charts (charts-rs; no script, no
//! network), readable offline.

use std::fmt::Write as _;

use charts_rs::{BarChart, HorizontalBarChart, Series};
use handlebars::html_escape;

use super::{EmailResult, Report, Retention};

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

/// S, N, E, retention, repeat purchases, orders: one segment's row.
fn segment_cells(r: &Retention) -> [String; 6] {
    [
        r.active_at_start.to_string(),
        r.new_customers.to_string(),
        r.active_at_end.to_string(),
        rate(r.retention_rate),
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

fn retention_rows(r: &Retention) -> Vec<(String, String)> {
    let mut rows = vec![
        (
            "Active at the start (S)".to_owned(),
            r.active_at_start.to_string(),
        ),
        (
            "New in the period (N)".to_owned(),
            r.new_customers.to_string(),
        ),
        (
            "Active at the end (E)".to_owned(),
            r.active_at_end.to_string(),
        ),
        ("Retention rate (E-N)/S".to_owned(), rate(r.retention_rate)),
        ("Churn rate".to_owned(), rate(r.churn_rate)),
        (
            "Repeat purchase rate".to_owned(),
            rate(r.repeat_purchase_rate),
        ),
        ("Purchase frequency".to_owned(), num(r.purchase_frequency)),
        ("Orders".to_owned(), r.orders.to_string()),
    ];
    for (currency, m) in &r.money {
        rows.push((format!("Revenue ({currency})"), m.revenue.to_string()));
        rows.push((
            format!("Average order value ({currency})"),
            m.average_order_value.to_string(),
        ));
        rows.push((
            format!("Customer lifetime value ({currency})"),
            m.lifetime_value.map_or("-".to_owned(), |v| v.to_string()),
        ));
    }
    rows
}

/// The report for a terminal.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Retention report {} to {} (active: an order in the last {} days; attribution: {} days)\n",
        report.from, report.to, report.active_window_days, report.attribution_window_days
    );
    for (label, value) in retention_rows(&report.customers) {
        let _ = writeln!(out, "  {label:<34} {value:>12}");
    }
    if !report.segments.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<16} {:>6} {:>6} {:>6} {:>10} {:>10} {:>8}",
            "segment", "S", "N", "E", "retention", "repeat", "orders"
        );
        for (name, r) in &report.segments {
            let [s, n, e, retention, repeat, orders] = segment_cells(r);
            let _ = writeln!(
                out,
                "  {name:<16} {s:>6} {n:>6} {e:>6} {retention:>10} {repeat:>10} {orders:>8}"
            );
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
                    c.new_customers as f32,
                    c.active_at_end as f32,
                ],
            )],
            vec![
                "Active at start".into(),
                "New".into(),
                "Active at end".into(),
            ],
        );
        chart.title.text = "Customers".into();
        chart.width = 560.0;
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
    let returns_chart = bars(
        "Return reasons",
        "Returns",
        report
            .returns
            .reasons
            .iter()
            .map(|(reason, n)| (reason.clone(), *n as f64))
            .collect(),
        "No return was requested in the period.",
    );
    let mut summary = String::new();
    for (label, value) in retention_rows(c) {
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
        let revenue: Vec<String> = e.revenue.iter().map(|(c, v)| format!("{v} {c}")).collect();
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
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Retention report: {shop}</title><style>\
body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:right}}\
th:first-child{{text-align:left}}figure{{margin:1.5em 0}}.chart svg{{max-width:100%;height:auto}}\
</style></head><body>\
<h1>Retention report: {shop}</h1>\
<p>From {from} to {to}. A customer is active with an order in the last {active} days; \
an order is credited to the last email in the {attribution} days before it.</p>\
<h2>Customers</h2><table>{summary}</table>\
<figure class=\"chart\" id=\"customers-chart\">{customers_chart}</figure>\
<h2>By segment</h2><table><tr><th>segment</th><th>S</th><th>N</th><th>E</th>\
<th>retention</th><th>repeat</th><th>orders</th></tr>{segments}</table>\
<h2>Emails</h2><table><tr><th>email</th><th>sent</th><th>converted</th><th>orders</th>\
<th>revenue</th><th>rate</th><th>95 % interval</th></tr>{emails}</table>\
<ul>{tests}</ul>\
<figure class=\"chart\" id=\"conversion-chart\">{conversion_chart}</figure>\
<h2>Returns</h2><p>{returned} of {orders} orders ({return_rate}).</p>\
<figure class=\"chart\" id=\"returns-chart\">{returns_chart}</figure>\
</body></html>",
        shop = html_escape(shop),
        from = report.from,
        to = report.to,
        active = report.active_window_days,
        attribution = report.attribution_window_days,
        returned = report.returns.returned_orders,
        orders = report.returns.orders,
        return_rate = rate(report.returns.return_rate),
    )
}
