//! The connection to PostgreSQL: its thread, the session on it, and the
//! schema's migrations, applied at connect.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, mpsc};

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use sha2::{Digest, Sha256};

use super::{ConnectParams, EmailRow, PostgresError, Result, StoreError, embedded, session_error};

/// The shop figures' base, then every change since, oldest first.
const SHOP_STATS: &str = "SELECT part, value FROM (
        SELECT 0 AS part, 0::BIGINT AS id, value FROM meta WHERE key = 'shop_stats'
        UNION ALL SELECT 1, id, value FROM shop_stats_changes
    ) figures ORDER BY part, id";

/// The shop figures as stored: the base's JSON (if any), then each
/// change's, oldest first.
pub(super) type StoredFigures = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// `name` as an SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An advisory lock's key, from what it guards (`["migrate", schema]`):
/// the same in every worker.
pub(super) fn lock_key(parts: &[&str]) -> i64 {
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

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A call for the connection's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The caller's side of a connection: calls go to its thread one at a
/// time, in order.
pub(super) struct Connection {
    jobs: mpsc::Sender<Job>,
}

fn thread_gone() -> StoreError {
    StoreError::Postgres(PostgresError::ThreadGone)
}

impl Connection {
    /// Starts the thread and connects there (migrating first, with
    /// `migrate`).
    pub(super) fn open(settings: Arc<ConnectParams>, migrate: bool) -> Result<Connection> {
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
    pub(super) fn call<R: Send + 'static>(
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
    pub(super) fn post(&self, f: impl FnOnce(&mut Session) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }
}

/// The connection's side: the client, on the thread that owns it.
pub(super) struct Session {
    settings: Arc<ConnectParams>,
    /// `None` after a reconnection failed.
    client: Option<Client>,
    /// Prepared statements of this client, by their text.
    statements: HashMap<&'static str, Statement>,
    /// The schema the tables are in.
    pub(super) schema: String,
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
    pub(super) fn client(&mut self) -> Result<&mut Client> {
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

    pub(super) fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let (client, statement) = self.prepared(sql)?;
        Ok(client.query(&statement, params)?)
    }

    /// The earliest fire time of a pending email (of `streams`, if given).
    pub(super) fn next_fire(
        &mut self,
        streams: Option<&[String]>,
    ) -> Result<Option<jiff::Timestamp>> {
        let rows = match streams {
            None => self.query(
                "SELECT min(fire_at) FROM emails WHERE status = 'pending'",
                &[],
            )?,
            Some(streams) => self.query(
                "SELECT min(fire_at) FROM emails
                 WHERE status = 'pending' AND stream = ANY($1)",
                &[&streams],
            )?,
        };
        let next: Option<i64> = rows.first().map(|r| r.try_get(0)).transpose()?.flatten();
        Ok(next.map(super::from_ms))
    }

    /// The one row `sql` returns (an error if it returns none or more).
    pub(super) fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row> {
        let (client, statement) = self.prepared(sql)?;
        Ok(client.query_one(&statement, params)?)
    }

    pub(super) fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let (client, statement) = self.prepared(sql)?;
        Ok(client.execute(&statement, params)?)
    }

    pub(super) fn begin(&mut self) -> Result<()> {
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
    pub(super) fn finish(&mut self, commit: bool) -> Result<()> {
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
    pub(super) fn claim_customers(&mut self, emails: &[EmailRow]) -> Result<BTreeSet<String>> {
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

    /// The shop figures' base (if stored) and the changes made since.
    pub(super) fn shop_stats(&mut self) -> Result<StoredFigures> {
        let (mut base, mut changes) = (None, Vec::new());
        for row in self.query(SHOP_STATS, &[])? {
            match row.try_get::<_, i32>(0)? {
                0 => base = Some(row.try_get(1)?),
                _ => changes.push(row.try_get(1)?),
            }
        }
        Ok((base, changes))
    }

    /// Folds the changes committed so far into the base, unless another
    /// transaction is folding them (its lock is skipped, not waited for):
    /// `fold` makes the new base from the old and the changes taken.
    pub(super) fn fold_shop_stats(
        &mut self,
        fold: impl FnOnce(Option<Vec<u8>>, Vec<Vec<u8>>) -> Vec<u8>,
    ) -> Result<bool> {
        let base = self.query(
            "SELECT value FROM meta WHERE key = 'shop_stats' FOR UPDATE SKIP LOCKED",
            &[],
        )?;
        let Some(base) = base.first() else {
            return Ok(false);
        };
        let base: Vec<u8> = base.try_get(0)?;
        let changes = self
            .query("DELETE FROM shop_stats_changes RETURNING id, value", &[])?
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)?, r.try_get(1)?)))
            .collect::<Result<std::collections::BTreeMap<i64, Vec<u8>>, postgres::Error>>()?;
        let folded = fold(Some(base), changes.into_values().collect());
        self.execute(
            "UPDATE meta SET value = $1 WHERE key = 'shop_stats'",
            &[&folded],
        )?;
        Ok(true)
    }
}
