//! The shared store: one PostgreSQL schema for every worker of a shop, on
//! as many hosts as needed.
//!
//! It owns the connection to PostgreSQL (one per handle), the schema and its
//! migrations (`migrations/postgres/`, applied by refinery at connect under
//! an advisory lock, so workers starting together are safe), and the locks
//! that keep workers from stepping on each other, where SQLite simply runs
//! one write transaction at a time:
//!
//! - `due()` claims pending emails `FOR UPDATE SKIP LOCKED`, and with them
//!   their customers' journeys, without waiting: two workers firing at once
//!   never take the same email, and an email whose customer another
//!   transaction holds waits for a later `due()`. `reclaim()` takes expired
//!   leases with `SKIP LOCKED` too.
//! - `journey()` locks the customer's row (or, for a customer not stored
//!   yet, an advisory lock on their id) until the commit: a journey is never
//!   changed by two transactions at once (the frequency cap relies on it).
//! - The shop figures, which every batch of events reads first and
//!   updates, take no lock: `shop_stats()` reads a base and the changes
//!   written since, `save_shop_stats()` writes this transaction's change
//!   as a row of its own. Changes commute (histogram counts), so batches of
//!   several workers apply side by side and none is lost. A reader that
//!   finds many changes folds them into the base, with the base's row
//!   claimed `SKIP LOCKED`. The event dedup needs no lock of its own:
//!   every event names an order, and `order_customer()` locks the order
//!   before `seen()` is read, so two transactions applying the same event
//!   take turns and the second finds it seen.
//! - `intake_lease()` is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE`:
//!   the lease's row is locked and its holder checked on its latest
//!   version, so of workers racing for it exactly one gets it.
//!   `intake_applied()` marks only rows nobody marked, waiting for a batch
//!   that is marking them: of two workers applying the same deliveries
//!   (a lease that ran out mid-batch), one batch fails.
//!
//! So a transaction holding claimed emails never waits for another one,
//! and the pipeline's transactions cannot deadlock. Should other uses of
//! the store deadlock, PostgreSQL aborts one transaction and its call fails
//! with [`StoreError::Postgres`]; nothing of it was committed. Transactions
//! are `READ COMMITTED`.
//!
//! Each handle runs its `postgres::Client` on a thread of its own and hands
//! it each call. The synchronous client drives an internal tokio runtime,
//! which panics when entered from inside another runtime; on its own
//! thread it never is, so a `PostgresStore` may be called (and dropped)
//! anywhere a `SqliteStore` may, async code included: like SQLite, a call
//! blocks the calling thread until it is done.
//!
//! Times are milliseconds since the epoch in `BIGINT`, as in SQLite; JSON
//! is kept as text, byte for byte.
//!
//! The handle and its errors are here; `url` reads a store URL, `tls` its
//! `sslmode`, `session` runs the connection's thread (and the migrations),
//! `store` and `transaction` make the calls of [`Store`](super::Store) and
//! [`Transaction`](super::Transaction).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
#[cfg(test)]
use postgres::Client;
use postgres::{Config, Row};
use serde_json::Value;

use super::{EmailRow, Result, Status, StoreError};
use crate::journey::EmailClass;
use session::Connection;
use url::parse_url;

mod session;
mod store;
#[cfg(test)]
mod tests;
mod tls;
mod transaction;
mod url;

pub(crate) use tls::TlsSettings;
pub use transaction::PostgresTx;
pub(super) use url::check_url;

mod embedded {
    refinery::embed_migrations!("src/store/migrations/postgres");
}

/// A failure of PostgreSQL, of migrating its schema, or of the connection
/// this handle holds.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// Its text holds the error's causes (not a `source`: printed with
    /// its chain, they would show twice).
    #[error("postgres: {}", describe(.0))]
    Postgres(postgres::Error),
    #[error("migrating the postgres schema: {}", describe_migration(.0))]
    Migration(#[from] refinery::Error),
    /// The connection cannot take the call: it is closed mid-transaction,
    /// or the transaction already failed.
    #[error("postgres: {0}")]
    Session(String),
    /// The URL's `sslmode` or `sslrootcert` cannot be used.
    #[error("postgres: {0}")]
    Tls(String),
    /// The thread that owns the PostgreSQL connection is gone (it
    /// panicked): this handle can do nothing more.
    #[error("postgres: the connection's thread stopped")]
    ThreadGone,
}

impl PostgresError {
    /// Whether trying again later may succeed: the server is unreachable or
    /// says "later" (see `is_transient`), or the call found the
    /// connection closed or its transaction failed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Postgres(e) => is_transient(e),
            Self::Session(_) => true,
            Self::Migration(_) | Self::Tls(_) | Self::ThreadGone => false,
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> StoreError {
        StoreError::Postgres(PostgresError::Postgres(error))
    }
}

impl From<refinery::Error> for StoreError {
    fn from(error: refinery::Error) -> StoreError {
        StoreError::Postgres(error.into())
    }
}

/// The connection cannot take the call, for the reason `text` says.
fn session_error(text: String) -> StoreError {
    StoreError::Postgres(PostgresError::Session(text))
}

/// The URL's TLS settings cannot be used, for the reason `text` says.
fn tls_error(text: String) -> StoreError {
    StoreError::Postgres(PostgresError::Tls(text))
}

/// How long connecting may take when the settings do not say
/// (`connect_timeout`): a worker fails at start rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The columns [`email_row`] reads, in its order.
macro_rules! email_columns {
    () => {
        "emails.id, key, customer_id, template, class, order_id, due_at, status, reason, \
         coalesce(shared.data, emails.data), recipient, locale, attempts, first_attempt_at, \
         variant, fire_at, deferred, lease_until"
    };
}
use email_columns;

/// `SELECT` of [`email_columns`] from the emails, each with the data it
/// shares with the others its event scheduled (until it is approved),
/// followed by `$rest` (`WHERE ...`).
macro_rules! select_emails {
    ($rest:literal) => {
        concat!(
            "SELECT ",
            $crate::store::postgres::email_columns!(),
            " FROM emails LEFT JOIN email_data shared ON shared.id = emails.data_id ",
            $rest
        )
    };
}
use select_emails;

/// The statement's time in milliseconds, like SQLite's
/// `CAST(unixepoch('subsec') * 1000 AS INTEGER)`.
macro_rules! now_ms {
    () => {
        "floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
    };
}
use now_ms;

/// Where the store is: the connection settings and the schema.
struct ConnectParams {
    config: Config,
    /// Made once from the URL's `sslmode` and `sslrootcert`.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// The schema the tables live in, made if missing; `None`: the first
    /// existing schema of the connection's `search_path`.
    schema: Option<String>,
}

/// A handle on a PostgreSQL store. Each has its own connection: the ingest
/// loop, the delivery workers and the HTTP server each take one
/// ([`crate::store::Store::reopen`]).
pub struct PostgresStore {
    conn: Connection,
    settings: Arc<ConnectParams>,
}

impl PostgresStore {
    /// Connects to the store at `url` and brings its schema to the latest
    /// version.
    ///
    /// `url` is a libpq-style URL (`postgres://user@host:5432/db`) or
    /// key=value string, as the `postgres` crate reads it. The tables go in
    /// the first existing schema of the `search_path` (`public` by
    /// default; `options=-c%20search_path%3Dname` picks another), or, with
    /// a `schema=NAME` query parameter (URL form only), in schema `NAME`,
    /// made if missing. TLS as libpq's `sslmode` and `sslrootcert` say
    /// (URL form for `verify-ca`, `verify-full` and `sslrootcert`; see
    /// `tls`): by default TLS when the server offers it.
    pub fn connect(url: &str) -> Result<PostgresStore> {
        let (config, params) = parse_url(url)?;
        Self::open(config, params.schema.as_deref(), &params.tls)
    }

    /// Connects with the tables in `schema`, made if missing: for several
    /// shops (or test runs) in one database.
    pub fn connect_with_schema(url: &str, schema: &str) -> Result<PostgresStore> {
        let (config, params) = parse_url(url)?;
        Self::open(config, Some(schema), &params.tls)
    }

    /// Connects with settings built in code (timeouts, `options`), the
    /// tables in `schema` (made if missing) or, with `None`, in the first
    /// existing schema of the `search_path`. TLS as the settings'
    /// `ssl_mode` says, the server's certificate unchecked.
    pub fn with_config(config: Config, schema: Option<&str>) -> Result<PostgresStore> {
        let tls = TlsSettings {
            mode: config.get_ssl_mode(),
            ..TlsSettings::default()
        };
        Self::open(config, schema, &tls)
    }

    fn open(mut config: Config, schema: Option<&str>, tls: &TlsSettings) -> Result<PostgresStore> {
        config.ssl_mode(tls.mode);
        let tls = tls.connector().map_err(tls_error)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("aftercare");
        }
        let settings = Arc::new(ConnectParams {
            config,
            tls,
            schema: schema.map(str::to_owned),
        });
        Ok(PostgresStore {
            conn: Connection::open(Arc::clone(&settings), true)?,
            settings,
        })
    }

    /// Runs `f` on the connection: for tests that look at the tables.
    #[cfg(test)]
    pub(super) fn with_client<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.conn.call(move |s| f(s.client()?))
    }
}

/// A postgres error with its causes: the crate's own text names only the
/// kind ("db error", "error connecting to server").
pub(super) fn describe(error: &postgres::Error) -> String {
    with_causes(error.to_string(), std::error::Error::source(error))
}

/// A failed migration with its cause: refinery's own text names the
/// migration and the crate's kind of error ("db error") only.
fn describe_migration(error: &refinery::Error) -> String {
    let text = match error.kind() {
        refinery::error::Kind::Connection(what, _) => what.clone(),
        _ => error.to_string(),
    };
    with_causes(text, std::error::Error::source(error))
}

/// `text: cause: its cause...`, each said once.
fn with_causes(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        // Some of the crate's errors already print their cause.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether `error` may pass: the connection is lost or cannot be made (an
/// I/O error, no SQLSTATE), or the server answers with a class that says
/// "later": connection exceptions (08), transaction rollbacks such as
/// serialization failures and deadlocks (40), insufficient resources (53),
/// an operator intervention such as a shutdown (57).
fn is_transient(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        let class = &db.code().code()[..2];
        return matches!(class, "08" | "40" | "53" | "57");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
}

fn email_row(r: &Row) -> Result<EmailRow, postgres::Error> {
    let class: String = r.try_get(4)?;
    let status: String = r.try_get(7)?;
    let data: String = r.try_get(9)?;
    let attempts: i32 = r.try_get(12)?;
    Ok(EmailRow {
        id: r.try_get(0)?,
        key: r.try_get(1)?,
        customer_id: r.try_get(2)?,
        template: r.try_get(3)?,
        class: EmailClass::from_stored(&class),
        order_id: r.try_get(5)?,
        due_at: from_ms(r.try_get(6)?),
        status: Status::parse(&status).unwrap_or(Status::Failed),
        reason: r.try_get(8)?,
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
        recipient: r.try_get(10)?,
        locale: r.try_get(11)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        first_attempt_at: r.try_get::<_, Option<i64>>(13)?.map(from_ms),
        variant: r.try_get(14)?,
        fire_at: from_ms(r.try_get(15)?),
        deferred: r.try_get(16)?,
        lease_until: r.try_get::<_, Option<i64>>(17)?.map(from_ms),
    })
}

fn email_rows(rows: &[Row]) -> Result<Vec<EmailRow>> {
    Ok(rows.iter().map(email_row).collect::<Result<_, _>>()?)
}

#[cfg(test)]
impl super::suite::Inspect for PostgresStore {
    fn email_log(&mut self) -> Vec<(i64, String)> {
        self.with_client(|c| {
            Ok(
                c.query("SELECT email_id, status FROM email_log ORDER BY seq", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            )
        })
        .unwrap()
    }

    fn stored_data(&mut self) -> (i64, i64) {
        self.with_client(|c| {
            let row = c.query_one(
                "SELECT (SELECT count(*) FROM email_data),
                        (SELECT count(*) FROM emails WHERE data != '')",
                &[],
            )?;
            Ok((row.get(0), row.get(1)))
        })
        .unwrap()
    }

    fn email_statuses(&mut self) -> Vec<(String, String, Option<String>)> {
        let mut rows: Vec<(String, String, Option<String>)> = self
            .with_client(|c| {
                Ok(c.query("SELECT key, status, reason FROM emails", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            })
            .unwrap();
        // By bytes, as SQLite orders: not by the database's collation.
        rows.sort();
        rows
    }
}
