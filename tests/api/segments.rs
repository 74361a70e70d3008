//! Issue 4, acceptance 8 and 9 (segments): SearchProfiles / CountProfiles with the structured
//! filter — on a generated data set of 10,000 profiles whose answer is computed locally, and on
//! small hand-made sets for ranges, `any_of`, identifier kinds, consent, interactions, scores,
//! paging and invalid filters.

use std::collections::BTreeSet;
use std::time::Instant;

use customer_profile::domain::time::{Duration, Timestamp};
use customer_profile::service::pb;
use futures::StreamExt;
use futures::stream;
use pb::{Channel, Gender, IdentifierKind, Purpose, ScoreKind};

use crate::helpers::*;
use crate::rules_helpers::*;

const PROFILES: usize = 10_000;
const CONCURRENCY: usize = 32;
const BATCH: usize = 500;

// ------------------------------------------------------------------------------ the data set

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsentPlan {
    Nothing,
    /// MARKETING × EMAIL granted (default lifetime): active.
    EmailGrant,
    /// MARKETING on every channel: active for email.
    AllChannelGrant,
    /// Granted, then denied: not active.
    GrantThenDeny,
    /// Denied on every channel.
    DenyAll,
    /// MARKETING on SMS only.
    SmsGrant,
    /// PROFILING on email: another purpose.
    ProfilingEmail,
    /// Granted until one day after the build: expired when the search runs.
    Expiring,
}

impl ConsentPlan {
    fn active_email_marketing(self) -> bool {
        matches!(self, ConsentPlan::EmailGrant | ConsentPlan::AllChannelGrant)
    }
}

#[derive(Debug, Clone)]
struct Person {
    identifier: pb::Identifier,
    gender: Gender,
    city: Option<&'static str>,
    consent: ConsentPlan,
    /// (type, product attribute, occurred_at)
    events: Vec<(&'static str, &'static str, Timestamp)>,
}

/// The generator: fixed seed, so the data set (and the answer) is always the same.
fn people(seed: u64, build_time: Timestamp, query_time: Timestamp) -> Vec<Person> {
    let mut rng = Rng::new(seed);
    let day = Duration::days(1).0;
    let window = query_time.minus(Duration::days(90));
    // Every event occurred at or before the build time (no more than 5 min in the future).
    let newest_age = query_time.0 - build_time.0;
    let within = |rng: &mut Rng| {
        let age = newest_age + rng.below((90 * day - newest_age) as u64 + 1) as i64;
        query_time.minus(Duration(age))
    };
    let outside = |rng: &mut Rng| window.minus(Duration(1 + rng.below(110 * day as u64) as i64));
    (0..PROFILES)
        .map(|n| {
            let identifier = if rng.chance(70) {
                email(&format!("seg-{n}@example.com"))
            } else {
                phone(&format!("+4477009{n:05}"))
            };
            let gender = match rng.below(100) {
                0..45 => Gender::Male,
                45..80 => Gender::Female,
                80..85 => Gender::NonBinary,
                _ => Gender::Unspecified,
            };
            let city = match rng.below(100) {
                0..15 => Some("Manchester"),
                15..20 => Some("MANCHESTER"),
                20..25 => Some("manchester"),
                25..30 => Some("Greater Manchester"),
                30..55 => Some("London"),
                55..75 => Some("Leeds"),
                _ => None,
            };
            let consent = match rng.below(100) {
                0..40 => ConsentPlan::EmailGrant,
                40..50 => ConsentPlan::AllChannelGrant,
                50..60 => ConsentPlan::GrantThenDeny,
                60..70 => ConsentPlan::DenyAll,
                70..80 => ConsentPlan::SmsGrant,
                80..85 => ConsentPlan::ProfilingEmail,
                85..90 => ConsentPlan::Expiring,
                _ => ConsentPlan::Nothing,
            };
            let mut events = Vec::new();
            if rng.chance(35) {
                // Exactly on the window's edge now and then: still inside.
                let t = if n % 101 == 0 {
                    window
                } else {
                    within(&mut rng)
                };
                events.push(("purchase", "X", t));
            }
            if rng.chance(10) {
                // 1 µs before the window now and then: outside.
                let t = if n % 103 == 0 {
                    window.plus_micros(-1)
                } else {
                    outside(&mut rng)
                };
                events.push(("purchase", "X", t));
            }
            if rng.chance(10) {
                events.push(("purchase", "Y", within(&mut rng)));
            }
            if rng.chance(5) {
                events.push(("purchase", "x", within(&mut rng)));
            }
            if rng.chance(5) {
                events.push(("purchase_return", "X", within(&mut rng)));
            }
            if rng.chance(5) {
                events.push(("support_call", "X", within(&mut rng)));
            }
            Person {
                identifier,
                gender,
                city,
                consent,
                events,
            }
        })
        .collect()
}

/// Creates one person over gRPC (Resolve, UpdateProfile, RecordConsent); returns the id.
async fn create_person(app: &RulesApp, person: &Person, build_time: Timestamp) -> String {
    let r = app
        .try_resolve(vec![person.identifier.clone()], true, false)
        .await
        .expect("Resolve");
    assert_eq!(outcome(&r), pb::ResolveOutcome::Created, "{r:?}");
    let p = r.profile_id;
    let mut paths = Vec::new();
    let mut attributes = pb::ProfileAttributes::default();
    if person.gender != Gender::Unspecified {
        attributes.gender = person.gender as i32;
        paths.push("attributes.gender");
    }
    if let Some(city) = person.city {
        attributes.city = Some(city.into());
        paths.push("attributes.city");
    }
    if !paths.is_empty() {
        app.update(by_id(&p), attributes, &paths, build_time).await;
    }
    match person.consent {
        ConsentPlan::Nothing => {}
        ConsentPlan::EmailGrant => {
            app.grant(&p, Purpose::Marketing, Channel::Email).await;
        }
        ConsentPlan::AllChannelGrant => {
            app.grant(&p, Purpose::Marketing, Channel::Unspecified)
                .await;
        }
        ConsentPlan::GrantThenDeny => {
            app.grant(&p, Purpose::Marketing, Channel::Email).await;
            app.deny(&p, Purpose::Marketing, Channel::Email).await;
        }
        ConsentPlan::DenyAll => {
            app.deny(&p, Purpose::Marketing, Channel::Unspecified).await;
        }
        ConsentPlan::SmsGrant => {
            app.grant(&p, Purpose::Marketing, Channel::Sms).await;
        }
        ConsentPlan::ProfilingEmail => {
            app.grant(&p, Purpose::Profiling, Channel::Email).await;
        }
        ConsentPlan::Expiring => {
            app.grant_until(
                &p,
                Purpose::Marketing,
                Channel::Email,
                build_time.plus(Duration::days(1)),
            )
            .await;
        }
    }
    p
}

fn event_request(p: &str, kind: &str, product: &str, t: Timestamp) -> pb::RecordInteractionRequest {
    let mut i = inbound(Channel::Store, "stores", kind, t);
    i.attributes.insert("product".into(), product.into());
    pb::RecordInteractionRequest {
        profile: Some(by_id(p)),
        interaction: Some(i),
        request_id: String::new(),
    }
}

fn sorted(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let set: BTreeSet<String> = ids.into_iter().collect();
    set.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_men_in_manchester_who_bought_x_and_accept_email_out_of_ten_thousand() {
    let app = RulesApp::spawn().await;
    let build_time = app.now();
    let query_time = build_time.plus(Duration::days(2));
    let people = people(0xC0FF_EE04, build_time, query_time);

    // Build the data set over gRPC, 32 requests in flight.
    let started = Instant::now();
    let ids: Vec<String> = stream::iter(people.iter())
        .map(|person| {
            let app = &app;
            async move { create_person(app, person, build_time).await }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut events = Vec::new();
    for (p, person) in ids.iter().zip(&people) {
        for (kind, product, t) in &person.events {
            events.push(event_request(p, kind, product, *t));
        }
    }
    let n_events = events.len();
    let batches: Vec<Vec<pb::RecordInteractionRequest>> =
        events.chunks(BATCH).map(<[_]>::to_vec).collect();
    stream::iter(batches)
        .map(|requests| {
            let app = &app;
            async move {
                let n = requests.len();
                let r = app
                    .interactions
                    .clone()
                    .record_interactions(pb::RecordInteractionsRequest { requests })
                    .await
                    .expect("RecordInteractions")
                    .into_inner();
                assert_eq!(r.responses.len(), n);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let built = started.elapsed();
    app.set_time(query_time);

    // The answers, computed locally.
    let window = query_time.minus(Duration::days(90));
    let is_male = |x: &Person| x.gender == Gender::Male;
    let in_manchester = |x: &Person| x.city.is_some_and(|c| c.eq_ignore_ascii_case("manchester"));
    let bought_x = |x: &Person| {
        x.events
            .iter()
            .any(|(k, prod, t)| *k == "purchase" && *prod == "X" && *t >= window)
    };
    let accepts_email = |x: &Person| x.consent.active_email_marketing();
    let select = |f: &dyn Fn(&Person) -> bool| {
        sorted(
            ids.iter()
                .zip(&people)
                .filter(|(_, x)| f(x))
                .map(|(id, _)| id.clone()),
        )
    };
    let expected = select(&|x| is_male(x) && in_manchester(x) && bought_x(x) && accepts_email(x));
    assert!(
        expected.len() > 90,
        "the generated set has several pages of answers: {}",
        expected.len()
    );

    let gender = attr_eq("gender", "MALE");
    let city = attr_eq("city", "Manchester");
    let purchase = did("purchase", Some(("product", "X")), 90);
    let consent = consent_active(Purpose::Marketing, Channel::Email);

    // Each clause alone first (pins down which one disagrees, if any).
    let started_queries = Instant::now();
    assert_eq!(
        app.count(vec![]).await,
        PROFILES as u64,
        "no clause: every profile"
    );
    for (clause, want, what) in [
        (gender.clone(), select(&is_male), "gender = MALE"),
        (city.clone(), select(&in_manchester), "city = Manchester"),
        (
            purchase.clone(),
            select(&bought_x),
            "purchase X within 90 days",
        ),
        (
            consent.clone(),
            select(&accepts_email),
            "email marketing consent",
        ),
    ] {
        assert_eq!(
            app.count(vec![clause.clone()]).await,
            want.len() as u64,
            "CountProfiles({what})"
        );
        // The first page only: the full paging is checked on the combined filter below.
        let page = app
            .try_search(vec![clause], 1000, "", &["merged_ids"])
            .await
            .expect("SearchProfiles");
        let got: Vec<String> = page.profiles.into_iter().map(|p| p.profile_id).collect();
        assert_eq!(
            got,
            want[..want.len().min(1000)],
            "SearchProfiles({what}), first page"
        );
    }

    let clauses = vec![gender, city, purchase, consent];
    let first = app
        .try_search(clauses.clone(), 30, "", &["attributes"])
        .await
        .expect("SearchProfiles");
    let first_ids: Vec<String> = first
        .profiles
        .iter()
        .map(|p| p.profile_id.clone())
        .collect();
    assert_eq!(
        first_ids,
        expected[..30],
        "the first 30 in profile id order"
    );
    assert!(!first.next_page_token.is_empty(), "more pages follow");
    for p in &first.profiles {
        let a = attrs(p);
        assert_eq!(a.gender, Gender::Male as i32, "{p:?}");
        assert!(
            a.city
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case("manchester")),
            "{p:?}"
        );
    }
    assert_eq!(
        app.search_ids(clauses.clone(), 30).await,
        expected,
        "paging through gives exactly the expected set"
    );
    assert_eq!(app.search_ids(clauses.clone(), 1000).await, expected);
    assert_eq!(
        app.count(clauses).await,
        expected.len() as u64,
        "CountProfiles agrees"
    );

    // Filters where no clause is selective (every posting list is longer than the probe): the
    // search reads one clause's posting lists a chunk at a time, merging several values' lists
    // in id order, and pages through them. Paged 30 at a time, each must give exactly the
    // locally computed set.
    let in_city = |x: &Person, cities: &[&str]| {
        x.city
            .is_some_and(|c| cities.iter().any(|w| c.eq_ignore_ascii_case(w)))
    };
    let is_phone = |x: &Person| x.identifier.kind == IdentifierKind::Phone as i32;
    for (clauses, want, what) in [
        (
            vec![
                attr_any("city", vec![text("Leeds"), text("Manchester")]),
                attr_eq("gender", "MALE"),
            ],
            select(&|x| in_city(x, &["Leeds", "Manchester"]) && is_male(x)),
            "city any of Leeds, Manchester and gender = MALE",
        ),
        (
            vec![
                has_kind(IdentifierKind::Phone),
                consent_active(Purpose::Marketing, Channel::Email),
            ],
            select(&|x| is_phone(x) && accepts_email(x)),
            "a phone and email marketing consent",
        ),
        (
            vec![
                attr_eq("gender", "MALE"),
                attr_eq("city", "Greater Manchester"),
            ],
            select(&|x| is_male(x) && in_city(x, &["Greater Manchester"])),
            "gender = MALE and city = Greater Manchester",
        ),
    ] {
        assert!(want.len() > 60, "{what}: a few pages ({})", want.len());
        assert_eq!(app.search_ids(clauses.clone(), 30).await, want, "{what}");
        assert_eq!(app.count(clauses).await, want.len() as u64, "{what}");
    }
    eprintln!(
        "segments: built {PROFILES} profiles + {n_events} interactions in {built:?}; \
         queries in {:?}; {} matching",
        started_queries.elapsed(),
        expected.len()
    );
}

// ------------------------------------------------------------------------------ small sets

fn born(date: &str) -> pb::ProfileAttributes {
    pb::ProfileAttributes {
        birth_date: Some(date.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_equals_in_and_range_clauses() {
    let app = RulesApp::spawn().await;
    let now = app.now();
    let mut ids = Vec::new();
    for (birth, city, visits, tier, gender) in [
        (
            Some("1980-01-01"),
            Some("Leeds"),
            Some(1),
            Some("Gold"),
            Gender::Female,
        ),
        (
            Some("1990-06-15"),
            Some("manchester"),
            Some(5),
            Some("silver"),
            Gender::Male,
        ),
        (
            Some("2000-12-31"),
            Some("London"),
            Some(10),
            Some("GOLD"),
            Gender::Male,
        ),
        (None, None, None, None, Gender::Unspecified),
    ] {
        let p = app.create(vec![new_email()]).await;
        let mut a = birth.map(born).unwrap_or_default();
        a.city = city.map(String::from);
        a.gender = gender as i32;
        if let Some(v) = visits {
            a.custom.insert("visits".into(), int(v));
        }
        if let Some(t) = tier {
            a.custom.insert("tier".into(), text(t));
        }
        app.update(
            by_id(&p),
            a,
            &[
                "attributes.birth_date",
                "attributes.city",
                "attributes.gender",
                "attributes.custom.visits",
                "attributes.custom.tier",
            ],
            now,
        )
        .await;
        ids.push(p);
    }
    let pick = |which: &[usize]| sorted(which.iter().map(|i| ids[*i].clone()));

    let cases: Vec<(pb::FilterClause, Vec<String>, &str)> = vec![
        (
            attr_range(
                "birth_date",
                Some((text("1990-06-15"), true)),
                Some((text("2000-12-31"), false)),
            ),
            pick(&[1]),
            "[1990-06-15, 2000-12-31)",
        ),
        (
            attr_range("birth_date", Some((text("1990-06-15"), false)), None),
            pick(&[2]),
            "(1990-06-15, …)",
        ),
        (
            attr_range("birth_date", None, Some((text("1990-06-15"), true))),
            pick(&[0, 1]),
            "(…, 1990-06-15]",
        ),
        (
            attr_range("birth_date", None, Some((text("1980-01-01"), false))),
            vec![],
            "(…, 1980-01-01)",
        ),
        (
            attr_any("city", vec![text("MANCHESTER"), text("leeds")]),
            pick(&[0, 1]),
            "city in (MANCHESTER, leeds)",
        ),
        (attr_eq("gender", "male"), pick(&[1, 2]), "gender = male"),
        (
            attr_any("gender", vec![text("FEMALE"), text("NON_BINARY")]),
            pick(&[0]),
            "gender in (FEMALE, NON_BINARY)",
        ),
        (
            attr_range("custom.visits", Some((int(5), true)), Some((int(10), true))),
            pick(&[1, 2]),
            "visits in [5, 10]",
        ),
        (
            attr_range(
                "custom.visits",
                Some((int(1), false)),
                Some((int(10), false)),
            ),
            pick(&[1]),
            "visits in (1, 10)",
        ),
        (
            attr_any("custom.visits", vec![int(10)]),
            pick(&[2]),
            "visits = 10",
        ),
        (attr_eq("custom.tier", "gold"), pick(&[0, 2]), "tier = gold"),
    ];
    for (clause, want, what) in cases {
        assert_eq!(
            app.search_ids(vec![clause.clone()], 0).await,
            want,
            "{what}"
        );
        assert_eq!(
            app.count(vec![clause]).await,
            want.len() as u64,
            "count {what}"
        );
    }
    // AND of clauses.
    let both = vec![
        attr_eq("gender", "MALE"),
        attr_range("birth_date", None, Some((text("1995-01-01"), false))),
    ];
    assert_eq!(app.search_ids(both, 0).await, pick(&[1]));

    // The current value counts: after a move, the old city no longer matches.
    app.tick();
    let moved = pb::ProfileAttributes {
        city: Some("Leeds".into()),
        ..Default::default()
    };
    app.update(by_id(&ids[1]), moved, &["attributes.city"], app.now())
        .await;
    assert_eq!(
        app.search_ids(vec![attr_eq("city", "manchester")], 0).await,
        Vec::<String>::new()
    );
    assert_eq!(
        app.search_ids(vec![attr_eq("city", "Leeds")], 0).await,
        pick(&[0, 1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifier_kind_clauses_see_merged_profiles_as_one() {
    let app = RulesApp::spawn().await;
    let only_email = app.create(vec![new_email()]).await;
    let phone_and_email = app.create(vec![phone("+447700900123"), new_email()]).await;
    let only_device = app.create(vec![new_device()]).await;
    let kind = |k| vec![has_kind(k)];
    assert_eq!(
        app.search_ids(kind(IdentifierKind::Phone), 0).await,
        vec![phone_and_email.clone()]
    );
    assert_eq!(
        app.search_ids(kind(IdentifierKind::Email), 0).await,
        sorted([only_email.clone(), phone_and_email.clone()])
    );
    assert_eq!(
        app.search_ids(kind(IdentifierKind::DeviceId), 0).await,
        vec![only_device.clone()]
    );
    assert_eq!(app.count(kind(IdentifierKind::LoyaltyCard)).await, 0);

    // Merged: one live profile holding both sides' identifiers; the absorbed id is gone.
    let m = app
        .merge(vec![by_id(&only_email), by_id(&only_device)])
        .await;
    assert_eq!(m.profile_id, only_email);
    assert_eq!(
        app.search_ids(kind(IdentifierKind::DeviceId), 0).await,
        vec![only_email.clone()]
    );
    assert_eq!(
        app.search_ids(
            vec![
                has_kind(IdentifierKind::DeviceId),
                has_kind(IdentifierKind::Email)
            ],
            0
        )
        .await,
        vec![only_email.clone()]
    );
    assert_eq!(app.count(vec![]).await, 2, "two live profiles");
    // Unmerged: each again on its own.
    app.unmerge(&m.merges[0].merge_id).await;
    assert_eq!(
        app.search_ids(kind(IdentifierKind::DeviceId), 0).await,
        vec![only_device]
    );
    assert_eq!(app.count(vec![]).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_clauses_need_an_active_grant_now() {
    let app = RulesApp::spawn().await;
    let email_grant = app.create(vec![new_email()]).await;
    app.grant(&email_grant, Purpose::Marketing, Channel::Email)
        .await;
    let all_grant = app.create(vec![new_email()]).await;
    app.grant(&all_grant, Purpose::Marketing, Channel::Unspecified)
        .await;
    let withdrawn = app.create(vec![new_email()]).await;
    app.grant(&withdrawn, Purpose::Marketing, Channel::Email)
        .await;
    app.tick();
    app.deny(&withdrawn, Purpose::Marketing, Channel::Email)
        .await;
    let expiring = app.create(vec![new_email()]).await;
    let ends = app.now().plus(Duration::days(1));
    app.grant_until(&expiring, Purpose::Marketing, Channel::Email, ends)
        .await;
    let sms_only = app.create(vec![new_email()]).await;
    app.grant(&sms_only, Purpose::Marketing, Channel::Sms).await;
    let granted = app.create(vec![new_email()]).await;
    app.grant(&granted, Purpose::Marketing, Channel::Email)
        .await;
    let denied = app.create(vec![new_email()]).await;
    app.deny(&denied, Purpose::Marketing, Channel::Email).await;
    app.tick();
    // A merge conflict is not an active consent.
    app.merge(vec![by_id(&granted), by_id(&denied)]).await;

    let email = vec![consent_active(Purpose::Marketing, Channel::Email)];
    assert_eq!(
        app.search_ids(email.clone(), 0).await,
        sorted([email_grant.clone(), all_grant.clone(), expiring.clone()])
    );
    assert_eq!(
        app.search_ids(vec![consent_active(Purpose::Marketing, Channel::Sms)], 0)
            .await,
        sorted([all_grant.clone(), sms_only.clone()])
    );
    assert_eq!(
        app.count(vec![consent_active(Purpose::Service, Channel::Email)])
            .await,
        0
    );
    app.set_time(ends);
    assert_eq!(
        app.search_ids(email.clone(), 0).await,
        sorted([email_grant.clone(), all_grant.clone()]),
        "the expired grant left the segment at its expiry"
    );
    assert_eq!(app.count(email.clone()).await, 2);
    // A new decision after the merge resolves the conflict.
    app.grant(&granted, Purpose::Marketing, Channel::Email)
        .await;
    assert_eq!(
        app.search_ids(email, 0).await,
        sorted([email_grant, all_grant, granted])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_clauses_look_back_exactly_n_days() {
    let app = RulesApp::spawn().await;
    let on_edge = app.create(vec![new_email()]).await;
    let just_outside = app.create(vec![new_email()]).await;
    let other_product = app.create(vec![new_email()]).await;
    let no_product = app.create(vec![new_email()]).await;
    let other_type = app.create(vec![new_email()]).await;
    let survivor = app.create(vec![new_email()]).await;
    let absorbed = app.create(vec![new_email()]).await;
    let now = app.now();
    let thirty = now.minus(Duration::days(30));
    let buy = |product: Option<&str>, t: Timestamp| {
        let mut i = inbound(Channel::Web, "sales", "purchase", t);
        if let Some(p) = product {
            i.attributes.insert("product".into(), p.into());
        }
        i
    };
    app.record_on(&on_edge, buy(Some("X"), thirty)).await;
    app.record_on(&just_outside, buy(Some("X"), thirty.plus_micros(-1)))
        .await;
    app.record_on(&other_product, buy(Some("Y"), now.minus(DAY)))
        .await;
    app.record_on(&no_product, buy(None, now.minus(DAY))).await;
    let mut ret = buy(Some("X"), now.minus(DAY));
    ret.r#type = "purchase_return".into();
    app.record_on(&other_type, ret).await;
    // Bought through a profile that was merged away: counts for the survivor.
    app.record_on(&absorbed, buy(Some("X"), now.minus(DAY)))
        .await;
    app.merge(vec![by_id(&survivor), by_id(&absorbed)]).await;

    let x = |days| vec![did("purchase", Some(("product", "X")), days)];
    assert_eq!(
        app.search_ids(x(30), 0).await,
        sorted([on_edge.clone(), survivor.clone()])
    );
    assert_eq!(
        app.search_ids(x(31), 0).await,
        sorted([on_edge.clone(), just_outside.clone(), survivor.clone()])
    );
    assert_eq!(
        app.search_ids(vec![did("purchase", None, 30)], 0).await,
        sorted([
            on_edge.clone(),
            other_product.clone(),
            no_product.clone(),
            survivor.clone()
        ])
    );
    assert_eq!(
        app.search_ids(vec![did("purchase_return", None, 1)], 0)
            .await,
        vec![other_type.clone()]
    );
    assert_eq!(app.count(x(30)).await, 2);
    // 1 µs later the edge purchase is 30 days and 1 µs old.
    app.set_time(now.plus_micros(1));
    assert_eq!(app.search_ids(x(30), 0).await, vec![survivor.clone()]);
    assert_eq!(app.count(x(30)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_clauses_use_scores_decayed_to_now() {
    let app = RulesApp::spawn().await;
    let web = |t| inbound(Channel::Web, "sales", "page_view", t);
    let three = app.create(vec![new_email()]).await;
    let one = app.create(vec![new_email()]).await;
    let half = app.create(vec![new_email()]).await;
    let none = app.create(vec![new_email()]).await;
    let pressed = app.create(vec![new_email()]).await;
    let now = app.now();
    for _ in 0..3 {
        app.record_on(&three, web(now)).await;
    }
    app.record_on(&one, web(now)).await;
    app.record_on(&half, web(now.minus(Duration::days(30))))
        .await;
    for _ in 0..2 {
        app.record_on(
            &pressed,
            outbound(Channel::Email, Purpose::Marketing, "newsletter", "", now),
        )
        .await;
    }
    let engagement = |at_least, below| vec![score_at_least(ScoreKind::Engagement, at_least, below)];
    assert_eq!(
        app.search_ids(engagement(0.9, None), 0).await,
        sorted([three.clone(), one.clone()])
    );
    assert_eq!(
        app.search_ids(engagement(0.4, Some(0.9)), 0).await,
        vec![half.clone()],
        "30 days old: 0.5"
    );
    assert_eq!(
        app.search_ids(engagement(2.5, None), 0).await,
        vec![three.clone()]
    );
    assert_eq!(
        app.count(engagement(0.0, None)).await,
        5,
        "every profile's score is at least 0"
    );
    assert_eq!(
        app.search_ids(engagement(0.0, Some(0.1)), 0).await,
        sorted([none.clone(), pressed.clone()])
    );
    assert_eq!(
        app.search_ids(
            vec![score_at_least(ScoreKind::ContactPressure, 1.5, None)],
            0
        )
        .await,
        vec![pressed.clone()]
    );
    // 30 days later everything halved: 1.5, 0.5, 0.25.
    app.advance(Duration::days(30));
    assert_eq!(
        app.search_ids(engagement(0.9, None), 0).await,
        vec![three.clone()]
    );
    assert_eq!(
        app.search_ids(engagement(0.4, Some(0.9)), 0).await,
        vec![one.clone()]
    );
    assert_eq!(
        app.search_ids(
            vec![score_at_least(ScoreKind::ContactPressure, 0.1, None)],
            0
        )
        .await,
        vec![pressed],
        "2 × 2^(−30/7) ≈ 0.1025"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_default_to_fifty_and_refuse_more_than_a_thousand() {
    let app = RulesApp::spawn().await;
    let now = app.now();
    let mut ids = Vec::new();
    for _ in 0..61 {
        let p = app.create(vec![new_device()]).await;
        let a = pb::ProfileAttributes {
            city: Some("Paris".into()),
            ..Default::default()
        };
        app.update(by_id(&p), a, &["attributes.city"], now).await;
        ids.push(p);
    }
    app.create(vec![new_device()]).await; // no city
    let ids = sorted(ids);
    let paris = vec![attr_eq("city", "paris")];
    let first = app
        .try_search(paris.clone(), 0, "", &[])
        .await
        .expect("default page");
    assert_eq!(first.profiles.len(), 50, "default page_size 50");
    assert!(!first.next_page_token.is_empty());
    let second = app
        .try_search(paris.clone(), 0, &first.next_page_token, &[])
        .await
        .expect("second page");
    assert_eq!(second.profiles.len(), 11);
    assert!(second.next_page_token.is_empty(), "the end");
    let all: Vec<String> = first
        .profiles
        .iter()
        .chain(&second.profiles)
        .map(|p| p.profile_id.clone())
        .collect();
    assert_eq!(all, ids);
    for n in [1, 7, 61, 1000] {
        assert_eq!(app.search_ids(paris.clone(), n).await, ids, "page_size {n}");
    }
    assert_eq!(app.count(paris.clone()).await, 61);

    for bad in [1001, -1] {
        let err = app
            .try_search(paris.clone(), bad, "", &[])
            .await
            .expect_err("bad page size");
        assert_invalid(&err, "page_size");
    }
    let err = app
        .try_search(paris.clone(), 10, "not-a-token", &[])
        .await
        .expect_err("bad token");
    assert_invalid(&err, "page_token");
    // A token of another filter is refused.
    let err = app
        .try_search(
            vec![attr_eq("city", "london")],
            0,
            &first.next_page_token,
            &[],
        )
        .await
        .expect_err("token of another filter");
    assert_invalid(&err, "page_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_filters_name_the_clause_and_field() {
    let app = RulesApp::spawn().await;
    app.create(vec![new_email()]).await;
    let ok = attr_eq("city", "Manchester");
    let empty = pb::FilterClause { clause: None };
    let both = pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: "city".into(),
            any_of: vec![text("Leeds")],
            lower: Some(pb::RangeBound {
                value: Some(text("A")),
                inclusive: true,
            }),
            upper: None,
        })),
    };
    let neither = attr_any("city", vec![]);
    let exact: Vec<(Vec<pb::FilterClause>, &str)> = vec![
        (
            vec![attr_eq("shoe_size", "42")],
            "filter.clauses[0].attribute.path",
        ),
        (vec![attr_eq("", "x")], "filter.clauses[0].attribute.path"),
        (
            vec![attr_eq("custom.Bad-Key", "x")],
            "filter.clauses[0].attribute.path",
        ),
        (
            vec![ok.clone(), did("purchase", None, 0)],
            "filter.clauses[1].interaction.within_days",
        ),
        (
            vec![ok.clone(), did("purchase", None, 3651)],
            "filter.clauses[1].interaction.within_days",
        ),
        (
            vec![ok.clone(), did("purchase", None, -5)],
            "filter.clauses[1].interaction.within_days",
        ),
        (
            vec![did("", None, 30)],
            "filter.clauses[0].interaction.type",
        ),
        (
            vec![did("Purchase!", None, 30)],
            "filter.clauses[0].interaction.type",
        ),
        (
            vec![consent_active(Purpose::Marketing, Channel::Unspecified)],
            "filter.clauses[0].consent.channel",
        ),
        (
            vec![consent_active(Purpose::Unspecified, Channel::Email)],
            "filter.clauses[0].consent.purpose",
        ),
        (
            vec![
                ok.clone(),
                ok.clone(),
                has_kind(IdentifierKind::Unspecified),
            ],
            "filter.clauses[2].identifier_kind.kind",
        ),
        (
            vec![score_at_least(ScoreKind::Unspecified, 1.0, None)],
            "filter.clauses[0].score.score",
        ),
        (vec![empty], "filter.clauses[0]"),
        ((0..21).map(|_| ok.clone()).collect(), "filter.clauses"),
    ];
    for (clauses, field) in exact {
        let err = app
            .try_search(clauses.clone(), 0, "", &[])
            .await
            .expect_err(field);
        assert_invalid(&err, field);
        let err = app.try_count(clauses).await.expect_err(field);
        assert_invalid(&err, field);
    }
    // Malformed attribute clauses: named within the clause.
    let within: Vec<(Vec<pb::FilterClause>, &str)> = vec![
        (vec![both], "any_of and a range"),
        (vec![neither], "neither any_of nor a range"),
        (vec![attr_any("gender", vec![int(2)])], "gender is text"),
        (
            vec![attr_any(
                "city",
                (0..101).map(|n| text(&n.to_string())).collect(),
            )],
            "101 values",
        ),
        (
            vec![score_at_least(ScoreKind::Engagement, f64::NAN, None)],
            "NaN bound",
        ),
    ];
    for (clauses, what) in within {
        for err in [
            app.try_search(clauses.clone(), 0, "", &[])
                .await
                .expect_err(what),
            app.try_count(clauses).await.expect_err(what),
        ] {
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
            let fields = violated_fields(&err);
            assert!(
                !fields.is_empty() && fields.iter().all(|f| f.starts_with("filter.clauses[0]")),
                "{what}: violations name the clause: {fields:?}"
            );
        }
    }
    // Several bad clauses: each is named.
    let err = app
        .try_count(vec![
            attr_eq("shoe_size", "1"),
            ok,
            did("purchase", None, 0),
        ])
        .await
        .expect_err("two bad clauses");
    assert_invalid(&err, "filter.clauses[0].attribute.path");
    assert_invalid(&err, "filter.clauses[2].interaction.within_days");
}
