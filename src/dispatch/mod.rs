//! Delivery: claiming work from the store, choosing a provider and sending
//! through it. The health, breaker and backoff rules behind those choices
//! are in [`crate::resilience`].

pub mod dispatcher;
pub mod handoff;
pub mod live;
pub mod pool;
mod results;
pub mod round;
pub mod router;
#[cfg(test)]
mod scripted;
