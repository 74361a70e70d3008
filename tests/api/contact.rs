//! Issue 4, acceptance 2–5: CheckContact — exact rolling frequency caps across channels,
//! atomic reservations under concurrency, open cases, cross-channel de-duplication, every
//! denying reason at once, the suggested channel, idempotent reservations, invalid input.

use std::collections::BTreeSet;

use customer_profile::domain::time::Duration;
use customer_profile::server::config::CapConfig;
use customer_profile::service::pb;
use futures::future::join_all;
use pb::{CaseState, Channel, DenyReason, Direction, Purpose};
use tonic::Code;

use crate::helpers::*;
use crate::rules_helpers::*;

/// A customer who granted marketing on every channel.
async fn marketable(app: &RulesApp) -> String {
    let p = app.create(vec![new_email()]).await;
    app.grant(&p, Purpose::Marketing, Channel::Unspecified)
        .await;
    p
}

fn raised_caps(config: &mut customer_profile::server::config::Config) {
    config.contact.caps = vec![CapConfig {
        window_hours: 24,
        max: 100,
    }];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_marketing_contact_within_24_hours_waits_until_exactly_24_hours_later() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let t0 = app.now();
    let first = app.send_marketing(&p, Channel::Email, "spring-sale").await;
    assert_eq!(opt_ts(&first.occurred_at), Some(t0));
    let next = t0.plus(Duration::hours(24));

    // Another channel, another message: the cap is across channels.
    app.advance(HOUR);
    let r = app
        .check(&p, Channel::Sms, Purpose::Marketing, "summer-sale")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "2nd within 24 h");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(next), "{r:?}");

    // A denied reservation records nothing.
    let version = app.get(by_id(&p)).await.version;
    let r = app
        .reserve(&p, Channel::Sms, Purpose::Marketing, "summer-sale")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "denied reserve");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(next));
    assert_eq!(r.version, version, "{r:?}");
    assert_eq!(app.get(by_id(&p)).await.version, version);
    assert_eq!(app.interaction_ids(by_id(&p)).await.len(), 1);

    app.set_time(next.plus_micros(-1));
    let r = app
        .check(&p, Channel::Sms, Purpose::Marketing, "summer-sale")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "1 µs before");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(next));

    app.set_time(next);
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "summer-sale")
            .await,
        "exactly 24 h after the first",
    );
    app.send_marketing(&p, Channel::Sms, "summer-sale").await;
    let r = app
        .check(&p, Channel::Push, Purpose::Marketing, "autumn-sale")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "right after the 2nd");
    assert_eq!(
        opt_ts(&r.next_allowed_at),
        Some(next.plus(Duration::hours(24)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fourth_marketing_contact_within_seven_days_is_denied() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let t0 = app.now();
    for (day, channel) in [(0, Channel::Email), (1, Channel::Sms), (2, Channel::Push)] {
        app.set_time(t0.plus(Duration::days(day)));
        app.send_marketing(&p, channel, &format!("weekly-{day}"))
            .await;
    }
    app.set_time(t0.plus(Duration::days(3)));
    let r = app
        .check(&p, Channel::Post, Purpose::Marketing, "weekly-3")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "4th within 7 days");
    let next = t0.plus(Duration::days(7));
    assert_eq!(
        opt_ts(&r.next_allowed_at),
        Some(next),
        "the first contact leaves the 7-day window: {r:?}"
    );
    app.set_time(next.plus_micros(-1));
    assert_denied(
        &app.check(&p, Channel::Post, Purpose::Marketing, "weekly-3")
            .await,
        &[DenyReason::FrequencyCap],
        "1 µs before 7 days",
    );
    app.set_time(next);
    assert_allowed(
        &app.check(&p, Channel::Post, Purpose::Marketing, "weekly-3")
            .await,
        "exactly 7 days after the first",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thirty_day_cap_counts_recorded_marketing_by_occurred_at_including_late_events() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let now = app.now();

    // Not marketing contacts: none of these counts towards a cap.
    for i in [
        outbound(
            Channel::Email,
            Purpose::Service,
            "campaign_message",
            "",
            now.minus(HOUR),
        ),
        outbound(
            Channel::Email,
            Purpose::Unspecified,
            "newsletter",
            "",
            now.plus(Duration::hours(-2)),
        ),
        inbound(
            Channel::Email,
            "marketing",
            "campaign_message",
            now.plus(Duration::hours(-3)),
        ),
    ] {
        app.record_on(&p, i).await;
    }
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "service, non-marketing type and inbound contacts are not capped",
    );

    // Eight marketing contacts in the last 30 days, none in the last 7; recorded newest
    // first, so every later write is a late event. Half are marked by purpose, half by the
    // configured marketing type.
    let ages_hours: [i64; 8] = [708, 624, 552, 480, 408, 336, 264, 192]; // 29.5 d … 8 d
    for (n, hours) in ages_hours.iter().rev().enumerate() {
        let t = now.plus(Duration::hours(-hours));
        let i = if n % 2 == 0 {
            outbound(Channel::Sms, Purpose::Marketing, "newsletter", "", t)
        } else {
            outbound(
                Channel::Post,
                Purpose::Unspecified,
                "campaign_message",
                "",
                t,
            )
        };
        app.record_on(&p, i).await;
    }
    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "8 within 30 days");
    let next = now.plus(Duration::hours(-708)).plus(Duration::days(30));
    assert_eq!(next, now.plus(Duration::hours(12)));
    assert_eq!(opt_ts(&r.next_allowed_at), Some(next), "{r:?}");
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Service, "").await,
        "service is never capped",
    );

    app.set_time(next.plus_micros(-1));
    assert_denied(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::FrequencyCap],
        "1 µs before the oldest leaves",
    );
    app.set_time(next);
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "the oldest left the 30-day window",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_messages_are_never_capped_and_do_not_count_as_marketing() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let mut reserved = Vec::new();
    for n in 0..10 {
        let channel = CHANNELS[n % 3];
        let r = app
            .reserve(&p, channel, Purpose::Service, &format!("bill-{n}"))
            .await;
        assert_allowed(&r, "service");
        let i = r.reserved.clone().expect("reserved interaction");
        assert_eq!(
            (
                i.channel,
                i.direction,
                i.purpose,
                i.message_key.as_str(),
                i.r#type.as_str(),
                i.department.as_str(),
                i.profile_id.as_str(),
            ),
            (
                channel as i32,
                Direction::Outbound as i32,
                Purpose::Service as i32,
                format!("bill-{n}").as_str(),
                "service_message",
                "customer_service",
                p.as_str(),
            ),
            "{i:?}"
        );
        assert_eq!(opt_ts(&i.occurred_at), Some(app.now()));
        assert_eq!(r.version, app.get(by_id(&p)).await.version, "{r:?}");
        reserved.push(i.interaction_id);
    }
    // Ten service messages within minutes did not touch the marketing caps.
    let m = app
        .reserve(&p, Channel::Email, Purpose::Marketing, "promo-1")
        .await;
    assert_allowed(&m, "marketing after service messages");
    let mi = m.reserved.clone().expect("reserved");
    assert_eq!(
        (
            mi.purpose,
            mi.r#type.as_str(),
            mi.department.as_str(),
            mi.direction
        ),
        (
            Purpose::Marketing as i32,
            "campaign_message",
            "marketing",
            Direction::Outbound as i32
        )
    );
    reserved.push(mi.interaction_id);
    // Marketing is now capped; service is not.
    assert_denied(
        &app.check(&p, Channel::Email, Purpose::Marketing, "promo-2")
            .await,
        &[DenyReason::FrequencyCap],
        "marketing capped",
    );
    let mut req = contact_request(&p, Channel::Sms, Purpose::Service, "outage-1", true);
    req.department = "network_ops".into();
    req.r#type = "outage_notice".into();
    let r = app.try_check(req).await.expect("service reserve");
    assert_allowed(&r, "service while marketing is capped");
    let si = r.reserved.expect("reserved");
    assert_eq!(
        (si.department.as_str(), si.r#type.as_str()),
        ("network_ops", "outage_notice")
    );
    reserved.push(si.interaction_id);

    let listed: BTreeSet<String> = app.interaction_ids(by_id(&p)).await.into_iter().collect();
    assert_eq!(listed, reserved.into_iter().collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reservations_of_different_messages_allow_exactly_one() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let t0 = app.now();
    let calls = (0..20).map(|n| {
        let app = &app;
        let p = p.clone();
        async move {
            app.try_check(contact_request(
                &p,
                Channel::Email,
                Purpose::Marketing,
                &format!("offer-{n}"),
                true,
            ))
            .await
            .expect("CheckContact")
        }
    });
    let answers = join_all(calls).await;
    let allowed: Vec<_> = answers.iter().filter(|r| r.allowed).collect();
    assert_eq!(allowed.len(), 1, "exactly one allowed: {answers:?}");
    for r in answers.iter().filter(|r| !r.allowed) {
        assert_denied(r, &[DenyReason::FrequencyCap], "concurrent reserve");
        assert_eq!(
            opt_ts(&r.next_allowed_at),
            Some(t0.plus(Duration::hours(24)))
        );
    }
    let winner = allowed[0].reserved.as_ref().expect("reserved");
    assert_eq!(
        app.interaction_ids(by_id(&p)).await,
        vec![winner.interaction_id.clone()],
        "exactly one interaction recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reservations_of_one_message_across_channels_allow_exactly_one() {
    let app = RulesApp::spawn_with(raised_caps).await;
    let p = app.create(vec![new_email()]).await;
    for ch in CHANNELS {
        app.grant(&p, Purpose::Marketing, ch).await;
    }
    let t0 = app.now();
    let calls = (0..20).map(|n| {
        let app = &app;
        let p = p.clone();
        async move {
            app.try_check(contact_request(
                &p,
                CHANNELS[n % CHANNELS.len()],
                Purpose::Marketing,
                "black-friday",
                true,
            ))
            .await
            .expect("CheckContact")
        }
    });
    let answers = join_all(calls).await;
    let allowed: Vec<_> = answers.iter().filter(|r| r.allowed).collect();
    assert_eq!(allowed.len(), 1, "exactly one allowed: {answers:?}");
    for r in answers.iter().filter(|r| !r.allowed) {
        assert_denied(r, &[DenyReason::DuplicateMessage], "same message");
        assert_eq!(
            opt_ts(&r.next_allowed_at),
            Some(t0.plus(Duration::days(30)))
        );
    }
    let winner = allowed[0].reserved.as_ref().expect("reserved");
    assert_eq!(
        app.interaction_ids(by_id(&p)).await,
        vec![winner.interaction_id.clone()]
    );
    // With the caps raised, another message is fine.
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "cyber-monday")
            .await,
        "another message",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_complaint_blocks_marketing_until_a_later_interaction_closes_it() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let opened = app.now();
    app.record_on(
        &p,
        case_event("case-17", CaseState::Open, "complaint", opened),
    )
    .await;

    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::OpenCase], "open complaint");
    assert_eq!(r.next_allowed_at, None, "waiting does not close a case");
    assert_eq!(suggested(&r), Channel::Unspecified, "{r:?}");
    let s = app
        .reserve(&p, Channel::Email, Purpose::Service, "complaint-ack")
        .await;
    assert_allowed(&s, "service during an open case");

    // A CLOSED event that occurred before the OPEN one does not close the case.
    app.advance(HOUR);
    app.record_on(
        &p,
        case_event(
            "case-17",
            CaseState::Closed,
            "complaint",
            opened.minus(HOUR),
        ),
    )
    .await;
    assert_denied(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::OpenCase],
        "an older CLOSED does not close",
    );
    // Still in progress.
    app.advance(HOUR);
    app.record_on(
        &p,
        case_event("case-17", CaseState::Open, "support_call", app.now()),
    )
    .await;
    assert_denied(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::OpenCase],
        "in progress",
    );
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Service, "").await,
        "service throughout",
    );

    app.advance(HOUR);
    app.record_on(
        &p,
        case_event("case-17", CaseState::Closed, "support_call", app.now()),
    )
    .await;
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "closed by a later interaction",
    );

    // Another customer's case is not this customer's.
    let q = marketable(&app).await;
    app.record_on(
        &q,
        case_event("case-18", CaseState::Open, "complaint", app.now()),
    )
    .await;
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "p is not q",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_is_denied_on_every_channel_for_thirty_days() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let t0 = app.now();
    app.send_marketing(&p, Channel::Email, "black-friday").await;
    let free = t0.plus(Duration::days(30));

    // Within 24 h both duplicate and cap deny; waiting helps, until both have passed.
    app.advance(HOUR);
    let r = app
        .check(&p, Channel::Sms, Purpose::Marketing, "black-friday")
        .await;
    assert_denied(
        &r,
        &[DenyReason::DuplicateMessage, DenyReason::FrequencyCap],
        "duplicate and cap",
    );
    assert_eq!(opt_ts(&r.next_allowed_at), Some(free), "{r:?}");

    app.set_time(t0.plus(Duration::days(2)));
    let r = app
        .check(&p, Channel::Sms, Purpose::Marketing, "black-friday")
        .await;
    assert_denied(&r, &[DenyReason::DuplicateMessage], "email → SMS");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(free));
    // De-duplication applies to service messages too.
    let r = app
        .check(&p, Channel::Push, Purpose::Service, "black-friday")
        .await;
    assert_denied(&r, &[DenyReason::DuplicateMessage], "service, same key");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(free));
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "cyber-monday")
            .await,
        "another message",
    );

    app.set_time(free.plus_micros(-1));
    assert_denied(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "black-friday")
            .await,
        &[DenyReason::DuplicateMessage],
        "1 µs before 30 days",
    );
    app.set_time(free);
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "black-friday")
            .await,
        "30 days later",
    );
    app.send_marketing(&p, Channel::Sms, "black-friday").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn de_duplication_uses_every_outbound_interaction_by_occurred_at() {
    let app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let now = app.now();
    // A letter sent 10 days ago, recorded now (purpose SERVICE: not capped, still a send).
    let sent = now.plus(Duration::days(-10));
    app.record_on(
        &p,
        outbound(Channel::Post, Purpose::Service, "letter", "letter-7", sent),
    )
    .await;
    let r = app
        .check(&p, Channel::Email, Purpose::Marketing, "letter-7")
        .await;
    assert_denied(&r, &[DenyReason::DuplicateMessage], "letter, then email");
    assert_eq!(
        opt_ts(&r.next_allowed_at),
        Some(sent.plus(Duration::days(30)))
    );

    // A late record of an older send does not move the window back.
    app.record_on(
        &p,
        outbound(
            Channel::Post,
            Purpose::Service,
            "letter",
            "letter-7",
            now.plus(Duration::days(-40)),
        ),
    )
    .await;
    let r = app
        .check(&p, Channel::Email, Purpose::Marketing, "letter-7")
        .await;
    assert_eq!(
        opt_ts(&r.next_allowed_at),
        Some(sent.plus(Duration::days(30)))
    );

    // 31 days ago is outside the window.
    app.record_on(
        &p,
        outbound(
            Channel::Post,
            Purpose::Service,
            "letter",
            "old-news",
            now.plus(Duration::days(-31)),
        ),
    )
    .await;
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "old-news")
            .await,
        "sent 31 days ago",
    );

    // An inbound interaction carrying the key (a reply) is not a send.
    let mut reply = inbound(Channel::Email, "marketing", "campaign_reply", now);
    reply.message_key = "spring-sale".into();
    app.record_on(&p, reply).await;
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "spring-sale")
            .await,
        "only outbound interactions are sends",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denying_reason_is_reported_in_rule_order() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    app.grant(&p, Purpose::Marketing, Channel::Email).await;
    app.set_preferences(&p, &[Channel::Email], &[Channel::Sms], "")
        .await;
    let t0 = app.now();
    app.send_marketing(&p, Channel::Email, "m1").await;
    app.record_on(&p, case_event("c-1", CaseState::Open, "complaint", t0))
        .await;
    app.advance(HOUR);

    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "m1").await;
    assert_denied(
        &r,
        &[
            DenyReason::Consent,
            DenyReason::ChannelOptedOut,
            DenyReason::DuplicateMessage,
            DenyReason::FrequencyCap,
            DenyReason::OpenCase,
        ],
        "everything at once",
    );
    assert!(r.explanations.iter().all(|e| !e.is_empty()), "{r:?}");
    assert_eq!(r.next_allowed_at, None, "waiting does not help");
    assert_eq!(suggested(&r), Channel::Unspecified);

    let r = app
        .check(&p, Channel::Email, Purpose::Marketing, "m1")
        .await;
    assert_denied(
        &r,
        &[
            DenyReason::DuplicateMessage,
            DenyReason::FrequencyCap,
            DenyReason::OpenCase,
        ],
        "email",
    );
    assert_eq!(r.next_allowed_at, None, "an open case is not waited out");

    // Service on the opted-out channel: consent is fine, no cap, no open-case rule.
    let r = app.check(&p, Channel::Sms, Purpose::Service, "m1").await;
    assert_denied(
        &r,
        &[DenyReason::ChannelOptedOut, DenyReason::DuplicateMessage],
        "service",
    );
    assert_eq!(r.next_allowed_at, None);

    app.record_on(
        &p,
        case_event("c-1", CaseState::Closed, "complaint", app.now()),
    )
    .await;
    let r = app
        .check(&p, Channel::Email, Purpose::Marketing, "m1")
        .await;
    assert_denied(
        &r,
        &[DenyReason::DuplicateMessage, DenyReason::FrequencyCap],
        "only waiting reasons",
    );
    assert_eq!(
        opt_ts(&r.next_allowed_at),
        Some(t0.plus(Duration::days(30)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suggested_channel_is_the_most_preferred_allowed_one() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    for ch in [Channel::Email, Channel::App, Channel::Push, Channel::Post] {
        app.grant(&p, Purpose::Marketing, ch).await;
    }
    app.set_preferences(
        &p,
        &[Channel::Sms, Channel::App, Channel::Email],
        &[Channel::Push],
        "",
    )
    .await;

    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::Consent], "no SMS grant");
    assert_eq!(suggested(&r), Channel::App);
    // Allowed on the channel asked for; the suggestion is still the most preferred.
    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_allowed(&r, "email");
    assert_eq!(suggested(&r), Channel::App);

    app.tick();
    app.deny(&p, Purpose::Marketing, Channel::App).await;
    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "").await;
    assert_eq!(suggested(&r), Channel::Email, "{r:?}");

    // Beyond the preferred list: the remaining channels in enum order (PUSH is opted out).
    app.set_preferences(&p, &[Channel::Sms], &[Channel::Push, Channel::Email], "")
        .await;
    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "").await;
    assert_eq!(suggested(&r), Channel::Post, "{r:?}");
    app.set_preferences(&p, &[], &[], "").await;
    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "").await;
    assert_eq!(suggested(&r), Channel::Email, "no preferences: enum order");

    // Service: only denials and opt-outs exclude a channel.
    app.set_preferences(&p, &[Channel::Sms, Channel::Push, Channel::Email], &[], "")
        .await;
    app.deny(&p, Purpose::Service, Channel::Sms).await;
    let r = app.check(&p, Channel::Sms, Purpose::Service, "").await;
    assert_denied(&r, &[DenyReason::Consent], "service denied on SMS");
    assert_eq!(suggested(&r), Channel::Push, "{r:?}");

    // A message already sent: no channel would pass the same check.
    app.send_marketing(&p, Channel::Post, "k1").await;
    let r = app
        .check(&p, Channel::Email, Purpose::Marketing, "k2")
        .await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "capped");
    assert_eq!(suggested(&r), Channel::Unspecified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_reservation_returns_the_first_answer_and_records_nothing_more() {
    let app = RulesApp::spawn_with(raised_caps).await;
    let p = marketable(&app).await;
    let mut req = contact_request(&p, Channel::Email, Purpose::Marketing, "welcome", true);
    req.request_id = "reserve-1".into();
    let first = app.try_check(req.clone()).await.expect("first");
    assert_allowed(&first, "first");
    app.advance(Duration::secs(60));
    let again = app.try_check(req.clone()).await.expect("retry");
    assert_eq!(again, first, "a retry returns the first answer");
    assert_eq!(app.interaction_ids(by_id(&p)).await.len(), 1);
    assert_eq!(app.get(by_id(&p)).await.version, first.version);

    // A denied reservation is replayed as denied, even once the reason is gone.
    app.record_on(
        &p,
        case_event("c-9", CaseState::Open, "complaint", app.now()),
    )
    .await;
    let mut req2 = contact_request(&p, Channel::Email, Purpose::Marketing, "welcome-2", true);
    req2.request_id = "reserve-2".into();
    let denied = app.try_check(req2.clone()).await.expect("denied");
    assert_denied(&denied, &[DenyReason::OpenCase], "open case");
    app.advance(Duration::secs(60));
    app.record_on(
        &p,
        case_event("c-9", CaseState::Closed, "complaint", app.now()),
    )
    .await;
    let version = app.get(by_id(&p)).await.version;
    let replay = app.try_check(req2.clone()).await.expect("replay");
    assert_eq!(replay, denied, "the first answer, not a new decision");
    assert_eq!(app.get(by_id(&p)).await.version, version);
    assert_eq!(
        app.interaction_ids(by_id(&p)).await.len(),
        3,
        "1 reserved + 2 case events"
    );

    req2.request_id = "reserve-3".into();
    assert_allowed(
        &app.try_check(req2).await.expect("new request id"),
        "a new request id is a new check",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_contact_checks_name_the_field_and_write_nothing() {
    let mut app = RulesApp::spawn().await;
    let p = marketable(&app).await;
    let version = app.get(by_id(&p)).await.version;
    let mark = app.watermark().await;
    let good = || contact_request(&p, Channel::Email, Purpose::Marketing, "m-1", true);

    let mut cases: Vec<(pb::CheckContactRequest, &str)> = Vec::new();
    for purpose in [
        Purpose::Unspecified,
        Purpose::Profiling,
        Purpose::ThirdPartySharing,
    ] {
        let mut r = good();
        r.purpose = purpose as i32;
        cases.push((r, "purpose"));
    }
    let mut r = good();
    r.purpose = 99;
    cases.push((r, "purpose"));
    let mut r = good();
    r.channel = Channel::Unspecified as i32;
    cases.push((r, "channel"));
    let mut r = good();
    r.channel = 99;
    cases.push((r, "channel"));
    let mut r = good();
    r.message_key = String::new();
    cases.push((r, "message_key"));
    let mut r = good();
    r.message_key = "k".repeat(129);
    cases.push((r, "message_key"));
    let mut r = good();
    r.message_key = "line\nbreak".into();
    cases.push((r, "message_key"));
    let mut r = good();
    r.department = "Marketing Dept".into();
    cases.push((r, "department"));
    let mut r = good();
    r.r#type = "Campaign Message".into();
    cases.push((r, "type"));
    let mut r = good();
    r.request_id = "x".repeat(129);
    cases.push((r, "request_id"));
    let mut r = good();
    r.profile = None;
    cases.push((r, "profile"));
    for (req, field) in cases {
        let err = app.try_check(req.clone()).await.expect_err(field);
        assert_invalid(&err, field);
    }
    // Every violation at once.
    let mut r = good();
    r.channel = 0;
    r.purpose = 0;
    r.message_key = String::new();
    let err = app.try_check(r).await.expect_err("three violations");
    for field in ["channel", "purpose", "message_key"] {
        assert_invalid(&err, field);
    }
    // Without reserve, a message key is optional.
    let mut r = good();
    r.reserve = false;
    r.message_key = String::new();
    assert_allowed(&app.try_check(r).await.expect("plain check"), "no key");

    let mut r = good();
    r.profile = Some(by_id("0192f3a4-5b6c-7d8e-9f00-112233445566"));
    let err = app.try_check(r).await.expect_err("unknown profile");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    assert!(app.interaction_ids(by_id(&p)).await.is_empty());
    assert_eq!(app.get(by_id(&p)).await.version, version);
    app.assert_no_changes_since(mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_the_de_duplication_window_come_from_the_config() {
    let app = RulesApp::spawn_with(|config| {
        config.contact.caps = vec![CapConfig {
            window_hours: 1,
            max: 2,
        }];
        config.contact.dedup_window_days = 2;
    })
    .await;
    let p = marketable(&app).await;
    let t0 = app.now();
    app.send_marketing(&p, Channel::Email, "a").await;
    app.advance(Duration::secs(600));
    app.send_marketing(&p, Channel::Sms, "b").await;
    app.advance(Duration::secs(600));
    let r = app.check(&p, Channel::Push, Purpose::Marketing, "c").await;
    assert_denied(&r, &[DenyReason::FrequencyCap], "3rd within the hour");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(t0.plus(HOUR)));
    app.set_time(t0.plus(HOUR));
    assert_allowed(
        &app.check(&p, Channel::Push, Purpose::Marketing, "c").await,
        "an hour after the first",
    );
    let r = app.check(&p, Channel::Push, Purpose::Marketing, "a").await;
    assert_denied(&r, &[DenyReason::DuplicateMessage], "within 2 days");
    assert_eq!(opt_ts(&r.next_allowed_at), Some(t0.plus(Duration::days(2))));
    app.set_time(t0.plus(Duration::days(2)));
    assert_allowed(
        &app.check(&p, Channel::Push, Purpose::Marketing, "a").await,
        "2 days after",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_rules_see_both_sides_of_a_merge_and_each_side_after_the_unmerge() {
    let app = RulesApp::spawn().await;
    let a = marketable(&app).await;
    let b = marketable(&app).await;
    let t0 = app.now();
    // B got "welcome" an hour ago; A has an open case.
    app.set_time(t0.plus(HOUR));
    app.record_on(
        &b,
        outbound(
            Channel::Email,
            Purpose::Marketing,
            "campaign_message",
            "welcome",
            t0,
        ),
    )
    .await;
    app.record_on(&a, case_event("a-1", CaseState::Open, "complaint", t0))
        .await;
    assert_allowed(
        &app.check(&b, Channel::Sms, Purpose::Service, "").await,
        "B alone: service",
    );
    assert_denied(
        &app.check(&b, Channel::Sms, Purpose::Marketing, "").await,
        &[DenyReason::FrequencyCap],
        "B alone",
    );
    assert_denied(
        &app.check(&a, Channel::Sms, Purpose::Marketing, "welcome")
            .await,
        &[DenyReason::OpenCase],
        "A alone",
    );

    let m = app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(m.profile_id, a);
    let r = app
        .check(&a, Channel::Sms, Purpose::Marketing, "welcome")
        .await;
    assert_denied(
        &r,
        &[
            DenyReason::DuplicateMessage,
            DenyReason::FrequencyCap,
            DenyReason::OpenCase,
        ],
        "merged: B's send and A's case",
    );
    assert_eq!(r.profile_id, a);

    app.unmerge(&m.merges[0].merge_id).await;
    assert_denied(
        &app.check(&a, Channel::Sms, Purpose::Marketing, "welcome")
            .await,
        &[DenyReason::OpenCase],
        "A after the unmerge",
    );
    let r = app
        .check(&b, Channel::Sms, Purpose::Marketing, "welcome")
        .await;
    assert_denied(
        &r,
        &[DenyReason::DuplicateMessage, DenyReason::FrequencyCap],
        "B after the unmerge",
    );
    assert_eq!(r.profile_id, b);
}
