//! The embedded store: one SQLite file, in WAL mode, with every create
//! committed and synced to disk before it is answered, so a crash (even
//! `kill -9` or a power cut) loses nothing that was acknowledged. Creates
//! that arrive together share one commit ([`GroupCommit`]).
//!
//! A full disk shows up as SQLite's FULL when a write runs out of space,
//! but as one of its I/O errors when growing the WAL index or syncing does
//! (code 4874 is the WAL index at open): an I/O error while the data
//! directory's filesystem has less than [`LOW_SPACE_BYTES`] left is taken
//! for a full disk too, and said so, at start and on each create.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::group_commit::GroupCommit;
use super::{
    ConsignmentRepository, database_error_in, row_to_consignment, sqlite_code,
    start_failed_on_full_disk, store_error,
};
use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// The file name of the store inside the data directory.
pub const FILE_NAME: &str = "consignments.sqlite3";

/// How long a writer waits for another to finish before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool: SQLite runs one writer at a time, but readers
/// proceed beside it in WAL mode.
const MAX_CONNECTIONS: u32 = 4;
/// Free space below which an SQLite I/O error is taken for a full disk:
/// more than the WAL index or a page needs, far less than any working store.
const LOW_SPACE_BYTES: u64 = 1024 * 1024;

/// Consignments in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteRepository {
    pool: SqlitePool,
    /// Every insert goes through it.
    writer: GroupCommit,
    /// The directory holding the file, whose free space tells a full disk
    /// from another I/O error.
    dir: PathBuf,
}

impl SqliteRepository {
    /// The store in `data_dir`, which is created if missing.
    pub async fn open_in(data_dir: &Path) -> anyhow::Result<Self> {
        prepare_data_dir(data_dir)?;
        Self::open(&data_dir.join(FILE_NAME)).await
    }

    /// Opens (or creates) the store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let dir = match path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            Some(dir) => {
                prepare_data_dir(dir)?;
                dir.to_owned()
            }
            None => PathBuf::from("."),
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL syncs the WAL on every commit: an acknowledged create
            // survives a power cut, not just a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            // sqlx reads rows on a worker thread ahead of the stream, 50 by
            // default: 200 MB of 4 MB consignments for one listing that
            // then stops at the first. One row ahead bounds it.
            .row_buffer_size(1);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|err| start_error(&dir, &err))
            .with_context(|| format!("cannot open the SQLite store {}", path.display()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|err| start_error(&dir, &err))
            .with_context(|| {
                format!(
                    "cannot prepare the SQLite store {} (is it an SQLite database of this service?)",
                    path.display()
                )
            })?;
        Ok(Self {
            writer: GroupCommit::start(pool.clone(), dir.clone()),
            pool,
            dir,
        })
    }
}

/// A failure of the store in `dir` as the caller sees it (`id`: the
/// consignment being created, if any), with a full disk told apart from
/// other I/O errors.
pub(super) fn failure(dir: &Path, id: &str, err: sqlx::Error) -> ConsignmentError {
    if io_error_on_full_disk(dir, &err) {
        return ConsignmentError::DiskFull(format!("{err} ({})", free_space(dir)));
    }
    store_error(id, err)
}

/// Why the store cannot be opened, in one line; a full disk says so first.
/// sqlx's message already ends with its cause.
fn start_error(dir: &Path, err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let full = start_failed_on_full_disk(err)
        || database_error_in(err).is_some_and(|err| io_error_on_full_disk(dir, err));
    if full {
        anyhow!(
            "the consignment store's disk is full ({}): {err}",
            free_space(dir)
        )
    } else {
        anyhow!("{err}")
    }
}

/// Whether `err` is one of SQLite's I/O errors (IOERR, any extended code)
/// while the filesystem holding `dir` is nearly out of space.
fn io_error_on_full_disk(dir: &Path, err: &sqlx::Error) -> bool {
    let io_error = matches!(err, sqlx::Error::Database(db)
        if sqlite_code(db.as_ref()).is_some_and(|code| code & 0xff == 10));
    io_error && available_bytes(dir).is_some_and(|free| free < LOW_SPACE_BYTES)
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `dir`, if it can be asked.
fn available_bytes(dir: &Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(dir).ok()?;
    // Saturating only makes a (physically impossible) overflow "plenty".
    Some(
        stats
            .blocks_available()
            .saturating_mul(stats.fragment_size()),
    )
}

/// "N bytes free in DIR", for the log and the start error.
fn free_space(dir: &Path) -> String {
    match available_bytes(dir) {
        Some(free) => format!("{free} bytes free in {}", dir.display()),
        None => format!("free space in {} unknown", dir.display()),
    }
}

/// Creates `dir` if needed and checks that files can be created in it, so
/// that a bad data directory (or a full disk) is reported by name at start.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .map_err(disk_full_first)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("the data directory {} is not a directory", dir.display());
    }
    let probe = dir.join(".shippy-write-test");
    fs::write(&probe, b"")
        .map_err(disk_full_first)
        .with_context(|| format!("the data directory {} is not writable", dir.display()))?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// `err`, led by "the consignment store's disk is full" when it is ENOSPC
/// or EDQUOT.
fn disk_full_first(err: io::Error) -> anyhow::Error {
    match err.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            anyhow!("the consignment store's disk is full: {err}")
        }
        _ => anyhow!(err),
    }
}

#[async_trait]
impl ConsignmentRepository for SqliteRepository {
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError> {
        self.writer.create(consignment).await
    }

    fn scan(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> BoxStream<'_, Result<(i64, Consignment), ConsignmentError>> {
        sqlx::query(
            "SELECT seq, id, description, weight, vessel_id, containers FROM consignments \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch(&self.pool)
        .map(|row| {
            row.map_err(|err| failure(&self.dir, "", err))
                .and_then(|row| row_to_consignment(&row))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::TryStreamExt;

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
    async fn scans_from_any_point_in_bounded_steps() {
        let (_dir, store) = store().await;
        contract::scans_from_any_point_in_bounded_steps(&store).await;
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
        assert_eq!(contract::all(&again).await, [contract::consignment("kept")]);
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
        let err = store
            .scan(None, 10)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
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
        let all = contract::all(&store).await;
        let ids: Vec<_> = all.iter().map(|c| c.id.as_str()).collect();
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
        assert_eq!(contract::all(&store).await, []);
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
