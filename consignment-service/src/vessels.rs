//! Asking vessel-service for a vessel, found by name through etcd.
//!
//! Calls go through a [`ServiceChannel`] over the instances discovery
//! follows, so no call reads etcd and an unreachable instance is skipped
//! for another within the deadline. The channel also passes on the
//! caller's deadline and request id (a call with no deadline gets the
//! configured default), so vessel-service gives up when the caller would
//! and logs the call under the same id.

use shippy_client::ServiceChannel;
use shippy_proto::vessel::v1 as pb;
use shippy_proto::vessel::v1::vessel_service_client::VesselServiceClient;
use tonic::{Code, Status};

use crate::error::ConsignmentError;

/// A client for whichever vessel-service instances are registered.
#[derive(Debug, Clone)]
pub struct VesselFinder {
    /// Balances calls over vessel-service's instances.
    channel: ServiceChannel,
}

impl VesselFinder {
    /// A finder calling through `channel`.
    pub fn new(channel: ServiceChannel) -> Self {
        Self { channel }
    }

    /// The channel behind this finder.
    pub fn channel(&self) -> &ServiceChannel {
        &self.channel
    }

    /// Returns the id of a vessel that meets `spec`.
    pub async fn find(&self, spec: pb::Specification) -> Result<String, ConsignmentError> {
        let service = self.channel.service();
        let answer = VesselServiceClient::new(self.channel.clone())
            .find_available(spec)
            .await
            .map_err(|status| vessel_error(service, &status))?;
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
fn vessel_error(service: &str, status: &Status) -> ConsignmentError {
    match status.code() {
        Code::NotFound => ConsignmentError::NoVesselFits(status.message().to_owned()),
        Code::Unavailable => ConsignmentError::VesselUnavailable(status.message().to_owned()),
        Code::DeadlineExceeded => ConsignmentError::DeadlineExceeded(service.to_owned()),
        _ => {
            ConsignmentError::Internal(anyhow::anyhow!("{service} failed FindAvailable: {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use shippy_proto::vessel::SERVICE_NAME;

    use super::*;

    #[test]
    fn a_missing_vessel_keeps_vessel_services_message() {
        let err = vessel_error(
            SERVICE_NAME,
            &Status::not_found("no vessel can carry 3 containers weighing 900000 kg"),
        );
        let status = Status::from(err);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "no vessel can carry 3 containers weighing 900000 kg"
        );
    }

    #[test]
    fn no_reachable_instance_is_unavailable_and_names_the_service() {
        let status = Status::from(vessel_error(
            SERVICE_NAME,
            &Status::unavailable("no instance of shippy.service.vessel is registered in etcd"),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains(SERVICE_NAME),
            "{}",
            status.message()
        );
    }
}
