//! The delivery side's writes to the store, in batches.
//!
//! Every delivery writes twice: its claim renewed as it starts (the fence
//! against a worker that took the email over while it waited here) and its
//! outcome once the server answered. A transaction each would hold the
//! deliveries to the store's commit rate (a PostgreSQL commit waits for its
//! WAL flush) and have them queue for the one connection. The ledger is one
//! task that takes every delivery's writes and makes those that came in
//! while it wrote the previous ones together, one transaction per kind: no
//! wait when the store keeps up, batches as large as the backlog when it
//! does not.
//!
//! A store that is away is waited out, batch and all, as the writes one by
//! one were; an error that lasts is answered to each request alone, so one
//! email's problem fails that email only.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::pipeline::{LeasePolicy, outage_pause};
use crate::sender::Outcome;
use crate::store::{Lease, Store, StoreError};

/// The most requests taken from the queue for one round of writes. The
/// queue holds at most one request per running delivery.
const MAX_BATCH: usize = 512;

type Claims = Vec<(i64, oneshot::Sender<Result<bool, StoreError>>)>;
type Records = Vec<((i64, Outcome), oneshot::Sender<Result<(), StoreError>>)>;

enum Request {
    Claim {
        id: i64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Record {
        id: i64,
        outcome: Outcome,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The writer of the deliveries' claims and outcomes; stops when dropped.
pub(super) struct Ledger {
    requests: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
}

impl Ledger {
    pub(super) fn start<S: Store>(store: Arc<Mutex<S>>, lease: LeasePolicy) -> Ledger {
        // Unbounded, yet never longer than the deliveries running: each
        // waits for its answer before it asks again.
        let (requests, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(write(store, lease, queue));
        Ledger { requests, task }
    }

    /// Renews this worker's claim on email `id` as its delivery starts:
    /// `false` when it no longer holds it (another worker took it over
    /// while it waited here, and delivers it).
    pub(super) async fn claim(&self, id: i64) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Request::Claim { id, reply });
        answer.await.expect("the ledger answers every request")
    }

    /// Records what became of email `id`. It returns once the store has
    /// it: an email the server accepted and the store did not record would
    /// go out again once its lease expired.
    pub(super) async fn record(&self, id: i64, outcome: Outcome) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Request::Record { id, outcome, reply });
        answer.await.expect("the ledger answers every request")
    }

    fn ask(&self, request: Request) {
        if self.requests.send(request).is_err() {
            panic!("the ledger stopped while deliveries ran");
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The ledger's task: each round, the requests waiting, claims then
/// outcomes.
async fn write<S: Store>(
    store: Arc<Mutex<S>>,
    lease: LeasePolicy,
    mut queue: mpsc::UnboundedReceiver<Request>,
) {
    let mut requests = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut requests, MAX_BATCH).await > 0 {
        let mut claims = Vec::new();
        let mut records = Vec::new();
        for request in requests.drain(..) {
            match request {
                Request::Claim { id, reply } => claims.push((id, reply)),
                Request::Record { id, outcome, reply } => records.push(((id, outcome), reply)),
            }
        }
        if !claims.is_empty() {
            claim(&store, &lease, claims).await;
        }
        if !records.is_empty() {
            record(&store, records).await;
        }
    }
}

/// Renews the claims of `claims` in one transaction; if that fails for
/// good, each alone, so that each request gets its own answer.
async fn claim<S: Store>(store: &Arc<Mutex<S>>, lease: &LeasePolicy, claims: Claims) {
    let ids: Vec<i64> = claims.iter().map(|(id, _)| *id).collect();
    if let Ok(renewed) = renew(store, ids, lease).await {
        for (id, reply) in claims {
            let _ = reply.send(Ok(renewed.contains(&id)));
        }
        return;
    }
    for (id, reply) in claims {
        let renewed = renew(store, vec![id], lease).await;
        let _ = reply.send(renewed.map(|renewed| !renewed.is_empty()));
    }
}

/// Records `records` in one transaction; if that fails for good, each
/// alone, so that each request gets its own answer.
async fn record<S: Store>(store: &Arc<Mutex<S>>, records: Records) {
    let (outcomes, replies): (Vec<_>, Vec<_>) = records.into_iter().unzip();
    let outcomes: Arc<[(i64, Outcome)]> = outcomes.into();
    let all = Arc::clone(&outcomes);
    let written = until_stored(store, "Recording deliveries", move |s| {
        s.record_deliveries(&all)
    })
    .await;
    if written.is_ok() {
        for reply in replies {
            let _ = reply.send(Ok(()));
        }
        return;
    }
    for ((id, outcome), reply) in outcomes.iter().cloned().zip(replies) {
        let written = until_stored(store, "Recording a delivery", move |s| {
            s.record_delivery(id, &outcome)
        })
        .await;
        let _ = reply.send(written);
    }
}

/// Renews this worker's lease on `ids` (see [`Store::renew`]), waiting out
/// a store that is away: the ids it still holds.
pub(super) async fn renew<S: Store>(
    store: &Arc<Mutex<S>>,
    ids: Vec<i64>,
    lease: &LeasePolicy,
) -> Result<Vec<i64>, StoreError> {
    let (owner, duration) = (lease.owner.clone(), lease.duration);
    let ids: Arc<[i64]> = ids.into();
    until_stored(store, "Renewing leases", move |s| {
        let claim = Lease {
            owner: owner.clone(),
            until: crate::journey::later(jiff::Timestamp::now(), duration),
        };
        s.renew(&ids, &claim)
    })
    .await
}

/// Runs `write` on the store until it succeeds or fails for good: a
/// transient failure (the store away, busy) is logged and tried again
/// after the outage pauses. A shutdown cuts the wait by dropping the task.
async fn until_stored<S, T, F>(
    store: &Arc<Mutex<S>>,
    what: &'static str,
    write: F,
) -> Result<T, StoreError>
where
    S: Store,
    T: Send + 'static,
    F: Fn(&mut S) -> Result<T, StoreError> + Send + Sync + 'static,
{
    let write = Arc::new(write);
    let mut failures = 0;
    loop {
        let attempt = Arc::clone(&write);
        match crate::store::blocking(store, move |s| attempt(s)).await {
            Err(error) if error.is_transient() => {
                let pause = outage_pause(failures);
                failures += 1;
                tracing::error!(%error, retry_in = ?pause, "{what} failed; trying again.");
                tokio::time::sleep(pause).await;
            }
            done => return done,
        }
    }
}
