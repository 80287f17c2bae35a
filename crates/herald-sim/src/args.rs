//! `herald mock-providers`' flags (also the provider half of `herald demo`).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use herald_contract::Channel;

use crate::SimulatorConfig;

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Share of valid requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.5, value_parser = parse_rate)]
    pub failure_rate: f64,
    /// Delay before each answer to a valid request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// One provider with a delay of its own instead, as `CHANNEL:N=MS`
    /// (`sms:1=2000`: SMS provider 1 answers after 2 s); repeat for more.
    #[arg(long, value_parser = parse_slow)]
    pub slow: Vec<Slow>,
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
            slow: self.slow.clone(),
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

/// A provider that answers later than the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slow {
    pub channel: Channel,
    /// 1-based, as in the endpoint path.
    pub provider: u8,
    pub latency: Duration,
}

/// `CHANNEL:N=MS`, as `--slow` takes it.
pub fn parse_slow(s: &str) -> Result<Slow, String> {
    let bad = || format!("{s:?} is not CHANNEL:N=MS (sms:1=2000, say)");
    let (which, ms) = s.split_once('=').ok_or_else(bad)?;
    let (channel, provider) = which.split_once(':').ok_or_else(bad)?;
    Ok(Slow {
        channel: Channel::parse(channel).ok_or_else(bad)?,
        provider: provider.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
        latency: Duration::from_millis(ms.parse().map_err(|_| bad())?),
    })
}

impl fmt::Display for Slow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}={}",
            self.channel,
            self.provider,
            self.latency.as_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_providers_are_named_by_channel_and_number() {
        let slow = parse_slow("sms:1=2000").unwrap();
        assert_eq!(
            slow,
            Slow {
                channel: Channel::Sms,
                provider: 1,
                latency: Duration::from_secs(2),
            }
        );
        assert_eq!(slow.to_string(), "sms:1=2000");
        assert_eq!(parse_slow("email:3=0").unwrap().provider, 3);
        for bad in [
            "sms:0=10", "fax:1=10", "sms1=10", "sms:1", "sms:x=1", "sms:1=-5",
        ] {
            assert!(parse_slow(bad).is_err(), "{bad}");
        }
    }
}
