//! The storage contract, run against both engines: a real SQLite file and a
//! fresh database on a real PostgreSQL server.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald::domain::webhook::{WebhookEvent, WebhookId};
use herald::domain::{
    Attempt, AttemptOutcome, Channel, NotificationId, Priority, Status, UnixMillis,
};
use herald::store::{
    self, ApiKeyRecord, CancelOutcome, ClaimedWebhook, Completion, IdempotencyKey, KeyedInsert,
    Lease, LeaseLost, LeaseToken, ListFilter, NewNotification, ReplayOutcome, RoundReport,
    StoreOptions, WebhookCompletion, WebhookReport, WebhookRoute, WebhookRoutes, WebhookStatus,
    WebhookTarget,
};
use support::{Backend, TestStore};

const LEASE: Duration = Duration::from_secs(30);

store_matrix!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    insert_then_read_back,
    claims_are_leased_and_lapse,
    handed_off_inserts_are_leased_until_they_lapse,
    retries_are_scheduled_in_the_store,
    released_fresh_work_is_queued_again,
    dead_letters_are_listed_and_replayed,
    concurrent_inserts_all_commit_and_survive_reopening,
    one_bad_row_never_fails_its_batch_mates,
    stale_and_repeated_reports_in_one_batch,
    concurrent_claims_never_share_work,
    delivered_notifications_are_purged_after_retention,
    scheduled_work_is_claimed_no_earlier,
    past_their_deadline_notifications_expire_unsent,
    cancel_takes_back_only_what_has_not_started,
    high_priority_is_not_delayed_by_a_low_backlog,
    an_idempotency_key_stores_once_even_when_raced,
    listings_filter_and_page_stably_under_inserts,
    api_keys_are_created_once_listed_and_revoked,
    disabled_providers_are_kept_by_name,
    webhook_events_are_written_with_the_final_transition,
    webhook_deliveries_are_claimed_once_under_concurrency,
    webhook_deliveries_are_retried_deferred_released_failed_and_purged,
    the_hedge_flag_is_kept_claimed_and_read_back,
    a_hedged_notifications_end_writes_its_event_naming_the_delivery,
    the_sending_key_is_kept_and_listings_can_be_limited_to_it,
);

fn new_sms(now: UnixMillis, text: &str) -> NewNotification {
    NewNotification::due_now(
        Channel::Sms,
        format!(r#"{{"phone":"01712345678","text":"{text}"}}"#),
        now,
        now.plus(Duration::from_secs(3600)),
    )
}

fn attempt(provider: &str, outcome: AttemptOutcome, status: u16) -> Attempt {
    Attempt {
        provider: provider.into(),
        started_at: UnixMillis::now(),
        duration_ms: 3,
        outcome,
        http_status: Some(status),
        error: (outcome != AttemptOutcome::Delivered).then(|| format!("HTTP {status}")),
        provider_message_id: (outcome == AttemptOutcome::Delivered)
            .then(|| format!("{provider}-msg-{status}")),
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

async fn insert_then_read_back(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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

async fn claims_are_leased_and_lapse(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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
        Completion::Sent {
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
        Completion::Sent {
            provider: "p1".into(),
        },
        after_lease,
    );
    assert_eq!(
        store.complete(vec![current.clone()]).await.unwrap(),
        vec![Ok(())]
    );
    let rec = store.get(first.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Sent);
    assert_eq!(rec.delivered_by.as_deref(), Some("p1"));
    assert_eq!(rec.rounds, 1);
    let providers: Vec<_> = rec.attempts.iter().map(|a| a.provider.as_str()).collect();
    assert_eq!(providers, ["p2", "p1"], "stale attempts are not recorded");
    assert_eq!(
        rec.attempts
            .iter()
            .map(|a| a.provider_message_id.as_deref())
            .collect::<Vec<_>>(),
        [None, Some("p1-msg-200")],
        "the provider's message id is kept"
    );
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

/// An insert for the in-memory hand-off is stored leased: no claim takes it
/// while its lease holds, its holder can write the round back, and if the
/// holder never does, the next claim after the lease picks it up.
async fn handed_off_inserts_are_leased_until_they_lapse(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let lease = Lease {
        token: LeaseToken::random(),
        until: now.plus(LEASE),
    };
    let kept = NewNotification {
        lease: Some(lease),
        ..new_sms(now, "handed over, then delivered")
    };
    let dropped = NewNotification {
        lease: Some(lease),
        ..new_sms(now, "handed over, then lost")
    };
    store.insert(kept.clone()).await.unwrap();
    store.insert(dropped.clone()).await.unwrap();
    assert_eq!(
        store.get(kept.id).await.unwrap().unwrap().status,
        Status::Sending
    );
    assert!(
        store.claim(now, 10, LEASE).await.unwrap().is_empty(),
        "held by the lease it was inserted under"
    );

    let holder = herald::store::Claimed {
        id: kept.id,
        channel: kept.channel,
        payload: Bytes::from(kept.payload.clone()),
        rounds: 0,
        created_at: now,
        expires_at: kept.expires_at,
        deliver_by: None,
        hedge: false,
        lease: lease.token,
        lease_until: lease.until,
    };
    let delivered = report(
        &holder,
        vec![attempt("p1", AttemptOutcome::Delivered, 200)],
        Completion::Sent {
            provider: "p1".into(),
        },
        now,
    );
    assert_eq!(store.complete(vec![delivered]).await.unwrap(), vec![Ok(())]);
    assert_eq!(
        store.get(kept.id).await.unwrap().unwrap().status,
        Status::Sent
    );

    let after_lease = lease.until.plus(Duration::from_millis(1));
    let reclaimed = store.claim(after_lease, 10, LEASE).await.unwrap();
    assert_eq!(reclaimed.len(), 1, "only the one never written back");
    assert_eq!(reclaimed[0].id, dropped.id);
    assert_eq!(reclaimed[0].rounds, 0, "a lapsed hand-off used no round");
    assert_ne!(reclaimed[0].lease, lease.token);
}

async fn retries_are_scheduled_in_the_store(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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

async fn released_fresh_work_is_queued_again(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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

async fn dead_letters_are_listed_and_replayed(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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
                Completion::Sent {
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

    let page1 = store
        .list(ListFilter::status(Status::Dead), None, 3)
        .await
        .unwrap();
    assert_eq!(page1.len(), 3);
    let page2 = store
        .list(ListFilter::status(Status::Dead), Some(page1[2].id), 3)
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
    assert_eq!(counts.get(&Status::Sent), Some(&1));

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
        ReplayOutcome::NotReplayable(Status::Sent)
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

async fn concurrent_inserts_all_commit_and_survive_reopening(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
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

    let store = test.open().await;
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

/// A row the database refuses (PostgreSQL stores no NUL in text; the API
/// refuses one with 422, so only a row that slipped past validation can
/// carry one) shares a group commit with hundreds of ordinary ones: every
/// ordinary one is stored, and only the bad ones are refused.
async fn one_bad_row_never_fails_its_batch_mates(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ordinary = Vec::new();
    for i in 0..400 {
        let mut n = new_sms(now, &format!("o{i}"));
        let poison = i % 50 == 7;
        if poison {
            n.metadata.insert("order".into(), "a\0b".into());
        } else {
            n.metadata.insert("order".into(), format!("{i}"));
            ordinary.push(n.id);
        }
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            // Some alone, some in a call of their own with a batch-mate.
            let written = match i % 3 {
                0 => store.insert_many(vec![n]).await,
                _ => store.insert(n).await,
            };
            (poison, written.is_ok())
        });
    }
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        let (poison, ok) = r.unwrap();
        assert!(poison || ok, "an ordinary insert failed beside a bad one");
        refused += usize::from(!ok);
    }
    if backend == Backend::Postgres {
        assert_eq!(refused, 8, "each NUL row is refused on its own");
    }
    for id in &ordinary {
        assert_eq!(
            store.get(*id).await.unwrap().unwrap().status,
            Status::Queued
        );
    }
    store.ping().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let options = StoreOptions::default();
    assert!(store::open("mysql://x", &options).await.is_err());
    assert!(store::open("postgres://[nonsense", &options).await.is_err());
}

/// Reports under a stale lease and the same report twice, arriving in one
/// write batch: only the first current one wins.
async fn stale_and_repeated_reports_in_one_batch(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let n = new_sms(now, "twice");
    store.insert(n.clone()).await.unwrap();
    let first = store.claim(now, 1, LEASE).await.unwrap().remove(0);
    let later = now.plus(LEASE).plus(Duration::from_millis(1));
    let second = store.claim(later, 1, LEASE).await.unwrap().remove(0);
    let delivered = |c: &herald::store::Claimed, p: &str| {
        report(
            c,
            vec![attempt(p, AttemptOutcome::Delivered, 200)],
            Completion::Sent { provider: p.into() },
            later,
        )
    };
    let results = store
        .complete(vec![
            delivered(&first, "stale"),
            delivered(&second, "current"),
            delivered(&second, "again"),
        ])
        .await
        .unwrap();
    assert_eq!(results, vec![Err(LeaseLost), Ok(()), Err(LeaseLost)]);
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.delivered_by.as_deref(), Some("current"));
    assert_eq!(rec.attempts.len(), 1);
}

/// Several claimants at once (on PostgreSQL, separate connection pools as
/// separate instances would have) never get the same notification.
async fn concurrent_claims_never_share_work(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let stores = [test.open().await, test.open().await, test.open().await];
    let now = UnixMillis::now();
    let mut ids = HashSet::new();
    for i in 0..600 {
        let n = new_sms(now, &format!("s{i}"));
        ids.insert(n.id);
        stores[i % 3].insert(n).await.unwrap();
    }
    let claimed = claim_concurrently(&stores, move |store| async move {
        let batch = store.claim(now, 25, LEASE).await.unwrap();
        batch.into_iter().map(|c| c.id).collect()
    })
    .await;
    assert_eq!(claimed.len(), 600, "each one claimed once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), ids);
}

/// Six claimers on the three `stores` at once, each claiming with `claim`
/// until it comes back empty; everything they got.
async fn claim_concurrently<T, F, Fut>(stores: &[Arc<dyn store::Store>; 3], claim: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<dyn store::Store>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Vec<T>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..6 {
        let store = Arc::clone(&stores[k % 3]);
        let claim = claim.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = claim(Arc::clone(&store)).await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(got) = tasks.join_next().await {
        claimed.extend(got.unwrap());
    }
    claimed
}

async fn delivered_notifications_are_purged_after_retention(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let old = UnixMillis(UnixMillis::now().0 - 3_600_000);
    let fresh = UnixMillis::now();
    let mut kept = Vec::new();
    let mut purged = Vec::new();
    for (i, at) in [old, old, old, fresh].into_iter().enumerate() {
        let n = new_sms(at, &format!("p{i}"));
        store.insert(n.clone()).await.unwrap();
        let c = store.claim(at, 1, LEASE).await.unwrap().remove(0);
        let completion = if i == 2 {
            Completion::Dead {
                error: "gave up".into(),
            }
        } else {
            Completion::Sent {
                provider: "p".into(),
            }
        };
        let r = report(
            &c,
            vec![attempt("p", AttemptOutcome::Delivered, 200)],
            completion,
            at,
        );
        store.complete(vec![r]).await.unwrap();
        if i < 2 { &mut purged } else { &mut kept }.push(n.id);
    }
    let queued = new_sms(old, "waiting");
    store.insert(queued.clone()).await.unwrap();
    kept.push(queued.id);

    let cutoff = UnixMillis(fresh.0 - 60_000);
    assert_eq!(
        store.purge(cutoff, 1).await.unwrap(),
        1,
        "a batch at a time"
    );
    assert_eq!(store.purge(cutoff, 100).await.unwrap(), 1);
    assert_eq!(store.purge(cutoff, 100).await.unwrap(), 0);
    for id in purged {
        assert!(store.get(id).await.unwrap().is_none());
    }
    for id in kept {
        assert!(
            store.get(id).await.unwrap().is_some(),
            "dead, fresh and unfinished stay"
        );
    }
}

/// Instances starting at once on an empty database take turns migrating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_run_once_under_concurrent_starts() {
    let Some(test) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = test.url.clone();
        opening.spawn(async move { store::open(&url, &StoreOptions::default()).await });
    }
    while let Some(opened) = opening.join_next().await {
        let store = opened
            .unwrap()
            .unwrap_or_else(|e| panic!("{}", herald::error::chain(&e)));
        store.ping().await.unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM herald_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = store::POSTGRES_MIGRATIONS.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, expected);
}

/// Databases at earlier schema versions (1 and 2; 8, providers taken out of
/// rotation; 9, status webhooks, the last before hedging's column; 10, the
/// last on both engines that called an accepted notification `delivered`)
/// are upgraded in place: their rows are read back intact and still
/// delivered, and what they called `delivered` (a provider accepted it) is
/// `sent`, its pending webhook event with it.
const EARLIER_VERSIONS: [usize; 5] = [1, 2, 8, 9, 10];

/// The pending event of an old `delivered` notification, as Herald wrote it.
const OLD_DELIVERED_EVENT: &str = r#"{"data":{"attempts":{"count":1},"channel":"sms","metadata":{},"status":"delivered"},"timestamp":"2026-01-01T00:00:00.000Z","type":"notification.delivered"}"#;

#[tokio::test]
async fn sqlite_databases_of_earlier_versions_are_upgraded_in_place() {
    for version in EARLIER_VERSIONS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let now = UnixMillis::now();
        let id = NotificationId::new_at(now);
        let accepted = NotificationId::new_at(now);
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for (_, sql) in &store::SQLITE_MIGRATIONS[..version] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(&format!("PRAGMA user_version = {version};"))
                .unwrap();
            conn.execute(
                "INSERT INTO notifications (id, channel, payload, status, due_at, rounds,
                     created_at, updated_at, expires_at, last_error)
                 VALUES (?1, 'sms', '{\"phone\":\"01712345678\",\"text\":\"old\"}',
                         'retrying', ?2, 2, ?2, ?2, ?3, 'HTTP 500')",
                rusqlite::params![&id.as_bytes()[..], now.0, now.0 + 3_600_000],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (notification_id, started_at, provider, duration_ms, outcome,
                     http_status, error)
                 VALUES (?1, ?2, 'sms-provider1', 4, 'transient', 500, 'HTTP 500')",
                rusqlite::params![&id.as_bytes()[..], now.0],
            )
            .unwrap();
            if version >= 8 {
                conn.execute(
                    "INSERT INTO disabled_providers (name, disabled_at) VALUES ('sms-old', ?1)",
                    [now.0],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO notifications (id, channel, payload, status, rounds,
                     created_at, updated_at, expires_at, delivered_by)
                 VALUES (?1, 'sms', '{\"phone\":\"01712345678\",\"text\":\"accepted\"}',
                         'delivered', 1, ?2, ?2, ?3, 'sms-provider1')",
                rusqlite::params![&accepted.as_bytes()[..], now.0, now.0 + 3_600_000],
            )
            .unwrap();
            if version >= 9 {
                conn.execute(
                    "INSERT INTO webhook_deliveries (id, notification_id, event, target, url,
                         payload, status, due_at, created_at, updated_at)
                     VALUES (?1, ?2, 'notification.delivered', 'endpoint', 'https://h.example.com/',
                             ?3, 'pending', ?4, ?4, ?4)",
                    rusqlite::params![
                        &WebhookId::new_at(now).as_bytes()[..],
                        &accepted.as_bytes()[..],
                        OLD_DELIVERED_EVENT,
                        now.0
                    ],
                )
                .unwrap();
            }
        }
        let store = store::open(
            &format!("sqlite://{}", path.display()),
            &StoreOptions::default(),
        )
        .await
        .unwrap();
        assert_upgraded(&*store, id, accepted, now, version).await;
        store.close().await;
    }
}

#[tokio::test]
async fn postgres_databases_of_earlier_versions_are_upgraded_in_place() {
    for version in EARLIER_VERSIONS {
        let Some(test) = TestStore::new(Backend::Postgres).await else {
            return;
        };
        let now = UnixMillis::now();
        let id = NotificationId::new_at(now);
        let accepted = NotificationId::new_at(now);
        let (client, connection) = tokio_postgres::connect(&test.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE herald_migrations (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .unwrap();
        for (v, sql) in &store::POSTGRES_MIGRATIONS[..version] {
            client.batch_execute(sql).await.unwrap();
            client
                .execute("INSERT INTO herald_migrations (version) VALUES ($1)", &[v])
                .await
                .unwrap();
        }
        client
            .execute(
                "INSERT INTO notifications (id, channel, payload, status, due_at, rounds,
                     created_at, updated_at, expires_at, last_error)
                 VALUES ($1, 'sms', '{\"phone\":\"01712345678\",\"text\":\"old\"}',
                         'retrying', $2, 2, $2, $2, $3, 'HTTP 500')",
                &[&id.as_uuid(), &now.0, &(now.0 + 3_600_000)],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO attempts (notification_id, started_at, provider, duration_ms, outcome,
                     http_status, error)
                 VALUES ($1, $2, 'sms-provider1', 4, 'transient', 500, 'HTTP 500')",
                &[&id.as_uuid(), &now.0],
            )
            .await
            .unwrap();
        if version >= 8 {
            client
                .execute(
                    "INSERT INTO disabled_providers (name, disabled_at) VALUES ('sms-old', $1)",
                    &[&now.0],
                )
                .await
                .unwrap();
        }
        client
            .execute(
                "INSERT INTO notifications (id, channel, payload, status, rounds,
                     created_at, updated_at, expires_at, delivered_by)
                 VALUES ($1, 'sms', '{\"phone\":\"01712345678\",\"text\":\"accepted\"}',
                         'delivered', 1, $2, $2, $3, 'sms-provider1')",
                &[&accepted.as_uuid(), &now.0, &(now.0 + 3_600_000)],
            )
            .await
            .unwrap();
        if version >= 9 {
            client
                .execute(
                    "INSERT INTO webhook_deliveries (id, notification_id, event, target, url,
                         payload, status, due_at, created_at, updated_at)
                     VALUES ($1, $2, 'notification.delivered', 'endpoint', 'https://h.example.com/',
                             $3, 'pending', $4, $4, $4)",
                    &[
                        &WebhookId::new_at(now).as_uuid(),
                        &accepted.as_uuid(),
                        &OLD_DELIVERED_EVENT,
                        &now.0,
                    ],
                )
                .await
                .unwrap();
        }
        drop(client);
        let _ = driver.await;
        let store = test.open().await;
        assert_upgraded(&*store, id, accepted, now, version).await;
        store.close().await;
    }
}

async fn assert_upgraded(
    store: &dyn store::Store,
    id: NotificationId,
    accepted: NotificationId,
    now: UnixMillis,
    version: usize,
) {
    let old = store
        .get(accepted)
        .await
        .unwrap()
        .expect("the accepted row is kept");
    assert_eq!(
        old.status,
        Status::Sent,
        "version {version}: delivered is sent"
    );
    assert_eq!(old.message["text"], "accepted");
    if version >= 9 {
        let events = store.claim_webhooks(now, 10, LEASE).await.unwrap();
        assert_eq!(events.len(), 1, "version {version}");
        assert_eq!(events[0].notification_id, accepted);
        assert_eq!(events[0].event, WebhookEvent::Sent);
        let body: serde_json::Value = serde_json::from_slice(&events[0].payload).unwrap();
        assert_eq!(body["type"], "notification.sent", "{body}");
        assert_eq!(body["data"]["status"], "sent", "{body}");
        assert_eq!(body["data"]["channel"], "sms", "the rest is kept: {body}");
        assert_eq!(body["timestamp"], "2026-01-01T00:00:00.000Z");
    }
    let rec = store.get(id).await.unwrap().expect("the old row is kept");
    assert!(!rec.hedge, "rows from before hedging are not hedged");
    assert_eq!(rec.callback_url, None);
    assert_eq!(rec.created_by, None, "rows from before keys owned them");
    assert_eq!(rec.status, Status::Retrying);
    assert_eq!(rec.priority, Priority::Normal);
    assert_eq!(rec.rounds, 2);
    assert_eq!(rec.expires_at, None, "no client deadline");
    assert_eq!(rec.retry_until, UnixMillis(now.0 + 3_600_000));
    assert_eq!(rec.message["text"], "old");
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].http_status, Some(500));
    let claimed = store.claim(now, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1, "still claimed after the upgrade");
    assert_eq!(claimed[0].id, id);
    assert!(!claimed[0].hedge);
    let disabled: Vec<String> = store
        .disabled_providers()
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let kept: &[&str] = if version >= 8 { &["sms-old"] } else { &[] };
    assert_eq!(disabled, kept, "version {version}");
}

/// A notification stored by one instance wakes the dispatcher of another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_new_work_wakes_other_instances() {
    let Some(test) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let worker = test.open().await;
    let api = test.open().await;
    let wake = Arc::new(tokio::sync::Notify::new());
    worker.subscribe(Arc::clone(&wake));
    // The listener pokes once when it starts listening.
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("the listener connected");
    api.insert(new_sms(UnixMillis::now(), "wake"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("woken by the other instance's insert");
    worker.close().await;
    api.close().await;
}

/// A measurement, not a check (it asserts no timing): store-level
/// throughput of inserts from many concurrent callers, then of claims and
/// completions, on each engine. Run it with
/// `cargo test --release --test store -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn throughput() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(test) = TestStore::new(backend).await else {
            continue;
        };
        let store = test.open().await;
        let now = UnixMillis::now();
        const N: usize = 50_000;
        let started = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..256 {
            let store = Arc::clone(&store);
            let next = Arc::clone(&next);
            tasks.spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < N {
                    store.insert(new_sms(now, "throughput")).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let inserted = N as f64 / started.elapsed().as_secs_f64();

        // As the dispatcher does: claim up to the free capacity, complete
        // each round on its own.
        let started = std::time::Instant::now();
        let capacity = Arc::new(tokio::sync::Semaphore::new(512));
        let mut done = 0;
        let mut rounds = tokio::task::JoinSet::new();
        loop {
            let free = capacity.available_permits().min(256);
            let batch = if free > 0 {
                store.claim(now, free, LEASE).await.unwrap()
            } else {
                Vec::new()
            };
            if batch.is_empty() && rounds.is_empty() {
                break;
            }
            for c in batch {
                let permit = Arc::clone(&capacity).try_acquire_owned().unwrap();
                let store = Arc::clone(&store);
                rounds.spawn(async move {
                    let r = report(
                        &c,
                        vec![attempt("p1", AttemptOutcome::Delivered, 200)],
                        Completion::Sent {
                            provider: "p1".into(),
                        },
                        UnixMillis::now(),
                    );
                    store.complete(vec![r]).await.unwrap();
                    drop(permit);
                });
            }
            if (capacity.available_permits() == 0 || free == 0)
                && let Some(r) = rounds.join_next().await
            {
                r.unwrap();
                done += 1;
            }
            while let Some(r) = rounds.try_join_next() {
                r.unwrap();
                done += 1;
            }
        }
        assert_eq!(done, N);
        let completed = N as f64 / started.elapsed().as_secs_f64();
        println!(
            "{backend:?}: {inserted:.0} inserts/s (256 concurrent callers), \
             {completed:.0} claimed+completed/s (512 in flight)"
        );
        store.close().await;
    }
}

async fn scheduled_work_is_claimed_no_earlier(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let at = now.plus(Duration::from_secs(600));
    let n = NewNotification {
        send_at: Some(at),
        ..new_sms(now, "later")
    };
    store.insert(n.clone()).await.unwrap();
    let rec = store.get(n.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Scheduled);
    assert_eq!(rec.next_attempt_at, Some(at));
    let just_before = UnixMillis(at.0 - 1);
    assert!(
        store
            .claim(just_before, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim(at, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, n.id);
}

async fn the_hedge_flag_is_kept_claimed_and_read_back(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let hedged = NewNotification {
        hedge: true,
        ..new_sms(now, "hedged")
    };
    let plain = new_sms(now, "plain");
    store
        .insert_many(vec![hedged.clone(), plain.clone()])
        .await
        .unwrap();
    assert!(store.get(hedged.id).await.unwrap().unwrap().hedge);
    assert!(!store.get(plain.id).await.unwrap().unwrap().hedge);
    let claimed = store.claim(now, 10, LEASE).await.unwrap();
    let flag = |id| claimed.iter().find(|c| c.id == id).map(|c| c.hedge);
    assert_eq!(flag(hedged.id), Some(true));
    assert_eq!(flag(plain.id), Some(false));
}

/// A hedged round records the losing request after the winning one; the
/// notification's event still goes out with its end, and names the
/// delivery. A hedged notification past its deadline ends in the claim,
/// with its event, like any other.
async fn a_hedged_notifications_end_writes_its_event_naming_the_delivery(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open_with(&routed()).await;
    let now = UnixMillis::now();
    let hedged = NewNotification {
        hedge: true,
        ..new_sms(now, "hedged")
    };
    let attempts = vec![
        attempt("fast", AttemptOutcome::Delivered, 200),
        attempt("slow", AttemptOutcome::Transient, 503),
    ];
    let done = Completion::Sent {
        provider: "fast".into(),
    };
    end(&*store, hedged.clone(), attempts, done, now)
        .await
        .unwrap();
    let rows = store.claim_webhooks(now, 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].event, WebhookEvent::Sent);
    assert_eq!(rows[0].notification_id, hedged.id);
    let body = payload(&rows[0]);
    assert_eq!(body["data"]["attempts"]["count"], 2);
    assert_eq!(body["data"]["attempts"]["last_provider"], "fast");
    assert_eq!(body["data"]["attempts"]["last_outcome"], "delivered");
    assert_eq!(body["data"]["attempts"]["last_http_status"], 200);
    let rec = store.get(hedged.id).await.unwrap().unwrap();
    assert!(rec.hedge);
    assert_eq!(rec.attempts.len(), 2);

    // Failing for good still names the last attempt, whoever made it.
    let failing = NewNotification {
        hedge: true,
        ..new_sms(now, "failing")
    };
    let attempts = vec![
        attempt("fast", AttemptOutcome::Transient, 502),
        attempt("slow", AttemptOutcome::Rejected, 400),
    ];
    let failed = Completion::Failed {
        error: "HTTP 400".into(),
    };
    end(&*store, failing.clone(), attempts, failed, now)
        .await
        .unwrap();
    let rows = store.claim_webhooks(now, 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 2, "both endpoints take a failure: {rows:?}");
    let body = payload(&rows[0]);
    assert_eq!(body["type"], "notification.failed");
    assert_eq!(body["data"]["attempts"]["last_provider"], "slow");
    assert_eq!(body["data"]["attempts"]["last_outcome"], "rejected");

    let by = now.plus(Duration::from_secs(10));
    let late = NewNotification {
        hedge: true,
        deliver_by: Some(by),
        ..new_sms(now, "late")
    };
    store.insert(late.clone()).await.unwrap();
    assert!(store.claim(by, 10, LEASE).await.unwrap().is_empty());
    let rows = store.claim_webhooks(by, 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].event, WebhookEvent::Expired);
    assert_eq!(rows[0].notification_id, late.id);
}

async fn past_their_deadline_notifications_expire_unsent(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let by = now.plus(Duration::from_secs(300));
    let late = NewNotification {
        deliver_by: Some(by),
        ..new_sms(now, "a code, useless after five minutes")
    };
    let fine = NewNotification {
        deliver_by: Some(by),
        ..new_sms(now, "claimed in time")
    };
    store.insert(fine.clone()).await.unwrap();
    let claimed = store.claim(now, 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].deliver_by,
        Some(by),
        "the round knows the deadline"
    );
    // A round that ran past it reports it so.
    let r = report(
        &claimed[0],
        Vec::new(),
        Completion::Expired {
            error: "late".into(),
        },
        now,
    );
    assert_eq!(store.complete(vec![r]).await.unwrap(), vec![Ok(())]);
    assert_eq!(
        store.get(fine.id).await.unwrap().unwrap().status,
        Status::Expired
    );
    store.insert(late.clone()).await.unwrap();
    // Found only after its deadline: ended, never handed to a round.
    assert!(store.claim(by, 10, LEASE).await.unwrap().is_empty());
    let rec = store.get(late.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Expired);
    assert_eq!(rec.expires_at, Some(by));
    assert!(rec.last_error.is_some());
    let far = by.plus(Duration::from_secs(3600));
    assert!(store.claim(far, 10, LEASE).await.unwrap().is_empty());
}

async fn cancel_takes_back_only_what_has_not_started(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let scheduled = NewNotification {
        send_at: Some(now.plus(Duration::from_secs(60))),
        ..new_sms(now, "scheduled")
    };
    let queued = new_sms(now, "queued");
    store.insert(scheduled.clone()).await.unwrap();
    store.insert(queued.clone()).await.unwrap();
    assert_eq!(
        store.cancel(scheduled.id, now).await.unwrap(),
        CancelOutcome::Canceled
    );
    let claimed = store.claim(now, 10, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, queued.id);
    assert_eq!(
        store.cancel(queued.id, now).await.unwrap(),
        CancelOutcome::NotCancelable(Status::Sending)
    );
    assert_eq!(
        store.cancel(scheduled.id, now).await.unwrap(),
        CancelOutcome::NotCancelable(Status::Canceled)
    );
    assert_eq!(
        store.cancel(NotificationId::new(), now).await.unwrap(),
        CancelOutcome::NotFound
    );
    // Canceled work is never claimed, even long after its time (the
    // queued one's lease lapsed by then, so it comes back).
    let far = now.plus(Duration::from_secs(7200));
    let late: Vec<NotificationId> = store
        .claim(far, 10, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(late, [queued.id]);
    let rec = store.get(scheduled.id).await.unwrap().unwrap();
    assert_eq!(rec.status, Status::Canceled);
    assert_eq!(rec.next_attempt_at, None);

    // A claim and a cancel racing on many rows: each row ends either
    // claimed or canceled, never both.
    let many: Vec<NewNotification> = (0..200)
        .map(|i| new_sms(now, &format!("race-{i}")))
        .collect();
    for n in &many {
        store.insert(n.clone()).await.unwrap();
    }
    let canceller = {
        let store = Arc::clone(&store);
        let ids: Vec<NotificationId> = many.iter().map(|n| n.id).collect();
        tokio::spawn(async move {
            let mut canceled = HashSet::new();
            for id in ids {
                if store.cancel(id, now).await.unwrap() == CancelOutcome::Canceled {
                    canceled.insert(id);
                }
            }
            canceled
        })
    };
    let mut claimed = HashSet::new();
    for _ in 0..50 {
        for c in store.claim(now, 8, LEASE).await.unwrap() {
            claimed.insert(c.id);
        }
    }
    let canceled = canceller.await.unwrap();
    assert!(claimed.is_disjoint(&canceled));
    for c in store.claim(now, 1000, LEASE).await.unwrap() {
        claimed.insert(c.id);
    }
    assert_eq!(claimed.len() + canceled.len(), many.len());
}

/// A claim takes higher priority first: one `high` notification stored
/// behind a backlog of `low` ones is in the very next claim.
async fn high_priority_is_not_delayed_by_a_low_backlog(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let start = UnixMillis::now();
    for i in 0..2_000 {
        let at = UnixMillis(start.0 - 10_000 + i);
        store
            .insert(NewNotification {
                priority: Priority::Low,
                ..new_sms(at, &format!("newsletter-{i}"))
            })
            .await
            .unwrap();
    }
    let normal = new_sms(start, "normal");
    let urgent = NewNotification {
        priority: Priority::High,
        ..new_sms(start, "your code is 1234")
    };
    store.insert(normal.clone()).await.unwrap();
    store.insert(urgent.clone()).await.unwrap();
    let first = store.claim(start, 2, LEASE).await.unwrap();
    let ids: Vec<NotificationId> = first.iter().map(|c| c.id).collect();
    assert!(ids.contains(&urgent.id), "high first");
    assert!(ids.contains(&normal.id), "then normal, before any low");
    let next = store.claim(start, 3, LEASE).await.unwrap();
    assert_eq!(next.len(), 3, "then the low ones");
    let rec = store.get(urgent.id).await.unwrap().unwrap();
    assert_eq!(rec.priority, Priority::High);
}

fn key(name: &str, fingerprint: &str, now: UnixMillis) -> IdempotencyKey {
    IdempotencyKey {
        scope: String::new(),
        key: name.into(),
        fingerprint: fingerprint.into(),
        status_code: 202,
        response: format!(r#"{{"first":"{fingerprint}"}}"#),
        created_at: now,
        expired_before: UnixMillis(now.0 - 86_400_000),
    }
}

/// Concurrent requests with one key store exactly one notification; each
/// other caller gets the first answer, and plain inserts committed in the
/// same transactions are not disturbed.
async fn an_idempotency_key_stores_once_even_when_raced(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            if i % 2 == 0 {
                let n = new_sms(now, &format!("keyed-{i}"));
                let outcome = store
                    .insert_keyed(vec![n.clone()], key("order-1", "fp-a", now))
                    .await
                    .unwrap();
                (Some(outcome), n.id)
            } else {
                let n = new_sms(now, &format!("plain-{i}"));
                store.insert(n.clone()).await.unwrap();
                (None, n.id)
            }
        });
    }
    let mut stored = Vec::new();
    let mut plain = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (Some(KeyedInsert::Stored), id) => stored.push(id),
            (Some(KeyedInsert::Replayed(first)), id) => {
                assert_eq!(first.fingerprint, "fp-a");
                assert_eq!(first.status_code, 202);
                assert!(
                    store.get(id).await.unwrap().is_none(),
                    "a retry stores nothing"
                );
            }
            (None, id) => plain.push(id),
        }
    }
    assert_eq!(stored.len(), 1, "exactly one keyed insert stored");
    assert_eq!(plain.len(), 20);
    for id in stored.iter().chain(&plain) {
        assert!(store.get(*id).await.unwrap().is_some());
    }
    // Another scope may use the same key; an expired key is replaced.
    let other = IdempotencyKey {
        scope: "caller-b".into(),
        ..key("order-1", "fp-b", now)
    };
    let n = new_sms(now, "other caller");
    assert_eq!(
        store.insert_keyed(vec![n], other).await.unwrap(),
        KeyedInsert::Stored
    );
    let a_day_later = now.plus(Duration::from_secs(86_401));
    assert_eq!(
        store
            .insert_keyed(
                vec![new_sms(a_day_later, "fresh")],
                key("order-1", "fp-c", a_day_later)
            )
            .await
            .unwrap(),
        KeyedInsert::Stored
    );
    // The purge removes keys past their age, and only those.
    assert_eq!(
        store
            .purge_keys(now.plus(Duration::from_secs(1)), 10)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store
            .insert_keyed(
                vec![new_sms(now, "again")],
                key("order-1", "fp-c", a_day_later)
            )
            .await
            .unwrap(),
        KeyedInsert::Replayed(_)
    ));
}

async fn listings_filter_and_page_stably_under_inserts(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let t0 = UnixMillis::now();
    let mut made = Vec::new();
    for i in 0..10i64 {
        let at = UnixMillis(t0.0 + i * 10);
        let mut n = new_sms(at, &format!("list-{i}"));
        if i % 2 == 1 {
            n.channel = Channel::Email;
            n.payload = r#"{"subject":"s","body":"b","recipients":["a@b.io"]}"#.into();
        }
        if i >= 5 {
            n.priority = Priority::High;
        }
        if i % 3 == 0 {
            n.metadata.insert("campaign".into(), "autumn".into());
            n.metadata.insert("order".into(), format!("o-{i}"));
        }
        store.insert(n.clone()).await.unwrap();
        made.push(n.id);
    }
    let all = |f: ListFilter| {
        let store = Arc::clone(&store);
        async move {
            let mut ids = Vec::new();
            let mut after = None;
            for _ in 0..20 {
                let page = store.list(f.clone(), after, 3).await.unwrap();
                ids.extend(page.iter().map(|n| n.id));
                if page.len() < 3 {
                    return ids;
                }
                after = page.last().map(|n| n.id);
                // A newer notification arriving mid-listing comes after
                // every page already read.
                store
                    .insert(new_sms(UnixMillis(t0.0 + 100_000), "late"))
                    .await
                    .unwrap();
            }
            ids
        }
    };
    let email = ListFilter {
        channel: Some(Channel::Email),
        created_before: Some(UnixMillis(t0.0 + 100)),
        ..ListFilter::default()
    };
    assert_eq!(
        all(email).await,
        [made[1], made[3], made[5], made[7], made[9]]
    );
    let high_sms = ListFilter {
        channel: Some(Channel::Sms),
        priority: Some(Priority::High),
        ..ListFilter::default()
    };
    assert_eq!(all(high_sms).await, [made[6], made[8]]);
    let window = ListFilter {
        status: Some(Status::Queued),
        created_from: Some(UnixMillis(t0.0 + 20)),
        created_before: Some(UnixMillis(t0.0 + 50)),
        ..ListFilter::default()
    };
    assert_eq!(all(window.clone()).await, made[2..5]);
    // Newest first, paging towards older ones; later inserts never show up
    // on a later page.
    let newest = ListFilter {
        newest_first: true,
        ..window
    };
    assert_eq!(all(newest).await, [made[4], made[3], made[2]]);
    let newest_email = ListFilter {
        channel: Some(Channel::Email),
        newest_first: true,
        ..ListFilter::default()
    };
    assert_eq!(
        all(newest_email).await,
        [made[9], made[7], made[5], made[3], made[1]]
    );
    let autumn = ListFilter {
        metadata: Some(("campaign".into(), "autumn".into())),
        ..ListFilter::default()
    };
    assert_eq!(all(autumn).await, [made[0], made[3], made[6], made[9]]);
    let one_order = ListFilter {
        metadata: Some(("order".into(), "o-6".into())),
        priority: Some(Priority::High),
        ..ListFilter::default()
    };
    assert_eq!(all(one_order).await, [made[6]]);
    let rec = store.get(made[3]).await.unwrap().unwrap();
    assert_eq!(rec.metadata["order"], "o-3");
    assert!(
        store
            .get(made[1])
            .await
            .unwrap()
            .unwrap()
            .metadata
            .is_empty()
    );
}

async fn api_keys_are_created_once_listed_and_revoked(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let key = |name: &str, hash: u8| ApiKeyRecord {
        name: name.to_owned(),
        key_hash: vec![hash; 32],
        scopes: "send,read".to_owned(),
        rate_per_sec: Some(2.5),
        burst: Some(7),
        created_at: UnixMillis(1_000),
        revoked_at: None,
    };
    assert!(store.create_api_key(key("b", 2)).await.unwrap());
    assert!(store.create_api_key(key("a", 1)).await.unwrap());
    assert!(
        !store.create_api_key(key("a", 3)).await.unwrap(),
        "a name is taken once"
    );
    let mut unlimited = key("c", 4);
    (unlimited.rate_per_sec, unlimited.burst) = (None, None);
    assert!(store.create_api_key(unlimited.clone()).await.unwrap());
    assert_eq!(
        store.api_keys().await.unwrap(),
        [key("a", 1), key("b", 2), unlimited]
    );

    assert!(store.revoke_api_key("a", UnixMillis(2_000)).await.unwrap());
    assert!(!store.revoke_api_key("a", UnixMillis(3_000)).await.unwrap());
    assert!(
        !store
            .revoke_api_key("nobody", UnixMillis(3_000))
            .await
            .unwrap()
    );
    store.close().await;
    // Kept across a reopening, revocation time and all.
    let store = test.open().await;
    let keys = store.api_keys().await.unwrap();
    assert_eq!(keys[0].revoked_at, Some(UnixMillis(2_000)));
    assert_eq!(keys[1].revoked_at, None);
    assert!(!store.create_api_key(key("a", 5)).await.unwrap());
}

async fn disabled_providers_are_kept_by_name(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    assert!(store.disabled_providers().await.unwrap().is_empty());
    assert!(
        store
            .set_provider_disabled("twilio", true, UnixMillis(1_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_provider_disabled("twilio", true, UnixMillis(2_000))
            .await
            .unwrap(),
        "disabled already: it keeps its first time"
    );
    assert!(
        store
            .set_provider_disabled("mailgun", true, UnixMillis(3_000))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_provider_disabled("nobody", false, UnixMillis(3_000))
            .await
            .unwrap(),
        "enabling one never disabled changes nothing"
    );
    assert_eq!(
        store.disabled_providers().await.unwrap(),
        [
            ("mailgun".to_owned(), UnixMillis(3_000)),
            ("twilio".to_owned(), UnixMillis(1_000))
        ]
    );
    store.close().await;
    // Kept across a reopening (a restart); enabling takes it out of the set.
    let store = test.open().await;
    assert!(
        store
            .set_provider_disabled("mailgun", false, UnixMillis(4_000))
            .await
            .unwrap()
    );
    assert_eq!(
        store.disabled_providers().await.unwrap(),
        [("twilio".to_owned(), UnixMillis(1_000))]
    );
}
/// Two endpoints (one taking every event, one only failures) and callbacks.
fn routed() -> StoreOptions {
    StoreOptions {
        webhooks: WebhookRoutes {
            endpoints: vec![
                WebhookRoute {
                    url: "https://all.example.com/h".into(),
                    events: WebhookEvent::ALL.to_vec(),
                },
                WebhookRoute {
                    url: "https://failures.example.com/h".into(),
                    events: vec![WebhookEvent::Failed],
                },
            ],
            callbacks: true,
        },
        ..StoreOptions::default()
    }
}

/// Ends `n` (inserted, claimed and completed at `at`) with `completion`.
async fn end(
    store: &dyn store::Store,
    n: NewNotification,
    attempts: Vec<Attempt>,
    completion: Completion,
    at: UnixMillis,
) -> Result<(), LeaseLost> {
    store.insert(n.clone()).await.unwrap();
    let c = store.claim(at, 10, LEASE).await.unwrap();
    let c = c.iter().find(|c| c.id == n.id).expect("claimed");
    store
        .complete(vec![report(c, attempts, completion, at)])
        .await
        .unwrap()
        .remove(0)
}

fn payload(d: &ClaimedWebhook) -> serde_json::Value {
    serde_json::from_slice(&d.payload).unwrap()
}

async fn webhook_events_are_written_with_the_final_transition(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open_with(&routed()).await;
    let now = UnixMillis::now();
    let wake = store.webhooks_added();

    // Sent, with metadata and a callback: the first endpoint and the
    // callback get the event, signed payloads alike.
    let delivered = NewNotification {
        metadata: [("order".to_owned(), "4711".to_owned())].into(),
        callback_url: Some("https://cb.example.com/n?t=1".into()),
        ..new_sms(now, "delivered")
    };
    let attempts = vec![
        attempt("p1", AttemptOutcome::Transient, 503),
        attempt("p2", AttemptOutcome::Delivered, 200),
    ];
    let done = Completion::Sent {
        provider: "p2".into(),
    };
    end(&*store, delivered.clone(), attempts, done, now)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("the commit pokes the webhook worker");
    let rows = store.claim_webhooks(now, 10, LEASE).await.unwrap();
    let mut targets: Vec<_> = rows.iter().map(|d| (d.target, d.url.as_str())).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            (WebhookTarget::Endpoint, "https://all.example.com/h"),
            (WebhookTarget::Callback, "https://cb.example.com/n?t=1"),
        ]
    );
    assert_ne!(rows[0].id, rows[1].id);
    assert_eq!(rows[0].payload, rows[1].payload);
    let body = payload(&rows[0]);
    assert_eq!(body["type"], "notification.sent");
    assert_eq!(body["data"]["id"], delivered.id.to_string());
    assert_eq!(body["data"]["status"], "sent");
    assert_eq!(body["data"]["channel"], "sms");
    assert_eq!(body["data"]["attempts"]["count"], 2);
    assert_eq!(body["data"]["attempts"]["last_provider"], "p2");
    assert_eq!(body["data"]["attempts"]["last_http_status"], 200);
    assert_eq!(body["data"]["metadata"]["order"], "4711");
    assert!(rows.iter().all(|d| d.event == WebhookEvent::Sent
        && d.notification_id == delivered.id
        && d.attempts == 0));
    assert_eq!(
        store.get(delivered.id).await.unwrap().unwrap().callback_url,
        delivered.callback_url
    );

    // A retry is no ending; failing for good is, for both endpoints.
    let failing = new_sms(now, "failing");
    store.insert(failing.clone()).await.unwrap();
    let c = store.claim(now, 1, LEASE).await.unwrap().remove(0);
    let retry = Completion::Retry {
        at: now,
        counted: true,
        error: Some("HTTP 503".into()),
    };
    store
        .complete(vec![report(
            &c,
            vec![attempt("p1", AttemptOutcome::Transient, 503)],
            retry,
            now,
        )])
        .await
        .unwrap();
    assert!(
        store
            .claim_webhooks(now, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let c = store.claim(now, 1, LEASE).await.unwrap().remove(0);
    let failed = Completion::Failed {
        error: "HTTP 400: bad number".into(),
    };
    let rejected = vec![attempt("p1", AttemptOutcome::Rejected, 400)];
    store
        .complete(vec![report(&c, rejected.clone(), failed.clone(), now)])
        .await
        .unwrap();
    let rows = store.claim_webhooks(now, 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let body = payload(&rows[0]);
    assert_eq!(body["type"], "notification.failed");
    assert_eq!(body["data"]["error"], "HTTP 400: bad number");
    assert_eq!(body["data"]["attempts"]["count"], 2);
    assert_eq!(body["data"]["attempts"]["last_outcome"], "rejected");

    // A stale report changes nothing, so it writes no event either.
    let stale = report(&c, rejected, failed, now);
    assert_eq!(
        store.complete(vec![stale]).await.unwrap(),
        vec![Err(LeaseLost)]
    );
    assert!(
        store
            .claim_webhooks(now, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    // A claim that finds a notification past its deadline ends it, and
    // sends its event from the same transaction.
    let by = now.plus(Duration::from_secs(10));
    let late = NewNotification {
        deliver_by: Some(by),
        ..new_sms(now, "late")
    };
    store.insert(late.clone()).await.unwrap();
    assert!(store.claim(by, 10, LEASE).await.unwrap().is_empty());
    let rows = store.claim_webhooks(by, 10, LEASE).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].event, WebhookEvent::Expired);
    let body = payload(&rows[0]);
    assert_eq!(body["data"]["status"], "expired");
    assert_eq!(body["data"]["attempts"]["count"], 0);
    assert!(body["data"]["attempts"]["last_provider"].is_null());

    // Canceled sends nothing; a store without routes writes no outbox.
    let canceled = new_sms(now, "canceled");
    store.insert(canceled.clone()).await.unwrap();
    store.cancel(canceled.id, now).await.unwrap();
    let plain = test.open().await;
    let quiet = new_sms(now, "quiet");
    let done = Completion::Sent {
        provider: "p".into(),
    };
    end(&*plain, quiet, Vec::new(), done, now).await.unwrap();
    assert!(
        store
            .claim_webhooks(by, 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn webhook_deliveries_are_claimed_once_under_concurrency(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let options = routed();
    let stores = [
        test.open_with(&options).await,
        test.open_with(&options).await,
        test.open_with(&options).await,
    ];
    let now = UnixMillis::now();
    for i in 0..100 {
        let done = Completion::Sent {
            provider: "p".into(),
        };
        end(
            &*stores[0],
            new_sms(now, &format!("w{i}")),
            Vec::new(),
            done,
            now,
        )
        .await
        .unwrap();
    }
    let claimed = claim_concurrently(&stores, move |store| async move {
        let batch = store.claim_webhooks(now, 7, LEASE).await.unwrap();
        batch.into_iter().map(|d| d.id).collect()
    })
    .await;
    assert_eq!(claimed.len(), 100, "each one claimed once");
    assert_eq!(claimed.iter().collect::<HashSet<_>>().len(), 100);
    let backlog = stores[1].webhook_backlog().await.unwrap();
    assert_eq!(backlog, vec![(WebhookStatus::Sending, 100)]);
}

async fn webhook_deliveries_are_retried_deferred_released_failed_and_purged(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let options = StoreOptions {
        webhooks: WebhookRoutes {
            endpoints: vec![WebhookRoute {
                url: "https://all.example.com/h?token=s3cret".into(),
                events: WebhookEvent::ALL.to_vec(),
            }],
            callbacks: false,
        },
        ..StoreOptions::default()
    };
    let store = test.open_with(&options).await;
    let now = UnixMillis::now();
    for text in ["a", "b"] {
        let done = Completion::Sent {
            provider: "p".into(),
        };
        end(&*store, new_sms(now, text), Vec::new(), done, now)
            .await
            .unwrap();
    }
    let claim = |at: UnixMillis| {
        let store = Arc::clone(&store);
        async move { store.claim_webhooks(at, 10, LEASE).await.unwrap() }
    };
    let mut rows = claim(now).await;
    rows.sort_by_key(|d| d.id);
    let (a, b) = (rows[0].clone(), rows[1].clone());
    let write = |d: &ClaimedWebhook, completion, at| {
        let r = WebhookReport {
            id: d.id,
            lease: d.lease,
            completion,
            at,
        };
        let store = Arc::clone(&store);
        async move { store.complete_webhooks(vec![r]).await.unwrap().remove(0) }
    };

    // A failed attempt: due again at its time, one attempt counted.
    let later = now.plus(Duration::from_secs(10));
    let retry = WebhookCompletion::Retry {
        at: later,
        http_status: Some(500),
        error: "HTTP 500".into(),
    };
    assert_eq!(write(&a, retry, now).await, Ok(()));
    assert!(claim(now).await.is_empty());
    let pending = store
        .webhook_deliveries(Some(WebhookStatus::Pending), None, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].next_attempt_at, Some(later));
    assert_eq!(pending[0].last_http_status, Some(500));
    assert_eq!(
        pending[0].url, "https://all.example.com/h",
        "no query shown"
    );
    let a = claim(later).await.remove(0);
    assert_eq!(a.attempts, 1);

    // Deferred (breaker open) and released (shutdown): no attempt used.
    let deferred = WebhookCompletion::Deferred {
        at: later.plus(Duration::from_secs(5)),
    };
    assert_eq!(write(&a, deferred, later).await, Ok(()));
    assert!(claim(later).await.is_empty());
    let a = claim(later.plus(Duration::from_secs(5))).await.remove(0);
    assert_eq!(a.attempts, 1);
    assert_eq!(write(&a, WebhookCompletion::Released, later).await, Ok(()));
    let first = claim(later).await.remove(0);
    assert_eq!(first.attempts, 1);

    // A lapsed lease is claimed again; the stale holder cannot write.
    let lapsed = later.plus(LEASE).plus(Duration::from_millis(1));
    let both = claim(lapsed).await;
    assert_eq!(both.len(), 2, "b's lease lapsed too");
    let again = both.iter().find(|d| d.id == first.id).unwrap().clone();
    assert_ne!(again.lease, first.lease);
    let delivered = WebhookCompletion::Delivered { http_status: 204 };
    assert_eq!(
        write(&first, delivered.clone(), lapsed).await,
        Err(LeaseLost)
    );
    assert_eq!(write(&again, delivered, lapsed).await, Ok(()));

    // The other gives up: failed, kept, listed.
    let gave_up = WebhookCompletion::Failed {
        http_status: None,
        error: "gave up after 12 attempts".into(),
    };
    assert_eq!(write(&b, gave_up, lapsed).await, Err(LeaseLost));
    let b = both.into_iter().find(|d| d.id == b.id).unwrap();
    let gave_up = WebhookCompletion::Failed {
        http_status: None,
        error: "gave up after 12 attempts".into(),
    };
    assert_eq!(write(&b, gave_up, lapsed).await, Ok(()));
    let failed = store
        .webhook_deliveries(Some(WebhookStatus::Failed), None, 10)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, b.id);
    assert_eq!(
        failed[0].last_error.as_deref(),
        Some("gave up after 12 attempts")
    );
    assert!(failed[0].next_attempt_at.is_none());
    let all = store.webhook_deliveries(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let page = store
        .webhook_deliveries(None, Some(all[0].id), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);
    assert!(store.webhook_backlog().await.unwrap().is_empty());

    // The purge takes delivered ones past retention, never failed ones.
    let far = lapsed.plus(Duration::from_secs(86_400));
    assert_eq!(
        store.purge_webhooks(lapsed, 10).await.unwrap(),
        0,
        "not old enough"
    );
    assert_eq!(store.purge_webhooks(far, 10).await.unwrap(), 1);
    let left = store.webhook_deliveries(None, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, WebhookStatus::Failed);
}

/// New webhook deliveries wake the webhook workers of other instances
/// (LISTEN/NOTIFY), not only the one that wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_webhook_events_wake_other_instances() {
    let Some(test) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let writer = test.open_with(&routed()).await;
    let other = test.open_with(&routed()).await;
    let other_added = other.webhooks_added();
    // Subscribing is what an instance running a dispatcher does.
    other.subscribe(Arc::new(tokio::sync::Notify::new()));
    // The listener pokes once on connecting, for what it may have missed.
    tokio::time::timeout(Duration::from_secs(10), other_added.notified())
        .await
        .expect("the listener connects");
    let now = UnixMillis::now();
    let done = Completion::Sent {
        provider: "p".into(),
    };
    end(&*writer, new_sms(now, "wakes"), Vec::new(), done, now)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), other_added.notified())
        .await
        .expect("the other instance's worker is woken");
    assert_eq!(other.claim_webhooks(now, 10, LEASE).await.unwrap().len(), 1);
}

/// Each notification keeps the name of the API key that sent it; a listing
/// can be limited to one key's (what a key without the admin scope sees).
async fn the_sending_key_is_kept_and_listings_can_be_limited_to_it(backend: Backend) {
    let Some(test) = TestStore::new(backend).await else {
        return;
    };
    let store = test.open().await;
    let now = UnixMillis::now();
    let billing = NewNotification {
        created_by: Some("billing".into()),
        ..new_sms(now, "billing's")
    };
    let shop = NewNotification {
        created_by: Some("shop".into()),
        ..new_sms(now.plus(Duration::from_millis(1)), "shop's")
    };
    let anonymous = new_sms(now.plus(Duration::from_millis(2)), "no key");
    let (b, s, a) = (billing.id, shop.id, anonymous.id);
    store.insert(billing).await.unwrap();
    store.insert_many(vec![shop, anonymous]).await.unwrap();
    let owner = |id| {
        let store = Arc::clone(&store);
        async move { store.get(id).await.unwrap().unwrap().created_by }
    };
    assert_eq!(owner(b).await.as_deref(), Some("billing"));
    assert_eq!(owner(s).await.as_deref(), Some("shop"));
    assert_eq!(owner(a).await, None);
    let listed = |created_by: Option<&str>| {
        let store = Arc::clone(&store);
        let filter = ListFilter {
            created_by: created_by.map(str::to_owned),
            ..ListFilter::default()
        };
        async move {
            store
                .list(filter, None, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(Some("billing")).await, [b]);
    assert_eq!(listed(Some("shop")).await, [s]);
    assert!(listed(Some("nobody")).await.is_empty());
    assert_eq!(listed(None).await, [b, s, a]);
    store.close().await;
}
