//! Generated wire types and gRPC client/server stubs for shippy.
//!
//! This crate holds no logic: the services parse these types into their own
//! domain types at the edge. Beside each package are the names its service
//! registers under in etcd, since callers depend on them as on the stubs. Packages are versioned (`shippy.<service>.v1`) so
//! a breaking change can ship as `v2` beside the old one.
//!
//! `consignment::v1::Consignment` and `Container` also derive serde: their
//! JSON form is the consignment file consignment-cli reads and the `--json`
//! it prints, so that shape lives in the .proto and nowhere else. Which
//! fields a file may omit or must not give is declared in `build.rs`.
#![allow(missing_docs, clippy::all)]

/// The consignment service's messages and stubs.
pub mod consignment {
    /// The name consignment-service registers under in etcd unless
    /// configured otherwise, and that callers look it up by.
    pub const SERVICE_NAME: &str = "shippy.service.consignment";

    /// Version 1 of `shippy.consignment`.
    pub mod v1 {
        tonic::include_proto!("shippy.consignment.v1");
    }
}

/// The vessel service's messages and stubs.
pub mod vessel {
    /// The name vessel-service registers under in etcd unless configured
    /// otherwise, and that callers look it up by.
    pub const SERVICE_NAME: &str = "shippy.service.vessel";

    /// Version 1 of `shippy.vessel`.
    pub mod v1 {
        tonic::include_proto!("shippy.vessel.v1");
    }
}

/// The encoded descriptors of every shippy .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shippy_descriptor");
