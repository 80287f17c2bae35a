//! The providers in use now. A reload replaces the whole set; each round
//! reads it once, at its start, and keeps that set to its end, so a
//! provider a reload removed finishes what it holds (its slot lives until
//! the last round holding it ends).
//!
//! Also which providers an operator took out of rotation: a set of names
//! kept in the store, re-read by every instance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};

use super::pool::Providers;
use crate::domain::UnixMillis;
use crate::store::{Store, StoreError};

/// What a reload did, by provider name.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = ProviderChanges)]
pub struct Changes {
    /// New names: new providers, their breakers closed.
    pub added: Vec<String>,
    /// Names the file no longer has: they take no new attempts and finish
    /// what they hold.
    pub removed: Vec<String>,
    /// Kept, health and all, with new settings.
    pub changed: Vec<Changed>,
    /// The same name with another kind, URL, credentials or `ca_file`: a
    /// new provider, its breaker closed.
    pub replaced: Vec<String>,
    /// Kept as they were.
    pub unchanged: Vec<String>,
    /// Settings besides the providers that differ in the file: not
    /// applied, they wait for a restart.
    pub needs_restart: Vec<String>,
}

/// A provider kept with new settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = ProviderChanged)]
pub struct Changed {
    pub name: String,
    /// Which: `weight`, `timeout_ms`, `max_in_flight`, `rate_per_sec`, `burst`.
    #[schema(schema_with = reconfigurable)]
    pub settings: Vec<&'static str>,
}

/// The settings a reload applies to a provider it keeps
/// (`app::providers::plan` names them).
fn reconfigurable() -> Schema {
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([
            "weight",
            "timeout_ms",
            "max_in_flight",
            "rate_per_sec",
            "burst",
        ]));
    ArrayBuilder::new().items(name).min_items(Some(1)).into()
}

impl Changes {
    /// Whether the reload changed anything at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.replaced.is_empty()
    }
}

pub struct LiveProviders {
    /// Read once per round: one uncontended read lock and an `Arc` clone.
    current: RwLock<Arc<Providers>>,
    /// Names taken out of rotation, and since when, as last read or written.
    /// Held while flags are applied, so a set put in use and the names
    /// applied to it never cross.
    disabled: Mutex<BTreeMap<String, UnixMillis>>,
    /// One read or change of the disabled names at a time: a read that
    /// began before a change never lands after it.
    turn: tokio::sync::Mutex<()>,
}

impl LiveProviders {
    pub fn new(providers: Providers) -> Self {
        Self {
            current: RwLock::new(Arc::new(providers)),
            disabled: Mutex::default(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<Providers> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn disabled(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, UnixMillis>> {
        self.disabled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `next` in use, with the disabled names applied. Rounds under
    /// way keep the set they hold; a provider of it that `next` does not
    /// carry on (removed, or replaced by a new target) is retired there, so
    /// they start nothing new on it.
    pub fn replace(&self, next: Providers) {
        let disabled = self.disabled();
        apply(&next, &disabled);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(next),
        );
        let next = self.current();
        for (_, slot) in old.all() {
            if !next.all().any(|(_, s)| s.shares_health(slot)) {
                slot.retire();
            }
        }
    }

    /// Since when the provider named `name` is out of rotation, if it is.
    pub fn disabled_since(&self, name: &str) -> Option<UnixMillis> {
        self.disabled().get(name).copied()
    }

    /// Re-reads the disabled names from the store and applies them.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _turn = self.turn.lock().await;
        let read: BTreeMap<String, UnixMillis> =
            store.disabled_providers().await?.into_iter().collect();
        let mut disabled = self.disabled();
        apply(&self.current(), &read);
        *disabled = read;
        Ok(())
    }

    /// Takes the provider named `name` out of rotation (or puts it back)
    /// in the store, for every instance, and here at once; `false` when
    /// it already was so.
    pub async fn set_enabled(
        &self,
        store: &dyn Store,
        name: &str,
        enabled: bool,
        at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let _turn = self.turn.lock().await;
        let changed = store.set_provider_disabled(name, !enabled, at).await?;
        let mut disabled = self.disabled();
        if enabled {
            disabled.remove(name);
        } else {
            disabled.entry(name.to_owned()).or_insert(at);
        }
        apply(&self.current(), &disabled);
        Ok(changed)
    }
}

fn apply(providers: &Providers, disabled: &BTreeMap<String, UnixMillis>) {
    for (_, slot) in providers.all() {
        slot.set_enabled(!disabled.contains_key(slot.provider.name()));
    }
}
