//! One batch's transaction.

use std::collections::HashSet;

use jiff::Timestamp;
use postgres::Row;
use serde_json::Value;

use super::session::{Session, lock_key};
use super::{PostgresStore, email_rows, from_ms, ms, now_ms, select_emails};
use crate::journey::{Data, Journey, NewEmail, Selector, ShopDelta, ShopStats, Verdict};
use crate::store::{
    Addressee, EmailRow, Lease, ParkedEvent, Result, Status, StoreError, Transaction, taken_over,
};

/// Changes to the shop figures a reader may find before it folds them into
/// the base: enough that folding is rare, few enough that reading them
/// (every batch does) stays cheap.
const FOLD_AT: usize = 64;

/// The shop figures from their base and the changes since, in order.
fn shop_figures(base: Option<&[u8]>, changes: &[Vec<u8>]) -> ShopStats {
    let mut stats: ShopStats = base
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .unwrap_or_default();
    for change in changes {
        // A change that does not read (written by a later version, say)
        // is left out rather than stopping every batch.
        if let Ok(delta) = serde_json::from_slice::<ShopDelta>(change) {
            stats.apply(&delta);
        }
    }
    stats
}

/// One batch's transaction. Dropped without [`Transaction::commit`], it
/// rolls back.
pub struct PostgresTx<'a> {
    store: &'a mut PostgresStore,
    /// Not yet committed or rolled back.
    open: bool,
    /// The shop figures as this transaction read them: what it writes is
    /// its change from these.
    stats_read: Option<ShopStats>,
    /// The data last stored in `email_data` and its row: the emails one
    /// event schedules come one after the other with the same data.
    shared: Option<(Data, i64)>,
    /// The event ids this transaction marked seen.
    marked: HashSet<String>,
}

impl<'a> PostgresTx<'a> {
    /// A transaction `store` has just begun.
    pub(super) fn new(store: &'a mut PostgresStore) -> PostgresTx<'a> {
        PostgresTx {
            store,
            open: true,
            stats_read: None,
            shared: None,
            marked: HashSet::new(),
        }
    }

    pub(super) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.store.conn.call(f)
    }

    fn insert(
        &mut self,
        e: &NewEmail,
        stream: &str,
        status: Status,
        reason: Option<&str>,
        to: Option<&Addressee>,
    ) -> Result<bool> {
        let key = e.key.clone();
        let customer_id = e.customer_id.clone();
        let template = e.template.clone();
        let class = e.class.as_str();
        let order_id = e.order_id.clone();
        let due_at = ms(e.due_at);
        let status = status.as_str();
        let reason = reason.map(str::to_owned);
        let recipient = to.and_then(|t| t.recipient.clone());
        let locale = to.map(|t| t.locale.clone());
        let stream = stream.to_owned();
        let variant = e.variant.clone();
        // The data's row: the one stored for the email before if it is the
        // same data, else a new one (taken back if no email uses it).
        let shared = match &self.shared {
            Some((last, id)) if last.is_shared_with(&e.data) => Ok(*id),
            _ => Err(e.data.json().to_owned()),
        };
        let (inserted, data_id) = self.call(move |s| {
            let data_id = match &shared {
                Ok(id) => *id,
                Err(data) => s
                    .query_one(
                        "INSERT INTO email_data (data) VALUES ($1) RETURNING id",
                        &[data],
                    )?
                    .try_get(0)?,
            };
            let n = s.execute(
                concat!(
                    "INSERT INTO emails (key, customer_id, template, class, order_id, due_at,
                         fire_at, status, reason, data, data_id, recipient, locale, stream,
                         variant, decided_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, '', $9, $10, $11, $12, $13,
                         CASE WHEN $7 = 'pending' THEN NULL ELSE ",
                    now_ms!(),
                    " END)
                     ON CONFLICT (key) DO NOTHING"
                ),
                &[
                    &key,
                    &customer_id,
                    &template,
                    &class,
                    &order_id,
                    &due_at,
                    &status,
                    &reason,
                    &data_id,
                    &recipient,
                    &locale,
                    &stream,
                    &variant,
                ],
            )?;
            if n == 0 && shared.is_err() {
                // Already scheduled: the row made for it serves no email.
                s.execute("DELETE FROM email_data WHERE id = $1", &[&data_id])?;
                return Ok((false, None));
            }
            Ok((n == 1, Some(data_id)))
        })?;
        self.shared = data_id.map(|id| (e.data.clone(), id));
        Ok(inserted)
    }
}

impl Drop for PostgresTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Queued, not awaited: the next call on this handle runs after it.
            self.store.conn.post(|s| {
                let _ = s.finish(false);
            });
        }
    }
}

impl Transaction for PostgresTx<'_> {
    fn seen(&mut self, event_id: &str) -> Result<Option<String>> {
        let event_id = event_id.to_owned();
        self.call(move |s| {
            let rows = s.query(
                "SELECT coalesce(digest, '') FROM processed_events WHERE event_id = $1",
                &[&event_id],
            )?;
            Ok(rows.first().map(|r| r.get(0)))
        })
    }

    fn mark_seen(&mut self, event_id: &str, digest: &str) -> Result<()> {
        if !self.marked.insert(event_id.to_owned()) {
            return Ok(());
        }
        let (event_id, digest) = (event_id.to_owned(), digest.to_owned());
        self.call(move |s| {
            // Marked already, not by this transaction: another one applied
            // the event after `seen()` (the conflict waits for it to
            // commit). Events of one order take turns on its lock; this is
            // an id reused across orders, which the lock does not order.
            let marked = s.execute(
                "INSERT INTO processed_events (event_id, digest) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&event_id, &digest],
            )?;
            if marked == 0 {
                return Err(StoreError::SeenMeanwhile { event_id });
            }
            Ok(())
        })
    }

    fn journey(&mut self, customer_id: &str) -> Result<Option<Journey>> {
        let customer = customer_id.to_owned();
        let state: Option<String> = self.call(move |s| {
            const SQL: &str = "SELECT state FROM journeys WHERE customer_id = $1 FOR UPDATE";
            let rows = s.query(SQL, &[&customer])?;
            if let Some(row) = rows.first() {
                return Ok(Some(row.try_get(0)?));
            }
            // Nothing to lock yet: lock the id, then look again (another
            // transaction may have made it while this one waited).
            let key = lock_key(&["journey", &s.schema, &customer]);
            s.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
            let rows = s.query(SQL, &[&customer])?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
        })?;
        state
            .map(|s| {
                serde_json::from_str(&s).map_err(|error| StoreError::Corrupt {
                    customer: customer_id.to_owned(),
                    error,
                })
            })
            .transpose()
    }

    fn save_journey(&mut self, customer_id: &str, journey: &Journey) -> Result<()> {
        let state = serde_json::to_string(journey).map_err(|error| StoreError::Corrupt {
            customer: customer_id.to_owned(),
            error,
        })?;
        let customer = customer_id.to_owned();
        self.call(move |s| {
            s.execute(
                "INSERT INTO journeys (customer_id, state) VALUES ($1, $2)
                 ON CONFLICT (customer_id) DO UPDATE SET state = excluded.state",
                &[&customer, &state],
            )?;
            Ok(())
        })
    }

    fn schedule(&mut self, email: &NewEmail, stream: &str) -> Result<bool> {
        self.insert(email, stream, Status::Pending, None, None)
    }

    fn record(
        &mut self,
        email: &NewEmail,
        verdict: Verdict,
        reason: &str,
        to: &Addressee,
    ) -> Result<bool> {
        self.insert(email, "", verdict.into(), Some(reason), Some(to))
    }

    fn cancel(&mut self, selector: &Selector, reason: &str, to: &Addressee) -> Result<Vec<String>> {
        let customer_id = selector.customer_id.clone();
        let order_id = selector.order_id.clone();
        let templates = selector.templates.clone();
        let reason = reason.to_owned();
        let (recipient, locale) = (to.recipient.clone(), to.locale.clone());
        self.call(move |s| {
            let rows = s.query(
                concat!(
                    "UPDATE emails SET status = 'cancelled', reason = $3, recipient = $4,
                         locale = $5, decided_at = ",
                    now_ms!(),
                    " WHERE status = 'pending' AND customer_id = $1 AND order_id = $2
                       AND ($6::text[] IS NULL OR template = ANY($6::text[]))
                     RETURNING template"
                ),
                &[
                    &customer_id,
                    &order_id,
                    &reason,
                    &recipient,
                    &locale,
                    &templates,
                ],
            )?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        let streams = streams.map(<[String]>::to_vec);
        self.call(move |s| s.next_fire(streams.as_deref()))
    }

    fn due(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<EmailRow>> {
        let until = ms(until);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let streams = streams.map(<[String]>::to_vec);
        // Claimed until the commit; another worker's due() skips them.
        self.call(move |s| {
            let rows = match &streams {
                None => s.query(
                    select_emails!(
                        "WHERE status = 'pending' AND fire_at <= $1
                          ORDER BY fire_at, emails.id LIMIT $2
                          FOR UPDATE OF emails SKIP LOCKED"
                    ),
                    &[&until, &limit],
                )?,
                Some(streams) => s.query(
                    select_emails!(
                        "WHERE status = 'pending' AND fire_at <= $1
                            AND stream = ANY($3)
                          ORDER BY fire_at, emails.id LIMIT $2
                          FOR UPDATE OF emails SKIP LOCKED"
                    ),
                    &[&until, &limit, streams],
                )?,
            };
            let emails = email_rows(&rows)?;
            let ready = s.claim_customers(&emails)?;
            Ok(emails
                .into_iter()
                .filter(|e| ready.contains(&e.customer_id))
                .collect())
        })
    }

    fn approve(&mut self, id: i64, to: &Addressee, data: &Value, lease: &Lease) -> Result<()> {
        let (recipient, locale) = (to.recipient.clone(), to.locale.clone());
        let data = data.to_string();
        let (owner, until) = (lease.owner.clone(), ms(lease.until));
        self.call(move |s| {
            s.execute(
                concat!(
                    "UPDATE emails SET status = 'sending', recipient = $2, locale = $3,
                         data = $4, data_id = NULL, lease_owner = $5, lease_until = $6,
                         first_attempt_at = coalesce(first_attempt_at, ",
                    now_ms!(),
                    ") WHERE id = $1"
                ),
                &[&id, &recipient, &locale, &data, &owner, &until],
            )?;
            Ok(())
        })
    }

    fn shop_stats(&mut self) -> Result<ShopStats> {
        let (base, changes) = self.call(|s| s.shop_stats())?;
        let stats = shop_figures(base.as_deref(), &changes);
        if changes.len() >= FOLD_AT {
            // Never waits: another transaction folding holds the base.
            self.call(|s| {
                s.fold_shop_stats(|base, changes| {
                    serde_json::to_vec(&shop_figures(base.as_deref(), &changes)).unwrap_or_default()
                })
            })?;
        }
        self.stats_read = Some(stats.clone());
        Ok(stats)
    }

    fn save_shop_stats(&mut self, stats: &ShopStats) -> Result<()> {
        // Only the change is written: another worker's batch, reading the
        // same figures meanwhile, writes its own, and both count. Not read
        // first: the change is from the figures as they are.
        let read = match self.stats_read.take() {
            Some(read) => read,
            None => self.shop_stats()?,
        };
        let delta = stats.since(&read);
        self.stats_read = Some(stats.clone());
        if delta.is_empty() {
            return Ok(());
        }
        let value = serde_json::to_vec(&delta).unwrap_or_default();
        self.call(move |s| {
            s.execute(
                "INSERT INTO shop_stats_changes (value) VALUES ($1)",
                &[&value],
            )?;
            Ok(())
        })
    }

    fn pending_of(&mut self, customer_id: &str, until: Timestamp) -> Result<Vec<EmailRow>> {
        let (customer_id, until) = (customer_id.to_owned(), ms(until));
        self.call(move |s| {
            let rows = s.query(
                select_emails!(
                    "WHERE status = 'pending' AND customer_id = $1 AND fire_at <= $2
                      ORDER BY fire_at, emails.id"
                ),
                &[&customer_id, &until],
            )?;
            email_rows(&rows)
        })
    }

    fn postpone(&mut self, id: i64, fire_at: Timestamp, reason: &str) -> Result<()> {
        let (fire_at, reason) = (ms(fire_at), reason.to_owned());
        self.call(move |s| {
            s.execute(
                "UPDATE emails SET fire_at = $2, deferred = $3 WHERE id = $1 AND status = 'pending'",
                &[&id, &fire_at, &reason],
            )?;
            Ok(())
        })
    }

    fn decide(&mut self, id: i64, verdict: Verdict, reason: &str, to: &Addressee) -> Result<()> {
        let status = Status::from(verdict).as_str();
        let reason = reason.to_owned();
        let (recipient, locale) = (to.recipient.clone(), to.locale.clone());
        self.call(move |s| {
            s.execute(
                concat!(
                    "UPDATE emails SET status = $2, reason = $3, recipient = $4, locale = $5,
                         decided_at = ",
                    now_ms!(),
                    " WHERE id = $1"
                ),
                &[&id, &status, &reason, &recipient, &locale],
            )?;
            Ok(())
        })
    }

    fn is_suppressed(&mut self, address: &str) -> Result<bool> {
        let address = address.to_lowercase();
        self.call(move |s| {
            let rows = s.query(
                "SELECT 1 FROM suppressed_addresses WHERE address = $1",
                &[&address],
            )?;
            Ok(!rows.is_empty())
        })
    }

    fn set_position(&mut self, source: &str, position: &str) -> Result<()> {
        let (source, position) = (source.to_owned(), position.to_owned());
        self.call(move |s| {
            s.execute(
                "INSERT INTO positions (source, position) VALUES ($1, $2)
                 ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                &[&source, &position],
            )?;
            Ok(())
        })
    }

    fn order_customer(&mut self, order_id: &str) -> Result<Option<String>> {
        let order = order_id.to_owned();
        self.call(move |s| {
            // Held to the commit, as `index_order` holds it: an order being
            // placed by another transaction is waited for, then seen.
            lock_order(s, &order)?;
            let rows = s.query(
                "SELECT customer_id FROM order_customers WHERE order_id = $1",
                &[&order],
            )?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn index_order(&mut self, order_id: &str, customer_id: &str) -> Result<()> {
        let (order, customer) = (order_id.to_owned(), customer_id.to_owned());
        self.call(move |s| {
            lock_order(s, &order)?;
            s.execute(
                "INSERT INTO order_customers (order_id, customer_id) VALUES ($1, $2)
                 ON CONFLICT (order_id) DO NOTHING",
                &[&order, &customer],
            )?;
            Ok(())
        })
    }

    fn park(&mut self, parked: &ParkedEvent) -> Result<bool> {
        let event = parked.event_json()?;
        let event_id = parked.event.id.clone();
        let order_id = parked.event.kind.order_id().to_owned();
        let occurred_at = ms(parked.event.occurred_at);
        let expires_at = ms(parked.expires_at);
        let raw = parked.raw.clone();
        let key = parked.key.clone();
        let source = parked.source.clone();
        let coordinates = parked.coordinates.to_string();
        let stream = parked.stream.clone();
        self.call(move |s| {
            let n = s.execute(
                "INSERT INTO parked_events (event_id, order_id, occurred_at, expires_at, event,
                     raw, key, source, coordinates, stream)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (event_id) DO NOTHING",
                &[
                    &event_id,
                    &order_id,
                    &occurred_at,
                    &expires_at,
                    &event,
                    &raw,
                    &key,
                    &source,
                    &coordinates,
                    &stream,
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn unpark(&mut self, order_id: &str) -> Result<Vec<ParkedEvent>> {
        let order = order_id.to_owned();
        let rows = self.call(move |s| {
            s.query(
                concat!(
                    "DELETE FROM parked_events WHERE order_id = $1 RETURNING ",
                    parked_columns!(),
                    ", occurred_at, seq"
                ),
                &[&order],
            )
        })?;
        parked_events(rows)
    }

    fn expire_parked(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>> {
        let until = ms(until);
        let streams = streams.map(<[String]>::to_vec);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.call(move |s| {
            // SKIP LOCKED: an event another worker's batch is taking for
            // its order (or expiring) is left to it.
            let rows = s.query(
                concat!(
                    "DELETE FROM parked_events WHERE event_id IN (
                         SELECT event_id FROM parked_events
                         WHERE expires_at <= $1 AND ($2::text[] IS NULL OR stream = ANY($2))
                         ORDER BY expires_at, seq LIMIT $3
                         FOR UPDATE SKIP LOCKED)
                     RETURNING ",
                    parked_columns!(),
                    ", expires_at, seq"
                ),
                &[&until, &streams, &limit],
            )?;
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            s.execute(
                "DELETE FROM processed_events WHERE event_id = ANY($1)",
                &[&ids],
            )?;
            Ok(rows)
        })?;
        parked_events(rows)
    }

    fn intake_applied(&mut self, ids: &[i64], at: Timestamp) -> Result<()> {
        let (list, at) = (ids.to_vec(), ms(at));
        // Checked on the connection's thread: failed there, the
        // transaction can no longer commit.
        self.call(move |s| {
            // A row another worker's open batch marks is waited for, then
            // seen applied (READ COMMITTED reads it again): not marked here.
            let rows = s.query(
                "UPDATE intake SET applied_at = $2, body = NULL
                 WHERE id = ANY($1) AND applied_at IS NULL
                 RETURNING id",
                &[&list, &at],
            )?;
            let marked: Vec<i64> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            taken_over(&list, &marked)
        })
    }

    fn commit(mut self) -> Result<()> {
        self.open = false;
        self.call(|s| s.finish(true))
    }
}

/// The columns [`parked_events`] reads first, in its order.
macro_rules! parked_columns {
    () => {
        "event_id, event, expires_at, raw, key, source, coordinates, stream"
    };
}
use parked_columns;

/// Parked events from rows of [`parked_columns`] and two sort keys (a time
/// and the arrival order), in that order: `RETURNING` gives none.
fn parked_events(rows: Vec<Row>) -> Result<Vec<ParkedEvent>> {
    let mut keyed = Vec::with_capacity(rows.len());
    for r in &rows {
        let event_id: String = r.try_get(0)?;
        let event: String = r.try_get(1)?;
        let coordinates: String = r.try_get(6)?;
        let parked = ParkedEvent::from_stored(
            &event_id,
            &event,
            from_ms(r.try_get(2)?),
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            &coordinates,
            r.try_get(7)?,
        )?;
        keyed.push(((r.try_get::<_, i64>(8)?, r.try_get::<_, i64>(9)?), parked));
    }
    keyed.sort_by_key(|(key, _)| *key);
    Ok(keyed.into_iter().map(|(_, parked)| parked).collect())
}

/// Takes the transaction's lock on an order id: whoever indexes the order
/// and whoever looks it up to park an event go one after the other.
fn lock_order(s: &mut Session, order_id: &str) -> Result<()> {
    let key = lock_key(&["order", &s.schema, order_id]);
    s.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
    Ok(())
}
