//! Crash safety: SIGKILL the worker mid-way, start it again, and every
//! expected email is there exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{self, Work, stderr};

/// The planned emails, sorted: a multiset to compare with what was sent.
fn planned(work: &Work, log: &std::path::Path) -> Vec<String> {
    let mut plan = common::planned(work, log);
    plan.sort();
    plan
}

#[test]
fn sigkill_mid_way_and_restart_sends_every_email_exactly_once() {
    let _heavy = common::heavy();
    // Small batches: many commits, so the kills land between and inside them.
    let work = Work::new("[source]\nbatch_size = 25\n[sender]\nbatch_size = 10\n");
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(1500));
    let expected = planned(&work, &log);
    assert!(expected.len() > 5000, "{}", expected.len());

    let mut kills = 0;
    for fraction in [5, 3, 2] {
        let mut child = work
            .command(&["run", "--input", log.to_str().unwrap()])
            .spawn()
            .unwrap();
        let target = expected.len() / fraction;
        let reached =
            common::wait_until(Duration::from_secs(120), || work.outbox().len() >= target);
        assert!(reached, "the worker did not get to {target} emails");
        child.kill().unwrap();
        if child.wait().unwrap().code().is_none() {
            kills += 1;
        }
    }
    assert!(kills > 0, "the worker finished before every kill");
    assert!(
        work.outbox().len() < expected.len(),
        "nothing left to do after the kills"
    );

    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The store: exactly the planned emails sent, nothing left unfinished.
    let stored = work.stored();
    let mut sent: Vec<String> = stored
        .iter()
        .filter(|e| e.status == "sent")
        .map(|e| {
            format!(
                "{} {} {}",
                e.customer_id,
                e.template,
                e.order_id.as_deref().unwrap_or("")
            )
        })
        .collect();
    sent.sort();
    assert_eq!(sent.len(), expected.len(), "sent emails vs plan");
    assert!(sent == expected, "the sent emails differ from the plan");
    let unfinished: Vec<_> = stored
        .iter()
        .filter(|e| matches!(e.status.as_str(), "pending" | "sending" | "failed"))
        .map(|e| &e.key)
        .collect();
    assert!(unfinished.is_empty(), "left unfinished: {unfinished:?}");

    // The outbox: one file per sent email, no more, no half-written ones.
    let files: BTreeSet<String> = work
        .outbox()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = stored
        .iter()
        .filter(|e| e.status == "sent")
        .map(|e| aftercare::mailer::EmlMailer::file_name(&e.key))
        .collect();
    assert_eq!(files, want);
    let leftovers = std::fs::read_dir(work.path("data/outbox"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "tmp")
        })
        .count();
    assert_eq!(leftovers, 0, "half-written files in the outbox");
}

#[test]
fn two_workers_on_one_store_send_each_email_once() {
    let _heavy = common::heavy();
    let sink = common::SmtpSink::start(&[]);
    let work = Work::new(&format!(
        "[source]\nbatch_size = 20\n[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {}\n",
        sink.port
    ));
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(300));
    let expected = planned(&work, &log);
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|id| {
            work.command(&["run", "--input", log.to_str().unwrap()])
                .env("AFTERCARE_WORKER_ID", id)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut worker in workers {
        assert!(worker.wait().unwrap().success());
    }
    let ids = sink.message_ids_once();
    assert_eq!(ids.len(), expected.len(), "messages received vs plan");
}
