//! Reloading the providers from the config file, on SIGHUP or
//! `POST /v1/providers/reload`: the file is read again through the same
//! layers as at start (file < environment < flags) and only its providers
//! are applied. A file that does not load, or a provider that does not
//! build, is refused and the providers in use stay.
//!
//! SIGHUP also reads the listeners' certificate and key again, from the
//! paths they were read from at start, so a renewed certificate needs no
//! restart; a pair that does not load is refused and the one in use stays.

use crate::resilience::clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::providers;
use crate::config::{Config, ConfigError, ConfigSource, ProvidersConfig};
use crate::dispatch::live::{Changes, LiveProviders};
use crate::error::{BoxError, chain};
use crate::provider::BuildError;
use crate::resilience::breaker::BreakerConfig;
use crate::tls::ListenerTls;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the config file does not load")]
    Config(#[from] ConfigError),
    #[error(
        "provider {name}: timeout_ms must be below the running dispatch.lease_ms \
         ({lease_ms} ms; a new lease needs a restart)"
    )]
    Timeout { name: String, lease_ms: u64 },
    #[error("a provider cannot be built")]
    Provider(#[from] BuildError),
}

pub struct Reloader {
    source: ConfigSource,
    live: Arc<LiveProviders>,
    /// The running settings a reload does not change.
    breaker: BreakerConfig,
    lease: Duration,
    /// The running settings but the providers, to tell which changes in
    /// the file wait for a restart.
    others: serde_json::Value,
    /// What the set in use was built from. Held through a reload, so
    /// reloads take turns.
    built_from: Mutex<ProvidersConfig>,
}

impl Reloader {
    pub(super) fn new(source: ConfigSource, config: &Config, live: Arc<LiveProviders>) -> Self {
        Self {
            source,
            live,
            breaker: config.breaker(),
            lease: Duration::from_millis(config.dispatch.lease_ms),
            others: others(config),
            built_from: Mutex::new(config.providers.clone()),
        }
    }

    /// Reads the file again and puts its providers in use; logs what
    /// changed, or why the file was refused.
    pub fn reload(&self) -> Result<Changes, ReloadError> {
        let result = self.apply();
        match &result {
            Ok(changes) => {
                let names = |list: &[String]| list.join(", ");
                let changed: Vec<String> = changes
                    .changed
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.settings.join(", ")))
                    .collect();
                tracing::info!(
                    added = names(&changes.added),
                    removed = names(&changes.removed),
                    changed = names(&changed),
                    replaced = names(&changes.replaced),
                    "providers reloaded"
                );
                if !changes.needs_restart.is_empty() {
                    tracing::warn!(
                        settings = names(&changes.needs_restart),
                        "settings other than the providers changed in the config file; \
                         they take effect at the next restart"
                    );
                }
            }
            Err(e) => tracing::error!(
                error = %chain(e),
                "the config file was refused; the providers in use stay"
            ),
        }
        result
    }

    fn apply(&self) -> Result<Changes, ReloadError> {
        let mut built_from = self.built_from.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.source.load()?;
        let lease_ms = self.lease.as_millis() as u64;
        if let Some(p) = config
            .providers
            .sms
            .iter()
            .chain(&config.providers.email)
            .find(|p| p.common.timeout_ms >= lease_ms)
        {
            return Err(ReloadError::Timeout {
                name: p.name().to_owned(),
                lease_ms,
            });
        }
        let (next, mut changes) = providers::rebuild(
            &self.live.current(),
            &built_from,
            &config.providers,
            &self.breaker,
        )?;
        self.live.replace(next);
        *built_from = config.providers.clone();
        changes.needs_restart = differences(&self.others, &others(&config));
        Ok(changes)
    }
}

impl crate::api::providers::Reload for Reloader {
    fn reload(&self) -> Result<Changes, BoxError> {
        Reloader::reload(self).map_err(Into::into)
    }
}

/// Every setting but the providers, as a tree of values. Only the names
/// of those that differ are ever shown, never their values.
fn others(config: &Config) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("providers");
    }
    value
}

/// The settings (`table.key`, or `key` at the top) whose values differ.
fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let keys = |v: &serde_json::Value| v.as_object().unwrap_or(&empty).clone();
    let (old, new) = (keys(old), keys(new));
    let mut names: Vec<String> = Vec::new();
    for key in old
        .keys()
        .chain(new.keys().filter(|k| !old.contains_key(*k)))
    {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        match (a.and_then(|v| v.as_object()), b.and_then(|v| v.as_object())) {
            (Some(a), Some(b)) => {
                for sub in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                    if a.get(sub) != b.get(sub) {
                        names.push(format!("{key}.{sub}"));
                    }
                }
            }
            _ => names.push(key.clone()),
        }
    }
    names.sort();
    names
}

/// SIGHUP, caught from now on (its default would end the process);
/// `None` where it cannot be.
#[cfg(unix)]
pub(super) type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
pub(super) type Hangup = std::convert::Infallible;

pub(super) fn catch_hangup() -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(|e| {
                tracing::warn!(error = %e, "cannot catch SIGHUP; reload with POST /v1/providers/reload");
            })
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// Reloads on every SIGHUP: the certificate, if the listeners have one,
/// and the providers, if there is a config file. With neither there is
/// nothing to read again: that is logged, and the process goes on.
pub(super) fn on_hangup(
    hangup: Hangup,
    reloader: Option<Arc<Reloader>>,
    tls: Option<Arc<ListenerTls>>,
) -> JoinHandle<()> {
    #[cfg(unix)]
    {
        let mut hangup = hangup;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if let Some(tls) = &tls {
                    reload_certificate(tls);
                }
                match &reloader {
                    // Refusals are logged by the reload itself.
                    Some(reloader) => {
                        let _ = reloader.reload();
                    }
                    None if tls.is_some() => {}
                    None => tracing::warn!(
                        "SIGHUP: serve was started without a config file; nothing to reload"
                    ),
                }
            }
        })
    }
    #[cfg(not(unix))]
    match hangup {}
}

/// Reads the certificate and key again; logs the outcome.
fn reload_certificate(tls: &ListenerTls) {
    match tls.reload() {
        Ok(()) => {
            tracing::info!(
                cert_file = %tls.cert_file().display(),
                "TLS certificate reloaded; new connections get it"
            );
            note_certificate_expiry(tls);
        }
        Err(e) => tracing::error!(
            error = %chain(&e),
            "the TLS certificate and key were refused; the pair in use stays"
        ),
    }
}

/// A certificate this close to its end is warned about at start-up and on
/// each reload: a renewal that failed shows before clients refuse it.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Publishes when the served certificate expires (a gauge to alert on),
/// and warns when that is near or past.
pub(super) fn note_certificate_expiry(tls: &ListenerTls) {
    let Some(not_after) = tls.not_after() else {
        return;
    };
    let cert_file = tls.cert_file().display().to_string();
    crate::metrics::metrics().certificate_expiry(&cert_file, not_after);
    let expires = x509_cert::der::DateTime::from_system_time(not_after)
        .map_or_else(|_| "?".to_owned(), |t| t.to_string());
    match not_after.duration_since(clock::wall()) {
        Err(_) => tracing::error!(
            %cert_file,
            %expires,
            "the TLS certificate has expired: clients refuse it. Renew it, then send SIGHUP"
        ),
        Ok(left) if left < EXPIRY_WARNING => tracing::warn!(
            %cert_file,
            %expires,
            days_left = left.as_secs() / 86_400,
            "the TLS certificate expires soon: renew it, then send SIGHUP"
        ),
        Ok(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_settings_never_their_values() {
        let mut a = Config::default();
        let mut b = a.clone();
        b.retry.base_ms = 7;
        b.store = "postgres://herald:s3cret@db/h".into();
        b.providers.sms.clear();
        let names = differences(&others(&a), &others(&b));
        assert_eq!(names, ["retry.base_ms", "store"]);
        assert!(!names.concat().contains("s3cret"));
        a.metrics.listen = Some("127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            differences(&others(&a), &others(&Config::default())),
            ["metrics.listen"]
        );
    }
}
