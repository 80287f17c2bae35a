//! Where the dispatch loop reads wall-clock time from.
//!
//! Leases, due times and expiry are wall-clock [`UnixMillis`], stored and
//! shared between processes; waits are tokio timers. Production reads the
//! system clock. Tests use [`TokioClock`], which moves only with tokio's
//! (paused) time, so the two never disagree and no test has to sleep.

use std::sync::Arc;

use crate::domain::UnixMillis;

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
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(wall: UnixMillis) -> Self {
        Self {
            wall,
            origin: tokio::time::Instant::now(),
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
