//! The HTTP server: health, readiness and metrics for the platform, and
//! the one-click unsubscribe endpoint (RFC 8058) for customers.
//!
//! `GET /healthz` answers while the process serves at all. `GET /readyz`
//! answers 200 only when the store answers, the consumer has partitions
//! and makes progress, and the mailer can be reached; 503 otherwise, with
//! each check in a small JSON body. `GET /metrics` is Prometheus' text
//! format (see [`crate::observe`]).
//!
//! `POST /unsubscribe/{token}` with the body `List-Unsubscribe=One-Click`
//! (form-encoded or multipart, as RFC 8058 has mail clients send it from
//! the `List-Unsubscribe-Post` header; the page's confirm button posts the
//! same) unsubscribes the customer the token was signed for. Any other
//! body gets 400 and changes nothing. `GET` shows that page and never
//! unsubscribes by itself (link scanners follow GETs). A forged or
//! malformed token gets a 4xx and changes nothing; refused tokens are
//! counted and logged once a minute, never one line each (anyone can send
//! them) and never with the token.
//!
//! The pages are not cached (the URL holds the token), framed or sent
//! with a referrer. Connections are bounded in number and time, and bodies
//! in size: see the `listener` module.

mod listener;
pub mod webhooks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use handlebars::html_escape;

pub use listener::Limits;

use crate::observe::{Check, Observer};
use crate::store::{Store, StoreError};
use crate::unsubscribe::{BadToken, Signer};

/// Largest request body: the unsubscribe form is a few dozen bytes (a
/// few hundred as multipart); nothing else takes a body.
const BODY_LIMIT: usize = 4 * 1024;

/// The one-click body's field and value (RFC 8058).
const ONE_CLICK: (&str, &str) = ("List-Unsubscribe", "One-Click");

pub struct HttpState<S> {
    pub store: Arc<Mutex<S>>,
    pub signer: Signer,
    /// For the pages.
    pub shop_name: String,
    pub observer: Arc<Observer>,
    /// `source.kind = "webhook"`: the endpoints taking the shop's
    /// webhooks, and the largest body they take.
    pub webhooks: Option<Arc<webhooks::Webhooks>>,
    pub webhook_body_limit: usize,
    /// What clients did wrong since it was last logged.
    tally: Arc<Tally>,
}

impl<S> HttpState<S> {
    pub fn new(
        store: S,
        signer: Signer,
        shop_name: String,
        observer: Arc<Observer>,
    ) -> HttpState<S> {
        HttpState {
            store: Arc::new(Mutex::new(store)),
            signer,
            shop_name,
            observer,
            webhooks: None,
            webhook_body_limit: BODY_LIMIT,
            tally: Arc::default(),
        }
    }

    /// Takes the shop's webhooks too, bodies up to `body_limit` bytes.
    pub fn with_webhooks(mut self, webhooks: webhooks::Webhooks, body_limit: usize) -> Self {
        self.webhooks = Some(Arc::new(webhooks));
        self.webhook_body_limit = body_limit;
        self
    }
}

/// Things any client can cause at will, counted and logged once per
/// interval: a line each would let anyone flood the logs.
#[derive(Debug, Default)]
struct Tally {
    forged: AtomicU64,
    malformed: AtomicU64,
    /// POSTs with a valid token but not the one-click body.
    not_one_click: AtomicU64,
    evicted_half_open: AtomicU64,
    evicted_answering: AtomicU64,
    timed_out: AtomicU64,
    accept_failed: AtomicU64,
    last_accept_error: Mutex<Option<String>>,
}

impl Tally {
    fn refused(&self, e: BadToken) {
        let count = match e {
            BadToken::Forged => &self.forged,
            BadToken::Malformed => &self.malformed,
        };
        count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "Refused an unsubscribe token.");
    }

    fn not_one_click(&self) {
        self.not_one_click.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("Refused an unsubscribe POST without the one-click body.");
    }

    fn evicted(&self, half_open: bool) {
        let count = if half_open {
            &self.evicted_half_open
        } else {
            &self.evicted_answering
        };
        count.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(half_open, "Closed an HTTP connection to make room.");
    }

    fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("Closed an HTTP connection that took too long.");
    }

    fn accept_failed(&self, error: &std::io::Error) {
        self.accept_failed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%error, "Accepting an HTTP connection failed.");
        *self
            .last_accept_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }

    /// Logs what was counted since the last report, and starts again.
    fn report(&self) {
        let take = |n: &AtomicU64| n.swap(0, Ordering::Relaxed);
        let (forged, malformed, not_one_click) = (
            take(&self.forged),
            take(&self.malformed),
            take(&self.not_one_click),
        );
        if forged + malformed + not_one_click > 0 {
            tracing::warn!(
                forged,
                malformed,
                not_one_click,
                "Refused unsubscribe requests."
            );
        }
        let (half_open, answering) = (take(&self.evicted_half_open), take(&self.evicted_answering));
        if half_open + answering > 0 {
            tracing::warn!(
                half_open,
                answering,
                "HTTP connection limit reached: closed the oldest connections to make room."
            );
        }
        let timed_out = take(&self.timed_out);
        if timed_out > 0 {
            tracing::info!(
                timed_out,
                "Closed HTTP connections that sent their request or read the answer too slowly."
            );
        }
        let failed = take(&self.accept_failed);
        if failed > 0 {
            let error = self
                .last_accept_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
            tracing::warn!(failed, last_error = %error, "HTTP connections could not be accepted.");
        }
    }
}

pub fn router<S: Store>(state: Arc<HttpState<S>>) -> Router {
    // A webhook body may be as large as an event; the rest take a few
    // bytes (the route's own limit is the one that counts).
    let webhook_limit = DefaultBodyLimit::max(state.webhook_body_limit);
    Router::new()
        .route(
            "/webhooks/{endpoint}",
            axum::routing::post(webhooks::receive::<S>).layer(webhook_limit),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route(
            "/unsubscribe/{token}",
            get(confirm_page::<S>).post(unsubscribe::<S>),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Runs `f` on the store off the async threads.
async fn with_store<S: Store, T: Send + 'static>(
    state: &HttpState<S>,
    f: impl FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::store::blocking(&state.store, f).await
}

async fn ready<S: Store>(State(state): State<Arc<HttpState<S>>>) -> Response {
    let store = match with_store(&state, |s| s.position("readyz")).await {
        Ok(_) => Check {
            ok: true,
            detail: "answers".into(),
        },
        Err(e) => Check {
            ok: false,
            detail: e.to_string(),
        },
    };
    let observer = Arc::clone(&state.observer);
    let (consumer, mailer) =
        tokio::task::spawn_blocking(move || (observer.consumer_check(), observer.mailer_check()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let ready = store.ok && consumer.ok && mailer.ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "checks": { "store": store, "consumer": consumer, "mailer": mailer },
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics<S: Store>(State(state): State<Arc<HttpState<S>>>) -> Response {
    let now = jiff::Timestamp::now();
    match with_store(&state, move |s| s.backlog(now)).await {
        Ok(b) => {
            state.observer.backlog(b.pending, b.overdue);
            state.observer.parked_backlog(b.parked);
            state.observer.intake_backlog(b.intake);
        }
        Err(e) => tracing::warn!(error = %e, "Backlog not read for /metrics."),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.observer.render(),
    )
        .into_response()
}

/// Serves until `shutdown` is cancelled, within `limits`.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState<S>>,
    limits: Limits,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let tally = Arc::clone(&state.tally);
    listener::serve(listener, router(state), limits, tally, shutdown).await
}

/// The `Content-Security-Policy` of the pages: nothing loads, inline
/// styles only, the form posts back here, and no one may frame them
/// (clickjacking a one-click button).
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em\">\
         <h1>{title}</h1>{body}</body></html>",
        title = html_escape(title),
    );
    let headers = [
        // The URL holds the token: no cache keeps the page.
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ]
    .map(|(name, value)| (name, HeaderValue::from_static(value)));
    (status, headers, Html(html)).into_response()
}

fn refused<S>(state: &HttpState<S>, e: BadToken) -> Response {
    let status = match e {
        BadToken::Malformed => StatusCode::BAD_REQUEST,
        BadToken::Forged => StatusCode::FORBIDDEN,
    };
    state.tally.refused(e);
    page(
        status,
        "This link is not valid",
        "<p>Please use the unsubscribe link from one of our emails.</p>",
    )
}

/// The page with the confirm button. Its form posts the one-click body,
/// so the endpoint has one rule for mail clients and people alike.
fn confirm(status: StatusCode, shop_name: &str) -> Response {
    let body = format!(
        "<p>Stop receiving news and offers from {shop}? Emails about your orders \
         (confirmations, shipping, returns) still reach you.</p>\
         <form method=\"post\">\
         <input type=\"hidden\" name=\"{name}\" value=\"{value}\">\
         <button type=\"submit\" \
         style=\"font-size:1em;padding:.6em 1.2em\">Unsubscribe</button></form>",
        shop = html_escape(shop_name),
        name = ONE_CLICK.0,
        value = ONE_CLICK.1,
    );
    page(status, "Unsubscribe", &body)
}

async fn confirm_page<S: Store>(
    State(state): State<Arc<HttpState<S>>>,
    Path(token): Path<String>,
) -> Response {
    if let Err(e) = state.signer.verify(&token) {
        return refused(&state, e);
    }
    confirm(StatusCode::OK, &state.shop_name)
}

/// What an unsubscribe POST carried.
#[derive(Debug, PartialEq, Eq)]
enum PostBody {
    /// `List-Unsubscribe=One-Click`, form-encoded or multipart.
    OneClick,
    /// Something else, or nothing.
    Other,
    /// More than [`BODY_LIMIT`].
    TooLarge,
}

impl PostBody {
    /// A rejection's status, from reading or parsing the body.
    fn rejected(status: StatusCode) -> PostBody {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            PostBody::TooLarge
        } else {
            PostBody::Other
        }
    }
}

/// Reads the body of an unsubscribe POST (up to [`BODY_LIMIT`]): RFC 8058
/// has it sent as `multipart/form-data` or form-encoded.
async fn read_post_body(request: Request) -> PostBody {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    if !multipart {
        return match axum::Form::<Vec<(String, String)>>::from_request(request, &()).await {
            Ok(axum::Form(fields))
                if fields
                    .iter()
                    .any(|(k, v)| (k.as_str(), v.as_str()) == ONE_CLICK) =>
            {
                PostBody::OneClick
            }
            Ok(_) => PostBody::Other,
            Err(rejection) => PostBody::rejected(rejection.status()),
        };
    }
    let mut form = match Multipart::from_request(request, &()).await {
        Ok(form) => form,
        Err(rejection) => return PostBody::rejected(rejection.status()),
    };
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return PostBody::Other,
            Err(e) => return PostBody::rejected(e.status()),
        };
        let named = field.name() == Some(ONE_CLICK.0);
        match field.text().await {
            Ok(value) if named && value == ONE_CLICK.1 => return PostBody::OneClick,
            Ok(_) => {}
            Err(e) => return PostBody::rejected(e.status()),
        }
    }
}

async fn unsubscribe<S: Store>(
    State(state): State<Arc<HttpState<S>>>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    // The token first: a forged one costs no body read.
    let customer_id = match state.signer.verify(&token) {
        Ok(id) => id,
        Err(e) => return refused(&state, e),
    };
    match read_post_body(request).await {
        PostBody::OneClick => {}
        PostBody::Other => {
            state.tally.not_one_click();
            return confirm(StatusCode::BAD_REQUEST, &state.shop_name);
        }
        PostBody::TooLarge => {
            state.tally.not_one_click();
            return page(
                StatusCode::PAYLOAD_TOO_LARGE,
                "This request is too large",
                "<p>Please use the unsubscribe link from one of our emails.</p>",
            );
        }
    }
    let id = customer_id.clone();
    match with_store(&state, move |store| store.unsubscribe(&id)).await {
        Ok(true) => {
            tracing::info!(%customer_id, "Customer unsubscribed.");
            page(
                StatusCode::OK,
                "You are unsubscribed",
                "<p>You will get no more news or offers from us. \
                 Emails about your orders still reach you.</p>",
            )
        }
        Ok(false) => page(
            StatusCode::NOT_FOUND,
            "We do not know this address",
            "<p>There is nothing to unsubscribe.</p>",
        ),
        Err(e) => {
            tracing::error!(%customer_id, error = %e, "Unsubscribe not recorded.");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record this just now.</p>",
            )
        }
    }
}
