//! Turns at a SQLite file's one write lock, among one process's
//! connections to it, in the order they were asked for.
//!
//! SQLite's busy handler polls: a connection that finds the file locked
//! sleeps 1, 2, 5 ... up to 100 ms between tries. A writer that commits and
//! begins again at once (the ingest thread, batch after batch) takes the
//! lock back before a polling one wakes, so the deliveries' ledger could
//! wait several of its transactions to record an outcome, holding the
//! delivery's SMTP slot all along. Here the waiting writer is woken as the
//! lock is let go, and the holder can see that someone waits (and cut its
//! transaction short: [`crate::store::Transaction::others_waiting`]).
//!
//! Nothing depends on a turn for correctness: SQLite's lock still
//! serializes the writers (and those of other processes, which take no
//! turn here). So a turn not given within the busy timeout is gone without,
//! and no wait here can deadlock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The queue of one file's writers: a ticket lock.
#[derive(Debug, Default)]
pub(super) struct WriteTurns {
    /// The next ticket to hand out.
    next: AtomicU64,
    /// The ticket whose turn it is, and the tickets given up while waiting
    /// (skipped when their turn comes).
    serving: Mutex<Serving>,
    turn: Condvar,
}

#[derive(Debug, Default)]
struct Serving {
    now: u64,
    abandoned: Vec<u64>,
}

impl Serving {
    /// Moves on to the next ticket still wanted.
    fn advance(&mut self) {
        self.now += 1;
        while let Some(at) = self.abandoned.iter().position(|&t| t == self.now) {
            self.abandoned.swap_remove(at);
            self.now += 1;
        }
    }
}

/// A writer's turn, held until dropped; `None` inside if it was not given
/// in time (the writer goes on without one).
#[derive(Debug)]
pub(super) struct Turn {
    turns: Option<Arc<WriteTurns>>,
}

impl WriteTurns {
    /// Waits for the caller's turn, at most `patience`.
    pub(super) fn take(self: &Arc<Self>, patience: Duration) -> Turn {
        let ticket = self.next.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + patience;
        let mut serving = self.serving.lock().unwrap_or_else(PoisonError::into_inner);
        while serving.now != ticket {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                serving.abandoned.push(ticket);
                return Turn { turns: None };
            }
            serving = self
                .turn
                .wait_timeout(serving, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Turn {
            turns: Some(Arc::clone(self)),
        }
    }
}

#[cfg(test)]
impl WriteTurns {
    /// How many turns were asked for so far.
    pub(super) fn asked(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

impl Turn {
    /// Whether another writer of this process waits for its turn.
    pub(super) fn others_waiting(&self) -> bool {
        self.turns.as_ref().is_some_and(|turns| {
            let serving = turns.serving.lock().unwrap_or_else(PoisonError::into_inner);
            let asked = turns.next.load(Ordering::SeqCst);
            asked - serving.now > 1 + serving.abandoned.len() as u64
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(turns) = self.turns.take() {
            turns
                .serving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .advance();
            turns.turn.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn turns_are_given_in_the_order_asked_and_the_holder_sees_who_waits() {
        let turns = Arc::new(WriteTurns::default());
        let first = turns.take(LONG);
        assert!(!first.others_waiting());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (asked, name) in [(2, "second"), (3, "third")] {
            let (queue, order) = (Arc::clone(&turns), Arc::clone(&order));
            waiters.push(std::thread::spawn(move || {
                let _turn = queue.take(LONG);
                order.lock().unwrap().push(name);
            }));
            // The second asks before the third.
            while turns.asked() < asked {
                std::thread::yield_now();
            }
        }
        assert!(first.others_waiting());
        assert!(
            order.lock().unwrap().is_empty(),
            "no one writes during a turn"
        );
        drop(first);
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["second", "third"]);
        assert!(!turns.take(LONG).others_waiting());
    }

    #[test]
    fn a_turn_not_given_in_time_is_gone_without_and_skipped_later() {
        let turns = Arc::new(WriteTurns::default());
        let held = turns.take(LONG);
        let late = turns.take(Duration::from_millis(20));
        assert!(late.turns.is_none(), "given up after its patience");
        assert!(!late.others_waiting());
        assert!(
            !held.others_waiting(),
            "a ticket given up is no one waiting"
        );
        drop(late);
        drop(held);
        // The abandoned ticket is skipped: the next writer gets its turn at
        // once, not after the patience.
        let next = turns.take(Duration::from_millis(1));
        assert!(next.turns.is_some());
    }
}
