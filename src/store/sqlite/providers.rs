//! Providers out of rotation in SQLite: written through the writer, read on
//! the reader connection.

use rusqlite::{Connection, params};

use super::backend;
use crate::domain::UnixMillis;
use crate::store::StoreError;

/// Takes a provider out of rotation or puts it back; whether that changed
/// anything.
pub(super) fn set_disabled(
    conn: &Connection,
    name: &str,
    disabled: bool,
    at: UnixMillis,
) -> Result<bool, StoreError> {
    let changed = if disabled {
        conn.prepare_cached(
            "INSERT INTO disabled_providers (name, disabled_at) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )
        .map_err(backend)?
        .execute(params![name, at.0])
    } else {
        conn.prepare_cached("DELETE FROM disabled_providers WHERE name = ?1")
            .map_err(backend)?
            .execute(params![name])
    }
    .map_err(backend)?;
    Ok(changed == 1)
}

pub(super) fn disabled(conn: &Connection) -> Result<Vec<(String, UnixMillis)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT name, disabled_at FROM disabled_providers ORDER BY name")
        .map_err(backend)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, UnixMillis(r.get(1)?))))
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend)).collect()
}
