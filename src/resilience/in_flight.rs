//! A provider's cap on requests in flight, which a reload may move while
//! requests hold it.
//!
//! A semaphore whose size changes: growing adds permits; shrinking forgets
//! the free ones at once and owes the rest, which are forgotten as their
//! holders give them back. No request in flight is cut short or counted
//! twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct InFlightCap {
    permits: Arc<Semaphore>,
    /// Held while resizing, so resizes take turns.
    limit: Mutex<usize>,
    /// Permits to forget as they come back. Read without a lock by each
    /// acquire: while nothing is owed, that is one atomic load.
    owed: AtomicUsize,
}

impl InFlightCap {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit: Mutex::new(limit),
            owed: AtomicUsize::new(0),
        }
    }

    fn limit_lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limit(&self) -> usize {
        *self.limit_lock()
    }

    /// Permits held now: the cap, plus what is owed by a shrink, less
    /// what is free.
    pub fn held(&self) -> usize {
        let limit = self.limit_lock();
        (*limit + self.owed.load(Ordering::Acquire))
            .saturating_sub(self.permits.available_permits())
    }

    /// Waits for room under the cap; the permit frees it when dropped.
    pub async fn acquire(&self) -> OwnedSemaphorePermit {
        loop {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let paid = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
            if paid.is_err() {
                return permit;
            }
            // A permit the cap no longer has: the debt is paid, wait again.
            permit.forget();
        }
    }

    /// Room under the cap if there is some now, without waiting (a hedge
    /// goes out at once or not at all).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
            let paid = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1));
            if paid.is_err() {
                return Some(permit);
            }
            // As in `acquire`: a permit the cap no longer has.
            permit.forget();
        }
    }

    /// Moves the cap to `limit`; permits held stay valid.
    pub fn resize(&self, limit: usize) {
        let mut current = self.limit_lock();
        if limit >= *current {
            let grow = limit - *current;
            let before = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                    Some(o - o.min(grow))
                })
                .unwrap_or_default();
            self.permits.add_permits(grow - before.min(grow));
        } else {
            let shrink = *current - limit;
            let forgotten = self.permits.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *current = limit;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn try_acquire(cap: &InFlightCap) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(Duration::from_millis(10), cap.acquire())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_below_what_is_held_waits_for_the_holders() {
        let cap = InFlightCap::new(3);
        let held: Vec<_> = [
            cap.acquire().await,
            cap.acquire().await,
            cap.acquire().await,
        ]
        .into();
        cap.resize(1);
        assert_eq!(cap.limit(), 1);
        assert_eq!(cap.held(), 3);
        let mut held = held;
        // Two come back: both are forgotten, nothing is free yet.
        held.pop();
        held.pop();
        assert_eq!(cap.held(), 1);
        assert!(try_acquire(&cap).await.is_none());
        // The last holder leaves: one request may go, one only.
        held.pop();
        let one = try_acquire(&cap).await.expect("room for one");
        assert!(try_acquire(&cap).await.is_none());
        drop(one);
        assert!(try_acquire(&cap).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn growing_repays_what_is_owed_first() {
        let cap = InFlightCap::new(2);
        let a = cap.acquire().await;
        let b = cap.acquire().await;
        cap.resize(0);
        cap.resize(3);
        // Three in all: the two held and one more.
        let c = try_acquire(&cap).await.expect("room for a third");
        assert!(try_acquire(&cap).await.is_none());
        drop((a, b, c));
        let all: Vec<_> = [
            try_acquire(&cap).await,
            try_acquire(&cap).await,
            try_acquire(&cap).await,
            try_acquire(&cap).await,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(all.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn trying_honours_the_cap_and_what_a_shrink_owes() {
        let cap = InFlightCap::new(2);
        let a = cap.try_acquire().expect("room");
        let b = cap.try_acquire().expect("room");
        assert!(cap.try_acquire().is_none(), "full");
        cap.resize(1);
        // Both held are owed back: the first to return pays the debt.
        drop(a);
        assert!(cap.try_acquire().is_none(), "the returned permit was owed");
        drop(b);
        let one = cap.try_acquire().expect("room for one");
        assert!(cap.try_acquire().is_none());
        assert_eq!(cap.held(), 1);
        drop(one);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_free_room_takes_effect_at_once() {
        let cap = InFlightCap::new(4);
        cap.resize(1);
        let one = try_acquire(&cap).await;
        assert!(one.is_some());
        assert!(try_acquire(&cap).await.is_none());
    }
}
