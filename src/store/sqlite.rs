//! The embedded store: one SQLite file under the data directory.
//!
//! WAL mode, so the delivery workers' connection can write while the ingest
//! loop holds its own, and several workers on one host may share the file:
//! every write transaction starts `IMMEDIATE`, so SQLite serializes them and
//! an email is claimed by exactly one of them.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};
use serde_json::Value;

use super::{
    Accepted, Addressee, Backlog, EmailRow, INTAKE_LEASE, IntakeRow, Lease, OVERDUE_AFTER, Outcome,
    ParkedEvent, Result, SentEmail, Status, Store, StoreError, Transaction, headers_from_json,
    headers_json, taken_over,
};
use crate::journey::{Data, EmailClass, Journey, NewEmail, Selector, ShopStats, Verdict};

/// A failure of SQLite, or of migrating its schema.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("sqlite: {}", sqlite_reason(.0))]
    Sqlite(#[from] rusqlite::Error),
    #[error("migrating the store schema: {}", describe_migration(.0))]
    Migration(#[from] rusqlite_migration::Error),
}

impl SqliteError {
    /// Whether trying again later may succeed: the file is busy or locked
    /// by another connection, or the disk is full or failing.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                )
            ),
            Self::Migration(_) => false,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(error.into())
    }
}

impl From<rusqlite_migration::Error> for StoreError {
    fn from(error: rusqlite_migration::Error) -> StoreError {
        StoreError::Sqlite(error.into())
    }
}

/// SQLite's reason a migration failed, without the migration's SQL that
/// the crate's message quotes whole.
fn describe_migration(error: &rusqlite_migration::Error) -> String {
    match error {
        rusqlite_migration::Error::RusqliteError { err, .. } => sqlite_reason(err),
        other => other.to_string(),
    }
}

/// SQLite's reason, without the statement it was given (our own SQL).
fn sqlite_reason(error: &rusqlite::Error) -> String {
    match error {
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// The schema's steps, in order: the one at index `i` takes `user_version`
/// from `i` to `i + 1`, so a step once released is never edited or moved.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("migrations/sqlite/V1__initial.sql")),
    // The A/B variant each email was assigned (NULL: the template has none).
    M::up(include_str!("migrations/sqlite/V2__email_variants.sql")),
    // Why a pending email waits past its due time (frequency cap, quiet
    // hours): fire_at holds the new time.
    M::up(include_str!("migrations/sqlite/V3__deferral_reasons.sql")),
    // Email keys from escaped parts: the PostgreSQL store's V2, the same
    // SQL, hence no file of its own under migrations/sqlite/.
    M::up(include_str!(
        "migrations/postgres/V2__escaped_email_keys.sql"
    )),
    // What each applied event contained, to tell a reused id from a
    // redelivery.
    M::up(include_str!("migrations/sqlite/V5__event_digests.sql")),
    // The order -> customer index and the events waiting for their order:
    // PostgreSQL's V4, with SQLite's JSON functions for the backfill.
    M::up(include_str!(
        "migrations/sqlite/V6__order_index_and_parked_events.sql"
    )),
    // The webhook intake and the lease on consuming it: PostgreSQL's V5.
    M::up(include_str!("migrations/sqlite/V7__webhook_intake.sql")),
    // The data scheduled emails share, once per event: PostgreSQL's V6.
    M::up(include_str!("migrations/sqlite/V8__shared_email_data.sql")),
    // The email log from an email's first decision: PostgreSQL's V8.
    M::up(include_str!(
        "migrations/sqlite/V9__email_log_from_first_decision.sql"
    )),
];

/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE: usize = 128;

/// How long a worker waits for another's lock before it gives up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An email's columns as [`email_row`] reads them, from [`EMAILS`].
const EMAIL_COLUMNS: &str = "emails.id, key, customer_id, template, class, order_id, due_at, \
                             status, reason, coalesce(shared.data, emails.data), recipient, locale, \
                             attempts, first_attempt_at, variant, fire_at, deferred, lease_until";

/// The emails, each with the data it shares with the others its event
/// scheduled (until it is approved).
const EMAILS: &str = "emails LEFT JOIN email_data shared ON shared.id = emails.data_id";

pub struct SqliteStore {
    conn: Connection,
    /// `None` for an in-memory store.
    path: Option<PathBuf>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, migrated to the
    /// current schema.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        private_file(path)?;
        let at = |error: StoreError| StoreError::At {
            path: path.display().to_string(),
            error: Box::new(error),
        };
        let mut store = SqliteStore {
            conn: Self::connect(path).map_err(at)?,
            path: Some(path.to_owned()),
        };
        migrate(&mut store.conn).map_err(at)?;
        Ok(store)
    }

    /// A private store that lives as long as the value: for `simulate` and
    /// tests.
    pub fn in_memory() -> Result<SqliteStore> {
        let mut conn = Connection::open_in_memory()?;
        tune(&conn)?;
        Migrations::from_slice(MIGRATIONS).to_latest(&mut conn)?;
        Ok(SqliteStore { conn, path: None })
    }

    fn connect(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Switching a new file to WAL takes an exclusive lock, and SQLite
        // answers "busy" at once, without its busy handler, while another
        // worker holds one: wait here instead.
        let start = std::time::Instant::now();
        while let Err(e) = conn.pragma_update(None, "journal_mode", "wal") {
            let busy = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy);
            if !busy || start.elapsed() > BUSY_TIMEOUT {
                return Err(e.into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Durable at commit without an fsync per transaction of the WAL.
        conn.pragma_update(None, "synchronous", "normal")?;
        tune(&conn)?;
        Ok(conn)
    }

    fn emails_where(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<EmailRow>> {
        let sql = format!("SELECT {EMAIL_COLUMNS} FROM {EMAILS} WHERE {filter}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(args, email_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// What every connection of the store sets, on a file or in memory.
fn tune(conn: &Connection) -> Result<()> {
    // Statement journals (the pages a statement changes inside a longer
    // transaction, kept to undo that statement alone) in memory: past 64 KiB
    // SQLite moves one to a file for the rest of the transaction, and an
    // ingest batch then made about 28 writes per event to that file, each a
    // system call.
    conn.pragma_update(None, "temp_store", "memory")?;
    // Every statement of the hot paths stays prepared (rusqlite keeps 16 by
    // default: fewer than ingest and firing use in turn, so each was
    // prepared again on most uses).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Makes the store's folders (0700) and file (0600) before SQLite opens
/// it, whatever the umask: the file holds customers' addresses and orders,
/// and the unsubscribe key when none is configured. SQLite gives the `-wal`
/// and `-shm` files it makes the mode of the database file. A store that
/// others may read (made by an earlier version, or by hand) is tightened,
/// with its `-wal` and `-shm`; the folders of an existing file are left as
/// they are.
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let failed = |at: &Path| {
        let at = at.display().to_string();
        move |error| StoreError::Open { path: at, error }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed(dir))?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(path)(e)),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 || !meta.is_file() {
            continue;
        }
        let private = mode & 0o700;
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(private)) {
            Ok(()) => tracing::info!(
                path = %file.display(),
                from = %format!("{mode:o}"),
                to = %format!("{private:o}"),
                "Made the store file private to its owner."
            ),
            Err(error) => tracing::warn!(
                path = %file.display(),
                mode = %format!("{mode:o}"),
                %error,
                "Others may read the store file, and its mode cannot be changed."
            ),
        }
    }
    Ok(())
}

/// Brings the schema to the latest version, safely when several workers
/// open the same new file at once.
///
/// The migration library reads the schema version before it takes the write
/// lock, so two workers can both see version 0 and the second then fails on
/// `CREATE TABLE`. Its transactions start `IMMEDIATE` here, so the second
/// waits for the first to commit; an attempt that fails after the version
/// moved under it is read again, and finds nothing left to do.
fn migrate(conn: &mut Connection) -> Result<()> {
    let migrations = Migrations::from_slice(MIGRATIONS);
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    let outcome = loop {
        let before = schema_version(conn)?;
        match migrations.to_latest(conn) {
            Ok(()) => break Ok(()),
            Err(_) if schema_version(conn)? != before => continue,
            Err(error) => break Err(error.into()),
        }
    };
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Deferred);
    outcome
}

/// The earliest fire time of a pending email (of `streams`, if given).
fn next_fire(conn: &Connection, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
    let next: Option<i64> = match streams {
        None => conn
            .prepare_cached("SELECT min(fire_at) FROM emails WHERE status = 'pending'")?
            .query_row([], |r| r.get(0))?,
        Some(streams) => conn
            .prepare_cached(
                "SELECT min(fire_at) FROM emails
                 WHERE status = 'pending' AND stream IN (SELECT value FROM json_each(?1))",
            )?
            .query_row([json_list(streams)], |r| r.get(0))?,
    };
    Ok(next.map(from_ms))
}

fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// A time kept in `meta`: milliseconds as decimal text (0 when unreadable:
/// the earliest time, which cuts off nothing).
pub(super) fn meta_ms(value: &[u8]) -> i64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

fn email_row(r: &Row<'_>) -> rusqlite::Result<EmailRow> {
    let class: String = r.get(4)?;
    let status: String = r.get(7)?;
    let data: String = r.get(9)?;
    Ok(EmailRow {
        id: r.get(0)?,
        key: r.get(1)?,
        customer_id: r.get(2)?,
        template: r.get(3)?,
        class: EmailClass::from_stored(&class),
        order_id: r.get(5)?,
        due_at: from_ms(r.get(6)?),
        status: Status::parse(&status).unwrap_or(Status::Failed),
        reason: r.get(8)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        recipient: r.get(10)?,
        locale: r.get(11)?,
        attempts: r.get(12)?,
        first_attempt_at: r.get::<_, Option<i64>>(13)?.map(from_ms),
        variant: r.get(14)?,
        fire_at: from_ms(r.get(15)?),
        deferred: r.get(16)?,
        lease_until: r.get::<_, Option<i64>>(17)?.map(from_ms),
    })
}

/// Ends email `id` as `failed` with `reason`, its attempt counted.
fn fail(conn: &Connection, id: i64, reason: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE emails SET status = 'failed', reason = ?2, attempts = attempts + 1
             WHERE id = ?1",
        params![id, reason],
    )
}

/// Writes what became of email `id` (see [`Store::record_deliveries`]).
fn record(conn: &Connection, id: i64, outcome: &Outcome) -> rusqlite::Result<()> {
    let update = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql)?.execute(params).map(drop)
    };
    match outcome {
        Outcome::Sent { at, reply } => update(
            "UPDATE emails SET status = 'sent', decided_at = ?2, last_reply = ?3,
                 attempts = attempts + 1 WHERE id = ?1",
            params![id, ms(*at), reply],
        ),
        Outcome::Retry { at, reply } => update(
            "UPDATE emails SET status = 'pending', fire_at = ?2, last_reply = ?3,
                 attempts = attempts + 1 WHERE id = ?1",
            params![id, ms(*at), reply],
        ),
        Outcome::Ambiguous { at, reply } => update(
            "UPDATE emails SET status = 'pending', fire_at = ?2, last_reply = ?3,
                 attempts = attempts + 1, ambiguous_attempts = ambiguous_attempts + 1
             WHERE id = ?1",
            params![id, ms(*at), reply],
        ),
        Outcome::Deferred { at, reply } => update(
            "UPDATE emails SET status = 'pending', fire_at = ?2, last_reply = ?3 WHERE id = ?1",
            params![id, ms(*at), reply],
        ),
        Outcome::Failed { reason } => fail(conn, id, reason).map(drop),
        Outcome::Expired { reason } => update(
            "UPDATE emails SET status = 'suppressed', reason = ?2,
                 decided_at = CAST(unixepoch('subsec') * 1000 AS INTEGER)
             WHERE id = ?1",
            params![id, reason],
        ),
        Outcome::Bounced { address, reason } => {
            fail(conn, id, reason)?;
            update(
                "INSERT INTO suppressed_addresses (address, reason, at)
                 VALUES (?1, ?2, CAST(unixepoch('subsec') * 1000 AS INTEGER))
                 ON CONFLICT (address) DO NOTHING",
                params![address.to_lowercase(), reason],
            )
        }
    }
}

impl Store for SqliteStore {
    type Tx<'a> = SqliteTx<'a>;

    const DECIDES_DUE_IN_INGEST: bool = true;

    fn begin(&mut self) -> Result<SqliteTx<'_>> {
        Ok(SqliteTx {
            tx: self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
            shared: None,
        })
    }

    fn position(&mut self, source: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT position FROM positions WHERE source = ?1",
                [source],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        next_fire(&self.conn, streams)
    }

    fn next_expiry(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        let next: Option<i64> = match streams {
            None => self
                .conn
                .query_row("SELECT min(expires_at) FROM parked_events", [], |r| {
                    r.get(0)
                })?,
            Some(streams) => self.conn.query_row(
                "SELECT min(expires_at) FROM parked_events
                 WHERE stream IN (SELECT value FROM json_each(?1))",
                [json_list(streams)],
                |r| r.get(0),
            )?,
        };
        Ok(next.map(from_ms))
    }

    fn reclaim(&mut self, lease: &Lease, now: Timestamp, own: bool) -> Result<Vec<EmailRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare_cached(
                "UPDATE emails SET lease_owner = ?1, lease_until = ?2
                 WHERE status = 'sending'
                   AND ((?4 AND lease_owner = ?1)
                        OR (lease_until <= ?3 AND lease_owner IS NOT ?1))
                 RETURNING id",
            )?;
            let ids = stmt.query_map(params![lease.owner, ms(lease.until), ms(now), own], |r| {
                r.get(0)
            })?;
            ids.collect::<Result<_, _>>()?
        };
        let rows = {
            let sql = format!(
                "SELECT {EMAIL_COLUMNS} FROM {EMAILS}
                 WHERE emails.id IN (SELECT value FROM json_each(?1)) ORDER BY emails.id"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows =
                stmt.query_map([serde_json::to_string(&ids).unwrap_or_default()], email_row)?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(rows)
    }

    fn secret(&mut self, name: &str) -> Result<Vec<u8>> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::Random(e.to_string()))?;
        // The first worker to ask makes it; everyone reads the same.
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![format!("secret:{name}"), fresh.to_vec()],
        )?;
        Ok(self.conn.query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [format!("secret:{name}")],
            |r| r.get(0),
        )?)
    }

    fn stored_secret(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [format!("secret:{name}")],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn release(&mut self, ids: &[i64]) -> Result<()> {
        let ids = serde_json::to_string(ids).unwrap_or_default();
        self.conn.execute(
            "UPDATE emails SET lease_until = 0
             WHERE status = 'sending' AND id IN (SELECT value FROM json_each(?1))",
            [ids],
        )?;
        Ok(())
    }

    fn renew(&mut self, ids: &[i64], lease: &Lease) -> Result<Vec<i64>> {
        let list = serde_json::to_string(ids).unwrap_or_default();
        let mut stmt = self.conn.prepare_cached(
            "UPDATE emails SET lease_until = ?3
             WHERE id IN (SELECT value FROM json_each(?1))
               AND status = 'sending' AND lease_owner = ?2
             RETURNING id",
        )?;
        let renewed = stmt
            .query_map(params![list, lease.owner, ms(lease.until)], |r| {
                r.get::<_, i64>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(renewed)
    }

    fn record_deliveries(&mut self, outcomes: &[(i64, Outcome)]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (id, outcome) in outcomes {
            record(&tx, *id, outcome)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn go_live(&mut self, now: Timestamp) -> Result<Timestamp> {
        self.conn.execute(
            "INSERT INTO meta (key, value)
             SELECT 'go_live', CAST(CASE WHEN EXISTS (SELECT 1 FROM journeys) THEN 0 ELSE ?1 END AS BLOB)
             ON CONFLICT DO NOTHING",
            [ms(now)],
        )?;
        let value: Vec<u8> =
            self.conn
                .query_row("SELECT value FROM meta WHERE key = 'go_live'", [], |r| {
                    r.get(0)
                })?;
        Ok(from_ms(meta_ms(&value)))
    }

    fn overdue(&mut self, now: Timestamp) -> Result<Vec<(String, Timestamp)>> {
        let mut stmt = self.conn.prepare(
            "SELECT template, due_at FROM emails WHERE status = 'pending' AND fire_at <= ?1",
        )?;
        let rows = stmt.query_map([ms(now)], |r| {
            Ok((r.get::<_, String>(0)?, from_ms(r.get(1)?)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn decisions(&mut self) -> Result<Vec<EmailRow>> {
        self.emails_where(
            "status IN ('sent', 'cancelled', 'suppressed', 'held_out') ORDER BY due_at, emails.id",
            [],
        )
    }

    fn backlog(&mut self, now: Timestamp) -> Result<Backlog> {
        let (pending, overdue): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(fire_at < ?1), 0) FROM emails WHERE status = 'pending'",
            [ms(now - OVERDUE_AFTER)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let parked: i64 = self
            .conn
            .query_row("SELECT count(*) FROM parked_events", [], |r| r.get(0))?;
        Ok(Backlog {
            pending: pending as u64,
            overdue: overdue as u64,
            parked: parked as u64,
            intake: self.intake_depth()?,
        })
    }

    fn journeys(&mut self) -> Result<Vec<(String, Journey)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT customer_id, state FROM journeys ORDER BY customer_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (customer, state) = row?;
            let journey = serde_json::from_str(&state).map_err(|error| StoreError::Corrupt {
                customer: customer.clone(),
                error,
            })?;
            out.push((customer, journey));
        }
        Ok(out)
    }

    fn sent_emails(&mut self) -> Result<Vec<SentEmail>> {
        let mut stmt = self.conn.prepare(
            "SELECT customer_id, template, variant, fire_at, class, status FROM emails
             WHERE status IN ('sent', 'held_out') ORDER BY fire_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SentEmail {
                customer_id: r.get(0)?,
                template: r.get(1)?,
                variant: r.get(2)?,
                at: from_ms(r.get(3)?),
                class: EmailClass::from_stored(&r.get::<_, String>(4)?),
                held_out: r.get::<_, String>(5)? == Status::HeldOut.as_str(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The connection runs `synchronous = NORMAL`, which in WAL mode keeps
    /// a commit through a crash of the process but may lose it to one of
    /// the machine (power, kernel): the WAL is not synced at each commit.
    /// A delivery answered 2xx is not sent again, so this commit is made
    /// `FULL` (the WAL synced before it returns), then the connection goes
    /// back to `NORMAL`.
    fn intake_put(
        &mut self,
        source: &str,
        delivery_id: Option<&str>,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
        received_at: Timestamp,
    ) -> Result<Accepted> {
        self.conn.pragma_update(None, "synchronous", "full")?;
        let stored = (|| -> Result<Option<i64>> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let id = tx
                .prepare_cached(
                    "INSERT INTO intake (source, delivery_id, headers, body, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT DO NOTHING
                     RETURNING id",
                )?
                .query_row(
                    params![
                        source,
                        delivery_id,
                        headers_json(headers),
                        body,
                        ms(received_at)
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            tx.commit()?;
            Ok(id)
        })();
        let restored = self.conn.pragma_update(None, "synchronous", "normal");
        let stored = stored?;
        restored?;
        Ok(stored.map_or(Accepted::Duplicate, Accepted::Stored))
    }

    fn intake_depth(&mut self) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM intake WHERE applied_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn intake_lease(&mut self, owner: &str, now: Timestamp, until: Timestamp) -> Result<bool> {
        // One statement under the write lock (IMMEDIATE, waiting out other
        // workers' writes): the holder is read and replaced at once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held = tx
            .prepare_cached(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?4)
                 ON CONFLICT (name) DO UPDATE
                     SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= ?3
                 RETURNING holder",
            )?
            .query_row(params![INTAKE_LEASE, owner, ms(now), ms(until)], |r| {
                r.get::<_, String>(0)
            })
            .optional()?;
        tx.commit()?;
        Ok(held.is_some())
    }

    fn intake_next(&mut self, max: usize) -> Result<Vec<IntakeRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, source, delivery_id, headers, body, received_at FROM intake
             WHERE applied_at IS NULL ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(max).unwrap_or(i64::MAX)], |r| {
            Ok(IntakeRow {
                id: r.get(0)?,
                source: r.get(1)?,
                delivery_id: r.get(2)?,
                headers: headers_from_json(r.get(3)?),
                body: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                received_at: from_ms(r.get(5)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn intake_purge(&mut self, before: Timestamp) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM intake WHERE applied_at IS NOT NULL AND applied_at < ?1",
            [ms(before)],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn reopen(&self) -> Result<SqliteStore> {
        let Some(path) = &self.path else {
            // An in-memory database is private to its connection.
            return Err(StoreError::Open {
                path: ":memory:".into(),
                error: std::io::Error::other("an in-memory store cannot be reopened"),
            });
        };
        Ok(SqliteStore {
            conn: Self::connect(path).map_err(|error| StoreError::At {
                path: path.display().to_string(),
                error: Box::new(error),
            })?,
            path: Some(path.clone()),
        })
    }
}

pub struct SqliteTx<'a> {
    tx: rusqlite::Transaction<'a>,
    /// The data last stored in `email_data` and its row: the emails one
    /// event schedules come one after the other with the same data.
    shared: Option<(Data, i64)>,
}

impl SqliteTx<'_> {
    /// The `email_data` row holding `data`, and whether it was just made.
    fn shared_data(&mut self, data: &Data) -> Result<(i64, bool)> {
        if let Some((last, id)) = &self.shared
            && last.is_shared_with(data)
        {
            return Ok((*id, false));
        }
        let id = self
            .tx
            .prepare_cached("INSERT INTO email_data (data) VALUES (?1) RETURNING id")?
            .query_row([data.json()], |r| r.get(0))?;
        self.shared = Some((data.clone(), id));
        Ok((id, true))
    }

    fn insert(
        &mut self,
        e: &NewEmail,
        stream: &str,
        status: Status,
        reason: Option<&str>,
        to: Option<&Addressee>,
    ) -> Result<bool> {
        let (data_id, made) = self.shared_data(&e.data)?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO emails (key, customer_id, template, class, order_id, due_at, fire_at,
                 status, reason, data, data_id, recipient, locale, stream, variant, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, '', ?9, ?10, ?11, ?12, ?13,
                 CASE WHEN ?7 = 'pending' THEN NULL
                      ELSE CAST(unixepoch('subsec') * 1000 AS INTEGER) END)
             ON CONFLICT (key) DO NOTHING",
        )?;
        let n = stmt.execute(params![
            e.key,
            e.customer_id,
            e.template,
            e.class.as_str(),
            e.order_id,
            ms(e.due_at),
            status.as_str(),
            reason,
            data_id,
            to.and_then(|t| t.recipient.as_deref()),
            to.map(|t| t.locale.as_str()),
            stream,
            e.variant,
        ])?;
        if n == 1 && status != Status::Pending {
            // Decided as it is inserted: its first entry in the log (an
            // email scheduled, pending, gets one at its first decision).
            self.tx
                .prepare_cached(
                    "INSERT INTO email_log (email_id, status, at)
                     VALUES (last_insert_rowid(), ?1,
                             CAST(unixepoch('subsec') * 1000 AS INTEGER))",
                )?
                .execute([status.as_str()])?;
        }
        if n == 0 && made {
            // Already scheduled: the row made for it serves no email.
            self.tx
                .prepare_cached("DELETE FROM email_data WHERE id = ?1")?
                .execute([data_id])?;
            self.shared = None;
        }
        Ok(n == 1)
    }
}

impl Transaction for SqliteTx<'_> {
    fn seen(&mut self, event_id: &str) -> Result<Option<String>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT coalesce(digest, '') FROM processed_events WHERE event_id = ?1",
        )?;
        Ok(stmt.query_row([event_id], |r| r.get(0)).optional()?)
    }

    fn mark_seen(&mut self, event_id: &str, digest: &str) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO processed_events (event_id, digest) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        stmt.execute([event_id, digest])?;
        Ok(())
    }

    fn journey(&mut self, customer_id: &str) -> Result<Option<Journey>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT state FROM journeys WHERE customer_id = ?1")?;
        let state: Option<String> = stmt.query_row([customer_id], |r| r.get(0)).optional()?;
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
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO journeys (customer_id, state) VALUES (?1, ?2)
             ON CONFLICT (customer_id) DO UPDATE SET state = excluded.state",
        )?;
        stmt.execute(params![customer_id, state])?;
        Ok(())
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
        let templates = selector
            .templates
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_default());
        let mut stmt = self.tx.prepare_cached(
            "UPDATE emails SET status = 'cancelled', reason = ?3, recipient = ?4, locale = ?5,
                 decided_at = CAST(unixepoch('subsec') * 1000 AS INTEGER)
             WHERE status = 'pending' AND customer_id = ?1 AND order_id = ?2
               AND (?6 IS NULL OR template IN (SELECT value FROM json_each(?6)))
             RETURNING template",
        )?;
        let rows = stmt.query_map(
            params![
                selector.customer_id,
                selector.order_id,
                reason,
                to.recipient,
                to.locale,
                templates,
            ],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn next_fire(&mut self, streams: Option<&[String]>) -> Result<Option<Timestamp>> {
        next_fire(&self.tx, streams)
    }

    fn due(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<EmailRow>> {
        // The limit written into the statement, not bound: SQLite reads a
        // bound LIMIT while planning, and so prepares the statement again
        // each time it is bound (one cached statement per limit instead).
        let rows = match streams {
            None => {
                let sql = format!(
                    "SELECT {EMAIL_COLUMNS} FROM {EMAILS} WHERE status = 'pending' AND fire_at <= ?1
                     ORDER BY fire_at, emails.id LIMIT {limit}"
                );
                let mut stmt = self.tx.prepare_cached(&sql)?;
                stmt.query_map(params![ms(until)], email_row)?
                    .collect::<Result<_, _>>()?
            }
            Some(streams) => {
                let sql = format!(
                    "SELECT {EMAIL_COLUMNS} FROM {EMAILS}
                     WHERE status = 'pending' AND fire_at <= ?1
                       AND stream IN (SELECT value FROM json_each(?2))
                     ORDER BY fire_at, emails.id LIMIT {limit}"
                );
                let mut stmt = self.tx.prepare_cached(&sql)?;
                stmt.query_map(params![ms(until), json_list(streams)], email_row)?
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(rows)
    }

    fn approve(&mut self, id: i64, to: &Addressee, data: &Value, lease: &Lease) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE emails SET status = 'sending', recipient = ?2, locale = ?3, data = ?4,
                 data_id = NULL, lease_owner = ?5, lease_until = ?6,
                 first_attempt_at = coalesce(first_attempt_at,
                     CAST(unixepoch('subsec') * 1000 AS INTEGER))
             WHERE id = ?1",
        )?;
        stmt.execute(params![
            id,
            to.recipient,
            to.locale,
            data.to_string(),
            lease.owner,
            ms(lease.until)
        ])?;
        Ok(())
    }

    fn decide(&mut self, id: i64, verdict: Verdict, reason: &str, to: &Addressee) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE emails SET status = ?2, reason = ?3, recipient = ?4, locale = ?5,
                 decided_at = CAST(unixepoch('subsec') * 1000 AS INTEGER)
             WHERE id = ?1",
        )?;
        stmt.execute(params![
            id,
            Status::from(verdict).as_str(),
            reason,
            to.recipient,
            to.locale
        ])?;
        Ok(())
    }

    fn shop_stats(&mut self) -> Result<ShopStats> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'shop_stats'")?;
        let raw: Option<Vec<u8>> = stmt.query_row([], |r| r.get(0)).optional()?;
        Ok(raw
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default())
    }

    fn save_shop_stats(&mut self, stats: &ShopStats) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('shop_stats', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?;
        stmt.execute([serde_json::to_vec(stats).unwrap_or_default()])?;
        Ok(())
    }

    fn pending_of(&mut self, customer_id: &str, until: Timestamp) -> Result<Vec<EmailRow>> {
        let sql = format!(
            "SELECT {EMAIL_COLUMNS} FROM {EMAILS}
             WHERE status = 'pending' AND customer_id = ?1 AND fire_at <= ?2
             ORDER BY fire_at, emails.id"
        );
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(params![customer_id, ms(until)], email_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn postpone(&mut self, id: i64, fire_at: Timestamp, reason: &str) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "UPDATE emails SET fire_at = ?2, deferred = ?3 WHERE id = ?1 AND status = 'pending'",
        )?;
        stmt.execute(params![id, ms(fire_at), reason])?;
        Ok(())
    }

    fn is_suppressed(&mut self, address: &str) -> Result<bool> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT 1 FROM suppressed_addresses WHERE address = ?1")?;
        Ok(stmt.exists([address.to_lowercase()])?)
    }

    fn set_position(&mut self, source: &str, position: &str) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO positions (source, position) VALUES (?1, ?2)
             ON CONFLICT (source) DO UPDATE SET position = excluded.position",
        )?;
        stmt.execute(params![source, position])?;
        Ok(())
    }

    fn order_customer(&mut self, order_id: &str) -> Result<Option<String>> {
        let mut stmt = self
            .tx
            .prepare_cached("SELECT customer_id FROM order_customers WHERE order_id = ?1")?;
        Ok(stmt.query_row([order_id], |r| r.get(0)).optional()?)
    }

    fn index_order(&mut self, order_id: &str, customer_id: &str) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO order_customers (order_id, customer_id) VALUES (?1, ?2)
             ON CONFLICT (order_id) DO NOTHING",
        )?;
        stmt.execute([order_id, customer_id])?;
        Ok(())
    }

    fn park(&mut self, parked: &ParkedEvent) -> Result<bool> {
        let event = parked.event_json()?;
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO parked_events (event_id, order_id, occurred_at, expires_at, event, raw,
                 key, source, coordinates, stream, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                 (SELECT coalesce(max(seq), 0) + 1 FROM parked_events))
             ON CONFLICT (event_id) DO NOTHING",
        )?;
        let n = stmt.execute(params![
            parked.event.id,
            parked.event.kind.order_id(),
            ms(parked.event.occurred_at),
            ms(parked.expires_at),
            event,
            parked.raw,
            parked.key,
            parked.source,
            parked.coordinates.to_string(),
            parked.stream,
        ])?;
        Ok(n == 1)
    }

    fn unpark(&mut self, order_id: &str) -> Result<Vec<ParkedEvent>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "DELETE FROM parked_events WHERE order_id = ?1 RETURNING {PARKED_COLUMNS}, occurred_at, seq"
        ))?;
        let mut rows = stmt
            .query_map([order_id], |r| {
                Ok((parked_columns(r)?, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order.
        rows.sort_by_key(|(_, at, seq)| (*at, *seq));
        rows.into_iter().map(|(p, _, _)| parked_event(p)).collect()
    }

    fn expire_parked(
        &mut self,
        until: Timestamp,
        streams: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>> {
        let mut stmt = self.tx.prepare_cached(&format!(
            "DELETE FROM parked_events WHERE event_id IN (
                 SELECT event_id FROM parked_events
                 WHERE expires_at <= ?1
                   AND (?2 IS NULL OR stream IN (SELECT value FROM json_each(?2)))
                 ORDER BY expires_at, seq LIMIT ?3)
             RETURNING {PARKED_COLUMNS}, expires_at, seq"
        ))?;
        let mut rows = stmt
            .query_map(
                params![ms(until), streams.map(json_list), limit as i64],
                |r| Ok((parked_columns(r)?, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|(_, at, seq)| (*at, *seq));
        let mut forget = self
            .tx
            .prepare_cached("DELETE FROM processed_events WHERE event_id = ?1")?;
        rows.into_iter()
            .map(|(p, _, _)| {
                forget.execute([&p.0])?;
                parked_event(p)
            })
            .collect()
    }

    fn intake_applied(&mut self, ids: &[i64], at: Timestamp) -> Result<()> {
        let list = serde_json::to_string(ids).unwrap_or_default();
        let mut stmt = self.tx.prepare_cached(
            "UPDATE intake SET applied_at = ?2, body = NULL
             WHERE id IN (SELECT value FROM json_each(?1)) AND applied_at IS NULL
             RETURNING id",
        )?;
        let marked = stmt
            .query_map(params![list, ms(at)], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        taken_over(ids, &marked)
    }

    fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
}

/// The columns [`parked_columns`] reads, in its order.
const PARKED_COLUMNS: &str = "event_id, event, expires_at, raw, key, source, coordinates, stream";

/// A parked event's columns, as read.
type ParkedColumns = (
    String,
    String,
    i64,
    Vec<u8>,
    Option<Vec<u8>>,
    String,
    String,
    String,
);

fn parked_columns(r: &Row<'_>) -> rusqlite::Result<ParkedColumns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn parked_event(
    (event_id, event, expires_at, raw, key, source, coordinates, stream): ParkedColumns,
) -> Result<ParkedEvent> {
    ParkedEvent::from_stored(
        &event_id,
        &event,
        from_ms(expires_at),
        raw,
        key,
        source,
        &coordinates,
        stream,
    )
}

#[cfg(test)]
impl super::suite::Inspect for SqliteStore {
    fn email_log(&mut self) -> Vec<(i64, String)> {
        self.conn
            .prepare("SELECT email_id, status FROM email_log ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn stored_data(&mut self) -> (i64, i64) {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM email_data),
                        (SELECT count(*) FROM emails WHERE data != '')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    fn email_statuses(&mut self) -> Vec<(String, String, Option<String>)> {
        self.conn
            .prepare("SELECT key, status, reason FROM emails ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

/// SQLite's own tests; what every store must do is in `super::suite`.
#[cfg(test)]
mod tests {
    use super::super::suite::Inspect;
    use super::*;

    #[test]
    fn workers_opening_a_new_store_at_once_all_get_the_schema() {
        // Regression: two workers started together on a fresh file both read
        // schema version 0, and the second failed on `CREATE TABLE`.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("aftercare.db");
            let barrier = std::sync::Barrier::new(4);
            std::thread::scope(|scope| {
                let opened: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            SqliteStore::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for worker in opened {
                    worker.join().unwrap().unwrap();
                }
            });
            let s = SqliteStore::open(&path).unwrap();
            assert_eq!(schema_version(&s.conn).unwrap(), MIGRATIONS.len() as i64);
        }
    }

    #[test]
    fn keys_written_before_escaping_are_rewritten_as_the_journey_now_builds_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aftercare.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let before = MIGRATIONS
                .iter()
                .position(|m| format!("{m:?}").contains("rekey"))
                .unwrap();
            Migrations::from_slice(MIGRATIONS)
                .to_version(&mut conn, before)
                .unwrap();
            for (key, customer, template) in super::super::suite::LEGACY_KEYS {
                conn.execute(
                    "INSERT INTO emails (key, customer_id, template, class, due_at, fire_at, status, data)
                     VALUES (?1, ?2, ?3, 'transactional', 0, 0, 'sent', '{}')",
                    [key, customer, template],
                )
                .unwrap();
            }
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let keys: Vec<String> = s.email_statuses().into_iter().map(|e| e.0).collect();
        assert_eq!(keys, super::super::suite::migrated_keys());
        // What the journey builds for the order of the second row now.
        assert_eq!(
            crate::journey::key_part("a/order_confirmation/o", &[]),
            "a%2Forder_confirmation%2Fo"
        );
    }

    #[test]
    fn the_order_index_is_filled_from_the_journeys_already_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aftercare.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let before = MIGRATIONS
                .iter()
                .position(|m| format!("{m:?}").contains("order_customers"))
                .unwrap();
            Migrations::from_slice(MIGRATIONS)
                .to_version(&mut conn, before)
                .unwrap();
            for (customer, state) in super::super::suite::legacy_journeys() {
                conn.execute(
                    "INSERT INTO journeys (customer_id, state) VALUES (?1, ?2)",
                    [customer, state],
                )
                .unwrap();
            }
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let mut tx = s.begin().unwrap();
        assert_eq!(
            super::super::suite::backfilled_index(&mut tx),
            super::super::suite::expected_index()
        );
    }

    #[test]
    fn storing_a_delivery_leaves_the_connection_syncing_as_before() {
        // Synced for the delivery only: the batches keep their cheaper
        // commits. 1 is NORMAL, 2 FULL.
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("aftercare.db")).unwrap();
        let synchronous = |s: &SqliteStore| -> i64 {
            s.conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&s), 1);
        let at = Timestamp::UNIX_EPOCH;
        s.intake_put("shop", Some("d-1"), &[], b"{}", at).unwrap();
        assert_eq!(synchronous(&s), 1);
        // A duplicate too, and a put that fails.
        s.intake_put("shop", Some("d-1"), &[], b"{}", at).unwrap();
        assert_eq!(synchronous(&s), 1);
        s.conn.execute_batch("DROP TABLE intake").unwrap();
        assert!(s.intake_put("shop", None, &[], b"{}", at).is_err());
        assert_eq!(synchronous(&s), 1);
    }

    #[test]
    fn statement_journals_stay_in_memory_on_every_connection() {
        // 2 is MEMORY; the default (0) let a long ingest transaction move
        // its statement journal to a temporary file, page by page.
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("aftercare.db")).unwrap();
        let private = SqliteStore::in_memory().unwrap();
        for conn in [&s.conn, &s.reopen().unwrap().conn, &private.conn] {
            let temp_store: i64 = conn
                .pragma_query_value(None, "temp_store", |r| r.get(0))
                .unwrap();
            assert_eq!(temp_store, 2);
        }
    }

    #[test]
    fn an_in_memory_store_works_but_cannot_be_reopened() {
        let mut s = SqliteStore::in_memory().unwrap();
        let mut tx = s.begin().unwrap();
        tx.mark_seen("e-1", "d").unwrap();
        tx.commit().unwrap();
        assert!(s.begin().unwrap().seen("e-1").unwrap().is_some());
        assert!(matches!(s.reopen(), Err(StoreError::Open { .. })));
    }
}
