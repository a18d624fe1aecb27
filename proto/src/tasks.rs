//! Background tasks whose panics are seen, for every binary: a bare `tokio::spawn` loses a
//! panic silently, and the work it did stops with no one told. A task that must run for the
//! process's life runs under [`spawn_restarting`] (a panic is logged by name and the task starts
//! again); a one-shot task under [`spawn_reported`] (a panic is logged by name).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tracing::error;

/// The pause before a panicked [`spawn_restarting`] task starts again.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

/// Runs `make()` as the task `name` until it returns: when it panics, the panic is logged with
/// the name and a fresh `make()` runs after [`RESTART_PAUSE`]. Aborting the handle stops it.
pub fn spawn_restarting<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match AssertUnwindSafe(make()).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => {
                    error!(task = name, panic = %panic_message(&*panic), "task panicked; starting it again");
                    tokio::time::sleep(RESTART_PAUSE).await;
                }
            }
        }
    })
}

/// Runs `task` once as the task `name`; a panic is logged with the name.
pub fn spawn_reported(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
            error!(task = name, panic = %panic_message(&*panic), "task panicked");
        }
    })
}

/// The text of a panic's payload, when it has one.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_starts_again_and_its_message_is_read() {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let task = spawn_restarting("flaky", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    panic!("first run");
                }
            }
        });
        task.await.expect("the task ends after its second run");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            panic_message(&*Box::new("plain") as &(dyn Any + Send)),
            "plain"
        );
        assert_eq!(
            panic_message(&*Box::new(String::from("owned")) as &(dyn Any + Send)),
            "owned"
        );
    }
}
