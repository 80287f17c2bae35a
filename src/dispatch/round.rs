//! One round of delivery for one notification: try the admitted providers,
//! each at most once, until one takes the message; then decide what comes
//! next.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::breaker::Signal;
use super::pool::ChannelPool;
use crate::domain::{Attempt, AttemptOutcome, Message, UnixMillis};
use crate::provider::Outgoing;
use crate::store::{Claimed, Completion, RoundReport};

/// What decides when a failed round is tried again, and when never.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub max_rounds: u32,
    pub retry_after_max: Duration,
    /// When no provider admits anything and none says when it will.
    pub idle_recheck: Duration,
}

/// Time kept in hand at the end of a lease to write the result back.
const LEASE_MARGIN_MAX: Duration = Duration::from_secs(1);

pub async fn run_round(pool: &ChannelPool, policy: &RetryPolicy, n: &Claimed) -> RoundReport {
    let mut rng = fastrand::Rng::new();
    let lease_left = n.lease_until.since(UnixMillis::now());
    let deadline = Instant::now() + lease_left - (lease_left / 10).min(LEASE_MARGIN_MAX);
    let message = match Message::from_stored(n.channel, &n.payload) {
        Ok(message) => message,
        // Only a bug or a hand-edited row gets here; no provider could send it.
        Err(e) => {
            let error = format!("the stored message cannot be read: {e}");
            return report(n, Vec::new(), Completion::Failed { error });
        }
    };
    let outgoing = Outgoing {
        id: n.id,
        message,
        payload: n.payload.clone(),
    };
    // Providers that cannot carry this message count as tried already.
    let mut tried = pool.unable(&outgoing.message);
    let mut attempts = Vec::new();
    let mut lease_ran_short = false;

    while let Some(admission) = pool.pick(&mut tried, &mut rng) {
        let slot = admission.slot();
        let provider = &slot.provider;
        // Never start a request the lease may not outlast: another claim
        // could then send the same message beside it.
        let Some(room) = deadline.checked_duration_since(Instant::now() + provider.timeout())
        else {
            lease_ran_short = true;
            break;
        };
        // Wait for the rate limit's token no longer than the lease allows;
        // a provider with none free in time is passed over this round.
        let Some(wait) = slot.reserve(room) else {
            continue;
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let room = room.saturating_sub(wait);
        let Ok(Ok(_in_flight)) =
            tokio::time::timeout(room, slot.in_flight.clone().acquire_owned()).await
        else {
            lease_ran_short = true;
            break;
        };
        let started_at = UnixMillis::now();
        let started = Instant::now();
        let verdict = provider.send(&outgoing).await;
        let duration = started.elapsed();
        let signal = match verdict.outcome {
            AttemptOutcome::Delivered => Signal::Success,
            // The provider answered: it is healthy, the message is at fault.
            AttemptOutcome::Rejected => Signal::Success,
            // Alive, but asking to be held off: the pause does that.
            AttemptOutcome::Throttled => Signal::Success,
            AttemptOutcome::Transient => Signal::Failure {
                unreachable: verdict.unreachable,
            },
            // Bad credentials or no credit do not heal by themselves: count
            // them like silence, so a few in a row open the breaker.
            AttemptOutcome::ProviderFault => Signal::Failure { unreachable: true },
        };
        if verdict.outcome == AttemptOutcome::ProviderFault {
            tracing::error!(
                id = %n.id,
                provider = provider.name(),
                status = verdict.http_status,
                error = verdict.error.as_deref().unwrap_or_default(),
                "the provider refused our account (credentials, suspension or credit): an operator must act; failing over"
            );
        }
        admission.record(signal, verdict.pause.map(|p| p.min(policy.retry_after_max)));
        tracing::debug!(
            id = %n.id,
            provider = provider.name(),
            outcome = verdict.outcome.as_str(),
            status = verdict.http_status,
            ms = duration.as_millis() as u64,
            "attempt"
        );
        attempts.push(Attempt {
            provider: provider.name().to_owned(),
            started_at,
            duration_ms: duration.as_millis() as u64,
            outcome: verdict.outcome,
            http_status: verdict.http_status,
            error: verdict.error.clone(),
            provider_message_id: verdict.provider_message_id,
        });
        let completion = match verdict.outcome {
            AttemptOutcome::Delivered => Completion::Delivered {
                provider: provider.name().to_owned(),
            },
            AttemptOutcome::Rejected => Completion::Failed {
                error: verdict.error.unwrap_or_default(),
            },
            AttemptOutcome::Transient
            | AttemptOutcome::Throttled
            | AttemptOutcome::ProviderFault => continue,
        };
        return report(n, attempts, completion);
    }

    let completion = next_round(pool, policy, n, &attempts, lease_ran_short, &mut rng);
    report(n, attempts, completion)
}

fn report(n: &Claimed, attempts: Vec<Attempt>, completion: Completion) -> RoundReport {
    RoundReport {
        id: n.id,
        lease: n.lease,
        attempts,
        completion,
        at: UnixMillis::now(),
    }
}

/// Every admitted provider failed, or none admitted anything.
fn next_round(
    pool: &ChannelPool,
    policy: &RetryPolicy,
    n: &Claimed,
    attempts: &[Attempt],
    lease_ran_short: bool,
    rng: &mut fastrand::Rng,
) -> Completion {
    let now = UnixMillis::now();
    let last_error = attempts.last().and_then(|a| a.error.clone());
    if attempts.is_empty() {
        // Nothing was tried, so no round is used up: come back when a
        // provider will take requests again.
        let wait = if lease_ran_short {
            Duration::ZERO
        } else {
            pool.next_admission()
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(policy.idle_recheck)
        };
        let at = now.plus(wait);
        if at > n.expires_at {
            return Completion::Dead {
                error: "expired: no provider was available before its maximum age".into(),
            };
        }
        return Completion::Retry {
            at,
            counted: false,
            error: None,
        };
    }
    let rounds = n.rounds + 1;
    let last = last_error.unwrap_or_else(|| "every provider failed".into());
    if rounds >= policy.max_rounds {
        return Completion::Dead {
            error: format!("gave up after {rounds} rounds; last error: {last}"),
        };
    }
    let at = now.plus(policy.backoff.delay(rounds, rng));
    if at > n.expires_at {
        return Completion::Dead {
            error: format!("expired after {rounds} rounds; last error: {last}"),
        };
    }
    Completion::Retry {
        at,
        counted: true,
        error: Some(last),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::dispatch::breaker::BreakerConfig;
    use crate::dispatch::pool::ProviderSlot;
    use crate::domain::{Channel, NotificationId};
    use crate::provider::{Provider, Verdict};
    use crate::store::LeaseToken;

    /// Delivers everything, counting the sends.
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Provider for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn channel(&self) -> Channel {
            Channel::Sms
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn send(&self, _: &Outgoing) -> Verdict {
            self.0.fetch_add(1, Ordering::SeqCst);
            Verdict::delivered(Some(200), None)
        }
    }

    fn claimed(lease: Duration) -> Claimed {
        let now = UnixMillis::now();
        Claimed {
            id: NotificationId::new(),
            channel: Channel::Sms,
            payload: Bytes::from_static(br#"{"phone":"01712345678","text":"t"}"#),
            rounds: 0,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(3600)),
            lease: LeaseToken(1),
            lease_until: now.plus(lease),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_is_waited_for_only_as_long_as_the_lease_allows() {
        let provider = Arc::new(Counting(AtomicUsize::new(0)));
        let slot = ProviderSlot::new(provider.clone(), 1, 8, BreakerConfig::default())
            .with_rate_limit(1.0, 1);
        let pool = ChannelPool::new(Channel::Sms, vec![slot]);
        let policy = RetryPolicy {
            backoff: crate::dispatch::backoff::Backoff::try_new(
                Duration::from_millis(100),
                2.0,
                Duration::from_secs(1),
            )
            .unwrap(),
            max_rounds: 10,
            retry_after_max: Duration::from_secs(60),
            idle_recheck: Duration::from_millis(100),
        };
        // A 3 s lease leaves 1.7 s of waiting before a 1 s request (a margin
        // of 0.3 s is kept to write the result): the second round waits 1 s
        // for its token; the third would wait 2 s, so it sends nothing and
        // gives the round back without using it up.
        let lease = Duration::from_secs(3);
        let (a, b, c) = (claimed(lease), claimed(lease), claimed(lease));
        let (a, b, c) = tokio::join!(
            run_round(&pool, &policy, &a),
            run_round(&pool, &policy, &b),
            run_round(&pool, &policy, &c),
        );
        assert_eq!(provider.0.load(Ordering::SeqCst), 2);
        let delivered = [&a, &b, &c]
            .iter()
            .filter(|r| matches!(r.completion, Completion::Delivered { .. }))
            .count();
        assert_eq!(delivered, 2);
        let passed = [a, b, c]
            .into_iter()
            .find(|r| r.attempts.is_empty())
            .expect("one round was passed over");
        assert!(
            matches!(passed.completion, Completion::Retry { counted: false, .. }),
            "{:?}",
            passed.completion
        );
    }
}
