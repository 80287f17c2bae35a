//! Status webhooks: the events of ending notifications, POSTed to the
//! configured endpoints and to each notification's own `callback_url`,
//! signed as the Standard Webhooks specification says.
//!
//! The store writes each event to its outbox in the transaction that ends
//! the notification ([`crate::store::WebhookRoutes`]); the [`worker`]
//! claims due deliveries, sends them through [`receivers`] with a
//! [`signature`], retries failures with backoff, and keeps one breaker per
//! receiver. Delivery is at least once: a receiver dedupes by `webhook-id`.

pub mod receivers;
pub mod signature;
pub mod worker;

pub use receivers::{Receivers, ReceiversError};
pub use signature::{BadSecret, SigningKey};
pub use worker::{WebhookRetry, WebhookWorker, WorkerSettings};
