//! The one place Herald reads the time (clippy's `disallowed-methods`
//! refuses `Instant::now` and `SystemTime::now` everywhere else).
//!
//! Leases, due times and expiry are wall-clock [`UnixMillis`], stored and
//! shared between processes; waits and durations are tokio instants, which
//! paused test time moves too. The dispatch loop reads wall-clock time
//! through a [`Clock`]: production's is the system clock; tests use
//! [`TokioClock`], which moves only with tokio's (paused) time, so the two
//! never disagree and no test has to sleep.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::domain::UnixMillis;

/// Now, on the monotonic clock: for timeouts, rates and durations.
#[allow(clippy::disallowed_methods)]
pub fn instant() -> Instant {
    Instant::now()
}

/// Now, on the wall clock: for what other processes and people read
/// (`Retry-After` dates, certificate expiry, signatures' timestamps).
#[allow(clippy::disallowed_methods)]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

impl UnixMillis {
    /// Now, on the wall clock, as stored.
    pub fn now() -> Self {
        Self::from_system(wall())
    }
}

pub trait Clock: Send + Sync {
    fn now(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis::now()
    }
}

/// Wall-clock time that advances with tokio's clock: with
/// `#[tokio::test(start_paused = true)]`, only when the test advances it or
/// every task waits on a timer.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: UnixMillis,
    origin: Instant,
}

impl TokioClock {
    pub fn starting_at(wall: UnixMillis) -> Self {
        Self {
            wall,
            origin: instant(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> UnixMillis {
        self.wall.plus(self.origin.elapsed())
    }
}

pub type SharedClock = Arc<dyn Clock>;

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(UnixMillis(1_000));
        assert_eq!(clock.now(), UnixMillis(1_000));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), UnixMillis(1_250));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(clock.now(), UnixMillis(3_250));
    }
}
