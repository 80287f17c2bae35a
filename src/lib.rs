//! Herald: a self-hosted notification gateway.
//!
//! Data flows one way: [`api`] validates and hands a notification to the
//! [`store`]; the [`dispatch`] loop claims it from the store, sends it through
//! a [`provider`], and writes the outcome back to the store. A notification's
//! end also writes its events to the store's outbox, which the [`webhook`]
//! worker sends on.
//!
//! # Error policy
//!
//! Each layer has its own error type, made with `thiserror`, that keeps its
//! source: [`store::StoreError`], [`provider::SendError`],
//! [`config::ConfigError`]. The HTTP layer turns errors into
//! `application/problem+json` answers ([`api::problem::Problem`]). `anyhow`
//! appears only in `main.rs`, at the binary's edge.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod provider;
pub mod resilience;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod webhook;
