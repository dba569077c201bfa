//! `POST /webhooks/{endpoint}`: the shop's signed webhooks, stored before
//! they are answered.
//!
//! In this order, each step refusing before the next reads anything: an
//! unknown endpoint is 404; a client over its rate is 429; a body over
//! `source.max_event_bytes` is 413 (axum stops reading it); a signature
//! that is missing or matches no secret is 401 and nothing is stored; an
//! intake deeper than `source.webhook.max_depth` is 503 with
//! `Retry-After`. Then the delivery is stored in its own committed
//! transaction and answered 200: a crash after the answer loses nothing,
//! and the answer never waits for the journeys, rendering or SMTP (the
//! intake's reader applies it; see `crate::source::webhook`). A delivery
//! whose id was stored before is answered 200 too and has no effect.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{HttpState, with_store};
use crate::config::{ConfigError, SignatureKind, WebhookConfig};
use crate::source::webhook::Doorbell;
use crate::store::{Accepted, Store};
use crate::webhook::{Refused, Verifier, is_woocommerce_ping};

/// The longest delivery id kept: Shopify's and WooCommerce's are a few
/// dozen characters; a longer header is a sender's mistake or an attack.
const MAX_DELIVERY_ID: usize = 200;

/// One endpoint, ready to check deliveries.
struct Endpoint {
    verifier: Verifier,
    id_header: Option<String>,
    /// WooCommerce's unsigned ping is answered, not refused.
    woocommerce: bool,
}

/// The webhook endpoints and what guards them.
pub struct Webhooks {
    endpoints: BTreeMap<String, Endpoint>,
    max_depth: u64,
    retry_after: Duration,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Requests since the limiter last forgot idle clients.
    since_forgetting: AtomicU64,
    doorbell: Arc<Doorbell>,
}

/// Every this many requests, clients back to a full allowance are
/// forgotten: many addresses seen once must not stay in memory.
const FORGET_EVERY: u64 = 1024;

impl Webhooks {
    /// From the config, reading every endpoint's secrets.
    pub fn new(config: &WebhookConfig, doorbell: Arc<Doorbell>) -> Result<Webhooks, ConfigError> {
        let mut endpoints = BTreeMap::new();
        for (name, e) in &config.endpoints {
            endpoints.insert(
                name.clone(),
                Endpoint {
                    verifier: Verifier::new(e.scheme(), &e.secrets(name)?),
                    id_header: e.delivery_id_header().map(str::to_owned),
                    woocommerce: e.signature == SignatureKind::Woocommerce,
                },
            );
        }
        let per_minute = NonZeroU32::new(config.per_address_per_minute).unwrap_or(NonZeroU32::MIN);
        Ok(Webhooks {
            endpoints,
            max_depth: config.max_depth,
            retry_after: config.retry_after,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            since_forgetting: AtomicU64::new(0),
            doorbell,
        })
    }

    /// Whether `client` may make one more request now; if not, how long
    /// until it may.
    fn admit(&self, client: IpAddr) -> Result<(), Duration> {
        if self.since_forgetting.fetch_add(1, Ordering::Relaxed) >= FORGET_EVERY {
            self.since_forgetting.store(0, Ordering::Relaxed);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// What became of a request, for the metrics and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    Ping,
    UnknownEndpoint,
    RateLimited,
    BadSignature,
    Full,
    StoreFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ping => "ping",
            Outcome::UnknownEndpoint => "unknown_endpoint",
            Outcome::RateLimited => "rate_limited",
            Outcome::BadSignature => "bad_signature",
            Outcome::Full => "full",
            Outcome::StoreFailed => "store_failed",
        }
    }
}

fn retry_after(status: StatusCode, wait: Duration, body: &'static str) -> Response {
    let secs = wait.as_secs().max(1);
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).expect("digits"),
    );
    response
}

/// The request's headers as a message carries them, names lower-cased.
fn record_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

pub async fn receive<S: Store>(
    State(state): State<Arc<HttpState<S>>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (outcome, response) = decide(&state, &name, peer, &headers, body).await;
    state.observer.webhook(
        if outcome == Outcome::UnknownEndpoint {
            "(unknown)"
        } else {
            &name
        },
        outcome.as_str(),
    );
    response
}

async fn decide<S: Store>(
    state: &Arc<HttpState<S>>,
    name: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Bytes,
) -> (Outcome, Response) {
    let Some(webhooks) = &state.webhooks else {
        return (
            Outcome::UnknownEndpoint,
            StatusCode::NOT_FOUND.into_response(),
        );
    };
    let Some(endpoint) = webhooks.endpoints.get(name) else {
        return (
            Outcome::UnknownEndpoint,
            StatusCode::NOT_FOUND.into_response(),
        );
    };
    if let Err(wait) = webhooks.admit(peer.ip()) {
        return (
            Outcome::RateLimited,
            retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "too many requests\n"),
        );
    }
    let signature = headers
        .get(endpoint.verifier.header())
        .map(HeaderValue::as_bytes);
    if let Err(refused) = endpoint.verifier.verify(signature, &body) {
        if endpoint.woocommerce && refused == Refused::Missing && is_woocommerce_ping(&body) {
            return (Outcome::Ping, (StatusCode::OK, "ping\n").into_response());
        }
        tracing::debug!(endpoint = name, %peer, reason = %refused, "Refused a webhook.");
        return (
            Outcome::BadSignature,
            (StatusCode::UNAUTHORIZED, "bad signature\n").into_response(),
        );
    }
    let delivery_id = endpoint
        .id_header
        .as_deref()
        .and_then(|h| headers.get(h))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= MAX_DELIVERY_ID)
        .map(str::to_owned);
    let (source, max_depth) = (name.to_owned(), webhooks.max_depth);
    let stored_headers = record_headers(headers);
    let stored = with_store(state, move |store| {
        if store.intake_depth()? >= max_depth {
            return Ok(None);
        }
        store
            .intake_put(
                &source,
                delivery_id.as_deref(),
                &stored_headers,
                &body,
                jiff::Timestamp::now(),
            )
            .map(Some)
    })
    .await;
    match stored {
        Ok(None) => (
            Outcome::Full,
            retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                webhooks.retry_after,
                "busy: retry later\n",
            ),
        ),
        Ok(Some(Accepted::Stored(_))) => {
            webhooks.doorbell.ring();
            (Outcome::Accepted, (StatusCode::OK, "ok\n").into_response())
        }
        Ok(Some(Accepted::Duplicate)) => (
            Outcome::Duplicate,
            (StatusCode::OK, "ok (seen before)\n").into_response(),
        ),
        Err(error) => {
            tracing::error!(endpoint = name, %error, "Could not store a webhook; the sender will retry.");
            (
                Outcome::StoreFailed,
                retry_after(
                    StatusCode::SERVICE_UNAVAILABLE,
                    webhooks.retry_after,
                    "store unavailable: retry later\n",
                ),
            )
        }
    }
}
