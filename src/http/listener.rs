//! The listener: HTTP/1.1 connections served by hyper, bounded in time and
//! in number, so that slow or idle clients cannot hold the file
//! descriptors the store, the mailer and the broker need.
//!
//! One request per connection (no keep-alive): a connection is sending its
//! request head, being answered, or gone. hyper closes one whose head has
//! not arrived `header_timeout` after it connected; the whole connection,
//! body and answer included, ends at `request_timeout`.
//!
//! At most `max_connections` are open, and never more than a quarter of
//! the open-file limit. When one more arrives at the limit, the oldest
//! connection that has not sent a whole head yet is closed to make room: a
//! client that has said nothing useful is the one to lose, and hyper hands
//! a request to the router only once its head is complete, which tells
//! the two kinds apart. A connection is only judged once it has been read:
//! one accepted but not yet polled (its task still queued behind others on
//! a busy runtime) may well hold a whole head in its socket, and closing it
//! for being "half open" would close a `/healthz` probe under a crowd. So
//! the oldest half-open connection that has been read goes first, and one
//! never read only when no other is half open. When every open connection is being answered, the
//! oldest of all is closed (answers take milliseconds; one that has lasted
//! longest is most likely a dripping body). Either way the newcomer is
//! served as soon as the closed one's socket is released, before anything
//! else is accepted (so the descriptors in use never exceed the limit by
//! more than one): a probe of `/healthz` is answered while slow clients
//! hold the limit, instead of waiting in the kernel's queue behind them.
//!
//! At shutdown the listener closes, connections still sending their head
//! are closed, and the ones being answered finish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use super::Tally;
use crate::config::HttpConfig;

/// Bounds of the listener (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

/// Connections may take one descriptor in this many of the open-file
/// limit; the rest is for the store (a database and its journal per
/// handle), `.eml` files, the broker's sockets and the runtime.
const FD_SHARE: u64 = 4;

/// Largest request head (and read buffer) of a connection: a browser's
/// headers with the shop's cookies fit; 256 connections hold at most 16 MiB.
const MAX_HEAD: usize = 64 * 1024;

/// How long to wait before accepting again after `accept` failed (out of
/// descriptors, say): trying at once would only spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often the tally of refused tokens and closed connections is logged.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl Limits {
    /// `config`'s, with `max_connections` capped by the process's open-file
    /// limit.
    pub fn new(config: &HttpConfig) -> Limits {
        Limits {
            max_connections: capped(config.max_connections, open_file_limit()),
            header_timeout: config.header_timeout,
            request_timeout: config.request_timeout,
        }
    }
}

/// `wanted`, or a quarter of `nofile` (at least one) if that is less.
fn capped(wanted: usize, nofile: Option<u64>) -> usize {
    match nofile {
        Some(n) => {
            let share = usize::try_from((n / FD_SHARE).max(1)).unwrap_or(usize::MAX);
            wanted.min(share)
        }
        None => wanted,
    }
}

/// The soft `RLIMIT_NOFILE`: what `open` and `accept` fail beyond.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _hard)) => Some(soft),
        Err(error) => {
            tracing::warn!(%error, "Open-file limit not read; http.max_connections applies as set.");
            None
        }
    }
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Open {
    next_id: u64,
    by_age: BTreeMap<u64, Entry>,
}

struct Entry {
    /// Set once hyper hands the request to the router: its head is whole.
    answering: Arc<AtomicBool>,
    /// Set once the connection has been polled (its socket read) at least
    /// once.
    read: Arc<AtomicBool>,
    /// Dropping it closes the connection.
    _close: oneshot::Sender<()>,
}

/// Which connection was closed to make room for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evicted {
    /// One that had not sent a whole request head.
    HalfOpen,
    /// One being answered: every open connection was.
    Answering,
}

/// A connection let in.
struct Admitted {
    id: u64,
    answering: Arc<AtomicBool>,
    read: Arc<AtomicBool>,
    /// Completes (with an error) when the connection is to be closed.
    close: oneshot::Receiver<()>,
}

impl Open {
    /// Registers a new connection.
    fn admit(&mut self) -> Admitted {
        let id = self.next_id;
        self.next_id += 1;
        let answering = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicBool::new(false));
        let (close_tx, close) = oneshot::channel();
        self.by_age.insert(
            id,
            Entry {
                answering: Arc::clone(&answering),
                read: Arc::clone(&read),
                _close: close_tx,
            },
        );
        Admitted {
            id,
            answering,
            read,
            close,
        }
    }

    /// Tells the oldest half-open connection that has been read (else the
    /// oldest half-open one, else the oldest of all) to close.
    fn evict(&mut self) -> Option<Evicted> {
        let half_open = |e: &&Entry| !e.answering.load(Ordering::Relaxed);
        let half_open = self
            .by_age
            .iter()
            .find(|(_, e)| half_open(e) && e.read.load(Ordering::Relaxed))
            .or_else(|| self.by_age.iter().find(|(_, e)| half_open(e)))
            .map(|(id, _)| *id);
        let (id, kind) = match half_open {
            Some(id) => (id, Evicted::HalfOpen),
            None => (*self.by_age.keys().next()?, Evicted::Answering),
        };
        self.by_age.remove(&id);
        Some(kind)
    }

    /// Tells every connection that has not sent a whole request head to
    /// close.
    fn close_half_open(&mut self) {
        self.by_age
            .retain(|_, e| e.answering.load(Ordering::Relaxed));
    }
}

/// Takes a connection off the books when its task ends, however it ends.
struct Gone {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Gone {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.by_age.remove(&self.id);
    }
}

/// Serves `app` until `shutdown` is cancelled, then lets the connections
/// in hand finish (each is bounded by `request_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tally: Arc<Tally>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Mutex::new(Open::default()));
    // One permit per open connection, given back once its socket is
    // closed: an evicted connection's descriptor is free before the next
    // one is accepted.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + REPORT_EVERY, REPORT_EVERY);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(error) => {
                    tally.accept_failed(&error);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            _ = report.tick() => {
                tally.report();
                continue;
            }
            () = shutdown.cancelled() => break,
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let evicted = open.lock().unwrap_or_else(|p| p.into_inner()).evict();
                if let Some(kind) = evicted {
                    tally.evicted(kind == Evicted::HalfOpen);
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let admitted = open.lock().unwrap_or_else(|p| p.into_inner()).admit();
        let answering = admitted.answering;
        let router = TowerToHyperService::new(app.clone());
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            answering.store(true, Ordering::Relaxed);
            // Who is asking, for the per-address limits.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            router.call(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let gone = Gone {
            open: Arc::clone(&open),
            id: admitted.id,
        };
        let (tally, close, read) = (Arc::clone(&tally), admitted.close, admitted.read);
        tokio::spawn(async move {
            // Dropped last, after the connection (and its socket).
            let _slot = slot;
            let _gone = gone;
            let mut connection =
                std::pin::pin!(tokio::time::timeout(limits.request_timeout, connection));
            // Marked read after a poll, not before: a head already in the
            // socket reaches the router (marking it answering) in that poll.
            let served = std::future::poll_fn(|cx| {
                let polled = connection.as_mut().poll(cx);
                read.store(true, Ordering::Relaxed);
                polled
            });
            tokio::select! {
                served = served => match served {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) if error.is_timeout() => tally.timed_out(),
                    Ok(Err(error)) => tracing::debug!(%error, "HTTP connection ended with an error."),
                    Err(_) => tally.timed_out(),
                },
                // Evicted: dropping the connection closes it.
                _ = close => {}
            }
        });
    }
    drop(listener);
    // Connections still sending their request head are of no use now; the
    // ones being answered finish (within request_timeout).
    open.lock()
        .unwrap_or_else(|p| p.into_inner())
        .close_half_open();
    tally.report();
    graceful.shutdown().await;
    tally.report();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_by_a_quarter_of_the_open_file_limit() {
        assert_eq!(capped(256, Some(64)), 16);
        assert_eq!(capped(256, Some(1_048_576)), 256);
        assert_eq!(capped(256, Some(u64::MAX)), 256);
        assert_eq!(capped(256, Some(3)), 1);
        assert_eq!(capped(256, None), 256);
    }

    #[test]
    fn at_the_limit_the_oldest_half_open_connection_makes_room() {
        let mut open = Open::default();
        let a = open.admit();
        let b = open.admit();
        let c = open.admit();
        let ids = |open: &Open| open.by_age.keys().copied().collect::<Vec<_>>();
        // `a` sent its request; `b` is the oldest still sending its head.
        a.answering.store(true, Ordering::Relaxed);
        for conn in [&a, &b, &c] {
            conn.read.store(true, Ordering::Relaxed);
        }
        let mut b_close = b.close;
        assert_eq!(open.evict(), Some(Evicted::HalfOpen));
        assert!(
            matches!(
                b_close.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "b was told to close"
        );
        assert_eq!(ids(&open), [a.id, c.id]);
        // Every one answering: the oldest of all goes.
        c.answering.store(true, Ordering::Relaxed);
        assert_eq!(open.evict(), Some(Evicted::Answering));
        assert_eq!(ids(&open), [c.id]);
        // The one left open was not told to close.
        let mut c_close = c.close;
        assert!(matches!(
            c_close.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert_eq!(open.evict(), Some(Evicted::Answering));
        assert_eq!(open.evict(), None);
    }

    #[test]
    fn a_connection_not_read_yet_goes_after_every_half_open_one_that_was() {
        let mut open = Open::default();
        // `probe` was accepted first but its task has not run yet; `crowd`
        // came after and has been read: it goes first.
        let (probe, crowd, late) = (open.admit(), open.admit(), open.admit());
        crowd.read.store(true, Ordering::Relaxed);
        assert_eq!(open.evict(), Some(Evicted::HalfOpen));
        let ids = |open: &Open| open.by_age.keys().copied().collect::<Vec<_>>();
        assert_eq!(ids(&open), [probe.id, late.id]);
        // None read: the oldest half-open one goes after all.
        assert_eq!(open.evict(), Some(Evicted::HalfOpen));
        assert_eq!(ids(&open), [late.id]);
    }

    #[test]
    fn at_shutdown_half_open_connections_are_closed_and_answering_ones_kept() {
        let mut open = Open::default();
        let (a, b) = (open.admit(), open.admit());
        b.answering.store(true, Ordering::Relaxed);
        open.close_half_open();
        assert_eq!(open.by_age.keys().copied().collect::<Vec<_>>(), [b.id]);
        let mut a_close = a.close;
        assert!(matches!(
            a_close.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
