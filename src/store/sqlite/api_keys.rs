//! API keys in SQLite: written through the writer like everything else,
//! read on the reader connection.

use rusqlite::{Connection, params};

use super::backend;
use crate::domain::UnixMillis;
use crate::store::{ApiKeyRecord, StoreError};

/// A change to the keys, run by the writer in its transaction.
pub(super) enum KeyWrite {
    Create(ApiKeyRecord),
    Revoke { name: String, at: UnixMillis },
}

pub(super) fn write(conn: &Connection, change: &KeyWrite) -> Result<bool, StoreError> {
    let changed = match change {
        KeyWrite::Create(k) => conn
            .prepare_cached(
                "INSERT INTO api_keys
                     (name, key_hash, scopes, rate_per_sec, burst, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT DO NOTHING",
            )
            .map_err(backend)?
            .execute(params![
                k.name,
                k.key_hash,
                k.scopes,
                k.rate_per_sec,
                k.burst,
                k.created_at.0,
                k.revoked_at.map(|t| t.0),
            ])
            .map_err(backend)?,
        KeyWrite::Revoke { name, at } => conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            )
            .map_err(backend)?
            .execute(params![name, at.0])
            .map_err(backend)?,
    };
    Ok(changed == 1)
}

pub(super) fn all(conn: &Connection) -> Result<Vec<ApiKeyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, key_hash, scopes, rate_per_sec, burst, created_at, revoked_at
               FROM api_keys ORDER BY name",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(ApiKeyRecord {
                name: r.get(0)?,
                key_hash: r.get(1)?,
                scopes: r.get(2)?,
                rate_per_sec: r.get(3)?,
                burst: r.get(4)?,
                created_at: UnixMillis(r.get(5)?),
                revoked_at: r.get::<_, Option<i64>>(6)?.map(UnixMillis),
            })
        })
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend)).collect()
}
