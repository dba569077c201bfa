//! Shared by the integration tests: a scratch work directory with its own
//! config, the binary, generated event logs, and a real SMTP sink.

pub mod checker;
pub mod postgres;
pub mod proxy;
pub mod tansu;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_aftercare");

/// One heavy scenario at a time: held by every test that starts a broker
/// or several workers, or kills one, for as long as it runs. Tests of every
/// area share one binary and run side by side; two such scenarios at once
/// on two cores starve a consumer group's heartbeats and push deliveries
/// past the deadlines the tests allow. A scenario that failed (and so
/// poisoned the lock) does not fail the next one.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory with `aftercare.toml` pointing the data directory
/// into it and the templates at the repository's.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    /// A work directory whose worker judges emails on the events' own
    /// clock (`journeys.clock = "events"`): the generated logs are from
    /// 2024, and what these tests check is what the events make, as
    /// `simulate` plans it, not how late it is.
    pub fn new(extra_config: &str) -> Work {
        Work::with_config(&format!("journeys.clock = \"events\"\n{extra_config}"))
    }

    /// A work directory on the shipped defaults: the machine's clock, the
    /// first start as go-live, each rule's expiry.
    pub fn on_wall_clock(extra_config: &str) -> Work {
        Work::with_config(extra_config)
    }

    fn with_config(extra_config: &str) -> Work {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "data_dir = {:?}\ntemplates_dir = {:?}\n{extra_config}",
            dir.path().join("data"),
            repo().join("templates"),
        );
        std::fs::write(dir.path().join("aftercare.toml"), config).unwrap();
        Work { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> PathBuf {
        self.path("aftercare.toml")
    }

    /// `aftercare --config <work>/aftercare.toml ARGS`, run in the work dir.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(self.config()).args(args);
        cmd.current_dir(self.dir.path());
        cmd.env("RUST_LOG", "warn");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn outbox(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(self.path("data/outbox")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files
    }

    /// `(key, status)` of every email in the SQLite store.
    pub fn emails(&self) -> Vec<(String, String)> {
        self.stored()
            .into_iter()
            .map(|e| (e.key, e.status))
            .collect()
    }

    /// Every email in the SQLite store, by key.
    pub fn stored(&self) -> Vec<Stored> {
        let conn = rusqlite::Connection::open(self.path("data/aftercare.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT key, customer_id, template, order_id, status, reason FROM emails ORDER BY key")
            .unwrap();
        stmt.query_map([], |r| {
            Ok(Stored {
                key: r.get(0)?,
                customer_id: r.get(1)?,
                template: r.get(2)?,
                order_id: r.get(3)?,
                status: r.get(4)?,
                reason: r.get(5)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

impl Work {
    /// `customer template order` of every approved email, in the order the
    /// worker(s) approved them.
    pub fn approvals(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.path("data/aftercare.db")).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT e.customer_id, e.template, coalesce(e.order_id, '')
                 FROM email_log l JOIN emails e ON e.id = l.email_id
                 WHERE l.status = 'sending' ORDER BY l.seq",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(format!(
                "{} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }
}

/// The emails `simulate` plans to send, as `customer template order`, in
/// the order they go out: by `deferred_to` when a policy held one back,
/// else by `due_at` (the plan itself lists them by due time).
pub fn planned(work: &Work, log: &Path) -> Vec<String> {
    let out = work.run(&["simulate", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut sent: Vec<(jiff::Timestamp, String)> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "sent")
        .map(|v| {
            let at = v["deferred_to"].as_str().or(v["due_at"].as_str()).unwrap();
            (
                at.parse().unwrap(),
                format!(
                    "{} {} {}",
                    v["customer_id"].as_str().unwrap(),
                    v["template"].as_str().unwrap(),
                    v["order_id"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect();
    // Stable: emails due at the same time keep the plan's order.
    sent.sort_by_key(|(at, _)| *at);
    sent.into_iter().map(|(_, email)| email).collect()
}

pub struct Stored {
    pub key: String,
    pub customer_id: String,
    pub template: String,
    pub order_id: Option<String>,
    pub status: String,
    pub reason: Option<String>,
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A log of `customers` customers with orders, shipments, deliveries, a
/// cancellation and a return, all in 2024 so that every email is due.
pub fn generated_events(customers: usize) -> String {
    let locales = ["en", "hy", "am", "hy-AM"];
    let mut lines = Vec::new();
    let mut n = 0;
    let mut id = || {
        n += 1;
        format!("gen-{n:07}")
    };
    for c in 0..customers {
        let day = 1 + (c % 28);
        let cust = format!(
            r#"{{"id":"c-{c}","email":"customer{c}@example.com","name":"Customer {c}","locale":"{}","marketing_consent":{}}}"#,
            locales[c % locales.len()],
            c % 5 != 0
        );
        let bare = format!(r#"{{"id":"c-{c}"}}"#);
        let order = |o: usize| {
            format!(
                r#"{{"id":"o-{c}-{o}","total":"19.90","currency":"EUR","items":[{{"sku":"TEA-01","name":"Green tea","quantity":2,"unit_price":"9.95"}}]}}"#
            )
        };
        lines.push(format!(
            r#"{{"event_id":"{}","type":"order.placed","occurred_at":"2024-01-{day:02}T10:00:00Z","customer":{cust},"order":{}}}"#,
            id(),
            order(1)
        ));
        lines.push(format!(
            r#"{{"event_id":"{}","type":"shipment.dispatched","occurred_at":"2024-01-{day:02}T16:00:00Z","customer":{bare},"order":{{"id":"o-{c}-1"}},"shipment":{{"id":"s-{c}-1","carrier":"DHL","tracking_number":"T{c}","tracking_url":"https://track.example.com/T{c}","estimated_delivery":"2024-02-{day:02}T12:00:00Z"}}}}"#,
            id()
        ));
        lines.push(format!(
            r#"{{"event_id":"{}","type":"shipment.delivered","occurred_at":"2024-02-{day:02}T12:00:00Z","customer":{bare},"order":{{"id":"o-{c}-1"}},"shipment":{{"id":"s-{c}-1"}}}}"#,
            id()
        ));
        if c % 3 == 0 {
            lines.push(format!(
                r#"{{"event_id":"{}","type":"return.requested","occurred_at":"2024-02-{day:02}T18:00:00Z","customer":{bare},"order":{{"id":"o-{c}-1"}},"return":{{"id":"r-{c}","reason":"too small","items":[{{"sku":"TEA-01","name":"Green tea","quantity":1}}]}}}}"#,
                id()
            ));
        }
        lines.push(format!(
            r#"{{"event_id":"{}","type":"order.placed","occurred_at":"2024-03-{day:02}T10:00:00Z","customer":{bare},"order":{}}}"#,
            id(),
            order(2)
        ));
        if c % 4 == 0 {
            lines.push(format!(
                r#"{{"event_id":"{}","type":"order.cancelled","occurred_at":"2024-03-{day:02}T11:00:00Z","customer":{bare},"order":{{"id":"o-{c}-2"}}}}"#,
                id()
            ));
        }
    }
    // Sorted by time, as a shop's log would be.
    lines.sort_by_key(|l| {
        let at = l.find("\"occurred_at\":\"").unwrap() + 15;
        l[at..at + 20].to_owned()
    });
    lines.join("\n") + "\n"
}

/// A log of `customers` customers whose events happen now: from `start`,
/// one customer after another over `span`, each with an order, its
/// dispatch and delivery, for some a return and a second order, cancelled
/// for some. Only the emails due at once (confirmations, shipping updates,
/// return instructions, cancellations) fall due within a test; the ones
/// with a delay stay pending. For a steady load of live events, produced
/// in time order.
pub fn live_events(customers: usize, start: jiff::Timestamp, span: Duration) -> String {
    let locales = ["en", "hy", "am", "hy-AM"];
    let step = span / customers.max(1) as u32;
    let mut lines = Vec::new();
    for c in 0..customers {
        let t0 = start + step * c as u32;
        // Each event a few milliseconds after the one before.
        let at = |ms: u64| (t0 + Duration::from_millis(ms)).to_string();
        let cust = format!(
            r#"{{"id":"live-{c}","email":"live{c}@example.com","name":"Live {c}","locale":"{}","marketing_consent":true}}"#,
            locales[c % locales.len()]
        );
        let bare = format!(r#"{{"id":"live-{c}"}}"#);
        let order = |o: usize| {
            format!(
                r#"{{"id":"lo-{c}-{o}","total":"19.90","currency":"EUR","items":[{{"sku":"TEA-01","name":"Green tea","quantity":2,"unit_price":"9.95"}}]}}"#
            )
        };
        lines.push(format!(
            r#"{{"event_id":"live-{c}-1","type":"order.placed","occurred_at":"{}","customer":{cust},"order":{}}}"#,
            at(0),
            order(1)
        ));
        lines.push(format!(
            r#"{{"event_id":"live-{c}-2","type":"shipment.dispatched","occurred_at":"{}","customer":{bare},"order":{{"id":"lo-{c}-1"}},"shipment":{{"id":"ls-{c}","carrier":"DHL","tracking_number":"L{c}","tracking_url":"https://track.example.com/L{c}"}}}}"#,
            at(5)
        ));
        lines.push(format!(
            r#"{{"event_id":"live-{c}-3","type":"shipment.delivered","occurred_at":"{}","customer":{bare},"order":{{"id":"lo-{c}-1"}},"shipment":{{"id":"ls-{c}"}}}}"#,
            at(10)
        ));
        if c % 3 == 0 {
            lines.push(format!(
                r#"{{"event_id":"live-{c}-4","type":"return.requested","occurred_at":"{}","customer":{bare},"order":{{"id":"lo-{c}-1"}},"return":{{"id":"lr-{c}","reason":"too small","items":[{{"sku":"TEA-01","name":"Green tea","quantity":1}}]}}}}"#,
                at(15)
            ));
        }
        if c % 2 == 0 {
            lines.push(format!(
                r#"{{"event_id":"live-{c}-5","type":"order.placed","occurred_at":"{}","customer":{bare},"order":{}}}"#,
                at(20),
                order(2)
            ));
            if c % 4 == 0 {
                lines.push(format!(
                    r#"{{"event_id":"live-{c}-6","type":"order.cancelled","occurred_at":"{}","customer":{bare},"order":{{"id":"lo-{c}-2"}}}}"#,
                    at(25)
                ));
            }
        }
    }
    lines.join("\n") + "\n"
}

/// The `occurred_at` of an event line.
pub fn occurred_at(event: &str) -> jiff::Timestamp {
    let v: serde_json::Value = serde_json::from_str(event).unwrap();
    v["occurred_at"].as_str().unwrap().parse().unwrap()
}

/// The time of the last event of `log`.
pub fn last_event(log: &str) -> jiff::Timestamp {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(occurred_at)
        .max()
        .unwrap()
}

/// `aftercare ARGS` in `work` with the wall clock moved by `offset`
/// (libfaketime's `-2d`, `+21h`; monotonic time left alone, so timeouts
/// still work).
pub fn run_shifted(work: &Work, offset: &str, args: &[&str]) -> Output {
    let faketime = ["/usr/bin/faketime", "/usr/local/bin/faketime"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("faketime not found: install Debian's faketime package (scripts/test.sh does)");
    Command::new(faketime)
        .args(["-f", offset, BIN, "--config"])
        .arg(work.config())
        .args(args)
        .current_dir(work.dir.path())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A free loopback port (the listener is closed before the server binds).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn smtp_sink_binary() -> PathBuf {
    ["/usr/sbin/smtp-sink", "/usr/bin/smtp-sink"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("smtp-sink not found: install Debian's postfix package (scripts/test.sh does)")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Postfix's `smtp-sink` on a loopback port, dumping every message it
/// accepts into `dir`. Killed on drop.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    pub fn start(extra_args: &[&str]) -> SmtpSink {
        Self::start_on(free_port(), extra_args)
    }

    pub fn start_on(port: u16, extra_args: &[&str]) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        // smtp-sink drops to `nobody` when started as root.
        Command::new("chmod")
            .arg("777")
            .arg(dir.path())
            .status()
            .unwrap();
        let mut cmd = Command::new(smtp_sink_binary());
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dir.path().display()))
            .args(extra_args)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("start smtp-sink");
        wait_for_port(port, Duration::from_secs(10));
        SmtpSink { port, dir, child }
    }

    /// Stops the server (its port closes) and keeps what it received.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }
}

impl SmtpSink {
    /// Every message received so far, with its Message-ID and when the
    /// sink wrote it.
    pub fn deliveries(&self) -> Vec<checker::Delivery> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let raw = std::fs::read(&p).unwrap();
                checker::Delivery {
                    message_id: mail_parser::MessageParser::default()
                        .parse(&raw)
                        .and_then(|m| m.message_id().map(str::to_owned)),
                    at: std::fs::metadata(&p).unwrap().modified().unwrap(),
                    acknowledged: true,
                }
            })
            .collect()
    }

    /// How many different Message-IDs came so far.
    pub fn distinct_message_ids(&self) -> usize {
        let ids: std::collections::BTreeSet<String> = self
            .deliveries()
            .into_iter()
            .filter_map(|d| d.message_id)
            .collect();
        ids.len()
    }

    /// The Message-ID of every message received, asserting none came twice.
    pub fn message_ids_once(&self) -> Vec<String> {
        let ids: Vec<String> = self
            .messages()
            .iter()
            .map(|raw| {
                let m = mail_parser::MessageParser::default().parse(raw).unwrap();
                m.message_id().unwrap().to_owned()
            })
            .collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a message was delivered twice");
        ids
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that accepts connections and never says a word: a hung SMTP
/// server. Its port closes on drop.
pub struct Silent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    pub fn start_on(port: u16) -> Silent {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Silent {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

pub fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
}

/// Copies a folder tree (the templates, for tests that edit them).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `(status, whole response)` of one HTTP/1.1 request to a local server. A
/// POST carries the one-click unsubscribe form body (RFC 8058). A
/// connection the server reset mid-answer is status 0 with the error as
/// the response: polling loops ask again, other checks fail on the status.
pub fn http_request(port: u16, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = if method == "POST" {
        "List-Unsubscribe=One-Click"
    } else {
        ""
    };
    let mut response = String::new();
    let exchanged = write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .and_then(|()| stream.read_to_string(&mut response));
    match exchanged {
        Ok(_) => (status_of(&response), response),
        Err(e) => (0, format!("no answer: {e} (after {response:?})")),
    }
}

/// The status code of an HTTP response (0 if there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Starts a worker process, killed if the test fails while it runs.
/// TEST_LOG=<filter> keeps its log in /tmp for a failure's post-mortem.
pub fn spawn(cmd: &mut Command) -> KillOnDrop {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let log = tempfile::Builder::new()
            .prefix("aftercare-worker-")
            .suffix(".log")
            .tempfile()
            .unwrap()
            .keep()
            .unwrap()
            .0;
        cmd.env("RUST_LOG", filter).stderr(log);
    }
    KillOnDrop(cmd.spawn().unwrap())
}

pub fn sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// Waits for `child` to exit; `None` if it is still running after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
