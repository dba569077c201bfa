//! The store's calls outside a batch's transaction.

use std::sync::Arc;

use jiff::Timestamp;

use super::session::{Connection, Session};
use super::transaction::PostgresTx;
use super::{PostgresStore, email_rows, from_ms, ms, now_ms, select_emails, session_error};
use crate::journey::{EmailClass, Journey};
use crate::store::{
    Accepted, Backlog, EmailRow, INTAKE_LEASE, IntakeRow, Lease, OVERDUE_AFTER, Outcome, Result,
    SentEmail, Status, Store, StoreError, headers_from_json, headers_json,
};

impl Store for PostgresStore {
    type Tx<'a> = PostgresTx<'a>;

    const DECIDES_DUE_IN_INGEST: bool = false;

    fn begin(&mut self) -> Result<PostgresTx<'_>> {
        self.conn.call(Session::begin)?;
        Ok(PostgresTx::new(self))
    }

    fn position(&mut self, source: &str) -> Result<Option<String>> {
        let source = source.to_owned();
        self.conn.call(move |s| {
            let rows = s.query(
                "SELECT position FROM positions WHERE source = $1",
                &[&source],
            )?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        let streams = streams.map(<[String]>::to_vec);
        self.conn.call(move |s| s.next_fire(streams.as_deref()))
    }

    fn next_expiry(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        let streams = streams.map(<[String]>::to_vec);
        let next: Option<i64> = self.conn.call(move |s| {
            let rows = match &streams {
                None => s.query("SELECT min(expires_at) FROM parked_events", &[])?,
                Some(streams) => s.query(
                    "SELECT min(expires_at) FROM parked_events WHERE stream = ANY($1)",
                    &[streams],
                )?,
            };
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?.flatten())
        })?;
        Ok(next.map(from_ms))
    }

    fn reclaim(&mut self, lease: &Lease, now: Timestamp, own: bool) -> Result<Vec<EmailRow>> {
        let (owner, until, now) = (lease.owner.clone(), ms(lease.until), ms(now));
        self.conn.call(move |s| {
            let taken: Vec<i64> = s
                .query(
                    "UPDATE emails SET lease_owner = $1, lease_until = $2
                     WHERE id IN (
                         SELECT id FROM emails
                         WHERE status = 'sending'
                           AND (($4 AND lease_owner = $1)
                                OR (lease_until <= $3 AND lease_owner IS DISTINCT FROM $1))
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                    &[&owner, &until, &now, &own],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            // Now this worker's: read as they are, the new lease included.
            let rows = s.query(
                select_emails!("WHERE emails.id = ANY($1) ORDER BY emails.id"),
                &[&taken],
            )?;
            email_rows(&rows)
        })
    }

    fn secret(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::Random(e.to_string()))?;
        let key = format!("secret:{name}");
        self.conn.call(move |s| {
            // The first worker to ask makes it; everyone reads the same.
            s.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key, &fresh.as_slice()],
            )?;
            let row = s.query("SELECT value FROM meta WHERE key = $1", &[&key])?;
            let value = row.first().map(|r| r.try_get(0)).transpose()?;
            value.ok_or_else(|| session_error(format!("secret `{key}` vanished")))
        })
    }

    fn stored_secret(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let key = format!("secret:{name}");
        self.conn.call(move |s| {
            let row = s.query("SELECT value FROM meta WHERE key = $1", &[&key])?;
            Ok(row.first().map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn release(&mut self, ids: &[i64]) -> Result<()> {
        let ids = ids.to_vec();
        self.conn.call(move |s| {
            s.execute(
                "UPDATE emails SET lease_until = 0 WHERE status = 'sending' AND id = ANY($1)",
                &[&ids],
            )?;
            Ok(())
        })
    }

    fn renew(&mut self, ids: &[i64], lease: &Lease) -> Result<Vec<i64>> {
        let (ids, owner, until) = (ids.to_vec(), lease.owner.clone(), ms(lease.until));
        self.conn.call(move |s| {
            // A row another worker is taking over is waited for, then seen
            // with its new owner (READ COMMITTED reads it again).
            let rows = s.query(
                "UPDATE emails SET lease_until = $3
                 WHERE id = ANY($1) AND status = 'sending' AND lease_owner = $2
                 RETURNING id",
                &[&ids, &owner, &until],
            )?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn record_deliveries(&mut self, outcomes: &[(i64, Outcome)]) -> Result<()> {
        let outcomes = outcomes.to_vec();
        self.conn.call(move |s| {
            s.begin()?;
            let done = outcomes
                .iter()
                .try_for_each(|(id, outcome)| record(s, *id, outcome));
            // A failed statement leaves nothing behind: rolled back.
            if let Err(error) = done {
                let _ = s.finish(false);
                return Err(error);
            }
            s.finish(true)
        })
    }

    fn go_live(&mut self, now: Timestamp) -> Result<Timestamp> {
        let now = ms(now);
        self.conn.call(move |s| {
            s.execute(
                "INSERT INTO meta (key, value)
                 SELECT 'go_live', convert_to(
                     CASE WHEN EXISTS (SELECT 1 FROM journeys) THEN '0' ELSE $1::bigint::text END,
                     'UTF8')
                 ON CONFLICT DO NOTHING",
                &[&now],
            )?;
            let rows = s.query("SELECT value FROM meta WHERE key = 'go_live'", &[])?;
            let value: Vec<u8> = match rows.first() {
                Some(row) => row.try_get(0)?,
                None => Vec::new(),
            };
            Ok(from_ms(crate::store::sqlite::meta_ms(&value)))
        })
    }

    fn overdue(&mut self, now: Timestamp) -> Result<Vec<(String, Timestamp)>> {
        let now = ms(now);
        self.conn.call(move |s| {
            let rows = s.query(
                "SELECT template, due_at FROM emails WHERE status = 'pending' AND fire_at <= $1",
                &[&now],
            )?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, from_ms(r.try_get(1)?))))
                .collect()
        })
    }

    fn decisions(&mut self) -> Result<Vec<EmailRow>> {
        self.conn.call(|s| {
            let rows = s.query(
                select_emails!(
                    "WHERE status IN ('sent', 'cancelled', 'suppressed', 'held_out')
                      ORDER BY due_at, emails.id"
                ),
                &[],
            )?;
            email_rows(&rows)
        })
    }

    fn backlog(&mut self, now: Timestamp) -> Result<Backlog> {
        let overdue_before = ms(now - OVERDUE_AFTER);
        self.conn.call(move |s| {
            let rows = s.query(
                "SELECT count(*), count(*) FILTER (WHERE fire_at < $1),
                     (SELECT count(*) FROM parked_events),
                     (SELECT count(*) FROM intake WHERE applied_at IS NULL)
                 FROM emails WHERE status = 'pending'",
                &[&overdue_before],
            )?;
            let (pending, overdue, parked, intake): (i64, i64, i64, i64) = match rows.first() {
                Some(r) => (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?),
                None => (0, 0, 0, 0),
            };
            Ok(Backlog {
                pending: u64::try_from(pending).unwrap_or(0),
                overdue: u64::try_from(overdue).unwrap_or(0),
                parked: u64::try_from(parked).unwrap_or(0),
                intake: u64::try_from(intake).unwrap_or(0),
            })
        })
    }

    fn journeys(&mut self) -> Result<Vec<(String, Journey)>> {
        self.conn.call(|s| {
            let rows = s.query(
                "SELECT customer_id, state FROM journeys ORDER BY customer_id",
                &[],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let customer: String = r.try_get(0)?;
                let state: String = r.try_get(1)?;
                let journey =
                    serde_json::from_str(&state).map_err(|error| StoreError::Corrupt {
                        customer: customer.clone(),
                        error,
                    })?;
                out.push((customer, journey));
            }
            Ok(out)
        })
    }

    fn sent_emails(&mut self) -> Result<Vec<SentEmail>> {
        self.conn.call(|s| {
            let rows = s.query(
                "SELECT customer_id, template, variant, fire_at, class, status FROM emails
                 WHERE status IN ('sent', 'held_out') ORDER BY fire_at, id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(SentEmail {
                        customer_id: r.try_get(0)?,
                        template: r.try_get(1)?,
                        variant: r.try_get(2)?,
                        at: from_ms(r.try_get(3)?),
                        class: EmailClass::from_stored(&r.try_get::<_, String>(4)?),
                        held_out: r.try_get::<_, String>(5)? == Status::HeldOut.as_str(),
                    })
                })
                .collect()
        })
    }

    /// Committed on its own; durable at commit as PostgreSQL's default
    /// `synchronous_commit = on` makes it (a server set to `off` may lose
    /// the last moments' commits to a crash of its machine).
    fn intake_put(
        &mut self,
        source: &str,
        delivery_id: Option<&str>,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Accepted> {
        let (source, delivery_id) = (source.to_owned(), delivery_id.map(str::to_owned));
        let (headers, body, received_at) = (headers_json(headers), body.to_vec(), ms(received_at));
        let id: Option<i64> = self.conn.call(move |s| {
            let rows = s.query(
                "INSERT INTO intake (source, delivery_id, headers, body, received_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT DO NOTHING
                 RETURNING id",
                &[&source, &delivery_id, &headers, &body, &received_at],
            )?;
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
        })?;
        Ok(id.map_or(Accepted::Duplicate, Accepted::Stored))
    }

    fn intake_depth(&mut self) -> Result<u64> {
        self.conn.call(|s| {
            let rows = s.query("SELECT count(*) FROM intake WHERE applied_at IS NULL", &[])?;
            let n: i64 = match rows.first() {
                Some(r) => r.try_get(0)?,
                None => 0,
            };
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn intake_lease(&mut self, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool> {
        let (owner, now, until) = (owner.to_owned(), ms(now), ms(until));
        self.conn.call(move |s| {
            // The conflicting row is locked and its condition checked on
            // its latest version: of two workers racing, the second waits
            // for the first's commit, then finds the lease taken.
            let rows = s.query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $4)
                 ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= $3
                 RETURNING holder",
                &[&INTAKE_LEASE, &owner, &now, &until],
            )?;
            Ok(!rows.is_empty())
        })
    }

    fn intake_next(&mut self, max: usize) -> Result<Vec<IntakeRow>> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.conn.call(move |s| {
            let rows = s.query(
                "SELECT id, source, delivery_id, headers, body, received_at FROM intake
                 WHERE applied_at IS NULL ORDER BY id LIMIT $1",
                &[&max],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(IntakeRow {
                        id: r.try_get(0)?,
                        source: r.try_get(1)?,
                        delivery_id: r.try_get(2)?,
                        headers: headers_from_json(r.try_get(3)?),
                        body: r.try_get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                        received_at: from_ms(r.try_get(5)?),
                    })
                })
                .collect()
        })
    }

    fn intake_purge(&mut self, before: Timestamp) -> Result<u64> {
        let before = ms(before);
        self.conn.call(move |s| {
            s.execute(
                "DELETE FROM intake WHERE applied_at IS NOT NULL AND applied_at < $1",
                &[&before],
            )
        })
    }

    fn reopen(&self) -> Result<PostgresStore> {
        Ok(PostgresStore {
            conn: Connection::open(Arc::clone(&self.settings), false)?,
            settings: Arc::clone(&self.settings),
        })
    }
}

/// Writes what became of email `id`, in the session's open transaction
/// (see [`Store::record_deliveries`]).
fn record(s: &mut Session, id: i64, outcome: &Outcome) -> Result<()> {
    const FAIL: &str = "UPDATE emails SET status = 'failed', reason = $2,
             attempts = attempts + 1 WHERE id = $1";
    match outcome {
        Outcome::Sent { at, reply } => s.execute(
            "UPDATE emails SET status = 'sent', decided_at = $2, last_reply = $3,
                 attempts = attempts + 1 WHERE id = $1",
            &[&id, &ms(*at), reply],
        )?,
        Outcome::Retry { at, reply } => s.execute(
            "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3,
                 attempts = attempts + 1 WHERE id = $1",
            &[&id, &ms(*at), reply],
        )?,
        Outcome::Ambiguous { at, reply } => s.execute(
            "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3,
                 attempts = attempts + 1, ambiguous_attempts = ambiguous_attempts + 1
             WHERE id = $1",
            &[&id, &ms(*at), reply],
        )?,
        Outcome::Deferred { at, reply } => s.execute(
            "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3
             WHERE id = $1",
            &[&id, &ms(*at), reply],
        )?,
        Outcome::Failed { reason } => s.execute(FAIL, &[&id, reason])?,
        Outcome::Expired { reason } => s.execute(
            concat!(
                "UPDATE emails SET status = 'suppressed', reason = $2, decided_at = ",
                now_ms!(),
                " WHERE id = $1"
            ),
            &[&id, reason],
        )?,
        Outcome::Bounced { address, reason } => {
            s.execute(FAIL, &[&id, reason])?;
            s.execute(
                concat!(
                    "INSERT INTO suppressed_addresses (address, reason, at)
                     VALUES ($1, $2, ",
                    now_ms!(),
                    ") ON CONFLICT (address) DO NOTHING"
                ),
                &[&address.to_lowercase(), reason],
            )?
        }
    };
    Ok(())
}
