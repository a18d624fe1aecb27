//! Spec checks the schema cannot express on the API servers we support (no CEL rules there):
//! fields that depend on each other. A spec with problems gets an `InvalidSpec` condition and a
//! Warning event naming them, and the operator changes nothing in the cluster.

use std::collections::BTreeSet;

use crate::crd::{ReplicationClusterSpec, ReplicationMode, Role};

/// The longest activation token lifetime, in hours: the sidecar refuses to issue a token for
/// longer (720h, 30 days), so a longer `ttl` could never be reconciled.
const MAX_TOKEN_TTL_SECONDS: u64 = ferry_proto::MAX_ACTIVATION_TOKEN_TTL_SECONDS;
const MAX_TOKEN_TTL_HOURS: u64 = MAX_TOKEN_TTL_SECONDS / 3600;

/// Every problem found, each a sentence naming the field; empty when the spec is usable.
pub fn problems(spec: &ReplicationClusterSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.mode == ReplicationMode::Dr {
        out.push(
            "spec.mode: dr (disaster recovery) replication is not supported yet; use performance"
                .into(),
        );
    }
    if !(spec.cluster.address.starts_with("http://")
        || spec.cluster.address.starts_with("https://"))
    {
        out.push(format!(
            "spec.cluster.address {:?} must start with http:// or https://",
            spec.cluster.address
        ));
    }
    if spec.cluster.address.starts_with("http://") {
        if spec.cluster.ca_bundle.is_some() {
            out.push(
                "spec.cluster.caBundle is set but spec.cluster.address is plain http://".into(),
            );
        }
        if !spec.cluster.insecure_http {
            out.push(format!(
                "spec.cluster.address {:?} is plain http://: the admin token would cross the \
                 network in clear text; use https://, or set spec.cluster.insecureHttp: true if \
                 the link is local or encrypted underneath",
                spec.cluster.address
            ));
        }
    }
    if let Some(primary) = &spec.primary {
        let mut ids = BTreeSet::new();
        let mut secrets = BTreeSet::new();
        for (n, grant) in primary.secondaries.iter().enumerate() {
            let at = format!("spec.primary.secondaries[{n}]");
            if !ids.insert(grant.id.as_str()) {
                out.push(format!("{at}.id {:?} is listed twice", grant.id));
            }
            if !secrets.insert(grant.token_secret_name.as_str()) {
                out.push(format!(
                    "{at}.tokenSecretName {:?} is used by another secondary",
                    grant.token_secret_name
                ));
            }
            if grant.token_secret_name == spec.cluster.token_secret_ref.name {
                out.push(format!(
                    "{at}.tokenSecretName {:?} is the Secret holding the operator's admin token",
                    grant.token_secret_name
                ));
            }
            match ferry_proto::time::parse_duration(&grant.ttl) {
                Some(s) if s > 0 && s <= MAX_TOKEN_TTL_SECONDS => {}
                _ => out.push(format!(
                    "{at}.ttl {:?} must be a duration between 1s and {MAX_TOKEN_TTL_HOURS}h, such as 30m",
                    grant.ttl
                )),
            }
        }
    }
    if spec.role == Role::Secondary {
        let secondary = spec.secondary.as_ref();
        let has_token = secondary.is_some_and(|s| s.token_secret_ref.is_some());
        let has_addrs = secondary.is_some_and(|s| !s.primary_addrs.is_empty());
        if !has_token && !has_addrs {
            out.push(
                "spec.secondary: a secondary needs tokenSecretRef (to join) or primaryAddrs (to follow a new primary after a switchover)"
                    .into(),
            );
        }
    }
    if let Some(secondary) = &spec.secondary {
        for (n, addr) in secondary.primary_addrs.iter().enumerate() {
            let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                out.push(format!(
                    "spec.secondary.primaryAddrs[{n}] {addr:?} is not host:port"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClusterRef, PrimarySpec, SecondaryGrant, SecondarySpec, SecretKeyRef};

    fn base() -> ReplicationClusterSpec {
        ReplicationClusterSpec {
            cluster: ClusterRef {
                address: "https://vault.secrets.svc:8200".into(),
                token_secret_ref: SecretKeyRef {
                    name: "admin".into(),
                    key: "token".into(),
                },
                ca_bundle: None,
                insecure_http: false,
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_primary_is_valid() {
        assert!(problems(&base()).is_empty());
    }

    #[test]
    fn a_plain_http_address_needs_insecure_http() {
        let mut s = base();
        s.cluster.address = "http://vault.secrets.svc:8200".into();
        let p = problems(&s).join("\n");
        assert!(
            p.contains("spec.cluster.address") && p.contains("spec.cluster.insecureHttp"),
            "{p}"
        );
        s.cluster.insecure_http = true;
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        // With https:// the field changes nothing.
        let mut s = base();
        s.cluster.insecure_http = true;
        assert!(problems(&s).is_empty());
    }

    #[test]
    fn activation_token_ttls_stop_where_the_sidecar_stops() {
        let with_ttl = |ttl: &str| {
            let mut s = base();
            s.primary = Some(PrimarySpec {
                primary_cluster_addr: None,
                secondaries: vec![SecondaryGrant {
                    id: "east".into(),
                    token_secret_name: "east-token".into(),
                    ttl: ttl.into(),
                }],
            });
            problems(&s)
        };
        for ok in ["1s", "30m", "720h", "30d", "2592000"] {
            assert!(with_ttl(ok).is_empty(), "{ok}: {:?}", with_ttl(ok));
        }
        for refused in ["721h", "768h", "31d", "2592001", "0s"] {
            let p = with_ttl(refused).join("\n");
            assert!(p.contains("between 1s and 720h"), "{refused}: {p}");
        }
    }

    #[test]
    fn the_crd_documents_the_same_ttl_limit() {
        let says = format!("At most {MAX_TOKEN_TTL_HOURS}h");
        assert!(crate::crd_yaml().contains(&says), "{says}");
    }

    #[test]
    fn contradictions_are_named() {
        let mut s = base();
        s.mode = ReplicationMode::Dr;
        s.primary = Some(PrimarySpec {
            primary_cluster_addr: None,
            secondaries: vec![
                SecondaryGrant {
                    id: "east".into(),
                    token_secret_name: "admin".into(),
                    ttl: "1000h".into(),
                },
                SecondaryGrant {
                    id: "east".into(),
                    token_secret_name: "admin".into(),
                    ttl: "30m".into(),
                },
            ],
        });
        let p = problems(&s).join("\n");
        for says in [
            "dr (disaster recovery)",
            "listed twice",
            "used by another",
            "admin token",
            "720h",
        ] {
            assert!(p.contains(says), "{says}: {p}");
        }
        let mut s = base();
        s.role = Role::Secondary;
        assert!(problems(&s)[0].contains("tokenSecretRef"));
        s.secondary = Some(SecondarySpec {
            token_secret_ref: None,
            primary_addrs: vec!["nohost".into()],
        });
        assert!(problems(&s)[0].contains("not host:port"));
    }
}
