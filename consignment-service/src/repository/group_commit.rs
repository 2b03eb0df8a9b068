//! Group commit for the SQLite store: creates that arrive while a commit is
//! being synced to disk wait, and then share the next transaction and its
//! one fsync.
//!
//! One writer task owns every insert. It takes whatever creates are queued
//! (at least one, at most [`MAX_BATCH`]), inserts them in one statement,
//! commits, and only then answers each caller, so an acknowledged create is
//! on disk exactly as with a transaction per create. A lone create is
//! committed at once, never held back to wait for company: at one caller
//! the latency is one commit, as before; under load, callers share the
//! sync instead of queueing for one each.
//!
//! An id that is taken fails only its own create (ALREADY_EXISTS), even
//! when the other create with that id is in the same batch. Any other
//! failure (a full disk, an I/O error, a busy database) rolls the whole
//! transaction back and fails every create in it with the same status:
//! none of them was stored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sqlx::sqlite::Sqlite;
use sqlx::{QueryBuilder, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::containers_to_json;
use super::sqlite::failure;
use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// The most creates one transaction holds: enough to share a sync among
/// every caller a busy service has waiting, few enough that one
/// transaction stays short.
const MAX_BATCH: usize = 256;
/// Creates that may wait for the writer; a caller beyond them waits to be
/// queued, which keeps a flood's memory bounded.
const QUEUE: usize = 1024;

/// A create waiting for its batch's commit.
struct Pending {
    consignment: Consignment,
    /// The `containers` column, encoded by the caller's task rather than
    /// the writer's.
    containers: String,
    answer: oneshot::Sender<Result<Consignment, ConsignmentError>>,
}

/// The queue to the writer task, which ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts the writer task, inserting into `pool`'s `consignments`,
    /// whose file is in `dir` (whose free space tells a full disk apart).
    pub fn start(pool: SqlitePool, dir: PathBuf) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(pool, dir, pending));
        Self { queue }
    }

    /// Stores `consignment` with the next batch; returns once that batch is
    /// committed and synced.
    pub async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError> {
        let containers = containers_to_json(&consignment.containers)?;
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            consignment,
            containers,
            answer,
        };
        self.queue.send(pending).await.map_err(|_| writer_gone())?;
        answered.await.map_err(|_| writer_gone())?
    }
}

/// The writer has stopped, which only happens when the store is being
/// dropped (or its task panicked).
fn writer_gone() -> ConsignmentError {
    ConsignmentError::StoreUnavailable("the SQLite writer has stopped".into())
}

/// The writer task: one transaction per batch of whatever is queued.
async fn write_batches(pool: SqlitePool, dir: PathBuf, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        commit_batch(&pool, &dir, std::mem::take(&mut batch)).await;
    }
}

/// Inserts `batch` in one statement and answers every create in it.
async fn commit_batch(pool: &SqlitePool, dir: &Path, batch: Vec<Pending>) {
    match insert_all(pool, &batch).await {
        Ok(mut inserted) => {
            for pending in batch {
                // Of several creates with one id, the first was inserted.
                let answer = if inserted.remove(&pending.consignment.id) {
                    Ok(pending.consignment)
                } else {
                    Err(ConsignmentError::AlreadyExists(pending.consignment.id))
                };
                // A caller that has gone (its deadline passed) still has its
                // consignment stored; a retry with its id says so.
                let _ = pending.answer.send(answer);
            }
        }
        Err(err) => {
            let error = failure(dir, "", err);
            for pending in batch {
                let _ = pending.answer.send(Err(error.clone()));
            }
        }
    }
}

/// Inserts every create of `batch` whose id is free, in one statement and
/// so one transaction and one sync; the ids inserted. Nothing is stored on
/// an error.
///
/// One statement rather than a transaction of inserts: sqlx runs each
/// SQLite statement on the connection's own thread, so every statement is
/// a round trip between threads, and a batch costs one instead of one per
/// create plus two.
async fn insert_all(pool: &SqlitePool, batch: &[Pending]) -> Result<HashSet<String>, sqlx::Error> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO consignments (id, description, weight, vessel_id, containers) ",
    );
    insert.push_values(batch, |mut row, pending| {
        let consignment = &pending.consignment;
        row.push_bind(&consignment.id)
            .push_bind(&consignment.description)
            .push_bind(i64::from(consignment.weight))
            .push_bind(&consignment.vessel_id)
            .push_bind(&pending.containers);
    });
    insert.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
    let inserted: Vec<String> = insert
        .build_query_scalar()
        // One text per batch size: not worth a place in the statement cache.
        .persistent(false)
        .fetch_all(pool)
        .await?;
    Ok(inserted.into_iter().collect())
}
