//! `ferry-sidecar admin ...`: the admin API from the command line, for operators.

use ferry_proto::storage::admin_client::AdminClient;
use ferry_proto::storage::{CheckMerkleRequest, ReadWalRequest, ReindexRequest, StatusRequest};

use crate::config::AdminCall;

/// Makes one admin call to the sidecar at `socket` and prints the answer.
pub async fn run(socket: &std::path::Path, call: AdminCall) -> anyhow::Result<()> {
    let mut admin = AdminClient::new(ferry_proto::connect_unix(socket));
    let failed = |e: tonic::Status| {
        anyhow::anyhow!("admin call to {} failed: {}", socket.display(), e.message())
    };
    match call {
        AdminCall::Status => println!(
            "{:#?}",
            admin
                .status(StatusRequest {})
                .await
                .map_err(failed)?
                .into_inner()
        ),
        AdminCall::Reindex => println!(
            "{:#?}",
            admin
                .reindex(ReindexRequest {})
                .await
                .map_err(failed)?
                .into_inner()
        ),
        AdminCall::CheckMerkle => {
            let report = admin
                .check_merkle(CheckMerkleRequest {})
                .await
                .map_err(failed)?
                .into_inner();
            println!("{report:#?}");
            anyhow::ensure!(report.consistent, "the merkle index does not match storage");
        }
        AdminCall::ReadWal { after, limit } => {
            let read = admin
                .read_wal(ReadWalRequest { after, limit })
                .await
                .map_err(failed)?
                .into_inner();
            println!("{read:#?}");
        }
    }
    Ok(())
}
