//! Acceptance 6: idempotent interaction writes (also concurrent retries), atomic batches,
//! and paging through 1,200 interactions with filters, newest occurred_at first.

use std::collections::BTreeSet;

use customer_profile::domain::time::Timestamp;
use customer_profile::service::pb;
use futures::future::join_all;
use pb::{Channel, Direction};
use tonic::Code;

use crate::helpers::*;

fn sort_key(i: &pb::Interaction) -> (Timestamp, String) {
    (
        from_ts(&i.occurred_at.expect("occurred_at")),
        i.interaction_id.clone(),
    )
}

/// Newest occurred_at first; ties: newest (greatest) id first.
fn expected_order(mut v: Vec<pb::Interaction>) -> Vec<String> {
    v.sort_by_key(|i| std::cmp::Reverse(sort_key(i)));
    v.into_iter().map(|i| i.interaction_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_interaction_is_stored_once() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let i = interaction_at(app.now().plus_secs(-60));
    let first = app
        .try_record(by_id(&p), i.clone(), "req-1")
        .await
        .expect("first");
    app.tick();
    let again = app
        .try_record(by_id(&p), i.clone(), "req-1")
        .await
        .expect("retry");
    assert_eq!(again, first, "a retry returns the first response");
    let ids = app.interaction_ids(by_id(&p)).await;
    assert_eq!(
        ids,
        vec![
            first
                .interaction
                .as_ref()
                .expect("interaction")
                .interaction_id
                .clone()
        ]
    );
    assert_eq!(
        app.get(by_id(&p)).await.version,
        first.version,
        "the retry changed nothing"
    );

    // Another request id is another interaction.
    let other = app.try_record(by_id(&p), i, "req-2").await.expect("second");
    assert_ne!(
        other.interaction.as_ref().map(|i| &i.interaction_id),
        first.interaction.as_ref().map(|i| &i.interaction_id)
    );
    assert_eq!(app.interaction_ids(by_id(&p)).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_retries_store_one_interaction() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let i = interaction_at(app.now());
    let calls = (0..20).map(|_| {
        let app = &app;
        let (i, p) = (i.clone(), p.clone());
        async move { app.try_record(by_id(&p), i, "same-request").await }
    });
    let answers: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("RecordInteraction"))
        .collect();
    let ids: BTreeSet<String> = answers
        .iter()
        .map(|a| {
            a.interaction
                .as_ref()
                .expect("interaction")
                .interaction_id
                .clone()
        })
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "every retry names the same interaction: {ids:?}"
    );
    assert_eq!(app.interaction_ids(by_id(&p)).await.len(), 1, "one stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interaction_for_an_unknown_profile_is_not_found() {
    let app = TestApp::spawn().await;
    let err = app
        .try_record(
            by_id("0192f3a4-5b6c-7d8e-9f00-112233445566"),
            interaction_at(app.now()),
            "",
        )
        .await
        .expect_err("unknown profile");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .try_record(by_ident(new_email()), interaction_at(app.now()), "")
        .await
        .expect_err("unknown identifier");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurred_at_is_checked_against_the_server_clock() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let ok = app
        .try_record(by_id(&p), interaction_at(app.now().plus_secs(300)), "")
        .await
        .expect("exactly 5 minutes ahead is allowed");
    assert!(ok.interaction.is_some());
    let err = app
        .try_record(by_id(&p), interaction_at(app.now().plus_secs(301)), "")
        .await
        .expect_err("more than 5 minutes ahead");
    assert_invalid(&err, "interaction.occurred_at");

    // Default: now (the server's clock).
    let mut i = interaction_at(app.now());
    i.occurred_at = None;
    let r = app
        .try_record(by_id(&p), i, "")
        .await
        .expect("default occurred_at");
    let got = r.interaction.expect("interaction");
    assert_eq!(got.occurred_at.map(|t| from_ts(&t)), Some(app.now()));
    assert_eq!(got.recorded_at.map(|t| from_ts(&t)), Some(app.now()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_entry_stores_nothing() {
    let mut app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let mark = app.watermark().await;
    let good = |t| pb::RecordInteractionRequest {
        profile: Some(by_id(&p)),
        interaction: Some(interaction_at(t)),
        request_id: String::new(),
    };
    let mut bad = good(app.now());
    bad.interaction.as_mut().expect("interaction").department = "Customer Service".into();
    let req = pb::RecordInteractionsRequest {
        requests: vec![good(app.now()), bad, good(app.now())],
    };
    let err = app
        .interactions
        .clone()
        .record_interactions(req)
        .await
        .expect_err("bad entry");
    assert_invalid(&err, "requests[1].interaction.department");
    assert!(app.interaction_ids(by_id(&p)).await.is_empty());
    app.assert_no_changes_since(mark).await;

    // An unknown profile in one entry fails the whole batch too.
    let mut unknown = good(app.now());
    unknown.profile = Some(by_id("0192f3a4-5b6c-7d8e-9f00-112233445566"));
    let req = pb::RecordInteractionsRequest {
        requests: vec![good(app.now()), unknown],
    };
    let err = app
        .interactions
        .clone()
        .record_interactions(req)
        .await
        .expect_err("unknown profile");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(app.interaction_ids(by_id(&p)).await.is_empty());

    let too_many = pb::RecordInteractionsRequest {
        requests: (0..501).map(|_| good(app.now())).collect(),
    };
    let err = app
        .interactions
        .clone()
        .record_interactions(too_many)
        .await
        .expect_err("501 entries");
    assert_invalid(&err, "requests");
    assert!(app.interaction_ids(by_id(&p)).await.is_empty());
}

const CHANNELS: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Web];
const DEPARTMENTS: [&str; 4] = ["finance", "customer_service", "marketing", "sales"];
const TYPES: [&str; 5] = [
    "bill_payment",
    "support_call",
    "purchase",
    "complaint",
    "campaign_message",
];

fn varied(n: usize, base: Timestamp) -> pb::Interaction {
    let direction = if n % 2 == 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    // A permutation of minutes, with pairs sharing a time: arrival order is not time order,
    // and ties occur.
    let minutes = ((n * 7919) % 1200 / 2) as i64;
    pb::Interaction {
        occurred_at: Some(ts(base.plus_secs(-minutes * 60))),
        summary: format!("interaction {n}"),
        ..interaction(CHANNELS[n % 3], direction, DEPARTMENTS[n % 4], TYPES[n % 5])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_1200_interactions_with_filters() {
    let app = TestApp::spawn().await;
    let key = new_email();
    let p = app.create(vec![key.clone()]).await;
    let base = app.now();

    let mut stored: Vec<pb::Interaction> = Vec::new();
    for chunk in [0..500usize, 500..1000, 1000..1200] {
        let req = pb::RecordInteractionsRequest {
            requests: chunk
                .map(|n| pb::RecordInteractionRequest {
                    // Alternate between the id and an identifier as the profile key.
                    profile: Some(if n % 2 == 0 {
                        by_id(&p)
                    } else {
                        by_ident(key.clone())
                    }),
                    interaction: Some(varied(n, base)),
                    request_id: format!("load-{n}"),
                })
                .collect(),
        };
        let n = req.requests.len();
        let r = app
            .interactions
            .clone()
            .record_interactions(req)
            .await
            .expect("RecordInteractions")
            .into_inner();
        assert_eq!(r.responses.len(), n, "one response per entry");
        stored.extend(
            r.responses
                .into_iter()
                .map(|r| r.interaction.expect("interaction")),
        );
        app.tick();
    }
    let all_ids: BTreeSet<String> = stored.iter().map(|i| i.interaction_id.clone()).collect();
    assert_eq!(all_ids.len(), 1200);

    // A late event: it happened long ago, arrives last, and is listed in its place.
    let late_at = base.plus_secs(-300 * 60 - 30);
    let late = app
        .record(by_id(&p), varied_at(late_at))
        .await
        .interaction
        .expect("late");
    stored.push(late.clone());

    // Everything, in pages of the maximum size.
    let listed = app.list_all(list_request(by_id(&p), 500)).await;
    let listed_ids: Vec<String> = listed.iter().map(|i| i.interaction_id.clone()).collect();
    assert_eq!(listed_ids.len(), 1201, "no gaps");
    assert_eq!(
        listed_ids.iter().collect::<BTreeSet<_>>().len(),
        1201,
        "no duplicates"
    );
    assert_eq!(
        listed_ids,
        expected_order(stored.clone()),
        "newest occurred_at first, ties by newest id"
    );
    let pos = listed_ids
        .iter()
        .position(|i| *i == late.interaction_id)
        .expect("late event listed");
    assert!(
        pos > 0 && pos < 1200,
        "the late event is in its place, not at the top: {pos}"
    );
    assert_eq!(listed[0].profile_id, p);

    // Default page size 50, and paging with an odd size gives the same sequence.
    let first = app
        .interactions
        .clone()
        .list_interactions(list_request(by_id(&p), 0))
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(first.interactions.len(), 50);
    assert!(!first.next_page_token.is_empty());
    let odd: Vec<String> = app
        .list_all(list_request(by_ident(key.clone()), 37))
        .await
        .into_iter()
        .map(|i| i.interaction_id)
        .collect();
    assert_eq!(odd, listed_ids);

    // Filters, paged.
    let after = base.plus_secs(-400 * 60);
    let before = base.plus_secs(-100 * 60);
    let filtered = pb::ListInteractionsRequest {
        profile: Some(by_id(&p)),
        channels: vec![Channel::Sms as i32, Channel::Web as i32],
        departments: vec!["finance".into(), "sales".into()],
        types: vec![],
        direction: Direction::Outbound as i32,
        occurred_after: Some(ts(after)),
        occurred_before: Some(ts(before)),
        page_size: 7,
        page_token: String::new(),
    };
    let want: Vec<pb::Interaction> = stored
        .iter()
        .filter(|i| {
            let t = from_ts(&i.occurred_at.expect("occurred_at"));
            (i.channel == Channel::Sms as i32 || i.channel == Channel::Web as i32)
                && (i.department == "finance" || i.department == "sales")
                && i.direction == Direction::Outbound as i32
                && t >= after
                && t < before
        })
        .cloned()
        .collect();
    assert!(
        want.len() > 20,
        "the filter selects a fair number: {}",
        want.len()
    );
    let got: Vec<String> = app
        .list_all(filtered.clone())
        .await
        .into_iter()
        .map(|i| i.interaction_id)
        .collect();
    assert_eq!(got, expected_order(want));

    let by_type = pb::ListInteractionsRequest {
        types: vec!["complaint".into()],
        ..list_request(by_id(&p), 100)
    };
    let want: Vec<pb::Interaction> = stored
        .iter()
        .filter(|i| i.r#type == "complaint")
        .cloned()
        .collect();
    let got: Vec<String> = app
        .list_all(by_type)
        .await
        .into_iter()
        .map(|i| i.interaction_id)
        .collect();
    assert_eq!(got, expected_order(want));

    // A token belongs to its filters.
    let page = app
        .interactions
        .clone()
        .list_interactions(filtered.clone())
        .await
        .expect("first filtered page")
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let changed = pb::ListInteractionsRequest {
        departments: vec!["finance".into()],
        page_token: page.next_page_token.clone(),
        ..filtered.clone()
    };
    let err = app
        .interactions
        .clone()
        .list_interactions(changed)
        .await
        .expect_err("changed filters");
    assert_invalid(&err, "page_token");
    let other_profile = app.create(vec![new_email()]).await;
    let moved = pb::ListInteractionsRequest {
        profile: Some(by_id(&other_profile)),
        page_token: page.next_page_token.clone(),
        ..filtered.clone()
    };
    let err = app
        .interactions
        .clone()
        .list_interactions(moved)
        .await
        .expect_err("other profile");
    assert_invalid(&err, "page_token");
    let garbage = pb::ListInteractionsRequest {
        page_token: "not-a-token".into(),
        ..filtered
    };
    let err = app
        .interactions
        .clone()
        .list_interactions(garbage)
        .await
        .expect_err("garbage token");
    assert_invalid(&err, "page_token");

    // Over the maximum page size: either refused or capped at 500.
    match app
        .interactions
        .clone()
        .list_interactions(list_request(by_id(&p), 501))
        .await
    {
        Ok(r) => assert!(r.into_inner().interactions.len() <= 500),
        Err(err) => assert_invalid(&err, "page_size"),
    }
}

fn varied_at(t: Timestamp) -> pb::Interaction {
    pb::Interaction {
        occurred_at: Some(ts(t)),
        ..interaction(Channel::Post, Direction::Inbound, "finance", "bill_payment")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_department_sees_every_departments_interactions_through_any_key() {
    let app = TestApp::spawn().await;
    let (e, ph) = (new_email(), phone("+15550009999"));
    let p = app.create(vec![e.clone(), ph.clone()]).await;
    for d in DEPARTMENTS {
        app.record(
            by_ident(ph.clone()),
            interaction(Channel::PhoneCall, Direction::Inbound, d, "support_call"),
        )
        .await;
        app.tick();
    }
    let by_email = app.interaction_ids(by_ident(e)).await;
    let by_pid = app.interaction_ids(by_id(&p)).await;
    assert_eq!(by_email.len(), 4);
    assert_eq!(by_email, by_pid);
}
