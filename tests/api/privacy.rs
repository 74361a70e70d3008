//! ExportCustomer and EraseCustomer over real gRPC.

use customer_profile::service::pb;
use pb::privacy_service_client::PrivacyServiceClient;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::helpers::*;

async fn privacy(app: &TestApp) -> PrivacyServiceClient<tonic::transport::Channel> {
    let ch = Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    PrivacyServiceClient::new(ch)
}

fn named(given: &str, city: &str) -> pb::ProfileAttributes {
    pb::ProfileAttributes {
        given_name: Some(given.into()),
        city: Some(city.into()),
        ..Default::default()
    }
}

async fn export(
    client: &mut PrivacyServiceClient<tonic::transport::Channel>,
    profile: pb::ProfileRef,
) -> Result<Vec<pb::ExportCustomerResponse>, tonic::Status> {
    let mut stream = client
        .export_customer(pb::ExportCustomerRequest {
            profile: Some(profile),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// A customer made of two merged profiles with identifiers, attributes, history, an
/// interaction and a consent record. Returns (survivor id, absorbed id).
async fn customer(app: &TestApp) -> (String, String) {
    let a = app
        .create(vec![email("zelda.q@example.com"), phone("+447700900555")])
        .await;
    app.tick();
    let b = app.create(vec![email("z.quartermain@example.net")]).await;
    app.update(
        by_id(&a),
        named("Zelda", "Manchester"),
        &["attributes.given_name", "attributes.city"],
        app.now(),
    )
    .await;
    app.update(
        by_id(&b),
        named("Zel", "Salford"),
        &["attributes.given_name", "attributes.city"],
        app.now(),
    )
    .await;
    let mut call = interaction(
        pb::Channel::PhoneCall,
        pb::Direction::Inbound,
        "customer_service",
        "support_call",
    );
    call.summary = "Zelda asked about her bill".into();
    app.record(by_id(&b), call).await;
    app.tick();
    let merged = app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(merged.profile_id, a);
    (a, b)
}

#[tokio::test]
async fn export_holds_everything_about_the_customer() {
    let app = TestApp::spawn().await;
    let (a, b) = customer(&app).await;
    let mut client = privacy(&app).await;
    let parts = export(&mut client, by_ident(email("z.quartermain@example.net")))
        .await
        .expect("export");
    let head = &parts[0];
    let profile = head.profile.as_ref().expect("profile");
    assert_eq!(profile.profile_id, a);
    assert_eq!(profile.merged_ids, vec![b.clone()]);
    let emails: Vec<String> = profile
        .identifiers
        .iter()
        .map(|l| l.identifier.clone().expect("id").value)
        .collect();
    assert!(emails.contains(&"zelda.q@example.com".to_string()));
    assert!(emails.contains(&"z.quartermain@example.net".to_string()));
    assert!(emails.contains(&"+447700900555".to_string()));
    assert_eq!(head.merges.len(), 1);
    assert!(head.exported_at.is_some());
    let history: Vec<&pb::AttributeChange> = parts.iter().flat_map(|p| &p.history).collect();
    assert_eq!(
        history.len(),
        4,
        "both profiles' attribute history: {history:?}"
    );
    let interactions: Vec<&pb::Interaction> = parts.iter().flat_map(|p| &p.interactions).collect();
    assert_eq!(interactions.len(), 1);
    assert_eq!(interactions[0].summary, "Zelda asked about her bill");
}

#[tokio::test]
async fn erase_leaves_nothing_about_the_person_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let (a, b) = customer(&app).await;
    let mark = app
        .profiles
        .clone()
        .watch_changes(pb::WatchChangesRequest { from_sequence: 0 })
        .await
        .is_ok();
    assert!(mark);
    let mut client = privacy(&app).await;
    let missing_reason = client
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_id(&a)),
            reason: String::new(),
            request_id: String::new(),
        })
        .await
        .expect_err("reason required");
    assert_eq!(missing_reason.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&missing_reason), vec!["reason".to_string()]);

    let erased = client
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_ident(phone("+447700900555"))),
            reason: "DSR-1042".into(),
            request_id: "erase-1".into(),
        })
        .await
        .expect("erase")
        .into_inner();
    assert_eq!(erased.profile_id, a);
    let mut ids = erased.erased_profile_ids.clone();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(!erased.already_erased);

    // Every read path: nothing.
    for id in [&a, &b] {
        let err = app.try_get(by_id(id)).await.expect_err("erased");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(error_reason(&err).as_deref(), Some("ERASED"), "{err:?}");
        let listed = app
            .interactions
            .clone()
            .list_interactions(pb::ListInteractionsRequest {
                profile: Some(by_id(id)),
                ..Default::default()
            })
            .await
            .expect_err("no interactions");
        assert_eq!(listed.code(), Code::NotFound);
        let history = app
            .profiles
            .clone()
            .get_profile_history(pb::GetProfileHistoryRequest {
                profile: Some(by_id(id)),
                ..Default::default()
            })
            .await
            .expect_err("no history");
        assert_eq!(history.code(), Code::NotFound);
        let exported = export(&mut client, by_id(id)).await.expect_err("no export");
        assert_eq!(exported.code(), Code::NotFound);
    }
    for ident in [
        email("zelda.q@example.com"),
        email("z.quartermain@example.net"),
        phone("+447700900555"),
    ] {
        assert_eq!(
            app.try_get(by_ident(ident.clone()))
                .await
                .expect_err("gone")
                .code(),
            Code::NotFound
        );
        assert_eq!(app.owner(ident).await, None);
    }
    let in_city = pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: "city".into(),
            any_of: vec![string_value("Manchester"), string_value("Salford")],
            ..Default::default()
        })),
    };
    let count = app
        .profiles
        .clone()
        .count_profiles(pb::CountProfilesRequest {
            filter: Some(pb::ProfileFilter {
                clauses: vec![in_city],
            }),
        })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(count.count, 0);
    let everyone = app
        .profiles
        .clone()
        .count_profiles(pb::CountProfilesRequest { filter: None })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(everyone.count, 0);

    // The change feed says it happened, with no personal values (it never carries any).
    let mut stream = app.watch(0).await;
    let mut kinds = Vec::new();
    loop {
        let e = next_event(&mut stream).await;
        kinds.push(e.kind);
        assert!(!format!("{e:?}").contains("zelda"), "{e:?}");
        if e.kind == pb::ChangeKind::ProfileErased as i32 {
            assert_eq!(e.profile_id, a);
            break;
        }
    }

    // The person is new to a later Resolve; erasing again is fine.
    let fresh = app.create(vec![email("zelda.q@example.com")]).await;
    assert_ne!(fresh, a);
    let again = client
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_id(&a)),
            reason: "DSR-1042".into(),
            request_id: String::new(),
        })
        .await
        .expect("erase again")
        .into_inner();
    assert!(again.already_erased);
    let replay = client
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_ident(phone("+447700900555"))),
            reason: "DSR-1042".into(),
            request_id: "erase-1".into(),
        })
        .await
        .expect("idempotent replay")
        .into_inner();
    assert_eq!(replay, erased);
}

/// Found by `api_model`: BatchGetProfiles failed the whole batch with NOT_FOUND when one key
/// was an erased profile id; SPEC §4 says a missing key is not a failure of the batch.
#[tokio::test]
async fn batch_get_answers_an_erased_id_per_key() {
    let app = TestApp::spawn().await;
    let (a, b) = customer(&app).await;
    let other = app.create(vec![new_email()]).await;
    privacy(&app)
        .await
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_id(&a)),
            reason: "DSR-7".into(),
            request_id: String::new(),
        })
        .await
        .expect("erase");
    let results = app
        .profiles
        .clone()
        .batch_get_profiles(pb::BatchGetProfilesRequest {
            profiles: vec![by_id(&a), by_id(&other), by_id(&b)],
            read_mask: None,
        })
        .await
        .expect("BatchGetProfiles answers per key")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for k in [0, 2] {
        match &results[k].result {
            Some(pb::profile_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::NotFound as i32, "{e:?}");
                assert!(e.message.contains("erased"), "{e:?}");
            }
            r => panic!("key {k} is erased, got {r:?}"),
        }
    }
    match &results[1].result {
        Some(pb::profile_result::Result::Profile(p)) => assert_eq!(p.profile_id, other),
        r => panic!("key 1 is live, got {r:?}"),
    }
}

/// Found by `api_model`: undoing a merge of an erased customer answered DATA_LOSS ("stored data
/// is corrupt"); there is nothing left to split, which is NOT_FOUND with reason ERASED, and
/// nothing comes back.
#[tokio::test]
async fn unmerging_an_erased_customers_merge_is_not_found_erased() {
    let app = TestApp::spawn().await;
    let (a, b) = customer(&app).await;
    let merges = app.list_merges(by_id(&a)).await;
    assert_eq!(merges.len(), 1, "{merges:?}");
    privacy(&app)
        .await
        .erase_customer(pb::EraseCustomerRequest {
            profile: Some(by_id(&b)),
            reason: "DSR-8".into(),
            request_id: String::new(),
        })
        .await
        .expect("erase");
    let err = app
        .try_unmerge(&merges[0].merge_id)
        .await
        .expect_err("an erased customer cannot be unmerged");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(error_reason(&err).as_deref(), Some("ERASED"), "{err:?}");
    for id in [&a, &b] {
        let err = app.try_get(by_id(id)).await.expect_err("still erased");
        assert_eq!(error_reason(&err).as_deref(), Some("ERASED"), "{err:?}");
    }
}
