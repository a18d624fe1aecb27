//! Named background tasks under one supervisor, with a shared shutdown signal.
//!
//! Each worker (committer, merkle flusher, WAL GC, fence keep-alive, gRPC server) runs as a named
//! task. When one ends — by error, by panic, or by returning while the process is still meant to
//! run — the supervisor logs it by name and signals every other task to stop: a worker never dies
//! silently. Shutdown is bounded: tasks get [`SHUTDOWN_GRACE`] to finish what they are doing
//! (a gRPC server waits for its open streams, which a secondary keeps open for ever), then the
//! rest are aborted, so that a SIGTERM ends the process within seconds and the write fence is
//! released while its lease is still alive.
//!
//! Tasks that come and go with the replication role (the follower, its resolver and
//! heartbeats, certificate renewal, announcements, WAL shipments) are not the process's workers:
//! they run under [`spawn_restarting`] (a panic is logged by name and the task starts again, so
//! a bug cannot silently end replication) or [`spawn_reported`] (one-shot: a panic is logged by
//! name). Neither uses a bare `tokio::spawn`, whose panics go unseen.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use ferry_proto::tasks::panic_message;
pub use ferry_proto::tasks::{spawn_reported, spawn_restarting};
use futures::FutureExt;

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
        self.tasks.spawn(async move {
            let outcome = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(anyhow::anyhow!("panicked: {}", panic_message(&*panic))),
            };
            (name, outcome)
        });
    }

    /// Begins shutdown: every task's signal fires.
    /// Runs `work` while watching the tasks: its output, or the failure of a task that ended
    /// first (a task ending at all is a failure: see the module header). After an error the
    /// caller stops the rest with [`Self::run_until`].
    pub async fn watch_while<T>(&mut self, work: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::select! {
            out = work => Ok(out),
            Some(done) = self.tasks.join_next() => match describe(done) {
                Ok(name) => Err(anyhow::anyhow!("task {name} stopped unexpectedly")),
                Err(e) => Err(e),
            },
        }
    }

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
        // Panics are caught in the task and reported by name; this is an abort.
        Err(e) => {
            error!(error = %e, "task aborted");
            Err(anyhow::anyhow!("a task was aborted: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicked_task_starts_again_and_a_finished_one_does_not() {
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let handle = spawn_restarting("flaky", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("flaky failed");
                }
            }
        });
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two panics, then done");
    }

    #[tokio::test]
    async fn a_supervised_panic_is_a_failure_named_after_its_task() {
        let mut supervisor = Supervisor::new();
        supervisor.spawn("doomed", async { panic!("out of cheese") });
        let failed = supervisor
            .run_until(std::future::pending())
            .await
            .unwrap_err();
        let text = format!("{failed:#}");
        assert!(
            text.contains("doomed") && text.contains("out of cheese"),
            "{text}"
        );
    }
}
