//! What a starting region waits for: its processes alive, the API server, containerd, a Ready
//! node, the default ServiceAccount's token and the cluster DNS.

use super::*;

impl KubeRegion {
    /// Fails with the log of the first process that exited, if any did.
    pub(super) fn check_processes(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.exited() {
                anyhow::bail!(
                    "{} exited during start-up of region {} ({status})\n{}",
                    process.name(),
                    self.name,
                    process.log_tail(40)
                );
            }
        }
        Ok(())
    }

    /// Polls `check` until it returns `Ok(true)`; between polls checks that every process lives.
    pub(super) async fn poll_until<F, Fut>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut check: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        loop {
            self.check_processes()?;
            let last = match tokio::time::timeout(PROBE_TIMEOUT, check()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer in {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "region {}: timed out after {START_TIMEOUT:?} waiting for {what}; last: {last}",
                    self.name
                );
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    pub(super) async fn wait_api(
        &mut self,
        client: &kube::Client,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        self.poll_until(
            "the API server's /readyz and namespace default",
            deadline,
            || {
                let client = client.clone();
                let namespaces = namespaces.clone();
                async move {
                    let readyz = hyper::Request::get("/readyz")
                        .body(Vec::new())
                        .map_err(|e| e.to_string())?;
                    let body = client
                        .request_text(readyz)
                        .await
                        .map_err(|e| e.to_string())?;
                    if body.trim() != "ok" {
                        return Err(format!("/readyz: {body}"));
                    }
                    match namespaces.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("namespace default does not exist yet".to_owned()),
                        Err(e) => Err(format!("namespace default: {e}")),
                    }
                }
            },
        )
        .await
        .map_err(|e| e.context(self.log_tail("kube-apiserver", 20)))
    }

    pub(super) async fn wait_containerd(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let socket = self.containerd_socket();
        self.poll_until("containerd to answer on its socket", deadline, || {
            let mut version = Command::new("ctr");
            version
                .arg(format!("--address={}", socket.display()))
                .arg("version");
            async move {
                tokio::task::spawn_blocking(move || run(&mut version).map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{e:#}"))
            }
        })
        .await
    }

    pub(super) async fn wait_node_ready(
        &mut self,
        client: &kube::Client,
        kubelet_start: i64,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let name = self.name.clone();
        let result = self
            .poll_until(
                &format!("Node {name} to be Ready with a heartbeat newer than its kubelet's start"),
                deadline,
                || {
                    let nodes = nodes.clone();
                    let name = name.clone();
                    async move {
                        let node = nodes
                            .get_opt(&name)
                            .await
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| "the Node is not registered yet".to_owned())?;
                        let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
                        let ready = conditions
                            .iter()
                            .find(|c| c.type_ == "Ready")
                            .ok_or_else(|| "the Node has no Ready condition yet".to_owned())?;
                        let heartbeat = ready
                            .last_heartbeat_time
                            .as_ref()
                            .map(|t| t.0.as_second())
                            .unwrap_or(0);
                        if ready.status != "True" {
                            return Err(format!(
                                "Ready is {}: {}",
                                ready.status,
                                ready.message.clone().unwrap_or_default()
                            ));
                        }
                        if heartbeat < kubelet_start {
                            return Err("Ready, but from before this kubelet started".to_owned());
                        }
                        Ok(())
                    }
                },
            )
            .await;
        result.map_err(|e| e.context(self.log_tail("kubelet", 30)))
    }

    /// Pods are refused until their namespace's `default` ServiceAccount has its token (made by
    /// the controller manager).
    pub(super) async fn wait_default_service_account(
        &mut self,
        client: &kube::Client,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let result = self
            .poll_until(
                "ServiceAccount default/default and its token",
                deadline,
                || {
                    let accounts = accounts.clone();
                    async move {
                        let account = accounts
                            .get_opt("default")
                            .await
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| "not created yet".to_owned())?;
                        match account.secrets {
                            Some(secrets) if !secrets.is_empty() => Ok(()),
                            _ => Err("no token Secret yet".to_owned()),
                        }
                    }
                },
            )
            .await;
        result.map_err(|e| e.context(self.log_tail("kube-controller-manager", 20)))
    }

    pub(super) async fn wait_dns(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let name = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
        let expected = self.plan.kubernetes_service_ip().to_string();
        let node_ip = self.plan.node_ip().to_string();
        let procs = self.cgroup.daemon_procs();
        let net = self.namespaces.net().to_path_buf();
        let result = self
            .poll_until(
                &format!("the cluster DNS to answer {name}"),
                deadline,
                || {
                    let mut lookup = super::super::namespaces::wrapped(&procs, None, "nsenter");
                    lookup
                        .arg(format!("--net={}", net.display()))
                        .args(["busybox", "nslookup", &name, &node_ip]);
                    let expected = expected.clone();
                    async move {
                        let out = tokio::task::spawn_blocking(move || run(&mut lookup))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| format!("{e:#}"))?;
                        if out.contains(&expected) {
                            Ok(())
                        } else {
                            Err(format!("nslookup answered: {out}"))
                        }
                    }
                },
            )
            .await;
        result.map_err(|e| e.context(self.log_tail("kube-dns", 20)))
    }
}
