//! `herald mock-providers`' flags (also the provider half of `herald demo`).

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use crate::SimulatorConfig;

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Share of valid requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.5, value_parser = parse_rate)]
    pub failure_rate: f64,
    /// Delay before each answer to a valid request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Ports of SMS providers 1, 2, 3… (0: any free port).
    #[arg(long, value_delimiter = ',', default_value = "8071,8072,8073")]
    pub sms_ports: Vec<u16>,
    /// Ports of email providers 1, 2, 3… (0: any free port).
    #[arg(long, value_delimiter = ',', default_value = "8091,8092,8093")]
    pub email_ports: Vec<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Seed for the random failures, for reproducible runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl MockArgs {
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            host: self.host,
            failure_rate: self.failure_rate,
            latency: Duration::from_millis(self.latency_ms),
            sms_ports: self.sms_ports.clone(),
            email_ports: self.email_ports.clone(),
            seed: self.seed,
        }
    }
}

/// A share between 0 and 1, such as a failure rate.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0 and 1".into())
    }
}
