//! The service registry over etcd: where each instance's record lives, how
//! an instance keeps it there, and how others find it.
//!
//! - [`record`]: the key layout and the JSON record stored per instance.
//! - [`registration`]: keeps an instance's record on a renewed lease and
//!   removes it on stop.
//! - [`discovery`]: follows a service's instances in etcd.
//! - [`catalog`]: every registered service and instance at once, for
//!   operators.
//! - [`etcd`]: one etcd client per member, failing over between them.
//! - [`retry`]: the request timeout, backoff and outage logging all of the
//!   above share.
//! - [`config`]: the clap settings that say where the registry is.
//!
//! Serving (`shippy-server`) and calling (`shippy-client`) build on this
//! crate; it knows nothing of gRPC services itself.

pub mod catalog;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod record;
pub mod registration;
pub mod retry;

pub use config::RegistryArgs;
pub use discovery::{Discovery, InstanceMap};
pub use etcd::EtcdClient;
pub use record::{AdvertiseAddr, KeySpace, ServiceRecord};
pub use registration::{Registration, RegistrationState};
