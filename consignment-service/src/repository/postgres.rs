//! The shared store: a PostgreSQL database that several consignment-service
//! replicas use at once. The schema is migrated on start; sqlx takes an
//! advisory lock for that, so replicas starting together do not race.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::{
    ConsignmentRepository, containers_to_json, row_to_consignment, start_failed_on_full_disk,
    store_error,
};
use crate::domain::Consignment;
use crate::error::ConsignmentError;

/// How long getting a connection may take, at start and per call.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock key creates take turns on ("shippy-c" in ASCII).
const CREATE_LOCK: i64 = 0x7368_6970_7079_2d63;
/// Connections each replica keeps at most.
const MAX_CONNECTIONS: u32 = 8;

/// Consignments in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresRepository {
    pool: PgPool,
}

impl PostgresRepository {
    /// Connects to `url` and brings the schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let shown = redacted(url);
        let options = PgConnectOptions::from_str(url)
            .with_context(|| format!("invalid PostgreSQL URL {shown}"))?;
        // One direct connection first: the pool would retry until its
        // timeout and then report only that it timed out, not why.
        let first = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| anyhow!("no answer within {ACQUIRE_TIMEOUT:?}"))
            .and_then(|connected| connected.map_err(|err| anyhow!("{err}")))
            .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|err| anyhow!("{err}"))
            .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|err| {
                if start_failed_on_full_disk(&err) {
                    anyhow!("the consignment store's disk is full: {err}")
                } else {
                    anyhow!("{err}")
                }
            })
            .with_context(|| format!("cannot migrate the schema of PostgreSQL at {shown}"))?;
        Ok(Self { pool })
    }
}

/// `url` without its password, for logs and errors: `user@host:port/db`.
pub fn redacted(url: &str) -> String {
    match PgConnectOptions::from_str(url) {
        Ok(options) => format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or(options.get_username())
        ),
        Err(_) => "(an unparseable postgres:// URL)".to_owned(),
    }
}

#[async_trait]
impl ConsignmentRepository for PostgresRepository {
    async fn create(&self, consignment: Consignment) -> Result<Consignment, ConsignmentError> {
        let containers = containers_to_json(&consignment.containers)?;
        let failed = |err| store_error(&consignment.id, err);
        // Creates take turns, so that seq order is commit order. Otherwise
        // a reader paging by seq could pass seq 42 (committed) while seq 41
        // (allocated earlier, committed later) is still invisible, and never
        // see 41.
        let mut transaction = self.pool.begin().await.map_err(failed)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CREATE_LOCK)
            .execute(&mut *transaction)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO consignments (id, description, weight, vessel_id, containers) \
             VALUES ($1, $2, $3, $4, $5::jsonb)",
        )
        .bind(&consignment.id)
        .bind(&consignment.description)
        .bind(i64::from(consignment.weight))
        .bind(&consignment.vessel_id)
        .bind(containers)
        .execute(&mut *transaction)
        .await
        .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        Ok(consignment)
    }

    fn scan(
        &self,
        after: Option<i64>,
        limit: u32,
    ) -> BoxStream<'_, Result<(i64, Consignment), ConsignmentError>> {
        sqlx::query(
            "SELECT seq, id, description, weight, vessel_id, containers::text AS containers \
             FROM consignments WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch(&self.pool)
        .map(|row| {
            row.map_err(|err| store_error("", err))
                .and_then(|row| row_to_consignment(&row))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shippy_test_support::Postgres;

    use super::*;
    use crate::repository::contract;

    /// A store in a fresh database `name` of `server`.
    async fn store(server: &Postgres, name: &str) -> PostgresRepository {
        let admin = PgPool::connect(&server.url()).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = server.url().replace("/postgres", &format!("/{name}"));
        PostgresRepository::open(&url).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn meets_the_store_contract_on_a_real_server() {
        let server = Postgres::start().await.unwrap();
        contract::keeps_creation_order_and_every_field(&store(&server, "ordered").await).await;
        contract::refuses_a_taken_id_without_overwriting(&store(&server, "taken").await).await;
        contract::scans_from_any_point_in_bounded_steps(&store(&server, "paged").await).await;
        contract::stores_concurrent_creates_once_each(Arc::new(store(&server, "parallel").await))
            .await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        let port = shippy_test_support::free_port().unwrap();
        let url = format!("postgres://shippy:secret@127.0.0.1:{port}/shippy");
        let err = PostgresRepository::open(&url).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with(&format!(
                "cannot connect to PostgreSQL at shippy@127.0.0.1:{port}/shippy"
            )),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn the_redacted_url_keeps_everything_but_the_password() {
        assert_eq!(
            redacted("postgres://shippy:hunter2@db.internal:5433/consignments"),
            "shippy@db.internal:5433/consignments"
        );
    }
}
