//! Acceptance 3 (scenario): merge A+B, merge the result with C, then undo the first merge.
//! Each profile must look exactly as if the undone merge had never happened.

use std::collections::BTreeSet;

use customer_profile::domain::time::Timestamp;
use customer_profile::service::pb;
use pb::ResolveOutcome;

use crate::helpers::*;

const DAY: i64 = 86_400;

fn at(app: &TestApp, secs_ago: i64) -> Timestamp {
    app.now().plus_secs(-secs_ago)
}

fn given(v: &str) -> pb::ProfileAttributes {
    pb::ProfileAttributes {
        given_name: Some(v.into()),
        ..Default::default()
    }
}

fn city(v: &str) -> pb::ProfileAttributes {
    pb::ProfileAttributes {
        city: Some(v.into()),
        ..Default::default()
    }
}

/// A profile's view without the fields that legitimately move (version, updated_at).
#[derive(Debug, PartialEq)]
struct Seen {
    profile_id: String,
    merged: BTreeSet<String>,
    identifiers: BTreeSet<(i32, String, String)>,
    attributes: pb::ProfileAttributes,
    provenance: Vec<(String, String, Option<prost_types::Timestamp>)>,
    interactions: Vec<String>,
}

async fn seen(app: &TestApp, id: &str) -> Seen {
    let p = app.get(by_id(id)).await;
    let mut provenance: Vec<_> = p
        .attribute_provenance
        .iter()
        .map(|(k, v)| (k.clone(), v.source.clone(), v.observed_at))
        .collect();
    provenance.sort_by(|a, b| a.0.cmp(&b.0));
    Seen {
        profile_id: p.profile_id.clone(),
        merged: merged_set(&p),
        identifiers: profile_idents(&p),
        attributes: attrs(&p),
        provenance,
        interactions: app.interaction_ids(by_id(id)).await,
    }
}

struct Three {
    a: String,
    b: String,
    c: String,
    ea: pb::Identifier,
    pb_: pb::Identifier,
    lc: pb::Identifier,
}

/// A, B and C with their own identifiers, attributes and interactions.
async fn three_profiles(app: &TestApp) -> Three {
    let (ea, pb_, lc) = (
        email("a@example.com"),
        phone("+15550007777"),
        loyalty_card("LC-C"),
    );
    let a = app.create(vec![ea.clone()]).await;
    let b = app.create(vec![pb_.clone()]).await;
    let c = app.create(vec![lc.clone()]).await;

    app.update(
        by_id(&a),
        given("Ann"),
        &["attributes.given_name"],
        at(app, 3 * DAY),
    )
    .await;
    app.update(by_id(&a), city("Leeds"), &["attributes.city"], at(app, DAY))
        .await;
    // B's name was observed later than A's: it wins while they are merged.
    app.update(
        by_id(&b),
        given("Anna"),
        &["attributes.given_name"],
        at(app, DAY),
    )
    .await;
    let tier = pb::ProfileAttributes {
        custom: [("tier".to_string(), string_value("gold"))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    app.update(by_id(&b), tier, &["attributes.custom.tier"], at(app, DAY))
        .await;
    // C's city is older than A's: A's wins while they are merged.
    app.update(
        by_id(&c),
        city("York"),
        &["attributes.city"],
        at(app, 2 * DAY),
    )
    .await;
    let family = pb::ProfileAttributes {
        family_name: Some("Smith".into()),
        ..Default::default()
    };
    app.update(
        by_id(&c),
        family,
        &["attributes.family_name"],
        at(app, 2 * DAY),
    )
    .await;

    app.record(by_id(&a), interaction_at(at(app, 50))).await;
    app.record(by_id(&b), interaction_at(at(app, 40))).await;
    app.record(by_id(&c), interaction_at(at(app, 30))).await;
    app.tick();
    Three {
        a,
        b,
        c,
        ea,
        pb_,
        lc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerging_the_first_of_two_merges_restores_exact_views() {
    let app = TestApp::spawn().await;
    let t = three_profiles(&app).await;
    let a0 = seen(&app, &t.a).await;
    let b0 = seen(&app, &t.b).await;
    let c0 = seen(&app, &t.c).await;
    assert_eq!(a0.interactions.len(), 1);

    // Merge A+B.
    let m1 = app.merge(vec![by_id(&t.b), by_id(&t.a)]).await;
    assert_eq!(m1.profile_id, t.a);
    let m1_id = m1.merges[0].merge_id.clone();
    let ab = seen(&app, &t.b).await;
    assert_eq!(ab.profile_id, t.a);
    assert_eq!(ab.merged, [t.b.clone()].into_iter().collect());
    assert_eq!(ab.identifiers, ident_set([&t.ea, &t.pb_]));
    assert_eq!(
        ab.attributes.given_name.as_deref(),
        Some("Anna"),
        "newest observation wins across the merge"
    );
    assert_eq!(ab.attributes.city.as_deref(), Some("Leeds"));
    assert_eq!(ab.interactions.len(), 2);

    // Writes to the merged profile after the merge (one through B's merged-away id, one
    // through B's phone) belong to the survivor and stay there after the unmerge.
    app.tick();
    let late = app.record(by_id(&t.b), interaction_at(at(&app, 20))).await;
    assert_eq!(
        late.interaction.as_ref().map(|i| i.profile_id.as_str()),
        Some(t.a.as_str())
    );
    let late_id = late.interaction.expect("interaction").interaction_id;
    let postcode = pb::ProfileAttributes {
        postcode: Some("LS1 1AA".into()),
        ..Default::default()
    };
    app.update(
        by_ident(t.pb_.clone()),
        postcode,
        &["attributes.postcode"],
        app.now(),
    )
    .await;

    // Merge with C, through Resolve.
    app.tick();
    let r = app
        .resolve(vec![t.lc.clone(), t.ea.clone()], false, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Merged);
    assert_eq!(r.profile_id, t.a);
    assert_eq!(r.other_profile_ids, vec![t.c.clone()]);
    let abc = seen(&app, &t.c).await;
    assert_eq!(abc.merged, [t.b.clone(), t.c.clone()].into_iter().collect());
    assert_eq!(abc.identifiers, ident_set([&t.ea, &t.pb_, &t.lc]));
    assert_eq!(abc.interactions.len(), 4);

    // Undo the first merge.
    app.tick();
    let before = app.get(by_id(&t.b)).await.version;
    let u = app.unmerge(&m1_id).await;
    assert_eq!(u.restored_profile_id, t.b);
    assert_eq!(u.survivor_profile_id, t.a);
    assert!(
        u.restored_version > before,
        "versions never go back for any id"
    );

    // B: exactly as before any merge.
    let b1 = seen(&app, &t.b).await;
    assert_eq!(b1, b0, "B is back as it was");

    // A: A + C + what was written to the merged profile after the first merge.
    let a1 = seen(&app, &t.a).await;
    assert_eq!(a1.profile_id, t.a);
    assert_eq!(a1.merged, [t.c.clone()].into_iter().collect());
    assert_eq!(a1.identifiers, ident_set([&t.ea, &t.lc]));
    let expect_attrs = pb::ProfileAttributes {
        given_name: Some("Ann".into()),
        family_name: Some("Smith".into()),
        city: Some("Leeds".into()),
        postcode: Some("LS1 1AA".into()),
        ..Default::default()
    };
    assert_eq!(a1.attributes, expect_attrs);
    let mut expect_ids: Vec<String> = a0
        .interactions
        .iter()
        .chain(&c0.interactions)
        .cloned()
        .collect();
    expect_ids.push(late_id.clone());
    assert_eq!(
        a1.interactions.iter().cloned().collect::<BTreeSet<_>>(),
        expect_ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(a1.interactions.len(), 3);
    // Newest occurred_at first: late (20 s ago at its time), C (30 s), A (50 s).
    assert_eq!(a1.interactions[0], late_id);
    assert_eq!(a1.interactions[1], c0.interactions[0]);
    assert_eq!(a1.interactions[2], a0.interactions[0]);

    // C still reads as A.
    let c1 = seen(&app, &t.c).await;
    assert_eq!(c1.profile_id, t.a);
    assert_eq!(c1.identifiers, a1.identifiers);

    // Lookups follow.
    assert_eq!(
        app.owner(t.pb_.clone()).await.as_deref(),
        Some(t.b.as_str())
    );
    assert_eq!(app.owner(t.ea.clone()).await.as_deref(), Some(t.a.as_str()));
    assert_eq!(app.owner(t.lc.clone()).await.as_deref(), Some(t.a.as_str()));

    // Both merges are listed, the first one undone.
    let merges = app.list_merges(by_id(&t.a)).await;
    let first = merges
        .iter()
        .find(|m| m.merge_id == m1_id)
        .expect("first merge listed");
    assert!(first.unmerged_at.is_some());
    assert_eq!(merges.iter().filter(|m| m.unmerged_at.is_none()).count(), 1);

    // Undoing the second merge too brings back C exactly.
    let m2_id = r.merge_ids[0].clone();
    app.unmerge(&m2_id).await;
    assert_eq!(seen(&app, &t.c).await, c0);
    let a2 = seen(&app, &t.a).await;
    assert_eq!(a2.identifiers, a0.identifiers);
    assert!(a2.merged.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerging_the_later_merge_first_also_restores_exact_views() {
    let app = TestApp::spawn().await;
    let t = three_profiles(&app).await;
    let b0 = seen(&app, &t.b).await;
    let c0 = seen(&app, &t.c).await;

    let m1 = app.merge(vec![by_id(&t.a), by_id(&t.b)]).await.merges[0]
        .merge_id
        .clone();
    app.tick();
    let m2 = app.merge(vec![by_id(&t.c), by_id(&t.b)]).await;
    assert_eq!(m2.profile_id, t.a, "C merges into A's tree");
    let m2 = m2.merges[0].merge_id.clone();

    app.unmerge(&m2).await;
    assert_eq!(seen(&app, &t.c).await, c0, "C is back as it was");
    let ab = seen(&app, &t.a).await;
    assert_eq!(ab.merged, [t.b.clone()].into_iter().collect());
    assert_eq!(ab.identifiers, ident_set([&t.ea, &t.pb_]));

    app.unmerge(&m1).await;
    assert_eq!(seen(&app, &t.b).await, b0, "B is back as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerge_keeps_a_subtree_together() {
    // B absorbs C first; then A absorbs B. Undoing A<-B restores B with C inside.
    let app = TestApp::spawn().await;
    let t = three_profiles(&app).await;
    let m_bc = app.merge(vec![by_id(&t.b), by_id(&t.c)]).await;
    assert_eq!(m_bc.profile_id, t.b);
    app.tick();
    let m_ab = app.merge(vec![by_id(&t.a), by_id(&t.c)]).await;
    assert_eq!(m_ab.profile_id, t.a);
    let all = seen(&app, &t.c).await;
    assert_eq!(all.merged, [t.b.clone(), t.c.clone()].into_iter().collect());

    app.unmerge(&m_ab.merges[0].merge_id).await;
    let b = seen(&app, &t.b).await;
    assert_eq!(b.profile_id, t.b);
    assert_eq!(b.merged, [t.c.clone()].into_iter().collect());
    assert_eq!(b.identifiers, ident_set([&t.pb_, &t.lc]));
    assert_eq!(seen(&app, &t.c).await.profile_id, t.b);
    let a = seen(&app, &t.a).await;
    assert!(a.merged.is_empty());
    assert_eq!(a.identifiers, ident_set([&t.ea]));
}
