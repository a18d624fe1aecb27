//! The active node's cache of its performance standbys: Vault's `clusterPeerClusterAddrsCache`.
//!
//! Every performance standby of a cluster heartbeats the active node (`NodeHeartbeat` on the
//! cluster port, every `--heartbeat-interval-ms`) with its node id, cluster address and API
//! address. The active node keeps each standby for [`NODE_EXPIRY`] after its last heartbeat:
//!
//! * the answer to a secondary's heartbeat carries the active node's own cluster address first,
//!   then the live standbys' ([`NodeCache::cluster_addrs`]): what the secondary keeps as
//!   `known_primary_cluster_addrs` and fails over through when the active node changes;
//! * `sys/replication/status` lists the nodes with their role and last heartbeat.
//!
//! A standby that stops heartbeating (killed, partitioned) is gone from both within
//! [`NODE_EXPIRY`]. The cache holds at most [`MAX_NODES`] live standbys: a heartbeat from one
//! more is refused (nothing changes) rather than growing it without bound; expired entries are
//! dropped before anything is counted. Pure: every call is given `now`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// How long a standby stays in the cache after its last heartbeat (Vault's 15 s).
pub const NODE_EXPIRY: Duration = Duration::from_secs(15);
/// Most standbys the cache holds.
pub const MAX_NODES: usize = 64;
/// Longest node id accepted.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Longest address (cluster or API) accepted.
pub const MAX_ADDR_BYTES: usize = 256;

/// One performance standby, as its last heartbeat described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyNode {
    pub node_id: String,
    pub cluster_addr: String,
    pub api_addr: String,
    /// When the last heartbeat arrived (wall clock, for status).
    pub last_heartbeat: SystemTime,
    /// When the last heartbeat arrived (monotonic, for expiry).
    pub seen: Instant,
}

/// Why a heartbeat was not recorded; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatRefused {
    #[error("node_id is required")]
    NoNodeId,
    #[error("node_id is {0} bytes, over the limit of {MAX_NODE_ID_BYTES}")]
    NodeIdTooLong(usize),
    #[error("cluster_addr is required")]
    NoClusterAddr,
    #[error("an address is {0} bytes, over the limit of {MAX_ADDR_BYTES}")]
    AddrTooLong(usize),
    #[error("the active node already tracks {MAX_NODES} standbys")]
    Full,
}

/// The standbys that heartbeated this active node.
#[derive(Clone, Debug, Default)]
pub struct NodeCache {
    nodes: BTreeMap<String, StandbyNode>,
}

impl NodeCache {
    /// Records `node`'s heartbeat (its `seen` is the moment it arrived).
    pub fn heartbeat(&mut self, node: StandbyNode) -> Result<(), HeartbeatRefused> {
        if node.node_id.is_empty() {
            return Err(HeartbeatRefused::NoNodeId);
        }
        if node.node_id.len() > MAX_NODE_ID_BYTES {
            return Err(HeartbeatRefused::NodeIdTooLong(node.node_id.len()));
        }
        if node.cluster_addr.is_empty() {
            return Err(HeartbeatRefused::NoClusterAddr);
        }
        if let Some(long) = [&node.cluster_addr, &node.api_addr]
            .into_iter()
            .find(|a| a.len() > MAX_ADDR_BYTES)
        {
            return Err(HeartbeatRefused::AddrTooLong(long.len()));
        }
        self.expire(node.seen);
        if !self.nodes.contains_key(&node.node_id) && self.nodes.len() >= MAX_NODES {
            return Err(HeartbeatRefused::Full);
        }
        self.nodes.insert(node.node_id.clone(), node);
        Ok(())
    }

    /// Drops the standbys not heard from within [`NODE_EXPIRY`] of `now`.
    pub fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, n| is_live(n, now));
    }

    /// The standbys heard from within [`NODE_EXPIRY`] of `now`, by node id.
    pub fn live(&self, now: Instant) -> Vec<StandbyNode> {
        self.nodes
            .values()
            .filter(|n| is_live(n, now))
            .cloned()
            .collect()
    }

    /// What a secondary is told: `own` (the active node's cluster address) first, then each
    /// live standby's, each once.
    pub fn cluster_addrs(&self, own: &str, now: Instant) -> Vec<String> {
        let mut out = vec![own.to_owned()];
        for n in self.live(now) {
            if !out.contains(&n.cluster_addr) {
                out.push(n.cluster_addr);
            }
        }
        out
    }
}

fn is_live(node: &StandbyNode, now: Instant) -> bool {
    now.saturating_duration_since(node.seen) <= NODE_EXPIRY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, addr: &str, seen: Instant) -> StandbyNode {
        StandbyNode {
            node_id: id.into(),
            cluster_addr: addr.into(),
            api_addr: String::new(),
            last_heartbeat: SystemTime::UNIX_EPOCH,
            seen,
        }
    }

    #[test]
    fn the_active_address_comes_first_then_live_standbys_each_once() {
        let t0 = Instant::now();
        let mut cache = NodeCache::default();
        cache.heartbeat(node("b", "10.0.0.2:8201", t0)).unwrap();
        cache.heartbeat(node("c", "10.0.0.3:8201", t0)).unwrap();
        // A standby that names the active node's address adds nothing.
        cache.heartbeat(node("d", "10.0.0.1:8201", t0)).unwrap();
        assert_eq!(
            cache.cluster_addrs("10.0.0.1:8201", t0),
            ["10.0.0.1:8201", "10.0.0.2:8201", "10.0.0.3:8201"]
        );
    }

    #[test]
    fn a_standby_is_gone_15_seconds_after_its_last_heartbeat() {
        let t0 = Instant::now();
        let mut cache = NodeCache::default();
        cache.heartbeat(node("b", "b:1", t0)).unwrap();
        cache.heartbeat(node("c", "c:1", t0)).unwrap();
        // c keeps heartbeating; b stops.
        cache
            .heartbeat(node("c", "c:1", t0 + Duration::from_secs(10)))
            .unwrap();
        assert_eq!(cache.live(t0 + NODE_EXPIRY).len(), 2);
        let later = t0 + NODE_EXPIRY + Duration::from_millis(1);
        let live: Vec<_> = cache.live(later).into_iter().map(|n| n.node_id).collect();
        assert_eq!(live, ["c"]);
        assert_eq!(cache.cluster_addrs("a:1", later), ["a:1", "c:1"]);
        // A new heartbeat brings it back, with its new address.
        cache.heartbeat(node("b", "b:2", later)).unwrap();
        assert_eq!(cache.cluster_addrs("a:1", later), ["a:1", "b:2", "c:1"]);
    }

    #[test]
    fn bad_heartbeats_are_refused_and_change_nothing() {
        let t0 = Instant::now();
        let mut cache = NodeCache::default();
        assert_eq!(
            cache.heartbeat(node("", "x:1", t0)),
            Err(HeartbeatRefused::NoNodeId)
        );
        assert_eq!(
            cache.heartbeat(node("b", "", t0)),
            Err(HeartbeatRefused::NoClusterAddr)
        );
        assert!(matches!(
            cache.heartbeat(node(&"n".repeat(129), "x:1", t0)),
            Err(HeartbeatRefused::NodeIdTooLong(129))
        ));
        assert!(matches!(
            cache.heartbeat(node("b", &"a".repeat(300), t0)),
            Err(HeartbeatRefused::AddrTooLong(300))
        ));
        assert!(cache.live(t0).is_empty());
    }

    #[test]
    fn the_cache_is_bounded_but_expired_entries_make_room() {
        let t0 = Instant::now();
        let mut cache = NodeCache::default();
        for i in 0..MAX_NODES {
            cache.heartbeat(node(&format!("n{i}"), "x:1", t0)).unwrap();
        }
        assert_eq!(
            cache.heartbeat(node("one-more", "x:1", t0)),
            Err(HeartbeatRefused::Full)
        );
        // A known node still refreshes.
        cache.heartbeat(node("n0", "x:2", t0)).unwrap();
        let later = t0 + NODE_EXPIRY + Duration::from_secs(1);
        cache.heartbeat(node("one-more", "x:1", later)).unwrap();
        assert_eq!(cache.live(later).len(), 1);
    }
}
