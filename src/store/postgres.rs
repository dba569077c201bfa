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
//! - `shop_stats()` locks the shop figures, which every batch of events
//!   reads first and writes back: batches from several workers apply one
//!   after the other, as with SQLite, and no update of the figures (nor of
//!   the event dedup) is lost. A transaction that claimed emails first (the
//!   firing of timers, which only reads the figures) reads them without the
//!   lock; should it write them, it checks nobody changed them meanwhile.
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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use jiff::Timestamp;
use postgres::types::ToSql;
use postgres::{Client, Config, Row, Statement};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    Accepted, Addressee, Backlog, EmailRow, INTAKE_LEASE, IntakeRow, Lease, OVERDUE_AFTER, Outcome,
    ParkedEvent, Result, SentEmail, Status, Store, StoreError, Transaction, headers_from_json,
    headers_json, taken_over,
};
use crate::journey::{EmailClass, Journey, NewEmail, Selector, ShopStats, Verdict};

mod tls;

pub(crate) use tls::TlsSettings;

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
    /// says "later" (see [`is_transient`]), or the call found the
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
        "id, key, customer_id, template, class, order_id, due_at, status, reason, data, \
         recipient, locale, attempts, first_attempt_at, variant, fire_at, deferred"
    };
}

/// The statement's time in milliseconds, like SQLite's
/// `CAST(unixepoch('subsec') * 1000 AS INTEGER)`.
macro_rules! now_ms {
    () => {
        "floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
    };
}

const SHOP_STATS: &str = "SELECT value FROM meta WHERE key = 'shop_stats'";
const SHOP_STATS_LOCKED: &str = "SELECT value FROM meta WHERE key = 'shop_stats' FOR UPDATE";

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
/// ([`Store::reopen`]).
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

/// What a store URL says besides what the `postgres` crate reads.
#[derive(Debug, Default, PartialEq)]
struct UrlParams {
    schema: Option<String>,
    tls: TlsSettings,
}

/// Whether `url` is a PostgreSQL store URL that [`PostgresStore::connect`]
/// can use, or what is wrong with it (see [`super::check_url`]).
pub(super) fn check_url(url: &str) -> std::result::Result<(), String> {
    parse_url(url).map(|_| ()).map_err(|e| match e {
        StoreError::Postgres(PostgresError::Tls(text)) => text,
        other => other.to_string(),
    })
}

/// The `postgres` crate's settings of `url`, and ours.
fn parse_url(url: &str) -> Result<(Config, UrlParams)> {
    let (rest, params) = split_params(url);
    let tls = TlsSettings::from_params(params.sslmode.as_deref(), params.sslrootcert.as_deref())
        .map_err(tls_error)?;
    let config: Config = rest.parse()?;
    let tls = TlsSettings {
        // `sslmode=require` in a key=value string, read by the crate.
        mode: match params.sslmode {
            Some(_) => tls.mode,
            None => config.get_ssl_mode(),
        },
        ..tls
    };
    Ok((
        config,
        UrlParams {
            schema: params.schema,
            tls,
        },
    ))
}

/// The parameters [`split_params`] takes out of a URL.
#[derive(Debug, Default, PartialEq)]
struct Split {
    schema: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes the `schema`, `sslmode` and `sslrootcert` parameters out of a URL
/// (the `postgres` crate would refuse the first, and the others' values
/// beyond `require`); other parameters stay as written.
fn split_params(url: &str) -> (String, Split) {
    let mut split = Split::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), split);
    };
    let mut kept = Vec::new();
    for part in query.split('&') {
        let decoded = url::form_urlencoded::parse(part.as_bytes()).next();
        match decoded {
            Some((key, value)) if key == "schema" => split.schema = Some(value.into_owned()),
            Some((key, value)) if key == "sslmode" => split.sslmode = Some(value.into_owned()),
            Some((key, value)) if key == "sslrootcert" => {
                split.sslrootcert = Some(value.into_owned());
            }
            _ => kept.push(part),
        }
    }
    if kept.is_empty() {
        (base.to_owned(), split)
    } else {
        (format!("{base}?{}", kept.join("&")), split)
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

/// `name` as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An advisory lock's key, from what it guards (`["migrate", schema]`):
/// the same in every worker.
fn lock_key(parts: &[&str]) -> i64 {
    let mut hash = Sha256::new();
    hash.update(b"aftercare");
    for part in parts {
        hash.update([0]);
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
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
    })
}

fn email_rows(rows: &[Row]) -> Result<Vec<EmailRow>> {
    Ok(rows.iter().map(email_row).collect::<Result<_, _>>()?)
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A call for the connection's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The caller's side of a connection: calls go to its thread one at a
/// time, in order.
struct Connection {
    jobs: mpsc::Sender<Job>,
}

fn thread_gone() -> StoreError {
    StoreError::Postgres(PostgresError::ThreadGone)
}

impl Connection {
    /// Starts the thread and connects there (migrating first, with
    /// `migrate`).
    fn open(settings: Arc<ConnectParams>, migrate: bool) -> Result<Connection> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name("aftercare-postgres".to_owned())
            .spawn(move || {
                let mut session = match Session::open(settings, migrate) {
                    Ok(session) => {
                        let _ = ready.send(Ok(()));
                        session
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                // Ends when the handle is dropped; the client closes here.
                while let Ok(job) = queue.recv() {
                    job(&mut session);
                }
            })
            .map_err(|e| session_error(format!("starting a thread: {e}")))?;
        opened.recv().map_err(|_| thread_gone())??;
        Ok(Connection { jobs })
    }

    /// Runs `f` on the connection and waits for its result.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |session| {
            let result = f(session);
            if result.is_err() && session.in_tx {
                session.tx_failed = true;
            }
            let _ = reply.send(result);
        });
        self.jobs.send(job).map_err(|_| thread_gone())?;
        answer.recv().map_err(|_| thread_gone())?
    }

    /// Queues `f` without waiting for it (a rollback from `Drop`).
    fn post(&self, f: impl FnOnce(&mut Session) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }
}

/// The connection's side: the client, on the thread that owns it.
struct Session {
    settings: Arc<ConnectParams>,
    /// `None` after a reconnection failed.
    client: Option<Client>,
    /// Prepared statements of this client, by their text.
    statements: HashMap<&'static str, Statement>,
    /// The schema the tables are in.
    schema: String,
    in_tx: bool,
    /// A statement of the open transaction failed: it can only roll back.
    tx_failed: bool,
}

/// A new client on `settings`' schema.
fn connect(settings: &ConnectParams) -> Result<Client> {
    let mut client = settings.config.connect(settings.tls.clone())?;
    if let Some(schema) = &settings.schema {
        client.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))?;
    }
    Ok(client)
}

fn current_schema(client: &mut Client) -> Result<Option<String>> {
    Ok(client
        .query_one("SELECT current_schema()", &[])?
        .try_get(0)?)
}

/// Makes the schema if needed and applies the migrations it lacks.
///
/// refinery takes no lock: two workers starting together would both create
/// its history table and both apply the first migration, and one would
/// fail. A session advisory lock on the schema's name makes the others wait
/// for the first, then find nothing left to do.
fn migrate(client: &mut Client, schema: Option<&str>) -> Result<()> {
    let target = match schema {
        Some(schema) => schema.to_owned(),
        None => current_schema(client)?.ok_or_else(no_schema)?,
    };
    let key = lock_key(&["migrate", &target]);
    client.execute("SELECT pg_advisory_lock($1)", &[&key])?;
    let outcome = (|| -> Result<()> {
        if let Some(schema) = schema {
            // Looked up first: CREATE SCHEMA IF NOT EXISTS needs the right
            // to create even when the schema is there.
            let exists = !client
                .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])?
                .is_empty();
            if !exists {
                client.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(schema)))?;
            }
        }
        embedded::migrations::runner().run(client)?;
        Ok(())
    })();
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
    outcome?;
    unlocked?;
    Ok(())
}

fn no_schema() -> StoreError {
    session_error(
        "none of the schemas on the search_path exists: create one, or give a schema".to_owned(),
    )
}

impl Session {
    fn open(settings: Arc<ConnectParams>, migrate_first: bool) -> Result<Session> {
        let mut client = connect(&settings)?;
        if migrate_first {
            migrate(&mut client, settings.schema.as_deref())?;
        }
        let schema = current_schema(&mut client)?.ok_or_else(no_schema)?;
        Ok(Session {
            settings,
            client: Some(client),
            statements: HashMap::new(),
            schema,
            in_tx: false,
            tx_failed: false,
        })
    }

    /// The client; a new one if the server closed the last between
    /// transactions (a restart, a failover), so that a long-lived handle
    /// recovers. Inside a transaction a closed client fails the call.
    fn client(&mut self) -> Result<&mut Client> {
        let closed = self.client.as_ref().is_none_or(Client::is_closed);
        if closed && !self.in_tx {
            self.client = None;
            self.statements.clear();
            self.client = Some(connect(&self.settings)?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| session_error("not connected".to_owned()))
    }

    /// The client and `sql` prepared on it (once per client).
    fn prepared(&mut self, sql: &'static str) -> Result<(&mut Client, Statement)> {
        self.client()?;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| session_error("not connected".to_owned()))?;
        let statement = match self.statements.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = client.prepare(sql)?;
                self.statements.insert(sql, statement.clone());
                statement
            }
        };
        Ok((client, statement))
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let (client, statement) = self.prepared(sql)?;
        Ok(client.query(&statement, params)?)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let (client, statement) = self.prepared(sql)?;
        Ok(client.execute(&statement, params)?)
    }

    fn begin(&mut self) -> Result<()> {
        // Explicit: a server default of SERIALIZABLE would turn waits on
        // claimed rows into errors.
        self.client()?
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        self.in_tx = true;
        self.tx_failed = false;
        Ok(())
    }

    /// Ends the transaction: commits it, unless `commit` is false or one of
    /// its statements failed (PostgreSQL would answer COMMIT with a silent
    /// rollback then).
    fn finish(&mut self, commit: bool) -> Result<()> {
        let failed = std::mem::take(&mut self.tx_failed);
        self.in_tx = false;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| session_error("not connected".to_owned()))?;
        if commit && !failed {
            client.batch_execute("COMMIT")?;
            return Ok(());
        }
        let rolled_back = client.batch_execute("ROLLBACK");
        if commit {
            return Err(session_error(
                "the transaction was rolled back: one of its statements failed".to_owned(),
            ));
        }
        Ok(rolled_back?)
    }

    /// Locks the journeys of the customers of `emails`, without waiting:
    /// the customers whose journey another transaction holds (a batch of
    /// their events, another worker firing their emails) are left out, and
    /// so are their emails, until a later `due()`.
    ///
    /// Taken here, all at once and never waiting, rather than one by one
    /// as `journey()` reads them: a transaction that holds claimed emails
    /// then never waits for another, so two workers cannot deadlock (one
    /// firing a customer's email, the other cancelling it, each holding
    /// what the other needs).
    fn claim_customers(&mut self, emails: &[EmailRow]) -> Result<BTreeSet<String>> {
        let customers: BTreeSet<&str> = emails.iter().map(|e| e.customer_id.as_str()).collect();
        if customers.is_empty() {
            return Ok(BTreeSet::new());
        }
        let customers: Vec<&str> = customers.into_iter().collect();
        let column = |rows: Vec<Row>| -> Result<BTreeSet<String>> {
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        };
        let mut ready = column(self.query(
            "SELECT customer_id FROM journeys WHERE customer_id = ANY($1)
             FOR UPDATE SKIP LOCKED",
            &[&customers],
        )?)?;
        let rest: Vec<&str> = customers
            .into_iter()
            .filter(|c| !ready.contains(*c))
            .collect();
        if rest.is_empty() {
            return Ok(ready);
        }
        // Stored but held by another transaction: left out.
        let busy = column(self.query(
            "SELECT customer_id FROM journeys WHERE customer_id = ANY($1)",
            &[&rest],
        )?)?;
        // Not stored (yet): the id's lock, as `journey()` takes it.
        for customer in rest.into_iter().filter(|c| !busy.contains(*c)) {
            let key = lock_key(&["journey", &self.schema, customer]);
            let rows = self.query("SELECT pg_try_advisory_xact_lock($1)", &[&key])?;
            let locked: bool = match rows.first() {
                Some(row) => row.try_get(0)?,
                None => false,
            };
            if locked {
                ready.insert(customer.to_owned());
            }
        }
        Ok(ready)
    }

    fn shop_stats(&mut self, lock: bool) -> Result<Option<Vec<u8>>> {
        let sql = if lock { SHOP_STATS_LOCKED } else { SHOP_STATS };
        let rows = self.query(sql, &[])?;
        Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
    }
}

impl Store for PostgresStore {
    type Tx<'a> = PostgresTx<'a>;

    fn begin(&mut self) -> Result<PostgresTx<'_>> {
        self.conn.call(Session::begin)?;
        Ok(PostgresTx {
            store: self,
            open: true,
            claimed: false,
            stats_read: None,
        })
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
        let next: Option<i64> = self.conn.call(move |s| {
            let rows = match &streams {
                None => s.query(
                    "SELECT min(fire_at) FROM emails WHERE status = 'pending'",
                    &[],
                )?,
                Some(streams) => s.query(
                    "SELECT min(fire_at) FROM emails
                     WHERE status = 'pending' AND stream = ANY($1)",
                    &[streams],
                )?,
            };
            Ok(rows.first().map(|r| r.try_get(0)).transpose()?.flatten())
        })?;
        Ok(next.map(from_ms))
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
        let mut rows = self.conn.call(move |s| {
            let rows = s.query(
                concat!(
                    "UPDATE emails SET lease_owner = $1, lease_until = $2
                     WHERE id IN (
                         SELECT id FROM emails
                         WHERE status = 'sending'
                           AND (($4 AND lease_owner = $1)
                                OR (lease_until <= $3 AND lease_owner IS DISTINCT FROM $1))
                         FOR UPDATE SKIP LOCKED)
                     RETURNING ",
                    email_columns!()
                ),
                &[&owner, &until, &now, &own],
            )?;
            email_rows(&rows)
        })?;
        rows.sort_by_key(|e| e.id);
        Ok(rows)
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
        for (id, outcome) in outcomes {
            self.record_delivery(*id, outcome)?;
        }
        Ok(())
    }

    fn record_delivery(&mut self, id: i64, outcome: &Outcome) -> Result<()> {
        const FAIL: &str = "UPDATE emails SET status = 'failed', reason = $2,
                 attempts = attempts + 1 WHERE id = $1";
        let outcome = outcome.clone();
        self.conn.call(move |s| {
            match outcome {
                Outcome::Sent { at, reply } => s.execute(
                    "UPDATE emails SET status = 'sent', decided_at = $2, last_reply = $3,
                         attempts = attempts + 1 WHERE id = $1",
                    &[&id, &ms(at), &reply],
                )?,
                Outcome::Retry { at, reply } => s.execute(
                    "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3,
                         attempts = attempts + 1 WHERE id = $1",
                    &[&id, &ms(at), &reply],
                )?,
                Outcome::Ambiguous { at, reply } => s.execute(
                    "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3,
                         attempts = attempts + 1, ambiguous_attempts = ambiguous_attempts + 1
                     WHERE id = $1",
                    &[&id, &ms(at), &reply],
                )?,
                Outcome::Deferred { at, reply } => s.execute(
                    "UPDATE emails SET status = 'pending', fire_at = $2, last_reply = $3
                     WHERE id = $1",
                    &[&id, &ms(at), &reply],
                )?,
                Outcome::Failed { reason } => s.execute(FAIL, &[&id, &reason])?,
                Outcome::Expired { reason } => s.execute(
                    concat!(
                        "UPDATE emails SET status = 'suppressed', reason = $2, decided_at = ",
                        now_ms!(),
                        " WHERE id = $1"
                    ),
                    &[&id, &reason],
                )?,
                Outcome::Bounced { address, reason } => {
                    s.begin()?;
                    let address = address.to_lowercase();
                    let done = s.execute(FAIL, &[&id, &reason]).and_then(|_| {
                        s.execute(
                            concat!(
                                "INSERT INTO suppressed_addresses (address, reason, at)
                                 VALUES ($1, $2, ",
                                now_ms!(),
                                ") ON CONFLICT (address) DO NOTHING"
                            ),
                            &[&address, &reason],
                        )
                    });
                    // A failed statement leaves nothing behind: rolled back.
                    if let Err(error) = done {
                        let _ = s.finish(false);
                        return Err(error);
                    }
                    s.finish(true)?;
                    0
                }
            };
            Ok(())
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
            Ok(from_ms(super::sqlite::meta_ms(&value)))
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
                concat!(
                    "SELECT ",
                    email_columns!(),
                    " FROM emails WHERE status IN ('sent', 'cancelled', 'suppressed', 'held_out')
                      ORDER BY due_at, id"
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

/// The shop figures as a transaction read them.
struct StatsRead {
    /// Read `FOR UPDATE`: nobody else can change them before the commit.
    locked: bool,
    raw: Option<Vec<u8>>,
}

/// One batch's transaction. Dropped without [`Transaction::commit`], it
/// rolls back.
pub struct PostgresTx<'a> {
    store: &'a mut PostgresStore,
    /// Not yet committed or rolled back.
    open: bool,
    /// `due()` claimed emails: the shop figures are read without a lock.
    claimed: bool,
    stats_read: Option<StatsRead>,
}

impl PostgresTx<'_> {
    fn call<R: Send + 'static>(
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
        let data = e.data.json().to_owned();
        let recipient = to.and_then(|t| t.recipient.clone());
        let locale = to.map(|t| t.locale.clone());
        let stream = stream.to_owned();
        let variant = e.variant.clone();
        self.call(move |s| {
            let n = s.execute(
                concat!(
                    "INSERT INTO emails (key, customer_id, template, class, order_id, due_at,
                         fire_at, status, reason, data, recipient, locale, stream, variant,
                         decided_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13,
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
                    &data,
                    &recipient,
                    &locale,
                    &stream,
                    &variant,
                ],
            )?;
            Ok(n == 1)
        })
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
        let (event_id, digest) = (event_id.to_owned(), digest.to_owned());
        self.call(move |s| {
            s.execute(
                "INSERT INTO processed_events (event_id, digest) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&event_id, &digest],
            )?;
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
        self.claimed = true;
        self.call(move |s| {
            let rows = match &streams {
                None => s.query(
                    concat!(
                        "SELECT ",
                        email_columns!(),
                        " FROM emails WHERE status = 'pending' AND fire_at <= $1
                          ORDER BY fire_at, id LIMIT $2
                          FOR UPDATE SKIP LOCKED"
                    ),
                    &[&until, &limit],
                )?,
                Some(streams) => s.query(
                    concat!(
                        "SELECT ",
                        email_columns!(),
                        " FROM emails WHERE status = 'pending' AND fire_at <= $1
                            AND stream = ANY($3)
                          ORDER BY fire_at, id LIMIT $2
                          FOR UPDATE SKIP LOCKED"
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
                         data = $4, lease_owner = $5, lease_until = $6,
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
        let lock = !self.claimed;
        let raw = self.call(move |s| s.shop_stats(lock))?;
        let stats = raw
            .as_deref()
            .and_then(|raw| serde_json::from_slice(raw).ok())
            .unwrap_or_default();
        self.stats_read = Some(StatsRead { locked: lock, raw });
        Ok(stats)
    }

    fn save_shop_stats(&mut self, stats: &ShopStats) -> Result<()> {
        let value = serde_json::to_vec(stats).unwrap_or_default();
        // Read without the lock: write only if nobody changed them since,
        // or an update would be lost.
        let read = match &self.stats_read {
            Some(read) if !read.locked => Some(read.raw.clone()),
            _ => None,
        };
        self.call(move |s| {
            if let Some(read) = read
                && s.shop_stats(true)? != read
            {
                return Err(session_error(
                    "the shop figures changed after this transaction read them; \
                     not overwriting them"
                        .to_owned(),
                ));
            }
            s.execute(
                "INSERT INTO meta (key, value) VALUES ('shop_stats', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&value],
            )?;
            Ok(())
        })?;
        if let Some(read) = &mut self.stats_read {
            read.locked = true;
        }
        Ok(())
    }

    fn pending_of(&mut self, customer_id: &str, until: Timestamp) -> Result<Vec<EmailRow>> {
        let (customer_id, until) = (customer_id.to_owned(), ms(until));
        self.call(move |s| {
            let rows = s.query(
                concat!(
                    "SELECT ",
                    email_columns!(),
                    " FROM emails WHERE status = 'pending' AND customer_id = $1 AND fire_at <= $2
                      ORDER BY fire_at, id"
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

/// PostgreSQL's own tests: several workers on one store. What every store
/// must do is in `super::suite`.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::super::suite::{Harness, Inspect, PostgresHarness, email, lease, t, to};
    use super::*;
    use crate::journey::Journey;

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
    fn schedule_many(
        s: &mut PostgresStore,
        prefix: &str,
        n: usize,
        customers: usize,
    ) -> BTreeSet<i64> {
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

    #[test]
    fn firing_reads_the_shop_figures_without_waiting_and_never_overwrites_newer_ones() {
        let h = PostgresHarness::new();
        let (mut ingest, mut fire) = (h.open(), h.open());
        let mut batch = ingest.begin().unwrap();
        let mut stats = batch.shop_stats().unwrap();
        // Another worker fires timers meanwhile: no wait for the batch.
        let started = Instant::now();
        let mut firing = fire.begin().unwrap();
        firing.due(t("2026-01-03T00:00:00Z"), None, 10).unwrap();
        assert_eq!(firing.shop_stats().unwrap(), ShopStats::default());
        assert!(started.elapsed() < Duration::from_secs(5));
        stats
            .order_totals
            .entry("EUR".into())
            .or_default()
            .add("10".parse().unwrap());
        batch.save_shop_stats(&stats).unwrap();
        batch.commit().unwrap();
        // Writing what it read without the lock would lose the batch's.
        let err = firing.save_shop_stats(&ShopStats::default()).unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
        assert!(firing.commit().is_err());
        let mut tx = ingest.begin().unwrap();
        assert_eq!(tx.shop_stats().unwrap(), stats);
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
        let mut url = url::Url::parse(&super::super::suite::postgres_url()).unwrap();
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
    fn split_params_takes_only_its_parameters() {
        let schema = |s: &str| Split {
            schema: Some(s.to_owned()),
            ..Split::default()
        };
        assert_eq!(
            split_params("postgres://u@h/db?schema=shop_1&connect_timeout=5"),
            (
                "postgres://u@h/db?connect_timeout=5".to_owned(),
                schema("shop_1")
            )
        );
        assert_eq!(
            split_params("postgresql://u@h/db?options=-c%20x%3Dy&schema=a%20b"),
            (
                "postgresql://u@h/db?options=-c%20x%3Dy".to_owned(),
                schema("a b")
            )
        );
        assert_eq!(
            split_params("postgres://u@h/db?schema=s"),
            ("postgres://u@h/db".to_owned(), schema("s"))
        );
        assert_eq!(
            split_params("host=h user=u schema=s"),
            ("host=h user=u schema=s".to_owned(), Split::default())
        );
        assert_eq!(
            split_params(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x"
            ),
            (
                "postgres://u@h/db?application_name=x".to_owned(),
                Split {
                    sslmode: Some("verify-full".to_owned()),
                    sslrootcert: Some("/etc/ca.pem".to_owned()),
                    ..Split::default()
                }
            )
        );
    }

    #[test]
    fn check_url_names_what_is_wrong() {
        assert_eq!(check_url("postgres://u@h/db?sslmode=require"), Ok(()));
        assert_eq!(check_url("host=h user=u sslmode=require"), Ok(()));
        let err = check_url("postgres://u@h/db?sslmode=verify").unwrap_err();
        assert!(err.contains("unknown sslmode `verify`"), "{err}");
        let err =
            check_url("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/no/ca.pem").unwrap_err();
        assert!(err.contains("sslrootcert /no/ca.pem"), "{err}");
        let err = check_url("postgres://u@h/db?connect_timeout=soon").unwrap_err();
        assert!(err.contains("connect_timeout"), "{err}");
        let (config, params) = parse_url("host=h user=u sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
        assert_eq!(params.tls.mode, postgres::config::SslMode::Require);
    }

    #[test]
    fn quote_ident_doubles_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
