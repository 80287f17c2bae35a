//! Prometheus metrics: counters and histograms updated as work happens, so a
//! scrape costs only their encoding.
//!
//! One set per process ([`metrics`]), since they are recorded from every
//! layer (the API, the dispatcher, the store's writers). Gauges that describe
//! state are set just before encoding (breakers) or by a periodic query
//! (backlog), never by counting rows at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels2, Counter>,
    accept_duration: Histogram,
    notifications: Family<Labels2, Counter>,
    attempts: Family<Labels2, Counter>,
    hedges: Family<Labels1, Counter>,
    provider_duration: Family<Labels1, Histogram>,
    breaker_state: Family<Labels1, Gauge>,
    window_failure_ratio: Family<Labels1, Gauge<f64, AtomicU64>>,
    provider_enabled: Family<Labels1, Gauge>,
    /// The providers whose gauges were last set, to drop those a reload
    /// removed.
    provider_names: Mutex<Vec<String>>,
    backlog: Family<Labels1, Gauge>,
    in_flight: Gauge,
    commit_duration: Histogram,
    commit_batch: Histogram,
    store_faults: Counter,
    webhook_deliveries: Family<Labels1, Counter>,
    webhook_pending: Gauge,
    certificate_expiry: Family<Labels1, Gauge>,
    store_connection_errors: Family<Labels1, Counter>,
    store_reconnects: Family<Labels1, Counter>,
    store_unavailable: Counter<f64, AtomicU64>,
    store_writable: Gauge,
    store_host: Family<Labels1, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Seconds, from 0.5 ms to ~16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

fn provider_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 14)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let http_requests = Family::<Labels2, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        let accept_duration = Histogram::new(latency_buckets());
        registry.register(
            "accept_duration_seconds",
            "Time to store a valid notification, until its commit",
            accept_duration.clone(),
        );
        let notifications = Family::<Labels2, Counter>::default();
        registry.register(
            "notifications",
            "Notifications by channel and outcome (accepted; sent: a provider accepted it; failed, dead, expired; delivered, undelivered, bounced: by a receipt)",
            notifications.clone(),
        );
        let attempts = Family::<Labels2, Counter>::default();
        registry.register(
            "attempts",
            "Provider requests by provider and outcome",
            attempts.clone(),
        );
        let hedges = Family::<Labels1, Counter>::default();
        registry.register(
            "hedges",
            "Rounds that hedged, by outcome (won_by_hedge, won_by_first, both_failed)",
            hedges.clone(),
        );
        let provider_duration = Family::<Labels1, Histogram>::new_with_constructor(|| {
            Histogram::new(provider_buckets())
        });
        registry.register(
            "provider_request_duration_seconds",
            "Time a provider took to answer",
            provider_duration.clone(),
        );
        let breaker_state = Family::<Labels1, Gauge>::default();
        registry.register(
            "provider_breaker_state",
            "A provider's breaker: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let window_failure_ratio = Family::<Labels1, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "provider_window_failure_ratio",
            "Share of failures among a provider's recent outcomes",
            window_failure_ratio.clone(),
        );
        let provider_enabled = Family::<Labels1, Gauge>::default();
        registry.register(
            "provider_enabled",
            "1 while a provider is in rotation, 0 once an operator disabled it",
            provider_enabled.clone(),
        );
        let backlog = Family::<Labels1, Gauge>::default();
        registry.register(
            "backlog",
            "Unfinished notifications by status (queued, retrying, sending), from a periodic query",
            backlog.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Delivery rounds running in this process",
            in_flight.clone(),
        );
        let commit_duration = Histogram::new(latency_buckets());
        registry.register(
            "store_commit_duration_seconds",
            "Time of one store write transaction (group commit)",
            commit_duration.clone(),
        );
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_commit_batch_size",
            "Writes carried by one store transaction",
            commit_batch.clone(),
        );
        let store_faults = Counter::default();
        registry.register(
            "store_faults",
            "Round results the store kept refusing while it took others, written without their outside text",
            store_faults.clone(),
        );
        let webhook_deliveries = Family::<Labels1, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by outcome (delivered, retried, failed: no more attempts)",
            webhook_deliveries.clone(),
        );
        let webhook_pending = Gauge::default();
        registry.register(
            "webhook_pending",
            "Webhook deliveries not yet delivered or failed, from a periodic query",
            webhook_pending.clone(),
        );
        let certificate_expiry = Family::<Labels1, Gauge>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the listeners' TLS certificate expires (Unix time), by file; only with TLS on",
            certificate_expiry.clone(),
        );
        let store_connection_errors = Family::<Labels1, Counter>::default();
        registry.register(
            "store_connection_errors",
            "PostgreSQL connection errors by kind (closed, shutdown, read_only, connect, timeout)",
            store_connection_errors.clone(),
        );
        let store_reconnects = Family::<Labels1, Counter>::default();
        registry.register(
            "store_reconnects",
            "Times PostgreSQL was reached again after a connection error, by connection (pool: a \
             write committed again; listen: LISTEN issued again)",
            store_reconnects.clone(),
        );
        let store_unavailable = Counter::<f64, AtomicU64>::default();
        registry.register(
            "store_unavailable_seconds",
            "Time without a writable PostgreSQL primary, over the outages that ended",
            store_unavailable.clone(),
        );
        let store_writable = Gauge::default();
        store_writable.set(1);
        registry.register(
            "store_writable",
            "1 while the last store write reached a writable primary, 0 during an outage",
            store_writable.clone(),
        );
        let store_host = Family::<Labels1, Gauge>::default();
        registry.register(
            "store_host_info",
            "The PostgreSQL server (host:port) the store last connected to, as a label",
            store_host.clone(),
        );
        Self {
            registry,
            http_requests,
            accept_duration,
            notifications,
            attempts,
            hedges,
            provider_duration,
            breaker_state,
            window_failure_ratio,
            provider_enabled,
            provider_names: Mutex::default(),
            backlog,
            in_flight,
            commit_duration,
            commit_batch,
            store_faults,
            webhook_deliveries,
            webhook_pending,
            certificate_expiry,
            store_connection_errors,
            store_reconnects,
            store_unavailable,
            store_writable,
            store_host,
        }
    }

    /// `kind`: closed, shutdown, read_only, connect, timeout.
    pub fn store_connection_error(&self, kind: &str) {
        self.store_connection_errors
            .get_or_create(&[("kind", kind.to_owned())])
            .inc();
    }

    /// Reached again after `down_for` without; `connection`: pool, listen.
    pub fn store_reconnected(&self, connection: &str, down_for: Duration) {
        self.store_reconnects
            .get_or_create(&[("connection", connection.to_owned())])
            .inc();
        if connection == "pool" {
            self.store_unavailable.inc_by(down_for.as_secs_f64());
        }
    }

    pub fn store_writable(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }

    /// The store now connects to `host` (no longer to `old`).
    pub fn store_host(&self, old: Option<&str>, host: &str) {
        if let Some(old) = old {
            self.store_host.remove(&[("host", old.to_owned())]);
        }
        self.store_host
            .get_or_create(&[("host", host.to_owned())])
            .set(1);
    }

    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&[("route", route.to_owned()), ("status", status.to_string())])
            .inc();
    }

    /// The certificate in `cert_file` is valid until `not_after`.
    pub fn certificate_expiry(&self, cert_file: &str, not_after: SystemTime) {
        let secs = match not_after.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        };
        self.certificate_expiry
            .get_or_create(&[("cert_file", cert_file.to_owned())])
            .set(secs);
    }

    pub fn accepted(&self, channel: &str, took: Duration) {
        self.accept_duration.observe(took.as_secs_f64());
        self.notification(channel, "accepted");
    }

    /// `outcome`: accepted, sent, failed, dead, expired (and, from receipts,
    /// delivered, undelivered, bounced).
    pub fn notification(&self, channel: &str, outcome: &str) {
        self.notifications
            .get_or_create(&[
                ("channel", channel.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    pub fn attempt(&self, provider: &str, outcome: &str, took: Duration) {
        self.attempts
            .get_or_create(&[
                ("provider", provider.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
        self.provider_duration
            .get_or_create(&[("provider", provider.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// A round that sent a hedge ended: `won_by_hedge`, `won_by_first` or
    /// `both_failed`.
    pub fn hedge(&self, outcome: &'static str) {
        self.hedges
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// Sets the gauges of every provider in use; those of providers no
    /// longer in use (a reload removed them) are dropped.
    pub fn providers(&self, providers: &[ProviderGauges<'_>]) {
        let mut names = self
            .provider_names
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for gone in names
            .iter()
            .filter(|n| !providers.iter().any(|p| p.name == n.as_str()))
        {
            let label = [("provider", gone.clone())];
            self.breaker_state.remove(&label);
            self.window_failure_ratio.remove(&label);
            self.provider_enabled.remove(&label);
        }
        for p in providers {
            let label = [("provider", p.name.to_owned())];
            self.breaker_state
                .get_or_create(&label)
                .set(p.breaker_state);
            self.window_failure_ratio
                .get_or_create(&label)
                .set(p.failure_ratio);
            self.provider_enabled
                .get_or_create(&label)
                .set(i64::from(p.enabled));
        }
        *names = providers.iter().map(|p| p.name.to_owned()).collect();
    }

    /// How many notifications of every channel reached `outcome` in this
    /// process so far.
    pub fn notifications_total(&self, outcome: &str) -> u64 {
        crate::domain::Channel::ALL
            .iter()
            .filter_map(|channel| {
                self.notifications
                    .get(&[
                        ("channel", channel.as_str().to_owned()),
                        ("outcome", outcome.to_owned()),
                    ])
                    .map(|c| c.get())
            })
            .sum()
    }

    /// The backlog gauge's last reading for `status`.
    pub fn backlog_of(&self, status: &str) -> u64 {
        self.backlog
            .get(&[("status", status.to_owned())])
            .map_or(0, |g| u64::try_from(g.get()).unwrap_or(0))
    }

    pub fn backlog(&self, status: &str, count: u64) {
        self.backlog
            .get_or_create(&[("status", status.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn round_started(&self) {
        self.in_flight.inc();
    }

    pub fn round_ended(&self) {
        self.in_flight.dec();
    }

    pub fn store_commit(&self, took: Duration, writes: usize) {
        self.commit_duration.observe(took.as_secs_f64());
        self.commit_batch.observe(writes as f64);
    }

    /// A round's result written in its minimal form (`dispatch/results.rs`).
    pub fn store_fault(&self) {
        self.store_faults.inc();
    }

    /// `outcome`: delivered, retried, failed.
    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn webhook_pending(&self, count: u64) {
        self.webhook_pending
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One provider's state gauges.
pub struct ProviderGauges<'a> {
    pub name: &'a str,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: i64,
    pub failure_ratio: f64,
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_encoded() {
        let m = Metrics::new();
        m.http_request("/v1/sms", 202);
        m.accepted("sms", Duration::from_millis(3));
        m.attempt("sms-provider1", "delivered", Duration::from_millis(40));
        let gauges = |name, enabled| ProviderGauges {
            name,
            breaker_state: 2,
            failure_ratio: 0.5,
            enabled,
        };
        m.providers(&[gauges("gone", true)]);
        m.providers(&[gauges("sms-provider1", false)]);
        m.backlog("queued", 7);
        m.store_commit(Duration::from_millis(1), 12);
        m.hedge("won_by_hedge");
        m.notification("email", "accepted");
        m.notification("sms", "sent");
        assert_eq!(m.notifications_total("accepted"), 2);
        assert_eq!(m.notifications_total("sent"), 1);
        assert_eq!(m.notifications_total("dead"), 0);
        assert_eq!((m.backlog_of("queued"), m.backlog_of("sending")), (7, 0));
        m.webhook_delivery("retried");
        m.webhook_pending(3);
        let text = m.encode();
        for line in [
            r#"herald_http_requests_total{route="/v1/sms",status="202"} 1"#,
            r#"herald_notifications_total{channel="sms",outcome="accepted"} 1"#,
            r#"herald_notifications_total{channel="email",outcome="accepted"} 1"#,
            r#"herald_attempts_total{provider="sms-provider1",outcome="delivered"} 1"#,
            r#"herald_provider_breaker_state{provider="sms-provider1"} 2"#,
            r#"herald_provider_window_failure_ratio{provider="sms-provider1"} 0.5"#,
            r#"herald_provider_enabled{provider="sms-provider1"} 0"#,
            r#"herald_backlog{status="queued"} 7"#,
            "herald_accept_duration_seconds_count 1",
            "herald_store_commit_batch_size_sum 12.0",
            r#"herald_provider_request_duration_seconds_count{provider="sms-provider1"} 1"#,
            "herald_in_flight 0",
            r#"herald_hedges_total{outcome="won_by_hedge"} 1"#,
            r#"herald_webhook_deliveries_total{outcome="retried"} 1"#,
            "herald_webhook_pending 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains(r#"provider="gone""#),
            "a provider no longer in use keeps no gauge:\n{text}"
        );
    }
}
