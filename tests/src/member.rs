//! A test that joins a replication set as a member itself, the way a secondary does (its own key
//! and CA, a certificate signing request with an activation token), to call the primary's
//! cluster port directly: how tests show what even an activated member cannot do.

use ferry_proto::replication::ActivateRequest;
use ferry_proto::replication::replication_client::ReplicationClient;
use ferry_sidecar::replication::membership::NewMember;
use ferry_sidecar::replication::pki::CertifiedKey;
use ferry_sidecar::replication::token::TokenClaims;
use ferry_sidecar::replication::transport::{TlsMaterial, client};
use tonic::transport::Channel;

/// An activated member's identity.
pub struct TestMember {
    pub id: String,
    pub cluster_id: String,
    pub keys: NewMember,
    /// What it connects to the primary with: the primary's CA, its client certificate.
    pub tls: TlsMaterial,
}

impl TestMember {
    /// Activates with `token` at the primary the token names.
    pub async fn activate(token: &str) -> anyhow::Result<Self> {
        let claims = TokenClaims::verify(token, ferry_sidecar::replication::unix_now())?;
        let keys = NewMember::generate(&claims.cluster_id, &claims.secondary_id)?;
        let anonymous = TlsMaterial {
            ca_cert_pem: claims.ca_cert_pem.clone(),
            identity: None,
        };
        let reply = client(&claims.primary_cluster_addr, &anonymous)?
            .activate(ActivateRequest {
                token: token.to_owned(),
                csr_pem: keys.identity.csr_pem()?,
                ca_cert_pem: keys.ca.key.cert_pem.clone(),
            })
            .await?
            .into_inner();
        let tls = TlsMaterial {
            ca_cert_pem: claims.ca_cert_pem,
            identity: Some(CertifiedKey {
                cert_pem: reply.client_cert_pem,
                key_pem: keys.identity.key_pem.clone(),
            }),
        };
        Ok(Self {
            id: claims.secondary_id,
            cluster_id: claims.cluster_id,
            keys,
            tls,
        })
    }

    /// A client of the primary's cluster port at `address`, as this member.
    pub fn client(&self, address: &str) -> anyhow::Result<ReplicationClient<Channel>> {
        client(address, &self.tls)
    }
}
