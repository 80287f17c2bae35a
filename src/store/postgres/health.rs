//! Following the primary: what the store knows of its server.
//!
//! - Connection errors are sorted by kind ([`kind`]): the server went away
//!   (`closed`), shut down (`57P01`, `57P02`, `57P03`: `shutdown`), became
//!   read-only (`25006`: `read_only`, a demotion), could not be reached
//!   (`connect`), or gave no connection in time (`timeout`).
//! - One such error marks the store down and retires every pooled
//!   connection made before it (the pool's `pre_recycle` hook asks
//!   [`Health::stale`]): they lead to the server that went away. New ones
//!   are made through the URL again, so a multi-host URL with
//!   `target_session_attrs=read-write` finds the new primary, and a DNS name
//!   is resolved again.
//! - A new connection first asks its server whether it is a standby, and
//!   is refused if it is, so a read-only server is never used even through
//!   a one-host URL; it also learns the host, for the info metric.
//! - The next write that commits marks the store up again. Each change is
//!   logged once, never each attempt; while down, the writers wait out a
//!   bounded backoff between attempts and fail at once in between (the API
//!   answers 503 with `Retry-After`).
//! - With `require_synchronous_replication`, every new connection and every
//!   readiness probe checks that the primary has a synchronous standby
//!   configured and streaming; the reason it has not is kept for `/readyz`.

use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::UnixMillis;
use crate::resilience::clock;
use crate::store::{StoreError, StoreState};

/// The first and the longest wait between write attempts while down.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The kind of a pool that had no free connection in time: counted, but it
/// says nothing of the server.
pub const POOL_WAIT: &str = "pool_wait";

/// The kinds that mean the connections lead to a server that went away or
/// no longer takes writes.
const RETIRING: [&str; 3] = ["closed", "shutdown", "read_only"];

/// The kind of a connection error in `e`'s chain, or `None` for an error
/// that says nothing about the connection (a constraint, a timeout of one
/// statement).
pub fn kind(e: &(dyn StdError + 'static)) -> Option<&'static str> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(e) = next {
        if e.is::<super::writer::NoPrimary>() {
            return Some("no_primary");
        }
        if let Some(p) = e.downcast_ref::<deadpool_postgres::PoolError>() {
            use deadpool_postgres::PoolError;
            return match p {
                // Every connection busy: the pool is small for the load, the
                // server is not gone.
                PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => Some(POOL_WAIT),
                PoolError::Timeout(_) => Some("timeout"),
                PoolError::Backend(e) => Some(pg_kind(e).unwrap_or("connect")),
                PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => {
                    Some(pg_kind(e).unwrap_or("connect"))
                }
                PoolError::PostCreateHook(deadpool_postgres::HookError::Message(_)) => {
                    Some("read_only")
                }
                PoolError::Closed | PoolError::NoRuntimeSpecified => None,
            };
        }
        if let Some(e) = e.downcast_ref::<tokio_postgres::Error>()
            && let Some(kind) = pg_kind(e)
        {
            return Some(kind);
        }
        next = e.source();
    }
    None
}

fn pg_kind(e: &tokio_postgres::Error) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    if let Some(code) = e.code() {
        return if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            Some("read_only")
        } else if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            Some("shutdown")
        } else {
            None
        };
    }
    if e.is_closed() {
        return Some("closed");
    }
    // An I/O error under it: the socket broke.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return Some("closed");
        }
        source = s.source();
    }
    None
}

struct State {
    writable: bool,
    since: Instant,
    since_wall: UnixMillis,
    /// The kind of the error that made it down.
    down_kind: Option<&'static str>,
    host: Option<String>,
    /// Pooled connections made before this lead to a server that went away.
    retire_before: Option<std::time::Instant>,
    /// While down: no write is tried before this.
    next_try: Option<Instant>,
    backoff: Duration,
    /// What the synchronous replication check last found wrong.
    sync_problem: Option<String>,
}

pub struct Health {
    state: Mutex<State>,
    pub require_sync: bool,
}

impl Health {
    pub fn new(require_sync: bool) -> Self {
        Self {
            state: Mutex::new(State {
                writable: true,
                since: clock::instant(),
                since_wall: UnixMillis::now(),
                down_kind: None,
                host: None,
                retire_before: None,
                next_try: None,
                backoff: BACKOFF_MIN,
                sync_problem: None,
            }),
            require_sync,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at a failed operation: a connection error is counted and marks
    /// the store down (logged once); one that says the server went away or
    /// became read-only retires the older connections. Returns whether it
    /// marked the store down.
    pub fn failed(&self, e: &StoreError) -> bool {
        let Some(kind) = kind(e) else {
            return false;
        };
        crate::metrics::metrics().store_connection_error(kind);
        if kind == POOL_WAIT {
            return false;
        }
        let now = clock::instant();
        let mut s = self.state();
        if RETIRING.contains(&kind) {
            s.retire_before = Some(now.into_std());
        }
        if s.writable {
            s.writable = false;
            s.since = now;
            s.since_wall = UnixMillis::now();
            s.down_kind = Some(kind);
            s.backoff = BACKOFF_MIN;
            crate::metrics::metrics().store_writable(false);
            tracing::warn!(
                kind,
                error = %crate::error::chain(e),
                "postgres: no writable primary; reconnecting with backoff (503 until then)"
            );
        } else {
            s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
        }
        s.next_try = Some(now + s.backoff);
        true
    }

    /// A write committed: a writable primary is there.
    pub fn succeeded(&self) {
        let mut s = self.state();
        if s.writable {
            return;
        }
        let down_for = s.since.elapsed();
        s.writable = true;
        s.since = clock::instant();
        s.since_wall = UnixMillis::now();
        s.down_kind = None;
        s.next_try = None;
        s.backoff = BACKOFF_MIN;
        let m = crate::metrics::metrics();
        m.store_writable(true);
        m.store_reconnected("pool", down_for);
        tracing::info!(
            host = s.host.as_deref().unwrap_or("?"),
            down_ms = down_for.as_millis() as u64,
            "postgres: a writable primary again"
        );
    }

    /// While down, how long a writer should wait before its next attempt
    /// (`None`: try now). Callers in between are failed at once.
    pub fn wait(&self) -> Option<Duration> {
        let s = self.state();
        let next = s.next_try?;
        let now = clock::instant();
        (next > now).then(|| next - now)
    }

    /// Whether a pooled connection made at `created` must be dropped.
    pub fn stale(&self, created: std::time::Instant) -> bool {
        self.state().retire_before.is_some_and(|t| created < t)
    }

    /// A new connection reached `host`.
    pub fn connected(&self, host: String) {
        let mut s = self.state();
        if s.host.as_deref() != Some(&host) {
            tracing::info!(host = %host, "postgres: connected to a primary");
            crate::metrics::metrics().store_host(s.host.as_deref(), &host);
            s.host = Some(host);
        }
    }

    /// What the synchronous replication check found (`None`: all good);
    /// logged when it changes.
    pub fn sync_checked(&self, problem: Option<String>) {
        let mut s = self.state();
        if s.sync_problem == problem {
            return;
        }
        match &problem {
            Some(p) => tracing::warn!(
                problem = %p,
                "postgres: not ready: postgres.require_synchronous_replication is set and {p}"
            ),
            None => tracing::info!("postgres: a synchronous standby is streaming; ready"),
        }
        s.sync_problem = problem;
    }

    pub fn snapshot(&self) -> StoreState {
        let s = self.state();
        let problem = if s.writable {
            s.sync_problem.clone()
        } else {
            s.down_kind.map(|k| format!("no writable primary ({k})"))
        };
        StoreState {
            engine: "postgres",
            writable: s.writable,
            host: s.host.clone(),
            since: Some(s.since_wall.0),
            problem,
        }
    }
}

/// The query a new connection runs: where it is, and whether it is a
/// standby.
pub const WHERE_AM_I: &str =
    "SELECT host(inet_server_addr()), inet_server_port(), pg_is_in_recovery()";

/// What is wrong with the synchronous replication of the server `conn`
/// is on, if anything. Reading `pg_stat_replication`'s states needs a
/// superuser or the `pg_monitor` role.
pub async fn check_sync(conn: &tokio_postgres::Client) -> Result<Option<String>, StoreError> {
    let row = conn
        .query_one(
            "SELECT current_setting('synchronous_standby_names'),
                    current_setting('synchronous_commit'),
                    (SELECT count(*) FROM pg_stat_replication
                      WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))",
            &[],
        )
        .await
        .map_err(super::pg)?;
    let names: String = row.get(0);
    let commit: String = row.get(1);
    let streaming: i64 = row.get(2);
    Ok(if names.trim().is_empty() {
        Some(
            "the primary has no synchronous_standby_names: a commit would be on one server only"
                .into(),
        )
    } else if matches!(commit.as_str(), "off" | "local") {
        Some(format!(
            "synchronous_commit is {commit}: commits do not wait for the standby"
        ))
    } else if streaming == 0 {
        Some(
            "no synchronous standby is streaming (pg_stat_replication; the role needs pg_monitor to see it)"
                .into(),
        )
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(kind: deadpool_postgres::TimeoutType) -> StoreError {
        StoreError::Backend(Box::new(deadpool_postgres::PoolError::Timeout(kind)))
    }

    #[test]
    fn errors_are_sorted_by_kind() {
        use deadpool_postgres::TimeoutType;
        assert_eq!(kind(&timeout(TimeoutType::Create)), Some("timeout"));
        assert_eq!(kind(&timeout(TimeoutType::Wait)), Some(POOL_WAIT));
        let no_primary = StoreError::Backend(Box::new(super::super::writer::NoPrimary(50)));
        assert_eq!(kind(&no_primary), Some("no_primary"));
        assert_eq!(kind(&StoreError::Closed), None);
        assert_eq!(kind(&StoreError::Corrupt { what: "x" }), None);
        let standby = StoreError::Backend(Box::new(deadpool_postgres::PoolError::PostCreateHook(
            deadpool_postgres::HookError::message("a standby"),
        )));
        assert_eq!(kind(&standby), Some("read_only"));
    }

    #[tokio::test(start_paused = true)]
    async fn down_once_backs_off_and_up_again_at_the_first_commit() {
        use deadpool_postgres::TimeoutType;
        let health = Health::new(false);
        assert!(health.wait().is_none());
        assert!(health.snapshot().writable);

        // A busy pool says nothing of the server.
        assert!(!health.failed(&timeout(TimeoutType::Wait)));
        assert!(health.snapshot().writable);
        assert!(health.wait().is_none());

        assert!(health.failed(&timeout(TimeoutType::Create)));
        let down = health.snapshot();
        assert!(!down.writable);
        assert_eq!(
            down.problem.as_deref(),
            Some("no writable primary (timeout)")
        );
        let first = health.wait().expect("backing off");
        assert!(first <= BACKOFF_MIN);
        // Each failure while down doubles the wait, up to its bound.
        for _ in 0..10 {
            health.failed(&timeout(TimeoutType::Create));
        }
        let longest = health.wait().expect("backing off");
        assert!(longest > first && longest <= BACKOFF_MAX, "{longest:?}");
        tokio::time::advance(BACKOFF_MAX).await;
        assert!(health.wait().is_none(), "tried again once the wait is over");

        health.succeeded();
        assert!(health.snapshot().writable);
        assert!(health.snapshot().problem.is_none());
        assert!(health.wait().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_server_retires_the_connections_made_before() {
        use deadpool_postgres::TimeoutType;
        let health = Health::new(false);
        let before = clock::instant().into_std();
        // A connection that timed out does not say the old ones are bad.
        health.failed(&timeout(TimeoutType::Create));
        assert!(!health.stale(before));
        // A standby met (read-only) does.
        tokio::time::advance(Duration::from_millis(1)).await;
        let standby = StoreError::Backend(Box::new(deadpool_postgres::PoolError::PostCreateHook(
            deadpool_postgres::HookError::message("a standby"),
        )));
        health.failed(&standby);
        assert!(health.stale(before));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !health.stale(clock::instant().into_std()),
            "new ones are kept"
        );
    }
}
