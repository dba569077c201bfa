//! Hot reload: a template edited while the worker runs is picked up
//! without a restart; a broken edit is refused and the worker keeps
//! sending with the set it has.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use mail_parser::MessageParser;

use crate::common::{self, Work};

fn order(n: u32) -> String {
    format!(
        r#"{{"event_id":"e{n}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{n}","email":"c{n}@example.com","locale":"en"}},"order":{{"id":"o-{n}","total":"5.00","currency":"EUR","items":[]}}}}"#
    )
}

/// The subject of customer `n`'s order confirmation, once it is out.
fn subject(work: &Work, n: u32) -> Option<String> {
    let prefix = format!("c-{n}_order_confirmation");
    let file = work.outbox().into_iter().find(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&prefix)
    })?;
    let raw = std::fs::read(file).ok()?;
    MessageParser::default()
        .parse(&raw)?
        .subject()
        .map(str::to_owned)
}

#[test]
fn an_edit_is_picked_up_and_a_broken_one_is_refused_without_a_restart() {
    let work = Work::new("[source]\nbatch_wait = \"50ms\"\n");
    let templates = work.path("templates");
    common::copy_dir(&common::repo().join("templates"), &templates);
    std::fs::write(
        work.config(),
        format!(
            "data_dir = {:?}\ntemplates_dir = {:?}\njourneys.clock = \"events\"\n[source]\nbatch_wait = \"50ms\"\n",
            work.path("data"),
            templates
        ),
    )
    .unwrap();
    let mut worker = work
        .command(&["run"])
        .env("RUST_LOG", "aftercare::reload=info")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    // The worker's log as it comes: each step waits for the reload's word
    // rather than for a time a loaded machine may overrun.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (std::sync::Arc::clone(&log), worker.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                let line = line.unwrap();
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let said = |words: &str| {
        assert!(
            common::wait_until(Duration::from_secs(30), || log
                .lock()
                .unwrap()
                .contains(words)),
            "never said {words:?}: {}",
            log.lock().unwrap()
        );
    };
    let wait = |n: u32| {
        assert!(
            common::wait_until(Duration::from_secs(20), || subject(&work, n).is_some()),
            "no confirmation for c-{n}"
        );
        subject(&work, n).unwrap()
    };

    writeln!(stdin, "{}", order(1)).unwrap();
    let original = wait(1);
    assert!(!original.contains("Fresh words"), "{original}");

    // A good edit: the next email has it.
    let subject_file = templates.join("en/order_confirmation.subject.hbs");
    std::fs::write(&subject_file, "Fresh words for order {{order.id}}\n").unwrap();
    said("Templates reloaded.");
    writeln!(stdin, "{}", order(2)).unwrap();
    assert_eq!(wait(2), "Fresh words for order o-2");

    // A broken edit (a variable the data lacks): refused, the last good set
    // stays in use.
    std::fs::write(&subject_file, "Broken {{order.nope}}\n").unwrap();
    said("Templates not reloaded");
    writeln!(stdin, "{}", order(3)).unwrap();
    assert_eq!(wait(3), "Fresh words for order o-3");

    // SIGHUP reloads too.
    std::process::Command::new("kill")
        .args(["-HUP", &worker.id().to_string()])
        .status()
        .unwrap();
    said("SIGHUP: reloading the templates.");

    drop(stdin);
    assert!(worker.wait().unwrap().success());
    reader.join().unwrap();
    let log = log.lock().unwrap();
    assert!(log.contains("Templates reloaded."), "{log}");
    assert!(log.contains("Templates not reloaded"), "{log}");
    assert!(
        log.contains("order.nope"),
        "the log names the problem: {log}"
    );
    assert!(log.contains("SIGHUP: reloading the templates."), "{log}");
    // Every email went out; none failed on the broken set.
    assert!(work.emails().iter().all(|(_, s)| s != "failed"));
}
