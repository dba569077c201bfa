//! One-click unsubscribe end to end: the signed link in a marketing email,
//! the endpoint's POST, GET and forged tokens, and the race with a marketing
//! email already queued for the customer.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use aftercare::unsubscribe::Signer;
use mail_parser::MessageParser;

use crate::common::{self, KillOnDrop, Work, http_request as request};

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

/// A worker with JSON logs (kept in `<work>/worker.log`) that knows
/// customers `c-1` and `c-2`, ready once their orders are applied.
fn worker_knowing_two() -> (Work, KillOnDrop, std::process::ChildStdin, u16) {
    let port = common::free_port();
    let work = Work::new(&format!(
        "[source]\nbatch_wait = \"50ms\"\n[unsubscribe]\nsecret = \"{SECRET}\"\n\
         [log]\nformat = \"json\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let log = std::fs::File::create(work.path("worker.log")).unwrap();
    let mut worker = KillOnDrop(
        work.command(&["run"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut stdin = worker.0.stdin.take().unwrap();
    common::wait_for_port(port, Duration::from_secs(20));
    for n in 1..=2 {
        writeln!(
            stdin,
            "{}",
            placed(
                &format!("e{n}"),
                &format!("c-{n}"),
                &format!("o-{n}"),
                "2024-01-01T10:00:00Z",
                true
            )
        )
        .unwrap();
    }
    stdin.flush().unwrap();
    assert!(common::wait_until(Duration::from_secs(20), || {
        work.emails().len() >= 4
    }));
    (work, worker, stdin, port)
}

/// `(status, whole response)` of a POST of `body` as `content_type`.
fn post(port: u16, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // A server refusing a large body may close before reading all of it.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    (common::status_of(&response), response)
}

const FORM: &str = "application/x-www-form-urlencoded";

fn multipart(name: &str, value: &str) -> (String, Vec<u8>) {
    let boundary = "----aftercare-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[test]
fn an_unsubscribe_post_needs_the_one_click_body() {
    let (work, _worker, _stdin, port) = worker_knowing_two();
    let path = format!(
        "/unsubscribe/{}",
        Signer::new(SECRET.as_bytes()).token("c-1")
    );

    // Not the one-click form: 400, nothing changes.
    let (other_type, other_body) = multipart("List-Unsubscribe", "Two-Clicks");
    for (content_type, body) in [
        (FORM, &b""[..]),
        (FORM, b"confirm=yes"),
        (FORM, b"List-Unsubscribe=Two-Clicks"),
        ("text/plain", b"List-Unsubscribe=One-Click"),
        ("application/json", br#"{"List-Unsubscribe":"One-Click"}"#),
        (&other_type, &other_body),
        ("multipart/form-data; boundary=x", b"not multipart"),
    ] {
        let (status, response) = post(port, &path, content_type, body);
        assert_eq!(status, 400, "{content_type} {body:?}: {response}");
        // The answer offers the button that does post the right body.
        assert!(
            response.contains("name=\"List-Unsubscribe\" value=\"One-Click\""),
            "{response}"
        );
        assert!(!unsubscribed(&work, "c-1"));
    }

    // The page's own form: its hidden field is the one-click body.
    let (status, page) = request(port, "GET", &path);
    assert_eq!(status, 200, "{page}");
    let form = page
        .split_once("<form method=\"post\">")
        .and_then(|(_, rest)| rest.split_once("</form>"))
        .map(|(form, _)| form)
        .unwrap_or_else(|| panic!("{page}"));
    assert!(
        form.contains("<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"),
        "{form}"
    );
    let (status, response) = post(port, &path, FORM, b"List-Unsubscribe=One-Click");
    assert_eq!(status, 200, "{response}");
    assert!(unsubscribed(&work, "c-1"));

    // Multipart, as RFC 8058 says mail clients should send it.
    let path = format!(
        "/unsubscribe/{}",
        Signer::new(SECRET.as_bytes()).token("c-2")
    );
    let (content_type, body) = multipart("List-Unsubscribe", "One-Click");
    let (status, response) = post(port, &path, &content_type, &body);
    assert_eq!(status, 200, "{response}");
    assert!(unsubscribed(&work, "c-2"));
}

#[test]
fn an_unsubscribe_body_over_the_limit_gets_413() {
    let (work, _worker, _stdin, port) = worker_knowing_two();
    let path = format!(
        "/unsubscribe/{}",
        Signer::new(SECRET.as_bytes()).token("c-1")
    );
    let large = format!("List-Unsubscribe=One-Click&pad={}", "a".repeat(10_000));
    let (status, response) = post(port, &path, FORM, large.as_bytes());
    assert_eq!(status, 413, "{response}");
    let (content_type, mut body) = multipart("List-Unsubscribe", "One-Click");
    body.extend(std::iter::repeat_n(b'\n', 10_000));
    let (status, response) = post(port, &path, &content_type, &body);
    assert_eq!(status, 413, "{response}");
    assert!(!unsubscribed(&work, "c-1"));
}

#[test]
fn unsubscribe_pages_are_neither_cached_nor_framed() {
    let (_work, _worker, _stdin, port) = worker_knowing_two();
    let path = format!(
        "/unsubscribe/{}",
        Signer::new(SECRET.as_bytes()).token("c-1")
    );
    let pages = [
        request(port, "GET", &path),
        request(port, "GET", "/unsubscribe/not-a-token"),
        post(port, &path, FORM, b"nothing"),
        request(port, "POST", &path),
    ];
    assert_eq!(pages.each_ref().map(|(s, _)| *s), [200, 400, 400, 200]);
    for (_, response) in pages {
        let head = response
            .split_once("\r\n\r\n")
            .unwrap()
            .0
            .to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_else(|| panic!("no {name}: {head}"))
                .to_owned()
        };
        assert_eq!(header("cache-control"), "no-store");
        assert_eq!(header("x-frame-options"), "deny");
        let policy = header("content-security-policy");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(policy.contains("form-action 'self'"), "{policy}");
        assert_eq!(header("referrer-policy"), "no-referrer");
    }
}

#[test]
fn refused_tokens_are_logged_as_a_count_without_the_tokens() {
    let (work, mut worker, stdin, port) = worker_knowing_two();
    let forger = Signer::new(b"another secret entirely");
    let forged: Vec<String> = (0..40).map(|n| forger.token(&format!("c-{n}"))).collect();
    for token in &forged {
        assert_eq!(
            request(port, "POST", &format!("/unsubscribe/{token}")).0,
            403
        );
    }
    for n in 0..5 {
        assert_eq!(
            request(port, "GET", &format!("/unsubscribe/junk{n}")).0,
            400
        );
    }
    drop(stdin);
    let status = common::wait_exit(&mut worker.0, Duration::from_secs(20)).expect("worker exits");
    assert!(status.success());
    let log = std::fs::read_to_string(work.path("worker.log")).unwrap();
    let refused: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("Refused"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(refused[0]["level"], "WARN");
    assert_eq!(refused[0]["forged"], 40);
    assert_eq!(refused[0]["malformed"], 5);
    for token in &forged {
        let (_, signature) = token.split_once('.').unwrap();
        assert!(
            !log.contains(token.as_str()) && !log.contains(signature),
            "a token in the log: {log}"
        );
    }
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
                    post(
                        port,
                        &format!("/unsubscribe/{token}"),
                        FORM,
                        b"List-Unsubscribe=One-Click"
                    )
                    .0,
                    403,
                    "{token}"
                );
            }
            assert!(!unsubscribed(&work, "c-1"));
            let token = Signer::new(NEW.as_bytes()).token("c-1");
            assert_eq!(
                post(
                    port,
                    &format!("/unsubscribe/{token}"),
                    FORM,
                    b"List-Unsubscribe=One-Click"
                )
                .0,
                200
            );
            assert!(unsubscribed(&work, "c-1"));
        },
    );
}
