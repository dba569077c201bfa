//! The template set: loading, strict rendering, escaping, locales, and
//! errors that point at file, line and column.

use std::path::Path;

use serde_json::json;

use super::*;

/// A template folder with `files` (path relative to the folder, content).
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

const GOOD: &[(&str, &str)] = &[
    (
        "partials/layout.html.hbs",
        "<html>{{> @partial-block}}{{> footer}}</html>",
    ),
    (
        "partials/layout.txt.hbs",
        "{{> @partial-block}} -- {{> footer}}",
    ),
    ("en/partials/footer.html.hbs", "<p>{{shop.name}}</p>"),
    ("en/partials/footer.txt.hbs", "{{shop.name}}"),
    ("en/hello.subject.hbs", "Hello\n  {{customer.name}}"),
    (
        "en/hello.preheader.hbs",
        "Your tea\n  is on   its way, {{customer.name}}\n",
    ),
    (
        "en/hello.html.hbs",
        "{{#> layout}}<b>{{customer.name}}</b> {{money total \"EUR\"}}{{/layout}}",
    ),
    (
        "en/hello.txt.hbs",
        "{{#> layout}}Hi {{customer.name}}, {{plural n \"item\" \"items\"}}{{/layout}}",
    ),
    ("hy/partials/footer.html.hbs", "<p>{{shop.name}}</p>"),
    ("hy/partials/footer.txt.hbs", "{{shop.name}}"),
    ("hy/hello.subject.hbs", "Բարեւ {{customer.name}}"),
    ("hy/hello.preheader.hbs", "Թեյը ճանապարհին է"),
    (
        "hy/hello.html.hbs",
        "{{#> layout}}{{money total \"EUR\"}}{{/layout}}",
    ),
    (
        "hy/hello.txt.hbs",
        "{{#> layout}}{{plural n \"հատ\" \"հատ\"}}{{/layout}}",
    ),
];

fn data(locale: &str) -> Value {
    json!({
        "customer": {"name": "<Anna & \"Co\">", "locale": locale},
        "shop": {"name": "Tea & Kettle"},
        "total": "1234.5",
        "n": 2,
    })
}

fn load(dir: &Path) -> Templates {
    Templates::load(dir, &LoadOptions::new("en")).unwrap()
}

/// `GOOD` with `file` written as `source`: the folder, and the problems of
/// rendering `hello` in English.
fn render_en_with(file: &str, source: &str) -> (tempfile::TempDir, Vec<Problem>) {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != file);
    files.push((file, source));
    let dir = fixture(&files);
    let Problems(problems) = load(dir.path())
        .render("hello", "en", &data("en"))
        .unwrap_err();
    (dir, problems)
}

#[test]
fn renders_html_escaped_and_text_verbatim() {
    let dir = fixture(GOOD);
    let r = load(dir.path()).render("hello", "en", &data("en")).unwrap();
    assert_eq!(r.subject, "Hello <Anna & \"Co\">");
    assert_eq!(r.preheader, "Your tea is on its way, <Anna & \"Co\">");
    // No <body>: the hidden preheader comes first.
    let (preheader, html) = r.html.split_once("</div>").unwrap();
    assert!(
        preheader.starts_with("<div class=\"preheader\" style=\"display:none;")
            && preheader
                .contains(">Your tea is on its way, &lt;Anna &amp; &quot;Co&quot;&gt;&zwnj;&nbsp;"),
        "{preheader}"
    );
    assert_eq!(
        html,
        "<html><b>&lt;Anna &amp; &quot;Co&quot;&gt;</b> €1,234.50<p>Tea &amp; Kettle</p></html>"
    );
    assert_eq!(r.text, "Hi <Anna & \"Co\">, items -- Tea & Kettle");
}

/// A layout as the shipped one: a whole document with a `<body>`.
const DOCUMENT_LAYOUT: &str = "<!DOCTYPE html>\n<html><head><title>{{shop.name}}</title></head>\n\
     <body class=\"email\">\n<table class=\"wrapper\"><tr><td>{{> @partial-block}}</td></tr></table>\n</body></html>";

#[test]
fn the_preheader_is_the_first_thing_in_the_body_hidden_and_not_in_the_text_part() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "partials/layout.html.hbs" && *p != "en/hello.txt.hbs");
    files.push(("partials/layout.html.hbs", DOCUMENT_LAYOUT));
    files.push((
        "style.css.hbs",
        "div.preheader { font-family: 'Noto Sans Armenian', sans-serif } \
         table.wrapper { width: 100% }",
    ));
    let dir = fixture(&files);
    let mut options = LoadOptions::new("en");
    options.shop = json!({});
    let t = Templates::load(dir.path(), &options).unwrap();
    t.require(&["hello"]).unwrap();
    let r = t.render("hello", "en", &data("en")).unwrap();
    let body = r.html.find("<body class=\"email\">").unwrap() + "<body class=\"email\">".len();
    let block = &r.html[body..r.html.find("<table").unwrap()];
    // Hidden in every client, Outlook's too; the stylesheet adds the font.
    for style in [
        "display:none",
        "max-height:0",
        "overflow:hidden",
        "mso-hide:all",
        "font-family:'Noto Sans Armenian'",
    ] {
        assert!(block.contains(style), "{style}: {block}");
    }
    assert!(
        block.contains(
            ">Your tea is on its way, &lt;Anna &amp; &quot;Co&quot;&gt;&zwnj;&nbsp;&zwnj;&nbsp;"
        ),
        "escaped, then padded: {block}"
    );
    assert!(block.trim_end().ends_with("&zwnj;&nbsp;</div>"), "{block}");
    // The text part made from the HTML is the email, without the preview.
    assert!(r.text.contains("€1,234.50"), "{}", r.text);
    assert!(!r.text.contains("Your tea"), "{}", r.text);
    // The other locale has its own.
    let r = t.render("hello", "hy", &data("hy")).unwrap();
    assert_eq!(r.preheader, "Թեյը ճանապարհին է");
    assert!(r.html.contains(">Թեյը ճանապարհին է&zwnj;"), "{}", r.html);
}

#[test]
fn a_missing_preheader_is_named_like_a_missing_subject() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "hy/hello.preheader.hbs");
    let dir = fixture(&files);
    let t = load(dir.path());
    let Problems(problems) = t.require(&["hello"]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, dir.path().join("hy/hello.preheader.hbs"));
    assert!(
        problems[0]
            .message
            .contains("no preheader part in locale `hy`"),
        "{}",
        problems[0].message
    );
    // A fallback covers it, as it covers the other parts.
    files.retain(|(p, _)| !p.starts_with("hy/hello."));
    let dir = fixture(&files);
    let mut options = LoadOptions::new("en");
    options.fallbacks.insert("hy".into(), "en".into());
    let t = Templates::load(dir.path(), &options).unwrap();
    t.require(&["hello"]).unwrap();
    let r = t.render("hello", "hy", &data("hy")).unwrap();
    assert_eq!(r.preheader, "Your tea is on its way, <Anna & \"Co\">");
}

#[test]
fn a_preheader_error_points_into_its_file() {
    let (dir, problems) = render_en_with("en/hello.preheader.hbs", "Hi\n{{customer.nmae}}");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, dir.path().join("en/hello.preheader.hbs"));
    assert_eq!(problems[0].line, Some(2), "{:?}", problems[0]);
    assert!(
        problems[0].message.contains("customer.nmae"),
        "{:?}",
        problems[0]
    );
}

#[test]
fn locale_helpers_follow_the_data() {
    let dir = fixture(GOOD);
    let r = load(dir.path()).render("hello", "hy", &data("hy")).unwrap();
    // CLDR groups Armenian numbers from five digits on.
    assert!(
        r.html
            .ends_with("</div><html>1234,50\u{a0}€<p>Tea &amp; Kettle</p></html>"),
        "{}",
        r.html
    );
}

#[test]
fn locales_fall_back_by_language_then_default() {
    let dir = fixture(GOOD);
    let t = load(dir.path());
    let l = t.locales();
    assert_eq!(l.available(), ["en", "hy"]);
    assert_eq!(l.resolve(Some("hy-AM")), "hy");
    assert_eq!(l.resolve(Some("hy_AM")), "hy");
    assert_eq!(l.resolve(Some("HY")), "hy");
    assert_eq!(l.resolve(Some("de-DE")), "en");
    assert_eq!(l.resolve(None), "en");
}

#[test]
fn missing_variable_names_file_line_column_and_variable() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "en/hello.html.hbs");
    files.push((
        "en/hello.html.hbs",
        "{{#> layout}}\n<p>\n  {{customer.nmae}}</p>{{/layout}}",
    ));
    let dir = fixture(&files);
    let Problems(problems) = load(dir.path())
        .render("hello", "en", &data("en"))
        .unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.file, dir.path().join("en/hello.html.hbs"));
    assert_eq!((p.line, p.column), (Some(3), Some(3)));
    assert_eq!(p.message, "missing variable `customer.nmae`");
    assert!(
        p.to_string()
            .ends_with("en/hello.html.hbs:3:3: missing variable `customer.nmae`"),
        "{p}"
    );
}

#[test]
fn missing_variable_inside_a_partial_points_at_the_partial() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "en/partials/footer.txt.hbs");
    files.push((
        "en/partials/footer.txt.hbs",
        "{{shop.name}}\n{{shop.adress}}",
    ));
    let dir = fixture(&files);
    let Problems(problems) = load(dir.path())
        .render("hello", "en", &data("en"))
        .unwrap_err();
    let p = &problems[0];
    assert_eq!(p.file, dir.path().join("en/partials/footer.txt.hbs"), "{p}");
    assert_eq!(p.line, Some(2));
    assert_eq!(p.message, "missing variable `shop.adress`");
}

#[test]
fn missing_partial_is_named() {
    let (dir, problems) = render_en_with("en/hello.txt.hbs", "Hi\n{{> signature}}");
    let p = &problems[0];
    assert_eq!(p.file, dir.path().join("en/hello.txt.hbs"));
    assert_eq!(p.line, Some(2));
    assert_eq!(p.message, "missing partial `signature`");
}

#[test]
fn syntax_errors_are_all_reported_with_their_position() {
    let mut files = GOOD.to_vec();
    files.push(("en/broken.html.hbs", "ok\n{{#if x}}never closed"));
    files.push(("hy/broken.html.hbs", "{{/if}}"));
    let dir = fixture(&files);
    let Problems(problems) = Templates::load(dir.path(), &LoadOptions::new("en"))
        .err()
        .unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().all(|p| p.line.is_some()), "{problems:?}");
    assert_eq!(problems[0].file, dir.path().join("en/broken.html.hbs"));
}

#[test]
fn a_template_missing_in_one_locale_is_named() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "hy/hello.subject.hbs");
    let dir = fixture(&files);
    let Problems(problems) = load(dir.path()).require(&["hello"]).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, dir.path().join("hy/hello.subject.hbs"));
    assert!(
        problems[0]
            .message
            .contains("no subject part in locale `hy`")
            && problems[0].message.contains("locale_fallback.hy"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_locale_with_an_explicit_fallback_sends_the_other_locale_s_template() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| !p.starts_with("hy/hello."));
    let dir = fixture(&files);
    let mut options = LoadOptions::new("en");
    options.fallbacks.insert("hy".into(), "en".into());
    let t = Templates::load(dir.path(), &options).unwrap();
    t.require(&["hello"]).unwrap();
    assert_eq!(t.fallback_for("hy", "hello"), Some("en"));
    assert_eq!(t.fallback_for("en", "hello"), None);
    let r = t.render("hello", "hy", &data("hy")).unwrap();
    assert_eq!(r.subject, "Hello <Anna & \"Co\">", "the English subject");
    // The helpers still format for the customer's locale.
    assert!(r.html.contains("1234,50\u{a0}€"), "{}", r.html);
    // A fallback to a locale that does not exist is refused.
    options.fallbacks.insert("hy".into(), "fr".into());
    let Problems(problems) = Templates::load(dir.path(), &options).err().unwrap();
    assert!(
        problems[0].message.contains("locale_fallback.hy"),
        "{problems:?}"
    );
}

#[test]
fn without_a_text_template_the_text_part_is_derived_from_the_html() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "en/hello.txt.hbs");
    files.retain(|(p, _)| *p != "en/hello.html.hbs");
    files.push((
        "en/hello.html.hbs",
        "<h1>Hi {{customer.name}}</h1><p>Your <a href=\"https://shop.example.com/o/1\">order</a> is on its way.</p>",
    ));
    let dir = fixture(&files);
    let t = load(dir.path());
    t.require(&["hello"]).unwrap();
    let r = t.render("hello", "en", &data("en")).unwrap();
    assert!(
        r.text.contains("Hi <Anna & \"Co\">"),
        "unescaped: {}",
        r.text
    );
    assert!(
        r.text.contains("Your [order][1] is on its way."),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("[1]: https://shop.example.com/o/1"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("<p>"), "{}", r.text);
}

#[test]
fn the_brand_stylesheet_is_inlined_with_the_shop_colours() {
    let mut files = GOOD.to_vec();
    files.push((
        "style.css.hbs",
        "b { color: {{shop.colors.primary}}; font-weight: bold }",
    ));
    let dir = fixture(&files);
    let mut options = LoadOptions::new("en");
    options.shop = json!({"colors": {"primary": "#c0ffee"}});
    let t = Templates::load(dir.path(), &options).unwrap();
    let r = t.render("hello", "en", &data("en")).unwrap();
    assert!(
        r.html
            .contains("<b style=\"color:#c0ffee;font-weight:bold\">&lt;Anna"),
        "{}",
        r.html
    );
    // Subjects and text parts are not HTML: untouched.
    assert_eq!(r.text, "Hi <Anna & \"Co\">, items -- Tea & Kettle");
}

#[test]
fn errors_point_into_the_file_as_written_not_as_inlined() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "en/hello.html.hbs");
    files.push((
        "en/hello.html.hbs",
        "{{#> layout}}\n<p><b>x</b>  {{customer.nmae}}</p>{{/layout}}",
    ));
    files.push(("style.css.hbs", "p { margin: 0 0 16px 0 } b { color: red }"));
    let dir = fixture(&files);
    let t = Templates::load(dir.path(), &LoadOptions::new("en")).unwrap();
    let Problems(problems) = t.render("hello", "en", &data("en")).unwrap_err();
    assert_eq!((problems[0].line, problems[0].column), (Some(2), Some(14)));
}

#[test]
fn a_stylesheet_missing_a_brand_setting_is_a_problem() {
    let mut files = GOOD.to_vec();
    files.push(("style.css.hbs", "a { color: {{shop.colors.primray}} }"));
    let dir = fixture(&files);
    let Problems(problems) = Templates::load(dir.path(), &LoadOptions::new("en"))
        .err()
        .unwrap();
    assert_eq!(problems[0].file, dir.path().join("style.css.hbs"));
    assert!(
        problems[0].message.contains("shop.colors.primray"),
        "{problems:?}"
    );
}

#[test]
fn the_default_locale_must_exist() {
    let dir = fixture(GOOD);
    let Problems(problems) = Templates::load(dir.path(), &LoadOptions::new("fr"))
        .err()
        .unwrap();
    assert!(problems[0].message.contains("default locale `fr`"));
}

#[test]
fn unknown_helper_is_named() {
    let (_dir, problems) = render_en_with("en/hello.subject.hbs", "{{shout customer.name}}");
    assert!(problems[0].message.contains("shout"), "{:?}", problems[0]);
}

/// The recording `if`, `unless`, `each` and `with` render exactly as
/// handlebars' own, block parameters, `@index`, `@key`, `../`, `{{else}}`
/// and strict mode included.
#[test]
fn recording_branches_renders_as_the_built_in_helpers() {
    let files: &[(&str, &str)] = &[
        ("en/t.subject.hbs", "{{#if a}}A{{else}}not A{{/if}}"),
        (
            "en/t.html.hbs",
            "{{#each items as |item i|}}{{i}}:{{item.n}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}}\
             {{@index}}{{../top}} {{/each}}{{#each obj}}{{@key}}={{this}}@{{@index}} {{/each}}\
             {{#each empty}}x{{else}}none{{/each}}{{#with w as |ww|}}{{ww.v}}{{v}}{{@root.top}}{{/with}}\
             {{#with nothing}}y{{else}}no w{{/with}}{{#unless a}}U{{else}}not U{{/unless}}\
             {{#each items}}{{#each ../obj}}{{../n}}{{this}}{{/each}}{{/each}}",
        ),
    ];
    let dir = fixture(files);
    let plain = Templates::load(dir.path(), &LoadOptions::new("en")).unwrap();
    let mut options = LoadOptions::new("en");
    options.record_branches = true;
    let recording = Templates::load(dir.path(), &options).unwrap();
    for data in [
        json!({"a": true, "top": "T", "items": [{"n": 1}, {"n": 2}], "obj": {"k": "v", "l": 2},
               "empty": [], "w": {"v": "V"}, "nothing": null}),
        json!({"a": 0, "top": "", "items": [], "obj": {}, "empty": [1], "w": {"v": 3}, "nothing": false}),
    ] {
        let want = plain.render("t", "en", &data).unwrap();
        let got = recording.render("t", "en", &data).unwrap();
        assert_eq!((got.subject, got.html), (want.subject, want.html));
        // And the text registry, which `reach` records with.
        assert!(!recording.reach("t", "en", &data).is_empty());
    }
    // Strict mode as before: `each` over a missing list fails both ways.
    let missing = json!({"a": true, "top": "T", "obj": {}, "empty": [], "w": {}, "nothing": null});
    assert!(plain.render("t", "en", &missing).is_err());
    assert!(recording.render("t", "en", &missing).is_err());
}

/// Every branch is listed with its opening tag; `reach` names the bodies
/// one rendering goes through.
#[test]
fn branches_are_listed_and_reached_by_what_the_data_holds() {
    let dir = fixture(&[
        ("en/t.subject.hbs", "s"),
        (
            "en/t.html.hbs",
            "{{#if a}}\n  A{{else}}B{{/if}}\n{{#each items}}{{this}}{{/each}}{{> p}}",
        ),
        ("partials/p.html.hbs", "{{#unless a}}not a{{/unless}}"),
    ]);
    let mut options = LoadOptions::new("en");
    options.record_branches = true;
    let t = Templates::load(dir.path(), &options).unwrap();
    let branches = t.branches("en", "t");
    let what: Vec<(usize, usize, &str)> = branches
        .iter()
        .map(|b| (b.line, b.column, b.what.as_str()))
        .collect();
    assert_eq!(
        what,
        [
            (1, 1, "{{#if a}}"),
            (1, 1, "{{else}} of {{#if a}}"),
            (3, 1, "{{#each items}}"),
            (1, 1, "{{#unless a}}"),
        ]
    );
    assert!(branches[3].file.ends_with("partials/p.html.hbs"));
    let reached = t.reach("t", "en", &json!({"a": true, "items": []}));
    let unreached: Vec<&str> = coverage::unreached(&branches, &reached)
        .iter()
        .map(|b| b.what.as_str())
        .collect();
    assert_eq!(
        unreached,
        ["{{else}} of {{#if a}}", "{{#each items}}", "{{#unless a}}"]
    );
    let more = t.reach("t", "en", &json!({"a": false, "items": [1]}));
    let all: HashSet<_> = reached.union(&more).copied().collect();
    assert!(coverage::unreached(&branches, &all).is_empty());
}

/// Every template, locale and sample of the shipped set, rendered with the
/// partials written in place (what is sent) and with handlebars' own
/// partials: the same text, part by part.
#[test]
fn partials_written_in_place_render_as_handlebars_renders_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = crate::config::Config::embedded();
    let journeys = crate::journey::Rulebook::from_config(config.rulebook_config());
    let shop = serde_json::to_value(&config.shop).unwrap();
    let mut options = LoadOptions::new("en");
    options.shop = shop.clone();
    let templates = Templates::load(&root.join("templates"), &options).unwrap();
    let mut compared = 0;
    for name in templates.names() {
        let id = name.split('.').next().unwrap();
        for locale in templates.locales().available() {
            let file = root.join(format!("templates/samples/{locale}/{id}.json"));
            let Ok(samples) = std::fs::read_to_string(&file) else {
                continue;
            };
            let samples: serde_json::Map<String, Value> = serde_json::from_str(&samples).unwrap();
            for (sample, data) in &samples {
                let data = crate::check::sample_data(data, &shop, locale, &journeys);
                let nested = templates.render_nested(name, locale, &data);
                assert!(nested.is_some(), "{locale}/{name} with {sample} renders");
                assert_eq!(
                    templates.render_flat(name, locale, &data),
                    nested,
                    "{locale}/{name} with {sample}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 50, "{compared} renders compared");
}

/// A template's calls written in place, and the ones that stay calls.
#[test]
fn partials_are_written_in_place_where_that_renders_the_same() {
    let dir = fixture(&[
        (
            "partials/label.html.hbs",
            "<b>{{label}}</b>{{#if label}}[{{label}}]{{/if}}{{#each list}}{{label}}{{/each}}",
        ),
        (
            "partials/href.html.hbs",
            "<a href=\"{{href}}\">{{#each list}}{{this}}{{/each}}</a>",
        ),
        (
            "partials/inside.html.hbs",
            "{{#each list}}<i>{{href}}</i>{{/each}}",
        ),
        ("partials/up.html.hbs", "{{#each list}}{{../name}}{{/each}}"),
        ("partials/block.html.hbs", "<div>{{> @partial-block}}</div>"),
        ("en/t.subject.hbs", "s"),
        ("en/t.preheader.hbs", "p"),
        (
            "en/t.html.hbs",
            "{{> label label=\"<Tea & Co>\"}}|{{> href href=link}}|{{> inside href=link}}|\
             {{> up}}|{{#> block}}{{name}}{{/block}}",
        ),
        ("en/t.txt.hbs", "t"),
    ]);
    let templates = load(dir.path());
    let data = json!({"link": "https://x.example/?a=1&b=2", "list": ["1", "2"], "name": "<n>"});
    let flat = templates.render_flat("t", "en", &data).unwrap().2;
    assert_eq!(templates.render_nested("t", "en", &data).unwrap().2, flat);
    assert_eq!(
        flat,
        "<b>&lt;Tea &amp; Co&gt;</b>[&lt;Tea &amp; Co&gt;]&lt;Tea &amp; Co&gt;&lt;Tea &amp; Co&gt;|\
         <a href=\"https://x.example/?a&#x3D;1&amp;b&#x3D;2\">12</a>|\
         <i>https://x.example/?a&#x3D;1&amp;b&#x3D;2</i><i>https://x.example/?a&#x3D;1&amp;b&#x3D;2</i>|\
         &lt;n&gt;&lt;n&gt;|<div>&lt;n&gt;</div>"
    );
    let tree = format!(
        "{:?}",
        templates.sets["en"]
            .flat_html
            .get_template("t.html")
            .unwrap()
    );
    // A path given to a partial that reads it inside `#each`, and `../` in
    // a partial, stay calls; the rest are written in place.
    assert_eq!(tree.matches("PartialExpression").count(), 2, "{tree}");
    assert_eq!(tree.matches("PartialBlock").count(), 0, "{tree}");
}
