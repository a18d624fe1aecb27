//! Named background tasks under one supervisor, with a shared shutdown signal.
//!
//! Each worker (committer, merkle flusher, WAL GC, fence keep-alive, gRPC server) runs as a named
//! task. When one ends — by error, by panic, or by returning while the process is still meant to
//! run — the supervisor logs it by name and signals every other task to stop: a worker never dies
//! silently.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info};

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
        while let Some(done) = self.tasks.join_next().await {
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
