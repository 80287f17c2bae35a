//! Settings: defaults, then a TOML file, then `HERALD_*` environment
//! variables, then command-line flags; each overrides the one before.
//!
//! Nested keys are joined with `__` in the environment:
//! `HERALD_RETRY__BASE_MS=500` sets `retry.base_ms`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::Channel;
use crate::domain::callback::CallbackPolicy;
use crate::domain::webhook::WebhookEvent;
use crate::logging::LogConfig;
use crate::resilience::backoff::Backoff;
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::hedge::{ChannelHedge, HedgeAfter, HedgeWhen, Hedging};
use crate::secret::Secret;
use crate::store::{PostgresOptions, SqliteOptions, StoreOptions, WebhookRoute, WebhookRoutes};
use crate::webhook::SigningKey;
use crate::{provider, secret};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the settings")]
    Load(#[from] Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(String),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    pub store: String,
    /// What this instance does: accept, deliver, or both.
    pub role: Role,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub telemetry: crate::telemetry::TelemetryConfig,
    pub auth: AuthConfig,
    pub sqlite: SqliteOptions,
    pub postgres: PostgresOptions,
    pub retention: RetentionConfig,
    pub accept: AcceptConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryConfig,
    pub health: HealthConfig,
    pub hedge: HedgeConfig,
    pub providers: ProvidersConfig,
    /// Endpoints that receive the events of ending notifications.
    pub webhooks: Vec<WebhookConfig>,
    pub webhooks_settings: WebhooksSettings,
}

/// Which half of Herald an instance runs. Instances of any roles may share
/// one PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The API and the dispatcher.
    #[default]
    All,
    /// Accepts and stores; delivers nothing.
    Api,
    /// Delivers; its HTTP server answers only /healthz and /readyz.
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }

    pub fn dispatches(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serves `/metrics` on this address of its own (for a scraper on a
    /// private network) instead of on `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// API keys (`herald keys create`) and the limits on their callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether every request but the health checks needs an API key.
    /// Unset: required whenever `listen` is not a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Requests a second this instance lets through from all keys together,
    /// to protect the store. Unset: no such limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_rate_per_sec: Option<f64>,
    /// How often each instance re-reads the keys from the store: a revoked
    /// key stops working within this.
    pub refresh_ms: u64,
    /// `serve --insecure-no-auth`: run without keys on a non-loopback
    /// address anyway. Only a flag, never a setting.
    #[serde(skip)]
    pub insecure_no_auth: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            required: None,
            global_rate_per_sec: None,
            refresh_ms: 2000,
            insecure_no_auth: false,
        }
    }
}

/// What a client may hold of the HTTP server, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request's head (request line and headers) must arrive within this
    /// of its first byte, or of the connection's opening.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request under way is closed after this.
    pub idle_timeout_ms: u64,
    /// A request (reading its body and answering) that takes longer gets 503.
    pub request_timeout_ms: u64,
    /// Connections open at once; beyond it new ones get a 503 and are closed
    /// at once. Keep it below the open-file limit (`ulimit -n`).
    pub max_connections: usize,
    /// Connections one client address may hold of those; beyond it a new
    /// connection is answered only a health check (anything else 429).
    /// Behind a proxy every client shares its address: raise it to
    /// `max_connections` there.
    pub max_connections_per_client: usize,
    /// With API keys off, requests must be addressed (`Host`) to a loopback
    /// name or address, or to one of these names: a page that rebinds a
    /// name of its own to this machine is refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// HTTPS on `listen` and `metrics.listen`: a PEM certificate chain,
    /// leaf first, and its private key; both or neither. SIGHUP reads them
    /// again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl HttpConfig {
    /// The certificate and key files, when HTTPS is on.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((
            self.tls_cert_file.as_deref()?,
            self.tls_key_file.as_deref()?,
        ))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            max_connections: 1024,
            max_connections_per_client: 256,
            allowed_hosts: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Sent and delivered notifications (and their attempts) older than this are
    /// deleted; 0 keeps them forever. Dead and failed ones are always kept.
    pub delivered_max_age_secs: u64,
    /// How often instances that deliver look for rows to purge.
    pub purge_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delivered_max_age_secs: 7 * 24 * 60 * 60,
            purge_interval_secs: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptConfig {
    /// How far ahead `send_at` may be; later ones are refused with 422.
    pub schedule_horizon_secs: u64,
    /// How long an `Idempotency-Key` is remembered; a retry within it gets
    /// the first answer. Expired keys go with the retention purge.
    pub idempotency_ttl_secs: u64,
    /// Most notifications one `POST /v1/batch` may carry.
    pub batch_max_items: usize,
    /// Largest body of `POST /v1/batch`, in bytes (other requests:
    /// `body_limit_bytes`).
    pub batch_body_limit_bytes: usize,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            schedule_horizon_secs: 30 * 24 * 60 * 60,
            idempotency_ttl_secs: 24 * 60 * 60,
            batch_max_items: 1_000,
            batch_body_limit_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Notifications being delivered at once by this process.
    pub max_in_flight: usize,
    /// Most notifications claimed in one go.
    pub claim_batch: usize,
    /// How often the store is asked for due work when nothing wakes the
    /// dispatcher sooner (retries that come due, leases that lapse).
    pub poll_interval_ms: u64,
    /// How long a claim is leased; must outlast a round of attempts.
    pub lease_ms: u64,
    /// On shutdown, how long in-flight sends may take to finish.
    pub drain_timeout_ms: u64,
    /// How often each instance re-reads which providers are disabled
    /// (`herald providers disable`, or another instance's API): they follow
    /// within this.
    pub providers_refresh_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff ceiling; the delay is drawn uniformly below it.
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
    /// Rounds (each tries every admitted provider once) before `dead`.
    pub max_rounds: u32,
    /// Age after which a notification is `dead` whatever its rounds.
    pub max_age_secs: u64,
    /// Longest `Retry-After` honoured; longer ones are clamped to this.
    pub retry_after_max_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Outcomes kept per provider.
    pub window: usize,
    /// Outcomes needed before the failure ratio can open the breaker.
    pub min_samples: usize,
    /// Failure ratio of the window that opens the breaker.
    pub failure_ratio: f64,
    /// Consecutive failures without an answer (connection refused,
    /// timeout) that open the breaker at once.
    pub consecutive_failures: u32,
    pub cooldown_min_ms: u64,
    pub cooldown_max_ms: u64,
    /// Requests let through at once while half-open.
    pub half_open_probes: u32,
}

/// Hedged sends, per channel (`resilience/hedge.rs`): which notifications,
/// and after how long alone in flight a request gets a second provider
/// beside it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// `never`, `asked` (sent with `"hedge": true`) or `all`.
    pub sms: HedgeWhen,
    /// Milliseconds, or `"p90"`: the provider's recent p90 latency.
    pub sms_after_ms: HedgeAfter,
    pub email: HedgeWhen,
    pub email_after_ms: HedgeAfter,
}

impl HedgeConfig {
    pub fn hedging(&self) -> Hedging {
        Hedging {
            sms: ChannelHedge {
                when: self.sms,
                after: self.sms_after_ms,
            },
            email: ChannelHedge {
                when: self.email,
                after: self.email_after_ms,
            },
        }
    }
}

/// One provider: the settings every kind shares, and its kind's own.
///
/// In the file both sit in one table, `kind` naming the kind (`contract`
/// when absent). Unknown keys are an error. String values may hold
/// `${ENV_VAR}` references, read from the environment at start-up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderConfig {
    #[serde(flatten)]
    pub common: ProviderCommon,
    #[serde(flatten)]
    pub kind: ProviderKind,
}

/// What every kind of provider has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderCommon {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_provider_in_flight")]
    pub max_in_flight: usize,
    /// Requests per second this provider is sent at most (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
    /// Requests that may go at once after a quiet spell; defaults to one
    /// second's worth of `rate_per_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// For TLS (https://, SMTP): trust only the CAs in this PEM file instead
    /// of the public roots (a private CA, the tests' throwaway one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Lets a kind that sends credentials (twilio, vonage, sendgrid,
    /// mailgun) use a plain `http://` URL that is not a loopback address:
    /// they then cross the network in clear. Refused without it; warned
    /// about with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure: bool,
}

impl ProviderCommon {
    /// The keys of [`ProviderCommon`]: the rest of a provider's table is its
    /// kind's. (serde's `flatten` cannot be combined with
    /// `deny_unknown_fields`, so the table is split by hand.)
    const KEYS: &'static [&'static str] = &[
        "name",
        "weight",
        "timeout_ms",
        "max_in_flight",
        "rate_per_sec",
        "burst",
        "ca_file",
        "allow_insecure",
    ];

    fn new(name: String) -> Self {
        Self {
            name,
            weight: default_weight(),
            timeout_ms: default_timeout_ms(),
            max_in_flight: default_provider_in_flight(),
            rate_per_sec: None,
            burst: None,
            ca_file: None,
            allow_insecure: false,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Each kind's own settings; the kind's file in `src/provider/` holds them
/// and [`crate::provider::build`] turns them into a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderKind {
    /// The provider contract's JSON over HTTP.
    Contract(provider::contract::ContractConfig),
    Twilio(provider::twilio::TwilioConfig),
    Vonage(provider::vonage::VonageConfig),
    Sendgrid(provider::sendgrid::SendgridConfig),
    Mailgun(provider::mailgun::MailgunConfig),
    Smtp(provider::smtp::SmtpConfig),
}

impl ProviderKind {
    pub fn name(&self) -> &'static str {
        match self {
            ProviderKind::Contract(_) => "contract",
            ProviderKind::Twilio(_) => "twilio",
            ProviderKind::Vonage(_) => "vonage",
            ProviderKind::Sendgrid(_) => "sendgrid",
            ProviderKind::Mailgun(_) => "mailgun",
            ProviderKind::Smtp(_) => "smtp",
        }
    }
}

impl<'de> Deserialize<'de> for ProviderConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        // Checked as written first, so that an error about a value's type
        // quotes `${VAR}`, never the secret it stands for.
        ProviderConfig::from_table(table.clone()).map_err(D::Error::custom)?;
        let mut expanded = serde_json::Value::Object(table);
        expand_strings(&mut expanded, &secret::from_env).map_err(|missing| {
            let name = expanded_name(&expanded);
            D::Error::custom(format!("provider {name}: {missing}"))
        })?;
        let serde_json::Value::Object(table) = expanded else {
            unreachable!("expanding keeps the table a table")
        };
        ProviderConfig::from_table(table).map_err(D::Error::custom)
    }
}

impl ProviderConfig {
    /// A contract provider at `url` with the default settings.
    pub fn contract(name: String, url: String) -> Self {
        Self {
            common: ProviderCommon::new(name),
            kind: ProviderKind::Contract(provider::contract::ContractConfig { url }),
        }
    }

    pub fn name(&self) -> &str {
        &self.common.name
    }

    fn from_table(mut table: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut common = serde_json::Map::new();
        for key in ProviderCommon::KEYS {
            if let Some(value) = table.remove(*key) {
                common.insert((*key).to_owned(), value);
            }
        }
        let common: ProviderCommon = serde_json::from_value(serde_json::Value::Object(common))
            .map_err(|e| format!("a provider: {e}"))?;
        table
            .entry("kind")
            .or_insert_with(|| serde_json::Value::String("contract".into()));
        let kind = serde_json::from_value(serde_json::Value::Object(table))
            .map_err(|e| format!("provider {}: {e}", common.name))?;
        Ok(Self { common, kind })
    }
}

fn expanded_name(table: &serde_json::Value) -> String {
    table
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("?")
        .to_owned()
}

/// Replaces `${VAR}` in every string of `value`, however deep.
fn expand_strings(
    value: &mut serde_json::Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), secret::MissingVar> {
    match value {
        serde_json::Value::String(s) => *s = secret::expand(s, lookup)?,
        serde_json::Value::Array(items) => {
            for item in items {
                expand_strings(item, lookup)?;
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                expand_strings(item, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One `[[webhooks]]` endpoint: where events go, which ones, and the secret
/// that signs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An http:// or https:// URL; it names the endpoint, so it is unique.
    pub url: String,
    /// `whsec_` and the base64 of 24 to 64 random bytes (Standard
    /// Webhooks), or `${ENV_VAR}` holding it.
    #[serde(deserialize_with = "secret::deserialize_reference")]
    pub secret: Secret,
    /// During a rotation, the secret being retired: each request is then
    /// signed with both (two `v1,` signatures in `webhook-signature`), so
    /// receivers may change over one at a time. Remove it when all have.
    #[serde(
        default,
        deserialize_with = "secret::deserialize_optional_reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_secret: Option<Secret>,
    #[serde(default = "all_webhook_events")]
    pub events: Vec<WebhookEvent>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// For https://: trust only the CAs in this PEM file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn all_webhook_events() -> Vec<WebhookEvent> {
    WebhookEvent::ALL.to_vec()
}

fn default_webhook_timeout_ms() -> u64 {
    15_000
}

/// How webhooks are sent, and which `callback_url`s notifications may name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSettings {
    /// Hosts a `callback_url` may name (`hooks.example.com`, or
    /// `*.example.com` for any below it); empty: no `callback_url` accepted.
    pub callback_allowed_hosts: Vec<String>,
    /// Of those, the hosts a `callback_url` may reach over plain http://.
    pub callback_http_hosts: Vec<String>,
    /// Signs every callback; required once callback hosts are allowed.
    #[serde(
        deserialize_with = "secret::deserialize_optional_reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_secret: Option<Secret>,
    /// During a rotation of `callback_secret`, the one being retired: each
    /// callback is signed with both.
    #[serde(
        deserialize_with = "secret::deserialize_optional_reference",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_previous_secret: Option<Secret>,
    /// Whether a callback may reach a private, loopback or link-local
    /// address (checked on the addresses each connection is made to, not
    /// on the name). Off: a name in `callback_allowed_hosts` that resolves
    /// inside the network gets nothing. For tests, and for receivers that
    /// are on the operator's own network.
    pub callback_allow_private_addresses: bool,
    pub callback_timeout_ms: u64,
    /// Webhook requests under way at once in this process.
    pub max_in_flight: usize,
    /// How often the outbox is checked for retries that came due.
    pub poll_interval_ms: u64,
    /// Retry backoff, as `[retry]`'s: a random delay below
    /// `min(cap, base * factor^(attempt-1))`.
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
    /// Attempts before a delivery is `failed`.
    pub max_attempts: u32,
    /// Age (from its event) after which a delivery is `failed`.
    pub max_age_secs: u64,
}

impl Default for WebhooksSettings {
    fn default() -> Self {
        Self {
            callback_allowed_hosts: Vec::new(),
            callback_http_hosts: Vec::new(),
            callback_secret: None,
            callback_previous_secret: None,
            callback_allow_private_addresses: false,
            callback_timeout_ms: default_webhook_timeout_ms(),
            max_in_flight: 64,
            poll_interval_ms: 1_000,
            base_ms: 5_000,
            factor: 4.0,
            cap_ms: 10 * 60 * 60 * 1_000,
            max_attempts: 12,
            max_age_secs: 3 * 24 * 60 * 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersConfig {
    pub sms: Vec<ProviderConfig>,
    pub email: Vec<ProviderConfig>,
}

fn default_weight() -> u32 {
    1
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_provider_in_flight() -> usize {
    64
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: "sqlite://herald.db".into(),
            role: Role::default(),
            body_limit_bytes: 64 * 1024,
            http: HttpConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            auth: AuthConfig::default(),
            sqlite: SqliteOptions::default(),
            postgres: PostgresOptions::default(),
            retention: RetentionConfig::default(),
            accept: AcceptConfig::default(),
            dispatch: DispatchConfig::default(),
            retry: RetryConfig::default(),
            health: HealthConfig::default(),
            hedge: HedgeConfig::default(),
            providers: ProvidersConfig::default(),
            webhooks: Vec::new(),
            webhooks_settings: WebhooksSettings::default(),
        }
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            claim_batch: 256,
            poll_interval_ms: 100,
            lease_ms: 30_000,
            drain_timeout_ms: 10_000,
            providers_refresh_ms: 2_000,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            factor: 2.0,
            cap_ms: 60_000,
            max_rounds: 10,
            max_age_secs: 24 * 60 * 60,
            retry_after_max_ms: 60_000,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        let b = BreakerConfig::default();
        Self {
            window: b.window_size,
            min_samples: b.min_samples,
            failure_ratio: b.failure_ratio,
            consecutive_failures: b.consecutive_failures,
            cooldown_min_ms: b.cooldown_min.as_millis() as u64,
            cooldown_max_ms: b.cooldown_max.as_millis() as u64,
            half_open_probes: b.half_open_probes,
        }
    }
}

impl ProvidersConfig {
    /// The provider contract's six endpoints on their default ports.
    pub fn contract_defaults(host: &str) -> Self {
        let urls = |channel: Channel, ports: [u16; 3]| {
            ports.into_iter().enumerate().map(move |(i, port)| {
                format!("http://{host}:{port}/api/{channel}/provider{}", i + 1)
            })
        };
        Self::from_urls(
            urls(Channel::Sms, [8071, 8072, 8073]),
            urls(Channel::Email, [8091, 8092, 8093]),
        )
    }

    /// Providers named `<channel>-provider<n>`, one per URL, with the
    /// default weight, timeout and concurrency.
    pub fn from_urls(
        sms: impl IntoIterator<Item = String>,
        email: impl IntoIterator<Item = String>,
    ) -> Self {
        let make = |channel: Channel, urls: Box<dyn Iterator<Item = String> + '_>| {
            urls.enumerate()
                .map(|(i, url)| {
                    ProviderConfig::contract(format!("{channel}-provider{}", i + 1), url)
                })
                .collect()
        };
        Self {
            sms: make(Channel::Sms, Box::new(sms.into_iter())),
            email: make(Channel::Email, Box::new(email.into_iter())),
        }
    }

    pub fn for_channel(&self, channel: Channel) -> &[ProviderConfig] {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Email => &self.email,
        }
    }
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self::contract_defaults("127.0.0.1")
    }
}

/// What flags may override.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// Where a running config came from, to read it again (a reload).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// The file, the environment and the flags, layered as at start.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(Some(&self.file), &self.overrides)
    }
}

impl Config {
    /// Layers defaults, the file (if any), the environment and the flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only variables that name a setting: HERALD_CONFIG names the file,
        // and other tools (tests, scripts) may use the prefix for their own.
        let settings = serde_json::to_value(Config::default()).unwrap_or_default();
        let env = Env::prefixed("HERALD_")
            .filter(move |key| {
                let top = key.as_str().split("__").next().unwrap_or_default();
                settings.get(top.to_ascii_lowercase()).is_some()
            })
            .split("__");
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Whether callers need an API key: `auth.required`, else whether
    /// `listen` reaches beyond this machine.
    pub fn auth_required(&self) -> bool {
        self.auth
            .required
            .unwrap_or(!self.listen.ip().is_loopback())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        };
        self.backoff()
            .map_err(|e| invalid("retry", &e.to_string()))?;
        self.breaker()
            .validate()
            .map_err(|e| invalid("health", &e.to_string()))?;
        if self.retry.max_rounds == 0 {
            return Err(invalid("retry.max_rounds", "must be at least 1"));
        }
        if self.dispatch.max_in_flight == 0 || self.dispatch.claim_batch == 0 {
            return Err(invalid(
                "dispatch",
                "max_in_flight and claim_batch must be at least 1",
            ));
        }
        if self.postgres.writers == 0 || self.postgres.pool_size <= self.postgres.writers {
            return Err(invalid(
                "postgres.pool_size",
                "must be larger than postgres.writers, which must be at least 1",
            ));
        }
        if self.retention.purge_interval_secs == 0 {
            return Err(invalid(
                "retention.purge_interval_secs",
                "must be at least 1",
            ));
        }
        if self.accept.batch_max_items == 0 {
            return Err(invalid("accept.batch_max_items", "must be at least 1"));
        }
        if self.log.level.parse::<tracing::Level>().is_err() {
            return Err(invalid(
                "log.level",
                "must be error, warn, info, debug or trace",
            ));
        }
        let h = &self.http;
        if h.header_read_timeout_ms == 0
            || h.idle_timeout_ms == 0
            || h.request_timeout_ms == 0
            || h.max_connections == 0
            || h.max_connections_per_client == 0
        {
            return Err(invalid("http", "every setting must be at least 1"));
        }
        if h.tls_cert_file.is_some() != h.tls_key_file.is_some() {
            return Err(invalid(
                "http.tls_cert_file",
                "goes with http.tls_key_file: set both or neither",
            ));
        }
        if self.auth.refresh_ms == 0 {
            return Err(invalid("auth.refresh_ms", "must be at least 1"));
        }
        if self
            .auth
            .global_rate_per_sec
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(invalid("auth.global_rate_per_sec", "must be above 0"));
        }
        if self.dispatch.poll_interval_ms == 0 {
            return Err(invalid("dispatch.poll_interval_ms", "must be at least 1"));
        }
        if self.dispatch.providers_refresh_ms == 0 {
            return Err(invalid(
                "dispatch.providers_refresh_ms",
                "must be at least 1",
            ));
        }
        for channel in Channel::ALL {
            let providers = self.providers.for_channel(channel);
            if providers.is_empty() {
                return Err(invalid("providers", "every channel needs a provider"));
            }
            if providers.iter().all(|p| p.common.weight == 0) {
                return Err(invalid(
                    "providers",
                    "a channel's weights must not all be 0",
                ));
            }
            for p in providers.iter().map(|p| &p.common) {
                if p.timeout_ms == 0 || p.max_in_flight == 0 {
                    return Err(invalid(
                        "providers",
                        "timeout_ms and max_in_flight must be at least 1",
                    ));
                }
                if p.timeout_ms >= self.dispatch.lease_ms {
                    return Err(invalid(
                        "dispatch.lease_ms",
                        "must be longer than every provider's timeout_ms",
                    ));
                }
                if p.rate_per_sec.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                    return Err(invalid("providers", "rate_per_sec must be above 0"));
                }
                if p.burst == Some(0) || (p.burst.is_some() && p.rate_per_sec.is_none()) {
                    return Err(invalid(
                        "providers",
                        "burst must be at least 1, and goes with rate_per_sec",
                    ));
                }
            }
        }
        // A name is a provider's key in the API, the metrics and the store
        // (disabling one), across channels.
        let mut names: Vec<&str> = Channel::ALL
            .into_iter()
            .flat_map(|c| self.providers.for_channel(c).iter().map(|p| p.name()))
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(
                "providers",
                "provider names must be unique, across channels too",
            ));
        }
        self.validate_webhooks()
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        for (i, w) in self.webhooks.iter().enumerate() {
            if provider::HttpTransport::parse_url("webhooks", &w.url).is_err() {
                return Err(invalid(
                    "webhooks",
                    format!("webhooks[{i}].url must be an http:// or https:// URL"),
                ));
            }
            SigningKey::from_secret(&w.secret)
                .map_err(|e| invalid("webhooks", format!("webhooks[{i}].secret: {e}")))?;
            if let Some(previous) = &w.previous_secret {
                SigningKey::from_secret(previous).map_err(|e| {
                    invalid("webhooks", format!("webhooks[{i}].previous_secret: {e}"))
                })?;
            }
            if w.events.is_empty() || w.timeout_ms == 0 {
                return Err(invalid(
                    "webhooks",
                    format!(
                        "webhooks[{i}]: events must not be empty and timeout_ms must be at least 1"
                    ),
                ));
            }
            if self.webhooks[..i].iter().any(|o| o.url == w.url) {
                return Err(invalid(
                    "webhooks",
                    format!("webhooks[{i}]: another endpoint has the same url"),
                ));
            }
        }
        let s = &self.webhooks_settings;
        self.callback_policy()
            .map_err(|e| invalid("webhooks_settings.callback_allowed_hosts", e.to_string()))?;
        match (&s.callback_secret, s.callback_allowed_hosts.is_empty()) {
            (None, false) => {
                return Err(invalid(
                    "webhooks_settings.callback_secret",
                    "is required when callback_allowed_hosts is set".into(),
                ));
            }
            (Some(secret), _) => {
                SigningKey::from_secret(secret)
                    .map_err(|e| invalid("webhooks_settings.callback_secret", e.to_string()))?;
            }
            (None, true) => {}
        }
        match (&s.callback_previous_secret, &s.callback_secret) {
            (Some(_), None) => {
                return Err(invalid(
                    "webhooks_settings.callback_previous_secret",
                    "goes with callback_secret".into(),
                ));
            }
            (Some(previous), Some(_)) => {
                SigningKey::from_secret(previous).map_err(|e| {
                    invalid("webhooks_settings.callback_previous_secret", e.to_string())
                })?;
            }
            _ => {}
        }
        self.webhook_backoff()
            .map_err(|e| invalid("webhooks_settings", e.to_string()))?;
        if s.max_attempts == 0
            || s.max_in_flight == 0
            || s.poll_interval_ms == 0
            || s.callback_timeout_ms == 0
        {
            return Err(invalid(
                "webhooks_settings",
                "max_attempts, max_in_flight, poll_interval_ms and callback_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Which `callback_url`s notifications may name.
    pub fn callback_policy(
        &self,
    ) -> Result<CallbackPolicy, crate::domain::callback::BadHostPattern> {
        let s = &self.webhooks_settings;
        CallbackPolicy::new(&s.callback_allowed_hosts, &s.callback_http_hosts)
    }

    /// Where the store sends the events of ending notifications.
    pub fn webhook_routes(&self) -> WebhookRoutes {
        WebhookRoutes {
            endpoints: self
                .webhooks
                .iter()
                .map(|w| WebhookRoute {
                    url: w.url.clone(),
                    events: w.events.clone(),
                })
                .collect(),
            callbacks: !self.webhooks_settings.callback_allowed_hosts.is_empty(),
        }
    }

    pub fn webhook_backoff(&self) -> Result<Backoff, crate::resilience::backoff::BackoffError> {
        let s = &self.webhooks_settings;
        Backoff::try_new(
            Duration::from_millis(s.base_ms),
            s.factor,
            Duration::from_millis(s.cap_ms),
        )
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            sqlite: self.sqlite,
            postgres: self.postgres,
            webhooks: self.webhook_routes(),
        }
    }

    pub fn backoff(&self) -> Result<Backoff, crate::resilience::backoff::BackoffError> {
        Backoff::try_new(
            Duration::from_millis(self.retry.base_ms),
            self.retry.factor,
            Duration::from_millis(self.retry.cap_ms),
        )
    }

    pub fn breaker(&self) -> BreakerConfig {
        let h = &self.health;
        BreakerConfig {
            window_size: h.window,
            min_samples: h.min_samples,
            failure_ratio: h.failure_ratio,
            consecutive_failures: h.consecutive_failures,
            cooldown_min: Duration::from_millis(h.cooldown_min_ms),
            cooldown_max: Duration::from_millis(h.cooldown_max_ms),
            half_open_probes: h.half_open_probes,
        }
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_contract() {
        Jail::expect_with(|_| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.store, "sqlite://herald.db");
            assert_eq!(c.body_limit_bytes, 65_536);
            assert_eq!(c.providers.sms.len(), 3);
            assert_eq!(
                c.providers.email[2].kind,
                ProviderKind::Contract(provider::contract::ContractConfig {
                    url: "http://127.0.0.1:8093/api/email/provider3".into()
                })
            );
            Ok(())
        });
    }

    #[test]
    fn flags_beat_env_beat_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "h.toml",
                r#"
                listen = "127.0.0.1:1111"
                store = "sqlite://file.db"
                [retry]
                base_ms = 10
                max_rounds = 3
                "#,
            )?;
            jail.set_env("HERALD_STORE", "sqlite://env.db");
            jail.set_env("HERALD_RETRY__MAX_ROUNDS", "7");
            jail.set_env("HERALD_CONFIG", "h.toml");
            jail.set_env("HERALD_SOMETHING_ELSE", "not a setting");
            jail.set_env("HERALD_ROLE", "worker");
            jail.set_env("HERALD_POSTGRES__POOL_SIZE", "6");
            let overrides = Overrides {
                listen: Some("127.0.0.1:2222".parse().unwrap()),
                store: None,
                role: None,
            };
            let c = Config::load(Some(Path::new("h.toml")), &overrides).unwrap();
            assert_eq!(c.listen.port(), 2222);
            assert_eq!(c.store, "sqlite://env.db");
            assert_eq!(c.retry.base_ms, 10);
            assert_eq!(c.retry.max_rounds, 7);
            assert_eq!(c.role, Role::Worker);
            assert_eq!(c.postgres.pool_size, 6);
            let c = Config::load(
                Some(Path::new("h.toml")),
                &Overrides {
                    role: Some(Role::Api),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(c.role, Role::Api);
            Ok(())
        });
    }

    #[test]
    fn listener_tls_from_the_environment_both_files_or_neither() {
        Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.http.tls_files(), None);
            jail.set_env("HERALD_HTTP__TLS_CERT_FILE", "/etc/herald/cert.pem");
            assert!(matches!(
                Config::load(None, &Overrides::default()),
                Err(ConfigError::Invalid {
                    key: "http.tls_cert_file",
                    ..
                })
            ));
            jail.set_env("HERALD_HTTP__TLS_KEY_FILE", "/etc/herald/key.pem");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(
                c.http.tls_files(),
                Some((
                    Path::new("/etc/herald/cert.pem"),
                    Path::new("/etc/herald/key.pem")
                ))
            );
            Ok(())
        });
    }

    #[test]
    fn hedging_from_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file("h.toml", "[hedge]\nsms = \"all\"\nsms_after_ms = 250\n")?;
            jail.set_env("HERALD_HEDGE__EMAIL_AFTER_MS", "p90");
            jail.set_env("HERALD_HEDGE__EMAIL", "never");
            let c = Config::load(Some(Path::new("h.toml")), &Overrides::default()).unwrap();
            let h = c.hedge.hedging();
            assert_eq!(h.sms.when, HedgeWhen::All);
            assert_eq!(h.sms.after, HedgeAfter::Millis(250));
            assert_eq!(h.email.when, HedgeWhen::Never);
            assert_eq!(h.email.after, HedgeAfter::P90);
            jail.set_env("HERALD_HEDGE__SMS_AFTER_MS", "120");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.hedge.sms_after_ms, HedgeAfter::Millis(120));
            assert_eq!(c.hedge.sms, HedgeWhen::Asked);
            jail.create_file("bad.toml", "[hedge]\nsms = \"sometimes\"\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn providers_from_env() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "HERALD_PROVIDERS__SMS",
                r#"[{name="only", url="http://127.0.0.1:9/x", weight=3}]"#,
            );
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.providers.sms.len(), 1);
            assert_eq!(c.providers.sms[0].common.weight, 3);
            assert_eq!(c.providers.sms[0].common.timeout_ms, 5_000);
            assert_eq!(c.providers.sms[0].kind.name(), "contract");
            assert_eq!(c.providers.email.len(), 3);
            Ok(())
        });
    }

    #[test]
    fn provider_kinds_with_secrets_from_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "kinds.toml",
                r#"
                [[providers.sms]]
                name = "twilio"
                kind = "twilio"
                url = "http://127.0.0.1:9"
                account_sid = "AC123"
                auth_token = "${TEST_TWILIO_TOKEN}"
                from = "+15005550006"
                rate_per_sec = 1.5
                "#,
            )?;
            jail.set_env("TEST_TWILIO_TOKEN", "tok-very-secret");
            let c = Config::load(Some(Path::new("kinds.toml")), &Overrides::default()).unwrap();
            let p = &c.providers.sms[0];
            assert_eq!(p.common.rate_per_sec, Some(1.5));
            let ProviderKind::Twilio(t) = &p.kind else {
                panic!("{p:?}")
            };
            assert_eq!(t.auth_token.expose(), "tok-very-secret");
            assert_eq!(t.account_sid, "AC123");
            assert!(!format!("{c:?}").contains("tok-very-secret"));

            // A missing variable is named, and its neighbours' values are not shown.
            jail.create_file(
                "missing.toml",
                r#"
                [[providers.sms]]
                name = "twilio"
                kind = "twilio"
                account_sid = "AC123"
                auth_token = "${TEST_TWILIO_TOKEN}"
                from = "${TEST_UNSET_VARIABLE}"
                "#,
            )?;
            let err =
                Config::load(Some(Path::new("missing.toml")), &Overrides::default()).unwrap_err();
            let text = crate::error::chain(&err);
            assert!(text.contains("TEST_UNSET_VARIABLE is not set"), "{text}");
            assert!(!text.contains("tok-very-secret"), "{text}");

            // Unknown keys are refused, per kind and in common.
            for (file, body) in [
                (
                    "typo1.toml",
                    "name = \"c\"\nurl = \"http://127.0.0.1:9\"\ntimeout = 5\n",
                ),
                (
                    "typo2.toml",
                    "name = \"c\"\nkind = \"twilio\"\naccount_sid = \"A\"\nauth_token = \"t\"\nfrom = \"x\"\napi_key = \"k\"\n",
                ),
                ("typo3.toml", "name = \"c\"\nkind = \"pigeon\"\n"),
                (
                    "typo4.toml",
                    "name = \"c\"\nkind = \"twilio\"\nauth_token = \"t\"\n",
                ),
            ] {
                jail.create_file(file, &format!("[[providers.sms]]\n{body}"))?;
                let err = Config::load(Some(Path::new(file)), &Overrides::default()).unwrap_err();
                let text = crate::error::chain(&err);
                assert!(
                    text.contains("provider c") || text.contains("a provider"),
                    "{file}: {text}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn bad_settings_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[retry]\nbase_msec = 5\n")?;
            assert!(Config::load(Some(Path::new("typo.toml")), &Overrides::default()).is_err());
            assert!(matches!(
                Config::load(Some(Path::new("missing.toml")), &Overrides::default()),
                Err(ConfigError::MissingFile(_))
            ));
            jail.create_file("lease.toml", "[dispatch]\nlease_ms = 1000\n")?;
            assert!(matches!(
                Config::load(Some(Path::new("lease.toml")), &Overrides::default()),
                Err(ConfigError::Invalid {
                    key: "dispatch.lease_ms",
                    ..
                })
            ));
            jail.set_env("HERALD_RETRY__FACTOR", "0.5");
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let text = include_str!("../herald.example.toml");
        let parsed: Config = Figment::new().merge(Toml::string(text)).extract().unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_example_webhook_endpoint_loads_with_its_secret_from_the_environment() {
        let text = include_str!("../herald.example.toml");
        let start = text.find("# [[webhooks]]\n").unwrap();
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        Jail::expect_with(|jail| {
            jail.create_file("hooks.toml", &block.replace("ca_file", "# ca_file"))?;
            let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
            jail.set_env("HERALD_WEBHOOK_SECRET", secret);
            let c = Config::load(Some(Path::new("hooks.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.webhooks.len(), 1);
            assert_eq!(c.webhooks[0].events, WebhookEvent::ALL);
            assert_eq!(c.webhooks[0].secret.expose(), secret);
            assert!(!format!("{c:?}").contains(secret));
            assert_eq!(c.webhook_routes().endpoints[0].url, c.webhooks[0].url);
            Ok(())
        });
    }

    #[test]
    fn bad_webhook_settings_are_refused_without_showing_secrets() {
        Jail::expect_with(|jail| {
            let cases = [
                // Not whsec_: the value must not show in the error.
                "[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"hunter2-hunter2-hunter2-hunter2\"\n",
                "[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nevents = [\"notification.accepted\"]\n",
                "[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"${UNSET_WEBHOOK_SECRET}\"\n",
                "[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nsecrets = 1\n",
                "[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n[[webhooks]]\nurl = \"https://h.example.com\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "[webhooks_settings]\ncallback_allowed_hosts = [\"hooks.example.com\"]\n",
                "[webhooks_settings]\ncallback_allowed_hosts = [\"*\"]\ncallback_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "[webhooks_settings]\nmax_attempts = 0\n",
                "[[webhooks]]\nurl = \"ftp://h.example.com\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
            ];
            for (i, body) in cases.iter().enumerate() {
                let file = format!("bad{i}.toml");
                jail.create_file(&file, body)?;
                let err = Config::load(Some(Path::new(&file)), &Overrides::default()).unwrap_err();
                let text = crate::error::chain(&err);
                assert!(!text.contains("hunter2"), "{i}: {text}");
                assert!(!text.contains("MfKQ9r8G"), "{i}: {text}");
            }
            Ok(())
        });
    }
}
