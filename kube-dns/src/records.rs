//! The name table: which names exist and their addresses, built from Services and Endpoints.
//!
//! Pure: [`NameTable::build`] takes the objects a list call returned and answers lookups; the
//! polling that fetches them lives in [`crate::source`]. A table is rebuilt whole from each
//! poll, so it always reflects one consistent listing and never drifts from the API.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Endpoints, Service};

use crate::codec::{Answer, CLASS_IN, TYPE_A};

/// Names under the cluster domain and their A records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    names: HashMap<String, Vec<Ipv4Addr>>,
}

impl NameTable {
    /// The table for `services` and their `endpoints` under `domain` (`cluster.local`).
    ///
    /// A Service with a ClusterIP answers with it; a headless one (`clusterIP: None`) with its
    /// endpoints' ready addresses, and each address that has a hostname gets its own name
    /// below the Service's. ExternalName Services and IPv6 addresses are left out.
    pub fn build(domain: &str, services: &[Service], endpoints: &[Endpoints]) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let endpoints_of: HashMap<(&str, &str), &Endpoints> = endpoints
            .iter()
            .filter_map(|e| {
                Some((
                    (
                        e.metadata.namespace.as_deref()?,
                        e.metadata.name.as_deref()?,
                    ),
                    e,
                ))
            })
            .collect();
        let mut names: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for service in services {
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let Some(spec) = &service.spec else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let service_name = format!("{name}.{namespace}.svc.{domain}").to_ascii_lowercase();
            match spec.cluster_ip.as_deref() {
                Some("None") => {
                    let mut all = Vec::new();
                    let subsets = endpoints_of
                        .get(&(namespace, name))
                        .and_then(|e| e.subsets.as_deref())
                        .unwrap_or_default();
                    for address in subsets.iter().flat_map(|s| s.addresses.iter().flatten()) {
                        let Ok(ip) = address.ip.parse::<Ipv4Addr>() else {
                            continue;
                        };
                        if !all.contains(&ip) {
                            all.push(ip);
                        }
                        if let Some(hostname) = &address.hostname {
                            let member = format!("{hostname}.{service_name}").to_ascii_lowercase();
                            let entry = names.entry(member).or_default();
                            if !entry.contains(&ip) {
                                entry.push(ip);
                            }
                        }
                    }
                    all.sort();
                    names.insert(service_name, all);
                }
                Some(ip) => {
                    if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                        names.insert(service_name, vec![ip]);
                    }
                }
                None => {}
            }
        }
        Self { names }
    }

    /// The answer to a question for `name` (lowercase, no trailing dot) of type `qtype`.
    pub fn lookup(&self, name: &str, qtype: u16, qclass: u16) -> Answer {
        match self.names.get(name) {
            None => Answer::NxDomain,
            Some(addresses) if qtype == TYPE_A && qclass == CLASS_IN && !addresses.is_empty() => {
                Answer::Addresses(addresses.clone())
            }
            Some(_) => Answer::NoData,
        }
    }

    /// How many names the table holds (for logs).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::TYPE_AAAA;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..Default::default()
        }
    }

    fn service(namespace: &str, name: &str, cluster_ip: &str) -> Service {
        Service {
            metadata: meta(namespace, name),
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn endpoints(namespace: &str, name: &str, addresses: &[(&str, Option<&str>)]) -> Endpoints {
        Endpoints {
            metadata: meta(namespace, name),
            subsets: Some(vec![EndpointSubset {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(ip, hostname)| EndpointAddress {
                            ip: (*ip).to_owned(),
                            hostname: hostname.map(str::to_owned),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }]),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_ip_services_answer_with_their_cluster_ip() {
        let table = NameTable::build(
            "cluster.local.",
            &[service("west", "Ferry", "10.1.2.10")],
            &[endpoints("west", "Ferry", &[("10.1.1.5", None)])],
        );
        assert_eq!(
            table.lookup("ferry.west.svc.cluster.local", TYPE_A, CLASS_IN),
            Answer::Addresses(vec![ip("10.1.2.10")])
        );
        assert_eq!(
            table.lookup("ferry.west.svc.cluster.local", TYPE_AAAA, CLASS_IN),
            Answer::NoData
        );
        assert_eq!(
            table.lookup("ferry.east.svc.cluster.local", TYPE_A, CLASS_IN),
            Answer::NxDomain
        );
    }

    #[test]
    fn headless_services_answer_with_endpoints_and_member_names() {
        let table = NameTable::build(
            "cluster.local",
            &[service("west", "ferry-headless", "None")],
            &[endpoints(
                "west",
                "ferry-headless",
                &[("10.1.1.6", Some("ferry-1")), ("10.1.1.5", Some("ferry-0"))],
            )],
        );
        assert_eq!(
            table.lookup("ferry-headless.west.svc.cluster.local", TYPE_A, CLASS_IN),
            Answer::Addresses(vec![ip("10.1.1.5"), ip("10.1.1.6")])
        );
        assert_eq!(
            table.lookup(
                "ferry-0.ferry-headless.west.svc.cluster.local",
                TYPE_A,
                CLASS_IN
            ),
            Answer::Addresses(vec![ip("10.1.1.5")])
        );
    }

    #[test]
    fn a_headless_service_without_ready_endpoints_exists_but_has_no_address() {
        let table = NameTable::build("cluster.local", &[service("w", "h", "None")], &[]);
        assert_eq!(
            table.lookup("h.w.svc.cluster.local", TYPE_A, CLASS_IN),
            Answer::NoData
        );
    }

    #[test]
    fn external_name_services_are_left_out() {
        let mut external = service("w", "ext", "");
        external.spec.as_mut().unwrap().type_ = Some("ExternalName".to_owned());
        let table = NameTable::build("cluster.local", &[external], &[]);
        assert!(table.is_empty());
    }
}
