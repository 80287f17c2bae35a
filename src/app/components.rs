//! What `serve` runs, as one list: each part is added as it starts, and
//! they are stopped in the reverse order, so that nothing stops before what
//! still leans on it (the HTTP server before the dispatcher it hands work
//! to, the dispatcher before the store closes).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::select_all;
use tokio::task::JoinHandle;

use super::delivery::RunningDelivery;
use super::http::HttpServer;

/// A part of a running Herald, by how it is stopped.
pub(super) enum Component {
    /// A server, given the drain time to finish its requests.
    Http(HttpServer),
    /// The dispatcher, the webhook worker and the purge, given the drain
    /// time and a second more to give their leases back.
    Delivery(RunningDelivery),
    /// A background loop with nothing to finish: ended at once.
    Task(JoinHandle<()>),
}

#[derive(Default)]
pub(super) struct Components(Vec<(&'static str, Component)>);

type Ending<'a> = Pin<Box<dyn Future<Output = &'static str> + Send + 'a>>;

impl Components {
    pub fn add(&mut self, name: &'static str, component: Component) {
        self.0.push((name, component));
    }

    pub fn add_task(&mut self, name: &'static str, task: Option<JoinHandle<()>>) {
        if let Some(task) = task {
            self.add(name, Component::Task(task));
        }
    }

    /// Resolves with the name of the first part that ended by itself (a bug:
    /// an instance must not go on accepting work it will never deliver, nor
    /// run a dispatcher nobody can reach).
    pub async fn first_ended(&mut self) -> &'static str {
        let endings: Vec<Ending<'_>> = self
            .0
            .iter_mut()
            .filter_map(|(name, component)| -> Option<Ending<'_>> {
                let name = *name;
                match component {
                    Component::Http(server) => Some(Box::pin(async move {
                        server.ended().await;
                        name
                    })),
                    Component::Delivery(delivery) => Some(Box::pin(async move {
                        delivery.failed().await;
                        name
                    })),
                    Component::Task(_) => None,
                }
            })
            .collect();
        if endings.is_empty() {
            return std::future::pending().await;
        }
        select_all(endings).await.0
    }

    /// Stops every part, the last added first (each was told to stop by the
    /// shared stop signal already); returns whether the dispatcher failed.
    pub async fn stop(self, drain: Duration) -> bool {
        let mut dispatcher_failed = false;
        for (name, component) in self.0.into_iter().rev() {
            tracing::debug!(component = name, "stopping");
            match component {
                Component::Http(server) => server.stop(drain).await,
                Component::Delivery(delivery) => {
                    dispatcher_failed |= delivery.stop(drain + Duration::from_secs(1)).await;
                }
                Component::Task(task) => task.abort(),
            }
        }
        dispatcher_failed
    }
}
