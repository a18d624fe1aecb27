//! [`Wan`]: the link between two regions, a veth pair with routes, which tests can cut.
//!
//! Each end is named for the region across (`wan2` in region 1 leads to region 2) and holds the
//! region's WAN address as a point-to-point address with the other end as peer; each region
//! routes the other's whole range (node, pods, Services) over it. Both regions forward, so a
//! pod or the node of one reaches a pod IP or a NodePort of the other.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use super::namespaces::run;
use super::region::KubeRegion;

/// A veth link between two regions; deleted on drop (if the regions still exist).
pub struct Wan {
    ends: Vec<End>,
}

/// One region's end of the link: its network namespace file, the link, and its route to the
/// other region.
struct End {
    net: PathBuf,
    link: String,
    remote_range: String,
    via: String,
}

impl Wan {
    /// Joins `a` and `b`.
    pub fn connect(a: &KubeRegion, b: &KubeRegion) -> anyhow::Result<Self> {
        let (pa, pb) = (a.plan(), b.plan());
        let (link_a, link_b) = (format!("wan{}", pb.index), format!("wan{}", pa.index));
        let mut wan = Self { ends: Vec::new() };
        let b_pid = b.anchor_pid()?.to_string();
        let add = [
            "ip", "link", "add", &link_a, "type", "veth", "peer", "name", &link_b, "netns", &b_pid,
        ];
        run(&mut in_net(a.net_namespace(), &add)).with_context(|| {
            format!(
                "failed to create the WAN link {} <-> {}",
                a.name(),
                b.name()
            )
        })?;
        for (region, link, local, peer, remote_range) in [
            (a, &link_a, pa.wan_ip(), pb.wan_ip(), pb.region_range()),
            (b, &link_b, pb.wan_ip(), pa.wan_ip(), pa.region_range()),
        ] {
            let net = region.net_namespace();
            let (local, peer, via) = (local.to_string(), format!("{peer}/32"), peer.to_string());
            wan.ends.push(End {
                net: net.to_path_buf(),
                link: link.clone(),
                remote_range: remote_range.clone(),
                via: via.clone(),
            });
            for args in [
                vec!["ip", "addr", "add", &local, "peer", &peer, "dev", link],
                vec!["ip", "link", "set", link, "up"],
                // Via the peer: a veth is Ethernet, and only the peer answers ARP for the other's pods.
                vec![
                    "ip",
                    "route",
                    "add",
                    &remote_range,
                    "via",
                    &via,
                    "dev",
                    link,
                ],
            ] {
                run(&mut in_net(net, &args))
                    .with_context(|| format!("failed to configure the WAN in {}", region.name()))?;
            }
        }
        Ok(wan)
    }

    /// Takes the link down: nothing crosses between the regions until [`Self::heal`].
    pub fn cut(&self) -> anyhow::Result<()> {
        for end in &self.ends {
            run(&mut in_net(
                &end.net,
                &["ip", "link", "set", &end.link, "down"],
            ))?;
        }
        Ok(())
    }

    /// Brings the link back up, and the routes a down link lost with it.
    pub fn heal(&self) -> anyhow::Result<()> {
        for end in &self.ends {
            run(&mut in_net(
                &end.net,
                &["ip", "link", "set", &end.link, "up"],
            ))?;
            let route = [
                "ip",
                "route",
                "replace",
                &end.remote_range,
                "via",
                &end.via,
                "dev",
                &end.link,
            ];
            run(&mut in_net(&end.net, &route))?;
        }
        Ok(())
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        // Gone already when a region dropped first; deleting one end deletes both.
        if let Some(end) = self.ends.first() {
            let _ = run(&mut in_net(&end.net, &["ip", "link", "del", &end.link]));
        }
    }
}

/// `nsenter --net=<net> <args>` on the host's mounts (only `ip` runs this way).
fn in_net(net: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", net.display())).args(args);
    command
}
