//! The pure rules everything else leans on: the clock, the circuit breaker
//! and its outcome window, backoff, token-bucket rates, latency windows,
//! in-flight caps and hedging. Nothing here does I/O or knows a provider,
//! a store or HTTP; dispatch, webhooks, providers, the store and the API all
//! sit above it.

pub mod backoff;
pub mod breaker;
pub mod clock;
pub mod hedge;
pub mod in_flight;
pub mod latency;
pub mod rate;
pub mod window;
