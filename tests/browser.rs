//! The preview gallery in a real browser: every page opened in headless
//! Chromium (Debian's `chromium`, driven by `playwright-core` from
//! `tests/browser/`; `scripts/test.sh` installs both). Every page must load
//! and show its subject, with no broken image and no console error.
//! Screenshots of a few emails are kept in `target/test-artifacts/preview/`.

mod common;

use std::process::Command;

use common::repo;

/// Runs `tests/browser/gallery.mjs`; `(exit ok, its JSON report)`.
fn gallery(broken_logo: bool) -> (bool, serde_json::Value) {
    let browser = repo().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test.sh (or npm ci in tests/browser)"
    );
    let work = tempfile::tempdir().unwrap();
    let artifacts = repo().join("target/test-artifacts/preview");
    let out = Command::new("node")
        .arg(browser.join("gallery.mjs"))
        .arg(common::BIN)
        .arg(repo().join("templates"))
        .arg(work.path())
        .arg(&artifacts)
        .env("BROKEN_LOGO", if broken_logo { "1" } else { "0" })
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

#[test]
fn every_gallery_page_loads_in_chromium_with_its_subject_and_images() {
    let (ok, report) = gallery(false);
    assert!(ok, "{report}");
    // 14 templates, review_request in two variants, three locales.
    assert_eq!(report["pages"], 45, "{report}");
    assert_eq!(report["images"], 45, "one logo per email: {report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    for shot in [
        "en-order_confirmation.png",
        "hy-review_request.b.png",
        "am-shipping_update.png",
    ] {
        let path = repo().join("target/test-artifacts/preview").join(shot);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.starts_with(b"\x89PNG"), "{shot}");
    }
}

#[test]
fn a_broken_image_is_noticed() {
    let (ok, report) = gallery(true);
    assert!(!ok, "{report}");
    let problems: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let broken = problems
        .iter()
        .filter(|p| p.contains("broken image"))
        .count();
    assert_eq!(broken, 45, "one per email: {report}");
    // The failed load is also seen on the console.
    assert!(problems.iter().any(|p| p.contains("console:")), "{report}");
}
