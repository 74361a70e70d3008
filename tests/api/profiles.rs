//! Acceptance 4: reads by profile id, merged-away id and every identifier kind; read_mask;
//! min_version; BatchGetProfiles of 1000 keys answering per key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use customer_profile::service::pb;
use pb::profile_result::Result as KeyResult;
use tonic::Code;

use crate::helpers::*;

const UNKNOWN_ID: &str = "0192f3a4-5b6c-7d8e-9f00-112233445566";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_reads_the_same_profile() {
    let app = TestApp::spawn().await;
    let keys = vec![
        email("every@example.com"),
        phone("+15550008888"),
        customer_number("C-42"),
        loyalty_card("LC-42"),
        device("device-42"),
        external("crm", "CRM-42"),
    ];
    let p = app.create(keys.clone()).await;
    let other = email("other@example.com");
    let q = app.create(vec![other.clone()]).await;
    let m = app.merge(vec![by_id(&q), by_id(&p)]).await;
    assert_eq!(m.profile_id, p);

    let expected = app.get(by_id(&p)).await;
    assert_eq!(expected.profile_id, p);
    assert_eq!(expected.merged_ids, vec![q.clone()]);
    let mut all = keys.clone();
    all.push(other.clone());
    assert_eq!(profile_idents(&expected), ident_set(&all));
    assert!(expected.created_at.is_some() && expected.updated_at.is_some());

    let mut refs = vec![by_id(&q), by_id(&p.to_uppercase())];
    refs.extend(all.iter().cloned().map(by_ident));
    // Identifiers as typed, not in normal form.
    refs.push(by_ident(email(" EVERY@Example.com")));
    refs.push(by_ident(phone("+1 555 000 8888")));
    refs.push(by_ident(customer_number("c-42")));
    for r in refs {
        let got = app.get(r.clone()).await;
        assert_eq!(got, expected, "reading by {r:?}");
    }

    // EXTERNAL identifiers are matched within their namespace only.
    let err = app
        .try_get(by_ident(external("web_cookie", "CRM-42")))
        .await
        .expect_err("other namespace");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .try_get(by_id(UNKNOWN_ID))
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .try_get(by_ident(new_email()))
        .await
        .expect_err("unknown identifier");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

async fn rich_profile(app: &TestApp) -> (String, String) {
    let p = app.create(vec![new_email(), new_device()]).await;
    let q = app.create(vec![new_email()]).await;
    app.merge(vec![by_id(&p), by_id(&q)]).await;
    let a = pb::ProfileAttributes {
        given_name: Some("Ann".into()),
        family_name: Some("Smith".into()),
        birth_date: Some("1980-02-29".into()),
        gender: pb::Gender::Female as i32,
        city: Some("Manchester".into()),
        postcode: Some("M1 1AA".into()),
        country: Some("GB".into()),
        language: Some("en-GB".into()),
        custom: [
            ("tier".to_string(), string_value("gold")),
            ("segment".to_string(), string_value("b2c")),
        ]
        .into_iter()
        .collect(),
    };
    let paths = [
        "attributes.given_name",
        "attributes.family_name",
        "attributes.birth_date",
        "attributes.gender",
        "attributes.city",
        "attributes.postcode",
        "attributes.country",
        "attributes.language",
        "attributes.custom.tier",
        "attributes.custom.segment",
    ];
    let r = app.update(by_id(&p), a.clone(), &paths, app.now()).await;
    assert_eq!(r.applied_paths.len(), paths.len(), "{r:?}");
    assert_eq!(attrs(r.profile.as_ref().expect("profile")), a);
    (p, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_mask_limits_the_fields() {
    let app = TestApp::spawn().await;
    let (p, q) = rich_profile(&app).await;
    let full = app.get(by_id(&p)).await;
    let full_attrs = attrs(&full);
    assert_eq!(full.identifiers.len(), 3);

    let always = |got: &pb::Profile| {
        assert_eq!(got.profile_id, full.profile_id);
        assert_eq!(got.version, full.version);
        assert_eq!(got.created_at, full.created_at);
        assert_eq!(got.updated_at, full.updated_at);
    };

    let got = app
        .try_get_masked(by_id(&p), &["attributes.given_name"], 0)
        .await
        .expect("masked");
    always(&got);
    assert!(got.identifiers.is_empty() && got.merged_ids.is_empty());
    assert_eq!(
        attrs(&got),
        pb::ProfileAttributes {
            given_name: Some("Ann".into()),
            ..Default::default()
        }
    );

    let got = app
        .try_get_masked(
            by_id(&p),
            &["attributes.city", "attributes.gender", "merged_ids"],
            0,
        )
        .await
        .expect("masked");
    always(&got);
    assert!(got.identifiers.is_empty());
    assert_eq!(got.merged_ids, vec![q.clone()]);
    assert_eq!(
        attrs(&got),
        pb::ProfileAttributes {
            city: Some("Manchester".into()),
            gender: pb::Gender::Female as i32,
            ..Default::default()
        }
    );

    let got = app
        .try_get_masked(by_id(&p), &["identifiers"], 0)
        .await
        .expect("masked");
    always(&got);
    assert_eq!(got.identifiers, full.identifiers);
    assert_eq!(attrs(&got), pb::ProfileAttributes::default());
    assert!(got.merged_ids.is_empty());

    let got = app
        .try_get_masked(by_id(&p), &["attributes.custom.tier"], 0)
        .await
        .expect("masked");
    assert_eq!(attrs(&got).custom.len(), 1);
    assert_eq!(custom_string(&got, "tier").as_deref(), Some("gold"));
    assert_eq!(attrs(&got).given_name, None);

    let got = app
        .try_get_masked(by_id(&p), &["attributes.custom"], 0)
        .await
        .expect("masked");
    assert_eq!(attrs(&got).custom, full_attrs.custom);
    assert_eq!(attrs(&got).city, None);

    let got = app
        .try_get_masked(by_id(&p), &["attributes"], 0)
        .await
        .expect("masked");
    assert_eq!(attrs(&got), full_attrs);
    assert!(got.identifiers.is_empty());

    for bad in ["nope", "attributes.shoe_size", "identifierz"] {
        let err = app
            .try_get_masked(by_id(&p), &[bad], 0)
            .await
            .expect_err("unknown path");
        assert_invalid(&err, "read_mask");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_gives_read_your_writes() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let v = app.get(by_id(&p)).await.version;
    let got = app
        .try_get_masked(by_id(&p), &[], v)
        .await
        .expect("reached");
    assert_eq!(got.version, v);
    let err = app
        .try_get_masked(by_id(&p), &[], v + 1)
        .await
        .expect_err("not reached");
    assert_precondition(&err, "VERSION_NOT_REACHED");
    app.record(by_id(&p), interaction_at(app.now())).await;
    let got = app
        .try_get_masked(by_id(&p), &[], v + 1)
        .await
        .expect("reached after a write");
    assert!(got.version > v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_of_1000_keys_answers_per_key_in_order() {
    let app = TestApp::spawn().await;
    let mut profiles = Vec::new();
    for _ in 0..20 {
        let e = new_email();
        let id = app.resolve(vec![e.clone()], true, false).await.profile_id;
        profiles.push((id, e));
    }

    // (key, expected: Ok(profile id) or Err(code))
    let mut keys = Vec::new();
    let mut expected: Vec<Result<String, i32>> = Vec::new();
    for i in 0..1000 {
        let (id, e) = &profiles[i % profiles.len()];
        match i % 6 {
            0 | 1 => {
                keys.push(by_id(id));
                expected.push(Ok(id.clone()));
            }
            2 => {
                keys.push(by_ident(e.clone()));
                expected.push(Ok(id.clone()));
            }
            3 => {
                keys.push(by_id(&format!("0192f3a4-5b6c-7d8e-9f00-{i:012}")));
                expected.push(Err(Code::NotFound as i32));
            }
            4 => {
                keys.push(by_ident(email(&format!("nobody-{i}@example.com"))));
                expected.push(Err(Code::NotFound as i32));
            }
            _ => {
                if i % 2 == 0 {
                    keys.push(by_id("not-a-uuid"));
                } else {
                    keys.push(by_ident(email("no-at-sign")));
                }
                expected.push(Err(Code::InvalidArgument as i32));
            }
        }
    }
    let r = app
        .profiles
        .clone()
        .batch_get_profiles(pb::BatchGetProfilesRequest {
            profiles: keys,
            read_mask: mask(&["identifiers"]),
        })
        .await
        .expect("BatchGetProfiles")
        .into_inner();
    assert_eq!(r.results.len(), 1000);
    for (i, (got, want)) in r.results.iter().zip(&expected).enumerate() {
        match (&got.result, want) {
            (Some(KeyResult::Profile(p)), Ok(id)) => {
                assert_eq!(&p.profile_id, id, "key {i}");
                assert_eq!(p.identifiers.len(), 1, "read_mask applies to key {i}");
            }
            (Some(KeyResult::Error(e)), Err(code)) => {
                assert_eq!(e.code, *code, "key {i}: {e:?}");
                assert!(!e.message.is_empty(), "key {i} explains its error");
            }
            other => panic!("key {i}: expected {want:?}, got {other:?}"),
        }
    }

    let too_many: Vec<_> = (0..1001)
        .map(|i| by_id(&profiles[i % profiles.len()].0))
        .collect();
    let err = app
        .profiles
        .clone()
        .batch_get_profiles(pb::BatchGetProfilesRequest {
            profiles: too_many,
            read_mask: None,
        })
        .await
        .expect_err("1001 keys");
    assert_invalid_prefix(&err, "profiles");
}

/// GetProfile and BatchGetProfiles send the part of a profile that does not depend on the time
/// of the read from bytes kept with the cached profile, and encode only consents and scores
/// anew; a server with the view cache off builds every message for the read. Both must show the
/// same profile, for every read mask: on the read that fills the cache and the one after it,
/// 49 hours later from the same kept bytes with no write in between (a grant has expired, scores
/// have decayed), and after a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_from_kept_bytes_show_what_a_server_without_the_cache_builds_for_every_mask_and_time()
 {
    use crate::rules_helpers::*;
    use customer_profile::domain::time::Duration;
    use pb::{Channel, Purpose};

    let cache_off = Arc::new(AtomicBool::new(false));
    let off = cache_off.clone();
    let mut app = RulesApp::spawn_with(move |c| {
        if off.load(Ordering::SeqCst) {
            c.storage.view_cache_entries = 0;
        }
    })
    .await;
    let p = app.create(vec![new_email(), phone("+15550007777")]).await;
    let other = app.create(vec![new_device()]).await;
    app.update(
        by_id(&p),
        pb::ProfileAttributes {
            given_name: Some("Ada".into()),
            city: Some("Leeds".into()),
            ..Default::default()
        },
        &["attributes.given_name", "attributes.city"],
        app.now(),
    )
    .await;
    let now = app.now();
    let mut buy = inbound(
        Channel::Web,
        "sales",
        "purchase",
        now.minus(Duration::hours(3)),
    );
    buy.amount = Some(pb::Money {
        currency_code: "GBP".into(),
        units: 12,
        nanos: 500_000_000,
    });
    for i in [
        buy,
        case_event(
            "c-1",
            pb::CaseState::Open,
            "complaint",
            now.minus(Duration::hours(2)),
        ),
        outbound(
            Channel::Email,
            Purpose::Marketing,
            "campaign_message",
            "m-1",
            now,
        ),
    ] {
        app.record(by_id(&p), i).await;
    }
    app.grant_until(
        &p,
        Purpose::Marketing,
        Channel::Email,
        now.plus(Duration::days(2)),
    )
    .await;
    app.grant(&p, Purpose::Service, Channel::Unspecified).await;
    app.set_preferences(&p, &[Channel::Email], &[Channel::Post], "en")
        .await;
    app.merge(vec![by_id(&p), by_id(&other)]).await;

    let masks: [&[&str]; 5] = [
        &[],
        &["attributes.city", "summary"],
        &["consents", "preferences"],
        &["identifiers", "merged_ids"],
        &["summary", "consents", "attributes"],
    ];

    // With the cache on: at t0 (the first read of each mask fills the cache), then 49 hours
    // later from the same kept bytes.
    let t0 = app.now();
    let kept_t0 = read_every_mask(&app, &p, &masks).await;
    app.advance(Duration::hours(49));
    let t49 = app.now();
    let kept_t49 = read_every_mask(&app, &p, &masks).await;

    // Built for each read, over the same data at the same times.
    cache_off.store(true, Ordering::SeqCst);
    app.restart().await;
    app.set_time(t0);
    let built_t0 = read_every_mask(&app, &p, &masks).await;
    app.set_time(t49);
    let built_t49 = read_every_mask(&app, &p, &masks).await;
    assert_eq!(kept_t0, built_t0, "at t0");
    assert_eq!(kept_t49, built_t49, "49 hours later");

    // After a write: kept bytes of the new version, then built.
    cache_off.store(false, Ordering::SeqCst);
    app.restart().await;
    app.update(
        by_id(&p),
        pb::ProfileAttributes {
            city: Some("York".into()),
            ..Default::default()
        },
        &["attributes.city"],
        app.now(),
    )
    .await;
    let kept_written = read_every_mask(&app, &p, &masks).await;
    cache_off.store(true, Ordering::SeqCst);
    app.restart().await;
    let built_written = read_every_mask(&app, &p, &masks).await;
    assert_eq!(kept_written, built_written, "after a write");

    // The reads compared show what the test set up, and time changed them.
    let full = |reads: &[Vec<pb::Profile>]| reads[0][0].clone();
    let (first, later, written) = (full(&kept_t0), full(&kept_t49), full(&kept_written));
    for (round, profile) in [
        ("t0", &first),
        ("49 hours later", &later),
        ("after a write", &written),
    ] {
        let summary = profile.summary.clone().expect("summary");
        assert_eq!(summary.lifetime_spend.len(), 1, "{round}");
        assert_eq!(summary.open_cases.len(), 1, "{round}");
        assert_eq!(profile.merged_ids, vec![other.clone()], "{round}");
    }
    let score = |p: &pb::Profile| p.summary.as_ref().and_then(|s| s.engagement);
    assert_ne!(
        score(&later),
        score(&first),
        "scores are evaluated at the read"
    );
    assert_ne!(
        state_of(&later.consents, Purpose::Marketing, Channel::Email),
        state_of(&first.consents, Purpose::Marketing, Channel::Email),
        "the two-day grant has expired"
    );
    assert_ne!(
        written.version, later.version,
        "the write made a new version"
    );
}

/// Every mask's profile read four times, in this order: GetProfile twice, then
/// BatchGetProfiles twice; each read's four must be the same.
async fn read_every_mask(app: &TestApp, p: &str, masks: &[&[&str]]) -> Vec<Vec<pb::Profile>> {
    let mut out = Vec::new();
    for paths in masks {
        let mut reads = Vec::new();
        for _ in 0..2 {
            reads.push(
                app.try_get_masked(by_id(p), paths, 0)
                    .await
                    .expect("GetProfile"),
            );
        }
        for _ in 0..2 {
            let r = app
                .profiles
                .clone()
                .batch_get_profiles(pb::BatchGetProfilesRequest {
                    profiles: vec![by_id(p), by_id(UNKNOWN_ID)],
                    read_mask: mask(paths),
                })
                .await
                .expect("BatchGetProfiles")
                .into_inner();
            let mut results = r.results.into_iter().map(|x| x.result);
            match results.next().flatten() {
                Some(KeyResult::Profile(p)) => reads.push(p),
                other => panic!("BatchGetProfiles answered {other:?}"),
            }
            match results.next().flatten() {
                Some(KeyResult::Error(e)) => {
                    assert_eq!(e.code, Code::NotFound as i32, "{e:?}")
                }
                other => panic!("BatchGetProfiles answered {other:?} for an unknown id"),
            }
        }
        for (i, r) in reads.iter().enumerate() {
            assert_eq!(
                r, &reads[0],
                "mask {paths:?}: read {i} differs from the first"
            );
        }
        out.push(reads);
    }
    out
}
