//! Webhook intake end to end: a worker with `source.kind = "webhook"`
//! takes the Shopify and WooCommerce fixtures posted by a real HTTP client
//! (ureq), signed with a test secret, and applies them through the
//! presets; a bad signature stores nothing; a redelivery has effect once;
//! a burst beyond the intake's depth gets 503 and is taken on retry; a
//! worker killed right after its 200s loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{self, KillOnDrop, Work, repo};

const SECRET: &str = "a webhook test secret";

/// A fixture's record: its headers and body.
struct Delivery {
    headers: Vec<(String, String)>,
    body: String,
}

fn fixtures(preset: &str) -> Vec<Delivery> {
    let text =
        std::fs::read_to_string(repo().join(format!("tests/presets/{preset}/records.jsonl")))
            .unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let flat: Vec<String> = v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap_or_default().to_owned())
                .collect();
            Delivery {
                headers: flat
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
                body: v["payload"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// The event ids the preset's fixtures map to (its expected events).
fn expected_event_ids(preset: &str) -> BTreeSet<String> {
    std::fs::read_to_string(repo().join(format!("tests/presets/{preset}/expected.jsonl")))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A client that reads any status as an answer, bounded in time.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

struct Worker {
    work: Work,
    port: u16,
    process: Option<KillOnDrop>,
    signature_header: &'static str,
    preset: &'static str,
}

impl Worker {
    /// A worker taking `preset`'s webhooks at `/webhooks/<preset>`.
    fn new(preset: &'static str, extra: &str) -> Worker {
        let port = common::free_port();
        let vars = match preset {
            "woocommerce" => {
                "[mapping_vars]\ntimezone = \"America/Sao_Paulo\"\nconsent_meta_key = \"newsletter_opt_in\"\n"
            }
            _ => "[mapping_vars]\ncurrency = \"USD\"\n",
        };
        let work = Work::new(&format!(
            "[source]\nkind = \"webhook\"\nformat = \"{preset}\"\nbatch_wait = \"50ms\"\n\
             [source.webhook]\n{extra}\n\
             [source.webhook.endpoints.{preset}]\nsignature = \"{preset}\"\nsecrets_env = [\"TEST_WEBHOOK_SECRET\"]\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n{vars}"
        ));
        let signature_header = match preset {
            "woocommerce" => "X-WC-Webhook-Signature",
            _ => "X-Shopify-Hmac-Sha256",
        };
        let mut worker = Worker {
            work,
            port,
            process: None,
            signature_header,
            preset,
        };
        worker.start();
        worker
    }

    fn start(&mut self) {
        let child = self
            .work
            .command(&["run"])
            .env("TEST_WEBHOOK_SECRET", SECRET)
            .spawn()
            .unwrap();
        self.process = Some(KillOnDrop(child));
        common::wait_for_port(self.port, Duration::from_secs(20));
    }

    /// SIGKILL, no goodbye.
    fn kill(&mut self) {
        drop(self.process.take());
    }

    /// Posts `delivery` signed with `secret`: the status and Retry-After.
    fn post(&self, delivery: &Delivery, secret: &str) -> (u16, Option<String>) {
        self.try_post(delivery, secret).unwrap()
    }

    fn try_post(
        &self,
        delivery: &Delivery,
        secret: &str,
    ) -> Result<(u16, Option<String>), ureq::Error> {
        let mut request = agent().post(format!(
            "http://127.0.0.1:{}/webhooks/{}",
            self.port, self.preset
        ));
        for (name, value) in &delivery.headers {
            if !name.eq_ignore_ascii_case(self.signature_header) {
                request = request.header(name, value);
            }
        }
        let response = request
            .header(self.signature_header, &sign(secret, &delivery.body))
            .header("Content-Type", "application/json")
            .send(delivery.body.as_bytes())?;
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok((response.status().as_u16(), retry))
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.work.path("data/aftercare.db")).unwrap()
    }

    fn intake_rows(&self) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM intake", [], |r| r.get(0))
            .unwrap()
    }

    fn applied_events(&self) -> BTreeSet<String> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT event_id FROM processed_events").unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Holds the intake's lease for another worker, far into the future:
    /// this one takes webhooks but applies none.
    fn hold_intake_elsewhere(&self, held: bool) {
        let db = self.db();
        if held {
            db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, 'elsewhere', ?2)
                 ON CONFLICT (name) DO UPDATE SET holder = 'elsewhere', expires_at = ?2",
                rusqlite::params![INTAKE_LEASE_NAME, 32_503_680_000_000_i64],
            )
            .unwrap();
        } else {
            db.execute("DELETE FROM leases WHERE name = ?1", [INTAKE_LEASE_NAME])
                .unwrap();
        }
    }
}

/// The intake lease's row in the `leases` table.
const INTAKE_LEASE_NAME: &str = aftercare::store::INTAKE_LEASE;

fn applied_all(worker: &Worker, preset: &str) -> bool {
    common::wait_until(Duration::from_secs(30), || {
        worker
            .applied_events()
            .is_superset(&expected_event_ids(preset))
    })
}

#[test]
fn shopify_webhooks_signed_with_the_secret_are_applied_and_send_their_emails() {
    let worker = Worker::new("shopify", "");
    let deliveries = fixtures("shopify");
    // A forged delivery first: 401, nothing stored.
    let (status, _) = worker.post(&deliveries[0], "not the secret at all");
    assert_eq!(status, 401);
    assert_eq!(worker.intake_rows(), 0, "nothing stored of a bad signature");
    for d in &deliveries {
        let (status, _) = worker.post(d, SECRET);
        assert_eq!(status, 200, "{}", d.body);
    }
    assert!(
        applied_all(&worker, "shopify"),
        "applied {:?}, expected {:?}",
        worker.applied_events(),
        expected_event_ids("shopify")
    );
    // The fixtures deliver one webhook twice (same X-Shopify-Webhook-Id):
    // stored once. A redelivery now has no effect either.
    let ids: BTreeSet<&str> = deliveries
        .iter()
        .filter_map(|d| {
            d.headers
                .iter()
                .find(|(n, _)| n == "X-Shopify-Webhook-Id")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(worker.intake_rows(), ids.len() as i64);
    let (status, _) = worker.post(&deliveries[0], SECRET);
    assert_eq!(status, 200);
    assert_eq!(worker.intake_rows(), ids.len() as i64);
    // The order's confirmation went out, once.
    assert!(common::wait_until(Duration::from_secs(20), || {
        worker
            .work
            .outbox()
            .iter()
            .any(|p| p.to_string_lossy().contains("order_confirmation"))
    }));
    let confirmations = worker
        .work
        .outbox()
        .iter()
        .filter(|p| p.to_string_lossy().contains("820982911946154508"))
        .filter(|p| p.to_string_lossy().contains("order_confirmation"))
        .count();
    assert_eq!(confirmations, 1);
}

#[test]
fn woocommerce_webhooks_and_its_unsigned_ping_are_taken() {
    let mut worker = Worker::new("woocommerce", "");
    let agent = agent();
    let ping = agent
        .post(format!(
            "http://127.0.0.1:{}/webhooks/woocommerce",
            worker.port
        ))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send("webhook_id=3")
        .unwrap();
    assert_eq!(ping.status().as_u16(), 200, "WooCommerce's ping");
    assert_eq!(worker.intake_rows(), 0, "a ping stores nothing");
    for d in &fixtures("woocommerce") {
        let (status, _) = worker.post(d, SECRET);
        assert_eq!(status, 200, "{}", d.body);
    }
    assert!(
        applied_all(&worker, "woocommerce"),
        "applied {:?}, expected {:?}",
        worker.applied_events(),
        expected_event_ids("woocommerce")
    );
    // Stopped with SIGTERM, the reader lets go of the intake's lease: a
    // worker sharing the store reads on at once, not after 30 s.
    let db = worker.db();
    let lease_ends = || -> i64 {
        db.query_row(
            "SELECT expires_at FROM leases WHERE name = ?1",
            [INTAKE_LEASE_NAME],
            |r| r.get(0),
        )
        .unwrap()
    };
    let now_ms = || jiff::Timestamp::now().as_millisecond();
    assert!(lease_ends() > now_ms() + 20_000, "held while running");
    let mut process = worker.process.take().unwrap();
    common::sigterm(&process.0);
    let status = common::wait_exit(&mut process.0, Duration::from_secs(20)).expect("stopped");
    assert!(status.success(), "{status:?}");
    assert!(lease_ends() <= now_ms(), "released at the stop");
}

#[test]
fn a_burst_beyond_the_intake_gets_503_and_is_taken_on_retry_and_a_kill_loses_nothing() {
    let _heavy = common::heavy();
    let mut worker = Worker::new("shopify", "max_depth = 3\nretry_after = \"7s\"\n");
    // Another worker holds the intake: deliveries are stored, not applied.
    worker.hold_intake_elsewhere(true);
    let deliveries = fixtures("shopify");
    let distinct: Vec<&Delivery> = {
        let mut seen = BTreeSet::new();
        deliveries
            .iter()
            .filter(|d| {
                let id = d
                    .headers
                    .iter()
                    .find(|(n, _)| n == "X-Shopify-Webhook-Id")
                    .map(|(_, v)| v.clone());
                seen.insert(id)
            })
            .collect()
    };
    for d in &distinct[..3] {
        assert_eq!(worker.post(d, SECRET).0, 200);
    }
    let (status, retry) = worker.post(distinct[3], SECRET);
    assert_eq!(status, 503, "over the intake's depth");
    assert_eq!(retry.as_deref(), Some("7"));
    assert_eq!(worker.intake_rows(), 3);
    assert!(worker.applied_events().is_empty());

    // Killed right after its 200s: the three are in the store.
    worker.kill();
    worker.hold_intake_elsewhere(false);
    worker.start();
    // The retry of the refused one is taken once the intake drains.
    assert!(common::wait_until(Duration::from_secs(30), || {
        worker.post(distinct[3], SECRET).0 == 200
    }));
    // As a sender does: a 503 is retried later.
    for d in &distinct[4..] {
        assert!(common::wait_until(Duration::from_secs(30), || {
            worker.post(d, SECRET).0 == 200
        }));
    }
    assert!(
        applied_all(&worker, "shopify"),
        "applied {:?}",
        worker.applied_events()
    );
}

#[test]
fn an_unknown_endpoint_is_404_and_a_body_over_the_limit_is_413() {
    let worker = Worker::new("shopify", "");
    let agent = agent();
    let unknown = agent
        .post(format!("http://127.0.0.1:{}/webhooks/other", worker.port))
        .send("{}")
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    // Over source.max_event_bytes (1 MiB), signed or not.
    let big = Delivery {
        headers: vec![],
        body: format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20)),
    };
    // Refused from its Content-Length: 413, or the connection closed
    // while the client was still sending what the server will not read.
    match worker.try_post(&big, SECRET) {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(ureq::Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(worker.intake_rows(), 0);
    // A body larger than the other routes' 4 KiB is taken here.
    // (An order with a long note: white space after its JSON.)
    let mut order = fixtures("shopify").remove(0);
    order.body.push_str(&" ".repeat(8192));
    assert_eq!(worker.post(&order, SECRET).0, 200);
    assert_eq!(worker.intake_rows(), 1);
}
