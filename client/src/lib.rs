//! The client side of shippy: calling one of a service's instances, found
//! through the registry, with failover, and what a call carries with it.
//!
//! - [`channel`]: [`ServiceChannel`], a tower `Service` that generated
//!   clients take as their channel (`VesselServiceClient::new(channel)`):
//!   round robin over the instances, failover within the deadline.
//! - [`context`]: the request id and deadline that travel from a served
//!   call to the calls it makes.
//! - [`grpc_timeout`]: reading and writing the `grpc-timeout` header.
//! - [`health`]: asking an instance for its gRPC health.
//! - [`status`]: status codes by their canonical names.

pub mod channel;
pub mod context;
pub mod grpc_timeout;
pub mod health;
pub mod status;

pub use channel::{SendOnce, ServiceChannel};
pub use context::{CallContext, RequestId};
