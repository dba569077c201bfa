//! Per recipient domain: how many deliveries at once, how many per second,
//! and a pause after the domain defers (421, 4.7.x). One slow or
//! throttling provider then holds back its own emails only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::DomainsConfig;

/// The longest wait between two deliveries to one domain, whatever its rate.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

struct Domain {
    permits: Arc<Semaphore>,
    /// Seconds between two deliveries (0: no rate limit).
    interval: Duration,
    /// The earliest start of the next delivery, for the rate.
    next_start: tokio::sync::Mutex<Instant>,
    deferred_until: Mutex<Option<Timestamp>>,
}

/// The domains seen so far and their state.
pub struct Throttle {
    config: DomainsConfig,
    domains: Mutex<HashMap<String, Arc<Domain>>>,
}

/// Leave to deliver to a domain; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The domain of an address, lowercased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .to_ascii_lowercase()
}

impl Throttle {
    pub fn new(config: DomainsConfig) -> Throttle {
        Throttle {
            config,
            domains: Mutex::new(HashMap::new()),
        }
    }

    fn domain(&self, name: &str) -> Arc<Domain> {
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(domains.entry(name.to_owned()).or_insert_with(|| {
            let limit = self.config.limit(name);
            Arc::new(Domain {
                permits: Arc::new(Semaphore::new(limit.concurrency)),
                interval: if limit.rate > 0.0 {
                    // A rate so small that its interval overflows waits a day.
                    Duration::try_from_secs_f64(1.0 / limit.rate).unwrap_or(MAX_INTERVAL)
                } else {
                    Duration::ZERO
                },
                next_start: tokio::sync::Mutex::new(Instant::now()),
                deferred_until: Mutex::new(None),
            })
        }))
    }

    /// When the domain deferred us and until when it waits, if it does.
    pub fn deferred(&self, name: &str, now: Timestamp) -> Option<Timestamp> {
        let domain = self.domain(name);
        let until = *domain
            .deferred_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until.filter(|u| *u > now)
    }

    /// The domain deferred a delivery: it gets nothing until `now + defer`.
    pub fn defer(&self, name: &str, now: Timestamp) -> Timestamp {
        let until = now
            + jiff::SignedDuration::try_from(self.config.defer)
                .unwrap_or(jiff::SignedDuration::ZERO);
        let domain = self.domain(name);
        *domain
            .deferred_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(until);
        until
    }

    /// Waits for a slot (concurrency) and for the domain's rate.
    pub async fn slot(&self, name: &str) -> Slot {
        let domain = self.domain(name);
        let permit = Arc::clone(&domain.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        if !domain.interval.is_zero() {
            let start = {
                let mut next = domain.next_start.lock().await;
                let start = (*next).max(Instant::now());
                *next = start + domain.interval.min(MAX_INTERVAL);
                start
            };
            tokio::time::sleep_until(start).await;
        }
        Slot { _permit: permit }
    }
}

/// Whether a transient reply is the domain telling us to slow down: 421
/// (service not available, closing) or an enhanced 4.7.x code.
pub fn is_deferral(reply: &str) -> bool {
    reply
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|w| w == "421" || (w.starts_with("4.7.") && w.len() > 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DomainLimit;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn domains(concurrency: usize, rate: f64) -> Throttle {
        Throttle::new(DomainsConfig {
            concurrency,
            rate,
            defer: Duration::from_secs(300),
            overrides: [(
                "big.example".to_owned(),
                DomainLimit {
                    concurrency: 10,
                    rate: 0.0,
                },
            )]
            .into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_per_domain() {
        let d = Arc::new(domains(2, 0.0));
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (d, now, max) = (Arc::clone(&d), Arc::clone(&now), Arc::clone(&max));
            let name = if i % 2 == 0 { "a.example" } else { "b.example" };
            tasks.push(tokio::spawn(async move {
                let _slot = d.slot(name).await;
                if name == "a.example" {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_spaces_deliveries_to_one_domain_only() {
        let d = domains(10, 10.0);
        let start = Instant::now();
        for _ in 0..5 {
            let _slot = d.slot("a.example").await;
        }
        // Five starts, a tenth of a second apart.
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        let other = Instant::now();
        let _slot = d.slot("b.example").await;
        assert!(other.elapsed() < Duration::from_millis(10));
        // An override without a rate waits for nothing.
        let big = Instant::now();
        for _ in 0..5 {
            let _slot = d.slot("big.example").await;
        }
        assert!(big.elapsed() < Duration::from_millis(10));
    }

    #[test]
    fn a_deferral_pauses_that_domain() {
        let d = domains(2, 0.0);
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(d.deferred("slow.example", now), None);
        let until = d.defer("slow.example", now);
        assert_eq!(until, "2026-01-01T00:05:00Z".parse().unwrap());
        assert_eq!(d.deferred("slow.example", now), Some(until));
        assert_eq!(d.deferred("fast.example", now), None);
        assert_eq!(d.deferred("slow.example", until), None);
    }

    #[test]
    fn deferrals_are_421_and_4_7_x() {
        assert!(is_deferral("transient error (421): 4.7.0 Try again later"));
        assert!(is_deferral("421 Service not available"));
        assert!(is_deferral("450 4.7.1 Rate limited"));
        assert!(!is_deferral("450 4.2.0 Mailbox busy"));
        assert!(!is_deferral("451 4.3.0 Error: command failed"));
        assert_eq!(domain_of("Anna@Example.COM"), "example.com");
    }
}
