//! Acceptance 9: stopping the server and starting it again on the same data directory keeps
//! everything: profiles, identifiers, merges, attributes and their history, interactions,
//! idempotency keys and the change feed.

use customer_profile::service::pb;
use pb::ResolveOutcome;

use crate::helpers::*;

#[derive(Debug, PartialEq)]
struct Snapshot {
    profiles: Vec<pb::Profile>,
    lookups: Vec<pb::IdentifierLookup>,
    merges: Vec<Vec<pb::Merge>>,
    history: Vec<Vec<pb::AttributeChange>>,
    interactions: Vec<Vec<pb::Interaction>>,
    events: Vec<pb::ChangeEvent>,
}

async fn snapshot(
    app: &TestApp,
    ids: &[String],
    idents: &[pb::Identifier],
    events: usize,
) -> Snapshot {
    let mut s = Snapshot {
        profiles: Vec::new(),
        lookups: app.lookup(idents.to_vec()).await,
        merges: Vec::new(),
        history: Vec::new(),
        interactions: Vec::new(),
        events: Vec::new(),
    };
    for id in ids {
        s.profiles.push(app.get(by_id(id)).await);
        s.merges.push(app.list_merges(by_id(id)).await);
        s.history.push(app.history(by_id(id), "").await);
        s.interactions
            .push(app.list_all(list_request(by_id(id), 500)).await);
    }
    let mut stream = app.watch(0).await;
    s.events = next_events(&mut stream, events).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_everything() {
    let mut app = TestApp::spawn().await;
    let idents = vec![
        email("keep@example.com"),
        phone("+15550001234"),
        customer_number("C-77"),
        loyalty_card("LC-77"),
        device("dev-77"),
        external("crm", "77"),
    ];
    let a = app.create(vec![idents[0].clone(), idents[2].clone()]).await;
    let b = app.create(vec![idents[1].clone()]).await;
    let c = app.create(vec![idents[3].clone(), idents[4].clone()]).await;
    let d = app.create(vec![idents[5].clone()]).await;
    let mut events = 4;

    let attrs = pb::ProfileAttributes {
        given_name: Some("Kim".into()),
        birth_date: Some("1990-01-31".into()),
        custom: [("tier".to_string(), string_value("silver"))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    app.update(
        by_id(&a),
        attrs,
        &[
            "attributes.given_name",
            "attributes.birth_date",
            "attributes.custom.tier",
        ],
        app.now(),
    )
    .await;
    let older = pb::ProfileAttributes {
        given_name: Some("Kimberly".into()),
        ..Default::default()
    };
    // Superseded: kept in history only (and no change event).
    app.update(
        by_id(&a),
        older,
        &["attributes.given_name"],
        app.now().plus_secs(-3_600),
    )
    .await;
    events += 1;

    let first = app
        .try_record(
            by_id(&b),
            interaction_at(app.now().plus_secs(-10)),
            "keep-1",
        )
        .await
        .expect("record");
    let batch = pb::RecordInteractionsRequest {
        requests: (0..30)
            .map(|n| pb::RecordInteractionRequest {
                profile: Some(by_id(&c)),
                interaction: Some(interaction_at(app.now().plus_secs(-(n * 60)))),
                request_id: String::new(),
            })
            .collect(),
    };
    app.interactions
        .clone()
        .record_interactions(batch)
        .await
        .expect("batch");
    // One event for `first`, one for the batch: its thirty interactions of one profile are one
    // write, reported once with the version after the last.
    events += 2;

    let m1 = app.merge(vec![by_id(&a), by_id(&b)]).await;
    app.tick();
    let m2 = app.merge(vec![by_id(&c), by_id(&d)]).await;
    app.tick();
    app.unmerge(&m1.merges[0].merge_id).await;
    events += 4;
    assert_eq!(m2.profile_id, c);

    let ids = vec![a.clone(), b.clone(), c.clone(), d.clone()];
    let before = snapshot(&app, &ids, &idents, events).await;
    assert_eq!(before.interactions[2].len(), 30);
    assert_eq!(before.profiles[3].profile_id, c);

    app.restart().await;

    let after = snapshot(&app, &ids, &idents, events).await;
    assert_eq!(after, before, "everything survives the restart");

    // The idempotency key survives: the retry returns the first answer, stores nothing.
    let retry = app
        .try_record(
            by_id(&b),
            interaction_at(app.now().plus_secs(-10)),
            "keep-1",
        )
        .await
        .expect("retry after restart");
    assert_eq!(retry, first);
    assert_eq!(app.interaction_ids(by_id(&b)).await.len(), 1);

    // New writes continue the sequence and the versions.
    let r = app
        .resolve(vec![idents[0].clone(), new_device()], false, false)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Linked);
    assert_eq!(r.profile_id, a);
    assert_eq!(r.version, before.profiles[0].version + 1);
    let mut stream = app.watch(events as u64).await;
    let e = next_event(&mut stream).await;
    assert_eq!(e.sequence, events as u64 + 1);
    assert_eq!(e.profile_id, a);

    // An unmerge after the restart still restores exactly.
    app.unmerge(&m2.merges[0].merge_id).await;
    let d_view = app.get(by_id(&d)).await;
    assert_eq!(d_view.profile_id, d);
    assert_eq!(profile_idents(&d_view), ident_set([&idents[5]]));

    // And a second restart keeps the later writes too.
    let ids_now = snapshot(&app, &ids, &idents, events + 3).await;
    app.restart().await;
    assert_eq!(snapshot(&app, &ids, &idents, events + 3).await, ids_now);
}
