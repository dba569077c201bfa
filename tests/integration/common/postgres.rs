//! The local PostgreSQL server for the tests: a schema of their own each.
//!
//! `AFTERCARE_TEST_POSTGRES_URL` (by default
//! `postgres://postgres@127.0.0.1:5432/test`) names the server; without one
//! the tests that need it fail, saying so.

pub fn url() -> String {
    std::env::var("AFTERCARE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own, dropped at the end (on failure too).
pub struct Schema(pub String);

impl Schema {
    pub fn new() -> Schema {
        if let Err(e) = postgres::Client::connect(&url(), postgres::NoTls) {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            panic!(
                "these tests need PostgreSQL at {} (set AFTERCARE_TEST_POSTGRES_URL): {e}: {}",
                url(),
                cause.unwrap_or_default()
            );
        }
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        Schema(format!("t_{}", hex::encode(random)))
    }

    /// The store URL of this schema on `server` (`host:port`, the test
    /// server's by default: see [`url`]).
    pub fn store_url(&self, server: Option<&str>) -> String {
        let base = url();
        let base = match server {
            Some(server) => {
                let parsed = url::Url::parse(&base).unwrap();
                let host = parsed.host_str().unwrap();
                let port = parsed.port().unwrap_or(5432);
                base.replacen(&format!("{host}:{port}"), server, 1)
            }
            None => base,
        };
        format!("{base}?schema={}", self.0)
    }

    /// A client on this schema's server (not in the schema: qualify names).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&url(), postgres::NoTls).unwrap()
    }

    /// `status, reason` of email `key` in this schema's store.
    pub fn email_status(&self, key: &str) -> Option<(String, Option<String>)> {
        let sql = format!(
            "SELECT status, reason FROM {}.emails WHERE key = $1",
            self.0
        );
        self.client()
            .query_opt(&sql, &[&key])
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    /// The first column of `sql`'s single row, `{}` in it standing for the
    /// schema.
    pub fn count(&self, sql: &str) -> i64 {
        self.client()
            .query_one(&sql.replace("{}", &self.0), &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
        }
    }
}
