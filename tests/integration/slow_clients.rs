//! Slow, idle and half-sent HTTP clients against a running worker: with a
//! low open-file limit they neither starve `/healthz` nor the deliveries,
//! and a connection that takes too long is cut at its timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aftercare::unsubscribe::Signer;

use crate::common::{self, BIN, KillOnDrop, Work};

const SECRET: &str = "a test secret of some length";

fn placed(n: usize) -> String {
    format!(
        r#"{{"event_id":"e{n}","type":"order.placed","occurred_at":"2024-01-01T10:00:00Z","customer":{{"id":"c-{n}","email":"c{n}@example.com","marketing_consent":true}},"order":{{"id":"o-{n}","total":"5.00","currency":"EUR","items":[]}}}}"#
    )
}

/// A worker reading standard input, its HTTP server on `port` with the
/// `[http]` keys in `http`, its log (JSON) in `<work>/worker.log`, run
/// through util-linux's `prlimit` with `nofile` descriptors when given.
fn worker(port: u16, http: &str, nofile: Option<u32>) -> (Work, KillOnDrop) {
    let work = Work::new(&format!(
        "[source]\nbatch_wait = \"50ms\"\n[unsubscribe]\nsecret = \"{SECRET}\"\n\
         [log]\nformat = \"json\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{http}"
    ));
    let mut cmd = match nofile {
        Some(n) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={n}:{n}")).arg(BIN);
            cmd
        }
        None => Command::new(BIN),
    };
    let log = std::fs::File::create(work.path("worker.log")).unwrap();
    cmd.arg("--config")
        .arg(work.config())
        .arg("run")
        .current_dir(work.dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log);
    let child = KillOnDrop(cmd.spawn().expect("util-linux's prlimit"));
    common::wait_for_port(port, Duration::from_secs(20));
    (work, child)
}

/// `GET /healthz` within `within` (connect, send, whole answer), or why not.
fn healthz(port: u16, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let addr = ([127, 0, 0, 1], port).into();
    let mut stream = TcpStream::connect_timeout(&addr, within).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(
            within
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("{e} after {:?}", start.elapsed()))?;
    if !answer.starts_with("HTTP/1.1 200") || !answer.ends_with("ok\n") {
        return Err(format!("answered {answer:?}"));
    }
    Ok(start.elapsed())
}

/// Whether the server closed `stream` (or answered on it): a read that
/// does not block.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0; 512];
    let closed = match stream.read(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[derive(Clone, Copy)]
enum Kind {
    /// Connects and says nothing.
    Idle,
    /// Sends a request line and one header, never the blank line.
    HalfSent,
    /// Sends a header a byte at a time, never ending it.
    Dripping,
}

/// `count` hostile connections kept open: one closed by the server is
/// opened again at once, as an attacker would.
struct Crowd {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Crowd {
    fn start(port: u16, count: usize) -> Crowd {
        let stop = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let (stopped, reopens) = (Arc::clone(&stop), Arc::clone(&reopened));
        let thread = std::thread::spawn(move || {
            let kinds = [Kind::Idle, Kind::HalfSent, Kind::Dripping];
            let open = |kind: Kind| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                match kind {
                    Kind::Idle => {}
                    Kind::HalfSent => s
                        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                        .ok()?,
                    Kind::Dripping => s.write_all(b"GET /healthz HTTP/1.1\r\nX-Drip: ").ok()?,
                }
                Some(s)
            };
            let mut conns: Vec<(Kind, Option<TcpStream>)> = (0..count)
                .map(|i| {
                    let kind = kinds[i % kinds.len()];
                    (kind, open(kind))
                })
                .collect();
            while !stopped.load(Ordering::SeqCst) {
                for (kind, conn) in &mut conns {
                    let alive = match conn {
                        Some(s) => {
                            let dripped =
                                !matches!(kind, Kind::Dripping) || s.write_all(b"a").is_ok();
                            dripped && !closed(s)
                        }
                        None => false,
                    };
                    if !alive {
                        reopens.fetch_add(1, Ordering::SeqCst);
                        *conn = open(*kind);
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Crowd {
            stop,
            reopened,
            thread: Some(thread),
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn slow_clients_starve_neither_healthz_nor_deliveries_under_a_low_open_file_limit() {
    let _heavy = common::heavy();
    let port = common::free_port();
    // Long timeouts: only the connection limit stands between the crowd
    // and the worker's 64 descriptors.
    let (work, mut child) = worker(
        port,
        "header_timeout = \"60s\"\nrequest_timeout = \"120s\"\n\
         [policy.quiet_hours]\nenabled = false\n",
        Some(64),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    assert!(healthz(port, Duration::from_secs(2)).is_ok());

    let crowd = Crowd::start(port, 60);
    std::thread::sleep(Duration::from_secs(1));

    // Events fed meanwhile: their emails (the 2024 orders' are all due)
    // are written as .eml files.
    let customers = 10;
    for n in 0..customers {
        writeln!(stdin, "{}", placed(n)).unwrap();
    }
    stdin.flush().unwrap();

    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(6) {
        match healthz(port, Duration::from_secs(2)) {
            Ok(took) => slowest = slowest.max(took),
            Err(why) => panic!("/healthz under load: {why}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Each customer's confirmation, welcome and win-backs: all due.
    let delivered = common::wait_until(Duration::from_secs(30), || {
        let emails = work.emails();
        emails.len() >= customers * 2
            && emails.iter().all(|(_, status)| status == "sent")
            && work.outbox().len() == emails.len()
    });
    let emails = work.emails();
    assert!(delivered, "{emails:?}");
    // The crowd was held at the limit: its connections were closed to make
    // room and it opened new ones.
    let reopened = crowd.reopened.load(Ordering::SeqCst);
    assert!(reopened > 0, "no connection of the crowd was closed");
    assert!(healthz(port, Duration::from_secs(2)).is_ok());

    // Stopped while the crowd still holds its connections: the worker
    // exits at once, and reports what it closed.
    drop(stdin);
    let status = common::wait_exit(&mut child.0, Duration::from_secs(10)).expect("worker exits");
    assert!(status.success(), "{status:?}");
    drop(crowd);
    let log = std::fs::read_to_string(work.path("worker.log")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.contains("HTTP connection limit reached"),
        "evictions are reported: {log}"
    );
    let limit = log
        .lines()
        .find(|l| l.contains("HTTP server listening."))
        .unwrap_or_else(|| panic!("{log}"));
    // A quarter of 64 descriptors.
    assert!(limit.contains("\"max_connections\":16"), "{limit}");
    eprintln!("slowest /healthz under load: {slowest:?}; crowd reopened {reopened} connections");
}

#[test]
fn a_connection_sending_its_head_a_byte_a_second_is_cut_at_the_header_timeout() {
    let _heavy = common::heavy();
    let port = common::free_port();
    let (_work, _child) = worker(
        port,
        "header_timeout = \"2s\"\nrequest_timeout = \"4s\"\n",
        None,
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    for byte in head {
        if stream.write_all(&[*byte]).is_err() || closed(&mut stream) {
            cut = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let cut = cut.expect("the connection outlived its header timeout");
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(5000)).contains(&cut),
        "cut after {cut:?}"
    );
    // The server is fine.
    assert!(healthz(port, Duration::from_secs(2)).is_ok());
}

#[test]
fn a_dripping_body_is_cut_at_the_request_timeout() {
    let _heavy = common::heavy();
    let port = common::free_port();
    let (_work, _child) = worker(
        port,
        "header_timeout = \"2s\"\nrequest_timeout = \"4s\"\n",
        None,
    );
    let token = Signer::new(SECRET.as_bytes()).token("c-1");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    write!(
        stream,
        "POST /unsubscribe/{token} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\n"
    )
    .unwrap();
    let mut cut = None;
    for byte in b"List-Unsubscribe=One-Click" {
        std::thread::sleep(Duration::from_secs(1));
        if stream.write_all(&[*byte]).is_err() || closed(&mut stream) {
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("the connection outlived its request timeout");
    assert!(
        (Duration::from_millis(3500)..Duration::from_millis(7000)).contains(&cut),
        "cut after {cut:?}"
    );
}
