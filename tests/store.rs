//! The storage contract, run against a real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::domain::{Attempt, AttemptOutcome, Channel, NotificationId, Status, UnixMillis};
use herald::store::{
    self, Completion, LeaseLost, NewNotification, ReplayOutcome, RoundReport, SqliteOptions, Store,
};

const LEASE: Duration = Duration::from_secs(30);

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("herald.db").display());
    store::open(&url, SqliteOptions::default()).await.unwrap()
}

fn new_sms(now: UnixMillis, text: &str) -> NewNotification {
    NewNotification {
        id: NotificationId::new(),
        channel: Channel::Sms,
        payload: format!(r#"{{"phone":"01712345678","text":"{text}"}}"#),
        created_at: now,
        expires_at: now.plus(Duration::from_secs(3600)),
    }
}

fn attempt(provider: &str, outcome: AttemptOutcome, status: u16) -> Attempt {
    Attempt {
        provider: provider.into(),
        started_at: UnixMillis::now(),
        duration_ms: 3,
        outcome,
        http_status: Some(status),
        error: (outcome != AttemptOutcome::Delivered).then(|| format!("HTTP {status}")),
    }
}

fn report(
    c: &herald::store::Claimed,
    attempts: Vec<Attempt>,
    completion: Completion,
    at: UnixMillis,
) -> RoundReport {
    RoundReport {
        id: c.id,
        lease: c.lease,
        attempts,
        completion,
        at,
    }
}

#[tokio::test]
async fn insert_then_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let n = new_sms(now, "hello");
    store.insert(n.clone()).await.unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Queued);
    assert_eq!(rec.channel, Channel::Sms);
    assert_eq!(rec.message["text"], "hello");
    assert_eq!(rec.next_attempt_at, Some(now));
    assert!(rec.attempts.is_empty());
    assert!(store.get(NotificationId::new()).await.unwrap().is_none());
}

#[tokio::test]
async fn claims_are_leased_and_lapse() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let first = new_sms(now, "a");
    store.insert(first.clone()).await.unwrap();
    store
        .insert(new_sms(now.plus(Duration::from_secs(60)), "later"))
        .await
        .unwrap();

    let claimed = store.claim(now, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1, "only what is due");
    assert_eq!(claimed[0].id, first.id);
    assert_eq!(&claimed[0].payload[..], first.payload.as_bytes());
    assert_eq!(
        store.get(first.id).await.unwrap().unwrap().status,
        Status::Sending
    );

    assert!(
        store.claim(now, 10, LEASE).await.unwrap().is_empty(),
        "leased"
    );
    let after_lease = now.plus(LEASE).plus(Duration::from_millis(1));
    let again = store.claim(after_lease, 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "a lapsed lease is claimed again");
    assert_eq!(again[0].id, first.id);
    assert_ne!(again[0].lease, claimed[0].lease);

    // The stale claimant cannot write; the current one can.
    let stale = report(
        &claimed[0],
        vec![attempt("p1", AttemptOutcome::Delivered, 200)],
        Completion::Delivered {
            provider: "p1".into(),
        },
        after_lease,
    );
    assert_eq!(
        store.complete(vec![stale]).await.unwrap(),
        vec![Err(LeaseLost)]
    );
    let current = report(
        &again[0],
        vec![
            attempt("p2", AttemptOutcome::Transient, 500),
            attempt("p1", AttemptOutcome::Delivered, 200),
        ],
        Completion::Delivered {
            provider: "p1".into(),
        },
        after_lease,
    );
    assert_eq!(
        store.complete(vec![current.clone()]).await.unwrap(),
        vec![Ok(())]
    );
    let rec = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Delivered);
    assert_eq!(rec.delivered_by.as_deref(), Some("p1"));
    assert_eq!(rec.rounds, 1);
    let providers: Vec<_> = rec.attempts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(providers, ["p2", "p1"], "stale attempts are not recorded");
    // Writing twice under the same lease is refused: the lease ended.
    assert_eq!(
        store.complete(vec![current]).await.unwrap(),
        vec![Err(LeaseLost)]
    );
    // Delivered work is never claimed again.
    let far = now.plus(Duration::from_secs(3600));
    let left = store.claim(far, 10, LEASE).await.unwrap();
    assert!(left.iter().all(|c| c.id != first.id));
}

#[tokio::test]
async fn retries_are_scheduled_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let n = new_sms(now, "r");
    store.insert(n.clone()).await.unwrap();
    let c = store.claim(now, 1, LEASE).await.unwrap().remove(0);
    let at = now.plus(Duration::from_secs(5));
    let r = report(
        &c,
        vec![attempt("p1", AttemptOutcome::Transient, 500)],
        Completion::Retry {
            at,
            counted: true,
            error: Some("HTTP 500".into()),
        },
        now,
    );
    store.complete(vec![r]).await.unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Retrying);
    assert_eq!(rec.rounds, 1);
    assert_eq!(rec.next_attempt_at, Some(at));
    assert_eq!(rec.last_error.as_deref(), Some("HTTP 500"));
    assert!(
        store
            .claim(now.plus(Duration::from_secs(4)), 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let c = store.claim(at, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(c.rounds, 1);

    // A round with no attempt (every breaker open) uses no round.
    let r = report(
        &c,
        vec![],
        Completion::Retry {
            at,
            counted: false,
            error: None,
        },
        now,
    );
    store.complete(vec![r]).await.unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.rounds), (Status::Retrying, 1));

    // Given back at shutdown: due at once.
    let c = store.claim(at, 1, LEASE).await.unwrap().remove(0);
    store
        .complete(vec![report(&c, vec![], Completion::Released, at)])
        .await
        .unwrap();
    assert_eq!(store.claim(at, 1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn released_fresh_work_is_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let n = new_sms(now, "x");
    store.insert(n.clone()).await.unwrap();
    let c = store.claim(now, 1, LEASE).await.unwrap().remove(0);
    store
        .complete(vec![report(&c, vec![], Completion::Released, now)])
        .await
        .unwrap();
    assert_eq!(
        store.get(n.id).await.unwrap().unwrap().status,
        Status::Queued
    );
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let n = new_sms(now, &format!("d{i}"));
        ids.push(n.id);
        store.insert(n).await.unwrap();
    }
    let claimed = store.claim(now, 5, LEASE).await.unwrap();
    let reports = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let completion = if i < 4 {
                Completion::Dead {
                    error: "gave up".into(),
                }
            } else {
                Completion::Delivered {
                    provider: "p".into(),
                }
            };
            report(
                c,
                vec![attempt("p", AttemptOutcome::Transient, 500)],
                completion,
                now,
            )
        })
        .collect();
    assert!(
        store
            .complete(reports)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );

    let page1 = store.list(Status::Dead, None, 3).await.unwrap();
    assert_eq!(page1.len(), 3);
    let page2 = store
        .list(Status::Dead, Some(page1[2].id), 3)
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    let mut listed: Vec<_> = page1.iter().chain(&page2).map(|s| s.id).collect();
    listed.sort();
    let mut dead: Vec<_> = claimed[..4].iter().map(|c| c.id).collect();
    dead.sort();
    assert_eq!(listed, dead);

    let counts: std::collections::HashMap<_, _> =
        store.counts().await.unwrap().into_iter().collect();
    assert_eq!(counts.get(&Status::Dead), Some(&4));
    assert_eq!(counts.get(&Status::Delivered), Some(&1));

    let expires = now.plus(Duration::from_secs(3600));
    assert_eq!(
        store.replay(dead[0], now, expires).await.unwrap(),
        ReplayOutcome::Requeued
    );
    let rec = store.get(dead[0]).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.rounds), (Status::Queued, 0));
    assert_eq!(rec.attempts.len(), 1, "history is kept");
    assert_eq!(
        store.replay(claimed[4].id, now, expires).await.unwrap(),
        ReplayOutcome::NotReplayable(Status::Delivered)
    );
    assert_eq!(
        store
            .replay(NotificationId::new(), now, expires)
            .await
            .unwrap(),
        ReplayOutcome::NotFound
    );
    assert_eq!(store.claim(now, 10, LEASE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_inserts_all_commit_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir).await;
    let now = UnixMillis::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = Vec::new();
    for i in 0..500 {
        let n = new_sms(now, &format!("c{i}"));
        ids.push(n.id);
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.insert(n).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    store.close().await;
    assert!(store.insert(new_sms(now, "late")).await.is_err(), "closed");
    drop(store);

    let store = sqlite(&dir).await;
    for id in &ids {
        assert_eq!(
            store.get(*id).await.unwrap().unwrap().status,
            Status::Queued
        );
    }
    let claimed = store.claim(now, 1000, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 500);
    assert!(claimed.iter().all(|c| c.payload != Bytes::new()));
    store.ping().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(
        store::open("mysql://x", SqliteOptions::default())
            .await
            .is_err()
    );
}
