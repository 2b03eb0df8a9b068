//! Where consignments are kept.
//!
//! The service talks to [`ConsignmentRepository`], so the store can change
//! without touching the handlers. [`InMemoryRepository`] keeps them in
//! process memory, safe under concurrent calls.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;

use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// A store of consignments.
#[async_trait]
pub trait ConsignmentRepository: Send + Sync + 'static {
    /// Stores `consignment`; fails with `AlreadyExists` if its id is taken.
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError>;

    /// Every stored consignment, in creation order.
    async fn all(&self) -> Result<Vec<Consignment>, ConsignmentError>;
}

/// Consignments in process memory; lost when the process stops.
#[derive(Debug, Default)]
pub struct InMemoryRepository {
    /// Consignments in creation order and the ids taken, updated together
    /// under one lock so a read never sees one without the other.
    inner: RwLock<Stored>,
}

#[derive(Debug, Default)]
struct Stored {
    /// In creation order, which GetConsignments preserves.
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

    async fn all(&self) -> Result<Vec<Consignment>, ConsignmentError> {
        let stored = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(stored.consignments.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn consignment(id: &str) -> Consignment {
        Consignment {
            id: id.into(),
            description: String::new(),
            weight: 1,
            containers: Vec::new(),
            vessel_id: "vessel001".into(),
        }
    }

    #[tokio::test]
    async fn consignments_come_back_in_creation_order() {
        let repo = InMemoryRepository::default();
        for id in ["b", "a", "c"] {
            repo.create(consignment(id)).await.unwrap();
        }
        let ids: Vec<_> = repo
            .all()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["b", "a", "c"]);
    }

    #[tokio::test]
    async fn a_taken_id_is_refused_and_nothing_is_overwritten() {
        let repo = InMemoryRepository::default();
        repo.create(consignment("a")).await.unwrap();
        let mut again = consignment("a");
        again.vessel_id = "other".into();
        assert!(matches!(
            repo.create(again).await,
            Err(ConsignmentError::AlreadyExists(id)) if id == "a"
        ));
        let all = repo.all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].vessel_id, "vessel001");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_are_each_stored_once() {
        let repo = Arc::new(InMemoryRepository::default());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let repo = Arc::clone(&repo);
                tokio::spawn(async move { repo.create(consignment(&format!("c{i}"))).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let all = repo.all().await.unwrap();
        let unique: HashSet<_> = all.iter().map(|c| c.id.clone()).collect();
        assert_eq!((all.len(), unique.len()), (200, 200));
    }
}
