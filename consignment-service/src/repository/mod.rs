//! Where consignments are kept.
//!
//! The service talks to [`ConsignmentRepository`], so the store is chosen at
//! start and the handlers do not change:
//!
//! - [`sqlite`]: the default, an embedded SQLite file in the data directory,
//!   in WAL mode, each create committed (and synced) before it is answered;
//!   creates that arrive together share a commit ([`group_commit`]).
//! - [`postgres`]: a PostgreSQL database several replicas can share; its
//!   schema is migrated on start.
//! - [`memory`]: process memory, for tests; lost on exit.
//!
//! Every store numbers consignments in creation order (`seq`), which is the
//! order GetConsignments returns and pages by. Stores hand rows out as a
//! stream read as it is polled ([`ConsignmentRepository::scan`]), so a page
//! that is full stops reading (see [`crate::listing`]).
//!
//! A full disk is its own error, [`ConsignmentError::DiskFull`]: SQLite's
//! FULL, or one of its I/O errors while the data directory's filesystem is
//! nearly out of space; PostgreSQL's `disk_full` (SQLSTATE 53100).
//!
//! The SQL stores keep a consignment's containers as one JSON column: the
//! serde form of [`Container`], so the domain type is the stored shape too.
//! A stored value the domain types cannot hold (a weight out of range, a
//! containers column that does not parse) fails the read with an internal
//! error naming the row, rather than being clamped or skipped.

mod group_commit;
pub mod memory;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tracing::info;

use crate::domain::{Consignment, Container, Weight};
use crate::error::ConsignmentError;

pub use memory::InMemoryRepository;

/// A store of consignments.
#[async_trait]
pub trait ConsignmentRepository: Send + Sync + 'static {
    /// Stores `consignment` durably before returning; fails with
    /// `AlreadyExists` if its id is taken.
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError>;

    /// Up to `limit` consignments in creation order, each with its `seq`,
    /// after the one numbered `after` (from the first when `None`). Rows
    /// are read from the store as the stream is polled, so a caller that
    /// stops early never loads the rest.
    fn scan(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> BoxStream<'_, Result<(i64, Consignment), ConsignmentError>>;
}

/// A `--database-url` as given, shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match StoreLocation::from_url(&self.0) {
            Ok(location) => location.fmt(f),
            Err(_) => f.write_str("DatabaseUrl(unrecognised)"),
        }
    }
}

/// Where consignments are stored, as configured.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL.
    Postgres(String),
    /// Process memory.
    Memory,
}

impl StoreLocation {
    /// Parses a `--database-url`: `postgres://…` (or `postgresql://…`),
    /// `sqlite://PATH`, or `memory://`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/shippy/consignments.sqlite3".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if url == "memory://" {
            Ok(Self::Memory)
        } else {
            Err("expected postgres://…, sqlite://PATH or memory://".into())
        }
    }
}

/// Never shows a PostgreSQL password.
impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Self::Postgres(url) => write!(f, "Postgres({})", postgres::redacted(url)),
            Self::Memory => f.write_str("Memory"),
        }
    }
}

/// Opens the store at `location`, creating or migrating its schema.
pub async fn open(location: &StoreLocation) -> anyhow::Result<Arc<dyn ConsignmentRepository>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => {
            let store = sqlite::SqliteRepository::open(path).await?;
            info!(path = %path.display(), "storing consignments in SQLite");
            Arc::new(store)
        }
        StoreLocation::Postgres(url) => {
            let store = postgres::PostgresRepository::open(url).await?;
            info!(database = %postgres::redacted(url), "storing consignments in PostgreSQL");
            Arc::new(store)
        }
        StoreLocation::Memory => {
            info!("storing consignments in memory; they are lost when the service stops");
            Arc::new(InMemoryRepository::default())
        }
    })
}

/// The `containers` column's JSON for `containers`.
fn containers_to_json(containers: &[Container]) -> Result<String, ConsignmentError> {
    serde_json::to_string(containers).map_err(|err| {
        ConsignmentError::Internal(anyhow::anyhow!("cannot encode containers: {err}"))
    })
}

/// The containers in consignment `id`'s `containers` column, or why the
/// stored value is unusable.
fn containers_from_json(id: &str, json: &str) -> Result<Vec<Container>, ConsignmentError> {
    serde_json::from_str(json).map_err(|err| {
        ConsignmentError::Internal(anyhow::anyhow!(
            "the stored containers of consignment {id:?} are corrupt: {err}"
        ))
    })
}

/// A database failure as the caller sees it: a taken id, a store that
/// cannot be reached or is too busy right now, or an internal error.
fn store_error(id: &str, err: sqlx::Error) -> ConsignmentError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ConsignmentError::AlreadyExists(id.to_owned())
        }
        sqlx::Error::Database(db) if reports_disk_full(db.as_ref()) => {
            ConsignmentError::DiskFull(err.to_string())
        }
        sqlx::Error::Database(db) if transient(db.as_ref()) => {
            ConsignmentError::StoreUnavailable(err.to_string())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            ConsignmentError::StoreUnavailable(err.to_string())
        }
        _ => ConsignmentError::Internal(anyhow::Error::new(err).context("consignment store")),
    }
}

/// Whether a database error means "try again later".
fn transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        Some(postgres) => postgres_transient(postgres.code()),
        None => sqlite_code(db).is_some_and(sqlite_transient),
    }
}

/// Whether a database error is the database saying its disk is full:
/// SQLite's FULL (13) or PostgreSQL's `disk_full` (53100).
fn reports_disk_full(db: &dyn sqlx::error::DatabaseError) -> bool {
    match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        Some(postgres) => postgres.code() == "53100",
        None => sqlite_code(db).is_some_and(|code| code & 0xff == 13),
    }
}

/// The sqlx error somewhere in `err`'s chain of causes (a migration's
/// error wraps the database's), for telling a full disk at start.
fn database_error_in<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e sqlx::Error> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(sqlx) = err.downcast_ref::<sqlx::Error>() {
            return Some(sqlx);
        }
        cause = err.source();
    }
    None
}

/// Whether `err` (at start: opening, connecting, migrating) is the
/// database reporting a full disk.
fn start_failed_on_full_disk(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(database_error_in(err), Some(sqlx::Error::Database(db)) if reports_disk_full(db.as_ref()))
}

/// An SQLite error's extended result code.
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    db.code().and_then(|code| code.parse().ok())
}

/// SQLite's BUSY and LOCKED, including their extended codes.
fn sqlite_transient(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

/// PostgreSQL's connection exceptions (class 08), shutdown and start-up
/// (57P01 to 57P03), and too many connections (53300).
fn postgres_transient(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// A consignment and its `seq` from a row of `SELECT seq, id, description,
/// weight, vessel_id, containers` (containers as JSON text), in either
/// database.
fn row_to_consignment<R>(row: &R) -> Result<(i64, Consignment), ConsignmentError>
where
    R: sqlx::Row,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let read = |err: sqlx::Error| store_error("", err);
    let id: String = row.try_get("id").map_err(read)?;
    // Parsed where the row holds it: a consignment's containers can be
    // megabytes, and a copy would double them.
    let containers: &str = row.try_get("containers").map_err(read)?;
    Ok((
        row.try_get("seq").map_err(read)?,
        Consignment {
            weight: weight_from_store(&id, row.try_get("weight").map_err(read)?)?,
            containers: containers_from_json(&id, containers)?,
            description: row.try_get("description").map_err(read)?,
            vessel_id: row.try_get("vessel_id").map_err(read)?,
            id,
        },
    ))
}

/// Consignment `id`'s stored weight as the domain's type. The schema only
/// checks `weight > 0` and a BIGINT holds more than the wire's int32, so a
/// row written by hand or by another program can be out of range: that is
/// an error naming the row, never a clamped weight.
fn weight_from_store(id: &str, kg: i64) -> Result<Weight, ConsignmentError> {
    Weight::new(kg).ok_or_else(|| {
        ConsignmentError::Internal(anyhow::anyhow!(
            "the stored weight of consignment {id:?} is {kg} kg, outside 1 to {} kg",
            i32::MAX
        ))
    })
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every store must show, run against each of them.

    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    pub fn consignment(id: &str) -> Consignment {
        Consignment {
            id: id.into(),
            description: format!("consignment {id}"),
            weight: Weight::new(1).unwrap(),
            containers: vec![Container {
                id: String::new(),
                customer_id: "cust001".into(),
                origin: "Manchester, United Kingdom".into(),
                user_id: "user001".into(),
            }],
            vessel_id: "vessel001".into(),
        }
    }

    /// What `scan(after, limit)` yields, read to the end.
    pub async fn scanned(
        repo: &dyn ConsignmentRepository,
        after: Option<i64>,
        limit: u32,
    ) -> Vec<(i64, Consignment)> {
        use futures::TryStreamExt;
        repo.scan(after, limit).try_collect().await.unwrap()
    }

    /// Every stored consignment.
    pub async fn all(repo: &dyn ConsignmentRepository) -> Vec<Consignment> {
        let rows = scanned(repo, None, u32::MAX).await;
        rows.into_iter()
            .map(|(_, consignment)| consignment)
            .collect()
    }

    fn ids(rows: &[(i64, Consignment)]) -> Vec<&str> {
        rows.iter().map(|(_, c)| c.id.as_str()).collect()
    }

    pub async fn keeps_creation_order_and_every_field(repo: &dyn ConsignmentRepository) {
        for id in ["b", "a", "c"] {
            repo.create(consignment(id)).await.unwrap();
        }
        let all = scanned(repo, None, 10).await;
        assert_eq!(ids(&all), ["b", "a", "c"]);
        assert_eq!(all[1].1, consignment("a"));
        let seqs: Vec<_> = all.iter().map(|(seq, _)| *seq).collect();
        assert!(seqs.is_sorted() && seqs[0] > 0, "{seqs:?}");
    }

    pub async fn refuses_a_taken_id_without_overwriting(repo: &dyn ConsignmentRepository) {
        repo.create(consignment("a")).await.unwrap();
        let mut again = consignment("a");
        again.vessel_id = "other".into();
        assert!(matches!(
            repo.create(again).await,
            Err(ConsignmentError::AlreadyExists(id)) if id == "a"
        ));
        assert_eq!(all(repo).await, [consignment("a")]);
    }

    pub async fn scans_from_any_point_in_bounded_steps(repo: &dyn ConsignmentRepository) {
        for i in 0..7 {
            repo.create(consignment(&format!("c{i}"))).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let step = scanned(repo, after, 3).await;
            assert!(step.len() <= 3);
            let Some((last, _)) = step.last() else { break };
            after = Some(*last);
            seen.extend(ids(&step).into_iter().map(str::to_owned));
        }
        let expected: Vec<_> = (0..7).map(|i| format!("c{i}")).collect();
        assert_eq!(seen, expected);
        assert!(scanned(repo, Some(i64::MAX), 3).await.is_empty());
        assert!(scanned(repo, None, 0).await.is_empty());
    }

    pub async fn stores_concurrent_creates_once_each(repo: Arc<dyn ConsignmentRepository>) {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let repo = Arc::clone(&repo);
                tokio::spawn(async move { repo.create(consignment(&format!("p{i}"))).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let all = all(repo.as_ref()).await;
        let unique: HashSet<_> = all.iter().map(|c| c.id.clone()).collect();
        assert_eq!((all.len(), unique.len()), (100, 100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_choose_the_store() {
        assert_eq!(
            StoreLocation::from_url("postgres://u:p@db:5432/shippy"),
            Ok(StoreLocation::Postgres(
                "postgres://u:p@db:5432/shippy".into()
            ))
        );
        assert!(matches!(
            StoreLocation::from_url("postgresql://db/shippy"),
            Ok(StoreLocation::Postgres(_))
        ));
        assert_eq!(
            StoreLocation::from_url("sqlite:///tmp/c.sqlite3"),
            Ok(StoreLocation::Sqlite("/tmp/c.sqlite3".into()))
        );
        assert_eq!(
            StoreLocation::from_url("memory://"),
            Ok(StoreLocation::Memory)
        );
        for bad in ["mysql://db", "sqlite://", "/tmp/x", ""] {
            assert!(StoreLocation::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_postgres_password_never_shows_in_debug_output() {
        let location = StoreLocation::Postgres("postgres://shippy:hunter2@db:5432/shippy".into());
        let shown = format!("{location:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:5432/shippy"), "{shown}");
    }

    /// The codes a full disk comes with, as sqlx hands them over.
    #[test]
    fn full_disks_are_told_apart_from_other_failures() {
        let sqlite =
            |code: i32| sqlx::Error::Database(Box::new(FakeDatabaseError(code.to_string())));
        for (code, full) in [
            (13, true),
            (1, false),
            (10, false),
            (4874, false),
            (5, false),
        ] {
            let err = store_error("c1", sqlite(code));
            assert_eq!(
                matches!(err, ConsignmentError::DiskFull(_)),
                full,
                "{code}: {err:?}"
            );
        }
        let status = tonic::Status::from(store_error("c1", sqlite(13)));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "the consignment store's disk is full");

        let migration = sqlx::migrate::MigrateError::Execute(sqlite(13));
        assert!(start_failed_on_full_disk(&migration));
        assert!(!start_failed_on_full_disk(
            &sqlx::migrate::MigrateError::Execute(sqlite(26))
        ));
    }

    /// A database error with a given code, as SQLite's look to sqlx.
    #[derive(Debug)]
    struct FakeDatabaseError(String);

    impl fmt::Display for FakeDatabaseError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "(code: {}) database error", self.0)
        }
    }

    impl std::error::Error for FakeDatabaseError {}

    impl sqlx::error::DatabaseError for FakeDatabaseError {
        fn message(&self) -> &str {
            "database error"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.as_str().into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn busy_and_disconnected_databases_are_transient() {
        assert!([5, 6, 517, 262].into_iter().all(sqlite_transient));
        assert!(![1, 19, 2067, 11].into_iter().any(sqlite_transient));
        assert!(
            ["08006", "08001", "57P01", "53300"]
                .into_iter()
                .all(postgres_transient)
        );
        assert!(
            !["23505", "42P01", "22001"]
                .into_iter()
                .any(postgres_transient)
        );
    }

    #[test]
    fn containers_round_trip_through_their_json_column() {
        let containers = contract::consignment("a").containers;
        let json = containers_to_json(&containers).unwrap();
        assert_eq!(containers_from_json("a", &json).unwrap(), containers);
        let corrupt = containers_from_json("a", "{").unwrap_err();
        assert!(format!("{corrupt:#}").contains("\"a\""), "{corrupt:#}");
    }

    /// The column's format is a stored format: rows written before the
    /// domain type became the stored shape must read back, and new rows must
    /// be readable by older replicas during a rolling upgrade.
    #[test]
    fn the_containers_column_keeps_its_json_format() {
        const STORED: &str = r#"[{"id":"","customer_id":"cust001","origin":"Manchester, United Kingdom","user_id":"user001"}]"#;
        let containers = contract::consignment("a").containers;
        assert_eq!(containers_to_json(&containers).unwrap(), STORED);
        assert_eq!(containers_from_json("a", STORED).unwrap(), containers);
    }

    #[test]
    fn an_out_of_range_stored_weight_is_an_error_naming_the_row() {
        assert_eq!(i64::from(weight_from_store("a", 7).unwrap()), 7);
        for kg in [0, -1, i64::from(i32::MAX) + 1] {
            let err = weight_from_store("c-9", kg).unwrap_err();
            assert!(matches!(err, ConsignmentError::Internal(_)), "{err:?}");
            let message = format!("{err:#}");
            assert!(
                message.contains("\"c-9\"") && message.contains(&kg.to_string()),
                "{message}"
            );
        }
    }
}
