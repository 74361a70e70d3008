//! Acceptance 7: WatchChanges replays every change in order, then follows live writes;
//! resuming from the last sequence misses nothing and repeats nothing; retention.

use std::time::Duration;

use customer_profile::service::pb;
use pb::ChangeKind;
use tonic::Code;

use crate::helpers::*;

fn kind(e: &pb::ChangeEvent) -> ChangeKind {
    ChangeKind::try_from(e.kind).expect("known change kind")
}

/// A fixed set of writes; returns (kind, profile id, version) of the event each must produce,
/// in order.
async fn some_writes(app: &TestApp) -> Vec<(ChangeKind, String, u64)> {
    let mut want = Vec::new();
    let (ea, eb) = (new_email(), new_email());
    let a = app.resolve(vec![ea.clone()], true, false).await;
    want.push((ChangeKind::ProfileCreated, a.profile_id.clone(), a.version));
    app.tick();
    let b = app.resolve(vec![eb.clone()], true, false).await;
    want.push((ChangeKind::ProfileCreated, b.profile_id.clone(), b.version));
    let l = app
        .resolve(vec![ea.clone(), new_device()], false, false)
        .await;
    want.push((
        ChangeKind::IdentifiersChanged,
        a.profile_id.clone(),
        l.version,
    ));
    let u = app
        .update(
            by_id(&a.profile_id),
            pb::ProfileAttributes {
                city: Some("Leeds".into()),
                ..Default::default()
            },
            &["attributes.city"],
            app.now(),
        )
        .await;
    want.push((
        ChangeKind::ProfileUpdated,
        a.profile_id.clone(),
        u.profile.expect("profile").version,
    ));
    let i = app
        .record(by_id(&b.profile_id), interaction_at(app.now()))
        .await;
    want.push((
        ChangeKind::InteractionRecorded,
        b.profile_id.clone(),
        i.version,
    ));
    let m = app
        .merge(vec![by_id(&a.profile_id), by_id(&b.profile_id)])
        .await;
    want.push((ChangeKind::ProfilesMerged, a.profile_id.clone(), m.version));
    let un = app.unmerge(&m.merges[0].merge_id).await;
    // Two events: the survivor's and the restored profile's, in either order.
    want.push((
        ChangeKind::ProfilesUnmerged,
        un.survivor_profile_id.clone(),
        un.survivor_version,
    ));
    want.push((
        ChangeKind::ProfilesUnmerged,
        un.restored_profile_id.clone(),
        un.restored_version,
    ));
    want
}

fn assert_events_match(
    got: &[pb::ChangeEvent],
    want: &[(ChangeKind, String, u64)],
    first_seq: u64,
) {
    assert_eq!(got.len(), want.len());
    for (k, e) in got.iter().enumerate() {
        assert_eq!(
            e.sequence,
            first_seq + k as u64,
            "gap-free, increasing sequence: {got:#?}"
        );
        assert!(e.recorded_at.is_some());
    }
    let n = want.len();
    // All but the two unmerge events are in a fixed order.
    for k in 0..n - 2 {
        let e = &got[k];
        assert_eq!(
            (kind(e), e.profile_id.clone(), e.version),
            want[k].clone(),
            "event {k}: {e:?}"
        );
    }
    let mut tail: Vec<_> = got[n - 2..]
        .iter()
        .map(|e| (kind(e), e.profile_id.clone(), e.version))
        .collect();
    let mut want_tail = want[n - 2..].to_vec();
    tail.sort();
    want_tail.sort();
    assert_eq!(tail, want_tail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_then_follows_and_resumes_without_gaps_or_repeats() {
    let app = TestApp::spawn().await;
    let want = some_writes(&app).await;

    // Replay from 0.
    let mut stream = app.watch(0).await;
    let history = next_events(&mut stream, want.len()).await;
    assert_events_match(&history, &want, 1);
    let merged = history
        .iter()
        .find(|e| kind(e) == ChangeKind::ProfilesMerged)
        .expect("merge event");
    assert_eq!(
        merged.related_profile_ids,
        vec![want[1].1.clone()],
        "the absorbed profile is related"
    );
    let updated = history
        .iter()
        .find(|e| kind(e) == ChangeKind::ProfileUpdated)
        .expect("update event");
    assert!(
        updated.changed_paths.iter().any(|p| p == "attributes.city"),
        "{updated:?}"
    );
    let recorded = history
        .iter()
        .find(|e| kind(e) == ChangeKind::InteractionRecorded)
        .expect("interaction event");
    assert_eq!(
        recorded.changed_paths,
        vec!["interactions".to_string(), "summary".to_string()]
    );

    // Then live writes on the same stream.
    let more = some_writes(&app).await;
    let live = next_events(&mut stream, more.len()).await;
    assert_events_match(&live, &more, want.len() as u64 + 1);
    let last = live.last().expect("events").sequence;
    drop(stream);

    // Resume from the last sequence processed: nothing missed, nothing repeated.
    let offline = some_writes(&app).await;
    let mut resumed = app.watch(last).await;
    let got = next_events(&mut resumed, offline.len()).await;
    assert_events_match(&got, &offline, last + 1);

    // Resuming from the middle repeats exactly from the next sequence.
    let mut middle = app.watch(3).await;
    let e = next_event(&mut middle).await;
    assert_eq!(e.sequence, 4);
    assert_eq!(kind(&e), want[3].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_reach_a_watcher_in_sequence_order_without_gaps() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let mut stream = app.watch(0).await;
    let first = next_event(&mut stream).await;
    assert_eq!(first.sequence, 1);

    let writes = (0..40).map(|_| {
        let app = &app;
        let p = p.clone();
        async move {
            app.record(by_id(&p), interaction_at(app.now()))
                .await
                .version
        }
    });
    let mut versions: Vec<u64> = futures::future::join_all(writes).await;
    versions.sort_unstable();

    let events = next_events(&mut stream, 40).await;
    for (k, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, 2 + k as u64);
        assert_eq!(kind(e), ChangeKind::InteractionRecorded);
        assert_eq!(e.profile_id, p);
    }
    let event_versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        event_versions, versions,
        "versions rise with the sequence, one per write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_older_than_the_retention_is_out_of_range() {
    let app = TestApp::spawn_with(|c| {
        c.changes.retention_secs = 3_600;
        c.changes.prune_interval_ms = 50;
    })
    .await;
    let old = some_writes(&app).await;
    let last_old = old.len() as u64;
    let mut stream = app.watch(0).await;
    assert_eq!(
        next_event(&mut stream).await.sequence,
        1,
        "retained while young"
    );
    drop(stream);

    app.clock.advance_secs(2 * 3_600);
    let fresh = app.resolve(vec![new_email()], true, false).await;

    // Wait (bounded) for the pruner to run on the new clock time.
    let mut out_of_range = None;
    for _ in 0..200 {
        match app.try_watch(0).await {
            Err(status) => {
                out_of_range = Some(status);
                break;
            }
            Ok(mut s) => match tokio::time::timeout(STREAM_TIMEOUT, s.message()).await {
                Ok(Err(status)) => {
                    out_of_range = Some(status);
                    break;
                }
                Ok(Ok(Some(_))) => {}
                other => panic!("unexpected stream state: {other:?}"),
            },
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status =
        out_of_range.expect("WatchChanges(0) became OUT_OF_RANGE within 10 s of pruning time");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // A consumer that processed everything old resumes without loss.
    let mut s = app.watch(last_old).await;
    let e = next_event(&mut s).await;
    assert_eq!(e.sequence, last_old + 1);
    assert_eq!(e.profile_id, fresh.profile_id);
    assert_eq!(kind(&e), ChangeKind::ProfileCreated);
}
