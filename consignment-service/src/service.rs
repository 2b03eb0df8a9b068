//! The gRPC face of the consignment service: parse, find a vessel, store;
//! and list, a page at a time (pages and their memory: [`crate::listing`]).

use std::sync::Arc;

use shippy_proto::consignment::v1 as pb;
use shippy_proto::consignment::v1::shipping_service_server::ShippingService;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::domain::NewConsignment;
use crate::listing::{Lister, PageRequest};
use crate::repository::ConsignmentRepository;
use crate::vessels::VesselFinder;

/// Serves CreateConsignment and GetConsignments.
pub struct ShippingHandler {
    /// Where consignments are stored.
    repository: Arc<dyn ConsignmentRepository>,
    /// Finds a vessel for each new consignment.
    vessels: Arc<VesselFinder>,
    /// Reads GetConsignments pages from the same store.
    lister: Lister,
}

impl ShippingHandler {
    /// A handler storing into `repository` and asking `vessels` for vessels.
    pub fn new(repository: Arc<dyn ConsignmentRepository>, vessels: Arc<VesselFinder>) -> Self {
        Self {
            lister: Lister::new(Arc::clone(&repository)),
            repository,
            vessels,
        }
    }
}

#[tonic::async_trait]
impl ShippingService for ShippingHandler {
    #[tracing::instrument(name = "CreateConsignment", skip_all)]
    async fn create_consignment(
        &self,
        request: Request<pb::Consignment>,
    ) -> Result<Response<pb::Response>, Status> {
        let new = NewConsignment::parse(request.into_inner())?;
        let vessel_id = self.vessels.find(new.vessel_specification()).await?;
        let stored = self.repository.create(new.assign(vessel_id)).await?;
        info!(id = %stored.id, vessel_id = %stored.vessel_id, "consignment created");
        Ok(Response::new(pb::Response {
            created: true,
            consignment: Some(stored.into()),
            consignments: Vec::new(),
            next_page_token: String::new(),
        }))
    }

    #[tracing::instrument(name = "GetConsignments", skip_all)]
    async fn get_consignments(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::Response>, Status> {
        let (page, share) = self
            .lister
            .page(PageRequest::parse(request.get_ref())?)
            .await?;
        let mut response = Response::new(page);
        // Held until the response has been sent (see listing::HoldShares).
        response.extensions_mut().insert(share);
        Ok(response)
    }
}
