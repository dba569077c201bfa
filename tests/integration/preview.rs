//! `preview --serve`: the gallery on a local port, written again when a
//! template changes, the last good one kept (with the problems shown) when
//! an edit breaks `check`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, KillOnDrop, Work, http_request, repo};

fn get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path)
}

fn generation(port: u16) -> String {
    let (status, response) = get(port, "/__generation");
    assert_eq!(status, 200, "{response}");
    response.rsplit("\r\n\r\n").next().unwrap().to_owned()
}

#[test]
fn the_served_gallery_follows_template_edits_and_keeps_the_last_good_one() {
    let work = Work::new("");
    let templates = work.path("templates");
    common::copy_dir(&repo().join("templates"), &templates);
    std::fs::write(
        work.config(),
        format!(
            "data_dir = {:?}\ntemplates_dir = {:?}\n",
            work.path("data"),
            templates
        ),
    )
    .unwrap();
    let gallery = work.path("gallery");
    let mut child = work
        .command(&[
            "preview",
            "--serve",
            "--listen",
            "127.0.0.1:0",
            "--out",
            gallery.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = KillOnDrop(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let port: u16 = first
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));

    // The index and the gallery pages poll for changes; the emails do not.
    let (status, index) = get(port, "/");
    assert_eq!(status, 200);
    assert!(index.contains("welcome.page.html"), "{index}");
    assert!(index.contains("/__generation"), "{index}");
    let (status, email) = get(port, "/en/welcome.html");
    assert_eq!(status, 200);
    assert!(email.contains("<!DOCTYPE html>"));
    assert!(!email.contains("/__generation"), "the email as sent");
    // Only the gallery's own files.
    assert_eq!(get(port, "/../aftercare.toml").0, 404);
    assert_eq!(get(port, "/en/nothing.html").0, 404);
    assert_eq!(generation(port), "0");

    // A good edit: the page shows it.
    let subject = templates.join("en/welcome.subject.hbs");
    // (A name may be unknown: `check` wants it inside `{{#if}}`.)
    std::fs::write(
        &subject,
        "A fresh welcome{{#if customer.name}}, {{customer.name}}{{/if}}",
    )
    .unwrap();
    let moved = common::wait_until(Duration::from_secs(20), || generation(port) != "0");
    assert!(moved, "no rewrite after a template edit");
    let (_, page) = get(port, "/en/welcome.page.html");
    assert!(page.contains("A fresh welcome, Anna"), "{page}");
    assert!(!page.contains("check failed"), "{page}");

    // A broken edit: the last good page stays, with the problem shown.
    let before = generation(port);
    std::fs::write(&subject, "Welcome {{customer.nmae}}").unwrap();
    let moved = common::wait_until(Duration::from_secs(20), || generation(port) != before);
    assert!(moved, "no rewrite after a broken edit");
    let (_, page) = get(port, "/en/welcome.page.html");
    assert!(
        page.contains("A fresh welcome, Anna"),
        "last good kept: {page}"
    );
    assert!(page.contains("check failed"), "{page}");
    assert!(
        page.contains(
            "welcome.subject.hbs:1:9: &#x60;customer.nmae&#x60; is not in the data of &#x60;welcome&#x60;"
        ),
        "{page}"
    );
}
