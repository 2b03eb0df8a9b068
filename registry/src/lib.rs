//! Service registration and discovery over etcd for the shippy services.
//!
//! - [`record`]: the key layout and the JSON record stored per instance.
//! - [`registration`]: keeps an instance's record on a renewed lease and
//!   removes it on stop.
//! - [`discovery`]: follows a service's instances in etcd.
//! - [`pool`]: spreads calls over those instances and fails over from an
//!   unreachable one.
//! - [`server`]: the bind → serve → register → deregister → drain lifecycle
//!   both services share.
//! - [`catalog`]: every registered service and instance at once, for
//!   operators.
//! - [`config`]: the clap settings for all of the above.
//! - [`shutdown`]: the SIGINT/SIGTERM future.
//! - [`binary`]: the shared body of the service binaries' `main`.
//! - [`etcd`]: one etcd client per member, failing over between them.
//! - [`health`]: the gRPC health status, following registration and shutdown.
//! - [`telemetry`]: log output for the binaries.
//! - [`request_id`]: the id that follows a call across services.
//! - [`request_log`]: one log line per served call.
//! - [`grpc_timeout`]: parsing the caller's `grpc-timeout`.

mod backoff;
pub mod binary;
pub mod catalog;
pub mod config;
pub mod discovery;
pub mod etcd;
pub mod grpc_timeout;
pub mod health;
pub mod pool;
pub mod record;
pub mod registration;
pub mod request_id;
pub mod request_log;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::{RegistryArgs, ServerArgs};
pub use discovery::Discovery;
pub use record::{AdvertiseAddr, KeySpace, ServiceRecord};
pub use registration::{Registration, RegistrationState};
pub use server::{RegisteredServer, Services};
