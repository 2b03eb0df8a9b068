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
//! order GetConsignments returns and pages by.
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

    /// Consignments in creation order, after `page.after` and at most
    /// `page.limit` of them.
    async fn list(&self, page: PageRequest) -> Result<Page, ConsignmentError>;
}

/// Which consignments [`ConsignmentRepository::list`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Only consignments created after the one with this `seq`.
    pub after: Option<i64>,
    /// At most this many; all when `None`.
    pub limit: Option<u32>,
}

/// One page of consignments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// In creation order.
    pub consignments: Vec<Consignment>,
    /// The `seq` to continue after, when more consignments follow.
    pub next_after: Option<i64>,
}

impl Page {
    /// A page from `rows` (each with its `seq`), read with one row more than
    /// `limit` so that whether more follow is known without another query.
    fn from_rows(mut rows: Vec<(i64, Consignment)>, limit: Option<u32>) -> Self {
        let more = limit.is_some_and(|limit| rows.len() > limit as usize);
        if let Some(limit) = limit {
            rows.truncate(limit as usize);
        }
        let next_after = if more {
            rows.last().map(|(seq, _)| *seq)
        } else {
            None
        };
        Self {
            consignments: rows
                .into_iter()
                .map(|(_, consignment)| consignment)
                .collect(),
            next_after,
        }
    }
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
        None => db
            .code()
            .and_then(|code| code.parse().ok())
            .is_some_and(sqlite_transient),
    }
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
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let read = |err: sqlx::Error| store_error("", err);
    let id: String = row.try_get("id").map_err(read)?;
    let containers: String = row.try_get("containers").map_err(read)?;
    Ok((
        row.try_get("seq").map_err(read)?,
        Consignment {
            weight: weight_from_store(&id, row.try_get("weight").map_err(read)?)?,
            containers: containers_from_json(&id, &containers)?,
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

    fn ids(page: &Page) -> Vec<&str> {
        page.consignments.iter().map(|c| c.id.as_str()).collect()
    }

    pub async fn keeps_creation_order_and_every_field(repo: &dyn ConsignmentRepository) {
        for id in ["b", "a", "c"] {
            repo.create(consignment(id)).await.unwrap();
        }
        let all = repo.list(PageRequest::default()).await.unwrap();
        assert_eq!(ids(&all), ["b", "a", "c"]);
        assert_eq!(all.next_after, None);
        assert_eq!(all.consignments[1], consignment("a"));
    }

    pub async fn refuses_a_taken_id_without_overwriting(repo: &dyn ConsignmentRepository) {
        repo.create(consignment("a")).await.unwrap();
        let mut again = consignment("a");
        again.vessel_id = "other".into();
        assert!(matches!(
            repo.create(again).await,
            Err(ConsignmentError::AlreadyExists(id)) if id == "a"
        ));
        let all = repo.list(PageRequest::default()).await.unwrap();
        assert_eq!(all.consignments, [consignment("a")]);
    }

    pub async fn pages_through_everything_once(repo: &dyn ConsignmentRepository) {
        for i in 0..7 {
            repo.create(consignment(&format!("c{i}"))).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = repo
                .list(PageRequest {
                    after,
                    limit: Some(3),
                })
                .await
                .unwrap();
            pages += 1;
            assert!(page.consignments.len() <= 3);
            seen.extend(page.consignments.iter().map(|c| c.id.clone()));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let expected: Vec<_> = (0..7).map(|i| format!("c{i}")).collect();
        assert_eq!(seen, expected);
        // A page that ends exactly at the last consignment says nothing follows.
        let exact = repo
            .list(PageRequest {
                after: None,
                limit: Some(7),
            })
            .await
            .unwrap();
        assert_eq!((exact.consignments.len(), exact.next_after), (7, None));
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
        let all = repo.list(PageRequest::default()).await.unwrap();
        let unique: HashSet<_> = all.consignments.iter().map(|c| c.id.clone()).collect();
        assert_eq!((all.consignments.len(), unique.len()), (100, 100));
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
