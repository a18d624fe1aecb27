//! Keeps a [`NameTable`] current by listing Services and Endpoints in every namespace.
//!
//! Polling rather than watching: each pass is two list calls and a pure rebuild, so the table
//! is always one consistent snapshot and there is no watch to resume or cache to reconcile. At
//! the default half second it costs a test cluster nothing and bounds how stale a name can be.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use crate::records::NameTable;

/// Polls the API every `interval` and publishes each new table on `tables`. Runs until the
/// receivers are gone; a failed poll keeps the last table and is logged.
pub async fn poll(
    client: kube::Client,
    domain: String,
    interval: Duration,
    tables: watch::Sender<Option<Arc<NameTable>>>,
) {
    let services: Api<Service> = Api::all(client.clone());
    let endpoints: Api<Endpoints> = Api::all(client);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let everything = ListParams::default();
    let mut failing = false;
    loop {
        ticker.tick().await;
        let listed = tokio::try_join!(services.list(&everything), endpoints.list(&everything));
        match listed {
            Ok((services, endpoints)) => {
                if failing {
                    tracing::info!("listing Services and Endpoints works again");
                    failing = false;
                }
                let table = NameTable::build(&domain, &services.items, &endpoints.items);
                let changed = tables.send_if_modified(|current| {
                    if current.as_deref() == Some(&table) {
                        return false;
                    }
                    tracing::info!(names = table.len(), "name table updated");
                    *current = Some(Arc::new(table));
                    true
                });
                if !changed && tables.is_closed() {
                    return;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "failed to list Services and Endpoints; keeping the last table");
                    failing = true;
                }
            }
        }
    }
}
