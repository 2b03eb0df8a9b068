//! The gRPC face of the fleet: parses requests, asks the fleet, maps errors.

use std::sync::Arc;

use shippy_proto::vessel::v1 as pb;
use shippy_proto::vessel::v1::vessel_service_server::VesselService;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::domain::{Fleet, Specification};
use crate::error::VesselError;

/// Serves FindAvailable from a fleet fixed at start-up.
#[derive(Debug, Clone)]
pub struct VesselHandler {
    /// Read-only after start-up, so shared without a lock.
    fleet: Arc<Fleet>,
}

impl VesselHandler {
    /// A handler answering from `fleet`.
    pub fn new(fleet: Fleet) -> Self {
        Self {
            fleet: Arc::new(fleet),
        }
    }
}

#[tonic::async_trait]
impl VesselService for VesselHandler {
    #[tracing::instrument(
        name = "FindAvailable",
        skip_all,
        fields(capacity = request.get_ref().capacity, max_weight = request.get_ref().max_weight)
    )]
    async fn find_available(
        &self,
        request: Request<pb::Specification>,
    ) -> Result<Response<pb::Response>, Status> {
        let spec = Specification::parse(request.get_ref())?;
        let vessel = self
            .fleet
            .find_available(spec)
            .ok_or(VesselError::NoVesselFits {
                capacity: spec.capacity.into(),
                max_weight: spec.max_weight.into(),
            })?;
        info!(vessel_id = %vessel.id, vessel = %vessel.name, "vessel found");
        Ok(Response::new(pb::Response {
            vessel: Some(vessel.into()),
            vessels: Vec::new(),
        }))
    }
}
