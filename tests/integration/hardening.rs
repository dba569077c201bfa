//! What the worker keeps private and what it refuses up front: the store,
//! the outbox and the data folder are the owner's alone whatever the umask;
//! a configuration that `run` could not use is refused by `check` and
//! `run` alike (exit 64, naming the key), without echoing secrets or
//! showing library internals.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, BIN, KillOnDrop, Work, repo, stderr};

/// `aftercare ARGS` in `work` under umask 022, the common default that
/// leaves new files readable by everyone.
fn with_umask_022(work: &Work, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--config")
        .arg(work.config())
        .args(args)
        .current_dir(work.dir.path())
        .env("RUST_LOG", "warn");
    cmd
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn placed(event: &str, customer: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"{customer}","email":"{customer}@example.com","marketing_consent":true}},"order":{{"id":"o-{event}","total":"5.00","currency":"EUR","items":[]}}}}"#
    )
}

#[test]
fn the_store_its_wal_the_outbox_and_the_data_dir_are_private_whatever_the_umask() {
    let work = Work::new("[source]\nbatch_wait = \"50ms\"\n");
    let mut worker = KillOnDrop(
        with_umask_022(&work, &["run"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = worker.0.stdin.take().unwrap();
    writeln!(stdin, "{}", placed("e1", "c-1")).unwrap();
    assert!(common::wait_until(Duration::from_secs(30), || {
        work.outbox().len() >= 2
    }));
    // The worker is still running: SQLite's -wal and -shm files exist.
    let data = work.path("data");
    for (path, expected) in [
        (data.clone(), 0o700),
        (data.join("outbox"), 0o700),
        (data.join("aftercare.db"), 0o600),
        (data.join("aftercare.db-wal"), 0o600),
        (data.join("aftercare.db-shm"), 0o600),
    ] {
        assert_eq!(mode(&path), expected, "{}", path.display());
    }
    for email in work.outbox() {
        assert_eq!(mode(&email), 0o600, "{}", email.display());
    }
    drop(stdin);
    assert!(worker.0.wait().unwrap().success());
}

#[test]
fn a_store_others_can_read_is_made_private_at_open_and_says_so() {
    let work = Work::new("");
    let events = work.path("events.jsonl");
    std::fs::write(&events, placed("e1", "c-1") + "\n").unwrap();
    let events = events.to_str().unwrap();
    let first = with_umask_022(&work, &["run", "--input", events])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let db = work.path("data/aftercare.db");
    // As an earlier version (or a copy by hand) left it.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = with_umask_022(&work, &["run", "--input", events])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(mode(&db), 0o600);
    let log = stderr(&again);
    assert!(
        log.contains("Made the store file private to its owner.") && log.contains("from=644"),
        "{log}"
    );
}

#[test]
fn sqlite_errors_name_the_store_file() {
    let work = Work::new("");
    std::fs::create_dir_all(work.path("data")).unwrap();
    std::fs::write(
        work.path("data/aftercare.db"),
        "not a database, not at all; long enough to have a header",
    )
    .unwrap();
    let out = work.run(&["run", "--input", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&work.path("data/aftercare.db").display().to_string())
            && err.contains("not a database"),
        "{err}"
    );
    // Another program's database: the migration fails, and says why
    // without quoting the migration's SQL.
    std::fs::remove_file(work.path("data/aftercare.db")).unwrap();
    rusqlite::Connection::open(work.path("data/aftercare.db"))
        .unwrap()
        .execute_batch("CREATE TABLE processed_events (something TEXT);")
        .unwrap();
    let out = work.run(&["run", "--input", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&work.path("data/aftercare.db").display().to_string())
            && err.contains("table processed_events already exists")
            && !err.contains("CREATE TABLE"),
        "{err}"
    );
}

/// Each configuration passes decoding, and `run` could not use it: `check`
/// and `run` refuse it with exit code 64, naming the key.
#[test]
fn configurations_run_cannot_use_are_refused_by_check_and_run() {
    let rule =
        "[[journey]]\ntemplate = \"welcome\"\non = \"order.placed\"\nclass = \"marketing\"\n";
    let cases = [
        (
            "[shop]\nunsubscribe_url = \"https://shop.example.com/unsubscribe?src=email\"\n"
                .to_owned(),
            "shop.unsubscribe_url",
        ),
        (
            "[shop]\nunsubscribe_url = \"https://shop.example.com/unsubscribe#x\"\n".to_owned(),
            "shop.unsubscribe_url",
        ),
        (
            "[shop]\nunsubscribe_url = \"https://shop.example.com/<unsubscribe>\"\n".to_owned(),
            "shop.unsubscribe_url",
        ),
        (
            "[shop]\nunsubscribe_url = \"http://shop.example.com/unsubscribe\"\n".to_owned(),
            "shop.unsubscribe_url",
        ),
        (
            "[policy]\nfrequency_cap = \"1000000y\"\n".to_owned(),
            "policy.frequency_cap",
        ),
        (
            "[policy]\nmax_delay = \"1000000y\"\n".to_owned(),
            "policy.max_delay",
        ),
        (
            "[policy.quiet_hours]\njitter = \"1000000y\"\n".to_owned(),
            "policy.quiet_hours.jitter",
        ),
        (format!("{rule}delay = \"1000000y\"\n"), "journey[0].delay"),
        (
            "[unsubscribe]\nsecret = \"                \"\n".to_owned(),
            "unsubscribe.secret",
        ),
        (
            "[unsubscribe]\nsecrets = [\"xxxxxxxxxxxxxxxxxxxxxxxx\"]\n".to_owned(),
            "unsubscribe.secrets",
        ),
    ];
    let events = repo().join("examples/events.jsonl");
    let events = events.to_str().unwrap();
    for (toml, key) in &cases {
        let work = Work::new(toml);
        for args in [
            &["check"][..],
            &["run", "--input", "/dev/null"],
            &["simulate", events],
        ] {
            let out = work.run(args);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{toml} {args:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(&format!("`{key}`")),
                "{toml}: {}",
                stderr(&out)
            );
        }
    }
}

#[test]
fn a_toml_syntax_error_names_file_line_and_column_without_echoing_the_line() {
    let work = Work::on_wall_clock("[unsubscribe]\nsecret = \"Zq3vN8kP2xW7mR4t-not-closed\n");
    let out = work.run(&["check"]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(!err.contains("Zq3vN8kP2xW7mR4t"), "{err}");
    assert!(
        err.contains(&work.config().display().to_string())
            && err.contains("line 4, column")
            && err.contains("invalid basic string"),
        "{err}"
    );
}

#[test]
fn config_errors_show_no_rust_types() {
    for (toml, key) in [
        ("[source]\nbatch_size = \"many\"\n", "source.batch_size"),
        ("shop = \"Tea & Kettle\"\n", "shop"),
        ("[mailer.smtp]\nport = -1\n", "mailer.smtp.port"),
    ] {
        let work = Work::new(toml);
        let out = work.run(&["check"]);
        assert_eq!(out.status.code(), Some(64));
        let err = stderr(&out);
        assert!(err.contains(&format!("config key `{key}`")), "{err}");
        for internal in ["usize", "u16", "struct ", "ShopConfig", "\"default."] {
            assert!(!err.contains(internal), "{internal}: {err}");
        }
    }
}
