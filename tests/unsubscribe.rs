//! One-click unsubscribe end to end: the signed link in a marketing email,
//! the endpoint's POST, GET and forged tokens, and the race with a marketing
//! email already queued for the customer.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use aftercare::unsubscribe::Signer;
use common::{KillOnDrop, Work, http_request as request};
use mail_parser::MessageParser;

const SECRET: &str = "a test secret of some length";

fn placed(event: &str, customer: &str, order: &str, at: &str, email: bool) -> String {
    let email = if email {
        format!(r#","email":"{customer}@example.com","marketing_consent":true"#)
    } else {
        String::new()
    };
    format!(
        r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"{at}","customer":{{"id":"{customer}"{email}}},"order":{{"id":"{order}","total":"5.00","currency":"EUR","items":[]}}}}"#
    )
}

fn unsubscribed(work: &Work, customer: &str) -> bool {
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    let state: String = conn
        .query_row(
            "SELECT state FROM journeys WHERE customer_id = ?1",
            [customer],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&state).unwrap()["profile"]["unsubscribed"] == true
}

#[test]
fn one_click_unsubscribe_from_a_signed_link() {
    let port = common::free_port();
    let work = Work::new(&format!(
        "[source]\nbatch_wait = \"50ms\"\n[unsubscribe]\nsecret = \"{SECRET}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let mut worker = KillOnDrop(
        work.command(&["run"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = worker.0.stdin.take().unwrap();
    common::wait_for_port(port, Duration::from_secs(20));

    // A customer whose welcome goes out at once (an old order).
    writeln!(
        stdin,
        "{}",
        placed("e1", "c-2", "o-2", "2024-01-01T10:00:00Z", true)
    )
    .unwrap();
    // Delivered concurrently: either may be written first.
    let sent = |work: &Work, template: &str| {
        work.outbox().into_iter().find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("c-2_{template}"))
        })
    };
    assert!(common::wait_until(Duration::from_secs(20), || {
        sent(&work, "welcome").is_some() && sent(&work, "order_confirmation").is_some()
    }));
    let raw = std::fs::read(sent(&work, "welcome").unwrap()).unwrap();
    let message = MessageParser::default().parse(&raw).unwrap();
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.split_whitespace().collect::<String>())
            .unwrap_or_default()
    };
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    let link = header("List-Unsubscribe");
    let url = link.trim_start_matches('<').trim_end_matches('>');
    let token = url
        .strip_prefix("https://shop.example.com/unsubscribe/")
        .unwrap_or_else(|| panic!("{link}"));
    assert_eq!(
        Signer::new(SECRET.as_bytes()).verify(token),
        Ok("c-2".to_owned())
    );
    // The link is in the body too (the footer).
    assert!(message.body_html(0).unwrap().contains(token));
    // A transactional email has none.
    let confirmation = sent(&work, "order_confirmation").unwrap();
    let raw = std::fs::read(confirmation).unwrap();
    assert!(
        MessageParser::default()
            .parse(&raw)
            .unwrap()
            .header_raw("List-Unsubscribe")
            .is_none()
    );

    // GET shows a confirm button and changes nothing.
    let path = format!("/unsubscribe/{token}");
    let (status, page) = request(port, "GET", &path);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<form method=\"post\">"), "{page}");
    assert!(!unsubscribed(&work, "c-2"));

    // Forged and malformed tokens: 4xx, nothing changes.
    let other = Signer::new(b"another secret entirely").token("c-2");
    assert_eq!(
        request(port, "POST", &format!("/unsubscribe/{other}")).0,
        403
    );
    let (_, signature) = token.split_once('.').unwrap();
    let swapped = format!(
        "{}.{signature}",
        Signer::new(SECRET.as_bytes())
            .token("c-3")
            .split_once('.')
            .unwrap()
            .0
    );
    assert_eq!(
        request(port, "POST", &format!("/unsubscribe/{swapped}")).0,
        403
    );
    assert_eq!(request(port, "POST", "/unsubscribe/not-a-token").0, 400);
    assert_eq!(request(port, "GET", "/unsubscribe/not-a-token").0, 400);
    assert!(!unsubscribed(&work, "c-2"));

    // POST unsubscribes.
    let (status, page) = request(port, "POST", &path);
    assert_eq!(status, 200, "{page}");
    assert!(unsubscribed(&work, "c-2"));

    // The race: a welcome due in six seconds, and the customer
    // unsubscribes before it is due. Marketing is suppressed, the
    // transactional confirmation is not.
    let soon = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24)
        + jiff::SignedDuration::from_secs(6);
    let soon = soon.round(jiff::Unit::Second).unwrap();
    writeln!(
        stdin,
        "{}",
        placed("e2", "c-1", "o-1", &soon.to_string(), true)
    )
    .unwrap();
    assert!(common::wait_until(Duration::from_secs(20), || {
        work.emails().iter().any(|(k, _)| k == "c-1/welcome/o-1")
    }));
    let token = Signer::new(SECRET.as_bytes()).token("c-1");
    assert_eq!(
        request(port, "POST", &format!("/unsubscribe/{token}")).0,
        200
    );
    let decided = || {
        work.stored()
            .into_iter()
            .find(|e| e.key == "c-1/welcome/o-1" && e.status != "pending")
    };
    assert!(common::wait_until(Duration::from_secs(20), || decided().is_some()));
    let welcome = decided().unwrap();
    assert_eq!(welcome.status, "suppressed");
    assert_eq!(welcome.reason.as_deref(), Some("unsubscribed"));
    assert!(
        work.emails()
            .contains(&("c-1/order_confirmation/o-1".to_owned(), "sent".to_owned()))
    );

    drop(stdin);
    assert!(worker.0.wait().unwrap().success());
}

/// The token in the `List-Unsubscribe` header of the customer's welcome.
fn welcome_token(work: &Work, customer: &str) -> Option<String> {
    let file = work.outbox().into_iter().find(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("{customer}_welcome"))
    })?;
    let raw = std::fs::read(file).unwrap();
    let message = MessageParser::default().parse(&raw).unwrap();
    let link: String = message
        .header_raw("List-Unsubscribe")?
        .split_whitespace()
        .collect();
    let token = link
        .trim_start_matches('<')
        .trim_end_matches('>')
        .strip_prefix("https://shop.example.com/unsubscribe/")?;
    Some(token.to_owned())
}

/// A token as made before tokens carried a key id: `<id>.<signature>`.
fn token_without_key_id(key: &[u8], customer: &str) -> String {
    let token = Signer::new(key).token(customer);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    format!("{}.{}", parts[0], parts[2])
}

/// Runs a worker on `work` with `unsubscribe` as its `[unsubscribe]`
/// section and the HTTP server on; `check` gets the port and the worker's
/// standard input (the worker stops when it is closed).
fn with_worker(
    work: &Work,
    unsubscribe: &str,
    check: impl FnOnce(u16, &mut std::process::ChildStdin),
) {
    let port = common::free_port();
    let base = std::fs::read_to_string(work.config()).unwrap();
    let base = base.split("[unsubscribe]").next().unwrap().to_owned();
    std::fs::write(
        work.config(),
        format!("{base}[unsubscribe]\n{unsubscribe}\n[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let mut worker = KillOnDrop(
        work.command(&["run"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = worker.0.stdin.take().unwrap();
    common::wait_for_port(port, Duration::from_secs(20));
    check(port, &mut stdin);
    drop(stdin);
    assert!(worker.0.wait().unwrap().success());
}

#[test]
fn links_keep_working_across_a_key_rotation_and_a_removed_key_is_refused() {
    const NEW: &str = "the new key, Zq3vN8kP2xW7mR4t";
    const OLD: &str = "the old key, Hd8sQ1rL5yB9cE2u";
    const REMOVED: &str = "a removed key, Jw4nT6gF0vK3pA7x";
    let work = Work::new("[source]\nbatch_wait = \"50ms\"\n");
    let status = |port: u16, token: &str| request(port, "GET", &format!("/unsubscribe/{token}")).0;

    // Before any key is configured: the store's own key signs.
    let events = work.path("events.jsonl");
    std::fs::write(
        &events,
        placed("e1", "c-1", "o-1", "2024-01-01T10:00:00Z", true) + "\n",
    )
    .unwrap();
    let out = work.run(&["run", "--input", events.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let sent_with_store_key = welcome_token(&work, "c-1").expect("the welcome's link");
    let store_key: Vec<u8> = rusqlite::Connection::open(work.path("data/aftercare.db"))
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE key = 'secret:unsubscribe'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        Signer::new(&store_key).verify(&sent_with_store_key),
        Ok("c-1".to_owned())
    );

    // Keys configured, the new one first: it signs, and links of the older
    // key and of the store's (with a key id or without) keep working.
    with_worker(
        &work,
        &format!("secrets = [\"{NEW}\", \"{OLD}\"]"),
        |port, stdin| {
            for token in [
                sent_with_store_key.clone(),
                token_without_key_id(&store_key, "c-1"),
                Signer::new(OLD.as_bytes()).token("c-1"),
                token_without_key_id(OLD.as_bytes(), "c-1"),
                Signer::new(NEW.as_bytes()).token("c-1"),
            ] {
                assert_eq!(status(port, &token), 200, "{token}");
            }
            for token in [
                Signer::new(REMOVED.as_bytes()).token("c-1"),
                token_without_key_id(REMOVED.as_bytes(), "c-1"),
            ] {
                assert_eq!(status(port, &token), 403, "{token}");
            }
            writeln!(
                stdin,
                "{}",
                placed("e2", "c-2", "o-2", "2024-01-01T10:00:00Z", true)
            )
            .unwrap();
            assert!(common::wait_until(Duration::from_secs(20), || {
                welcome_token(&work, "c-2").is_some()
            }));
            let token = welcome_token(&work, "c-2").unwrap();
            assert_eq!(
                token.split('.').nth(1),
                Some(Signer::new(NEW.as_bytes()).key_id())
            );
            assert_eq!(status(port, &token), 200);
        },
    );

    // The old key removed, and the store's no longer accepted: their links
    // are refused (403), and nothing changes for the customer.
    with_worker(
        &work,
        &format!("secrets = [\"{NEW}\"]\naccept_store_key = false"),
        |port, _| {
            for token in [
                sent_with_store_key.clone(),
                token_without_key_id(&store_key, "c-1"),
                Signer::new(OLD.as_bytes()).token("c-1"),
                token_without_key_id(OLD.as_bytes(), "c-1"),
            ] {
                assert_eq!(
                    request(port, "POST", &format!("/unsubscribe/{token}")).0,
                    403,
                    "{token}"
                );
            }
            assert!(!unsubscribed(&work, "c-1"));
            let token = Signer::new(NEW.as_bytes()).token("c-1");
            assert_eq!(
                request(port, "POST", &format!("/unsubscribe/{token}")).0,
                200
            );
            assert!(unsubscribed(&work, "c-1"));
        },
    );
}
