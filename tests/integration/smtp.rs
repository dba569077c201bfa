//! End to end through a real SMTP server: Postfix's `smtp-sink`, started on
//! loopback, dumping what it receives. The messages are parsed as MIME and
//! compared with the `.eml` files of the same run on the embedded mailer.

use std::collections::BTreeMap;

use mail_parser::{MessageParser, MimeHeaders};

use crate::common::{self, SmtpSink, Work, repo, stderr};

/// What a recipient sees of one message.
#[derive(Debug, PartialEq)]
struct Seen {
    to: String,
    subject: String,
    text: String,
    html: String,
    text_charset: String,
}

fn seen(raw: &[u8]) -> (String, Seen) {
    let m = MessageParser::default().parse(raw).expect("a MIME message");
    let id = m.message_id().expect("a Message-ID").to_owned();
    let to = m
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap()
        .to_owned();
    let text_part = m.text_part(0).expect("a text part");
    let seen = Seen {
        to,
        subject: m.subject().unwrap_or_default().to_owned(),
        // The sink stores lines with LF, the .eml files keep the wire's CRLF.
        text: m.body_text(0).expect("a text body").replace("\r\n", "\n"),
        html: m.body_html(0).expect("an HTML body").replace("\r\n", "\n"),
        text_charset: text_part
            .content_type()
            .and_then(|c| c.attribute("charset"))
            .unwrap_or_default()
            .to_lowercase(),
    };
    (id, seen)
}

fn in_script(s: &str, range: std::ops::RangeInclusive<char>) -> bool {
    s.chars().any(|c| range.contains(&c))
}

/// A work directory whose worker sends to the plain SMTP server on `port`.
fn smtp_work(port: u16, extra: &str) -> Work {
    Work::new(&format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {port}\n{extra}"
    ))
}

/// `(attempts, ambiguous attempts, last reply)` of the email `key`.
fn attempts(work: &Work, key: &str) -> (i64, i64, Option<String>) {
    let conn = rusqlite::Connection::open(work.path("data/aftercare.db")).unwrap();
    conn.query_row(
        "SELECT attempts, ambiguous_attempts, last_reply FROM emails WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[test]
fn emails_reach_a_real_smtp_server_intact_in_three_languages() {
    let sink = SmtpSink::start(&[]);
    let examples = repo().join("examples/events.jsonl");

    // One secret, so that both runs sign the same unsubscribe links.
    let secret = "[unsubscribe]\nsecret = \"the same secret for both\"\n";
    let smtp = Work::new(&format!(
        "{secret}[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\ntls = \"none\"\nport = {}\npool_size = 2\n",
        sink.port
    ));
    let out = smtp.run(&["run", "--input", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let eml = Work::new(secret);
    let out = eml.run(&["run", "--input", examples.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let received: Vec<Vec<u8>> = sink.messages();
    let expected: BTreeMap<String, Seen> = eml
        .outbox()
        .iter()
        .map(|p| seen(&std::fs::read(p).unwrap()))
        .collect();
    assert!(expected.len() > 50, "{}", expected.len());
    assert_eq!(
        received.len(),
        expected.len(),
        "messages received by the sink"
    );

    let mut scripts = BTreeMap::new();
    for raw in &received {
        // smtp-sink puts the envelope first: the RCPT TO must be the To.
        let head = String::from_utf8_lossy(raw);
        let rcpt = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Rcpt-Args: "))
            .expect("smtp-sink records RCPT TO");
        let (id, got) = seen(raw);
        assert_eq!(rcpt.trim_matches(['<', '>']), got.to, "envelope recipient");
        assert_eq!(got.text_charset, "utf-8");
        let want = expected
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected message {id}"));
        // The Date header differs between the runs; what a reader sees does not.
        assert_eq!(&got, want, "message {id}");
        if in_script(&got.subject, '\u{0531}'..='\u{058F}') {
            *scripts.entry("armenian").or_insert(0) += 1;
            assert!(
                in_script(&got.text, '\u{0531}'..='\u{058F}'),
                "{}",
                got.text
            );
        }
        if in_script(&got.subject, '\u{1200}'..='\u{137F}') {
            *scripts.entry("ethiopic").or_insert(0) += 1;
            assert!(
                in_script(&got.html, '\u{1200}'..='\u{137F}'),
                "{}",
                got.html
            );
        }
    }
    assert!(
        scripts.get("armenian").copied().unwrap_or(0) > 5,
        "{scripts:?}"
    );
    assert!(
        scripts.get("ethiopic").copied().unwrap_or(0) > 5,
        "{scripts:?}"
    );
}

/// Runs a few generated customers against a sink started with `sink_args`;
/// returns the status of every stored email and the run's summary.
fn run_against_refusing_sink(sink_args: &[&str]) -> (Vec<String>, String) {
    let sink = SmtpSink::start(sink_args);
    let work = smtp_work(sink.port, "");
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(3));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sink.messages().is_empty(), "the sink accepted a message");
    let stored = work.stored();
    let statuses: Vec<String> = stored.iter().map(|e| e.status.clone()).collect();
    // A failed email keeps the server's reply as its reason.
    for e in stored.iter().filter(|e| e.status == "failed") {
        let reason = e.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("permanent") && reason.contains("5"),
            "{reason}"
        );
    }
    assert!(!statuses.is_empty());
    assert!(!statuses.iter().any(|s| s == "sent"), "{statuses:?}");
    (statuses, common::stdout(&out))
}

#[test]
fn a_refusing_server_leaves_emails_to_retry_not_lost() {
    // A 4xx reply to every RCPT TO: a transient failure.
    let (statuses, _) = run_against_refusing_sink(&["-r", "RCPT"]);
    assert!(statuses.iter().any(|s| s == "pending"), "{statuses:?}");
    assert!(!statuses.iter().any(|s| s == "failed"), "{statuses:?}");
}

#[test]
fn a_permanent_refusal_fails_the_email_with_the_reply() {
    // A 5xx reply to every RCPT TO.
    let (statuses, summary) = run_against_refusing_sink(&["-f", "RCPT"]);
    let failed = statuses.iter().filter(|s| *s == "failed").count();
    assert!(failed > 0, "{statuses:?}");
    assert!(summary.contains(&format!("{failed} failed")), "{summary}");
}

/// The test SMTP server that bounces `gone*@` addresses with 550 5.1.1.
struct BouncingServer {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl BouncingServer {
    fn start() -> BouncingServer {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .arg(repo().join("tests/servers/bouncing_smtp.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/test.sh installs it)");
        common::wait_for_port(port, std::time::Duration::from_secs(20));
        BouncingServer { port, dir, child }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(self.dir.path()).unwrap().count()
    }

    /// RCPT TO attempts at the deferring domain.
    fn deferred_attempts(&self) -> usize {
        let counter = format!("{}.slow", self.dir.path().display());
        std::fs::read_to_string(counter).map_or(0, |s| s.lines().count())
    }
}

impl Drop for BouncingServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_mailbox_that_does_not_exist_stops_every_later_email_to_it() {
    let server = BouncingServer::start();
    let work = smtp_work(server.port, "");
    let order = |event: &str, customer: &str, email: &str, order: &str| {
        format!(
            r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"{customer}","email":"{email}"}},"order":{{"id":"{order}","total":"5.00","currency":"EUR","items":[]}}}}"#
        )
    };
    let first = work.path("first.jsonl");
    common::write(
        &first,
        &format!(
            "{}\n{}\n",
            order("e1", "c-gone", "gone@example.com", "o-1"),
            order("e2", "c-here", "here@example.com", "o-2")
        ),
    );
    let out = work.run(&["run", "--input", first.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = work.stored();
    let status = |key: &str| {
        stored
            .iter()
            .find(|e| e.key == key)
            .map(|e| (e.status.clone(), e.reason.clone().unwrap_or_default()))
            .unwrap()
    };
    let (bounced, reason) = status("c-gone/order_confirmation/o-1");
    assert_eq!(bounced, "failed");
    assert!(reason.contains("5.1.1"), "{reason}");
    assert_eq!(status("c-here/order_confirmation/o-2").0, "sent");
    let received = server.received();
    assert!(received >= 1);

    // A later email to the same address, transactional too, is suppressed.
    let second = work.path("second.jsonl");
    common::write(
        &second,
        &format!("{}\n", order("e3", "c-gone", "gone@example.com", "o-3")),
    );
    let out = work.run(&["run", "--input", second.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let later = work
        .stored()
        .into_iter()
        .find(|e| e.key == "c-gone/order_confirmation/o-3")
        .unwrap();
    assert_eq!(
        (later.status.as_str(), later.reason.as_deref()),
        ("suppressed", Some("address bounced"))
    );
    assert_eq!(server.received(), received, "nothing more was sent");
}

#[test]
fn a_server_refusing_for_good_ends_in_failed_after_the_configured_attempts() {
    // Every RCPT gets a 4xx: retried with the configured waits, then failed.
    let sink = SmtpSink::start(&["-r", "RCPT"]);
    let work = smtp_work(
        sink.port,
        "[sender.retry]\nmax_attempts = 3\nfirst_wait = \"100ms\"\nmax_wait = \"200ms\"\n",
    );
    let log = work.path("events.jsonl");
    common::write(
        &log,
        r#"{"event_id":"e1","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-1","email":"a@example.com"},"order":{"id":"o-1","total":"5.00","currency":"EUR","items":[]}}
"#,
    );
    // Each run makes the attempts that are due by then.
    for _ in 0..10 {
        let out = work.run(&["run", "--input", log.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let e = work
            .stored()
            .into_iter()
            .find(|e| e.key == "c-1/order_confirmation/o-1")
            .unwrap();
        if e.status == "failed" {
            assert!(e.reason.unwrap().starts_with("gave up after 3 attempts"));
            return;
        }
        assert_eq!(e.status, "pending");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    panic!("still not failed after 10 runs");
}

/// An aiosmtpd server requiring STARTTLS and AUTH, with a certificate for
/// `localhost` made for the test.
struct TlsAuthServer {
    port: u16,
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    child: std::process::Child,
}

impl TlsAuthServer {
    const USER: &str = "aftercare";
    const PASSWORD: &str = "s3cret-pass";

    fn start() -> TlsAuthServer {
        let dir = tempfile::tempdir().unwrap();
        // A CA of our own, and a certificate for localhost it signs.
        let file = |name: &str| dir.path().join(name);
        let (ca, ca_key, cert, key) = (
            file("ca.pem"),
            file("ca.key"),
            file("cert.pem"),
            file("key.pem"),
        );
        let openssl = |args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "openssl {args:?}");
        };
        let os = |s: &str| std::ffi::OsString::from(s);
        common::write(
            &file("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        openssl(&[
            &os("req"),
            &os("-x509"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-days"),
            &os("2"),
            &os("-subj"),
            &os("/CN=aftercare test CA"),
            &os("-keyout"),
            ca_key.as_os_str(),
            &os("-out"),
            ca.as_os_str(),
        ]);
        openssl(&[
            &os("req"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-subj"),
            &os("/CN=localhost"),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            file("leaf.csr").as_os_str(),
        ]);
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            file("leaf.csr").as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-days"),
            &os("2"),
            &os("-extfile"),
            file("leaf.ext").as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ]);
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .arg(repo().join("tests/servers/tls_auth_smtp.py"))
            .arg(port.to_string())
            .arg(&mail)
            .arg(&cert)
            .arg(&key)
            .args([Self::USER, Self::PASSWORD])
            .spawn()
            .expect("python3 with aiosmtpd (scripts/test.sh installs it)");
        common::wait_for_port(port, std::time::Duration::from_secs(20));
        TlsAuthServer {
            port,
            dir,
            ca,
            child,
        }
    }

    fn received(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .count()
    }

    fn config(&self, password: &str) -> Work {
        let work = Work::new(&format!(
            "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"localhost\"\nport = {}\n\
             tls = \"starttls\"\nca_file = {:?}\nusername = \"{}\"\npassword_file = \"smtp-password\"\n",
            self.port,
            self.ca,
            Self::USER
        ));
        common::write(&work.path("smtp-password"), &format!("{password}\n"));
        work
    }
}

impl Drop for TlsAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of the order confirmation of `one_order`.
fn confirmation(work: &Work) -> String {
    work.emails()
        .into_iter()
        .find(|(k, _)| k == "c-1/order_confirmation/o-1")
        .unwrap()
        .1
}

fn one_order(work: &Work) -> std::path::PathBuf {
    let log = work.path("events.jsonl");
    common::write(
        &log,
        r#"{"event_id":"e1","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{"id":"c-1","email":"a@example.com"},"order":{"id":"o-1","total":"5.00","currency":"EUR","items":[]}}
"#,
    );
    log
}

#[test]
fn starttls_and_login_deliver() {
    let server = TlsAuthServer::start();
    let work = server.config(TlsAuthServer::PASSWORD);
    let log = one_order(&work);
    // The password file is read relative to the working directory.
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.received(), 1);
    assert_eq!(confirmation(&work), "sent");
    // The password is never in the output.
    assert!(!stderr(&out).contains(TlsAuthServer::PASSWORD));
}

#[test]
fn a_wrong_password_fails_permanently() {
    let server = TlsAuthServer::start();
    let work = server.config("not-the-password");
    let log = one_order(&work);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.received(), 0);
    let e = work
        .stored()
        .into_iter()
        .find(|e| e.key == "c-1/order_confirmation/o-1")
        .unwrap();
    assert_eq!(e.status, "failed", "{:?}", e.reason);
    assert!(e.reason.unwrap().contains("535"));
    assert!(!stderr(&out).contains("not-the-password"));
}

#[test]
fn plaintext_is_refused_when_starttls_is_required() {
    // smtp-sink offers no STARTTLS: nothing may go out in the clear.
    let sink = SmtpSink::start(&[]);
    let work = Work::new(&format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n",
        sink.port
    ));
    let log = one_order(&work);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sink.messages().is_empty());
    assert_eq!(confirmation(&work), "pending", "kept to retry");
}

#[test]
fn emails_queued_while_the_server_is_down_go_out_once_when_it_is_back() {
    let port = common::free_port();
    let work = smtp_work(
        port,
        "[sender.retry]\nfirst_wait = \"100ms\"\nmax_wait = \"200ms\"\n",
    );
    let log = work.path("events.jsonl");
    common::write(&log, &common::generated_events(5));
    // Nothing listens: every delivery is refused, and kept.
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let waiting = work.emails().iter().filter(|(_, s)| s == "pending").count();
    assert!(waiting > 5, "{:?}", work.emails());
    assert!(!work.emails().iter().any(|(_, s)| s == "sent"));

    // The server is back: the next run sends each of them, once.
    let sink = SmtpSink::start_on(port, &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = sink.message_ids_once();
    let sent = work.emails().iter().filter(|(_, s)| s == "sent").count();
    assert_eq!(ids.len(), sent);
    // Every transactional email of the plan went out. (A marketing one is
    // checked again when it is retried: the events that came meanwhile, a
    // new order, may have cancelled it.)
    let transactional = [
        "order_confirmation",
        "order_cancelled",
        "shipping_update",
        "return_instructions",
    ];
    let planned = common::planned(&work, &log)
        .into_iter()
        .filter(|p| transactional.iter().any(|t| p.contains(&format!(" {t} "))))
        .count();
    let sent_transactional = work
        .emails()
        .into_iter()
        .filter(|(k, s)| s == "sent" && transactional.iter().any(|t| k.contains(&format!("/{t}/"))))
        .count();
    assert_eq!(sent_transactional, planned);
    assert!(
        !work
            .emails()
            .iter()
            .any(|(_, s)| s == "pending" || s == "sending")
    );
}

#[test]
fn a_deferring_domain_is_paused_and_the_others_go_on() {
    let server = BouncingServer::start();
    let work = smtp_work(
        server.port,
        "[sender.domains]\nconcurrency = 1\ndefer = \"10m\"\n",
    );
    let log = work.path("events.jsonl");
    let orders: String = (0..6)
        .map(|i| {
            let domain = if i % 2 == 0 { "slow.example" } else { "fast.example" };
            format!(
                r#"{{"event_id":"e{i}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{i}","email":"c{i}@{domain}"}},"order":{{"id":"o-{i}","total":"5.00","currency":"EUR","items":[]}}}}"#
            ) + "\n"
        })
        .collect();
    common::write(&log, &orders);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // One try at the slow domain; it said slow down, so no more.
    assert_eq!(server.deferred_attempts(), 1);
    assert_eq!(server.received(), 3, "the fast domain's confirmations");
    let confirmations: Vec<(String, String)> = work
        .emails()
        .into_iter()
        .filter(|(k, _)| k.contains("/order_confirmation/"))
        .collect();
    for (key, status) in &confirmations {
        let slow = ["c-0/", "c-2/", "c-4/"].iter().any(|c| key.starts_with(c));
        assert_eq!(status, if slow { "pending" } else { "sent" }, "{key}");
    }
    // Waiting on a domain spends no attempt.
    assert_eq!(attempts(&work, "c-0/order_confirmation/o-0").0, 0);
}

#[test]
fn a_disconnect_after_the_final_dot_is_ambiguous_and_resent_with_the_same_message_id() {
    let port = common::free_port();
    let work = smtp_work(
        port,
        "[sender.retry]\nfirst_wait = \"100ms\"\nmax_wait = \"200ms\"\n",
    );
    let log = one_order(&work);
    // The server takes the message, then hangs up without a reply.
    let hangs_up = SmtpSink::start_on(port, &["-q", "."]);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(confirmation(&work), "pending", "kept to send again");
    let (tries, ambiguous, _) = attempts(&work, "c-1/order_confirmation/o-1");
    assert_eq!((tries, ambiguous), (1, 1));
    let maybe_delivered = hangs_up.message_ids_once();
    drop(hangs_up);

    // A server that answers: the email goes out again, as the same message.
    let answers = SmtpSink::start_on(port, &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(confirmation(&work), "sent");
    let delivered = answers.message_ids_once();
    assert_eq!(delivered.len(), 1);
    for id in &maybe_delivered {
        assert_eq!(id, &delivered[0], "a duplicate carries the same Message-ID");
    }
}

#[test]
fn a_server_closing_idle_pooled_connections_loses_nothing() {
    use std::io::Write;
    // smtp-sink drops a connection idle for a second.
    let sink = SmtpSink::start(&["-t", "1"]);
    let work = smtp_work(sink.port, "[source]\nbatch_wait = \"50ms\"\n");
    let mut worker = work
        .command(&["run"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = worker.stdin.take().unwrap();
    let order = |n: u32| {
        format!(
            r#"{{"event_id":"e{n}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{n}","email":"c{n}@example.com"}},"order":{{"id":"o-{n}","total":"5.00","currency":"EUR","items":[]}}}}"#
        )
    };
    writeln!(stdin, "{}", order(1)).unwrap();
    assert!(common::wait_until(
        std::time::Duration::from_secs(20),
        || sink.messages().len() == 1
    ));
    // Long enough for the server to close the pooled connection.
    std::thread::sleep(std::time::Duration::from_secs(3));
    writeln!(stdin, "{}", order(2)).unwrap();
    assert!(common::wait_until(
        std::time::Duration::from_secs(20),
        || sink.messages().len() == 2
    ));
    drop(stdin);
    assert!(worker.wait().unwrap().success());
    let statuses: Vec<String> = work
        .emails()
        .into_iter()
        .filter(|(k, _)| k.contains("order_confirmation"))
        .map(|(_, s)| s)
        .collect();
    assert_eq!(statuses, ["sent", "sent"]);
    assert_eq!(sink.message_ids_once().len(), 2);
}

#[test]
fn a_disconnect_before_the_message_went_out_is_transient_not_ambiguous() {
    // smtp-sink hangs up, without a reply, on RCPT TO.
    let sink = SmtpSink::start(&["-q", "RCPT"]);
    let work = smtp_work(sink.port, "");
    let log = one_order(&work);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(confirmation(&work), "pending");
    let (tries, ambiguous, _) = attempts(&work, "c-1/order_confirmation/o-1");
    assert_eq!((tries, ambiguous), (1, 0));
}

#[test]
fn a_421_defers_the_domain_without_spending_an_attempt() {
    // smtp-sink answers MAIL FROM with 421 and hangs up.
    let sink = SmtpSink::start(&["-Q", "MAIL"]);
    let work = smtp_work(sink.port, "");
    let log = one_order(&work);
    let out = work.run(&["run", "--input", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(confirmation(&work), "pending");
    let (tries, _, reply) = attempts(&work, "c-1/order_confirmation/o-1");
    assert_eq!(tries, 0, "a deferral spends no attempt");
    let reply = reply.unwrap_or_default();
    assert!(reply.contains("421"), "{reply}");
}
