//! Named background tasks under one supervisor, with a shared shutdown signal.
//!
//! Each worker (committer, merkle flusher, WAL GC, fence keep-alive, gRPC server) runs as a named
//! task. When one ends — by error, by panic, or by returning while the process is still meant to
//! run — the supervisor logs it by name and signals every other task to stop: a worker never dies
//! silently. Shutdown is bounded: tasks get [`SHUTDOWN_GRACE`] to finish what they are doing
//! (a gRPC server waits for its open streams, which a secondary keeps open for ever), then the
//! rest are aborted, so that a SIGTERM ends the process within seconds and the write fence is
//! released while its lease is still alive.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long tasks have to stop after the shutdown signal before they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

/// Spawns named tasks and watches them.
pub struct Supervisor {
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: watch::Sender<bool>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown: watch::channel(false).0,
        }
    }

    /// A receiver that changes when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Begins shutdown: every task's signal fires.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until `stop` resolves or a task ends, then shuts every task down and waits for them.
    /// Returns an error naming the first task that failed.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = stop => info!("shutting down"),
            Some(done) = self.tasks.join_next() => {
                failure = Some(describe(done));
            }
        }
        self.shutdown();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        loop {
            let done = match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(done)) => done,
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        tasks = self.tasks.len(),
                        "tasks still running {SHUTDOWN_GRACE:?} after shutdown began; aborting them"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    break;
                }
            };
            let outcome = describe(done);
            if outcome.is_err() && failure.is_none() {
                failure = Some(outcome);
            }
        }
        match failure {
            Some(Err(e)) => Err(e),
            Some(Ok(name)) => Err(anyhow::anyhow!("task {name} stopped unexpectedly")),
            None => Ok(()),
        }
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

fn describe(
    done: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> Result<&'static str, anyhow::Error> {
    match done {
        Ok((name, Ok(()))) => {
            info!(task = name, "task stopped");
            Ok(name)
        }
        Ok((name, Err(e))) => {
            error!(task = name, error = %format!("{e:#}"), "task failed");
            Err(e.context(format!("task {name} failed")))
        }
        Err(e) => {
            error!(error = %e, "task panicked");
            Err(anyhow::anyhow!("a task panicked: {e}"))
        }
    }
}
