//! Delivery: claiming work from the store, choosing a provider, and the
//! health, breaker and backoff rules behind those choices.

pub mod backoff;
pub mod breaker;
pub mod clock;
pub mod dispatcher;
pub mod handoff;
pub mod hedge;
pub mod in_flight;
pub mod latency;
pub mod live;
pub mod pool;
pub mod rate;
mod results;
pub mod round;
pub mod router;
#[cfg(test)]
mod scripted;
pub mod window;
