//! Prometheus metrics and the health endpoints, served on `--metrics-addr`:
//!
//! * `/metrics`: reconciles, their failures and durations, steps taken by name and outcome,
//!   whether this replica leads;
//! * `/healthz`: the process is up; `/readyz`: 200 once this replica leads and its controller
//!   runs, 503 while it waits for the lease (so a Service only routes to the leader).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: AtomicU64,
    /// Microseconds, summed.
    reconcile_micros: AtomicU64,
    steps: Mutex<BTreeMap<(&'static str, bool), u64>>,
    pub leader: AtomicBool,
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        self.reconcile_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn reconcile_failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn step(&self, name: &'static str, ok: bool) {
        *self
            .steps
            .lock()
            .expect("metrics lock poisoned")
            .entry((name, ok))
            .or_default() += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reconciles = self.reconciles.load(Ordering::Relaxed);
        family(
            &mut out,
            "ferry_operator_reconciles_total",
            "counter",
            "Reconciles run.",
        );
        let _ = writeln!(out, "ferry_operator_reconciles_total {reconciles}");
        family(
            &mut out,
            "ferry_operator_reconcile_errors_total",
            "counter",
            "Reconciles that failed.",
        );
        let failures = self.failures.load(Ordering::Relaxed);
        let _ = writeln!(out, "ferry_operator_reconcile_errors_total {failures}");
        family(
            &mut out,
            "ferry_operator_reconcile_seconds",
            "summary",
            "Time spent reconciling.",
        );
        let seconds = self.reconcile_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "ferry_operator_reconcile_seconds_sum {seconds}");
        let _ = writeln!(out, "ferry_operator_reconcile_seconds_count {reconciles}");
        family(
            &mut out,
            "ferry_operator_steps_total",
            "counter",
            "Steps taken on clusters, by step and outcome.",
        );
        for ((name, ok), n) in self.steps.lock().expect("metrics lock poisoned").iter() {
            let result = if *ok { "ok" } else { "error" };
            let _ = writeln!(
                out,
                "ferry_operator_steps_total{{step=\"{name}\",result=\"{result}\"}} {n}"
            );
        }
        family(
            &mut out,
            "ferry_operator_leader",
            "gauge",
            "1 while this replica holds the leader lease.",
        );
        let leader = u8::from(self.leader.load(Ordering::Relaxed));
        let _ = writeln!(out, "ferry_operator_leader {leader}");
        out
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<Metrics>,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready = metrics.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.leader.load(Ordering::Relaxed) {
                    (StatusCode::OK, "leading")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the leader lease",
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health endpoints ready");
    axum::serve(listener, app).await?;
    Ok(())
}
