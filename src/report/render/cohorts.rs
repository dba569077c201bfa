//! The cohort table in each format. On the page it is a heat map: each
//! cell's background is as strong as its rate, so that the eye finds the
//! months whose customers came back more, or less, before reading a number.

use std::fmt::Write as _;

use super::{csv_row, opt};
use crate::report::cohorts::{Cohort, CohortCell};

/// A cell's rate as read: `25.00`, `-` for an empty cohort, `*` after a
/// month cut by the period's end.
fn cell_text(c: &CohortCell) -> String {
    let rate = c.rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
    if c.partial { format!("{rate}*") } else { rate }
}

/// The most month columns of any row (the oldest cohort's).
fn columns(cohorts: &[Cohort]) -> usize {
    cohorts.iter().map(|c| c.months.len()).max().unwrap_or(0)
}

fn any_partial(cohorts: &[Cohort]) -> bool {
    cohorts.iter().flat_map(|c| &c.months).any(|m| m.partial)
}

/// The cohorts as a text grid for a terminal.
pub(super) fn table(out: &mut String, cohorts: &[Cohort]) {
    if cohorts.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n  Cohorts: customers by month of first order, % of them ordering in each later month"
    );
    let _ = write!(out, "  {:<9} {:>9}", "cohort", "customers");
    for k in 1..=columns(cohorts) {
        let _ = write!(out, " {:>8}", format!("m{k}"));
    }
    let _ = writeln!(out);
    for c in cohorts {
        let _ = write!(out, "  {:<9} {:>9}", c.month, c.customers);
        for m in &c.months {
            let _ = write!(out, " {:>8}", cell_text(m));
        }
        let _ = writeln!(out);
    }
    if any_partial(cohorts) {
        let _ = writeln!(
            out,
            "  * the period ends within that month: the share so far"
        );
    }
}

/// The heat map's colour at full strength (a dark blue: white text on it
/// reads well).
const HEAT: [f64; 3] = [30.0, 64.0, 175.0];

/// The background of a cell: [`HEAT`], as opaque as the rate (a tint even
/// at 0 %, so that a cell with a figure never looks empty), half as strong
/// when the month is cut short.
fn alpha(rate: f64, partial: bool) -> f64 {
    let alpha = 0.08 + 0.92 * (rate.clamp(0.0, 100.0) / 100.0);
    let alpha = if partial { alpha * 0.5 } else { alpha };
    (alpha * 1000.0).round() / 1000.0
}

/// Black or white, whichever contrasts more with [`HEAT`] at `alpha` over
/// the white page (WCAG relative luminance): at least 4.5 to 1 either way.
fn text_colour(alpha: f64) -> &'static str {
    let linear = |c: f64| {
        let c = (255.0 * (1.0 - alpha) + c * alpha) / 255.0;
        if c <= 0.040_45 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let l = 0.2126 * linear(HEAT[0]) + 0.7152 * linear(HEAT[1]) + 0.0722 * linear(HEAT[2]);
    let (on_white, on_black) = (1.05 / (l + 0.05), (l + 0.05) / 0.05);
    if on_white > on_black { "#fff" } else { "#000" }
}

/// One cell of the heat map.
fn html_cell(c: &CohortCell) -> String {
    let Some(rate) = c.rate else {
        return "<td>-</td>".to_owned();
    };
    let strength = alpha(rate, c.partial);
    format!(
        "<td data-rate=\"{rate}\"{class} title=\"{n} customers\" \
         style=\"background-color:rgba({r},{g},{b},{alpha});color:{text}\">{shown}</td>",
        r = HEAT[0],
        g = HEAT[1],
        b = HEAT[2],
        alpha = strength,
        text = text_colour(strength),
        class = if c.partial { " class=\"partial\"" } else { "" },
        n = c.customers,
        shown = cell_text(c),
    )
}

/// The cohorts as a heat map table for the page.
pub(super) fn html(cohorts: &[Cohort]) -> String {
    if cohorts.is_empty() {
        return String::new();
    }
    let width = columns(cohorts);
    let mut rows = String::new();
    for c in cohorts {
        let _ = write!(rows, "<tr><th>{}</th><td>{}</td>", c.month, c.customers);
        for m in &c.months {
            rows.push_str(&html_cell(m));
        }
        for _ in c.months.len()..width {
            rows.push_str("<td class=\"none\"></td>");
        }
        rows.push_str("</tr>");
    }
    let head: String = (1..=width).map(|k| format!("<th>{k}</th>")).collect();
    let note = if any_partial(cohorts) {
        "<p>* The period ends within that month: the share so far, shown paler.</p>"
    } else {
        ""
    };
    format!(
        "<h2>Cohorts</h2><table class=\"cohorts\"><caption>Customers by the month of their \
first order (UTC), and the % of them who ordered again in each month after it: month 1 is \
the next calendar month. The darker the cell, the more came back. Only orders placed before \
the period's end count; a customer whose first order is older than the first month shown is \
in no row.</caption><tr><th>first order</th><th>customers</th>{head}</tr>{rows}</table>{note}"
    )
}

/// The cohorts' CSV rows: section `cohort`, group the month, figures
/// `customers` and `month_K` (the rate); a month cut by the period's end is
/// `month_K_partial`, so that a pivot never mixes it with whole months.
pub(super) fn csv(cohorts: &[Cohort]) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    for c in cohorts {
        rows.push(csv_row(
            "cohort",
            &c.month,
            "customers",
            c.customers.to_string(),
        ));
        for m in &c.months {
            let figure = if m.partial {
                format!("month_{}_partial", m.offset)
            } else {
                format!("month_{}", m.offset)
            };
            rows.push(csv_row("cohort", &c.month, &figure, opt(m.rate)));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_is_tinted_even_at_zero_and_its_text_stays_readable() {
        assert_eq!(alpha(0.0, false), 0.08);
        assert_eq!(alpha(100.0, false), 1.0);
        assert_eq!(alpha(100.0, true), 0.5);
        assert_eq!(text_colour(0.08), "#000");
        assert_eq!(text_colour(1.0), "#fff");
    }
}
