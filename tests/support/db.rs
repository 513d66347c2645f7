//! Real databases for store tests: a fresh SQLite file in a temporary directory, or a fresh
//! schema on the PostgreSQL server named by `HERALD_TEST_POSTGRES_URL`.
//!
//! Each Postgres test gets a schema of its own (`herald_test_<uuid>`) and opens the store with
//! `search_path` pointing at it, so tests run in parallel on one database without seeing each
//! other's rows, and migrations run from scratch every time. The schema is dropped when the
//! [`TestDb`] is, also when the test panics.

// A test crate that includes this may use only part of it.
#![allow(dead_code)]

use std::io::Write as _;

use herald::store::DynStore;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

pub const POSTGRES_URL_VAR: &str = "HERALD_TEST_POSTGRES_URL";

/// An opened store on a database that exists only for one test.
pub struct TestDb {
    pub store: DynStore,
    /// Opens further stores on the same database (another "process").
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<SchemaGuard>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("backend", &self.store.backend())
            .field("url", &self.url)
            .finish()
    }
}

impl TestDb {
    /// Opens another store on this test's database, running migrations again.
    pub async fn open_again(&self) -> DynStore {
        herald::store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open a second store on {}: {e}", self.url))
    }

    /// Where the store keeps its tables (the schema on Postgres, `main` on SQLite), the tables
    /// there, and the migration versions recorded as applied: what the migrator did, seen
    /// from outside the store.
    pub async fn layout(&self) -> (String, Vec<String>, Vec<i64>) {
        const MIGRATIONS: &str =
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        if self.url.starts_with("sqlite:") {
            let mut conn = sqlx::sqlite::SqliteConnection::connect(&self.url)
                .await
                .expect("connect to the SQLite file");
            let tables = sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            )
            .fetch_all(&mut conn)
            .await
            .expect("list tables");
            let versions = sqlx::query_scalar(MIGRATIONS)
                .fetch_all(&mut conn)
                .await
                .expect("read migrations");
            let _ = conn.close().await;
            ("main".into(), tables, versions)
        } else {
            let mut conn = PgConnection::connect(&self.url)
                .await
                .expect("connect to the test schema");
            let schema = sqlx::query_scalar("SELECT current_schema()")
                .fetch_one(&mut conn)
                .await
                .expect("current schema");
            let tables = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1",
            )
            .fetch_all(&mut conn)
            .await
            .expect("list tables");
            let versions = sqlx::query_scalar(MIGRATIONS)
                .fetch_all(&mut conn)
                .await
                .expect("read migrations");
            let _ = conn.close().await;
            (schema, tables, versions)
        }
    }
}

/// Drops a test's schema when it goes out of scope.
struct SchemaGuard {
    server_url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let server_url = std::mem::take(&mut self.server_url);
        let drop_schema = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        // Drop runs outside any async context we could borrow (possibly while unwinding from
        // a panic), so the cleanup gets a thread and a runtime of its own. Best effort: a
        // leftover schema is harmless, and a lock timeout keeps a stuck connection from
        // hanging the test.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&server_url).await.ok()?;
                sqlx::raw_sql("SET lock_timeout = '10s'")
                    .execute(&mut conn)
                    .await
                    .ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop_schema))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        });
        let _ = cleanup.join();
    }
}

/// A store on a new SQLite file in a temporary directory. Always available; the `Option`
/// only gives it the same shape as [`postgres`].
pub async fn sqlite(_test: &str) -> Option<TestDb> {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store = herald::store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    Some(TestDb {
        store,
        url,
        _dir: Some(dir),
        _schema: None,
    })
}

/// A store in a new schema on the server `HERALD_TEST_POSTGRES_URL` names, or `None` (after
/// saying so on stderr) when the variable is not set. When it is set, failing to reach the
/// server fails the test: a configured database that is down must not look like a pass.
pub async fn postgres(test: &str) -> Option<TestDb> {
    let Some(server_url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        // Straight to stderr rather than `eprintln!`, which the test harness captures and
        // shows only for failures: a skip should be visible on a passing run.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {POSTGRES_URL_VAR} is not set ({test})"
        );
        return None;
    };
    let schema = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|e| {
            panic!("{POSTGRES_URL_VAR} is set but the server cannot be reached: {e}")
        });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create schema {schema}: {e}"));
    let _ = admin.close().await;
    let guard = SchemaGuard {
        server_url: server_url.clone(),
        schema: schema.clone(),
    };

    // sqlx passes `options` to the server as startup options, so every pooled connection
    // starts with this schema first on its search path.
    let separator = if server_url.contains('?') { '&' } else { '?' };
    let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
    let store = herald::store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store on {url}: {e}"));
    Some(TestDb {
        store,
        url,
        _dir: None,
        _schema: Some(guard),
    })
}

/// Each scenario, an `async fn name(db: TestDb)` of the test file, as two tests: `sqlite::name`
/// and `postgres::name` (which says it was skipped when `HERALD_TEST_POSTGRES_URL` is not set).
/// `$file` names the file in the Postgres schema, so scenarios of different files never share
/// one.
#[allow(unused_macros)]
macro_rules! scenarios {
    ($file:literal; $($s:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let Some(db) = crate::db::sqlite(stringify!($s)).await else { return };
                    crate::$s(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $s() {
                    let Some(db) = crate::db::postgres(concat!($file, "::", stringify!($s))).await else { return };
                    crate::$s(db).await;
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use scenarios;
