//! The one SQL layer: every statement the store runs, written once for both backends.
//!
//! Both schemas store JSON as text and times as 64-bit unix milliseconds, and both drivers
//! take `$n` placeholders (SQLite maps `$n` to the n-th argument), so one statement text
//! serves SQLite and PostgreSQL. A statement is a [`Stmt`]: its text and its parameters as
//! [`Param`] values, which each backend binds with one small function ([`Dialect::arguments`]).
//! Where the dialects genuinely differ (a list of ids, a label lookup in JSON, row locks,
//! how a claim picks its rows) the statement asks the [`Dialect`] for that one fragment.
//!
//! The statements live with the operations that run them, one module per area ([`runs`],
//! [`commit`], [`outbox`], [`events`], [`contacts`], [`cron`], [`definitions`],
//! [`retention`]); each operation is a generic function over [`Backend`], and [`traits`]
//! implements [`super::Store`] and [`super::Admin`] once, for every backend, from them.
//! A backend supplies only what differs: its connections and transactions, how it claims
//! work, how it writes a segment's commit (SQLite's group commit, PostgreSQL's one-statement
//! segment), and how a contact upsert is made safe against concurrent writers.

pub(super) mod alerts;
mod audience;
pub(super) mod campaigns;
pub(super) mod commit;
pub(super) mod contacts;
pub(super) mod cron;
pub(super) mod definitions;
pub(super) mod events;
pub(super) mod metrics;
pub(super) mod outbox;
pub(super) mod positional;
pub(super) mod retention;
pub(super) mod runs;
pub(super) mod suppressions;
mod traits;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Executor, IntoArguments, Transaction};

use super::rows::{Decoder, RowView};
use super::{Commit, CommitOutcome, Contact, ContactUpsert, Millis, Result};

/// How [`Dialect::attribute`] reads an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttributeKind {
    Text,
    /// A JSON number, as a float.
    Number,
    /// A JSON true or false, as 1 or 0.
    Bool,
    /// Text that is an ISO 8601 date or date and time, as unix milliseconds.
    Time,
    /// Any value but null, as something not NULL.
    Any,
}

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
    Float(f64),
    /// A set of ids, matched with [`Dialect::in_list`].
    List(Vec<String>),
}

impl From<&str> for Param {
    fn from(v: &str) -> Param {
        Param::Text(Some(v.to_owned()))
    }
}
impl From<String> for Param {
    fn from(v: String) -> Param {
        Param::Text(Some(v))
    }
}
impl From<&String> for Param {
    fn from(v: &String) -> Param {
        Param::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Param {
        Param::Text(v)
    }
}
impl From<&Option<String>> for Param {
    fn from(v: &Option<String>) -> Param {
        Param::Text(v.clone())
    }
}
impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Param {
        Param::Text(v.map(str::to_owned))
    }
}
impl From<i64> for Param {
    fn from(v: i64) -> Param {
        Param::Int(Some(v))
    }
}
impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Param {
        Param::Int(v)
    }
}
impl From<bool> for Param {
    fn from(v: bool) -> Param {
        Param::Bool(v)
    }
}
impl From<&[String]> for Param {
    fn from(v: &[String]) -> Param {
        Param::List(v.to_vec())
    }
}

/// `vec![Param::from(a), Param::from(b), ...]`: a statement's parameters, `$1` first.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::store::sql::Param::from($v)),*] };
}
pub(super) use params;

/// A statement and its parameters.
#[derive(Debug, Clone, Default)]
pub(super) struct Stmt {
    pub sql: Cow<'static, str>,
    pub params: Vec<Param>,
}

impl Stmt {
    pub fn new(sql: impl Into<Cow<'static, str>>, params: Vec<Param>) -> Stmt {
        Stmt {
            sql: sql.into(),
            params,
        }
    }

    /// Appends `next`, its placeholders renumbered to follow ours, so that several statements
    /// go to SQLite as one string with one argument list. Statement texts must not hold `$`
    /// followed by a digit anywhere but in a placeholder.
    pub fn then(&mut self, next: Stmt) {
        let offset = self.params.len();
        let sql = self.sql.to_mut();
        sql.reserve(next.sql.len() + 2 + next.sql.len() / 8);
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        let mut rest = next.sql.as_ref();
        while let Some(at) = rest.find('$') {
            sql.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                let n: usize = rest[..digits].parse().expect("ascii digits");
                let _ = write!(sql, "{}", n + offset);
                rest = &rest[digits..];
            }
        }
        sql.push_str(rest);
        self.params.extend(next.params);
    }

    /// Appends text to the statement (a `RETURNING` clause, say).
    pub fn push(&mut self, text: &str) {
        self.sql.to_mut().push_str(text);
    }
}

/// Appends `$first, $first+1, ...`, `n` placeholders, for a row of a multi-row `VALUES`.
pub(super) fn push_placeholders(sql: &mut String, first: usize, n: usize) {
    for i in first..first + n {
        if i > first {
            sql.push_str(", ");
        }
        let _ = write!(sql, "${i}");
    }
}

/// What differs between the two SQL dialects, as small as it can be: how parameters are
/// bound, and the few fragments each writes its own way.
pub(super) trait Dialect: Database {
    /// Binds a statement's parameters, in order.
    fn arguments(params: Vec<Param>) -> Result<Self::Arguments>;
    /// The statement as this database runs it, and its bound parameters.
    fn statement(s: Stmt) -> Result<(Cow<'static, str>, Self::Arguments)> {
        Ok((s.sql, Self::arguments(s.params)?))
    }
    /// `column` is one of the ids of the [`Param::List`] at placeholder `list`.
    fn in_list(column: &str, list: &str) -> String;
    /// The run's `labels` object has `name` set to `value` (both placeholders).
    fn label_is(name: &str, value: &str) -> String;
    /// A label's name as bound for [`Dialect::label_is`], and an attribute's for
    /// [`Dialect::attribute`].
    fn label_name(name: &str) -> String;
    /// The contact `c`'s attribute named at placeholder `name`, read as `kind`: NULL when
    /// the contact has no such attribute, or one of another type, so a comparison with it is
    /// never an error and never true.
    fn attribute(name: &str, kind: AttributeKind) -> String;
    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Ends a `SELECT` of a row the transaction goes on to write, so that a concurrent writer
    /// waits for it. Empty where the transaction already holds the database's write lock.
    const FOR_UPDATE: &'static str;
    /// How a claim picks due runs (`$4` is the limit): the order, and what it does about rows
    /// another claimer is taking at the same moment.
    const PICK_DUE_RUNS: &'static str;
    /// As [`Dialect::PICK_DUE_RUNS`], for messages.
    const PICK_DUE_MESSAGES: &'static str;
    /// A run's `conversation` label, as migration 0007 indexes it (the same expression, so
    /// the index is used).
    const CONVERSATION_KEY: &'static str;
    /// A contact's channel addresses as one JSON object (channel → address), read beside the
    /// row of `contacts`; NULL or `{}` when it has none.
    const CONTACT_ADDRESSES: &'static str;
}

/// Binds parameters for a dialect whose drivers take each [`Param`] as the Rust type it holds;
/// `list` turns a [`Param::List`] into what the dialect binds for one.
pub(super) fn bind_all<D, L>(params: Vec<Param>, list: fn(Vec<String>) -> L) -> Result<D::Arguments>
where
    D: Database,
    for<'q> Option<String>: sqlx::Encode<'q, D> + sqlx::Type<D>,
    for<'q> Option<i64>: sqlx::Encode<'q, D> + sqlx::Type<D>,
    for<'q> bool: sqlx::Encode<'q, D> + sqlx::Type<D>,
    for<'q> f64: sqlx::Encode<'q, D> + sqlx::Type<D>,
    for<'q> L: sqlx::Encode<'q, D> + sqlx::Type<D> + Send,
{
    use sqlx::Arguments as _;
    let mut args = D::Arguments::default();
    for p in params {
        match p {
            Param::Text(v) => args.add(v),
            Param::Int(v) => args.add(v),
            Param::Bool(v) => args.add(v),
            Param::Float(v) => args.add(v),
            Param::List(ids) => args.add(list(ids)),
        }
        .map_err(|e| super::StoreError::Corrupt(format!("cannot bind a value: {e}")))?;
    }
    Ok(args)
}

type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// Runs a [`Stmt`] on a connection of a dialect. Implemented once, for both, below.
pub(super) trait Exec: Dialect + Database<Row: RowView> {
    fn fetch_all(conn: &mut Self::Connection, s: Stmt) -> BoxFuture<'_, Vec<Self::Row>>;
    fn fetch_optional(conn: &mut Self::Connection, s: Stmt) -> BoxFuture<'_, Option<Self::Row>>;
    /// Runs the statement; the number of rows it changed.
    fn execute(conn: &mut Self::Connection, s: Stmt) -> BoxFuture<'_, u64>;
}

impl<D> Exec for D
where
    D: Dialect,
    D::Row: RowView,
    D::Arguments: IntoArguments<D>,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
{
    fn fetch_all(conn: &mut D::Connection, s: Stmt) -> BoxFuture<'_, Vec<D::Row>> {
        Box::pin(async move {
            let (sql, args) = D::statement(s)?;
            Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                .fetch_all(conn)
                .await?)
        })
    }

    fn fetch_optional(conn: &mut D::Connection, s: Stmt) -> BoxFuture<'_, Option<D::Row>> {
        Box::pin(async move {
            let (sql, args) = D::statement(s)?;
            Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                .fetch_optional(conn)
                .await?)
        })
    }

    fn execute(conn: &mut D::Connection, s: Stmt) -> BoxFuture<'_, u64> {
        Box::pin(async move {
            let (sql, args) = D::statement(s)?;
            let done = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                .execute(conn)
                .await?;
            Ok(D::rows_affected(&done))
        })
    }
}

/// The row type of a backend.
pub(super) type RowOf<B> = <<B as Backend>::Db as Database>::Row;
/// A write transaction of a backend.
pub(super) type Tx<B> = Transaction<'static, <B as Backend>::Db>;

/// A store backend: what it alone decides. Everything else is the shared operations in this
/// module's children, which [`super::Store`] and [`super::Admin`] are built from.
#[async_trait]
pub(super) trait Backend: Send + Sync + std::fmt::Debug + 'static {
    type Db: Exec;
    /// `sqlite` or `postgres`.
    const NAME: &'static str;

    /// A connection for reads.
    async fn read(&self) -> Result<PoolConnection<Self::Db>>;
    /// A connection for a write that is a single statement.
    async fn write(&self) -> Result<PoolConnection<Self::Db>>;
    /// A transaction for writes that must land together.
    async fn begin(&self) -> Result<Tx<Self>>;

    /// Runs a claim (see [`Dialect::PICK_DUE_RUNS`]) and returns the claimed rows.
    async fn claim(&self, s: Stmt) -> Result<Vec<RowOf<Self>>>;
    /// Writes one segment atomically (see [`super::Store::commit`]).
    async fn commit(&self, c: Commit) -> Result<CommitOutcome>;
    /// Upserts one contact inside `tx` (see [`contacts::try_upsert`]).
    async fn upsert_contact(tx: &mut Tx<Self>, u: &ContactUpsert) -> Result<Contact>;
}

/// Runs a read and decodes its one row, if any.
pub(super) async fn read_one<B: Backend, T>(
    b: &B,
    s: Stmt,
    decode: Decoder<T>,
) -> Result<Option<T>> {
    let mut conn = b.read().await?;
    let row = B::Db::fetch_optional(&mut *conn, s).await?;
    row.map(|r| decode(&r)).transpose()
}

/// Runs a read and decodes its rows.
pub(super) async fn read_all<B: Backend, T>(b: &B, s: Stmt, decode: Decoder<T>) -> Result<Vec<T>> {
    let mut conn = b.read().await?;
    let rows = B::Db::fetch_all(&mut *conn, s).await?;
    rows.iter().map(|r| decode(r)).collect()
}

/// Runs a single-statement write; the number of rows it changed.
pub(super) async fn write<B: Backend>(b: &B, s: Stmt) -> Result<u64> {
    let mut conn = b.write().await?;
    B::Db::execute(&mut *conn, s).await
}

/// Runs a single-statement write with `RETURNING` and decodes the row it gives, if any.
pub(super) async fn write_one<B: Backend, T>(
    b: &B,
    s: Stmt,
    decode: Decoder<T>,
) -> Result<Option<T>> {
    let mut conn = b.write().await?;
    let row = B::Db::fetch_optional(&mut *conn, s).await?;
    row.map(|r| decode(&r)).transpose()
}

/// Decodes a nullable time from the one column `t`.
pub(super) fn time(row: &dyn RowView) -> Result<Option<Millis>> {
    row.opt_int("t")
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;

    #[test]
    fn batched_statements_are_renumbered_after_the_ones_before() {
        let mut batch = Stmt::new("BEGIN", params![]);
        batch.then(Stmt::new(
            "UPDATE t SET a = $1 WHERE b = $2",
            params![1_i64, "x"],
        ));
        batch.then(Stmt::new(
            "UPDATE t SET a = $2, b = $10 WHERE c = $1",
            params![2_i64, "y"],
        ));
        assert_eq!(
            batch.sql,
            "BEGIN;\nUPDATE t SET a = $1 WHERE b = $2;\nUPDATE t SET a = $4, b = $12 WHERE c = $3"
        );
        assert_eq!(batch.params.len(), 4);
    }

    /// SQLite takes `$n` as the n-th argument, wherever and however often it appears, and
    /// across the statements of a batch: what lets one statement text serve both backends.
    #[tokio::test]
    async fn sqlite_takes_numbered_placeholders_across_a_batch() {
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let mut batch = Stmt::new("CREATE TABLE t (a TEXT, b INTEGER)", params![]);
        batch.then(Stmt::new(
            "INSERT INTO t VALUES ($2, $1)",
            params![7_i64, "x"],
        ));
        batch.then(Stmt::new(
            "INSERT INTO t VALUES ($1, $2), ($1, $2 + 1)",
            params!["y", 8_i64],
        ));
        sqlx::Sqlite::execute(&mut conn, batch).await.unwrap();
        let rows = sqlx::Sqlite::fetch_all(
            &mut conn,
            Stmt::new(
                "SELECT a AS t FROM t WHERE b >= $1 ORDER BY b",
                params![8_i64],
            ),
        )
        .await
        .unwrap();
        let got: Vec<String> = rows.iter().map(|r| r.text("t").unwrap()).collect();
        assert_eq!(got, ["y", "y"]);
    }
}
