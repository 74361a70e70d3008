//! Acceptance 5: recent supersedes older (kept in history), clears, and optimistic concurrency.

use customer_profile::domain::time::Timestamp;
use customer_profile::service::pb;
use tonic::Code;

use crate::helpers::*;

const DAY: i64 = 86_400;

fn given(v: &str) -> pb::ProfileAttributes {
    pb::ProfileAttributes {
        given_name: Some(v.into()),
        ..Default::default()
    }
}

fn text(v: &Option<pb::Value>) -> Option<String> {
    match v.as_ref().and_then(|v| v.kind.clone()) {
        Some(pb::value::Kind::StringValue(s)) => Some(s),
        None => None,
        Some(other) => panic!("not a string: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_observation_is_kept_in_history_but_does_not_win() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let newer = app.now().plus_secs(-DAY);
    let older = app.now().plus_secs(-3 * DAY);

    let r = app
        .update(by_id(&p), given("Ann"), &["attributes.given_name"], newer)
        .await;
    assert!(names_path(&r.applied_paths, "given_name"), "{r:?}");
    assert!(r.superseded_paths.is_empty());
    let v1 = r.profile.as_ref().expect("profile").version;
    app.tick();

    let r = app
        .update(by_id(&p), given("Annie"), &["attributes.given_name"], older)
        .await;
    assert!(names_path(&r.superseded_paths, "given_name"), "{r:?}");
    assert!(!names_path(&r.applied_paths, "given_name"), "{r:?}");
    let view = app.get(by_id(&p)).await;
    assert_eq!(
        attrs(&view).given_name.as_deref(),
        Some("Ann"),
        "the newer observation stays"
    );
    let prov = view
        .attribute_provenance
        .get("given_name")
        .expect("provenance of given_name");
    assert_eq!(prov.observed_at.map(|t| from_ts(&t)), Some(newer));
    assert_eq!(prov.source, "test");
    assert!(view.version >= v1);

    let h = app.history(by_id(&p), "given_name").await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(text(&h[0].new_value).as_deref(), Some("Ann"));
    assert!(h[0].applied);
    assert_eq!(text(&h[0].old_value), None);
    assert_eq!(h[0].observed_at.map(|t| from_ts(&t)), Some(newer));
    assert_eq!(text(&h[1].new_value).as_deref(), Some("Annie"));
    assert!(
        !h[1].applied,
        "the older observation is recorded as not applied"
    );
    assert_eq!(h[1].observed_at.map(|t| from_ts(&t)), Some(older));
    assert_eq!(h[1].origin_profile_id, p);
    assert!(h[0].recorded_at.is_some() && h[1].recorded_at.is_some());
    assert!(
        from_ts(&h[1].recorded_at.expect("recorded_at"))
            > from_ts(&h[0].recorded_at.expect("recorded_at"))
    );

    // A yet newer observation wins again, and shows the old value.
    app.tick();
    let r = app
        .update(
            by_id(&p),
            given("Anne"),
            &["attributes.given_name"],
            app.now(),
        )
        .await;
    assert!(names_path(&r.applied_paths, "given_name"));
    assert_eq!(
        attrs(&app.get(by_id(&p)).await).given_name.as_deref(),
        Some("Anne")
    );
    let h = app.history(by_id(&p), "").await;
    assert_eq!(h.len(), 3);
    assert_eq!(text(&h[2].old_value).as_deref(), Some("Ann"));
    assert_eq!(text(&h[2].new_value).as_deref(), Some("Anne"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_observation_times_go_to_the_newest_write() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let t = app.now().plus_secs(-60);
    app.update(by_id(&p), given("First"), &["attributes.given_name"], t)
        .await;
    app.tick();
    let r = app
        .update(by_id(&p), given("Second"), &["attributes.given_name"], t)
        .await;
    assert!(names_path(&r.applied_paths, "given_name"), "{r:?}");
    assert_eq!(
        attrs(&app.get(by_id(&p)).await).given_name.as_deref(),
        Some("Second")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_version_mismatch_is_aborted_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    app.update(
        by_id(&p),
        given("Ann"),
        &["attributes.given_name"],
        app.now(),
    )
    .await;
    let before = app.get(by_id(&p)).await;
    let history_before = app.history(by_id(&p), "").await;
    let mark = app.watermark().await;

    app.tick();
    for stale in [before.version - 1, before.version + 1] {
        let mut req = update_request(
            by_id(&p),
            given("Bob"),
            &["attributes.given_name"],
            app.now(),
        );
        req.expected_version = stale;
        let err = app.try_update(req).await.expect_err("version mismatch");
        assert_eq!(err.code(), Code::Aborted, "{err:?}");
    }
    let mut after = app.get(by_id(&p)).await;
    // Scores are evaluated at the time of each read; everything stored must be unchanged.
    after.summary = before.summary.clone();
    assert_eq!(after, before, "nothing written: same version, same value");
    assert_eq!(app.history(by_id(&p), "").await, history_before);
    app.assert_no_changes_since(mark).await;

    let mut req = update_request(
        by_id(&p),
        given("Bob"),
        &["attributes.given_name"],
        app.now(),
    );
    req.expected_version = before.version;
    let r = app.try_update(req).await.expect("matching version");
    let after = r.profile.expect("profile");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(attrs(&after).given_name.as_deref(), Some("Bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_path_without_a_value_clears_it() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let set = pb::ProfileAttributes {
        city: Some("Leeds".into()),
        given_name: Some("Ann".into()),
        custom: [("tier".to_string(), string_value("gold"))]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    app.update(
        by_id(&p),
        set,
        &[
            "attributes.city",
            "attributes.given_name",
            "attributes.custom.tier",
        ],
        app.now(),
    )
    .await;
    app.tick();
    let r = app
        .update(
            by_id(&p),
            pb::ProfileAttributes::default(),
            &["attributes.city", "attributes.custom.tier"],
            app.now(),
        )
        .await;
    assert!(names_path(&r.applied_paths, "city"), "{r:?}");
    let view = app.get(by_id(&p)).await;
    assert_eq!(attrs(&view).city, None);
    assert_eq!(custom_string(&view, "tier"), None);
    assert_eq!(
        attrs(&view).given_name.as_deref(),
        Some("Ann"),
        "paths outside the mask are untouched"
    );
    let h = app.history(by_id(&p), "city").await;
    assert_eq!(h.len(), 2);
    assert_eq!(text(&h[1].old_value).as_deref(), Some("Leeds"));
    assert_eq!(text(&h[1].new_value), None);
}

async fn pair_with_names(
    app: &TestApp,
    older_obs: Timestamp,
    newer_obs: Timestamp,
) -> (String, String) {
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    app.update(
        by_id(&a),
        given("from-a"),
        &["attributes.given_name"],
        older_obs,
    )
    .await;
    app.update(
        by_id(&b),
        given("from-b"),
        &["attributes.given_name"],
        newer_obs,
    )
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_merge_the_newest_observation_wins() {
    let app = TestApp::spawn().await;
    let (t1, t2) = (app.now().plus_secs(-2 * DAY), app.now().plus_secs(-DAY));

    // The absorbed profile's value is newer: it wins.
    let (a, b) = pair_with_names(&app, t1, t2).await;
    app.merge(vec![by_id(&a), by_id(&b)]).await;
    let v = app.get(by_id(&a)).await;
    assert_eq!(v.profile_id, a);
    assert_eq!(attrs(&v).given_name.as_deref(), Some("from-b"));

    // The survivor's value is newer: it wins.
    let (c, d) = pair_with_names(&app, t2, t1).await;
    app.merge(vec![by_id(&d), by_id(&c)]).await;
    let v = app.get(by_id(&d)).await;
    assert_eq!(v.profile_id, c);
    assert_eq!(attrs(&v).given_name.as_deref(), Some("from-a"));

    // An update to the merged profile older than the absorbed side's value is superseded.
    let r = app
        .update(
            by_id(&a),
            given("late"),
            &["attributes.given_name"],
            t1.plus_secs(10),
        )
        .await;
    assert!(names_path(&r.superseded_paths, "given_name"), "{r:?}");
    assert_eq!(
        attrs(&app.get(by_id(&a)).await).given_name.as_deref(),
        Some("from-b")
    );
}
