//! The storage gateway's errors, and how they map to gRPC status codes.

use thiserror::Error;

/// Why a storage operation failed.
#[derive(Clone, Debug, Error)]
pub enum StoreError {
    /// The request is malformed or over a limit; nothing was written.
    #[error("{0}")]
    InvalidArgument(String),
    /// This sidecar no longer holds the cluster's write fence; nothing was written.
    #[error("write fence lost: {0}")]
    FenceLost(String),
    /// This node is a performance standby: another node holds the write fence and is the
    /// cluster's active node. Nothing was written; the write belongs on `active`.
    #[error("not active: {message}")]
    NotActive {
        message: String,
        active: crate::fence::FenceHolder,
    },
    /// etcd could not be reached or refused the operation; nothing was written.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// The transaction was sent but its outcome is unknown: it may or may not have committed.
    #[error("etcd transaction outcome unknown, the write may or may not be applied: {0}")]
    OutcomeUnknown(String),
    /// A replicated write reached a cluster that does not accept them (a performance secondary,
    /// or a demoted primary); the message starts with "read-only". Nothing was written.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// Stored data failed a check.
    #[error("{0}")]
    Corrupt(String),
    /// The sidecar is shutting down.
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            StoreError::NotActive { active, .. } => {
                let mut status = Status::failed_precondition(msg);
                for (name, value) in [
                    (ferry_proto::ACTIVE_NODE_METADATA, active.node_id),
                    (ferry_proto::ACTIVE_API_ADDR_METADATA, active.api_addr),
                ] {
                    if let Ok(value) = value.parse() {
                        status.metadata_mut().insert(name, value);
                    }
                }
                status
            }
            StoreError::InvalidArgument(_) => Status::invalid_argument(msg),
            StoreError::FenceLost(_) | StoreError::ReadOnly(_) => Status::failed_precondition(msg),
            StoreError::Unavailable(_) | StoreError::ShuttingDown => Status::unavailable(msg),
            StoreError::OutcomeUnknown(_) => Status::unknown(msg),
            StoreError::Corrupt(_) => Status::data_loss(msg),
        }
    }
}

/// Whether an etcd error means the request was certainly not applied.
pub fn definitely_not_applied(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
        ),
        etcd_client::Error::InvalidArgs(_) => true,
        _ => false,
    }
}
