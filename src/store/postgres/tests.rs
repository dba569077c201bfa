//! PostgreSQL's own tests: several workers on one store. What every store
//! must do is in `super::suite`.

use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::json;

use super::super::suite::{Harness, Inspect, PostgresHarness, email, lease, t, to};
use super::session::quote_ident;
use super::*;
use crate::journey::{Journey, NewEmail};
use crate::store::{Accepted, Lease, Outcome, Store, Transaction};

/// Suppresses `address` as a bounce does (with no email of id 0, only
/// the address changes).
fn suppress(s: &mut PostgresStore, address: &str) {
    let bounce = Outcome::Bounced {
        address: address.to_owned(),
        reason: "550".to_owned(),
    };
    s.record_delivery(0, &bounce).unwrap();
}

/// Schedules `n` emails due at once (keys `{prefix}{i}`), for
/// `customers` stored customers in turn; their ids.
fn schedule_many(s: &mut PostgresStore, prefix: &str, n: usize, customers: usize) -> BTreeSet<i64> {
    let before: BTreeSet<i64> = lease_owners(s).into_keys().collect();
    let mut tx = s.begin().unwrap();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let customer = format!("c-{prefix}{}", i % customers);
        // A few share a due time: the order then is by id.
        let due = format!("2026-01-02T00:00:{:02}Z", i % 7);
        tx.save_journey(&customer, &Journey::default()).unwrap();
        let e = NewEmail {
            customer_id: customer,
            ..email(&key, "o-1", &key, &due)
        };
        tx.schedule(&e, "s").unwrap();
    }
    tx.commit().unwrap();
    let after: BTreeSet<i64> = lease_owners(s).into_keys().collect();
    after.difference(&before).copied().collect()
}

/// Every email's id with its lease owner (`None`: not claimed).
fn lease_owners(s: &PostgresStore) -> std::collections::BTreeMap<i64, Option<String>> {
    s.with_client(|c| {
        Ok(c.query("SELECT id, lease_owner FROM emails", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    })
    .unwrap()
}

/// Claims and approves due emails, `batch` at a time, until none is
/// left; the ids it took. Like `Pipeline::fire`, it waits while due
/// emails are held by the other worker's transaction: `due` skips
/// them, and the other worker may be skipping the same rows because
/// this one's `due` has them locked for a moment.
fn fire_all(s: &mut PostgresStore, owner: &str, batch: usize) -> Vec<i64> {
    let until = t("2026-01-03T00:00:00Z");
    let held_since = Instant::now();
    let mut taken = Vec::new();
    loop {
        let mut tx = s.begin().unwrap();
        let due = tx.due(until, None, batch).unwrap();
        if due.is_empty() {
            drop(tx);
            if s.next_fire(None).unwrap().is_some_and(|at| at <= until) {
                assert!(
                    held_since.elapsed() < Duration::from_secs(20),
                    "held for good"
                );
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            return taken;
        }
        for e in &due {
            tx.approve(e.id, &to(), &json!({}), &lease(owner)).unwrap();
            taken.push(e.id);
        }
        tx.commit().unwrap();
    }
}

#[test]
fn two_workers_firing_at_once_claim_disjoint_emails_and_all_of_them() {
    let h = PostgresHarness::new();
    let mut first = h.open();
    let mut second = first.reopen().unwrap();
    for round in 0..10 {
        let all = schedule_many(&mut first, &format!("r{round}-"), 60, 6);
        let barrier = Barrier::new(2);
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                barrier.wait();
                fire_all(&mut first, "w1", 7)
            });
            let b = scope.spawn(|| {
                barrier.wait();
                fire_all(&mut second, "w2", 5)
            });
            (a.join().unwrap(), b.join().unwrap())
        });
        let (a_set, b_set): (BTreeSet<i64>, BTreeSet<i64>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        assert_eq!(a_set.len(), a.len(), "a worker took an email twice");
        assert_eq!(b_set.len(), b.len(), "a worker took an email twice");
        assert!(a_set.is_disjoint(&b_set), "round {round}: both took some");
        let union: BTreeSet<i64> = a_set.union(&b_set).copied().collect();
        assert_eq!(union, all, "round {round}: not all were claimed");
        let owners = lease_owners(&first);
        for id in &a_set {
            assert_eq!(owners[id].as_deref(), Some("w1"));
        }
        for id in &b_set {
            assert_eq!(owners[id].as_deref(), Some("w2"));
        }
    }
    assert!(lease_owners(&first).values().all(Option::is_some));
}

#[test]
fn a_worker_skips_the_emails_another_holds_instead_of_waiting() {
    let h = PostgresHarness::new();
    let mut first = h.open();
    let mut second = first.reopen().unwrap();
    schedule_many(&mut first, "k", 30, 30);
    // Both hold their claims at the same time; the second never waits
    // for the first (that would hit the lock timeout instead).
    let (claimed, took) = std::sync::mpsc::channel();
    let go = Barrier::new(2);
    let worker = |owner: &str, s: &mut PostgresStore| {
        let started = Instant::now();
        let mut tx = s.begin().unwrap();
        let due = tx.due(t("2026-01-03T00:00:00Z"), None, 10);
        claimed.send(started.elapsed()).unwrap();
        // Met whatever happened: a failing worker must not leave the
        // other waiting here forever.
        go.wait();
        let due = due.unwrap();
        for e in &due {
            tx.approve(e.id, &to(), &json!({}), &lease(owner)).unwrap();
        }
        tx.commit().unwrap();
        due.into_iter()
            .map(|e| (e.fire_at, e.id))
            .collect::<BTreeSet<_>>()
    };
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| worker("w1", &mut first));
        let b = scope.spawn(|| worker("w2", &mut second));
        for _ in 0..2 {
            let waited = took.recv_timeout(Duration::from_secs(60)).unwrap();
            assert!(waited < Duration::from_secs(5), "due() waited {waited:?}");
        }
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.len(), b.len()), (10, 10));
    assert!(a.is_disjoint(&b));
    // Between them, the twenty that fire first.
    let mut tx = first.begin().unwrap();
    let rest = tx.due(t("2026-01-03T00:00:00Z"), None, 100).unwrap();
    assert_eq!(rest.len(), 10);
    let last_taken = a.union(&b).max().copied().unwrap();
    assert!(rest.iter().all(|e| (e.fire_at, e.id) > last_taken));
}

#[test]
fn the_emails_of_a_customer_another_transaction_holds_wait_for_a_later_due() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let mut tx = a.begin().unwrap();
    tx.save_journey("c-1", &Journey::default()).unwrap();
    for (key, customer) in [("k1", "c-1"), ("k2", "c-2"), ("k3", "c-new")] {
        let e = NewEmail {
            customer_id: customer.into(),
            ..email(key, "o-1", key, "2026-01-02T00:00:00Z")
        };
        tx.schedule(&e, "s").unwrap();
    }
    tx.commit().unwrap();
    // A batch of events of c-1 (stored) and c-new (not yet) is under way.
    let mut batch = a.begin().unwrap();
    batch.journey("c-1").unwrap().unwrap();
    assert!(batch.journey("c-new").unwrap().is_none());
    let started = Instant::now();
    let mut firing = b.begin().unwrap();
    let due = firing.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
    firing.commit().unwrap();
    batch.commit().unwrap();
    let mut firing = b.begin().unwrap();
    let due = firing.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
    assert_eq!(
        due.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["k1", "k2", "k3"]
    );
}

#[test]
fn keys_written_before_escaping_are_rewritten_as_the_journey_now_builds_them() {
    // The first schema, rows in it as workers wrote them, then the
    // store opened: the later migrations rewrite the keys.
    let h = PostgresHarness::new();
    let mut client = super::super::suite::postgres_config()
        .connect(::postgres::NoTls)
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {0}; SET search_path TO {0}",
            quote_ident(&h.schema)
        ))
        .unwrap();
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(1))
        .run(&mut client)
        .unwrap();
    for (key, customer, template) in super::super::suite::LEGACY_KEYS {
        client
                .execute(
                    "INSERT INTO emails (key, customer_id, template, class, due_at, fire_at, status, data)
                     VALUES ($1, $2, $3, 'transactional', 0, 0, 'sent', '{}')",
                    &[&key, &customer, &template],
                )
                .unwrap();
    }
    client
        .execute(
            "INSERT INTO processed_events (event_id) VALUES ('e-1')",
            &[],
        )
        .unwrap();
    drop(client);
    let mut s = h.open();
    let mut keys: Vec<String> = s.email_statuses().into_iter().map(|e| e.0).collect();
    // In byte order, whatever the database's collation.
    keys.sort();
    assert_eq!(keys, super::super::suite::migrated_keys());
    // An event applied before digests were kept reads as a redelivery.
    let mut tx = s.begin().unwrap();
    assert_eq!(tx.seen("e-1").unwrap().as_deref(), Some(""));
}

#[test]
fn the_order_index_is_filled_from_the_journeys_already_stored() {
    let h = PostgresHarness::new();
    let mut client = super::super::suite::postgres_config()
        .connect(::postgres::NoTls)
        .unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {0}; SET search_path TO {0}",
            quote_ident(&h.schema)
        ))
        .unwrap();
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(3))
        .run(&mut client)
        .unwrap();
    for (customer, state) in super::super::suite::legacy_journeys() {
        client
            .execute(
                "INSERT INTO journeys (customer_id, state) VALUES ($1, $2)",
                &[&customer, &state],
            )
            .unwrap();
    }
    drop(client);
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    assert_eq!(
        super::super::suite::backfilled_index(&mut tx),
        super::super::suite::expected_index()
    );
}

#[test]
fn workers_migrating_a_new_schema_at_once_all_succeed() {
    for _ in 0..5 {
        let h = PostgresHarness::new();
        let barrier = Barrier::new(4);
        std::thread::scope(|scope| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        PostgresStore::with_config(
                            super::super::suite::postgres_config(),
                            Some(&h.schema),
                        )
                        .map(|_| ())
                    })
                })
                .collect();
            for worker in opened {
                worker.join().unwrap().unwrap();
            }
        });
        let s = h.open();
        let applied: Vec<(i32, String)> = s
            .with_client(|c| {
                Ok(c.query(
                    "SELECT version, name FROM refinery_schema_history ORDER BY version",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
            })
            .unwrap();
        let expected: Vec<(i32, String)> = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| (m.version(), m.name().to_owned()))
            .collect();
        assert_eq!(applied, expected);
    }
}

#[test]
fn a_dead_workers_expired_leases_are_taken_over_by_another() {
    let h = PostgresHarness::new();
    let until = t("2026-06-01T00:00:00Z");
    {
        let mut dead = h.open();
        schedule_many(&mut dead, "k", 5, 5);
        let mut tx = dead.begin().unwrap();
        for e in tx.due(t("2026-01-03T00:00:00Z"), None, 3).unwrap() {
            tx.approve(e.id, &to(), &json!({"n": 1}), &lease("w1"))
                .unwrap();
        }
        tx.commit().unwrap();
        // Gone without a release: its connection closes.
    }
    let mut w2 = h.open();
    let mut w3 = h.open();
    assert!(
        w2.reclaim(&lease("w2"), t("2026-05-31T23:59:59Z"), true)
            .unwrap()
            .is_empty()
    );
    let later = Lease {
        owner: "w2".into(),
        until: t("2026-06-01T00:05:00Z"),
    };
    let taken = w2.reclaim(&later, until, false).unwrap();
    assert_eq!(taken.len(), 3);
    assert!(taken.iter().all(|e| e.status == Status::Sending));
    assert!(taken.iter().all(|e| e.data == json!({"n": 1})));
    // Now w2's, until its own lease ends.
    assert!(
        w3.reclaim(&lease("w3"), t("2026-06-01T00:04:59Z"), false)
            .unwrap()
            .is_empty()
    );
    let owners = lease_owners(&w3);
    assert_eq!(
        owners
            .values()
            .filter(|o| o.as_deref() == Some("w2"))
            .count(),
        3
    );
    // The dead worker started again finds them gone.
    let mut w1 = h.open();
    assert!(w1.reclaim(&lease("w1"), until, true).unwrap().is_empty());
}

#[test]
fn workers_taking_over_at_once_take_disjoint_emails() {
    let h = PostgresHarness::new();
    let mut dead = h.open();
    for round in 0..5 {
        schedule_many(&mut dead, &format!("r{round}-"), 40, 40);
        fire_all(&mut dead, "dead", 40);
        let expected: BTreeSet<i64> = lease_owners(&dead)
            .into_iter()
            .filter(|(_, o)| o.as_deref() == Some("dead"))
            .map(|(id, _)| id)
            .collect();
        let mut stores: Vec<PostgresStore> = (0..3).map(|_| h.open()).collect();
        let barrier = Barrier::new(stores.len());
        let taken: Vec<Vec<i64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = stores
                .iter_mut()
                .enumerate()
                .map(|(i, s)| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let lease = Lease {
                            owner: format!("w{i}"),
                            until: t("2026-07-01T00:00:00Z"),
                        };
                        barrier.wait();
                        let rows = s.reclaim(&lease, t("2026-06-02T00:00:00Z"), false);
                        rows.unwrap().into_iter().map(|e| e.id).collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = BTreeSet::new();
        for ids in &taken {
            for id in ids {
                assert!(seen.insert(*id), "round {round}: {id} taken twice");
            }
        }
        assert_eq!(seen, expected, "round {round}");
        assert!(
            lease_owners(&dead)
                .values()
                .all(|o| o.as_deref() != Some("dead")),
            "round {round}: some left behind"
        );
        // Expired again for the next round.
        dead.with_client(|c| {
            c.execute(
                "UPDATE emails SET lease_owner = 'dead', lease_until = 0",
                &[],
            )?;
            Ok(())
        })
        .unwrap();
    }
}

#[test]
fn of_two_batches_applying_the_same_delivery_the_second_waits_then_cannot_commit() {
    // A worker whose intake lease ran out mid-batch, and the one that
    // took over, apply the same delivery at the same time.
    let h = PostgresHarness::new();
    let (mut first, mut second) = (h.open(), h.open());
    let at = t("2026-03-01T10:00:00Z");
    let Accepted::Stored(id) = first
        .intake_put("shop", Some("d-1"), &[], b"{}", at)
        .unwrap()
    else {
        panic!("a new delivery taken for a duplicate");
    };
    let mut tx = first.begin().unwrap();
    tx.intake_applied(&[id], at).unwrap();
    std::thread::scope(|scope| {
        let late = scope.spawn(|| {
            let mut tx = second.begin().unwrap();
            tx.mark_seen("e-1", "d").unwrap();
            let marked = tx.intake_applied(&[id], at);
            (marked, tx.commit())
        });
        // Long enough for the second to be waiting on the row.
        std::thread::sleep(Duration::from_millis(200));
        tx.commit().unwrap();
        let (marked, committed) = late.join().unwrap();
        assert!(
            matches!(marked, Err(StoreError::IntakeTakenOver { ref ids }) if ids == &[id]),
            "{marked:?}"
        );
        assert!(committed.is_err());
    });
    assert!(first.begin().unwrap().seen("e-1").unwrap().is_none());
    assert_eq!(first.intake_depth().unwrap(), 0);
}

#[test]
fn batches_of_two_workers_lose_no_update_of_the_shop_figures() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let add = |s: &mut PostgresStore| {
        for _ in 0..20 {
            let mut tx = s.begin().unwrap();
            let mut stats = tx.shop_stats().unwrap();
            stats
                .order_totals
                .entry("EUR".into())
                .or_default()
                .add("10".parse().unwrap());
            tx.save_shop_stats(&stats).unwrap();
            tx.commit().unwrap();
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| add(&mut a));
        scope.spawn(|| add(&mut b));
    });
    let mut tx = a.begin().unwrap();
    assert_eq!(tx.shop_stats().unwrap().order_totals["EUR"].count(), 40);
}

/// Adds `n` order totals of 10 EUR to the figures `tx` read, and saves them.
fn add_orders(tx: &mut impl Transaction, n: usize) {
    let mut stats = tx.shop_stats().unwrap();
    for _ in 0..n {
        stats
            .order_totals
            .entry("EUR".into())
            .or_default()
            .add("10".parse().unwrap());
    }
    tx.save_shop_stats(&stats).unwrap();
}

fn orders_counted(s: &mut PostgresStore) -> u64 {
    let mut tx = s.begin().unwrap();
    tx.shop_stats()
        .unwrap()
        .order_totals
        .get("EUR")
        .map_or(0, |h| h.count())
}

fn changes_stored(s: &PostgresStore) -> i64 {
    s.with_client(|c| {
        Ok(c.query_one("SELECT count(*) FROM shop_stats_changes", &[])?
            .get(0))
    })
    .unwrap()
}

#[test]
fn two_batches_change_the_shop_figures_side_by_side_and_both_count() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let mut first = a.begin().unwrap();
    add_orders(&mut first, 1);
    // Another worker's batch meanwhile: it reads, writes and commits while
    // the first is open, without waiting for it.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut second = b.begin().unwrap();
            add_orders(&mut second, 2);
            second.commit().unwrap();
            done.send(()).unwrap();
        });
        let waited = finished.recv_timeout(Duration::from_secs(10));
        assert!(waited.is_ok(), "the second batch waited for the first");
    });
    first.commit().unwrap();
    assert_eq!(orders_counted(&mut a), 3);
    // An empty change writes nothing.
    let mut tx = a.begin().unwrap();
    let stats = tx.shop_stats().unwrap();
    tx.save_shop_stats(&stats).unwrap();
    tx.commit().unwrap();
    assert_eq!(changes_stored(&a), 2);
}

#[test]
fn many_changes_are_folded_into_the_base_without_waiting_and_still_add_up() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    // Each reads fewer than 64 changes: none folds.
    for _ in 0..64 {
        let mut tx = a.begin().unwrap();
        add_orders(&mut tx, 1);
        tx.commit().unwrap();
    }
    assert_eq!(changes_stored(&a), 64);
    // The next reader folds them; until it commits, another reader finds
    // the base held and goes on without folding, or waiting.
    let mut folding = a.begin().unwrap();
    assert_eq!(
        folding.shop_stats().unwrap().order_totals["EUR"].count(),
        64
    );
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut other = b.begin().unwrap();
            add_orders(&mut other, 1);
            other.commit().unwrap();
            done.send(()).unwrap();
        });
        let waited = finished.recv_timeout(Duration::from_secs(10));
        assert!(waited.is_ok(), "a reader waited for the fold");
    });
    folding.commit().unwrap();
    assert_eq!(changes_stored(&a), 1, "the 64 folded, the one after kept");
    assert_eq!(orders_counted(&mut b), 65);
}

#[test]
fn an_event_applied_by_another_worker_meanwhile_rolls_the_batch_back() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let mut first = a.begin().unwrap();
    assert_eq!(first.seen("e-1").unwrap(), None);
    first.mark_seen("e-1", "d1").unwrap();
    std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            let mut second = b.begin().unwrap();
            assert_eq!(second.seen("e-1").unwrap(), None, "not committed yet");
            // Waits for the first to commit, then finds the id taken.
            second.mark_seen("e-1", "d2")
        });
        std::thread::sleep(Duration::from_millis(300));
        first.commit().unwrap();
        let err = second.join().unwrap().unwrap_err();
        assert!(matches!(err, StoreError::SeenMeanwhile { ref event_id } if event_id == "e-1"));
        assert!(err.is_transient(), "the batch is tried again");
    });
    let mut tx = b.begin().unwrap();
    assert_eq!(tx.seen("e-1").unwrap().as_deref(), Some("d1"));
}

#[test]
fn a_journey_is_changed_by_one_transaction_at_a_time() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let change = |s: &mut PostgresStore, from: u32| {
        for n in from..from + 20 {
            let mut tx = s.begin().unwrap();
            // Absent at first: both may try to make it.
            let mut j = tx.journey("c-9").unwrap().unwrap_or_default();
            j.milestones.insert(n);
            tx.save_journey("c-9", &j).unwrap();
            tx.commit().unwrap();
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| change(&mut a, 0));
        scope.spawn(|| change(&mut b, 1000));
    });
    let mut tx = a.begin().unwrap();
    assert_eq!(tx.journey("c-9").unwrap().unwrap().milestones.len(), 40);
}

#[test]
fn a_customer_made_by_one_transaction_is_seen_by_the_one_that_waited() {
    let h = PostgresHarness::new();
    let (mut a, mut b) = (h.open(), h.open());
    let mut first = a.begin().unwrap();
    assert!(first.journey("c-new").unwrap().is_none());
    let seen = std::thread::scope(|scope| {
        let second = scope.spawn(|| {
            let mut tx = b.begin().unwrap();
            tx.journey("c-new").unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut j = Journey::default();
        j.milestones.insert(3);
        first.save_journey("c-new", &j).unwrap();
        first.commit().unwrap();
        second.join().unwrap()
    });
    assert_eq!(seen.unwrap().milestones.len(), 1);
}

#[test]
fn a_transaction_with_a_failed_statement_does_not_commit() {
    let h = PostgresHarness::new();
    let mut s = h.open();
    let mut tx = s.begin().unwrap();
    tx.mark_seen("e-1", "d").unwrap();
    let failed = tx.call(|s| s.query("SELECT 1 / 0", &[]));
    let err = failed.err().unwrap();
    assert!(matches!(
        err,
        StoreError::Postgres(PostgresError::Postgres(_))
    ));
    // The server's own words, not only "db error".
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert!(tx.commit().is_err());
    // The handle goes on; nothing of that batch is there.
    let mut tx = s.begin().unwrap();
    assert!(tx.seen("e-1").unwrap().is_none());
    tx.mark_seen("e-2", "d").unwrap();
    tx.commit().unwrap();
    assert!(s.begin().unwrap().seen("e-2").unwrap().is_some());
}

#[test]
fn a_handle_connects_again_after_the_server_closed_its_connection() {
    let h = PostgresHarness::new();
    let mut s = h.open();
    suppress(&mut s, "a@example.com");
    let pid: i32 = s
        .with_client(|c| Ok(c.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
        .unwrap();
    let admin = h.open();
    admin
        .with_client(move |c| {
            c.execute("SELECT pg_terminate_backend($1)", &[&pid])?;
            Ok(())
        })
        .unwrap();
    // The first call may learn of it the hard way; the next one works.
    let _ = s.begin().map(|mut tx| tx.is_suppressed("a@example.com"));
    let mut tx = s.begin().unwrap();
    assert!(tx.is_suppressed("a@example.com").unwrap());
}

#[test]
fn the_store_works_from_async_code_and_can_be_dropped_there() {
    let h = PostgresHarness::new();
    let schema = h.schema.clone();
    for runtime in [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    ] {
        let schema = schema.clone();
        runtime.block_on(async move {
            let config = super::super::suite::postgres_config();
            let mut s = PostgresStore::with_config(config, Some(&schema)).unwrap();
            let mut tx = s.begin().unwrap();
            tx.schedule(&email("a", "o-1", "a", "2026-01-02T00:00:00Z"), "s")
                .ok();
            tx.commit().unwrap();
            let mut other = s.reopen().unwrap();
            assert_eq!(
                other.next_fire(None).unwrap(),
                Some(t("2026-01-02T00:00:00Z"))
            );
            let handle = tokio::spawn(async move {
                other.secret("x").unwrap();
                drop(other);
            });
            handle.await.unwrap();
            drop(s);
        });
    }
}

#[test]
fn a_failed_migration_says_why() {
    let h = PostgresHarness::new();
    let schema = &h.schema;
    let role = format!("{schema}_no_create");
    let mut admin = super::super::suite::postgres_config()
        .connect(postgres::NoTls)
        .unwrap();
    // A role that may use the schema but not create tables in it.
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE ROLE {role} LOGIN; \
                 GRANT USAGE ON SCHEMA {schema} TO {role};"
        ))
        .unwrap();
    let mut config = super::super::suite::postgres_config();
    config.user(&role);
    let outcome = PostgresStore::with_config(config, Some(schema));
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP OWNED BY {role}; DROP ROLE {role};"
        ))
        .unwrap();
    let err = outcome.err().expect("the migration fails").to_string();
    assert!(err.starts_with("migrating the postgres schema: "), "{err}");
    assert!(
        err.contains(&format!("permission denied for schema {schema}")),
        "{err}"
    );
}

#[test]
fn a_schema_can_be_named_in_the_url() {
    let h = PostgresHarness::new();
    let url = super::super::suite::postgres_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut s = PostgresStore::connect(&format!("{url}{sep}schema={}", h.schema)).unwrap();
    suppress(&mut s, "a@example.com");
    let mut other = h.open();
    assert!(
        other
            .begin()
            .unwrap()
            .is_suppressed("a@example.com")
            .unwrap()
    );
}

#[test]
fn a_schema_can_be_chosen_with_the_search_path() {
    let h = PostgresHarness::new();
    let mut made = h.open();
    suppress(&mut made, "a@example.com");
    let url = super::super::suite::postgres_url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let options = format!("options=-c%20search_path%3D{}", h.schema);
    let mut s = PostgresStore::connect(&format!("{url}{sep}{options}")).unwrap();
    assert!(s.begin().unwrap().is_suppressed("a@example.com").unwrap());
    // A schema that does not exist is not made: it says so.
    let missing = format!("{url}{sep}options=-c%20search_path%3D{}_none", h.schema);
    let err = PostgresStore::connect(&missing).err().unwrap();
    assert!(err.to_string().contains("search_path"), "{err}");
}

/// The test server's URL with `host` for its host, the harness' schema
/// and `params`.
fn url_with(h: &PostgresHarness, host: Option<&str>, params: &str) -> String {
    let mut url = ::url::Url::parse(&super::super::suite::postgres_url()).unwrap();
    if let Some(host) = host {
        url.set_host(Some(host)).unwrap();
    }
    let sep = if url.query().is_some() { '&' } else { '?' };
    format!("{url}{sep}schema={}{params}", h.schema)
}

/// Whether the store's own connection is encrypted, as the server sees it.
fn encrypted(store: &PostgresStore) -> bool {
    store
        .with_client(|c| {
            Ok(c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .get(0))
        })
        .unwrap()
}

/// The test server's certificate (PEM), which is also its own root: a
/// self-signed certificate for `localhost` (Debian's snakeoil one).
fn server_certificate(h: &PostgresHarness) -> String {
    let store = PostgresStore::connect(&url_with(h, None, "&sslmode=disable")).unwrap();
    let (ssl, file): (String, String) = store
        .with_client(|c| {
            let ssl = c.query_one("SHOW ssl", &[])?.get(0);
            let file = c.query_one("SHOW ssl_cert_file", &[])?.get(0);
            Ok((ssl, file))
        })
        .unwrap();
    assert_eq!(ssl, "on", "the test server must offer TLS (ssl = on)");
    file
}

#[test]
fn tls_is_used_as_sslmode_says_on_the_real_server() {
    let h = PostgresHarness::new();
    // By default, as libpq: TLS, since the server offers it.
    assert!(encrypted(
        &PostgresStore::connect(&url_with(&h, None, "")).unwrap()
    ));
    for (params, tls) in [("&sslmode=disable", false), ("&sslmode=require", true)] {
        let store = PostgresStore::connect(&url_with(&h, None, params)).unwrap();
        assert_eq!(encrypted(&store), tls, "{params}");
    }
}

#[test]
fn verify_full_checks_the_chain_and_the_name_and_verify_ca_only_the_chain() {
    let h = PostgresHarness::new();
    let root = server_certificate(&h);
    let trusted = format!("&sslmode=verify-full&sslrootcert={root}");
    let store = PostgresStore::connect(&url_with(&h, Some("localhost"), &trusted)).unwrap();
    assert!(encrypted(&store));

    // The certificate is for `localhost`, not for 127.0.0.1.
    let err = PostgresStore::connect(&url_with(&h, Some("127.0.0.1"), &trusted))
        .err()
        .expect("a certificate for another name taken")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    let chain = format!("&sslmode=verify-ca&sslrootcert={root}");
    let store = PostgresStore::connect(&url_with(&h, Some("127.0.0.1"), &chain)).unwrap();
    assert!(encrypted(&store));

    // A root that did not sign it: refused, by name or not.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&other, cert.cert.pem()).unwrap();
    for mode in ["verify-ca", "verify-full", "require"] {
        let params = format!("&sslmode={mode}&sslrootcert={}", other.display());
        let err = PostgresStore::connect(&url_with(&h, Some("localhost"), &params))
            .err()
            .unwrap_or_else(|| panic!("{mode}: an unknown issuer taken"))
            .to_string();
        assert!(err.contains("certificate"), "{mode}: {err}");
    }
    // Without sslrootcert, verify-full trusts the Mozilla roots only.
    let err = PostgresStore::connect(&url_with(&h, Some("localhost"), "&sslmode=verify-full"))
        .err()
        .expect("a self-signed certificate taken without its root")
        .to_string();
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn quote_ident_doubles_quotes() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}
