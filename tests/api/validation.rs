//! Acceptance 8: every invalid field gives INVALID_ARGUMENT with a BadRequest field violation
//! naming the field, and the request writes nothing.

use customer_profile::service::pb;
use pb::{Channel, Direction};

use crate::helpers::*;

async fn resolve_err(app: &TestApp, ids: Vec<pb::Identifier>) -> tonic::Status {
    app.try_resolve(ids, true, true)
        .await
        .expect_err("invalid Resolve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_identifiers_are_named_and_nothing_is_written() {
    let mut app = TestApp::spawn().await;
    let existing = new_email();
    let pid = app.create(vec![existing.clone()]).await;
    let version = app.get(by_id(&pid)).await.version;
    let mark = app.watermark().await;
    let fresh = new_email();

    // A national phone number: no country is guessed; the message shows the E.164 form.
    let err = resolve_err(&app, vec![phone("07700 900123")]).await;
    assert_invalid(&err, "identifiers[0].value");
    let described = err
        .get_details_bad_request_text()
        .unwrap_or_else(|| err.message().to_string());
    assert!(
        described.contains('+'),
        "the message shows the E.164 form: {described}"
    );

    // One bad identifier among good ones: none is linked, nothing is created or merged.
    for (bad, field) in [
        (email("no-at-sign"), "identifiers[2].value"),
        (email("two@@example.com"), "identifiers[2].value"),
        (email("a@localhost"), "identifiers[2].value"),
        (phone("+0123456789"), "identifiers[2].value"),
        (customer_number("C 1"), "identifiers[2].value"),
        (external("CRM!", "x"), "identifiers[2].namespace"),
        (
            ident(pb::IdentifierKind::Unspecified, "x"),
            "identifiers[2].kind",
        ),
    ] {
        let err = resolve_err(&app, vec![existing.clone(), fresh.clone(), bad.clone()]).await;
        assert_invalid(&err, field);
    }
    let mut unknown_kind = email("x@example.com");
    unknown_kind.kind = 99;
    let err = resolve_err(&app, vec![fresh.clone(), unknown_kind]).await;
    assert_invalid(&err, "identifiers[1].kind");

    let err = resolve_err(&app, vec![]).await;
    assert_invalid(&err, "identifiers");
    let err = resolve_err(&app, (0..33).map(|_| new_device()).collect()).await;
    assert_invalid(&err, "identifiers");

    let err = app
        .try_link(by_id(&pid), email("nope"))
        .await
        .expect_err("bad identifier");
    assert_invalid(&err, "identifier.value");
    let err = app
        .try_link(by_id("not-a-uuid"), new_email())
        .await
        .expect_err("bad id");
    assert_invalid(&err, "profile.profile_id");

    assert_eq!(app.owner(fresh).await, None);
    assert_eq!(app.get(by_id(&pid)).await.version, version);
    app.assert_no_changes_since(mark).await;

    // 32 identifiers is the limit, not an error.
    let ok = app
        .try_resolve((0..32).map(|_| new_device()).collect(), true, false)
        .await;
    assert_eq!(
        outcome(&ok.expect("32 identifiers")),
        pb::ResolveOutcome::Created
    );
}

/// Reads the BadRequest descriptions of a status as one string.
trait Described {
    fn get_details_bad_request_text(&self) -> Option<String>;
}

impl Described for tonic::Status {
    fn get_details_bad_request_text(&self) -> Option<String> {
        use tonic_types::StatusExt;
        self.get_details_bad_request().map(|b| {
            b.field_violations
                .iter()
                .map(|v| v.description.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_interactions_are_named_and_nothing_is_written() {
    let mut app = TestApp::spawn().await;
    let pid = app.create(vec![new_email()]).await;
    let mark = app.watermark().await;
    let now = app.now();

    type Mutation = Box<dyn Fn(&mut pb::Interaction)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|i| i.channel = 99), "interaction.channel"),
        (
            Box::new(|i| i.channel = Channel::Unspecified as i32),
            "interaction.channel",
        ),
        (Box::new(|i| i.direction = 7), "interaction.direction"),
        (
            Box::new(|i| i.direction = Direction::Unspecified as i32),
            "interaction.direction",
        ),
        (
            Box::new(|i| i.department = "Customer Service".into()),
            "interaction.department",
        ),
        (
            Box::new(|i| i.department = String::new()),
            "interaction.department",
        ),
        (
            Box::new(|i| i.department = "d".repeat(65)),
            "interaction.department",
        ),
        (
            Box::new(|i| i.r#type = "Support Call".into()),
            "interaction.type",
        ),
        (
            Box::new(|i| i.summary = "x".repeat(4097)),
            "interaction.summary",
        ),
        // 2,049 two-byte characters: 4,098 bytes.
        (
            Box::new(|i| i.summary = "é".repeat(2049)),
            "interaction.summary",
        ),
        (
            Box::new(move |i| i.occurred_at = Some(ts(now.plus_secs(301)))),
            "interaction.occurred_at",
        ),
        (Box::new(|i| i.case_state = 42), "interaction.case_state"),
    ];
    for (mutate, field) in &cases {
        let mut i = interaction(
            Channel::Email,
            Direction::Outbound,
            "marketing",
            "campaign_message",
        );
        mutate(&mut i);
        let err = app.try_record(by_id(&pid), i, "").await.expect_err(field);
        assert_invalid(&err, field);
    }
    let err = app
        .try_record(by_id("not-a-uuid"), interaction_at(now), "")
        .await
        .expect_err("bad UUID");
    assert_invalid(&err, "profile.profile_id");
    let err = app
        .try_record(by_ident(phone("12345")), interaction_at(now), "")
        .await
        .expect_err("bad phone");
    assert_invalid(&err, "profile.identifier.value");

    assert!(app.interaction_ids(by_id(&pid)).await.is_empty());
    app.assert_no_changes_since(mark).await;

    // The boundaries themselves are valid.
    let mut edge = interaction(
        Channel::Social,
        Direction::Inbound,
        &"d".repeat(64),
        "a.b_c",
    );
    edge.summary = "é".repeat(2048);
    edge.occurred_at = Some(ts(now.plus_secs(300)));
    app.try_record(by_id(&pid), edge, "")
        .await
        .expect("4096 bytes and +5 min are allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reads_and_updates_are_named_and_write_nothing() {
    let mut app = TestApp::spawn().await;
    let pid = app.create(vec![new_email()]).await;
    let before = app.get(by_id(&pid)).await;
    let mark = app.watermark().await;

    let err = app
        .try_get(by_id("not-a-uuid"))
        .await
        .expect_err("bad UUID");
    assert_invalid(&err, "profile.profile_id");
    let err = app
        .try_get(by_ident(email("not an email")))
        .await
        .expect_err("bad email");
    assert_invalid(&err, "profile.identifier.value");

    let err = app
        .interactions
        .clone()
        .list_interactions(pb::ListInteractionsRequest {
            page_token: "garbage!!".into(),
            ..list_request(by_id(&pid), 10)
        })
        .await
        .expect_err("bad page token");
    assert_invalid(&err, "page_token");

    let name = pb::ProfileAttributes {
        given_name: Some("Ann".into()),
        ..Default::default()
    };
    let mut no_source = update_request(
        by_id(&pid),
        name.clone(),
        &["attributes.given_name"],
        app.now(),
    );
    no_source.source = String::new();
    assert_invalid(
        &app.try_update(no_source).await.expect_err("no source"),
        "source",
    );

    let bad_path = update_request(
        by_id(&pid),
        name.clone(),
        &["attributes.shoe_size"],
        app.now(),
    );
    assert_invalid(
        &app.try_update(bad_path).await.expect_err("unknown path"),
        "update_mask.paths[0]",
    );

    let future = update_request(
        by_id(&pid),
        name.clone(),
        &["attributes.given_name"],
        app.now().plus_secs(301),
    );
    assert_invalid(
        &app.try_update(future)
            .await
            .expect_err("future observation"),
        "observed_at",
    );

    let bad_uuid = update_request(by_id("nope"), name, &["attributes.given_name"], app.now());
    assert_invalid(
        &app.try_update(bad_uuid).await.expect_err("bad UUID"),
        "profile.profile_id",
    );

    assert_eq!(app.get(by_id(&pid)).await, before);
    app.assert_no_changes_since(mark).await;
}

/// The harness itself: `assert_no_changes_since` does notice a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "should have written nothing")]
async fn the_no_write_check_notices_a_write() {
    let mut app = TestApp::spawn().await;
    let mark = app.watermark().await;
    app.create(vec![new_email()]).await;
    app.assert_no_changes_since(mark).await;
}
