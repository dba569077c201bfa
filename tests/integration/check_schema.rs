//! `aftercare check` against the schema of the template data: each mistake
//! of issue 18 that rendering with the samples let through is now found,
//! with its file, line and column.

use crate::common::{self, Work, repo, stderr, stdout};

/// A copy of the shipped templates with `edit` applied to one file, and a
/// config whose `templates_dir` points there.
fn broken(file: &str, edit: impl FnOnce(String) -> String) -> Work {
    let work = copied();
    let path = work.path("templates").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit of {file} changed nothing");
    std::fs::write(&path, edited).unwrap();
    work
}

/// A copy of the shipped templates and a config whose `templates_dir`
/// points there.
fn copied() -> Work {
    let work = Work::new("");
    let templates = work.path("templates");
    common::copy_dir(&repo().join("templates"), &templates);
    let config = format!(
        "data_dir = {:?}\ntemplates_dir = {:?}\n",
        work.path("data"),
        templates
    );
    std::fs::write(work.config(), config).unwrap();
    work
}

/// `check` exits 65 and names `file:line:col: message` (file relative to
/// the copied templates folder).
fn fails_with(work: &Work, file: &str, at: &str, message: &str) {
    let out = work.run(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    let want = format!(
        "{}:{at}: {message}",
        work.path("templates").join(file).display()
    );
    assert!(err.contains(&want), "want {want}\ngot:\n{err}");
}

fn replace_once(text: String, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from}");
    text.replacen(from, to, 1)
}

#[test]
fn a_typo_in_a_branch_no_sample_reaches_fails_check() {
    // The sample has an estimated delivery: this branch is never rendered.
    let work = broken("en/shipping_delay.html.hbs", |t| {
        replace_once(t, "{{/unless}}", "<p>{{shipment.carier}}</p>\n{{/unless}}")
    });
    fails_with(
        &work,
        "en/shipping_delay.html.hbs",
        "19:4",
        "`shipment.carier` is not in the data of `shipping_delay`: did you mean `shipment.carrier`?",
    );
}

#[test]
fn a_typo_in_a_condition_fails_check() {
    let work = broken("en/shipping_update.html.hbs", |t| {
        replace_once(
            t,
            "{{#if shipment.tracking_url}}",
            "{{#if shipment.traking_url}}",
        )
    });
    fails_with(
        &work,
        "en/shipping_update.html.hbs",
        "17:1",
        "`shipment.traking_url` is not in the data of `shipping_update`: did you mean `shipment.tracking_url`?",
    );
}

#[test]
fn customer_data_in_triple_braces_in_a_partial_fails_check() {
    let work = broken("en/partials/greeting.html.hbs", |t| {
        replace_once(
            t,
            "Hi {{customer.first_name}}",
            "Hi {{{customer.first_name}}}",
        )
    });
    fails_with(
        &work,
        "en/partials/greeting.html.hbs",
        "1:34",
        "customer data in triple braces is not HTML-escaped: `customer.first_name` comes from an event; write it in double braces",
    );
}

#[test]
fn an_item_name_in_triple_braces_inside_each_fails_check() {
    let work = broken("partials/order_items.html.hbs", |t| {
        replace_once(t, "align=\"left\">{{name}}", "align=\"left\">{{{name}}}")
    });
    fails_with(
        &work,
        "partials/order_items.html.hbs",
        "10:36",
        "customer data in triple braces is not HTML-escaped: `order.items[].name` comes from an event; write it in double braces",
    );
}

#[test]
fn an_unclosed_if_is_reported_at_its_opening_tag() {
    let work = broken("hy/welcome.html.hbs", |t| {
        replace_once(t, "{{/layout}}", "{{#if customer.name}}\n{{/layout}}")
    });
    let line = std::fs::read_to_string(work.path("templates/hy/welcome.html.hbs"))
        .unwrap()
        .lines()
        .position(|l| l == "{{#if customer.name}}")
        .unwrap()
        + 1;
    fails_with(
        &work,
        "hy/welcome.html.hbs",
        &format!("{line}:1"),
        "`{{#if}}` is never closed",
    );
}

#[test]
fn an_optional_path_outside_a_guard_fails_check() {
    // A delay without a date is a real event: `date` would fail on null.
    let work = broken("am/shipping_delay.txt.hbs", |t| {
        format!("{{{{date shipment.estimated_delivery}}}}\n{t}")
    });
    fails_with(
        &work,
        "am/shipping_delay.txt.hbs",
        "1:1",
        "`shipment.estimated_delivery` may be null in `shipping_delay`: use it inside {{#if shipment.estimated_delivery}}",
    );
}

#[test]
fn a_path_of_another_trigger_fails_check() {
    // Welcome emails are about an order, not a parcel.
    let work = broken("en/welcome.txt.hbs", |t| {
        format!("{{{{shipment.id}}}}\n{t}")
    });
    fails_with(
        &work,
        "en/welcome.txt.hbs",
        "1:1",
        "`shipment.id` is not in the data of `welcome`",
    );
}

/// A sample file edited as JSON.
fn edit_samples(work: &Work, file: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = work.path("templates/samples").join(file);
    let mut samples: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut samples);
    std::fs::write(&path, serde_json::to_string_pretty(&samples).unwrap()).unwrap();
}

#[test]
fn a_branch_no_sample_renders_fails_check_at_its_opening_tag() {
    let work = copied();
    edit_samples(&work, "en/shipping_delay.json", |s| {
        s.as_object_mut()
            .unwrap()
            .remove("delay without a date")
            .unwrap();
    });
    fails_with(
        &work,
        "en/shipping_delay.html.hbs",
        "17:1",
        "no sample renders this branch ({{#unless shipment.estimated_delivery}})",
    );
    // The other locales still have their sample without a date.
    let err = stderr(&work.run(&["check"]));
    assert!(!err.contains("hy/shipping_delay"), "{err}");
}

#[test]
fn the_else_of_a_shared_partial_counts_as_reached_by_any_template() {
    // Only the welcome sample "shop without a logo" renders the layout's
    // {{else}}: without it, the shared partial's branch is unreached.
    let work = copied();
    for locale in ["en", "hy", "am"] {
        edit_samples(&work, &format!("{locale}/welcome.json"), |s| {
            s.as_object_mut()
                .unwrap()
                .remove("shop without a logo")
                .unwrap();
        });
    }
    fails_with(
        &work,
        "partials/layout.html.hbs",
        "20:1",
        "no sample renders this branch ({{else}} of {{#if shop.logo_url}})",
    );
}

#[test]
fn samples_in_each_locale_fall_back_to_a_shared_file_and_a_missing_one_fails() {
    let work = copied();
    let samples = work.path("templates/samples");
    // A shared file serves a locale without its own, in the former form (one
    // sample, the data itself).
    let mut one: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(samples.join("am/welcome.json")).unwrap())
            .unwrap();
    let mut data = one["new customer"].take();
    data["shop"] = serde_json::json!({"logo_url": null});
    std::fs::remove_file(samples.join("am/welcome.json")).unwrap();
    std::fs::write(samples.join("welcome.json"), data.to_string()).unwrap();
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Without either, the locale's samples are missing.
    std::fs::remove_file(samples.join("welcome.json")).unwrap();
    let out = work.run(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    let want = format!(
        "{}: missing sample data for `welcome` in `am`",
        samples.join("am/welcome.json").display()
    );
    assert!(err.contains(&want), "want {want}\ngot:\n{err}");
}

/// `check` renders with helpers that note the branches they take; what it
/// shows (and the gallery shows) is what the worker sends, for every
/// sample of the repo.
#[test]
fn every_sample_renders_the_same_in_check_as_when_sent() {
    let config = aftercare::config::Config::embedded();
    let (_, samples) = aftercare::check::render_samples(&config).unwrap();
    let sending = aftercare::check::load(&config).unwrap();
    let shop = serde_json::to_value(&config.shop).unwrap();
    let journeys = aftercare::journey::Rulebook::from_config(config.rulebook_config());
    assert!(samples.len() > 45, "{} samples", samples.len());
    for s in &samples {
        let all =
            aftercare::check::samples_of(&config, &sending, &s.renderable.template, &s.locale)
                .unwrap();
        let (_, data) = all.iter().find(|(name, _)| *name == s.sample).unwrap();
        let data = aftercare::check::sample_data(data, &shop, &s.locale, &journeys);
        let sent = sending
            .render(&s.renderable.name, &s.locale, &data)
            .unwrap();
        assert_eq!(
            sent, s.rendered,
            "{} {} {}",
            s.renderable.name, s.locale, s.sample
        );
    }
}

/// templates/README.md's "Add a new email", followed step by step: the
/// files in every language, samples, a journey rule; `check` passes, the
/// gallery has the email, `simulate` plans it. Each step left out is named.
#[test]
fn a_new_email_added_as_the_templates_readme_says_is_checked_previewed_and_planned() {
    let work = copied();
    let templates = work.path("templates");
    let rule = "\n[[journey]]\ntemplate = \"restock_reminder\"\non = \"shipment.delivered\"\n\
                class = \"marketing\"\ndelay = \"30d\"\ncancel_on = [\"return.requested\"]\n";
    let config = std::fs::read_to_string(work.config()).unwrap();
    // 3 before 1: the rule first, so check names every missing piece.
    std::fs::write(work.config(), format!("{config}{rule}")).unwrap();
    let err = stderr(&work.run(&["check"]));
    assert!(
        err.contains("restock_reminder") && err.contains("templates/en"),
        "{err}"
    );
    // 1. The files in every language, from an email of the same trigger.
    for locale in ["en", "hy", "am"] {
        for part in ["subject", "preheader", "html", "txt"] {
            let from = templates.join(format!("{locale}/delivery_followup.{part}.hbs"));
            let text = std::fs::read_to_string(&from).unwrap();
            let text = if part == "subject" {
                format!("{} ({locale})", text.trim())
            } else {
                text
            };
            std::fs::write(
                templates.join(format!("{locale}/restock_reminder.{part}.hbs")),
                text,
            )
            .unwrap();
        }
    }
    let out = work.run(&["check"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("missing sample data for `restock_reminder` in `en`"),
        "{err}"
    );
    // 2. Samples in every locale.
    for locale in ["en", "hy", "am"] {
        std::fs::copy(
            templates.join(format!("samples/{locale}/delivery_followup.json")),
            templates.join(format!("samples/{locale}/restock_reminder.json")),
        )
        .unwrap();
    }
    // 4. check.
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("16 templates x 3 locales"),
        "{}",
        stdout(&out)
    );
    // 5. preview.
    let gallery = work.path("gallery");
    let out = work.run(&["preview", "--out", gallery.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for locale in ["en", "hy", "am"] {
        let page =
            std::fs::read_to_string(gallery.join(format!("{locale}/restock_reminder.page.html")))
                .unwrap();
        assert!(page.contains(&format!("({locale})</span>")), "{page}");
    }
    // 6. simulate: a month after each first delivery.
    let out = work.run(&[
        "simulate",
        repo().join("examples/events.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["template"] == "restock_reminder")
        .collect();
    assert!(!planned.is_empty(), "{}", stdout(&out));
}
