//! What the CLI's end-to-end tests share: the sample file, the registry
//! prefixes, waiting for registrations, and running the CLI binary.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use shippy_test_support::{Etcd, wait_until};

/// How long a service may take to register.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// Where the services register, by default.
pub const VESSEL: &str = "/shippy/services/shippy.service.vessel/";
pub const CONSIGNMENT: &str = "/shippy/services/shippy.service.consignment/";

/// The repository's sample consignment.json.
pub fn sample_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../consignment.json")
}

/// Waits until `count` keys are under `prefix`.
pub async fn wait_for_keys(etcd: &Etcd, prefix: &str, count: usize) {
    wait_until(
        DEADLINE,
        &format!("{count} key(s) under {prefix}"),
        || async { etcd.get_prefix(prefix).await.unwrap().len() == count },
    )
    .await
    .unwrap();
}

/// Runs the CLI against `etcd` with a clean environment.
pub fn run_cli(etcd: &Etcd, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_consignment-cli"))
        .env_clear()
        .env("SHIPPY_ETCD_ENDPOINTS", etcd.endpoint())
        .args(args)
        .output()
        .unwrap()
}
