//! Where the registry is: the command-line and environment settings shared
//! by every shippy process that talks to etcd.

use clap::Args;

use crate::record::{DEFAULT_PREFIX, KeySpace};

/// Where the registry lives.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// etcd endpoints, comma-separated; give several members of a cluster so
    /// that losing one does not matter.
    #[arg(
        long = "etcd-endpoints",
        env = "SHIPPY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URLS"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix under which services register as <PREFIX>/<service-name>/<instance-id>.
    #[arg(
        long = "registry-prefix",
        env = "SHIPPY_REGISTRY_PREFIX",
        default_value = DEFAULT_PREFIX,
        value_name = "PREFIX"
    )]
    pub registry_prefix: String,
}

impl RegistryArgs {
    /// The key layout under the configured prefix.
    pub fn key_space(&self) -> KeySpace {
        KeySpace::new(&self.registry_prefix)
    }
}
