//! One round of delivery for one notification: try the admitted providers,
//! each at most once, until one takes the message; then decide what comes
//! next. A hedged notification's request that has been alone in flight for
//! the hedge delay gets the next admitted provider beside it (at most two
//! requests at once): the first to deliver wins, and the round still waits
//! for the other, so that its outcome reaches its breaker and the history.

use crate::resilience::clock;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::pool::{Admission, ChannelPool, NextAdmission, Tried};
use crate::domain::{Attempt, AttemptOutcome, Message, UnixMillis};
use crate::provider::{Outgoing, Verdict};
use crate::resilience::backoff::Backoff;
use crate::resilience::breaker::Signal;
use crate::resilience::clock::Clock;
use crate::resilience::hedge::Hedging;
use crate::store::{Claimed, Completion, RoundReport};

/// How rounds run and end: hedging, when a failed round is tried again,
/// and when never.
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
    pub hedging: Hedging,
}

/// Time kept in hand at the end of a lease to write the result back.
const LEASE_MARGIN_MAX: Duration = Duration::from_secs(1);

pub async fn run_round(
    pool: &ChannelPool,
    policy: &RetryPolicy,
    clock: &dyn Clock,
    n: &Claimed,
) -> RoundReport {
    let lease_left = n.lease_until.since(clock.now());
    let deadline = clock::instant() + lease_left - (lease_left / 10).min(LEASE_MARGIN_MAX);
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
    let hedge = policy.hedging.channel(pool.channel());
    // Providers that cannot carry this message count as tried already.
    let unable = pool.unable(&outgoing.message);
    let mut round = Round {
        pool,
        policy,
        clock,
        n,
        outgoing: &outgoing,
        deadline,
        unable,
        tried: unable,
        rng: fastrand::Rng::new(),
        attempts: Vec::new(),
        lease_ran_short: false,
    };
    let mut hedging = hedge.applies(n.hedge);
    let mut flights: Vec<Flight<'_>> = Vec::with_capacity(2);
    // The provider that delivered first, and whether it was a hedge.
    let mut delivered: Option<(String, bool)> = None;
    let mut rejected: Option<String> = None;
    let mut hedges_sent = 0u32;

    let completion = loop {
        if flights.is_empty() {
            if let Some((provider, _)) = &delivered {
                break Completion::Sent {
                    provider: provider.clone(),
                };
            }
            if let Some(error) = rejected.take() {
                break Completion::Failed { error };
            }
            match round.start(false).await {
                Start::Flight(flight) => flights.push(flight),
                // Never late: once the client's deadline passed, no attempt starts.
                Start::Expired => break expired(),
                Start::Nothing => break round.next_round(),
            }
        }
        let hedge_at = match flights.as_slice() {
            [alone] if hedging && delivered.is_none() && rejected.is_none() => alone
                .admission
                .slot()
                .hedge_delay(hedge)
                .map(|delay| alone.started + delay),
            _ => None,
        };
        let event = tokio::select! {
            (i, verdict) = first_answer(&mut flights) => Event::Answered(i, verdict),
            () = sleep_until(hedge_at), if hedge_at.is_some() => Event::HedgeDue,
        };
        match event {
            Event::Answered(i, verdict) => {
                let flight = flights.swap_remove(i);
                let was_hedge = flight.hedge;
                match round.land(flight, verdict) {
                    (AttemptOutcome::Delivered, provider, _) => {
                        delivered.get_or_insert((provider, was_hedge));
                    }
                    (AttemptOutcome::Rejected, _, error) => {
                        rejected.get_or_insert(error.unwrap_or_default());
                    }
                    _ => {}
                }
            }
            Event::HedgeDue => match round.start(true).await {
                Start::Flight(flight) => {
                    tracing::info!(
                        id = %n.id,
                        provider = flight.admission.slot().provider.name(),
                        beside = flights[0].admission.slot().provider.name(),
                        "hedge"
                    );
                    hedges_sent += 1;
                    flights.push(flight);
                }
                // No other provider can take it now: the request in flight
                // goes on alone.
                Start::Expired | Start::Nothing => hedging = false,
            },
        }
    };
    if hedges_sent > 0 {
        crate::metrics::metrics().hedge(match delivered {
            Some((_, true)) => "won_by_hedge",
            Some((_, false)) => "won_by_first",
            None => "both_failed",
        });
    }
    report(n, clock, round.attempts, completion)
}

enum Event {
    Answered(usize, Verdict),
    HedgeDue,
}

/// A request under way.
struct Flight<'a> {
    admission: Admission<'a>,
    /// Held until the answer: caps the provider's requests in flight.
    _permit: OwnedSemaphorePermit,
    started_at: UnixMillis,
    started: Instant,
    /// Sent beside another request of the round, not after it.
    hedge: bool,
    answer: Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>,
}

enum Start<'a> {
    Flight(Flight<'a>),
    /// The client's deadline passed.
    Expired,
    /// No provider could take a request now.
    Nothing,
}

/// The first answer among the requests in flight, and whose it is.
fn first_answer<'f>(flights: &'f mut [Flight<'_>]) -> impl Future<Output = (usize, Verdict)> + 'f {
    std::future::poll_fn(move |cx| {
        for (i, flight) in flights.iter_mut().enumerate() {
            if let Poll::Ready(verdict) = flight.answer.as_mut().poll(cx) {
                return Poll::Ready((i, verdict));
            }
        }
        Poll::Pending
    })
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// What a round keeps while its requests go out.
struct Round<'a> {
    pool: &'a ChannelPool,
    policy: &'a RetryPolicy,
    clock: &'a dyn Clock,
    n: &'a Claimed,
    outgoing: &'a Outgoing,
    /// No request may still run after this (the lease, less a margin).
    deadline: Instant,
    /// The providers that cannot carry the message.
    unable: Tried,
    tried: Tried,
    rng: fastrand::Rng,
    attempts: Vec<Attempt>,
    lease_ran_short: bool,
}

impl<'a> Round<'a> {
    /// Sends to the next admitted provider. A hedge waits for nothing: a
    /// provider without a rate-limit token or a free connection now is
    /// passed over.
    async fn start(&mut self, hedge: bool) -> Start<'a> {
        while let Some(admission) = self.pool.pick(&mut self.tried, &mut self.rng) {
            if past_deadline(self.n, self.clock.now()) {
                return Start::Expired;
            }
            let slot = admission.slot();
            let provider = &slot.provider;
            // Never start a request the lease may not outlast: another claim
            // could then send the same message beside it.
            let Some(room) = self
                .deadline
                .checked_duration_since(clock::instant() + provider.timeout())
            else {
                self.lease_ran_short = true;
                return Start::Nothing;
            };
            let permit = if hedge {
                // Room first: a provider passed over keeps its rate token.
                let Some(permit) = slot.try_acquire_in_flight() else {
                    continue;
                };
                if slot.reserve(Duration::ZERO).is_none() {
                    continue;
                }
                permit
            } else {
                // Wait for the rate limit's token no longer than the lease
                // allows; a provider with none free in time is passed over.
                let Some(wait) = slot.reserve(room) else {
                    continue;
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let room = room.saturating_sub(wait);
                let Ok(permit) = tokio::time::timeout(room, slot.acquire_in_flight()).await else {
                    self.lease_ran_short = true;
                    return Start::Nothing;
                };
                permit
            };
            return Start::Flight(Flight {
                answer: provider.send(self.outgoing),
                admission,
                _permit: permit,
                started_at: self.clock.now(),
                started: clock::instant(),
                hedge,
            });
        }
        Start::Nothing
    }

    /// Books an answer: the breaker, the metrics, the log, the history.
    /// Answers its outcome, provider and error.
    fn land(
        &mut self,
        flight: Flight<'a>,
        verdict: Verdict,
    ) -> (AttemptOutcome, String, Option<String>) {
        let duration = flight.started.elapsed();
        let slot = flight.admission.slot();
        let provider = &slot.provider;
        crate::metrics::metrics().attempt(provider.name(), verdict.outcome.as_str(), duration);
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
                id = %self.n.id,
                provider = provider.name(),
                status = verdict.http_status,
                error = verdict.error.as_deref().unwrap_or_default(),
                "the provider refused our account (credentials, suspension or credit): an operator must act; failing over"
            );
        }
        // The one place a request's latency is noted, for the health view
        // and the hedge's p90 alike. A refused connection or a timeout says
        // nothing of how fast the provider answers (it would pull the p90
        // towards zero or up to the timeout); its breaker hears of it.
        if !verdict.unreachable {
            slot.record_latency(duration);
        }
        tracing::info!(
            id = %self.n.id,
            provider = provider.name(),
            outcome = verdict.outcome.as_str(),
            status = verdict.http_status,
            ms = duration.as_millis() as u64,
            hedge = flight.hedge,
            "attempt"
        );
        let name = provider.name().to_owned();
        self.attempts.push(Attempt {
            provider: name.clone(),
            started_at: flight.started_at,
            duration_ms: duration.as_millis() as u64,
            outcome: verdict.outcome,
            http_status: verdict.http_status,
            error: verdict.error.clone(),
            provider_message_id: verdict.provider_message_id,
        });
        flight.admission.record(
            signal,
            verdict.pause.map(|p| p.min(self.policy.retry_after_max)),
        );
        (verdict.outcome, name, verdict.error)
    }

    /// Every admitted provider failed, or none admitted anything.
    fn next_round(&mut self) -> Completion {
        let idle = if self.attempts.is_empty() {
            wait_for_a_provider(self.pool, self.policy, self.unable, self.lease_ran_short)
        } else {
            Duration::ZERO
        };
        next_round(
            self.policy,
            self.clock.now(),
            self.n,
            &self.attempts,
            idle,
            &mut self.rng,
        )
    }
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
        NextAdmission::At(at) => at.saturating_duration_since(clock::instant()),
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
    use crate::dispatch::pool::ProviderSlot;
    use crate::dispatch::scripted::{Scripted, delivered, failing, lenient_breaker, pool};
    use crate::domain::{Channel, NotificationId, Sms};
    use crate::provider::Verdict;
    use crate::resilience::breaker::BreakerState;
    use crate::resilience::clock::TokioClock;
    use crate::resilience::hedge::{ChannelHedge, HedgeAfter, HedgeWhen};
    use crate::store::LeaseToken;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::try_new(Duration::from_secs(1), 2.0, Duration::from_secs(8)).unwrap(),
            max_rounds: 3,
            retry_after_max: Duration::from_secs(60),
            idle_recheck: Duration::from_millis(500),
            out_of_rotation_recheck: Duration::from_secs(2),
            hedging: Hedging::default(),
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
            hedge: false,
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
                Completion::Sent {
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
            assert!(matches!(r.completion, Completion::Sent { .. }));
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
        assert!(matches!(r.completion, Completion::Sent { .. }));
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
            .filter(|r| matches!(r.completion, Completion::Sent { .. }))
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

    fn hedging(when: HedgeWhen, after: HedgeAfter) -> RetryPolicy {
        RetryPolicy {
            hedging: Hedging {
                sms: ChannelHedge { when, after },
                ..Hedging::default()
            },
            ..policy()
        }
    }

    fn asked(clock: &TokioClock) -> Claimed {
        Claimed {
            hedge: true,
            ..claimed(clock, "01712345678")
        }
    }

    const HEDGE_AFTER: Duration = Duration::from_millis(100);
    const SLOW: Duration = Duration::from_secs(2);

    /// A provider answering `answer` after 2 s, with room for it in its timeout.
    fn slow(answer: Verdict) -> Arc<Scripted> {
        Arc::new(
            Scripted::new("slow", [answer])
                .latency(SLOW)
                .timeout(Duration::from_secs(5)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_is_hedged_after_the_delay_and_the_first_2xx_wins() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let fast = Arc::new(Scripted::new("fast", [delivered("f")]));
        let pool = pool(&[Arc::clone(&slow), Arc::clone(&fast)], lenient_breaker());
        let policy = hedging(HedgeWhen::Asked, HedgeAfter::Millis(100));
        let (mut hedged, mut alone) = (0, 0);
        for _ in 0..30 {
            let start = clock.now();
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            assert_eq!(
                r.completion,
                Completion::Sent {
                    provider: "fast".into()
                }
            );
            match outcomes(&r).as_slice() {
                // The fast one first: answered within the delay, no hedge.
                [("fast", AttemptOutcome::Delivered)] => {
                    assert_eq!(r.attempts[0].started_at, start);
                    alone += 1;
                }
                // The slow one first: the hedge went out after the delay and
                // won; the round still waited for the slow one, whose
                // delivery (a duplicate) is in the history.
                [
                    ("fast", AttemptOutcome::Delivered),
                    ("slow", AttemptOutcome::Delivered),
                ] => {
                    assert_eq!(r.attempts[0].started_at, start.plus(HEDGE_AFTER));
                    assert_eq!(r.attempts[1].started_at, start);
                    assert_eq!(r.attempts[1].duration_ms, 2_000);
                    assert_eq!(r.at, start.plus(SLOW));
                    hedged += 1;
                }
                other => panic!("unexpected attempts {other:?}"),
            }
        }
        // Which goes first is a fair coin: both cases came up (each misses
        // in 30 rounds one time in 2^30).
        assert!(hedged > 0 && alone > 0, "{hedged} hedged, {alone} alone");
        assert_eq!(slow.sent().len(), hedged);
        assert_eq!(fast.sent().len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_losers_failure_is_recorded_and_fed_to_its_breaker() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(failing(AttemptOutcome::Transient, 503));
        let fast = Arc::new(Scripted::new("fast", [delivered("f")]));
        let pool = pool(&[Arc::clone(&slow), fast], lenient_breaker());
        let policy = hedging(HedgeWhen::Asked, HedgeAfter::Millis(100));
        for _ in 0..30 {
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            // A hedge's loser never makes the round a failure.
            assert!(matches!(r.completion, Completion::Sent { .. }));
            if let [_, loser] = r.attempts.as_slice() {
                assert_eq!(loser.provider, "slow");
                assert_eq!(loser.outcome, AttemptOutcome::Transient);
                assert_eq!(loser.error.as_deref(), Some("HTTP 503"));
            }
        }
        let failures = pool.slots()[0].health().2;
        assert!(failures > 0);
        assert_eq!(failures, slow.sent().len());
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_when_the_first_answers_within_the_delay() {
        let clock = TokioClock::starting_at(T0);
        let quick =
            Arc::new(Scripted::new("quick", [delivered("q")]).latency(Duration::from_millis(90)));
        let other = Arc::new(Scripted::new("other", [delivered("o")]));
        let pool = pool(&[quick, Arc::clone(&other)], lenient_breaker());
        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        for _ in 0..20 {
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            assert_eq!(r.attempts.len(), 1, "{:?}", outcomes(&r));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_unless_the_notification_or_its_channel_asks() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let fast = Arc::new(Scripted::new("fast", [delivered("f")]));
        let pool = pool(&[Arc::clone(&slow), fast], lenient_breaker());
        for (policy, ask) in [
            // Not asked, on a channel that hedges what is asked.
            (hedging(HedgeWhen::Asked, HedgeAfter::Millis(100)), false),
            // Asked, on a channel that never hedges.
            (hedging(HedgeWhen::Never, HedgeAfter::Millis(100)), true),
        ] {
            for _ in 0..20 {
                let n = Claimed {
                    hedge: ask,
                    ..claimed(&clock, "01712345678")
                };
                let r = run_round(&pool, &policy, &clock, &n).await;
                assert_eq!(r.attempts.len(), 1, "{:?}", outcomes(&r));
            }
        }
        // Not asked, on a channel that hedges everything.
        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        let before = slow.sent().len();
        let mut hedged = 0;
        for _ in 0..20 {
            let plain = claimed(&clock, "01712345678");
            let r = run_round(&pool, &policy, &clock, &plain).await;
            hedged += usize::from(r.attempts.len() == 2);
        }
        assert_eq!(hedged, slow.sent().len() - before);
        assert!(hedged > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_needs_a_second_admitted_provider() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let pool = pool(&[Arc::clone(&slow)], lenient_breaker());
        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        let start = clock.now();
        let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
        assert_eq!(outcomes(&r), [("slow", AttemptOutcome::Delivered)]);
        assert_eq!(r.at, start.plus(SLOW));
        assert_eq!(slow.sent().len(), 1);
    }

    /// Takes `slot` out of rotation now; the future puts it back after
    /// `delay` (joined with a round, which then starts elsewhere).
    fn out_of_rotation_for(slot: &ProviderSlot, delay: Duration) -> impl Future<Output = ()> + '_ {
        slot.set_enabled(false);
        async move {
            tokio::time::sleep(delay).await;
            slot.set_enabled(true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_passing_over_a_full_provider_leaves_it_its_rate_token() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let full = Arc::new(Scripted::new("full", [delivered("f")]));
        let slots = vec![
            ProviderSlot::new(
                Arc::clone(&slow) as Arc<dyn crate::provider::Provider>,
                1,
                8,
                lenient_breaker(),
            ),
            // One token per 1,000 s: taken now, it would not be back by the end.
            ProviderSlot::new(
                Arc::clone(&full) as Arc<dyn crate::provider::Provider>,
                1,
                1,
                lenient_breaker(),
            )
            .with_rate_limit(0.001, 1),
        ];
        let pool = ChannelPool::new(Channel::Sms, slots);
        let s_full = &pool.slots()[1];
        let held = s_full.try_acquire_in_flight().unwrap();
        // The round starts at `slow` (`full` out of rotation then); by the
        // hedge, 100 ms later, `full` is back but has no connection free.
        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        let back = out_of_rotation_for(s_full, Duration::from_millis(50));
        let n = asked(&clock);
        let (r, ()) = tokio::join!(run_round(&pool, &policy, &clock, &n), back);
        assert_eq!(outcomes(&r), [("slow", AttemptOutcome::Delivered)]);
        assert!(full.sent().is_empty());
        drop(held);
        assert_eq!(s_full.reserve(Duration::ZERO), Some(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_whose_requests_all_fail_is_one_failed_round() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(failing(AttemptOutcome::Transient, 500));
        let fast = Arc::new(Scripted::new(
            "fast",
            [failing(AttemptOutcome::Transient, 502)],
        ));
        let pool = pool(&[slow, fast], lenient_breaker());
        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        for _ in 0..10 {
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            // Each provider once, hedged or one after the other.
            assert_eq!(r.attempts.len(), 2, "{:?}", outcomes(&r));
            assert!(matches!(
                r.completion,
                Completion::Retry { counted: true, .. }
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn p90_waits_for_the_providers_own_recent_latency() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let fast = Arc::new(Scripted::new("fast", [delivered("f")]));
        let pool = pool(&[Arc::clone(&slow), fast], lenient_breaker());
        let policy = hedging(HedgeWhen::All, HedgeAfter::P90);
        // No latencies known yet: nothing is hedged.
        for _ in 0..5 {
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            assert_eq!(r.attempts.len(), 1, "{:?}", outcomes(&r));
        }
        // The slow provider's recent answers took 150 ms (a few of 2 s
        // from the rounds above cannot move the p90 of 100 and more).
        for _ in 0..100 {
            pool.slots()[0].record_latency(Duration::from_millis(150));
        }
        // Each round starts at the slow provider (the fast one is out of
        // rotation until 50 ms in); its own p90, not the fast one's, sets the
        // hedge. Three rounds add three answers of 2 s: still under a tenth.
        let fast = &pool.slots()[1];
        for _ in 0..3 {
            let start = clock.now();
            let back = out_of_rotation_for(fast, Duration::from_millis(50));
            let n = asked(&clock);
            let (r, ()) = tokio::join!(run_round(&pool, &policy, &clock, &n), back);
            let [first, hedge] = r.attempts.as_slice() else {
                panic!("not hedged: {:?}", outcomes(&r));
            };
            let (first, hedge) = if first.provider == "slow" {
                (first, hedge)
            } else {
                (hedge, first)
            };
            assert_eq!((first.provider.as_str(), first.started_at), ("slow", start));
            assert_eq!(hedge.provider, "fast");
            assert_eq!(hedge.started_at, start.plus(Duration::from_millis(150)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_goes_only_to_a_provider_in_rotation_whose_breaker_admits() {
        let clock = TokioClock::starting_at(T0);
        let slow = slow(delivered("s"));
        let off = Arc::new(Scripted::new("off", [delivered("o")]));
        let gone = Arc::new(Scripted::new("gone", [delivered("g")]));
        let held = Arc::new(Scripted::new(
            "held",
            [Verdict::throttled(
                Some(429),
                Some(Duration::from_secs(60)),
                "HTTP 429".into(),
            )],
        ));
        let pool = pool(
            &[
                Arc::clone(&slow),
                Arc::clone(&off),
                Arc::clone(&gone),
                Arc::clone(&held),
            ],
            lenient_breaker(),
        );
        let [s_slow, s_off, s_gone, _] = pool.slots() else {
            unreachable!("four slots")
        };
        // `held` alone in rotation: its 429 holds it off for a minute.
        for slot in [s_slow, s_off, s_gone] {
            slot.set_enabled(false);
        }
        run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
        assert_eq!(held.sent().len(), 1);
        // `slow` back; `off` stays disabled; `gone` is enabled but a reload
        // retired it.
        s_slow.set_enabled(true);
        s_gone.set_enabled(true);
        s_gone.retire();

        let policy = hedging(HedgeWhen::All, HedgeAfter::Millis(100));
        for _ in 0..3 {
            let start = clock.now();
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            // The hedge was due after 100 ms, and no provider could take it.
            assert_eq!(outcomes(&r), [("slow", AttemptOutcome::Delivered)]);
            assert_eq!(r.at, start.plus(SLOW));
        }
        assert!(off.sent().is_empty() && gone.sent().is_empty());
        assert_eq!(held.sent().len(), 1);

        // Back in rotation, `off` takes the hedge whenever `slow` went
        // first (a fair coin: both cases come up in 30 rounds).
        s_off.set_enabled(true);
        let mut hedged = 0;
        for _ in 0..30 {
            let start = clock.now();
            let r = run_round(&pool, &policy, &clock, &asked(&clock)).await;
            match outcomes(&r).as_slice() {
                [("off", AttemptOutcome::Delivered)] => {}
                [
                    ("off", AttemptOutcome::Delivered),
                    ("slow", AttemptOutcome::Delivered),
                ] => {
                    assert_eq!(r.attempts[0].started_at, start.plus(HEDGE_AFTER));
                    hedged += 1;
                }
                other => panic!("unexpected attempts {other:?}"),
            }
        }
        assert!(hedged > 0);
        assert!(gone.sent().is_empty());
        assert_eq!(held.sent().len(), 1);
        // Each answered request is noted once, in the window both the
        // health view and the p90 read.
        assert_eq!(s_slow.latency_p50_p99(), [Some(2_000), Some(2_000)]);
        assert_eq!(s_off.latency_p50_p99(), [Some(10), Some(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_is_no_latency() {
        let clock = TokioClock::starting_at(T0);
        let mut dead = failing(AttemptOutcome::Transient, 0);
        dead.unreachable = true;
        dead.http_status = None;
        let down = Arc::new(Scripted::new("down", [dead]).latency(Duration::from_millis(700)));
        let pool = pool(&[down], lenient_breaker());
        let r = run_round(&pool, &policy(), &clock, &claimed(&clock, "01712345678")).await;
        assert_eq!(outcomes(&r), [("down", AttemptOutcome::Transient)]);
        assert_eq!(pool.slots()[0].latency_p50_p99(), [None, None]);
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
