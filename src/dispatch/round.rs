//! One round of delivery for one notification: try the admitted providers,
//! each at most once, until one takes the message; then decide what comes
//! next.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::breaker::Signal;
use super::clock::Clock;
use super::pool::{ChannelPool, NextAdmission, Tried};
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
    /// When every provider that could carry it is disabled: how often an
    /// instance learns of an `enable`.
    pub out_of_rotation_recheck: Duration,
}

/// Time kept in hand at the end of a lease to write the result back.
const LEASE_MARGIN_MAX: Duration = Duration::from_secs(1);

pub async fn run_round(
    pool: &ChannelPool,
    policy: &RetryPolicy,
    clock: &dyn Clock,
    n: &Claimed,
) -> RoundReport {
    let mut rng = fastrand::Rng::new();
    let lease_left = n.lease_until.since(clock.now());
    let deadline = Instant::now() + lease_left - (lease_left / 10).min(LEASE_MARGIN_MAX);
    if past_deadline(n, clock.now()) {
        return report(n, clock, Vec::new(), expired());
    }
    let message = match Message::from_stored(n.channel, &n.payload) {
        Ok(message) => message,
        // Only a bug or a hand-edited row gets here; no provider could send it.
        Err(e) => {
            let error = format!("the stored message cannot be read: {e}");
            return report(n, clock, Vec::new(), Completion::Failed { error });
        }
    };
    let outgoing = Outgoing {
        id: n.id,
        message,
        payload: n.payload.clone(),
    };
    // Providers that cannot carry this message count as tried already.
    let unable = pool.unable(&outgoing.message);
    let mut tried = unable;
    let mut attempts = Vec::new();
    let mut lease_ran_short = false;

    while let Some(admission) = pool.pick(&mut tried, &mut rng) {
        // Never late: once the client's deadline passed, no attempt starts.
        if past_deadline(n, clock.now()) {
            return report(n, clock, attempts, expired());
        }
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
        let Ok(_in_flight) = tokio::time::timeout(room, slot.acquire_in_flight()).await else {
            lease_ran_short = true;
            break;
        };
        let started_at = clock.now();
        let started = Instant::now();
        let verdict = provider.send(&outgoing).await;
        let duration = started.elapsed();
        crate::metrics::metrics().attempt(provider.name(), verdict.outcome.as_str(), duration);
        slot.record_latency(duration);
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
        tracing::info!(
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
        return report(n, clock, attempts, completion);
    }

    let idle = if attempts.is_empty() {
        wait_for_a_provider(pool, policy, unable, lease_ran_short)
    } else {
        Duration::ZERO
    };
    let completion = next_round(policy, clock.now(), n, &attempts, idle, &mut rng);
    report(n, clock, attempts, completion)
}

fn past_deadline(n: &Claimed, now: UnixMillis) -> bool {
    n.deliver_by.is_some_and(|by| now >= by)
}

fn expired() -> Completion {
    Completion::Expired {
        error: "not delivered before its expires_at".into(),
    }
}

fn report(
    n: &Claimed,
    clock: &dyn Clock,
    attempts: Vec<Attempt>,
    completion: Completion,
) -> RoundReport {
    RoundReport {
        id: n.id,
        lease: n.lease,
        attempts,
        completion,
        at: clock.now(),
    }
}

/// A round that tried nothing: how long until a provider able to carry the
/// message will take it.
fn wait_for_a_provider(
    pool: &ChannelPool,
    policy: &RetryPolicy,
    unable: Tried,
    lease_ran_short: bool,
) -> Duration {
    if lease_ran_short {
        return Duration::ZERO;
    }
    match pool.next_admission(unable) {
        NextAdmission::Now => policy.idle_recheck,
        NextAdmission::At(at) => at.saturating_duration_since(Instant::now()),
        NextAdmission::OutOfRotation => policy.out_of_rotation_recheck,
    }
}

/// Every admitted provider failed, or none admitted anything (then `idle`
/// is how long until one will).
fn next_round(
    policy: &RetryPolicy,
    now: UnixMillis,
    n: &Claimed,
    attempts: &[Attempt],
    idle: Duration,
    rng: &mut fastrand::Rng,
) -> Completion {
    let last_error = attempts.last().and_then(|a| a.error.clone());
    if attempts.is_empty() {
        // Nothing was tried, so no round is used up: come back when a
        // provider will take requests again.
        let at = now.plus(idle);
        if n.deliver_by.is_some_and(|by| at >= by) {
            return expired();
        }
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
    if n.deliver_by.is_some_and(|by| at >= by) {
        return expired();
    }
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

    use bytes::Bytes;

    use super::*;
    use crate::dispatch::breaker::BreakerState;
    use crate::dispatch::clock::TokioClock;
    use crate::dispatch::pool::ProviderSlot;
    use crate::dispatch::scripted::{Scripted, delivered, failing, lenient_breaker, pool};
    use crate::domain::{Channel, NotificationId, Sms};
    use crate::provider::Verdict;
    use crate::store::LeaseToken;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::try_new(Duration::from_secs(1), 2.0, Duration::from_secs(8)).unwrap(),
            max_rounds: 3,
            retry_after_max: Duration::from_secs(60),
            idle_recheck: Duration::from_millis(500),
            out_of_rotation_recheck: Duration::from_secs(2),
        }
    }

    fn claimed(clock: &TokioClock, phone: &str) -> Claimed {
        let now = clock.now();
        let message = Message::Sms(Sms {
            phone: phone.into(),
            text: "code 1234".into(),
        });
        Claimed {
            id: NotificationId::new_at(now),
            channel: Channel::Sms,
            payload: Bytes::from(message.to_provider_json()),
            rounds: 0,
            created_at: now,
            expires_at: now.plus(Duration::from_secs(3600)),
            lease: LeaseToken(7),
            lease_until: now.plus(Duration::from_secs(30)),
            deliver_by: None,
        }
    }

    fn outcomes(r: &RoundReport) -> Vec<(&str, AttemptOutcome)> {
        r.attempts
            .iter()
            .map(|a| (a.provider.as_str(), a.outcome))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_moves_the_message_to_the_next_provider_at_once() {
        let clock = TokioClock::starting_at(T0);
        let sick = Arc::new(Scripted::new(
            "sick",
            [failing(AttemptOutcome::Transient, 500)],
        ));
        let well = Arc::new(Scripted::new("well", [delivered("SM1")]));
        let pool = pool(&[Arc::clone(&sick), Arc::clone(&well)], lenient_breaker());
        let mut failed_over = 0;
        for _ in 0..40 {
            let n = claimed(&clock, "01712345678");
            let r = run_round(&pool, &policy(), &clock, &n).await;
            assert_eq!(
                r.completion,
                Completion::Delivered {
                    provider: "well".into()
                }
            );
            let last = r.attempts.last().unwrap();
            assert_eq!(last.provider_message_id.as_deref(), Some("SM1"));
            match outcomes(&r).as_slice() {
                [("well", AttemptOutcome::Delivered)] => {}
                [
                    ("sick", AttemptOutcome::Transient),
                    ("well", AttemptOutcome::Delivered),
                ] => failed_over += 1,
                other => panic!("unexpected attempts {other:?}"),
            }
            // Each attempt is timed by the provider's (virtual) latency.
            assert!(r.attempts.iter().all(|a| a.duration_ms == 10));
        }
        // Weighted random choice: the sick provider came first about half
        // the time (never in 40 rounds: one chance in 2^40).
        assert!(failed_over > 0);
        assert_eq!(sick.sent().len(), failed_over);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_ends_the_round_without_trying_others() {
        let clock = TokioClock::starting_at(T0);
        let a = Arc::new(Scripted::new("a", [failing(AttemptOutcome::Rejected, 400)]));
        let b = Arc::new(Scripted::new("b", [failing(AttemptOutcome::Rejected, 400)]));
        let pool = pool(&[a, b], lenient_breaker());
        let r = run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
        assert_eq!(r.attempts.len(), 1);
        assert!(matches!(r.completion, Completion::Failed { ref error } if error == "HTTP 400"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_fault_fails_over_and_soon_opens_its_breaker() {
        let clock = TokioClock::starting_at(T0);
        let broke = Arc::new(Scripted::new(
            "broke",
            [failing(AttemptOutcome::ProviderFault, 401)],
        ));
        let well = Arc::new(Scripted::new("well", [delivered("x")]));
        let pool = pool(&[Arc::clone(&broke), well], lenient_breaker());
        for _ in 0..40 {
            let r = run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
            assert!(matches!(r.completion, Completion::Delivered { .. }));
        }
        // Three faults in a row (lenient_breaker) open it: credentials do
        // not heal by themselves, unlike a coin-flip 500.
        assert_eq!(broke.sent().len(), 3);
        assert_eq!(pool.slots()[0].health().0, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_pauses_the_provider_until_it_said() {
        let clock = TokioClock::starting_at(T0);
        let throttled = Verdict::throttled(Some(429), Some(Duration::from_secs(5)), "429".into());
        let only = Arc::new(Scripted::new("only", [throttled, delivered("ok")]));
        let pool = pool(&[Arc::clone(&only)], lenient_breaker());
        let n = claimed(&clock, "01712345678");

        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert_eq!(outcomes(&r), [("only", AttemptOutcome::Throttled)]);
        assert!(matches!(
            r.completion,
            Completion::Retry { counted: true, .. }
        ));

        // Paused: nothing is sent, no round is used, and the retry comes
        // when the pause ends.
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(r.attempts.is_empty());
        let Completion::Retry { at, counted, .. } = r.completion else {
            panic!("{:?}", r.completion)
        };
        assert!(!counted);
        assert_eq!(at.since(clock.now()), Duration::from_secs(5));

        tokio::time::advance(Duration::from_secs(5)).await;
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(matches!(r.completion, Completion::Delivered { .. }));
        assert_eq!(only.sent().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_is_never_offered_a_message_it_cannot_carry() {
        let clock = TokioClock::starting_at(T0);
        let local = Arc::new(Scripted::new("local", [delivered("l")]).takes(|m| match m {
            Message::Sms(s) => s.phone.starts_with("01"),
            Message::Email(_) => true,
        }));
        let global = Arc::new(Scripted::new("global", [delivered("g")]));
        let pool = pool(
            &[Arc::clone(&local), Arc::clone(&global)],
            lenient_breaker(),
        );
        for _ in 0..20 {
            let n = claimed(&clock, "+14155550100");
            let r = run_round(&pool, &policy(), &clock, &n).await;
            assert_eq!(outcomes(&r), [("global", AttemptOutcome::Delivered)]);
        }
        assert!(local.sent().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_rounds_back_off_then_die() {
        let clock = TokioClock::starting_at(T0);
        let down = Arc::new(Scripted::new(
            "down",
            [failing(AttemptOutcome::Transient, 503)],
        ));
        let pool = pool(&[down], lenient_breaker());
        let mut n = claimed(&clock, "01712345678");

        let r = run_round(&pool, &policy(), &clock, &n).await;
        let Completion::Retry { at, counted, error } = r.completion else {
            panic!("{:?}", r.completion)
        };
        assert!(counted);
        assert_eq!(error.as_deref(), Some("HTTP 503"));
        // Full jitter below the first ceiling (1 s).
        assert!(at >= clock.now() && at <= clock.now().plus(Duration::from_secs(1)));

        n.rounds = policy().max_rounds - 1;
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(
            matches!(r.completion, Completion::Dead { ref error } if error.starts_with("gave up after 3 rounds")),
            "{:?}",
            r.completion
        );

        // A notification about to pass its maximum age dies rather than
        // being scheduled past it.
        let mut n = claimed(&clock, "01712345678");
        n.expires_at = clock.now().plus(Duration::from_millis(11));
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(
            matches!(r.completion, Completion::Dead { ref error } if error.starts_with("expired")),
            "{:?}",
            r.completion
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_starts_that_the_lease_could_not_outlast() {
        let clock = TokioClock::starting_at(T0);
        let slow =
            Arc::new(Scripted::new("slow", [delivered("x")]).timeout(Duration::from_secs(5)));
        let pool = pool(&[Arc::clone(&slow)], lenient_breaker());
        let mut n = claimed(&clock, "01712345678");
        n.lease_until = clock.now().plus(Duration::from_secs(4));
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(slow.sent().is_empty());
        assert!(r.attempts.is_empty());
        // Given back due at once, without using a round.
        assert_eq!(
            r.completion,
            Completion::Retry {
                at: clock.now(),
                counted: false,
                error: None
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_stored_message_fails_without_a_send() {
        let clock = TokioClock::starting_at(T0);
        let p = Arc::new(Scripted::new("p", [delivered("x")]));
        let pool = pool(&[Arc::clone(&p)], lenient_breaker());
        let mut n = claimed(&clock, "01712345678");
        n.payload = Bytes::from_static(b"{\"phone\": 5}");
        let r = run_round(&pool, &policy(), &clock, &n).await;
        assert!(matches!(r.completion, Completion::Failed { .. }));
        assert!(p.sent().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_is_waited_for_only_as_long_as_the_lease_allows() {
        let clock = TokioClock::starting_at(T0);
        let limited = Arc::new(Scripted::new("limited", [delivered("x")]));
        let slot = ProviderSlot::new(
            Arc::clone(&limited) as Arc<dyn crate::provider::Provider>,
            1,
            8,
            lenient_breaker(),
        )
        .with_rate_limit(1.0, 1);
        let pool = ChannelPool::new(Channel::Sms, vec![slot]);
        // A 3 s lease leaves 1.7 s of waiting before a 1 s request (a margin
        // of 0.3 s is kept to write the result): the second round waits 1 s
        // for its token; the third would wait 2 s, so it sends nothing and
        // gives the round back without using it up.
        let with_lease = || {
            let mut n = claimed(&clock, "01712345678");
            n.lease_until = clock.now().plus(Duration::from_secs(3));
            n
        };
        let (a, b, c) = (with_lease(), with_lease(), with_lease());
        let policy = policy();
        let (a, b, c) = tokio::join!(
            run_round(&pool, &policy, &clock, &a),
            run_round(&pool, &policy, &clock, &b),
            run_round(&pool, &policy, &clock, &c),
        );
        assert_eq!(limited.sent().len(), 2);
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

    #[tokio::test(start_paused = true)]
    async fn a_disabled_provider_gets_nothing_and_with_none_left_the_message_waits() {
        let clock = TokioClock::starting_at(T0);
        let off = Arc::new(Scripted::new("off", [delivered("o")]));
        let on = Arc::new(Scripted::new("on", [delivered("x")]));
        let pool = pool(&[Arc::clone(&off), Arc::clone(&on)], lenient_breaker());
        pool.slots()[0].set_enabled(false);
        for _ in 0..20 {
            let r = run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
            assert_eq!(outcomes(&r), [("on", AttemptOutcome::Delivered)]);
        }
        assert!(off.sent().is_empty());

        // None in rotation: no round used, back when an instance would
        // have learnt of an enable; never failed for it.
        pool.slots()[1].set_enabled(false);
        let r = run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
        assert_eq!(
            r.completion,
            Completion::Retry {
                at: clock.now().plus(policy().out_of_rotation_recheck),
                counted: false,
                error: None
            }
        );
        assert_eq!(on.sent().len(), 20);
    }
}
