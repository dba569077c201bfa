//! What operations sees of a running worker: `/healthz`, `/readyz` (and
//! why it fails), `/metrics` in Prometheus text, and JSON logs that carry
//! the event's coordinates and no email address.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{self, KillOnDrop, Work, http_request};

fn placed(event: &str, customer: &str, order: &str) -> String {
    format!(
        r#"{{"event_id":"{event}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"{customer}","email":"{customer}@example.com","marketing_consent":true}},"order":{{"id":"{order}","total":"5.00","currency":"EUR","items":[]}}}}"#
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of a metric line that starts with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A worker reading standard input (so it keeps running), with the HTTP
/// server on a free port and `extra` config.
fn worker(extra: &str) -> (Work, KillOnDrop, std::process::ChildStdin, u16) {
    let port = common::free_port();
    let work = Work::new(&format!(
        "[source]\nbatch_wait = \"50ms\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}"
    ));
    let mut child = work
        .command(&["run"])
        .env("AFTERCARE_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    common::wait_for_port(port, Duration::from_secs(20));
    (work, KillOnDrop(child), stdin, port)
}

#[test]
fn health_readiness_and_metrics_of_a_running_worker() {
    let (_work, mut child, mut stdin, port) = worker("");
    writeln!(stdin, "{}", placed("e1", "c-1", "o-1")).unwrap();
    writeln!(stdin, "{{not json").unwrap();
    writeln!(stdin, "{}", placed("e2", "c-2", "o-2")).unwrap();
    // Cancelled an hour later: its welcome and win-backs, still waiting,
    // are cancelled as the event is applied.
    writeln!(
        stdin,
        r#"{{"event_id":"e3","type":"order.cancelled","occurred_at":"2024-01-01T11:00:00Z","customer":{{"id":"c-2"}},"order":{{"id":"o-2"}}}}"#
    )
    .unwrap();
    stdin.flush().unwrap();

    let (status, response) = http_request(port, "GET", "/healthz");
    assert_eq!(status, 200, "{response}");

    // Ready once the source was polled: the store answers, the folder of
    // .eml files exists.
    let ready = common::wait_until(Duration::from_secs(20), || {
        http_request(port, "GET", "/readyz").0 == 200
    });
    let (_, response) = http_request(port, "GET", "/readyz");
    assert!(ready, "{response}");
    let checks: serde_json::Value = serde_json::from_str(body(&response)).unwrap();
    assert_eq!(checks["ready"], true);
    for check in ["store", "consumer", "mailer"] {
        assert_eq!(checks["checks"][check]["ok"], true, "{checks}");
    }

    let sent = |text: &str| {
        metric(
            text,
            "aftercare_emails_total{template=\"order_confirmation\",status=\"sent\"}",
        )
    };
    let mut text = String::new();
    let seen = common::wait_until(Duration::from_secs(20), || {
        text = body(&http_request(port, "GET", "/metrics").1).to_owned();
        sent(&text) == Some(2.0)
    });
    assert!(seen, "{text}");
    assert_eq!(
        metric(
            &text,
            "aftercare_events_total{source=\"stdin\",type=\"order.placed\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "aftercare_invalid_events_total{source=\"stdin\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "aftercare_emails_total{template=\"welcome\",status=\"cancelled\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "aftercare_smtp_outcomes_total{class=\"delivered\"}").map(|n| n >= 2.0),
        Some(true),
        "{text}"
    );
    assert!(metric(&text, "aftercare_send_duration_seconds_count").is_some_and(|n| n >= 2.0));
    // Each delivery's phases; no claim: an email approved by this worker
    // goes out under the lease it was approved with.
    for phase in ["render", "throttle", "mail", "record"] {
        let count = format!("aftercare_delivery_phase_seconds_count{{phase=\"{phase}\"}}");
        assert!(
            metric(&text, &count).is_some_and(|n| n >= 2.0),
            "{phase}: {text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "aftercare_delivery_phase_seconds_count{phase=\"claim\"}"
        ),
        None,
        "{text}"
    );
    // The 2024 orders' emails are all due: nothing left waiting.
    assert_eq!(
        metric(&text, "aftercare_emails_pending"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "aftercare_emails_overdue"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(metric(&text, "aftercare_consumer_stalled"), Some(0.0));

    // JSON logs: the invalid event's line has its coordinates; no line at
    // info level carries an address.
    let mut stderr = child.0.stderr.take().unwrap();
    drop(stdin);
    child.0.wait().unwrap();
    let mut output = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut output).unwrap();
    let mut invalid_seen = false;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(
            !line.contains("@example.com"),
            "an address in the logs: {line}"
        );
        if value["message"] == "Skipped invalid event." {
            assert!(
                value["coordinates"]
                    .as_str()
                    .unwrap()
                    .contains("\"line\":2"),
                "{line}"
            );
            invalid_seen = true;
        }
    }
    assert!(invalid_seen, "{output}");
}

#[test]
fn not_ready_while_the_smtp_server_cannot_be_reached() {
    let closed = common::free_port();
    let (_work, _child, mut stdin, port) = worker(&format!(
        "[mailer]\nkind = \"smtp\"\n[mailer.smtp]\nhost = \"127.0.0.1\"\nport = {closed}\ntls = \"none\"\n"
    ));
    writeln!(stdin, "{}", placed("e1", "c-1", "o-1")).unwrap();
    stdin.flush().unwrap();
    let mut response = String::new();
    let polled = common::wait_until(Duration::from_secs(20), || {
        response = http_request(port, "GET", "/readyz").1;
        response.contains("\"consumer\":{\"detail\":\"reading\",\"ok\":true}")
    });
    assert!(polled, "{response}");
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    let checks: serde_json::Value = serde_json::from_str(body(&response)).unwrap();
    assert_eq!(checks["ready"], false);
    assert_eq!(checks["checks"]["mailer"]["ok"], false, "{checks}");
    assert_eq!(checks["checks"]["store"]["ok"], true, "{checks}");
    // Alive all the same: not a reason to restart it.
    assert_eq!(http_request(port, "GET", "/healthz").0, 200);
}
