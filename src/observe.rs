//! What the platform team watches: Prometheus metrics and the readiness
//! checks behind `/readyz`.
//!
//! One [`Observer`] per process, shared by the ingest loop, the delivery
//! workers, the template reloader and the HTTP server. Counters are bumped
//! where things happen; gauges about the backlog (pending, overdue) are
//! read from the store when `/metrics` is scraped, so they are true across
//! every worker sharing the store.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// How the source is doing, as the ingest loop last saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceHealth {
    /// Partitions assigned to this worker; `None` for a source without
    /// assignment (a file).
    pub assigned: Option<usize>,
    /// `(topic, partition, messages behind)` of every assigned partition.
    pub lag: Vec<(String, i32, i64)>,
    /// A partition with unread messages has sent nothing for too long, or
    /// the group has given the consumer nothing for too long.
    pub stalled: bool,
    /// Waiting for the group to assign partitions (or none): since the
    /// consumer was made, or since a rebalance took all it had.
    pub joining: bool,
}

/// Where emails go, to tell whether it can be reached.
#[derive(Debug, Clone)]
pub enum MailerProbe {
    /// An SMTP server: reachable if a TCP connection opens.
    Smtp { host: String, port: u16 },
    /// A folder of `.eml` files: reachable if it exists.
    Folder(PathBuf),
}

/// One check of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// Metrics and health of this process.
pub struct Observer {
    registry: Registry,
    events: Family<Labels, Counter>,
    invalid: Family<Labels, Counter>,
    parked: Family<Labels, Counter>,
    parked_now: Gauge,
    dropped: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    emails: Family<Labels, Counter>,
    smtp: Family<Labels, Counter>,
    send_seconds: Histogram,
    delivery_phases: Family<Labels, Histogram, fn() -> Histogram>,
    send_lag: Histogram,
    reloads: Family<Labels, Counter>,
    retried_steps: Family<Labels, Counter>,
    pending: Gauge,
    overdue: Gauge,
    lag: Family<Labels, Gauge>,
    stalled: Gauge,
    webhooks: Family<Labels, Counter>,
    intake: Gauge,
    source: Mutex<(SourceHealth, Option<Instant>)>,
    mailer: MailerProbe,
    /// The last mailer probe, kept a few seconds: probes are not free.
    mailer_checked: Mutex<Option<(Instant, Check)>>,
    /// How long the ingest loop may go without polling before it counts as
    /// stuck.
    poll_timeout: Duration,
    /// The source's live broker flag, when it has a broker.
    broker_up: Mutex<Option<Arc<AtomicBool>>>,
}

/// How long a mailer probe's answer is reused.
const PROBE_TTL: Duration = Duration::from_secs(5);

impl Observer {
    pub fn new(mailer: MailerProbe, poll_timeout: Duration) -> Observer {
        let mut registry = Registry::with_prefix("aftercare");
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "events",
            "Events applied, by source (topic or file) and type",
            events.clone(),
        );
        let invalid = Family::<Labels, Counter>::default();
        registry.register(
            "invalid_events",
            "Invalid events sent to the dead-letter topic or file, by source",
            invalid.clone(),
        );
        let parked = Family::<Labels, Counter>::default();
        registry.register(
            "parked_events",
            "Events naming no customer and an order not placed yet, by outcome: parked, applied (the order came), expired (dead-lettered)",
            parked.clone(),
        );
        let parked_now = Gauge::default();
        registry.register(
            "events_parked",
            "Events waiting for their order now",
            parked_now.clone(),
        );
        let dropped = Family::<Labels, Counter>::default();
        registry.register(
            "fields_dropped",
            "Malformed optional fields left out of events that were applied, by field",
            dropped.clone(),
        );
        let skipped = Family::<Labels, Counter>::default();
        registry.register(
            "events_skipped",
            "Messages a mapping made no event of, on purpose, by mapping",
            skipped.clone(),
        );
        let emails = Family::<Labels, Counter>::default();
        registry.register(
            "emails",
            "Email decisions and outcomes, by template and status (sent, failed, cancelled, suppressed, deferred, retried, expired); emails due before go-live are suppressed with reason=\"before go-live\"",
            emails.clone(),
        );
        let smtp = Family::<Labels, Counter>::default();
        registry.register(
            "smtp_outcomes",
            "Delivery attempts by outcome class (delivered, transient, ambiguous, permanent, deferred)",
            smtp.clone(),
        );
        let send_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "send_duration_seconds",
            "Time to render, build and hand one email to the mailer",
            send_seconds.clone(),
        );
        // From 100 µs to about 13 s, each bucket twice the last.
        let delivery_phases =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            });
        registry.register(
            "delivery_phase_seconds",
            "Time deliveries spent in each phase: claim (renewing the claim in the store), render (templates and MIME), throttle (waiting for the recipient domain's turn), mail (the SMTP transaction or the .eml file), record (storing the outcome)",
            delivery_phases.clone(),
        );
        // From a second to about 48 days, each bucket four times the last.
        let send_lag = Histogram::new(exponential_buckets(1.0, 4.0, 13));
        registry.register(
            "send_lag_seconds",
            "How long after its due time each email went out (catching up after an outage or a backlog shows here)",
            send_lag.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "template_reloads",
            "Template reloads, by result (ok, failed)",
            reloads.clone(),
        );
        let retried_steps = Family::<Labels, Counter>::default();
        registry.register(
            "step_failures",
            "Steps that failed for a passing reason (the store unreachable, dead letters not writable) and are tried again, by step",
            retried_steps.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "emails_pending",
            "Emails waiting for their time",
            pending.clone(),
        );
        let overdue = Gauge::default();
        registry.register(
            "emails_overdue",
            "Pending emails more than 5 minutes past their fire time",
            overdue.clone(),
        );
        let lag = Family::<Labels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages behind the end of each assigned partition",
            lag.clone(),
        );
        let stalled = Gauge::default();
        registry.register(
            "consumer_stalled",
            "1 while a partition with unread messages sends nothing",
            stalled.clone(),
        );
        let webhooks = Family::<Labels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests by endpoint and outcome (accepted, duplicate, ping, bad_signature, rate_limited, full, store_failed, unknown_endpoint)",
            webhooks.clone(),
        );
        let intake = Gauge::default();
        registry.register(
            "webhook_intake",
            "Webhook deliveries stored and not applied yet",
            intake.clone(),
        );
        Observer {
            registry,
            events,
            invalid,
            parked,
            parked_now,
            dropped,
            skipped,
            emails,
            smtp,
            send_seconds,
            delivery_phases,
            send_lag,
            reloads,
            retried_steps,
            pending,
            overdue,
            lag,
            stalled,
            webhooks,
            intake,
            source: Mutex::new((SourceHealth::default(), None)),
            mailer,
            mailer_checked: Mutex::new(None),
            poll_timeout,
            broker_up: Mutex::new(None),
        }
    }

    /// Readiness reads this flag live (see [`crate::source::Source::broker_up`]).
    pub fn watch_broker(&self, flag: Arc<AtomicBool>) {
        *self.broker_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(flag);
    }

    pub fn event(&self, source: &str, kind: &str) {
        self.events
            .get_or_create(&labels(&[("source", source), ("type", kind)]))
            .inc();
    }

    /// An event parked for its order, or its outcome (`parked`,
    /// `applied`, `expired`).
    pub fn parked_event(&self, outcome: &str) {
        self.parked
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    /// How many events wait for their order, as the store has it now.
    pub fn parked_backlog(&self, parked: u64) {
        self.parked_now.set(parked as i64);
    }

    pub fn invalid_event(&self, source: &str) {
        self.invalid
            .get_or_create(&labels(&[("source", source)]))
            .inc();
    }

    /// A malformed optional `field` was left out of an applied event.
    pub fn field_dropped(&self, field: &str) {
        self.dropped
            .get_or_create(&labels(&[("field", field)]))
            .inc();
    }

    /// Mapping `mapping` made no event of a message, on purpose.
    pub fn event_skipped(&self, mapping: &str) {
        self.skipped
            .get_or_create(&labels(&[("mapping", mapping)]))
            .inc();
    }

    /// An email reached `status` (sent, failed, cancelled, suppressed,
    /// deferred, retried, expired).
    pub fn email(&self, template: &str, status: &str) {
        self.emails
            .get_or_create(&labels(&[("template", template), ("status", status)]))
            .inc();
    }

    /// An email not sent for a `reason` worth a series of its own
    /// (`before go-live`): counted as `suppressed`, with the reason.
    pub fn email_not_sent(&self, template: &str, reason: &str) {
        self.emails
            .get_or_create(&labels(&[
                ("template", template),
                ("status", "suppressed"),
                ("reason", reason),
            ]))
            .inc();
    }

    /// One delivery attempt: its outcome class and how long it took.
    pub fn delivery(&self, class: &str, took: Duration) {
        self.smtp.get_or_create(&labels(&[("class", class)])).inc();
        self.send_seconds.observe(took.as_secs_f64());
    }

    /// One delivery spent `spent` in `phase` (see `delivery_phase_seconds`).
    pub fn delivery_phase(&self, phase: &str, spent: Duration) {
        self.delivery_phases
            .get_or_create(&labels(&[("phase", phase)]))
            .observe(spent.as_secs_f64());
    }

    /// An email went out this long after its due time.
    pub fn sent_late(&self, late: jiff::SignedDuration) {
        self.send_lag.observe(late.as_secs_f64().max(0.0));
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// The ingest loop polled its source and saw this.
    pub fn source_polled(&self, health: SourceHealth) {
        self.lag.clear();
        for (topic, partition, behind) in &health.lag {
            self.lag
                .get_or_create(&labels(&[
                    ("topic", topic),
                    ("partition", &partition.to_string()),
                ]))
                .set(*behind);
        }
        self.stalled.set(i64::from(health.stalled));
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        *source = (health, Some(Instant::now()));
    }

    /// A step failed for a passing reason and is tried again.
    pub fn step_failed(&self, step: &str) {
        self.retried_steps
            .get_or_create(&labels(&[("step", step)]))
            .inc();
    }

    /// One webhook request and what became of it.
    pub fn webhook(&self, endpoint: &str, outcome: &str) {
        self.webhooks
            .get_or_create(&labels(&[("endpoint", endpoint), ("outcome", outcome)]))
            .inc();
    }

    /// Webhook deliveries waiting, as the store has it now.
    pub fn intake_backlog(&self, waiting: u64) {
        self.intake.set(waiting as i64);
    }

    /// The backlog as the store has it now.
    pub fn backlog(&self, pending: u64, overdue: u64) {
        self.pending.set(pending as i64);
        self.overdue.set(overdue as i64);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Whether the consumer has partitions and makes progress.
    pub fn consumer_check(&self) -> Check {
        let (health, polled) = self
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let timeout = self.poll_timeout;
        let live = self
            .broker_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|flag| flag.load(Ordering::SeqCst));
        if polled.is_some() && live == Some(false) {
            return Check {
                ok: false,
                detail: "no broker reachable".into(),
            };
        }
        let fail = |detail: String| Check { ok: false, detail };
        match polled {
            None => fail("the source has not been polled yet".into()),
            Some(at) if at.elapsed() > timeout => fail(format!(
                "no poll for {}s (limit {}s)",
                at.elapsed().as_secs(),
                timeout.as_secs()
            )),
            Some(_) if health.stalled => {
                fail(format!("stalled with unread messages: {:?}", health.lag))
            }
            Some(_) if health.joining => {
                fail("waiting for the consumer group to assign partitions".into())
            }
            // A member without partitions (more workers than partitions, or
            // mid-rebalance) is healthy: failing it would stall a rolling
            // update.
            Some(_) => Check {
                ok: true,
                detail: match health.assigned {
                    Some(0) => "in the group, no partition assigned now".into(),
                    Some(n) => format!("{n} partitions assigned"),
                    None => "reading".into(),
                },
            },
        }
    }

    /// Whether the mailer can be reached (probed at most every few seconds).
    pub fn mailer_check(&self) -> Check {
        let mut cached = self
            .mailer_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((at, check)) = cached.as_ref()
            && at.elapsed() < PROBE_TTL
        {
            return check.clone();
        }
        let check = probe(&self.mailer);
        *cached = Some((Instant::now(), check.clone()));
        check
    }
}

/// `text` with every email address replaced by `<address>`: SMTP replies
/// often quote the recipient, and addresses stay out of logs above debug.
pub fn redact(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            if trimmed.contains('@') {
                let tail = &word[trimmed.len()..];
                let open = if trimmed.starts_with('<') { "<" } else { "" };
                let close = if trimmed.ends_with(">:") {
                    ">:"
                } else if trimmed.ends_with('>') {
                    ">"
                } else {
                    ""
                };
                format!("{open}address{close}{tail}")
            } else {
                word.to_owned()
            }
        })
        .collect()
}

fn probe(mailer: &MailerProbe) -> Check {
    match mailer {
        MailerProbe::Smtp { host, port } => {
            let addrs = match (host.as_str(), *port).to_socket_addrs() {
                Ok(addrs) => addrs.collect::<Vec<_>>(),
                Err(e) => {
                    return Check {
                        ok: false,
                        detail: format!("resolving {host}: {e}"),
                    };
                }
            };
            let mut last = format!("{host}:{port}: no address");
            for addr in addrs {
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => {
                        return Check {
                            ok: true,
                            detail: format!("{host}:{port} accepts connections"),
                        };
                    }
                    Err(e) => last = format!("{host}:{port}: {e}"),
                }
            }
            Check {
                ok: false,
                detail: last,
            }
        }
        MailerProbe::Folder(dir) => Check {
            ok: dir.is_dir(),
            detail: format!("{}", dir.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Observer {
        Observer::new(
            MailerProbe::Folder(std::env::temp_dir()),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn metrics_render_in_prometheus_text_with_their_labels() {
        let o = observer();
        o.event("orders", "order.placed");
        o.event("orders", "order.placed");
        o.invalid_event("returns");
        o.field_dropped("shipment.tracking_url");
        o.event_skipped("orders/updated");
        o.email("welcome", "sent");
        o.delivery("delivered", Duration::from_millis(12));
        o.delivery_phase("record", Duration::from_micros(150));
        o.reload(false);
        o.backlog(7, 2);
        o.parked_event("parked");
        o.parked_event("expired");
        o.parked_backlog(3);
        o.source_polled(SourceHealth {
            assigned: Some(2),
            lag: vec![("orders".into(), 0, 5), ("orders".into(), 1, 0)],
            ..SourceHealth::default()
        });
        let text = o.render();
        for line in [
            "aftercare_events_total{source=\"orders\",type=\"order.placed\"} 2",
            "aftercare_invalid_events_total{source=\"returns\"} 1",
            "aftercare_fields_dropped_total{field=\"shipment.tracking_url\"} 1",
            "aftercare_events_skipped_total{mapping=\"orders/updated\"} 1",
            "aftercare_emails_total{template=\"welcome\",status=\"sent\"} 1",
            "aftercare_smtp_outcomes_total{class=\"delivered\"} 1",
            "aftercare_send_duration_seconds_count 1",
            "aftercare_delivery_phase_seconds_count{phase=\"record\"} 1",
            "aftercare_delivery_phase_seconds_bucket{le=\"0.0002\",phase=\"record\"} 1",
            "aftercare_delivery_phase_seconds_bucket{le=\"0.0001\",phase=\"record\"} 0",
            "aftercare_template_reloads_total{result=\"failed\"} 1",
            "aftercare_emails_pending 7",
            "aftercare_emails_overdue 2",
            "aftercare_parked_events_total{outcome=\"parked\"} 1",
            "aftercare_parked_events_total{outcome=\"expired\"} 1",
            "aftercare_events_parked 3",
            "aftercare_consumer_lag{topic=\"orders\",partition=\"0\"} 5",
            "aftercare_consumer_stalled 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_consumer_is_ready_when_assigned_and_polling() {
        let o = observer();
        assert!(!o.consumer_check().ok, "never polled");
        o.source_polled(SourceHealth {
            assigned: Some(0),
            ..SourceHealth::default()
        });
        let idle = o.consumer_check();
        assert!(
            idle.ok && idle.detail.contains("no partition"),
            "an idle member is ready"
        );
        o.source_polled(SourceHealth {
            assigned: Some(3),
            lag: vec![("orders".into(), 0, 9)],
            stalled: true,
            joining: false,
        });
        let check = o.consumer_check();
        assert!(!check.ok && check.detail.contains("stalled"), "{check:?}");
        o.source_polled(SourceHealth {
            assigned: Some(0),
            joining: true,
            ..SourceHealth::default()
        });
        let check = o.consumer_check();
        assert!(!check.ok && check.detail.contains("waiting"), "{check:?}");
        o.source_polled(SourceHealth {
            assigned: Some(3),
            ..SourceHealth::default()
        });
        assert!(o.consumer_check().ok);
        // A file source has no assignment.
        o.source_polled(SourceHealth::default());
        assert!(o.consumer_check().ok);
    }

    #[test]
    fn without_a_broker_the_consumer_is_not_ready_whatever_it_last_polled() {
        let o = observer();
        let up = Arc::new(AtomicBool::new(true));
        o.watch_broker(Arc::clone(&up));
        o.source_polled(SourceHealth {
            assigned: Some(3),
            ..SourceHealth::default()
        });
        assert!(o.consumer_check().ok);
        // The ingest loop may be blocked on the broker that is gone: the
        // flag is read live, not from the last poll.
        up.store(false, Ordering::SeqCst);
        let check = o.consumer_check();
        assert!(!check.ok && check.detail.contains("no broker"), "{check:?}");
        up.store(true, Ordering::SeqCst);
        assert!(o.consumer_check().ok);
    }

    #[test]
    fn addresses_are_taken_out_of_replies() {
        assert_eq!(
            redact("550 5.1.1 <anna@example.com>: Recipient address rejected"),
            "550 5.1.1 <address>: Recipient address rejected"
        );
        assert_eq!(redact("450 4.2.0 bob@x.org busy"), "450 4.2.0 address busy");
        assert_eq!(redact("421 4.7.0 try later"), "421 4.7.0 try later");
    }

    #[test]
    fn an_smtp_server_is_reachable_only_while_it_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let smtp = MailerProbe::Smtp {
            host: "127.0.0.1".into(),
            port,
        };
        assert!(probe(&smtp).ok);
        drop(listener);
        assert!(!probe(&smtp).ok);
        assert!(!probe(&MailerProbe::Folder("/no/such/folder".into())).ok);
    }
}
