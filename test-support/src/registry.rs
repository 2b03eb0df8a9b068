//! One test's view of the registry: the etcd members and the key prefix its
//! services register under, and the reads and waits tests make on them.
//!
//! Every [`TestRegistry`] has a prefix of its own, so tests sharing an etcd
//! never see each other's instances. Service binaries and the CLI started
//! through this crate are pointed at it; an in-process service's config
//! takes [`TestRegistry::args`].

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use etcd_client::GetOptions;
use shippy_registry::record::{Instance, decode_instance};
use shippy_registry::{EtcdClient, KeySpace, RegistrationState};
use tokio::sync::watch;

use crate::shared::{self, unique_prefix};
use crate::{DEADLINE, wait_for, wait_until};

/// How long one read of a test's may wait on a member before trying the
/// next: a member that is down never answers.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// etcd members and a key prefix of one test's own.
#[derive(Debug)]
pub struct TestRegistry {
    /// Every member's client URL.
    endpoints: Vec<String>,
    /// The prefix, as services take it.
    prefix: String,
    /// The key layout under `prefix`.
    keys: KeySpace,
    /// The member that answered last, tried first next time.
    preferred: AtomicUsize,
}

/// Which incarnation of a key this is: a key deleted and put back, or
/// moved to another lease, reads differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    /// The revision that created the key.
    pub create_revision: i64,
    /// The lease it sits on; 0 for none.
    pub lease: i64,
}

impl TestRegistry {
    /// A prefix of the calling test's own in this test binary's shared etcd,
    /// which starts on first use.
    pub async fn shared() -> anyhow::Result<Self> {
        Ok(Self::new(vec![shared::endpoint().await?]))
    }

    /// A prefix of the calling test's own on the etcd at `endpoints`.
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        let prefix = unique_prefix();
        Self {
            endpoints,
            keys: KeySpace::new(&prefix),
            prefix,
            preferred: AtomicUsize::new(0),
        }
    }

    /// The members' client URLs, comma-separated, as services take them.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// The key layout under the prefix.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The environment that points a service binary or the CLI here.
    pub(crate) fn env(&self) -> [(&'static str, String); 2] {
        [
            ("SHIPPY_ETCD_ENDPOINTS", self.endpoints()),
            ("SHIPPY_REGISTRY_PREFIX", self.prefix.clone()),
        ]
    }

    /// The flags that point a service's config here.
    pub fn args(&self) -> [String; 2] {
        [
            format!("--etcd-endpoints={}", self.endpoints()),
            format!("--registry-prefix={}", self.prefix),
        ]
    }

    /// A raw etcd client over every member, for tests that write to etcd
    /// behind the registry's back.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        etcd_client::Client::connect(&self.endpoints, None)
            .await
            .context("connecting to test etcd")
    }

    /// The registry's own client over every member, for the registration
    /// or discovery under test.
    pub async fn etcd_client(&self) -> anyhow::Result<EtcdClient> {
        EtcdClient::connect(&self.endpoints).await
    }

    /// Sends `request` to the member that answered last, then to each other
    /// member while one fails or does not answer within [`MEMBER_TIMEOUT`].
    async fn first_answer<T, F, Fut>(&self, what: &str, request: F) -> anyhow::Result<T>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last_error = anyhow!("no etcd endpoints");
        for index in (0..self.endpoints.len()).map(|i| (first + i) % self.endpoints.len()) {
            let endpoint = &self.endpoints[index];
            let attempt = async {
                let client = etcd_client::Client::connect([endpoint], None).await?;
                request(client).await
            };
            match tokio::time::timeout(MEMBER_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Ok(Err(err)) => {
                    last_error = anyhow!(err).context(format!("{what} from {endpoint}"))
                }
                Err(_) => last_error = anyhow!("{what}: {endpoint} did not answer in time"),
            }
        }
        Err(last_error)
    }

    /// Every key under `prefix` with its value, from the first member that answers.
    async fn get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let response = self
            .first_answer("reading keys", |mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// Which incarnation of `key` is stored, if any.
    pub async fn key_version(&self, key: &str) -> anyhow::Result<Option<KeyVersion>> {
        let response = self
            .first_answer("reading a key", |mut client| async move {
                client.get(key, None).await
            })
            .await?;
        Ok(response.kvs().first().map(|kv| KeyVersion {
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }))
    }

    /// The registered instances of `service`; an error when etcd does not
    /// answer or a record is malformed.
    pub async fn instances(&self, service: &str) -> anyhow::Result<Vec<Instance>> {
        let prefix = self.keys.service_prefix(service);
        self.get_prefix(&prefix)
            .await?
            .into_iter()
            .map(|(key, value)| {
                decode_instance(&prefix, key.as_bytes(), value.as_bytes()).map_err(Into::into)
            })
            .collect()
    }

    /// Waits until a lease of `ttl_secs` seconds, granted now and never
    /// renewed, has expired: etcd's own word that `ttl_secs` have passed,
    /// for tests that something outlives a lease. Returns the lease's id.
    pub async fn outlive(&self, ttl_secs: i64) -> anyhow::Result<i64> {
        let witness = wait_for(DEADLINE, "a lease to be granted", || async {
            self.first_answer("granting a lease", |mut client| async move {
                client.lease_grant(ttl_secs, None).await
            })
            .await
            .ok()
        })
        .await?
        .id();
        // The TTL itself, plus etcd's time to notice, plus the usual slack.
        let within = Duration::from_secs(ttl_secs.unsigned_abs()) + DEADLINE;
        wait_until(within, "the unrenewed lease to expire", || async {
            self.first_answer("reading a lease", |mut client| async move {
                client.lease_time_to_live(witness, None).await
            })
            .await
            .is_ok_and(|lease| lease.ttl() == -1)
        })
        .await?;
        Ok(witness)
    }
}

/// Waits until a registration `state` reports [`RegistrationState::Registered`].
pub async fn registered(mut state: watch::Receiver<RegistrationState>) -> anyhow::Result<()> {
    tokio::time::timeout(
        DEADLINE,
        state.wait_for(|now| *now == RegistrationState::Registered),
    )
    .await
    .map_err(|_| anyhow!("not registered within {DEADLINE:?}"))?
    .map_err(|_| anyhow!("the registration ended before it registered"))?;
    Ok(())
}
