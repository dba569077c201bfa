//! What became of one delivery, as the store records it.

use jiff::Timestamp;

/// What became of one delivery: written back with
/// [`Store::record_delivery`](super::Store::record_delivery).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The server took it at `at`: `sent`, one attempt counted.
    Sent { at: Timestamp, reply: String },
    /// A transient failure: the email waits until `at`, one attempt
    /// counted.
    Retry { at: Timestamp, reply: String },
    /// A permanent failure: `failed` with `reason`, one attempt counted.
    Failed { reason: String },
    /// The mailbox does not exist (5.1.x): failed, and the address is
    /// suppressed for every later email.
    Bounced { address: String, reason: String },
    /// The recipient's domain asked us to slow down (421, 4.7.x), now or
    /// before: the email waits, without spending an attempt.
    Deferred { at: Timestamp, reply: String },
    /// May have been delivered: retried (same Message-ID), and counted
    /// apart from the other attempts (`ambiguous_attempts`).
    Ambiguous { at: Timestamp, reply: String },
    /// Too late to go out any more (its rule's `expires_after` passed
    /// while it waited: a crash, a queue, a slow server): `suppressed`,
    /// nothing sent.
    Expired { reason: String },
}
