//! Wake-ups from other instances: a connection of its own that LISTENs on
//! [`NOTIFY_CHANNEL`] and pokes the dispatcher's [`Notify`], and on
//! [`WEBHOOKS_CHANNEL`] the webhook worker's.
//!
//! Notifications arriving in a burst wake it once (a `Notify` keeps at most
//! one permit, and a burst is drained before poking). When the connection
//! drops it is made again with a backoff; the dispatcher's polling covers the
//! gap, and a poke after each reconnect covers what was missed.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{NOTIFY_CHANNEL, WEBHOOKS_CHANNEL};

/// Who is poked for what.
pub struct Wakes {
    /// New or given-back notifications.
    pub work: Arc<Notify>,
    /// New webhook deliveries.
    pub webhooks: Arc<Notify>,
}

pub async fn run(config: tokio_postgres::Config, tls: MakeRustlsConnect, wakes: Wakes) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&config, &tls, &wakes).await {
            Ok(()) => tracing::warn!("the LISTEN connection closed; reconnecting"),
            Err(e) => tracing::warn!(
                error = %crate::error::chain(&e),
                "the LISTEN connection failed; reconnecting"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    wakes: &Wakes,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection must be polled for the LISTEN to complete, and for
    // notifications to arrive at all.
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.channel() == WEBHOOKS_CHANNEL).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!(
            "LISTEN {NOTIFY_CHANNEL}; LISTEN {WEBHOOKS_CHANNEL}"
        ))
        .await?;
    tracing::debug!("listening for new work");
    // Whatever was stored while we were not listening.
    wakes.work.notify_one();
    wakes.webhooks.notify_one();
    while let Some(first) = rx.recv().await {
        let (mut work, mut webhooks) = (!first, first);
        while let Ok(for_webhooks) = rx.try_recv() {
            work |= !for_webhooks;
            webhooks |= for_webhooks;
        }
        if work {
            wakes.work.notify_one();
        }
        if webhooks {
            wakes.webhooks.notify_one();
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
