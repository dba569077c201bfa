//! A TCP proxy on a loopback port that can be cut and restored: to a
//! client it looks like its server going away (the port closed, every open
//! connection reset) and coming back, without touching a server other
//! tests share.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::free_port;

struct Shared {
    target: SocketAddr,
    up: AtomicBool,
    quit: AtomicBool,
    /// Both ends of every open connection, to cut them.
    open: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `target`, up.
    pub fn start(target: SocketAddr) -> Proxy {
        let port = free_port();
        let shared = Arc::new(Shared {
            target,
            up: AtomicBool::new(true),
            quit: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept(port, &shared))
        };
        super::wait_for_port(port, Duration::from_secs(10));
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Closes the port and resets every connection through it.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        // The acceptor drops its listener within a few milliseconds.
        let start = std::time::Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the port stays open"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Opens the port again.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
        super::wait_for_port(self.port, Duration::from_secs(10));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn accept(port: u16, shared: &Shared) {
    let mut listener: Option<TcpListener> = None;
    while !shared.quit.load(Ordering::SeqCst) {
        if !shared.up.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let Some(bound) = &listener else {
            // std sets SO_REUSEADDR: the port binds again at once.
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            continue;
        };
        match bound.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(shared.target) else {
                    continue;
                };
                let mut open = shared.open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies `from` to `to` until either closes.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
