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
use crate::resilience::clock;

/// Who is poked for what.
pub struct Wakes {
    /// New or given-back notifications.
    pub work: Arc<Notify>,
    /// New webhook deliveries.
    pub webhooks: Arc<Notify>,
}

/// Keeps a LISTEN connection, made again with a backoff (100 ms, doubling
/// to 2 s, back to 100 ms once one listened) whenever it is lost; a lost
/// connection is logged once, not at each attempt, and its return once.
pub async fn run(config: tokio_postgres::Config, tls: MakeRustlsConnect, wakes: Wakes) {
    const FIRST: Duration = Duration::from_millis(100);
    let mut backoff = FIRST;
    let mut lost: Option<tokio::time::Instant> = None;
    loop {
        let mut listened = false;
        let ended = listen(&config, &tls, &wakes, &mut || {
            if let Some(at) = lost.take() {
                crate::metrics::metrics().store_reconnected("listen", at.elapsed());
                tracing::info!("the LISTEN connection is back; wake-ups resume");
            }
            listened = true;
        })
        .await;
        if listened {
            backoff = FIRST;
        }
        if lost.is_none() {
            lost = Some(clock::instant());
            match ended {
                Ok(()) => tracing::warn!("the LISTEN connection closed; reconnecting"),
                Err(e) => tracing::warn!(
                    error = %crate::error::chain(&e),
                    "the LISTEN connection failed; reconnecting (polling covers the gap)"
                ),
            }
        } else if let Err(e) = ended {
            tracing::debug!(error = %crate::error::chain(&e), "the LISTEN connection failed again");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    wakes: &Wakes,
    listening: &mut impl FnMut(),
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
    listening();
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
