//! aftercare: post-purchase emails from a shop's order events.
//!
//! # Layout
//! - [`config`]: typed configuration, validated before anything connects.
//! - [`event`]: the event contract: decode and validate.
//! - [`journey`]: the pure core, `step(state, event) -> (state, commands)`,
//!   and its vocabulary (rules, segments, policy settings); with [`event`],
//!   it depends on none of the adapters below.
//! - [`store`]: persistence (SQLite; PostgreSQL for several workers), one
//!   transaction per batch.
//! - [`source`]: event sources (JSONL file, stdin, Kafka, the webhook
//!   intake) and the dead-letter places.
//! - [`mapping`]: a shop's own messages (Shopify, WooCommerce, Segment...)
//!   made into events by presets or jq programs.
//! - [`webhook`]: webhook signatures (Shopify, WooCommerce, a configured
//!   HMAC header), checked before anything of a request is stored.
//! - [`pipeline`]: ingest batches, fire due emails, check them again.
//! - [`render`]: the handlebars template set, helpers, locales; the schema
//!   of the template data and the walk `check` makes of every template.
//! - [`reload`]: hot reload of the templates (file watch, SIGHUP).
//! - [`mailer`]: MIME building; `.eml` files and SMTP.
//! - [`sender`]: render, send, record the outcome.
//! - [`throttle`]: limits and deferrals per recipient domain.
//! - [`daemon`]: `run`, the ingest thread and delivery workers wired.
//! - [`simulate`]: the email plan of an event log, no side effects.
//! - [`report`]: retention, repeat purchases, lifetime value, email conversion.
//! - [`check`]: every template in every locale against sample data.
//! - [`preview`]: the gallery of every email, static or served with reload.
//! - [`unsubscribe`]: signed one-click unsubscribe links.
//! - [`observe`]: Prometheus metrics and readiness checks.
//! - [`http`]: the HTTP server: health, readiness, metrics, unsubscribe.
//! - [`bounded`]: input echoed in reasons and logs, cut to a bounded length.

#![forbid(unsafe_code)]

/// mimalloc for every allocation of the worker, its tests and benches:
/// rendering and MIME building allocate heavily, and glibc's malloc was
/// about 30 % of their time (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod bounded;
pub mod check;
pub mod config;
pub mod daemon;
pub mod event;
pub mod http;
pub mod journey;
pub mod mailer;
pub mod mapping;
pub mod observe;
pub mod pipeline;
pub mod preview;
pub mod reload;
pub mod render;
pub mod report;
pub mod sender;
pub mod simulate;
pub mod source;
pub mod store;
pub mod throttle;
pub mod unsubscribe;
pub mod webhook;
