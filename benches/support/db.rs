//! A fresh store for a benchmark: a SQLite file in a temporary folder, or a Postgres schema of
//! its own that is dropped afterwards.

#![allow(dead_code)]

use herald::store::DynStore;
use sqlx::Connection as _;

pub const POSTGRES_URL_VAR: &str = "HERALD_TEST_POSTGRES_URL";

/// A fresh store, and what to clean up after it.
pub struct Db {
    pub store: DynStore,
    /// The URL another process opens this store with.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<SchemaGuard>,
}

pub async fn open_sqlite() -> Db {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store = herald::store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    Db {
        store,
        url,
        _dir: Some(dir),
        _schema: None,
    }
}

pub async fn open_postgres(server_url: &str) -> Db {
    let schema = format!("herald_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::postgres::PgConnection::connect(server_url)
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
        server_url: server_url.to_owned(),
        schema: schema.clone(),
    };
    // Every pooled connection starts with the schema first on its search path.
    let separator = if server_url.contains('?') { '&' } else { '?' };
    let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
    let store = herald::store::open(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store in schema {schema}: {e}"));
    Db {
        store,
        url,
        _dir: None,
        _schema: Some(guard),
    }
}

/// Drops the benchmark's schema when it goes out of scope, also when the benchmark panics.
struct SchemaGuard {
    server_url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let server_url = std::mem::take(&mut self.server_url);
        let drop_schema = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        // On a thread and a runtime of its own: this may run while unwinding, or inside the
        // benchmark's runtime.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::postgres::PgConnection::connect(&server_url)
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
