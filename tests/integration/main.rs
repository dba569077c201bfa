//! The integration tests: the binary and the library against real servers,
//! one module per area. One test binary links the crate and its
//! dependencies once; one per area linked them once each.
//!
//! An area runs alone with its module path as the filter:
//! `cargo test --test integration kafka::`. Tests of every area run side
//! by side in this binary, so the scenarios that start several workers or
//! a broker and kill things hold `common::heavy()` and never overlap.

mod common;

mod browser;
mod catch_up;
mod check_schema;
mod cli;
mod cluster;
mod deploy;
mod event_schema;
mod hardening;
mod hostile;
mod kafka;
mod mapping_hostile;
mod observe;
mod policies;
mod postgres;
mod presets;
mod preview;
mod properties;
mod random_events;
mod reliability;
mod reload;
mod report;
mod restart;
mod slow_clients;
mod smtp;
mod template_data;
mod unsubscribe;
mod webhooks;
