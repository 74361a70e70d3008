//! Acceptance 2: concurrent Resolve calls never give one identifier two live owners.

use std::collections::{BTreeMap, BTreeSet};

use customer_profile::service::pb;
use futures::future::join_all;
use pb::ResolveOutcome;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_resolves_of_one_new_email_make_one_profile() {
    let app = TestApp::spawn().await;
    let shared = email("shared@example.com");
    let calls = (0..50).map(|_| {
        let app = &app;
        let shared = shared.clone();
        async move { app.resolve(vec![shared], true, true).await }
    });
    let answers = join_all(calls).await;

    let ids: BTreeSet<&str> = answers.iter().map(|r| r.profile_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        1,
        "all 50 answers name the same profile: {ids:?}"
    );
    let pid = answers[0].profile_id.clone();
    let mut outcomes: BTreeMap<i32, usize> = BTreeMap::new();
    for r in &answers {
        *outcomes.entry(r.outcome).or_default() += 1;
    }
    assert_eq!(
        outcomes.get(&(ResolveOutcome::Created as i32)),
        Some(&1),
        "exactly one CREATED: {outcomes:?}"
    );
    assert_eq!(
        outcomes.get(&(ResolveOutcome::Matched as i32)),
        Some(&49),
        "{outcomes:?}"
    );

    assert_eq!(
        app.owner(shared.clone()).await.as_deref(),
        Some(pid.as_str())
    );
    let view = app.get(by_ident(shared.clone())).await;
    assert_eq!(view.profile_id, pid);
    assert_eq!(profile_idents(&view), ident_set([&shared]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_resolves_sharing_an_email_with_own_devices_end_in_one_profile() {
    let app = TestApp::spawn().await;
    let shared = email("together@example.com");
    let devices: Vec<_> = (0..50).map(|i| device(&format!("dev-{i}"))).collect();
    let calls = devices.iter().map(|d| {
        let app = &app;
        let ids = vec![shared.clone(), d.clone()];
        async move { app.resolve(ids, true, false).await }
    });
    let answers = join_all(calls).await;

    let ids: BTreeSet<&str> = answers.iter().map(|r| r.profile_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "all answers name one profile: {ids:?}");
    let pid = answers[0].profile_id.clone();
    let created = answers
        .iter()
        .filter(|r| outcome(r) == ResolveOutcome::Created)
        .count();
    let linked = answers
        .iter()
        .filter(|r| outcome(r) == ResolveOutcome::Linked)
        .count();
    assert_eq!((created, linked), (1, 49), "{answers:?}");

    let mut all = devices.clone();
    all.push(shared.clone());
    let lookups = app.lookup(all.clone()).await;
    for l in &lookups {
        assert!(
            l.found && l.profile_id == pid,
            "LookupProfileIds disagrees: {l:?}"
        );
    }
    let view = app.get(by_id(&pid)).await;
    assert_eq!(profile_idents(&view), ident_set(&all));
    assert_eq!(view.identifiers.len(), 51, "no identifier is listed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_resolves_with_merge_keep_one_owner_per_identifier() {
    let app = TestApp::spawn().await;
    // A chain: call i carries device i and device i+1, so everything is one customer.
    let devices: Vec<_> = (0..21).map(|i| device(&format!("chain-{i}"))).collect();
    let calls = (0..20).map(|i| {
        let app = &app;
        let ids = vec![devices[i].clone(), devices[i + 1].clone()];
        async move { app.resolve(ids, true, true).await }
    });
    let answers = join_all(calls).await;
    assert!(
        answers
            .iter()
            .all(|r| outcome(r) != ResolveOutcome::Conflict),
        "{answers:?}"
    );

    let lookups = app.lookup(devices.clone()).await;
    let owners: BTreeSet<&str> = lookups.iter().map(|l| l.profile_id.as_str()).collect();
    assert_eq!(
        owners.len(),
        1,
        "the chain ends as one live profile: {owners:?}"
    );
    assert!(lookups.iter().all(|l| l.found));
    let pid = lookups[0].profile_id.clone();

    let view = app.get(by_id(&pid)).await;
    assert_eq!(profile_idents(&view), ident_set(&devices));
    assert_eq!(
        view.identifiers.len(),
        devices.len(),
        "no identifier is listed twice"
    );
    // Every profile any call answered with now reads as the survivor.
    for r in &answers {
        assert_eq!(app.get(by_id(&r.profile_id)).await.profile_id, pid);
    }
}
