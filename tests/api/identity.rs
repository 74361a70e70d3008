//! Acceptance 1: Resolve creates, matches, links, merges and reports CONFLICT per SPEC §3, and
//! the identity policies (unique customer number, caps, blocked values) hold.

use customer_profile::service::pb;
use pb::{ConflictReason, IgnoreReason, ResolveOutcome};
use tonic::Code;

use crate::helpers::*;

fn conflict_of(r: &pb::ResolveResponse) -> Vec<(pb::Identifier, i32, String)> {
    r.conflicts
        .iter()
        .map(|c| {
            (
                c.identifier.clone().expect("conflict identifier"),
                c.reason,
                c.owner_profile_id.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_creates_then_matches_then_links() {
    let app = TestApp::spawn().await;
    let a = email("ann@example.com");

    let created = app.resolve(vec![a.clone()], true, false).await;
    assert_eq!(outcome(&created), ResolveOutcome::Created);
    assert!(!created.profile_id.is_empty());
    assert!(
        created.version >= 1,
        "a new profile has a version: {created:?}"
    );
    assert_eq!(ident_set(&created.linked), ident_set([&a]));

    let matched = app.resolve(vec![a.clone()], true, false).await;
    assert_eq!(outcome(&matched), ResolveOutcome::Matched);
    assert_eq!(matched.profile_id, created.profile_id);
    assert_eq!(matched.version, created.version, "MATCHED changes nothing");
    assert!(matched.linked.is_empty());

    let p = phone("+447700900123");
    let linked = app.resolve(vec![a.clone(), p.clone()], false, false).await;
    assert_eq!(outcome(&linked), ResolveOutcome::Linked);
    assert_eq!(linked.profile_id, created.profile_id);
    assert_eq!(ident_set(&linked.linked), ident_set([&p]));
    assert!(linked.version > created.version, "LINKED bumps the version");
    assert_eq!(
        app.owner(p.clone()).await.as_deref(),
        Some(created.profile_id.as_str())
    );

    let view = app.get(by_id(&created.profile_id)).await;
    assert_eq!(profile_idents(&view), ident_set([&a, &p]));
    assert_eq!(view.version, linked.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_without_create_and_no_match_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let mark = app.watermark().await;
    let nobody = new_email();
    let r = app.resolve(vec![nobody.clone()], false, true).await;
    assert_eq!(outcome(&r), ResolveOutcome::NoMatch);
    assert!(r.profile_id.is_empty());
    assert_eq!(r.version, 0);
    assert!(r.linked.is_empty());
    assert_eq!(app.owner(nobody).await, None);
    app.assert_no_changes_since(mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_are_matched_in_normal_form() {
    let app = TestApp::spawn().await;
    let r = app
        .resolve(
            vec![
                email("  Ann.Smith@Example.COM "),
                phone("+44 (7700) 900-123"),
                customer_number(" c-100 "),
                loyalty_card("lc_7"),
            ],
            true,
            false,
        )
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Created);
    assert_eq!(
        ident_set(&r.linked),
        ident_set(&[
            email("ann.smith@example.com"),
            phone("+447700900123"),
            customer_number("C-100"),
            loyalty_card("LC_7"),
        ]),
        "linked identifiers are reported in normal form"
    );
    for typed in [
        email("ANN.SMITH@example.com"),
        phone("+447700900123"),
        customer_number("C-100"),
    ] {
        let again = app.resolve(vec![typed], false, false).await;
        assert_eq!(outcome(&again), ResolveOutcome::Matched);
        assert_eq!(again.profile_id, r.profile_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_identifiers_in_one_request_are_ignored_as_duplicate() {
    let app = TestApp::spawn().await;
    let r = app
        .resolve(
            vec![email("dup@example.com"), email("DUP@example.com")],
            true,
            false,
        )
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Created);
    assert_eq!(r.linked.len(), 1);
    assert_eq!(r.ignored.len(), 1);
    assert_eq!(r.ignored[0].reason, IgnoreReason::Duplicate as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_matches_merge_into_the_oldest_profile() {
    let app = TestApp::spawn().await;
    let (a, b, c) = (
        email("a@example.com"),
        phone("+15550001111"),
        device("dev-c"),
    );
    let pa = app.create(vec![a.clone()]).await;
    let pb_ = app.create(vec![b.clone()]).await;
    let pc = app.create(vec![c.clone()]).await;
    let extra = new_email();

    // Youngest first in the request: the survivor is still the oldest profile.
    let r = app
        .resolve(
            vec![c.clone(), b.clone(), a.clone(), extra.clone()],
            true,
            true,
        )
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Merged, "{r:?}");
    assert_eq!(r.profile_id, pa, "the oldest profile survives");
    let others: std::collections::BTreeSet<_> = r.other_profile_ids.iter().cloned().collect();
    assert_eq!(others, [pb_.clone(), pc.clone()].into_iter().collect());
    assert_eq!(r.merge_ids.len(), 2, "one merge per absorbed profile");
    assert_eq!(ident_set(&r.linked), ident_set([&extra]));

    for id in [a, b, c, extra] {
        assert_eq!(app.owner(id).await.as_deref(), Some(pa.as_str()));
    }
    for key in [&pa, &pb_, &pc] {
        let v = app.get(by_id(key)).await;
        assert_eq!(v.profile_id, pa);
        assert_eq!(
            merged_set(&v),
            [pb_.clone(), pc.clone()].into_iter().collect()
        );
        assert_eq!(v.version, r.version);
    }
    let merges = app.list_merges(by_id(&pa)).await;
    assert_eq!(merges.len(), 2);
    assert!(
        merges
            .iter()
            .all(|m| m.survivor_profile_id == pa && m.unmerged_at.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_not_allowed_is_a_conflict_that_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let (ph, em) = (phone("+15550002222"), email("b@example.com"));
    let pa = app.create(vec![ph.clone()]).await;
    let pb_ = app.create(vec![em.clone()]).await;
    let va = app.get(by_id(&pa)).await.version;
    let vb = app.get(by_id(&pb_)).await.version;
    let mark = app.watermark().await;
    let extra = new_email();

    let r = app
        .resolve(vec![ph.clone(), em.clone(), extra.clone()], true, false)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Conflict, "{r:?}");
    // EMAIL is stronger than PHONE: B (the email's owner) is the primary match.
    assert_eq!(r.profile_id, pb_);
    assert_eq!(r.other_profile_ids, vec![pa.clone()]);
    assert!(r.merge_ids.is_empty());
    assert!(r.linked.is_empty(), "nothing is linked on CONFLICT");
    let conflicts = conflict_of(&r);
    assert!(
        conflicts.iter().any(|(i, reason, owner)| *i == ph
            && *reason == ConflictReason::MergeNotAllowed as i32
            && *owner == pa),
        "{conflicts:?}"
    );
    assert!(
        conflicts
            .iter()
            .all(|(_, reason, _)| *reason == ConflictReason::MergeNotAllowed as i32)
    );

    assert_eq!(
        app.owner(extra).await,
        None,
        "the new identifier was not linked"
    );
    assert_eq!(app.get(by_id(&pa)).await.version, va);
    assert_eq!(app.get(by_id(&pb_)).await.version, vb);
    assert_eq!(app.get(by_id(&pa)).await.profile_id, pa);
    assert_eq!(app.get(by_id(&pb_)).await.profile_id, pb_);
    app.assert_no_changes_since(mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_customer_numbers_are_never_merged() {
    let mut app = TestApp::spawn().await;
    let (ea, cn_a) = (email("a@example.com"), customer_number("C-1"));
    let (pb_phone, cn_b) = (phone("+15550003333"), customer_number("C-2"));
    let pa = app.create(vec![ea.clone(), cn_a.clone()]).await;
    let pb_ = app.create(vec![pb_phone.clone(), cn_b.clone()]).await;
    let mark = app.watermark().await;
    let extra = new_email();

    // The email (A) comes first, but CUSTOMER_NUMBER (B) is the strongest identifier.
    let r = app
        .resolve(vec![ea.clone(), cn_b.clone(), extra.clone()], true, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Conflict, "{r:?}");
    assert_eq!(
        r.profile_id, pb_,
        "primary = owner of the strongest identifier"
    );
    assert_eq!(r.other_profile_ids, vec![pa.clone()]);
    assert!(r.merge_ids.is_empty() && r.linked.is_empty());
    let conflicts = conflict_of(&r);
    assert!(!conflicts.is_empty());
    assert!(
        conflicts
            .iter()
            .all(|(_, reason, _)| *reason == ConflictReason::CustomerNumberConflict as i32),
        "{conflicts:?}"
    );
    assert!(
        conflicts
            .iter()
            .any(|(i, _, owner)| *i == ea && *owner == pa)
    );
    app.assert_no_changes_since(mark).await;

    // Nor by MergeProfiles.
    let err = app
        .try_merge(vec![by_id(&pa), by_id(&pb_)])
        .await
        .expect_err("merge must be refused");
    assert_precondition(&err, "CUSTOMER_NUMBER_CONFLICT");

    assert_eq!(app.owner(ea).await.as_deref(), Some(pa.as_str()));
    assert_eq!(app.owner(cn_b).await.as_deref(), Some(pb_.as_str()));
    assert_eq!(app.owner(extra).await, None);
    assert!(app.get(by_id(&pa)).await.merged_ids.is_empty());
    assert!(app.get(by_id(&pb_)).await.merged_ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_primary_follows_strength_order() {
    let app = TestApp::spawn().await;
    // Strongest first: CUSTOMER_NUMBER > LOYALTY_CARD > EMAIL > PHONE > EXTERNAL > DEVICE_ID.
    let order = [
        customer_number("CN-1"),
        loyalty_card("LC-1"),
        email("s@example.com"),
        phone("+15550004444"),
        external("crm", "X-1"),
        device("dev-1"),
    ];
    let mut owners = Vec::new();
    for id in &order {
        owners.push(app.create(vec![id.clone()]).await);
    }
    for i in 0..order.len() - 1 {
        // Weaker identifier first, so request order cannot explain the answer.
        let r = app
            .resolve(vec![order[i + 1].clone(), order[i].clone()], false, false)
            .await;
        assert_eq!(outcome(&r), ResolveOutcome::Conflict, "{r:?}");
        assert_eq!(
            r.profile_id,
            owners[i],
            "primary for {:?} vs {:?}",
            order[i],
            order[i + 1]
        );
        assert_eq!(r.other_profile_ids, vec![owners[i + 1].clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_email_never_links_and_never_merges() {
    let till = "till@shop.example";
    let app = TestApp::spawn_with(move |c| c.identity.blocked.email = vec![till.to_string()]).await;
    let blocked_typed = email(" TILL@Shop.Example ");
    let blocked = email(till);
    let a = new_email();

    let r = app
        .resolve(vec![blocked_typed.clone(), a.clone()], true, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Created);
    assert_eq!(
        ident_set(&r.linked),
        ident_set([&a]),
        "the blocked value is not linked"
    );
    assert_eq!(r.ignored.len(), 1, "{r:?}");
    assert_eq!(r.ignored[0].reason, IgnoreReason::Blocked as i32);
    assert_eq!(
        r.ignored[0].identifier.as_ref().map(|i| i.value.as_str()),
        Some(till)
    );
    let pa = r.profile_id;
    assert_eq!(app.owner(blocked.clone()).await, None);
    app.tick();

    // Another customer gives the same till email: no merge, no link.
    let p = phone("+15550005555");
    let pb_ = app.create(vec![p.clone()]).await;
    let r = app
        .resolve(vec![blocked.clone(), p.clone()], true, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Matched, "{r:?}");
    assert_eq!(r.profile_id, pb_);
    assert!(r.other_profile_ids.is_empty() && r.merge_ids.is_empty());
    assert_eq!(
        r.ignored.first().map(|i| i.reason),
        Some(IgnoreReason::Blocked as i32)
    );
    assert_eq!(app.get(by_id(&pa)).await.profile_id, pa);
    assert!(app.get(by_id(&pb_)).await.merged_ids.is_empty());
    assert_eq!(app.owner(blocked.clone()).await, None);

    // Only the blocked value: nothing is created.
    let r = app.resolve(vec![blocked.clone()], true, true).await;
    assert_eq!(outcome(&r), ResolveOutcome::NoMatch, "{r:?}");
    assert_eq!(app.owner(blocked.clone()).await, None);

    let err = app
        .try_link(by_id(&pa), blocked.clone())
        .await
        .expect_err("blocked value linked");
    assert_precondition(&err, "IDENTIFIER_BLOCKED");
    assert_eq!(app.owner(blocked).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_email_is_a_cap_conflict_not_silently_dropped() {
    let app = TestApp::spawn().await;
    let emails: Vec<_> = (0..11)
        .map(|i| email(&format!("e{i}@example.com")))
        .collect();

    // Eleven on creation: ten linked, the eleventh reported.
    let r = app.resolve(emails.clone(), true, false).await;
    assert_eq!(outcome(&r), ResolveOutcome::Created);
    assert_eq!(r.linked.len(), 10, "{r:?}");
    let conflicts = conflict_of(&r);
    assert_eq!(conflicts.len(), 1, "{r:?}");
    assert_eq!(conflicts[0].1, ConflictReason::IdentifierCapReached as i32);
    let refused = conflicts[0].0.clone();
    assert_eq!(
        refused, emails[10],
        "identifiers are admitted in request order"
    );
    assert_eq!(app.owner(refused.clone()).await, None);
    let pid = r.profile_id.clone();
    assert_eq!(app.get(by_id(&pid)).await.identifiers.len(), 10);

    // Adding an eleventh to a full profile: MATCHED with the conflict.
    let r = app
        .resolve(
            vec![emails[0].clone(), email("more@example.com")],
            true,
            true,
        )
        .await;
    assert_eq!(
        outcome(&r),
        ResolveOutcome::Matched,
        "nothing could be added, so MATCHED: {r:?}"
    );
    assert_eq!(r.profile_id, pid);
    let conflicts = conflict_of(&r);
    assert_eq!(conflicts.len(), 1, "{r:?}");
    assert_eq!(conflicts[0].0, email("more@example.com"));
    assert_eq!(conflicts[0].1, ConflictReason::IdentifierCapReached as i32);
    assert_eq!(app.owner(email("more@example.com")).await, None);

    let err = app
        .try_link(by_id(&pid), email("more@example.com"))
        .await
        .expect_err("over the cap");
    assert_precondition(&err, "IDENTIFIER_CAP_REACHED");
    assert_eq!(app.get(by_id(&pid)).await.identifiers.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_email_cap_applies() {
    let app = TestApp::spawn_with(|c| c.identity.caps.email = 2).await;
    let r = app
        .resolve(vec![new_email(), new_email(), new_email()], true, false)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Created);
    assert_eq!(r.linked.len(), 2);
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(
        r.conflicts[0].reason,
        ConflictReason::IdentifierCapReached as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_customer_number_is_refused() {
    let app = TestApp::spawn().await;
    let a = new_email();
    let pid = app.create(vec![a.clone(), customer_number("C-1")]).await;
    let r = app
        .resolve(vec![a.clone(), customer_number("C-9")], true, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Matched, "{r:?}");
    assert_eq!(r.profile_id, pid);
    let conflicts = conflict_of(&r);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].0, customer_number("C-9"));
    assert_eq!(
        conflicts[0].1,
        ConflictReason::CustomerNumberAlreadySet as i32
    );
    assert_eq!(app.owner(customer_number("C-9")).await, None);

    let err = app
        .try_link(by_id(&pid), customer_number("C-8"))
        .await
        .expect_err("second customer number");
    assert_precondition(&err, "CUSTOMER_NUMBER_ALREADY_SET");
    assert_eq!(app.owner(customer_number("C-8")).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_identifier_refuses_an_identifier_owned_elsewhere() {
    let app = TestApp::spawn().await;
    let (a, b) = (new_email(), new_email());
    let pa = app.create(vec![a.clone()]).await;
    let pb_ = app.create(vec![b.clone()]).await;
    let err = app
        .try_link(by_id(&pa), b.clone())
        .await
        .expect_err("owned by B");
    assert_precondition(&err, "IDENTIFIER_OWNED_BY_OTHER_PROFILE");
    assert_eq!(app.owner(b.clone()).await.as_deref(), Some(pb_.as_str()));

    // Linking what the profile already holds changes nothing.
    let v = app.get(by_id(&pa)).await.version;
    let same = app
        .try_link(by_id(&pa), a)
        .await
        .expect("relink own identifier");
    assert!(!same.linked);
    assert_eq!(same.version, v);

    let p = phone("+15550006666");
    let linked = app
        .try_link(by_ident(b), p.clone())
        .await
        .expect("link by identifier ref");
    assert!(linked.linked);
    assert_eq!(linked.profile_id, pb_);
    assert_eq!(app.owner(p).await.as_deref(), Some(pb_.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_and_unmerge_errors() {
    let app = TestApp::spawn().await;
    let pa = app.create(vec![new_email()]).await;
    let pb_ = app.create(vec![new_email()]).await;
    let m = app.merge(vec![by_id(&pb_), by_id(&pa)]).await;
    assert_eq!(m.profile_id, pa, "MergeProfiles keeps the oldest");
    assert_eq!(m.merges.len(), 1);
    assert_eq!(m.merges[0].absorbed_profile_id, pb_);

    let err = app
        .try_merge(vec![by_id(&pa), by_id(&pb_)])
        .await
        .expect_err("already one");
    assert_precondition(&err, "ALREADY_MERGED");

    let unknown = "0192f3a4-5b6c-7d8e-9f00-112233445566";
    let err = app.try_unmerge(unknown).await.expect_err("unknown merge");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let u = app.unmerge(&m.merges[0].merge_id).await;
    assert_eq!(u.restored_profile_id, pb_);
    assert_eq!(u.survivor_profile_id, pa);
    assert!(
        u.merge
            .as_ref()
            .and_then(|m| m.unmerged_at.as_ref())
            .is_some()
    );
    let err = app
        .try_unmerge(&m.merges[0].merge_id)
        .await
        .expect_err("twice");
    assert_precondition(&err, "ALREADY_UNMERGED");
    assert_eq!(app.get(by_id(&pb_)).await.profile_id, pb_);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_over_the_cap_is_refused() {
    let app = TestApp::spawn().await;
    let a: Vec<_> = (0..6).map(|_| new_email()).collect();
    let b: Vec<_> = (0..5).map(|_| new_email()).collect();
    let pa = app.create(a.clone()).await;
    let pb_ = app.create(b.clone()).await;
    let err = app
        .try_merge(vec![by_id(&pa), by_id(&pb_)])
        .await
        .expect_err("11 emails");
    assert_precondition(&err, "IDENTIFIER_CAP_REACHED");
    assert_eq!(app.get(by_id(&pb_)).await.profile_id, pb_);

    // Resolve does not merge them either.
    let r = app
        .resolve(vec![a[0].clone(), b[0].clone()], true, true)
        .await;
    assert_eq!(outcome(&r), ResolveOutcome::Conflict, "{r:?}");
    assert_eq!(app.owner(b[0].clone()).await.as_deref(), Some(pb_.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_with_the_same_request_id_returns_the_first_answer() {
    let app = TestApp::spawn().await;
    let req = pb::ResolveRequest {
        identifiers: vec![new_email()],
        create_if_missing: true,
        allow_merge: false,
        source: "test".into(),
        request_id: "resolve-once".into(),
    };
    let first = app
        .identity
        .clone()
        .resolve(req.clone())
        .await
        .expect("first")
        .into_inner();
    let again = app
        .identity
        .clone()
        .resolve(req)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(outcome(&first), ResolveOutcome::Created);
    assert_eq!(first, again, "a retry returns the first response");
}

/// A Resolve that only finds the customer writes nothing of its own, but with a request_id its
/// answer is kept like any write's: the retry after the profile moved on (a new version) still
/// returns the first answer, and a Resolve without one sees the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_matching_resolve_returns_the_first_answer_after_the_profile_changed() {
    let app = TestApp::spawn().await;
    let e = new_email();
    let id = app.create(vec![e.clone()]).await;
    let req = pb::ResolveRequest {
        identifiers: vec![e.clone()],
        create_if_missing: true,
        allow_merge: false,
        source: "test".into(),
        request_id: "resolve-match-once".into(),
    };
    let first = app
        .identity
        .clone()
        .resolve(req.clone())
        .await
        .expect("first")
        .into_inner();
    assert_eq!(outcome(&first), ResolveOutcome::Matched, "{first:?}");
    assert_eq!(first.profile_id, id);
    let updated = app
        .update(
            by_id(&id),
            pb::ProfileAttributes {
                given_name: Some("Ada".into()),
                ..Default::default()
            },
            &["attributes.given_name"],
            app.now(),
        )
        .await;
    let new_version = updated.profile.expect("the updated profile").version;
    assert!(new_version > first.version, "{new_version} after {first:?}");
    let again = app
        .identity
        .clone()
        .resolve(req.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again, "a retry returns the first response");
    let fresh = app
        .identity
        .clone()
        .resolve(pb::ResolveRequest {
            request_id: String::new(),
            ..req
        })
        .await
        .expect("without a request_id")
        .into_inner();
    assert_eq!(fresh.version, new_version, "{fresh:?}");
}
