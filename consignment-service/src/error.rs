//! Everything CreateConsignment and GetConsignments can fail with, and the
//! gRPC status each maps to. This is the one place that decides statuses.

use tracing::error;

/// Why a consignment call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsignmentError {
    /// The request is malformed; names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field, e.g. `weight` or `containers[1].customer_id`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A consignment with this id is already stored.
    #[error("consignment {0:?} already exists")]
    AlreadyExists(String),
    /// vessel-service answered that no vessel fits.
    #[error("{0}")]
    NoVesselFits(String),
    /// vessel-service has no instance, or none answered; the message, from
    /// the channel that looked, names the service.
    #[error("{0}")]
    VesselUnavailable(String),
    /// The caller's deadline passed while waiting for vessel-service.
    #[error("deadline exceeded while asking {0} for a vessel")]
    DeadlineExceeded(String),
    /// A consignment, or the consignments an unpaged GetConsignments asks
    /// for, would not fit in one gRPC message; the text says what to do.
    #[error("{0}")]
    TooLarge(String),
    /// The store's disk (or the filesystem holding its data) is full; the
    /// detail, for the log, is what the store said.
    #[error("the consignment store's disk is full: {0}")]
    DiskFull(String),
    /// The consignment store cannot be reached, or is too busy, right now.
    /// When this cuts a commit short, the consignment may or may not have
    /// been stored: retry with the same id to find out (ALREADY_EXISTS).
    #[error("the consignment store is unavailable: {0}")]
    StoreUnavailable(String),
    /// A fault on our side; details go to the log, not the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ConsignmentError {
    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A copy of the same failure for another caller, as when one commit of
/// several creates fails. An internal cause is copied as its text, with
/// its chain of causes.
impl Clone for ConsignmentError {
    fn clone(&self) -> Self {
        match self {
            Self::InvalidArgument { field, reason } => Self::invalid(field, reason),
            Self::AlreadyExists(id) => Self::AlreadyExists(id.clone()),
            Self::NoVesselFits(text) => Self::NoVesselFits(text.clone()),
            Self::VesselUnavailable(text) => Self::VesselUnavailable(text.clone()),
            Self::DeadlineExceeded(service) => Self::DeadlineExceeded(service.clone()),
            Self::TooLarge(text) => Self::TooLarge(text.clone()),
            Self::DiskFull(detail) => Self::DiskFull(detail.clone()),
            Self::StoreUnavailable(detail) => Self::StoreUnavailable(detail.clone()),
            Self::Internal(cause) => Self::Internal(anyhow::anyhow!("{cause:#}")),
        }
    }
}

impl From<ConsignmentError> for tonic::Status {
    fn from(err: ConsignmentError) -> Self {
        match &err {
            ConsignmentError::InvalidArgument { .. } => Self::invalid_argument(err.to_string()),
            ConsignmentError::AlreadyExists(_) => Self::already_exists(err.to_string()),
            ConsignmentError::NoVesselFits(_) => Self::not_found(err.to_string()),
            ConsignmentError::VesselUnavailable(_) => Self::unavailable(err.to_string()),
            ConsignmentError::DeadlineExceeded(_) => Self::deadline_exceeded(err.to_string()),
            ConsignmentError::TooLarge(_) => Self::resource_exhausted(err.to_string()),
            // UNAVAILABLE rather than RESOURCE_EXHAUSTED: nothing about the
            // request is wrong, and the same call succeeds once an operator
            // frees space (consignment-cli reports it as a service failure,
            // exit 1, not as bad input).
            ConsignmentError::DiskFull(detail) => {
                error!(error = %detail, "the consignment store's disk is full");
                Self::unavailable("the consignment store's disk is full")
            }
            ConsignmentError::StoreUnavailable(detail) => {
                error!(error = %detail, "consignment store unavailable");
                Self::unavailable("the consignment store is unavailable")
            }
            ConsignmentError::Internal(cause) => {
                error!(error = format!("{cause:#}"), "internal error");
                Self::internal("internal error")
            }
        }
    }
}
