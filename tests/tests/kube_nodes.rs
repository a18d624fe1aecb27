//! Two real single-node Kubernetes regions on this machine, joined by a WAN link: each node
//! becomes Ready, runs a pod from a locally imported image, answers its Service and StatefulSet
//! style names through the cluster DNS (from the node and from a pod), routes a Service, and
//! west reaches a NodePort and a pod IP of east across the link, which a cut stops and a heal
//! restores. This is the ground the chart tests (issue 17) stand on. Needs root; without it the
//! test fails at once saying so.

use std::time::{Duration, Instant};

use ferry_tests::kube_node::{BUSYBOX_IMAGE, CLUSTER_DOMAIN, KubeRegion, Wan};
use ferry_tests::wait_for;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, PostParams};

/// Pods start in seconds once the images are imported; both regions share two cores.
const POD_TIMEOUT: Duration = Duration::from_secs(90);
const ECHO_PORT: u16 = 8080;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_run_pods_resolve_names_and_reach_each_other() -> anyhow::Result<()> {
    let started = Instant::now();
    let (west, east) = tokio::try_join!(KubeRegion::start("west"), KubeRegion::start("east"))?;
    eprintln!(
        "both regions ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let wan = Wan::connect(&west, &east)?;

    for region in [&west, &east] {
        assert_node_ready(region).await?;
        deploy_echo(region).await?;
    }
    let mut echo_pod_ips = Vec::new();
    for region in [&west, &east] {
        echo_pod_ips.push(wait_echo_running(region).await?);
    }
    let east_pod_ip = echo_pod_ips[1].clone();

    // Names through the cluster DNS, from the node: a ClusterIP Service and a StatefulSet-style
    // member of a headless Service.
    for (region, pod_ip) in [(&west, &echo_pod_ips[0]), (&east, &echo_pod_ips[1])] {
        let cluster_ip = cluster_ip(region, "echo").await?;
        let dns = region.plan().node_ip().to_string();
        let service = format!("echo.default.svc.{CLUSTER_DOMAIN}");
        let member = format!("echo-0.echo-headless.default.svc.{CLUSTER_DOMAIN}");
        wait_resolves(region, &service, &dns, &cluster_ip).await?;
        wait_resolves(region, &member, &dns, pod_ip).await?;
        let unknown = region
            .exec(&[
                "busybox",
                "nslookup",
                "nope.default.svc.cluster.local",
                &dns,
            ])
            .await;
        assert!(
            unknown.is_err(),
            "an unknown name resolved in {}: {unknown:?}",
            region.name()
        );
    }

    // From a pod: its resolv.conf points at the cluster DNS, and the Service routes to the echo
    // pod through kube-proxy.
    let west_cluster_ip = cluster_ip(&west, "echo").await?;
    run_to_completion(
        &west,
        "dns-check",
        &format!(
            // nc, not wget: see `http_get`.
            "nslookup echo.default.svc.{CLUSTER_DOMAIN} && \
             printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {west_cluster_ip} {ECHO_PORT} \
             | grep -x echo-0"
        ),
    )
    .await?;

    // Across the WAN: east's NodePort and east's pod IP, from west's node.
    let node_port = node_port(&east, "echo").await?;
    let east_node = east.plan().node_ip().to_string();
    for (address, port) in [
        (&east_node, node_port),
        (&east_pod_ip, i32::from(ECHO_PORT)),
    ] {
        let body = http_get(&west, address, port, "/hostname", 5).await?;
        assert_eq!(
            body, "echo-0",
            "{address}:{port} from west answered {body:?}"
        );
    }

    // A cut WAN carries nothing; healed, it does again.
    wan.cut()?;
    let cut = http_get(&west, &east_node, node_port, "/hostname", 2).await;
    assert!(
        cut.as_deref().map_or(true, |b| b != "echo-0"),
        "east's NodePort answered across a cut WAN: {cut:?}"
    );
    wan.heal()?;
    wait_for(
        "east's NodePort to answer west after the heal",
        Duration::from_secs(30),
        || async {
            let body = http_get(&west, &east_node, node_port, "/hostname", 2).await;
            (body.ok()? == "echo-0").then_some(())
        },
    )
    .await?;

    eprintln!("test done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn assert_node_ready(region: &KubeRegion) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(region.client().await?);
    let node = nodes.get(region.name()).await?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    anyhow::ensure!(ready, "node {} is not Ready", region.name());
    Ok(())
}

/// A busybox httpd serving /etc (so `/hostname` names the pod), as pod `echo-0` of the headless
/// Service `echo-headless` (what a StatefulSet makes), behind a NodePort Service `echo`.
async fn deploy_echo(region: &KubeRegion) -> anyhow::Result<()> {
    let client = region.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "echo-0", "labels": {"app": "echo"}},
        "spec": {
            "hostname": "echo-0",
            "subdomain": "echo-headless",
            "containers": [{
                "name": "httpd",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["httpd", "-f", "-p", ECHO_PORT.to_string(), "-h", "/etc"],
                "ports": [{"containerPort": ECHO_PORT}],
                "readinessProbe": {"tcpSocket": {"port": ECHO_PORT}, "periodSeconds": 1},
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    for service in [
        serde_json::json!({
            "metadata": {"name": "echo"},
            "spec": {
                "type": "NodePort",
                "selector": {"app": "echo"},
                "ports": [{"port": ECHO_PORT, "targetPort": ECHO_PORT}],
            },
        }),
        serde_json::json!({
            "metadata": {"name": "echo-headless"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "echo"},
                "ports": [{"port": ECHO_PORT}],
            },
        }),
    ] {
        services
            .create(&PostParams::default(), &serde_json::from_value(service)?)
            .await?;
    }
    Ok(())
}

/// Waits for `echo-0` to be Running and Ready; its pod IP.
async fn wait_echo_running(region: &KubeRegion) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(region.client().await?, "default");
    let result = wait_for(
        &format!("pod echo-0 in {} to be Running and Ready", region.name()),
        POD_TIMEOUT,
        || async {
            let status = pods.get("echo-0").await.ok()?.status?;
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (status.phase.as_deref() == Some("Running") && ready)
                .then_some(status.pod_ip)
                .flatten()
        },
    )
    .await;
    match result {
        Ok(ip) => Ok(ip),
        Err(e) => {
            let pod = pods.get("echo-0").await.ok().and_then(|p| p.status);
            Err(e.context(format!(
                "pod status: {pod:?}\n{}",
                region.log_tail("kubelet", 30)
            )))
        }
    }
}

/// Runs `script` in a busybox pod to completion; fails unless it exits 0.
async fn run_to_completion(region: &KubeRegion, name: &str, script: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(region.client().await?, "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "check",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["sh", "-c", script],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let phase = wait_for(
        &format!("pod {name} in {} to finish", region.name()),
        POD_TIMEOUT,
        || async {
            let phase = pods.get(name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await?;
    if phase != "Succeeded" {
        let logs = pods.logs(name, &Default::default()).await;
        anyhow::bail!(
            "pod {name} in {} ended {phase} running {script:?}; its log: {logs:?}",
            region.name()
        );
    }
    Ok(())
}

async fn cluster_ip(region: &KubeRegion, service: &str) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(region.client().await?, "default");
    services
        .get(service)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or_else(|| anyhow::anyhow!("Service {service} has no clusterIP"))
}

async fn node_port(region: &KubeRegion, service: &str) -> anyhow::Result<i32> {
    let services: Api<Service> = Api::namespaced(region.client().await?, "default");
    services
        .get(service)
        .await?
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .ok_or_else(|| anyhow::anyhow!("Service {service} has no nodePort"))
}

/// Waits until `name` resolves to `expected` through the DNS at `dns`, asked from the node (the
/// DNS polls the API, so a new Service shows within its poll interval).
async fn wait_resolves(
    region: &KubeRegion,
    name: &str,
    dns: &str,
    expected: &str,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{name} to resolve to {expected} in {}", region.name()),
        Duration::from_secs(20),
        || async {
            let out = region
                .exec(&["busybox", "nslookup", name, dns])
                .await
                .ok()?;
            out.lines()
                .any(|l| l.starts_with("Address") && l.trim_end().ends_with(expected))
                .then_some(())
        },
    )
    .await
}

/// The body of `GET <path>` from `address:port`, asked from the region's node with busybox nc
/// (its wget looks the "http" port up through NSS, which crashes in a static binary).
async fn http_get(
    region: &KubeRegion,
    address: &str,
    port: i32,
    path: &str,
    timeout_seconds: u32,
) -> anyhow::Result<String> {
    let script = format!(
        "printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | busybox nc -w {timeout_seconds} {address} {port}"
    );
    let response = region.exec(&["sh", "-c", &script]).await?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no HTTP response from {address}:{port}: {response:?}"))?;
    Ok(body)
}
