//! Time between orders in each format: a row per group (all customers, each
//! segment) and, on the page, a bar chart of the distribution.

use std::fmt::Write as _;

use charts_rs::{BarChart, Series};
use handlebars::html_escape;

use super::{csv_row, num, opt, svg};
use crate::report::Report;
use crate::report::gaps::Gaps;

/// All customers first, then each segment.
fn groups(report: &Report) -> Vec<(&str, &Gaps)> {
    std::iter::once(("all", &report.time_between_orders))
        .chain(
            report
                .time_between_orders_by_segment
                .iter()
                .map(|(n, g)| (n.as_str(), g)),
        )
        .collect()
}

/// The bucket labels, the same for every group.
fn bucket_labels(g: &Gaps) -> Vec<&str> {
    g.buckets.iter().map(|(l, _)| l.as_str()).collect()
}

/// Gaps, p25, median, p75, then the count of each bucket.
fn cells(g: &Gaps) -> Vec<String> {
    [
        g.count.to_string(),
        num(g.p25_days),
        num(g.median_days),
        num(g.p75_days),
    ]
    .into_iter()
    .chain(g.buckets.iter().map(|(_, n)| n.to_string()))
    .collect()
}

/// The time between orders for a terminal.
pub(super) fn table(out: &mut String, report: &Report) {
    let all = &report.time_between_orders;
    let _ = writeln!(
        out,
        "\n  Time between orders (days): gaps between consecutive orders, the later in the period"
    );
    let _ = write!(
        out,
        "  {:<20} {:>6} {:>8} {:>8} {:>8}",
        "group", "gaps", "p25", "median", "p75"
    );
    for label in bucket_labels(all) {
        let _ = write!(out, " {label:>7}");
    }
    let _ = writeln!(out);
    for (name, g) in groups(report) {
        let cells = cells(g);
        let _ = write!(
            out,
            "  {name:<20} {:>6} {:>8} {:>8} {:>8}",
            cells[0], cells[1], cells[2], cells[3]
        );
        for c in &cells[4..] {
            let _ = write!(out, " {c:>7}");
        }
        let _ = writeln!(out);
    }
}

/// The distribution of all customers' gaps as a bar chart, or a sentence
/// when no gap was closed.
fn chart(g: &Gaps) -> String {
    if g.count == 0 {
        return "<p>No customer ordered again in the period.</p>".to_owned();
    }
    let (labels, values): (Vec<String>, Vec<f32>) = g
        .buckets
        .iter()
        .map(|(l, n)| (format!("{l} days"), *n as f32))
        .unzip();
    let mut chart = BarChart::new(vec![Series::new("Gaps".into(), values)], labels);
    chart.title.text = "Time between orders, all customers".into();
    chart.width = 760.0;
    chart.height = 320.0;
    chart.series_list[0].label_show = true;
    svg(chart.svg())
}

/// The time between orders for the page: the table and the chart.
pub(super) fn html(report: &Report) -> String {
    let all = &report.time_between_orders;
    let head: String = [
        "group",
        "gaps",
        "25th percentile",
        "median",
        "75th percentile",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(bucket_labels(all).into_iter().map(|l| format!("{l} days")))
    .map(|h| format!("<th>{}</th>", html_escape(&h)))
    .collect();
    let mut rows = String::new();
    for (name, g) in groups(report) {
        let cells: String = cells(g)
            .iter()
            .map(|c| format!("<td>{}</td>", html_escape(c)))
            .collect();
        let _ = write!(rows, "<tr><th>{}</th>{cells}</tr>", html_escape(name));
    }
    format!(
        "<h2>Time between orders</h2><table class=\"gaps\"><caption>Days between a customer's \
consecutive orders, for the orders of the period (the one before may be older), by segment \
as of the period's end. The adaptive win-back waits a multiple of each customer's own median gap \
(twice, by default): where most gaps fall is where win-backs do.</caption><tr>{head}</tr>{rows}</table>\
<p>Each bucket holds its lower edge, not its upper: a gap of exactly 7 days is in 7-30.</p>\
<figure class=\"chart\" id=\"gaps-chart\">{chart}</figure>",
        chart = chart(all)
    )
}

/// The CSV rows: section `time_between_orders`, group `all` or the
/// segment, figures `gaps`, `p25_days`, `median_days`, `p75_days` and
/// `days_0-7`... per bucket.
pub(super) fn csv(report: &Report) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    for (group, g) in groups(report) {
        for (figure, value) in [
            ("gaps", g.count.to_string()),
            ("p25_days", opt(g.p25_days)),
            ("median_days", opt(g.median_days)),
            ("p75_days", opt(g.p75_days)),
        ] {
            rows.push(csv_row("time_between_orders", group, figure, value));
        }
        for (label, n) in &g.buckets {
            rows.push(csv_row(
                "time_between_orders",
                group,
                &format!("days_{label}"),
                n.to_string(),
            ));
        }
    }
    rows
}
