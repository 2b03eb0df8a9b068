//! Asking vessel-service for a vessel, found by name through etcd.
//!
//! Calls go to the instances discovery follows, so no call reads etcd; an
//! unreachable instance is skipped for another within the deadline. The
//! caller's deadline is passed on; a call with no deadline gets the
//! configured default. So is the caller's request id, so vessel-service
//! logs the call under the same id.

use std::time::Duration;

use shippy_proto::vessel::v1 as pb;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use shippy_registry::pool::CallError;
use shippy_registry::{Discovery, grpc_timeout, request_id};
use tokio::time::Instant;
use tonic::Code;

use crate::error::ConsignmentError;

/// A client for whichever vessel-service instances are registered.
#[derive(Debug)]
pub struct VesselFinder {
    /// Follows vessel-service's instances in etcd.
    discovery: Discovery,
    /// The timeout for calls whose caller set no deadline.
    default_timeout: Duration,
}

impl VesselFinder {
    /// A finder over `discovery`'s instances.
    pub fn new(discovery: Discovery, default_timeout: Duration) -> Self {
        Self {
            discovery,
            default_timeout,
        }
    }

    /// The discovery behind this finder.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Returns the id of a vessel that carries `spec`, asking vessel-service
    /// before `deadline` (or within the default timeout when there is none).
    pub async fn find(
        &self,
        spec: pb::Specification,
        deadline: Option<Instant>,
    ) -> Result<String, ConsignmentError> {
        let service = self.discovery.service();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.default_timeout);
        // FindAvailable only reads, so it is safe to send again to another
        // instance when the first cannot be reached.
        let answer = self
            .discovery
            .call(deadline, |channel, remaining| {
                let mut request = tonic::Request::new(spec);
                request.set_timeout(remaining);
                request_id::propagate(&mut request);
                async move {
                    VesselServiceClient::new(channel)
                        .find_available(request)
                        .await
                }
            })
            .await
            .map_err(|err| vessel_error(service, err))?;
        answer
            .into_inner()
            .vessel
            .map(|vessel| vessel.id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ConsignmentError::Internal(anyhow::anyhow!(
                    "{service} answered FindAvailable without a vessel"
                ))
            })
    }
}

/// Maps why vessel-service gave no vessel onto what the consignment caller sees.
fn vessel_error(service: &str, err: CallError) -> ConsignmentError {
    let unavailable = |detail: String| ConsignmentError::VesselUnavailable {
        service: service.to_owned(),
        detail,
    };
    match err {
        CallError::NoInstances => unavailable("no instance is registered in etcd".into()),
        CallError::Unreachable(status) => unavailable(format!(
            "no instance could be reached ({})",
            status.message()
        )),
        CallError::DeadlineExceeded => ConsignmentError::DeadlineExceeded(service.to_owned()),
        CallError::Refused(status) => match status.code() {
            Code::NotFound => ConsignmentError::NoVesselFits(status.message().to_owned()),
            _ => ConsignmentError::Internal(anyhow::anyhow!(
                "{service} failed FindAvailable: {status}"
            )),
        },
    }
}

/// The caller's deadline from its `grpc-timeout` header, counted from now.
pub fn deadline_from(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let header = metadata.get("grpc-timeout")?.to_str().ok()?;
    grpc_timeout::parse(header).map(|timeout| Instant::now() + timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_vessel_keeps_vessel_services_message() {
        let err = vessel_error(
            "shippy.service.vessel",
            CallError::Refused(tonic::Status::not_found(
                "no vessel can carry 3 containers weighing 900000 kg",
            )),
        );
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "no vessel can carry 3 containers weighing 900000 kg"
        );
    }
}
