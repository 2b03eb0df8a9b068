//! The embedded store: one SQLite file, in WAL mode, with every create
//! committed and synced to disk before it is answered, so a crash (even
//! `kill -9` or a power cut) loses nothing that was acknowledged. Creates
//! that arrive together share one commit ([`GroupCommit`]).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::group_commit::GroupCommit;
use super::{ConsignmentRepository, Page, PageRequest, row_to_consignment, store_error};
use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// The file name of the store inside the data directory.
pub const FILE_NAME: &str = "consignments.sqlite3";

/// How long a writer waits for another to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool: SQLite runs one writer at a time, but readers
/// proceed beside it in WAL mode.
const MAX_CONNECTIONS: u32 = 4;

/// Consignments in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteRepository {
    pool: SqlitePool,
    /// Every insert goes through it.
    writer: GroupCommit,
}

impl SqliteRepository {
    /// The store in `data_dir`, which is created if missing.
    pub async fn open_in(data_dir: &Path) -> anyhow::Result<Self> {
        prepare_data_dir(data_dir)?;
        Self::open(&data_dir.join(FILE_NAME)).await
    }

    /// Opens (or creates) the store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            prepare_data_dir(dir)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL syncs the WAL on every commit: an acknowledged create
            // survives a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            // sqlx's message already ends with its cause.
            .map_err(|err| anyhow!("{err}"))
            .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|err| anyhow!("{err}"))
            .with_context(|| {
                format!(
                    "cannot prepare the SQLite store {} (is it an SQLite database of this service?)",
                    path.display()
                )
            })?;
        Ok(Self {
            writer: GroupCommit::start(pool.clone()),
            pool,
        })
    }
}

/// Creates `dir` if needed and checks that files can be created in it, so
/// that a bad data directory is reported by name at start.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("the data directory {} is not a directory", dir.display());
    }
    let probe = dir.join(".shippy-write-test");
    fs::write(&probe, b"")
        .with_context(|| format!("the data directory {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[async_trait]
impl ConsignmentRepository for SqliteRepository {
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError> {
        self.writer.create(consignment).await
    }

    async fn list(&self, page: PageRequest) -> Result<Page, ConsignmentError> {
        // LIMIT -1 is SQLite for "no limit".
        let limit = page.limit.map_or(-1, |limit| i64::from(limit) + 1);
        let rows = sqlx::query(
            "SELECT seq, id, description, weight, vessel_id, containers FROM consignments \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(page.after.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| store_error("", err))?;
        let rows = rows
            .iter()
            .map(row_to_consignment)
            .collect::<Result<_, _>>()?;
        Ok(Page::from_rows(rows, page.limit))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repository::contract;

    async fn store() -> (tempfile::TempDir, SqliteRepository) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteRepository::open_in(dir.path()).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn keeps_creation_order_and_every_field() {
        let (_dir, store) = store().await;
        contract::keeps_creation_order_and_every_field(&store).await;
    }

    #[tokio::test]
    async fn refuses_a_taken_id_without_overwriting() {
        let (_dir, store) = store().await;
        contract::refuses_a_taken_id_without_overwriting(&store).await;
    }

    #[tokio::test]
    async fn pages_through_everything_once() {
        let (_dir, store) = store().await;
        contract::pages_through_everything_once(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_concurrent_creates_once_each() {
        let (_dir, store) = store().await;
        contract::stores_concurrent_creates_once_each(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn reopening_finds_what_was_stored_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteRepository::open_in(dir.path()).await.unwrap();
        store.create(contract::consignment("kept")).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 is FULL: the WAL is synced at every commit.
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(synchronous, 2);
        drop(store);

        let again = SqliteRepository::open_in(dir.path()).await.unwrap();
        let all = again.list(PageRequest::default()).await.unwrap();
        assert_eq!(all.consignments, [contract::consignment("kept")]);
    }

    #[tokio::test]
    async fn a_stored_weight_beyond_the_wires_range_fails_the_read_by_name() {
        let (_dir, store) = store().await;
        // The schema's CHECK admits it; the wire's int32 cannot carry it.
        sqlx::query(
            "INSERT INTO consignments (id, description, weight, vessel_id, containers) \
             VALUES ('heavy', '', 3000000000, 'v', '[]')",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let err = store.list(PageRequest::default()).await.unwrap_err();
        assert!(matches!(err, ConsignmentError::Internal(_)), "{err:?}");
        let message = format!("{err:#}");
        assert!(
            message.contains("\"heavy\"") && message.contains("3000000000"),
            "{message}"
        );
    }

    /// Creates `ids` at once: on a current-thread runtime each is queued
    /// before the writer runs, so they make one batch.
    async fn create_together(
        store: &SqliteRepository,
        ids: &[&str],
    ) -> Vec<Result<Consignment, ConsignmentError>> {
        let creates = ids.iter().map(|id| store.create(contract::consignment(id)));
        futures::future::join_all(creates).await
    }

    #[tokio::test]
    async fn a_taken_id_fails_only_its_own_create_in_a_batch() {
        let (_dir, store) = store().await;
        let answers = create_together(&store, &["a", "b", "a"]).await;
        assert!(answers[0].is_ok() && answers[1].is_ok(), "{answers:?}");
        assert!(
            matches!(&answers[2], Err(ConsignmentError::AlreadyExists(id)) if id == "a"),
            "{answers:?}"
        );
        let all = store.list(PageRequest::default()).await.unwrap();
        let ids: Vec<_> = all.consignments.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_create_in_its_batch_and_stores_none() {
        let (_dir, store) = store().await;
        sqlx::query(
            "CREATE TRIGGER poison BEFORE INSERT ON consignments WHEN NEW.id = 'poison' \
             BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let answers = create_together(&store, &["x", "poison", "y"]).await;
        for answer in &answers {
            assert!(
                matches!(answer, Err(ConsignmentError::Internal(cause)) if format!("{cause:#}").contains("poisoned row")),
                "{answers:?}"
            );
        }
        let all = store.list(PageRequest::default()).await.unwrap();
        assert_eq!(all.consignments, []);
        // The writer goes on with the next batch.
        store.create(contract::consignment("z")).await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_data_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = SqliteRepository::open_in(&file).await.unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("data directory {}", file.display())),
            "{err:#}"
        );

        let corrupt = dir.path().join("corrupt");
        fs::create_dir(&corrupt).unwrap();
        fs::write(corrupt.join(FILE_NAME), vec![0x5a; 8192]).unwrap();
        let err = SqliteRepository::open_in(&corrupt).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(FILE_NAME), "{message}");
        assert!(message.contains("not a database"), "{message}");
    }
}
