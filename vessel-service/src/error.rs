//! Everything vessel-service can answer besides a vessel, and the gRPC
//! status each maps to.

/// Why FindAvailable returned no vessel.
#[derive(Debug, thiserror::Error)]
pub enum VesselError {
    /// The request itself is wrong.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The offending field of the specification.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No available vessel is large enough.
    #[error("no vessel can carry {capacity} containers weighing {max_weight} kg")]
    NoVesselFits {
        /// Containers asked for.
        capacity: u32,
        /// Weight asked for, in kilograms.
        max_weight: u32,
    },
}

impl From<VesselError> for tonic::Status {
    fn from(err: VesselError) -> Self {
        match err {
            VesselError::InvalidSpec { .. } => Self::invalid_argument(err.to_string()),
            VesselError::NoVesselFits { .. } => Self::not_found(err.to_string()),
        }
    }
}
