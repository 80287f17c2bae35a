//! Wake-ups from other instances: a connection of its own that LISTENs on
//! [`NOTIFY_CHANNEL`] and pokes the dispatcher's [`Notify`].
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

use super::NOTIFY_CHANNEL;

pub async fn run(config: tokio_postgres::Config, tls: MakeRustlsConnect, wake: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&config, &tls, &wake).await {
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
    wake: &Notify,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection must be polled for the LISTEN to complete, and for
    // notifications to arrive at all.
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
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
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    tracing::debug!("listening for new work");
    // Whatever was stored while we were not listening.
    wake.notify_one();
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        wake.notify_one();
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
