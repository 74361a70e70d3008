//! Issue 4, acceptance 1 and 6: consent records with expiry ("no perpetual licence"), the
//! effective decision per purpose × channel, merge conflicts (most restrictive) and unmerge,
//! preferences, and invalid input.

use customer_profile::domain::time::Duration;
use customer_profile::service::pb;
use pb::{Channel, ConsentDecision, ConsentState, DenyReason, Purpose};
use tonic::Code;

use crate::helpers::*;
use crate::rules_helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_stops_allowing_contact_exactly_at_its_expiry() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    // Sub-second precision on purpose: the instant is exact to the microsecond.
    let expires = app.now().plus(Duration::days(10)).plus_micros(250_001);
    let rec = app
        .grant_until(&p, Purpose::Marketing, Channel::Email, expires)
        .await;
    assert_eq!(opt_ts(&rec.expires_at), Some(expires), "{rec:?}");
    assert_eq!(opt_ts(&rec.recorded_at), Some(app.now()), "{rec:?}");
    assert_eq!(rec.origin_profile_id, p);

    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_allowed(&r, "right after the grant");
    assert_eq!(suggested(&r), Channel::Email, "{r:?}");
    assert_eq!(r.profile_id, p);

    app.set_time(expires.plus_micros(-1));
    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_allowed(&r, "1 µs before expiry");
    let c = app.consents(&p).await;
    let e = effective_map(&c.effective);
    let email = e
        .get(&(Purpose::Marketing as i32, Channel::Email as i32))
        .expect("the grant is in force");
    assert_eq!(email.state, ConsentState::Granted as i32);
    assert_eq!(opt_ts(&email.expires_at), Some(expires));
    assert_eq!(email.consent_id, rec.consent_id);
    assert_eq!(e.len(), 1, "only MARKETING × EMAIL is not NONE: {e:?}");

    app.set_time(expires);
    let r = app.check(&p, Channel::Email, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::Consent], "at expires_at");
    assert_eq!(
        r.next_allowed_at, None,
        "waiting does not bring consent back"
    );
    assert_eq!(suggested(&r), Channel::Unspecified, "{r:?}");
    let c = app.consents(&p).await;
    assert_eq!(
        state_of(&c.effective, Purpose::Marketing, Channel::Email),
        ConsentState::None
    );
    assert!(
        c.effective.is_empty(),
        "an expired grant is NONE, and NONE is not listed: {c:?}"
    );
    assert_eq!(c.records.len(), 1, "the record itself stays: {c:?}");
    assert_eq!(c.records[0].consent_id, rec.consent_id);

    // An expired grant also leaves searches.
    assert_eq!(
        app.count(vec![consent_active(Purpose::Marketing, Channel::Email)])
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_without_expiry_lasts_twelve_calendar_months() {
    let app = RulesApp::spawn().await;
    assert_eq!(START, utc(2026, 11, 23, 10, 0, 0));
    let p = app.create(vec![new_email()]).await;
    // create() moved the clock one second on.
    assert_eq!(app.now(), utc(2026, 11, 23, 10, 0, 1));
    let rec = app.grant(&p, Purpose::Marketing, Channel::Email).await;
    assert_eq!(
        opt_ts(&rec.expires_at),
        Some(utc(2027, 11, 23, 10, 0, 1)),
        "12 calendar months after recorded_at: {rec:?}"
    );
    assert_eq!(opt_ts(&rec.recorded_at), Some(utc(2026, 11, 23, 10, 0, 1)));

    // The default grant ends like any other: allowed 1 µs before, denied at the instant.
    app.set_time(utc(2027, 11, 23, 10, 0, 1).plus_micros(-1));
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "1 µs before the default expiry",
    );
    app.set_time(utc(2027, 11, 23, 10, 0, 1));
    assert_denied(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::Consent],
        "at the default expiry",
    );

    // Calendar months: from 29 February the year after ends on 28 February.
    app.set_time(utc(2028, 2, 29, 12, 30, 0));
    let rec = app.grant(&p, Purpose::Service, Channel::Sms).await;
    assert_eq!(
        opt_ts(&rec.expires_at),
        Some(utc(2029, 2, 28, 12, 30, 0)),
        "{rec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_beyond_twenty_four_months_is_rejected_and_writes_nothing() {
    let mut app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let now = app.now();
    assert_eq!(now, utc(2026, 11, 23, 10, 0, 1));
    // 24 calendar months later is 731 days here (29 February 2028 lies between).
    let max = utc(2028, 11, 23, 10, 0, 1);
    assert_eq!(max, now.plus(Duration::days(731)));
    let version = app.get(by_id(&p)).await.version;
    let mark = app.watermark().await;

    let bad = [
        (
            consent(
                Purpose::Marketing,
                Channel::Email,
                ConsentDecision::Granted,
                Some(max.plus_micros(1)),
            ),
            "1 µs beyond 24 months",
        ),
        (
            consent(
                Purpose::Marketing,
                Channel::Email,
                ConsentDecision::Granted,
                Some(now.plus(Duration::days(3650))),
            ),
            "ten years",
        ),
        (
            consent(
                Purpose::Marketing,
                Channel::Email,
                ConsentDecision::Granted,
                Some(now),
            ),
            "expires now",
        ),
        (
            consent(
                Purpose::Marketing,
                Channel::Email,
                ConsentDecision::Granted,
                Some(now.plus(Duration::days(-1))),
            ),
            "expired yesterday",
        ),
        (
            consent(
                Purpose::Marketing,
                Channel::Email,
                ConsentDecision::Denied,
                Some(now.plus(Duration::days(30))),
            ),
            "a denial with an expiry",
        ),
    ];
    for (record, what) in bad {
        let err = app
            .try_record_consent(by_id(&p), record, "")
            .await
            .expect_err(what);
        assert_invalid(&err, "consent.expires_at");
    }
    assert!(app.consents(&p).await.records.is_empty());
    assert_eq!(app.get(by_id(&p)).await.version, version);
    app.assert_no_changes_since(mark).await;

    // Exactly 24 months, and 1 µs from now, are accepted.
    let at_max = app
        .grant_until(&p, Purpose::Marketing, Channel::Email, max)
        .await;
    assert_eq!(opt_ts(&at_max.expires_at), Some(max));
    let soon = app
        .grant_until(&p, Purpose::Marketing, Channel::Sms, now.plus_micros(1))
        .await;
    assert_eq!(opt_ts(&soon.expires_at), Some(now.plus_micros(1)));
    assert_eq!(app.consents(&p).await.records.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_consent_requests_name_the_field_and_write_nothing() {
    let mut app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let version = app.get(by_id(&p)).await.version;
    let mark = app.watermark().await;
    let good = || {
        consent(
            Purpose::Marketing,
            Channel::Email,
            ConsentDecision::Granted,
            None,
        )
    };

    let mut no_purpose = good();
    no_purpose.purpose = Purpose::Unspecified as i32;
    let mut unknown_purpose = good();
    unknown_purpose.purpose = 99;
    let mut no_decision = good();
    no_decision.decision = ConsentDecision::Unspecified as i32;
    let mut no_source = good();
    no_source.source = String::new();
    let mut long_source = good();
    long_source.source = "s".repeat(129);
    let mut unknown_channel = good();
    unknown_channel.channel = 99;
    for (record, field) in [
        (no_purpose, "consent.purpose"),
        (unknown_purpose, "consent.purpose"),
        (no_decision, "consent.decision"),
        (no_source, "consent.source"),
        (long_source, "consent.source"),
        (unknown_channel, "consent.channel"),
    ] {
        let err = app
            .try_record_consent(by_id(&p), record, "")
            .await
            .expect_err(field);
        assert_invalid(&err, field);
    }

    // Every violation is reported, not just the first.
    let mut several = good();
    several.purpose = 0;
    several.source = String::new();
    let err = app
        .try_record_consent(by_id(&p), several, "")
        .await
        .expect_err("two violations");
    assert_invalid(&err, "consent.purpose");
    assert_invalid(&err, "consent.source");

    let err = app
        .consent
        .clone()
        .record_consent(pb::RecordConsentRequest {
            profile: None,
            consent: Some(good()),
            request_id: String::new(),
        })
        .await
        .expect_err("no profile");
    assert_invalid(&err, "profile");
    let err = app
        .try_record_consent(by_id(&p), good(), &"r".repeat(129))
        .await
        .expect_err("request_id too long");
    assert_invalid(&err, "request_id");

    let err = app
        .try_record_consent(by_id("0192f3a4-5b6c-7d8e-9f00-112233445566"), good(), "")
        .await
        .expect_err("unknown profile");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .try_record_consent(by_ident(new_email()), good(), "")
        .await
        .expect_err("unknown identifier");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = app
        .try_consents(by_ident(new_email()))
        .await
        .expect_err("GetConsents of an unknown identifier");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Preferences: a channel both preferred and opted out, repeats, no channel.
    for (prefs, what) in [
        (
            preferences(&[Channel::Email, Channel::Sms], &[Channel::Sms], ""),
            "preferred and opted out",
        ),
        (
            preferences(&[Channel::Email, Channel::Email], &[], ""),
            "preferred twice",
        ),
        (
            preferences(&[], &[Channel::Post, Channel::Post], ""),
            "opted out twice",
        ),
        (
            preferences(&[Channel::Unspecified], &[], ""),
            "CHANNEL_UNSPECIFIED",
        ),
        (preferences(&[], &[], "not a language!"), "language"),
    ] {
        let err = app
            .try_set_preferences(by_id(&p), prefs, "")
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let fields = violated_fields(&err);
        assert!(
            !fields.is_empty() && fields.iter().all(|f| f.starts_with("preferences")),
            "{what}: the violation names a preferences field: {fields:?}"
        );
    }

    assert!(app.consents(&p).await.records.is_empty());
    assert_eq!(app.get(by_id(&p)).await.version, version);
    app.assert_no_changes_since(mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_consent_is_recorded_once() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let c = consent(
        Purpose::Marketing,
        Channel::Email,
        ConsentDecision::Granted,
        None,
    );
    let first = app
        .try_record_consent(by_id(&p), c.clone(), "consent-1")
        .await
        .expect("first");
    app.tick();
    let again = app
        .try_record_consent(by_id(&p), c, "consent-1")
        .await
        .expect("retry");
    assert_eq!(again, first, "a retry returns the first answer");
    assert_eq!(app.consents(&p).await.records.len(), 1);
    assert_eq!(app.get(by_id(&p)).await.version, first.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_record_decides_between_channel_and_all_channel_records() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;

    let all = app
        .grant(&p, Purpose::Marketing, Channel::Unspecified)
        .await;
    assert_eq!(all.channel, Channel::Unspecified as i32);
    let e = effective_map(&app.consents(&p).await.effective);
    assert_eq!(
        e.len(),
        CHANNELS.len(),
        "an all-channel grant shows per channel: {e:?}"
    );
    for ch in CHANNELS {
        let x = &e[&(Purpose::Marketing as i32, ch as i32)];
        assert_eq!(x.state, ConsentState::Granted as i32, "{x:?}");
        assert_eq!(x.consent_id, all.consent_id, "{x:?}");
        assert_eq!(x.expires_at, all.expires_at, "{x:?}");
    }
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "").await,
        "all-channel grant, SMS",
    );

    app.tick();
    let sms_denied = app.deny(&p, Purpose::Marketing, Channel::Sms).await;
    let c = app.consents(&p).await;
    assert_eq!(
        state_of(&c.effective, Purpose::Marketing, Channel::Sms),
        ConsentState::Denied
    );
    assert_eq!(
        effective_map(&c.effective)[&(Purpose::Marketing as i32, Channel::Sms as i32)].consent_id,
        sms_denied.consent_id
    );
    assert_eq!(
        state_of(&c.effective, Purpose::Marketing, Channel::Email),
        ConsentState::Granted
    );
    assert_denied(
        &app.check(&p, Channel::Sms, Purpose::Marketing, "").await,
        &[DenyReason::Consent],
        "newer SMS denial",
    );
    assert_allowed(
        &app.check(&p, Channel::Email, Purpose::Marketing, "").await,
        "email still granted",
    );
    // A marketing denial says nothing about service.
    assert_allowed(
        &app.check(&p, Channel::Sms, Purpose::Service, "").await,
        "service on SMS",
    );

    // A newer all-channel grant overrides the older channel denial.
    app.tick();
    let again = app
        .grant(&p, Purpose::Marketing, Channel::Unspecified)
        .await;
    let e = effective_map(&app.consents(&p).await.effective);
    assert_eq!(
        e[&(Purpose::Marketing as i32, Channel::Sms as i32)].consent_id,
        again.consent_id
    );
    assert_eq!(
        e[&(Purpose::Marketing as i32, Channel::Sms as i32)].state,
        ConsentState::Granted as i32
    );

    // A newer channel grant beside an all-channel denial.
    app.tick();
    app.deny(&p, Purpose::Marketing, Channel::Unspecified).await;
    app.tick();
    app.grant(&p, Purpose::Marketing, Channel::Post).await;
    let c = app.consents(&p).await;
    for ch in CHANNELS {
        let want = if ch == Channel::Post {
            ConsentState::Granted
        } else {
            ConsentState::Denied
        };
        assert_eq!(
            state_of(&c.effective, Purpose::Marketing, ch),
            want,
            "{ch:?}"
        );
    }
    // Records: every one, newest first.
    assert_eq!(c.records.len(), 5, "{c:?}");
    let times: Vec<_> = c.records.iter().map(|r| opt_ts(&r.recorded_at)).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    assert_eq!(c.records[0].channel, Channel::Post as i32);
    assert_eq!(c.records[4].consent_id, all.consent_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merging_a_grant_with_a_denial_denies_until_a_new_decision() {
    let app = RulesApp::spawn().await;
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    let a_email = app.grant(&a, Purpose::Marketing, Channel::Email).await;
    app.tick();
    let b_email = app.deny(&b, Purpose::Marketing, Channel::Email).await;
    app.tick();
    // Only B decided on SMS: its grant carries into the merged profile.
    let b_sms = app.grant(&b, Purpose::Marketing, Channel::Sms).await;
    app.tick();
    assert_allowed(
        &app.check(&a, Channel::Email, Purpose::Marketing, "").await,
        "A before the merge",
    );

    let m = app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(m.profile_id, a, "the oldest survives");
    let merged_at = app.now();

    let c = app.consents(&b).await;
    assert_eq!(c.profile_id, a, "read by the absorbed id");
    let e = effective_map(&c.effective);
    let email = &e[&(Purpose::Marketing as i32, Channel::Email as i32)];
    assert_eq!(
        email.state,
        ConsentState::DeniedByMergeConflict as i32,
        "grant + denial → most restrictive: {email:?}"
    );
    assert_eq!(email.consent_id, "", "no single record decides a conflict");
    assert_eq!(opt_ts(&email.since), Some(merged_at));
    let sms = &e[&(Purpose::Marketing as i32, Channel::Sms as i32)];
    assert_eq!(sms.state, ConsentState::Granted as i32, "{sms:?}");
    assert_eq!(sms.consent_id, b_sms.consent_id);
    assert_eq!(e.len(), 2, "{e:?}");
    // Every record of both sides, newest first, with its origin.
    let ids: Vec<(&str, &str)> = c
        .records
        .iter()
        .map(|r| (r.consent_id.as_str(), r.origin_profile_id.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![
            (b_sms.consent_id.as_str(), b.as_str()),
            (b_email.consent_id.as_str(), b.as_str()),
            (a_email.consent_id.as_str(), a.as_str()),
        ]
    );
    // GetProfile shows the same.
    let view = app
        .try_get_masked(by_id(&a), &["consents"], 0)
        .await
        .expect("GetProfile(consents)");
    assert_eq!(effective_map(&view.consents), e);

    let r = app.check(&b, Channel::Email, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::Consent], "merge conflict");
    assert_eq!(r.profile_id, a);
    assert_eq!(suggested(&r), Channel::Sms, "{r:?}");
    assert_allowed(
        &app.check(&a, Channel::Sms, Purpose::Marketing, "").await,
        "SMS carried from B",
    );
    assert_eq!(
        app.count(vec![consent_active(Purpose::Marketing, Channel::Email)])
            .await,
        0,
        "a conflict is not an active consent"
    );

    // A decision recorded after the merge clears the conflict.
    app.tick();
    let fresh = app.grant(&a, Purpose::Marketing, Channel::Email).await;
    let e = effective_map(&app.consents(&a).await.effective);
    let email = &e[&(Purpose::Marketing as i32, Channel::Email as i32)];
    assert_eq!(email.state, ConsentState::Granted as i32, "{email:?}");
    assert_eq!(email.consent_id, fresh.consent_id);
    assert_allowed(
        &app.check(&a, Channel::Email, Purpose::Marketing, "").await,
        "after a new grant",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_recorded_after_a_merge_conflict_is_a_plain_denial() {
    let app = RulesApp::spawn().await;
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    app.grant(&a, Purpose::Service, Channel::Email).await;
    app.deny(&b, Purpose::Service, Channel::Email).await;
    app.tick();
    app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(
        app.consent_state(&a, Purpose::Service, Channel::Email)
            .await,
        ConsentState::DeniedByMergeConflict
    );
    // SERVICE is denied by a merge conflict too.
    assert_denied(
        &app.check(&a, Channel::Email, Purpose::Service, "").await,
        &[DenyReason::Consent],
        "service, merge conflict",
    );
    app.tick();
    app.deny(&a, Purpose::Service, Channel::Email).await;
    assert_eq!(
        app.consent_state(&a, Purpose::Service, Channel::Email)
            .await,
        ConsentState::Denied
    );
    app.tick();
    app.grant(&a, Purpose::Service, Channel::Email).await;
    assert_allowed(
        &app.check(&a, Channel::Email, Purpose::Service, "").await,
        "service after a new grant",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_grant_does_not_conflict_with_a_denial() {
    let app = RulesApp::spawn().await;
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    let a_grant_ends = app.now().plus(Duration::days(1));
    app.grant_until(&a, Purpose::Marketing, Channel::Email, a_grant_ends)
        .await;
    app.deny(&b, Purpose::Marketing, Channel::Email).await;
    // A's grant has expired when the merge happens: A is NONE, so B's denial carries.
    app.set_time(a_grant_ends);
    app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(
        app.consent_state(&a, Purpose::Marketing, Channel::Email)
            .await,
        ConsentState::Denied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmerge_restores_each_sides_own_decisions() {
    let app = RulesApp::spawn().await;
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    app.grant(&a, Purpose::Marketing, Channel::Email).await;
    app.grant(&a, Purpose::Profiling, Channel::Unspecified)
        .await;
    app.tick();
    // B refuses marketing on every channel.
    app.deny(&b, Purpose::Marketing, Channel::Unspecified).await;
    app.tick();
    let before_a = app.consents(&a).await;
    let before_b = app.consents(&b).await;
    assert_eq!(before_b.effective.len(), CHANNELS.len());

    let m = app.merge(vec![by_id(&a), by_id(&b)]).await;
    let merge_id = m.merges[0].merge_id.clone();
    app.tick();
    let c = app.consents(&a).await;
    for ch in CHANNELS {
        let want = if ch == Channel::Email {
            ConsentState::DeniedByMergeConflict
        } else {
            ConsentState::Denied
        };
        assert_eq!(
            state_of(&c.effective, Purpose::Marketing, ch),
            want,
            "{ch:?}"
        );
        assert_eq!(
            state_of(&c.effective, Purpose::Profiling, ch),
            ConsentState::Granted,
            "B never decided on profiling: A's grant carries ({ch:?})"
        );
    }
    assert_denied(
        &app.check(&a, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::Consent],
        "merged",
    );

    let u = app.unmerge(&merge_id).await;
    assert_eq!(u.restored_profile_id, b);
    let after_a = app.consents(&a).await;
    let after_b = app.consents(&b).await;
    assert_eq!(after_a, before_a, "A's own decisions and records, exactly");
    assert_eq!(after_b, before_b, "B's own decisions and records, exactly");
    assert_allowed(
        &app.check(&a, Channel::Email, Purpose::Marketing, "").await,
        "A after the unmerge",
    );
    assert_denied(
        &app.check(&b, Channel::Email, Purpose::Marketing, "").await,
        &[DenyReason::Consent],
        "B after the unmerge",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_round_trip_and_are_replaced_whole() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let none = app.consents(&p).await.preferences.unwrap_or_default();
    assert!(
        none.preferred_channels.is_empty() && none.opted_out_channels.is_empty(),
        "no preferences yet: {none:?}"
    );
    let v0 = app.get(by_id(&p)).await.version;

    let r = app
        .set_preferences(
            &p,
            &[Channel::Sms, Channel::Email, Channel::App],
            &[Channel::PhoneCall, Channel::Post],
            "en-GB",
        )
        .await;
    let want = pb::Preferences {
        updated_at: Some(ts(app.now())),
        ..preferences(
            &[Channel::Sms, Channel::Email, Channel::App],
            &[Channel::PhoneCall, Channel::Post],
            "en-GB",
        )
    };
    assert_eq!(r.preferences.as_ref(), Some(&want), "order is kept");
    assert!(r.version > v0, "a preference change is a change");
    assert_eq!(app.get(by_id(&p)).await.version, r.version);
    assert_eq!(app.consents(&p).await.preferences.as_ref(), Some(&want));
    let view = app
        .try_get_masked(by_id(&p), &["preferences"], 0)
        .await
        .expect("GetProfile(preferences)");
    assert_eq!(view.preferences.as_ref(), Some(&want));

    // Replaced whole, not merged.
    app.tick();
    let r = app.set_preferences(&p, &[Channel::Push], &[], "").await;
    let want = pb::Preferences {
        updated_at: Some(ts(app.now())),
        ..preferences(&[Channel::Push], &[], "")
    };
    assert_eq!(r.preferences.as_ref(), Some(&want));
    let view = app
        .try_get_masked(by_ident(email_of(&app, &p).await), &["preferences"], 0)
        .await
        .expect("GetProfile(preferences) by identifier");
    assert_eq!(view.preferences.as_ref(), Some(&want));

    // An opted-out channel is refused for contact, whatever the consent.
    app.set_preferences(&p, &[Channel::Email], &[Channel::Sms], "en-GB")
        .await;
    app.grant(&p, Purpose::Marketing, Channel::Unspecified)
        .await;
    let r = app.check(&p, Channel::Sms, Purpose::Marketing, "").await;
    assert_denied(&r, &[DenyReason::ChannelOptedOut], "opted out");
    assert_eq!(suggested(&r), Channel::Email);
}

async fn email_of(app: &RulesApp, p: &str) -> pb::Identifier {
    app.get(by_id(p))
        .await
        .identifiers
        .into_iter()
        .filter_map(|l| l.identifier)
        .find(|i| i.kind == pb::IdentifierKind::Email as i32)
        .expect("the profile has an email")
}
