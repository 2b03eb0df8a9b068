//! Consignments in process memory: for tests, or `--database-url memory://`.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use super::ConsignmentRepository;
use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// Consignments in process memory; lost when the process stops. Safe under
/// concurrent calls.
#[derive(Debug, Default)]
pub struct InMemoryRepository {
    /// Consignments in creation order and the ids taken, updated together
    /// under one lock so a read never sees one without the other.
    inner: RwLock<Stored>,
}

#[derive(Debug, Default)]
struct Stored {
    /// In creation order; a consignment's `seq` is its index + 1.
    consignments: Vec<Consignment>,
    /// Every id in `consignments`, so a duplicate is found without a scan.
    ids: HashSet<String>,
}

#[async_trait]
impl ConsignmentRepository for InMemoryRepository {
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError> {
        // A panic while holding the lock cannot leave `Stored` half-updated
        // (both updates happen after the only fallible check), so a poisoned
        // lock is safe to keep using.
        let mut stored = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if !stored.ids.insert(consignment.id.clone()) {
            return Err(ConsignmentError::AlreadyExists(consignment.id));
        }
        stored.consignments.push(consignment.clone());
        Ok(consignment)
    }

    fn scan(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> BoxStream<'_, Result<(i64, Consignment), ConsignmentError>> {
        // seq is index + 1, so `after` is how many to skip. Saturating is
        // exact here, not a loss: a Vec holds fewer than usize::MAX items,
        // so skipping usize::MAX is "after every consignment", which is
        // what a larger `after` means too.
        let start = after.map_or(0, |after| {
            usize::try_from(after.max(0)).unwrap_or(usize::MAX)
        });
        // One clone at a time, each under a short read lock, as an SQL
        // store's cursor would hand rows out.
        stream::unfold(start, move |index| {
            let stored = self.inner.read().unwrap_or_else(PoisonError::into_inner);
            let row = stored
                .consignments
                .get(index)
                .map(|consignment| Ok((index as i64 + 1, consignment.clone())));
            async move { row.map(|row| (row, index + 1)) }
        })
        .take(limit as usize)
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::repository::contract;

    #[tokio::test]
    async fn keeps_creation_order_and_every_field() {
        contract::keeps_creation_order_and_every_field(&InMemoryRepository::default()).await;
    }

    #[tokio::test]
    async fn refuses_a_taken_id_without_overwriting() {
        contract::refuses_a_taken_id_without_overwriting(&InMemoryRepository::default()).await;
    }

    #[tokio::test]
    async fn scans_from_any_point_in_bounded_steps() {
        contract::scans_from_any_point_in_bounded_steps(&InMemoryRepository::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_concurrent_creates_once_each() {
        contract::stores_concurrent_creates_once_each(Arc::new(InMemoryRepository::default()))
            .await;
    }
}
