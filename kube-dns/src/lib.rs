//! A minimal cluster DNS for Ferry's real-node tests (Debian ships no CoreDNS).
//!
//! Pods find each other by name: a client finds `ferry.west.svc.cluster.local`, a StatefulSet
//! member its peers as `ferry-0.ferry-headless.west.svc.cluster.local`. This server answers
//! those A queries from the Kubernetes API, the way CoreDNS's `kubernetes` plugin does for the
//! subset Ferry relies on:
//!
//! * `<service>.<namespace>.svc.<domain>`: the ClusterIP; for a headless Service, the addresses
//!   of its ready endpoints;
//! * `<hostname>.<service>.<namespace>.svc.<domain>`: an endpoint of a headless Service that has
//!   a hostname (the endpoints controller sets it for pods whose `subdomain` names the Service,
//!   which is what a StatefulSet does).
//!
//! Any other name is NXDOMAIN at once: there is no upstream to forward to (the tests' network
//! namespaces reach nothing outside), and a fast negative answer keeps resolvers from waiting.
//! A known name asked for another type (AAAA) gets an empty NOERROR answer.
//!
//! Layers, by dependency direction: [`codec`] (the wire format, pure) and [`records`] (the
//! name table built from API objects, pure) depend on nothing that does I/O; [`source`] polls the
//! API and [`server`] answers UDP queries; `main.rs` wires them. The codec is hand-written (a
//! few hundred lines for one question, A records and the error codes) rather than taken from
//! hickory-proto, which would bring a dozen crates into the workspace for a test tool.

pub mod codec;
pub mod records;
pub mod server;
pub mod source;
