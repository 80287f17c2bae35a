//! The in-memory hand-off of fresh notifications from the API to this
//! process's dispatcher.
//!
//! When the dispatcher has room, the API stores a new notification already
//! leased to it and, once the insert has committed, passes it over in
//! memory: no claim has to find it, and its first round starts at once. The
//! store stays the source of truth. A notification whose hand-off never
//! arrives (the process died, or it was shutting down) is a lease that
//! lapses, and the next claim picks it up like any other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::domain::UnixMillis;
use crate::store::{Claimed, Lease, LeaseToken, NewNotification};

/// A notification handed over, with the dispatcher capacity it holds.
pub(super) struct Fresh {
    pub claimed: Claimed,
    pub permit: OwnedSemaphorePermit,
}

/// The API's end of the hand-off.
pub struct Handoff {
    capacity: Arc<Semaphore>,
    /// Fresh work is handed over only while more than this much capacity is
    /// free, so that under overload new notifications queue in the store
    /// behind the retries that came due before them instead of starving them.
    keep_for_claims: usize,
    lease: Duration,
    fresh: mpsc::UnboundedSender<Fresh>,
}

/// Room in the dispatcher, held from before the insert until the hand-over.
pub struct Reservation<'a> {
    handoff: &'a Handoff,
    permit: OwnedSemaphorePermit,
    lease: Lease,
}

impl Handoff {
    pub(super) fn new(
        capacity: Arc<Semaphore>,
        keep_for_claims: usize,
        lease: Duration,
        fresh: mpsc::UnboundedSender<Fresh>,
    ) -> Self {
        Self {
            capacity,
            keep_for_claims,
            lease,
            fresh,
        }
    }

    /// Room for one notification created at `now`, if the dispatcher has
    /// enough to spare; `None` means: store it queued.
    pub fn reserve(&self, now: UnixMillis) -> Option<Reservation<'_>> {
        if self.capacity.available_permits() <= self.keep_for_claims {
            return None;
        }
        let permit = Arc::clone(&self.capacity).try_acquire_owned().ok()?;
        Some(Reservation {
            handoff: self,
            permit,
            lease: Lease {
                token: LeaseToken::random(),
                until: now.plus(self.lease),
            },
        })
    }
}

impl<'a> Reservation<'a> {
    /// The lease to insert the notification under.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// Readies `n`, to be inserted under [`Reservation::lease`], for the
    /// dispatcher; made before the insert takes `n`.
    pub fn prepare(self, n: &NewNotification) -> Handover<'a> {
        Handover {
            handoff: self.handoff,
            fresh: Fresh {
                claimed: Claimed {
                    id: n.id,
                    channel: n.channel,
                    payload: Bytes::from(n.payload.clone()),
                    rounds: 0,
                    created_at: n.created_at,
                    expires_at: n.expires_at,
                    deliver_by: n.deliver_by,
                    hedge: n.hedge,
                    lease: self.lease.token,
                    lease_until: self.lease.until,
                },
                permit: self.permit,
            },
        }
    }
}

/// A notification ready to be handed over once its insert has committed.
pub struct Handover<'a> {
    handoff: &'a Handoff,
    fresh: Fresh,
}

impl Handover<'_> {
    /// Call only once the insert has committed.
    pub fn send(self) {
        if let Err(unsent) = self.handoff.fresh.send(self.fresh) {
            // The dispatcher has stopped: the lease will lapse and the
            // notification be claimed after a restart or by another instance.
            tracing::debug!(id = %unsent.0.claimed.id, "dispatcher stopped; left to its lease");
        }
    }
}
