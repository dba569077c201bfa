//! The preview gallery in a real browser: every page opened in headless
//! Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `tests/browser/`; `scripts/test.sh` installs both). Every page must load
//! and show its subject, with no broken image and no console error; every
//! email must hold at 320, 375 and 600 px without anything reaching past
//! the right edge. Screenshots of every email at each width are kept in
//! `target/test-artifacts/preview/<width>/<locale>/`.

use std::path::Path;
use std::process::Command;

use aftercare::config::Config;

use crate::common::{self, repo};

/// Runs `tests/browser/gallery.mjs` on `templates` with `env`; `(exit ok,
/// its JSON report)`.
fn gallery(templates: &Path, artifacts: &Path, env: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let browser = repo().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test.sh (or npm ci in tests/browser)"
    );
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("node")
        .arg(browser.join("gallery.mjs"))
        .arg(common::BIN)
        .arg(templates)
        .arg(work.path())
        .arg(artifacts)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from the browser test:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.success(), report)
}

fn strings(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

/// A copy of the shipped templates with `edit` applied to one file.
fn edited_templates(file: &str, edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&repo().join("templates"), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    dir
}

/// How many emails of the report are samples of a shop without a logo.
fn logoless(report: &serde_json::Value) -> usize {
    let n = report["emails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["page"]
                .as_str()
                .unwrap()
                .contains("--shop-without-a-logo.")
        })
        .count();
    assert!(n > 0, "the samples have a shop without a logo: {report}");
    n
}

/// `#rrggbb` as the browser computes it: `rgb(r, g, b)`.
fn rgb(hex: &str) -> String {
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap();
    format!("rgb({}, {}, {})", byte(1), byte(3), byte(5))
}

#[test]
fn every_email_of_the_gallery_loads_and_holds_at_phone_and_desktop_widths() {
    let artifacts = repo().join("target/test-artifacts/preview");
    let (ok, report) = gallery(&repo().join("templates"), &artifacts, &[]);
    assert!(ok, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    // What the index links: at least one page for every template (and
    // variant) of the journeys in every locale, however many samples each.
    let config = Config::load(None, []).unwrap();
    let links: Vec<&str> = report["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["page"].as_str().unwrap())
        .collect();
    assert_eq!(report["pages"], links.len(), "{report}");
    for r in aftercare::check::renderable(&config) {
        for locale in &config.locales {
            let prefix = format!("{locale}/{}.", r.name);
            assert!(
                links
                    .iter()
                    .any(|l| l.starts_with(&prefix) && l.ends_with(".page.html")),
                "no page for {prefix}: {links:?}"
            );
        }
    }
    assert_eq!(
        report["images"],
        links.len() - logoless(&report),
        "one logo per email but those of a shop without one: {report}"
    );
    // Every email screenshot at every width.
    let shots = strings(&report["shots"]);
    assert_eq!(shots.len(), links.len() * 3, "{report}");
    for width in ["320", "375", "600"] {
        let path = artifacts.join(width).join("hy/order_confirmation.png");
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.starts_with(b"\x89PNG"), "{}", path.display());
    }
    for shot in shots {
        assert!(artifacts.join(shot).is_file(), "{shot}");
    }
    // In dark mode the reader gets [shop.dark_colors], not light forced.
    let dark = report["dark"].as_array().unwrap();
    assert_eq!(dark.len(), config.locales.len(), "{report}");
    for email in dark {
        assert_eq!(
            email["body"],
            rgb(&config.shop.dark_colors.background),
            "{report}"
        );
        assert_eq!(
            email["card"],
            rgb(&config.shop.dark_colors.surface),
            "{report}"
        );
    }
}

#[test]
fn a_big_order_with_long_names_and_six_digit_amounts_holds_at_320_px() {
    // The confirmation's sample, in drams and birr, with names that do not
    // break at spaces.
    let big = |text: String| {
        let mut samples: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sample = &mut samples["first order"];
        sample["order"]["currency"] = "AMD".into();
        sample["order"]["total"] = "1431999.99".into();
        sample["order"]["items"] = serde_json::json!([
            {"sku": "SAM-5", "name": "Ձեռագործ պղնձե սամովար «Արարատ», 5 լիտր",
             "quantity": 6, "unit_price": "185000.00", "line_total": "1110000.00"},
            {"sku": "DAR-1", "name": "Premium-Darjeeling-First-Flush-Single-Estate-Castleton-FTGFOP1-Muscatel",
             "quantity": 12, "unit_price": "18500.00", "line_total": "222000.00"},
            {"sku": "SET-6", "name": "ሙሉየሻይማፍያስብስብከስድስትስኒዎችጋርናከእንጨትትሪጋር",
             "quantity": 1, "unit_price": "99999.99", "line_total": "99999.99"},
        ]);
        serde_json::to_string(&samples).unwrap()
    };
    // The first sample of each locale is the page the gallery opens.
    let templates = edited_templates("samples/en/order_confirmation.json", big);
    for locale in ["hy", "am"] {
        let path = templates
            .path()
            .join(format!("samples/{locale}/order_confirmation.json"));
        std::fs::write(&path, big(std::fs::read_to_string(&path).unwrap())).unwrap();
    }
    let artifacts = tempfile::tempdir().unwrap();
    let (ok, report) = gallery(
        templates.path(),
        artifacts.path(),
        &[
            (
                "ONLY",
                "en/order_confirmation.,hy/order_confirmation.,am/order_confirmation.",
            ),
            ("WIDTHS", "320,375"),
        ],
    );
    assert!(ok, "{report}");
    assert_eq!(report["pages"], 3, "{report}");
}

#[test]
fn an_email_wider_than_the_screen_is_noticed_with_its_element() {
    // A marketer's fixed-width block in one email.
    let templates = edited_templates("hy/welcome.html.hbs", |text| {
        text.replace(
            "{{> signoff}}",
            "<p style=\"width:640px\">Լայն պարբերություն</p>\n{{> signoff}}",
        )
    });
    let artifacts = tempfile::tempdir().unwrap();
    let (ok, report) = gallery(
        templates.path(),
        artifacts.path(),
        &[("ONLY", "hy/welcome.,en/welcome.")],
    );
    assert!(!ok, "{report}");
    let problems = strings(&report["problems"]);
    // At every width the paragraph is named, not the cells it widens; the
    // English email is fine.
    for width in ["320", "375", "600"] {
        assert!(
            problems.iter().any(|p| p.starts_with(&format!(
                "hy/welcome.html at {width}px: overflow: <p> \"Լայն պարբերություն\" reaches"
            ))),
            "{report}"
        );
    }
    assert!(
        problems.len() == 3
            && problems
                .iter()
                .all(|p| p.starts_with("hy/welcome.html at ")),
        "{report}"
    );
}

#[test]
fn a_broken_image_is_noticed() {
    let artifacts = tempfile::tempdir().unwrap();
    let (ok, report) = gallery(
        &repo().join("templates"),
        artifacts.path(),
        &[("BROKEN_LOGO", "1"), ("WIDTHS", "375")],
    );
    assert!(!ok, "{report}");
    let problems = strings(&report["problems"]);
    let broken = problems
        .iter()
        .filter(|p| p.contains("broken image"))
        .count();
    let pages = report["pages"].as_u64().unwrap() as usize;
    assert_eq!(
        broken,
        pages - logoless(&report),
        "one per email with a logo: {report}"
    );
    // The failed load is also seen on the console.
    assert!(problems.iter().any(|p| p.contains("console:")), "{report}");
}
