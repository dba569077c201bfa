//! The HTTP server: health, readiness and metrics for the platform, and
//! the one-click unsubscribe endpoint (RFC 8058) for customers.
//!
//! `GET /healthz` answers while the process serves at all. `GET /readyz`
//! answers 200 only when the store answers, the consumer has partitions
//! and makes progress, and the mailer can be reached; 503 otherwise, with
//! each check in a small JSON body. `GET /metrics` is Prometheus' text
//! format (see [`crate::observe`]).
//!
//! `POST /unsubscribe/{token}` unsubscribes the customer the token was
//! signed for: mail clients send it from the `List-Unsubscribe-Post`
//! header, and the confirm button of the page does too. `GET` shows that
//! page and never unsubscribes by itself (link scanners follow GETs). A
//! forged or malformed token gets a 4xx and changes nothing.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use handlebars::html_escape;

use crate::observe::{Check, Observer};
use crate::store::{Store, StoreError};
use crate::unsubscribe::{BadToken, Signer};

pub struct HttpState<S> {
    pub store: Arc<Mutex<S>>,
    pub signer: Signer,
    /// For the pages.
    pub shop_name: String,
    pub observer: Arc<Observer>,
}

pub fn router<S: Store>(state: Arc<HttpState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready::<S>))
        .route("/metrics", get(metrics::<S>))
        .route(
            "/unsubscribe/{token}",
            get(confirm_page::<S>).post(unsubscribe::<S>),
        )
        .with_state(state)
}

/// Runs `f` on the store off the async threads.
async fn with_store<S: Store, T: Send + 'static>(
    state: &HttpState<S>,
    f: impl FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut store)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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
        Ok(b) => state.observer.backlog(b.pending, b.overdue),
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

/// Serves until `shutdown` completes.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em\">\
         <h1>{title}</h1>{body}</body></html>",
        title = html_escape(title),
    );
    (status, Html(html)).into_response()
}

fn refused(e: BadToken) -> Response {
    let status = match e {
        BadToken::Malformed => StatusCode::BAD_REQUEST,
        BadToken::Forged => StatusCode::FORBIDDEN,
    };
    tracing::info!(error = %e, "Refused an unsubscribe token.");
    page(
        status,
        "This link is not valid",
        "<p>Please use the unsubscribe link from one of our emails.</p>",
    )
}

async fn confirm_page<S: Store>(
    State(state): State<Arc<HttpState<S>>>,
    Path(token): Path<String>,
) -> Response {
    if let Err(e) = state.signer.verify(&token) {
        return refused(e);
    }
    let body = format!(
        "<p>Stop receiving news and offers from {shop}? Emails about your orders \
         (confirmations, shipping, returns) still reach you.</p>\
         <form method=\"post\"><button type=\"submit\" \
         style=\"font-size:1em;padding:.6em 1.2em\">Unsubscribe</button></form>",
        shop = html_escape(&state.shop_name),
    );
    page(StatusCode::OK, "Unsubscribe", &body)
}

async fn unsubscribe<S: Store>(
    State(state): State<Arc<HttpState<S>>>,
    Path(token): Path<String>,
) -> Response {
    let customer_id = match state.signer.verify(&token) {
        Ok(id) => id,
        Err(e) => return refused(e),
    };
    let store = Arc::clone(&state.store);
    let id = customer_id.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        store.unsubscribe(&id)
    })
    .await;
    match done {
        Ok(Ok(true)) => {
            tracing::info!(%customer_id, "Customer unsubscribed.");
            page(
                StatusCode::OK,
                "You are unsubscribed",
                "<p>You will get no more news or offers from us. \
                 Emails about your orders still reach you.</p>",
            )
        }
        Ok(Ok(false)) => page(
            StatusCode::NOT_FOUND,
            "We do not know this address",
            "<p>There is nothing to unsubscribe.</p>",
        ),
        Ok(Err(e)) => {
            tracing::error!(%customer_id, error = %e, "Unsubscribe not recorded.");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record this just now.</p>",
            )
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
