//! `aftercare simulate`: the email plan of an event log, with no side
//! effects.
//!
//! The same pipeline as the daemon, on a private in-memory store, with a
//! virtual clock that follows the events: before each event every email due
//! by its `occurred_at` is decided, then the clock runs on to `until`
//! (events after `until` are not applied). What the daemon would send, in
//! the order it would send it.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::source::{DeadLetters, Source};
use crate::store::{EmailRow, Outcome, SqliteStore, Store, StoreError};

/// How far past the last event the clock runs by default.
pub const DEFAULT_HORIZON: SignedDuration = SignedDuration::from_hours(180 * 24);

/// One line of the plan, keys in the order the README's Commands section gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanLine {
    pub due_at: String,
    pub template: String,
    pub customer_id: String,
    pub order_id: Option<String>,
    pub to: Option<String>,
    pub locale: Option<String>,
    pub class: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The A/B variant, for templates that have variants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The email's key and the Message-ID it is sent with (printed only
    /// with `simulate --with-ids`): what a checker matches against what a
    /// mail server received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// When a policy held it back past `due_at`: until when, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
}

impl From<EmailRow> for PlanLine {
    fn from(e: EmailRow) -> PlanLine {
        PlanLine {
            due_at: e.due_at.to_string(),
            template: e.template,
            customer_id: e.customer_id,
            order_id: e.order_id,
            to: e.recipient,
            locale: e.locale,
            class: e.class.as_str(),
            status: e.status.as_str(),
            reason: e.reason,
            key: Some(e.key),
            message_id: None,
            deferred_to: e.deferred.as_ref().map(|_| e.fire_at.to_string()),
            deferred: e.deferred,
            variant: e.variant,
        }
    }
}

pub struct Plan {
    pub lines: Vec<PlanLine>,
    pub stats: Stats,
    pub until: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] crate::source::SourceError),
}

/// Plans `source` through `pipeline` (which must be on a fresh store).
pub fn simulate(
    pipeline: Pipeline<SqliteStore>,
    source: &mut dyn Source,
    until: Option<Timestamp>,
) -> Result<Plan, SimulateError> {
    simulate_with(pipeline, source, until, &mut |_| {})
}

/// As [`simulate`], handing each approved email, with the template data
/// the daemon renders it from, to `on_approved` before it counts as sent:
/// what a test sends to prove that no event can fail an email.
pub fn simulate_with(
    mut pipeline: Pipeline<SqliteStore>,
    source: &mut dyn Source,
    until: Option<Timestamp>,
    on_approved: &mut dyn FnMut(&EmailRow),
) -> Result<Plan, SimulateError> {
    let mut dead = DeadLetters::discard();
    let mut approved = Vec::new();
    let mut last: Option<Timestamp> = None;
    loop {
        let batch = source.next_batch(1)?;
        for entry in &batch.entries {
            // An oversized event is only a prefix: never decoded.
            let decoded = entry
                .oversized
                .is_none()
                .then(|| crate::event::Event::decode(&entry.raw));
            if let Some(Ok(event)) = decoded {
                if until.is_some_and(|u| event.occurred_at > u) {
                    // The clock stops at `until`: later events never happen.
                    return finish(pipeline, until, &mut dead, &mut approved, on_approved);
                }
                last = Some(last.map_or(event.occurred_at, |l| l.max(event.occurred_at)));
            }
        }
        pipeline.ingest(
            source.name(),
            &batch.entries,
            None,
            &mut dead,
            &mut approved,
        )?;
        deliver(&mut pipeline, &mut approved, on_approved)?;
        if batch.finished {
            break;
        }
    }
    finish(
        pipeline,
        until.or_else(|| last.map(|l| crate::journey::later(l, DEFAULT_HORIZON))),
        &mut dead,
        &mut approved,
        on_approved,
    )
}

/// Runs the clock to `until` and collects the decisions.
fn finish(
    mut pipeline: Pipeline<SqliteStore>,
    until: Option<Timestamp>,
    dead: &mut DeadLetters,
    approved: &mut Vec<EmailRow>,
    on_approved: &mut dyn FnMut(&EmailRow),
) -> Result<Plan, SimulateError> {
    if let Some(until) = until {
        // Events still waiting for an order that never came give up.
        pipeline.expire(until, dead)?;
        pipeline.fire(until, approved)?;
        deliver(&mut pipeline, approved, on_approved)?;
    }
    let lines = pipeline
        .store()
        .decisions()?
        .into_iter()
        .map(PlanLine::from)
        .collect();
    Ok(Plan {
        lines,
        stats: pipeline.stats,
        until,
    })
}

/// Every approved email counts as sent at once.
fn deliver(
    pipeline: &mut Pipeline<SqliteStore>,
    approved: &mut Vec<EmailRow>,
    on_approved: &mut dyn FnMut(&EmailRow),
) -> Result<(), StoreError> {
    for email in approved.drain(..) {
        on_approved(&email);
        pipeline.store().record_delivery(
            email.id,
            &Outcome::Sent {
                at: email.due_at,
                reply: "simulated".into(),
            },
        )?;
    }
    Ok(())
}
