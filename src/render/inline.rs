//! CSS inlining of the HTML templates, once, when the set is loaded.
//!
//! Gmail and Outlook ignore most of a `<style>` block, so every rule of the
//! brand stylesheet (`templates/style.css.hbs`, rendered with the `shop`
//! settings) is written into the `style` attribute of each element it
//! matches. This is done to the template *source*, not to each email: a
//! send costs nothing for it.
//!
//! The HTML parser must not see the handlebars expressions: `{{#each}}`
//! between two table rows would be moved out of the table. So each
//! expression in text is swapped for an HTML comment (which the parser
//! keeps where it is), each one inside a tag for a plain token, and both
//! are put back after inlining. An expression between attributes
//! (`<td {{#if x}}class="a"{{/if}}>`) cannot survive an HTML parser and is
//! reported.
//!
//! Rules apply file by file: a partial is inlined on its own, so a selector
//! matches by the element's own tag, class or id (`.button`, `td.price`),
//! not by ancestors in another file.
//!
//! `@media` rules (narrow screens, dark mode) cannot go into a `style`
//! attribute: they stay in a `<style>` at the end of the `<head>` of the
//! whole document (the layout), where they match across files; a fragment
//! (a template, a partial) drops them, since the layout carries them.

use css_inline::CSSInliner;

/// Why a template could not be inlined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InlineError {
    #[error(
        "line {line}: a {{{{...}}}} between attributes cannot be inlined; put it inside an attribute's value"
    )]
    BetweenAttributes { line: usize },
    #[error("unclosed {{{{ at line {line}")]
    Unclosed { line: usize },
    #[error("CSS: {0}")]
    Css(String),
}

/// One handlebars expression taken out of the source.
struct Hole {
    text: String,
    in_tag: bool,
}

/// Inlines `css` into the HTML template `source`, which may be a whole
/// document (`<!DOCTYPE html>...`) or a fragment.
pub fn inline_template(source: &str, css: &str) -> Result<String, InlineError> {
    if css.trim().is_empty() {
        return Ok(source.to_owned());
    }
    let (masked, holes) = mask(source)?;
    let inliner = CSSInliner::options()
        .load_remote_stylesheets(false)
        // The sheet is inlined; only its @media rules stay in a <style>.
        .keep_style_tags(false)
        .keep_at_rules(true)
        .minify_css(true)
        .build();
    let start = source.trim_start();
    let whole_document = ["<!doctype", "<html"].iter().any(|open| {
        start
            .get(..open.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(open))
    });
    let inlined = if whole_document {
        let with_sheet = inject_sheet(&masked, css);
        inliner
            .inline(&with_sheet)
            .map(|html| kept_rules_last(&html))
    } else {
        inliner.inline_fragment(&masked, css)
    }
    .map_err(|e| InlineError::Css(e.to_string()))?;
    Ok(unmask(&inlined, &holes))
}

/// The inliner writes the rules it keeps (`@media`) first in `<head>`:
/// moved to its end, after `<meta charset>` (which must come in the first
/// 1024 bytes) and the other metas, one line each.
fn kept_rules_last(html: &str) -> String {
    const OPEN: &str = "<head><style>";
    let Some(start) = html.find(OPEN).map(|at| at + "<head>".len()) else {
        return html.to_owned();
    };
    let Some(len) = html[start..]
        .find("</style>")
        .map(|end| end + "</style>".len())
    else {
        return html.to_owned();
    };
    let Some(head_end) = html[start + len..]
        .find("</head>")
        .map(|at| at + start + len)
    else {
        return html.to_owned();
    };
    let style: String = html[start..start + len]
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "{}{}{style}\n{}",
        &html[..start],
        &html[start + len..head_end],
        &html[head_end..]
    )
}

/// Puts the stylesheet in the document's head, for the inliner to apply.
fn inject_sheet(document: &str, css: &str) -> String {
    let style = format!("<style data-brand>{css}</style>");
    match document.find("</head>") {
        Some(at) => format!("{}{style}{}", &document[..at], &document[at..]),
        None => format!("{style}{document}"),
    }
}

fn comment(i: usize) -> String {
    format!("<!--hb{i}-->")
}

fn token(i: usize) -> String {
    format!("hbx{i}x")
}

/// Replaces every `{{...}}` (and `{{{...}}}`) with a comment or a token.
fn mask(source: &str) -> Result<(String, Vec<Hole>), InlineError> {
    let mut out = String::with_capacity(source.len());
    let mut holes = Vec::new();
    // Where the scanner is in the HTML: text, inside a tag's name and
    // attributes, or inside a quoted attribute value.
    #[derive(PartialEq)]
    enum At {
        Text,
        Tag,
        Quoted(char),
        /// Inside `<title>`, `<style>`...: text, but a comment would be
        /// read as text too.
        Raw(&'static str),
    }
    const RAW: [&str; 4] = ["title", "textarea", "style", "script"];
    let mut at = At::Text;
    let mut tag_start = 0;
    let mut rest = source;
    while !rest.is_empty() {
        if rest.starts_with("{{") {
            let line = source[..source.len() - rest.len()].matches('\n').count() + 1;
            let len = expression_len(rest).ok_or(InlineError::Unclosed { line })?;
            let in_tag = at != At::Text;
            if at == At::Tag {
                return Err(InlineError::BetweenAttributes { line });
            }
            let i = holes.len();
            holes.push(Hole {
                text: rest[..len].to_owned(),
                in_tag,
            });
            out.push_str(&if in_tag { token(i) } else { comment(i) });
            rest = &rest[len..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        at = match (at, c) {
            (At::Text, '<')
                if rest[1..]
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_ascii_alphabetic() || n == '/') =>
            {
                tag_start = out.len();
                At::Tag
            }
            (At::Tag, '"' | '\'') => At::Quoted(c),
            (At::Tag, '>') => {
                let name: String = out[tag_start + 1..]
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect::<String>()
                    .to_ascii_lowercase();
                RAW.iter()
                    .find(|raw| **raw == name)
                    .map_or(At::Text, |raw| At::Raw(raw))
            }
            (At::Quoted(q), c) if c == q => At::Tag,
            (At::Raw(name), '<')
                if rest.get(2..2 + name.len()).is_some_and(|n| {
                    rest[1..].starts_with('/') && n.eq_ignore_ascii_case(name)
                }) =>
            {
                tag_start = out.len();
                At::Tag
            }
            (at, _) => at,
        };
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok((out, holes))
}

/// The length of the expression at the start of `s`, braces included.
fn expression_len(s: &str) -> Option<usize> {
    // A comment `{{!-- ... --}}` may hold `}}`.
    if s.starts_with("{{!--") {
        return s.find("--}}").map(|end| end + 4);
    }
    let close = if s.starts_with("{{{") { "}}}" } else { "}}" };
    s.find(close).map(|end| end + close.len())
}

fn unmask(html: &str, holes: &[Hole]) -> String {
    let mut out = html.to_owned();
    // Highest index first, so `hb1` never matches inside `hb12`.
    for (i, hole) in holes.iter().enumerate().rev() {
        let mark = if hole.in_tag { token(i) } else { comment(i) };
        out = out.replacen(&mark, &hole.text, 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSS: &str = "p { margin: 0 } .button { color: #123456 } td.price { text-align: right }";

    #[test]
    fn rules_land_in_style_attributes_and_expressions_survive() {
        let out = inline_template(
            "<p>Hi {{customer.name}}</p><a class=\"button\" href=\"{{shop.url}}\">{{label}}</a>",
            CSS,
        )
        .unwrap();
        assert_eq!(
            out,
            "<p style=\"margin:0\">Hi {{customer.name}}</p>\
             <a class=\"button\" href=\"{{shop.url}}\" style=\"color:#123456\">{{label}}</a>"
        );
    }

    #[test]
    fn block_helpers_between_table_rows_stay_in_the_table() {
        let source = "<table>{{#each items}}<tr><td class=\"price\">{{money price \"EUR\"}}</td></tr>{{/each}}</table>";
        let out = inline_template(source, CSS).unwrap();
        let each = out.find("{{#each items}}").unwrap();
        let row = out.find("<tr>").unwrap();
        let end = out.find("{{/each}}").unwrap();
        assert!(
            out.find("<table>").unwrap() < each && each < row && row < end,
            "{out}"
        );
        assert!(
            out.contains("<td class=\"price\" style=\"text-align:right\">"),
            "{out}"
        );
    }

    #[test]
    fn a_whole_document_keeps_its_shape_and_gets_the_sheet() {
        let source = "<!DOCTYPE html>\n<html lang=\"{{customer.locale}}\"><head><title>{{shop.name}}</title></head>\
                      <body><p>{{> @partial-block}}</p></body></html>";
        let out = inline_template(source, CSS).unwrap();
        assert!(out.starts_with("<!DOCTYPE html>"), "{out}");
        assert!(out.contains("<title>{{shop.name}}</title>"), "{out}");
        assert!(out.contains("<html lang=\"{{customer.locale}}\">"), "{out}");
        assert!(
            out.contains("<p style=\"margin:0\">{{> @partial-block}}</p>"),
            "{out}"
        );
    }

    #[test]
    fn media_rules_survive_at_the_end_of_the_head_and_only_there() {
        let css = "td.cell { padding: 24px } \
                   @media only screen and (max-width: 480px) {\n  td.cell { padding: 8px !important; }\n}\n\
                   @media (prefers-color-scheme: dark) { td.cell { color: #eee !important; } }";
        let source = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>{{shop.name}}</title>\n</head>\
                      <body><table><tr><td class=\"cell\">{{> @partial-block}}</td></tr></table></body></html>";
        let out = inline_template(source, css).unwrap();
        assert!(
            out.contains("<td class=\"cell\" style=\"padding:24px\">"),
            "{out}"
        );
        let head = &out[..out.find("</head>").unwrap()];
        let meta = head.find("<meta charset").unwrap();
        let narrow = head
            .find("@media only screen and (max-width: 480px) {")
            .unwrap();
        let dark = head.find("@media (prefers-color-scheme: dark)").unwrap();
        assert!(meta < narrow && narrow < dark, "{out}");
        assert!(
            head.contains("td.cell { padding: 8px !important; }"),
            "{out}"
        );
        assert!(head.trim_end().ends_with("</style>"), "{out}");
        // A fragment gets the plain rules; the layout carries the others.
        let out = inline_template("<p><td class=\"cell\">x</td></p>", css).unwrap();
        assert!(!out.contains("@media") && !out.contains("<style"), "{out}");
    }

    #[test]
    fn comments_and_triple_braces_come_back_as_written() {
        let source = "<p>{{!-- a note with }} inside --}}{{{shop.footer_html}}}</p>";
        let out = inline_template(source, CSS).unwrap();
        assert_eq!(
            out,
            "<p style=\"margin:0\">{{!-- a note with }} inside --}}{{{shop.footer_html}}}</p>"
        );
    }

    #[test]
    fn an_expression_between_attributes_is_reported_with_its_line() {
        let err = inline_template("<p>\n<td {{#if x}}class=\"a\"{{/if}}>", CSS).unwrap_err();
        assert_eq!(err, InlineError::BetweenAttributes { line: 2 });
        let err = inline_template("<p>{{oops</p>", CSS).unwrap_err();
        assert_eq!(err, InlineError::Unclosed { line: 1 });
    }

    #[test]
    fn many_expressions_are_put_back_in_their_places() {
        let source: String = (0..15).map(|i| format!("<p>{{{{v{i}}}}}</p>")).collect();
        let out = inline_template(&source, CSS).unwrap();
        let expected: String = (0..15)
            .map(|i| format!("<p style=\"margin:0\">{{{{v{i}}}}}</p>"))
            .collect();
        assert_eq!(out, expected);
    }
}
