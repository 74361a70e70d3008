//! Issue 4, acceptance 7: the profile summary (GetProfile read_mask `summary`) — last contact
//! per channel and department, open cases, moments that matter, lifetime spend, and decayed
//! scores that match the closed form Σ 2^(−age / half-life) — through late events, a merge and
//! an unmerge. A local model recomputes the summary from the full interaction list.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use customer_profile::domain::time::{Duration, Timestamp};
use customer_profile::service::pb;
use pb::{CaseState, Channel, Direction, Purpose};

use crate::helpers::*;
use crate::rules_helpers::*;

const ENGAGEMENT_HALF_LIFE: Duration = Duration::days(30);
const PRESSURE_HALF_LIFE: Duration = Duration::days(7);
const MOMENT_TYPES: [&str; 5] = [
    "bill_payment",
    "plan_change",
    "support_call",
    "complaint",
    "purchase",
];

// ------------------------------------------------------------------------------ the model

/// What the summary shows, apart from the scores.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    channels: Vec<pb::ChannelActivity>,
    departments: Vec<pb::DepartmentActivity>,
    open_cases: Vec<pb::OpenCase>,
    moments: Vec<pb::Moment>,
    lifetime_spend: Vec<pb::Money>,
    interaction_count: u64,
    last_interaction_at: Option<prost_types::Timestamp>,
}

fn shape_of(s: &pb::ProfileSummary) -> Shape {
    Shape {
        channels: s.channels.clone(),
        departments: s.departments.clone(),
        open_cases: s.open_cases.clone(),
        moments: s.moments.clone(),
        lifetime_spend: s.lifetime_spend.clone(),
        interaction_count: s.interaction_count,
        last_interaction_at: s.last_interaction_at,
    }
}

fn at(i: &pb::Interaction) -> Timestamp {
    from_ts(&i.occurred_at.expect("stored interactions have occurred_at"))
}

fn reference(i: &pb::Interaction) -> pb::InteractionRef {
    pb::InteractionRef {
        interaction_id: i.interaction_id.clone(),
        occurred_at: i.occurred_at,
        channel: i.channel,
        department: i.department.clone(),
        r#type: i.r#type.clone(),
        direction: i.direction,
    }
}

fn latest<'a>(items: impl Iterator<Item = &'a pb::Interaction>) -> Option<&'a pb::Interaction> {
    items.max_by_key(|i| at(i))
}

fn is_marketing_contact(i: &pb::Interaction) -> bool {
    i.direction == Direction::Outbound as i32
        && (i.purpose == Purpose::Marketing as i32
            || (i.purpose == Purpose::Unspecified as i32 && i.r#type == "campaign_message"))
}

/// The summary recomputed from every interaction (occurred_at values must be distinct).
fn expected_shape(items: &[pb::Interaction]) -> Shape {
    let channels = CHANNELS
        .iter()
        .filter_map(|ch| {
            let on: Vec<_> = items.iter().filter(|i| i.channel == *ch as i32).collect();
            let last = |d: Direction| {
                latest(on.iter().copied().filter(|i| i.direction == d as i32)).map(|i| ts(at(i)))
            };
            (!on.is_empty()).then(|| pb::ChannelActivity {
                channel: *ch as i32,
                last_inbound_at: last(Direction::Inbound),
                last_outbound_at: last(Direction::Outbound),
            })
        })
        .collect();
    let departments: BTreeSet<&str> = items.iter().map(|i| i.department.as_str()).collect();
    let departments = departments
        .into_iter()
        .map(|d| pb::DepartmentActivity {
            department: d.into(),
            last: latest(items.iter().filter(|i| i.department == d)).map(reference),
        })
        .collect();
    let mut cases: BTreeMap<&str, Vec<&pb::Interaction>> = BTreeMap::new();
    for i in items.iter().filter(|i| !i.case_id.is_empty()) {
        cases.entry(i.case_id.as_str()).or_default().push(i);
    }
    let mut open_cases: Vec<pb::OpenCase> = cases
        .into_iter()
        .filter_map(|(id, mut v)| {
            v.sort_by_key(|i| at(i));
            let (first, last) = (v[0], v[v.len() - 1]);
            (last.case_state == CaseState::Open as i32).then(|| pb::OpenCase {
                case_id: id.into(),
                r#type: first.r#type.clone(),
                opened_at: first.occurred_at,
                last_activity_at: last.occurred_at,
                department: first.department.clone(),
            })
        })
        .collect();
    open_cases.sort_by_key(|c| (from_ts(&c.opened_at.expect("opened_at")), c.case_id.clone()));
    let moment_types: BTreeSet<&str> = MOMENT_TYPES.into_iter().collect();
    let moments = moment_types
        .into_iter()
        .filter_map(|t| {
            latest(items.iter().filter(|i| i.r#type == t)).map(|i| pb::Moment {
                r#type: t.into(),
                last: Some(reference(i)),
            })
        })
        .collect();
    let mut spend: BTreeMap<String, i128> = BTreeMap::new();
    for i in items.iter().filter(|i| i.r#type == "purchase") {
        if let Some(m) = &i.amount {
            *spend.entry(m.currency_code.clone()).or_default() +=
                i128::from(m.units) * 1_000_000_000 + i128::from(m.nanos);
        }
    }
    let lifetime_spend = spend
        .into_iter()
        .map(|(c, total)| pb::Money {
            currency_code: c,
            units: (total / 1_000_000_000) as i64,
            nanos: (total % 1_000_000_000) as i32,
        })
        .collect();
    Shape {
        channels,
        departments,
        open_cases,
        moments,
        lifetime_spend,
        interaction_count: items.len() as u64,
        last_interaction_at: latest(items.iter()).map(|i| ts(at(i))),
    }
}

/// Σ 2^(−(now − t) / half_life) over `times`.
fn decayed(times: impl Iterator<Item = Timestamp>, now: Timestamp, half_life: Duration) -> f64 {
    times
        .map(|t| 2f64.powf(-((now.0 - t.0) as f64) / half_life.0 as f64))
        .sum()
}

fn expected_scores(items: &[pb::Interaction], now: Timestamp) -> (f64, f64) {
    let engagement = decayed(
        items
            .iter()
            .filter(|i| i.direction == Direction::Inbound as i32)
            .map(at),
        now,
        ENGAGEMENT_HALF_LIFE,
    );
    let pressure = decayed(
        items.iter().filter(|i| is_marketing_contact(i)).map(at),
        now,
        PRESSURE_HALF_LIFE,
    );
    (engagement, pressure)
}

#[track_caller]
fn assert_close(got: f64, want: f64, what: &str) {
    let tolerance = 1e-9 * want.abs().max(1e-300);
    assert!(
        (got - want).abs() <= tolerance || (want == 0.0 && got.abs() < 1e-12),
        "{what}: got {got:.17e}, closed form {want:.17e} (relative error {:e})",
        ((got - want) / want).abs()
    );
}

/// Asserts a score: its value (1e-9 relative), as_of = now, and its half-life.
#[track_caller]
fn assert_score(s: &Option<pb::Score>, want: f64, now: Timestamp, half_life: Duration, what: &str) {
    let s = s
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: score missing"));
    assert_close(s.value, want, what);
    assert_eq!(
        opt_ts(&s.as_of),
        Some(now),
        "{what}: as_of is the read time"
    );
    assert_eq!(
        s.half_life_seconds,
        half_life.0 / 1_000_000,
        "{what}: half-life"
    );
}

/// Asserts the whole summary of `p` equals the one recomputed from `items`.
async fn assert_summary(app: &RulesApp, p: &str, items: &[pb::Interaction], what: &str) {
    let s = app.summary(p).await;
    assert_eq!(shape_of(&s), expected_shape(items), "{what}");
    let (engagement, pressure) = expected_scores(items, app.now());
    assert_score(
        &s.engagement,
        engagement,
        app.now(),
        ENGAGEMENT_HALF_LIFE,
        &format!("{what}: engagement"),
    );
    assert_score(
        &s.contact_pressure,
        pressure,
        app.now(),
        PRESSURE_HALF_LIFE,
        &format!("{what}: contact_pressure"),
    );
}

fn money(currency: &str, units: i64, nanos: i32) -> pb::Money {
    pb::Money {
        currency_code: currency.into(),
        units,
        nanos,
    }
}

// ------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decayed_scores_match_the_closed_form() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    app.grant(&p, Purpose::Marketing, Channel::Unspecified)
        .await;
    let t0 = app.now();

    // No interactions: both scores are zero.
    let s = app.summary(&p).await;
    assert_score(
        &s.engagement,
        0.0,
        t0,
        ENGAGEMENT_HALF_LIFE,
        "empty engagement",
    );
    assert_score(
        &s.contact_pressure,
        0.0,
        t0,
        PRESSURE_HALF_LIFE,
        "empty pressure",
    );
    assert_eq!(s.interaction_count, 0);
    assert_eq!(s.last_interaction_at, None);

    let days = |d: i64| Duration::days(d);
    let inbound_times = [t0.minus(days(3)), t0.minus(HOUR), t0];
    let mut items = Vec::new();
    for t in inbound_times {
        items.push(
            app.record_on(&p, inbound(Channel::Web, "sales", "page_view", t))
                .await,
        );
    }
    for (purpose, kind, t) in [
        (Purpose::Marketing, "newsletter", t0.minus(days(2))),
        (Purpose::Unspecified, "campaign_message", t0.minus(days(10))),
        // Not marketing: no pressure.
        (Purpose::Service, "service_message", t0.minus(days(1))),
        (
            Purpose::Unspecified,
            "bill_reminder",
            t0.minus(days(1)).minus(HOUR),
        ),
    ] {
        items.push(
            app.record_on(&p, outbound(Channel::Email, purpose, kind, "", t))
                .await,
        );
    }
    // A reserved marketing contact is an outbound marketing interaction too.
    items.push(app.send_marketing(&p, Channel::Sms, "promo").await);

    // Read at an awkward instant.
    app.advance(Duration(
        ((5 * 24 + 7) * 3600 + 13 * 60 + 17) * 1_000_000 + 123_456,
    ));
    let now = app.now();
    let s = app.summary(&p).await;
    let age = |t: Timestamp| (now.0 - t.0) as f64;
    let engagement: f64 = inbound_times
        .iter()
        .map(|t| 2f64.powf(-age(*t) / (30.0 * 86_400e6)))
        .sum();
    let pressure: f64 = [t0.minus(days(2)), t0.minus(days(10)), t0]
        .iter()
        .map(|t| 2f64.powf(-age(*t) / (7.0 * 86_400e6)))
        .sum();
    assert_score(
        &s.engagement,
        engagement,
        now,
        ENGAGEMENT_HALF_LIFE,
        "engagement",
    );
    assert_score(
        &s.contact_pressure,
        pressure,
        now,
        PRESSURE_HALF_LIFE,
        "pressure",
    );
    assert_eq!(
        s.engagement.as_ref().map(|x| x.half_life_seconds),
        Some(2_592_000)
    );
    assert_eq!(
        s.contact_pressure.as_ref().map(|x| x.half_life_seconds),
        Some(604_800)
    );
    // The model agrees with the hand-written closed form.
    assert_summary(&app, &p, &items, "after the first reads").await;

    // A late event (40 days before now) counts exactly like the others.
    let late = app
        .record_on(
            &p,
            inbound(Channel::Store, "stores", "purchase", now.minus(days(40))),
        )
        .await;
    items.push(late);
    let late_pressure = app
        .record_on(
            &p,
            outbound(
                Channel::Post,
                Purpose::Marketing,
                "catalogue",
                "",
                now.minus(days(6)).minus(HOUR),
            ),
        )
        .await;
    items.push(late_pressure);
    assert_summary(&app, &p, &items, "after late events").await;

    // Long after: reads decay, writes do not move as_of backwards.
    app.advance(Duration(days(17).0 + Duration::hours(3).0));
    assert_summary(&app, &p, &items, "17 days later").await;
    let before = app.summary(&p).await;
    let again = app.summary(&p).await;
    assert_eq!(
        before, again,
        "a read at the same instant gives the same summary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_shows_channels_departments_cases_moments_and_spend() {
    let app = RulesApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let now = app.now();
    let h = |n: i64| now.minus(Duration::hours(n));

    let purchase = |channel, department: &str, t, amount: pb::Money, product: &str| {
        let mut i = inbound(channel, department, "purchase", t);
        i.amount = Some(amount);
        i.attributes.insert("product".into(), product.into());
        i
    };
    let plan_old = inbound(Channel::Web, "sales", "plan_change", h(300));
    let plan_new = inbound(Channel::App, "sales", "plan_change", h(100));
    let mut bill = inbound(Channel::Web, "finance", "bill_payment", h(50));
    bill.amount = Some(money("GBP", 40, 0)); // not a purchase: no spend
    let mut written = vec![
        purchase(
            Channel::Store,
            "stores",
            h(200),
            money("GBP", 19, 990_000_000),
            "X",
        ),
        purchase(
            Channel::Web,
            "sales",
            h(20),
            money("GBP", 5, 10_000_000),
            "Y",
        ),
        purchase(Channel::Web, "sales", h(30), money("EUR", 10, 0), "X"),
        plan_new,
        bill,
        outbound(
            Channel::Email,
            Purpose::Marketing,
            "campaign_message",
            "m1",
            h(10),
        ),
        outbound(
            Channel::Email,
            Purpose::Service,
            "service_message",
            "s1",
            h(5),
        ),
        inbound(Channel::Email, "customer_service", "support_call", h(4)),
        // Cases: c-1 opened by a complaint and still open; c-2 opened and closed;
        // c-3 opened later, still open; c-4 closed by an earlier-recorded later event.
        case_event("c-1", CaseState::Open, "complaint", h(70)),
        case_event("c-2", CaseState::Open, "complaint", h(60)),
        case_event("c-2", CaseState::Closed, "complaint", h(40)),
        case_event("c-3", CaseState::Open, "support_call", h(8)),
        case_event("c-1", CaseState::Open, "support_call", h(3)),
        case_event("c-4", CaseState::Closed, "support_call", h(1)),
        // Late events: older than what is already there.
        case_event("c-4", CaseState::Open, "complaint", h(90)),
        plan_old,
    ];
    let mut items = Vec::new();
    for i in written.drain(..) {
        items.push(app.record_on(&p, i).await);
    }
    let id_of = |pred: &dyn Fn(&pb::Interaction) -> bool| {
        items
            .iter()
            .find(|i| pred(i))
            .map(|i| i.interaction_id.clone())
            .expect("interaction")
    };

    let s = app.summary(&p).await;
    // Hand-checked expectations…
    let spend: Vec<_> = s.lifetime_spend.clone();
    assert_eq!(
        spend,
        vec![money("EUR", 10, 0), money("GBP", 25, 0)],
        "19.99 + 5.01 GBP, 10 EUR; bill payments are not spend"
    );
    let open: Vec<(&str, &str, &str)> = s
        .open_cases
        .iter()
        .map(|c| (c.case_id.as_str(), c.r#type.as_str(), c.department.as_str()))
        .collect();
    assert_eq!(
        open,
        vec![
            ("c-1", "complaint", "customer_service"),
            ("c-3", "support_call", "customer_service")
        ],
        "oldest first; c-2 and c-4 are closed"
    );
    assert_eq!(opt_ts(&s.open_cases[0].opened_at), Some(h(70)));
    assert_eq!(opt_ts(&s.open_cases[0].last_activity_at), Some(h(3)));
    let moments: Vec<(&str, String)> = s
        .moments
        .iter()
        .map(|m| {
            (
                m.r#type.as_str(),
                m.last.as_ref().expect("moment").interaction_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        moments,
        vec![
            ("bill_payment", id_of(&|i| i.r#type == "bill_payment")),
            (
                "complaint",
                id_of(&|i| i.case_id == "c-2" && i.case_state == CaseState::Closed as i32)
            ),
            (
                "plan_change",
                id_of(&|i| i.r#type == "plan_change" && i.channel == Channel::App as i32)
            ),
            (
                "purchase",
                id_of(&|i| i.r#type == "purchase" && at(i) == h(20))
            ),
            (
                "support_call",
                id_of(&|i| i.case_id == "c-4" && i.case_state == CaseState::Closed as i32)
            ),
        ],
        "the latest of each type by occurred_at, by type"
    );
    let email = s
        .channels
        .iter()
        .find(|c| c.channel == Channel::Email as i32)
        .expect("email activity");
    assert_eq!(
        (
            opt_ts(&email.last_inbound_at),
            opt_ts(&email.last_outbound_at)
        ),
        (Some(h(4)), Some(h(5)))
    );
    let names: Vec<&str> = s
        .departments
        .iter()
        .map(|d| d.department.as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "customer_service",
            "finance",
            "marketing",
            "sales",
            "stores"
        ]
    );
    assert_eq!(s.interaction_count, 16);
    assert_eq!(opt_ts(&s.last_interaction_at), Some(h(1)));
    // …and the full comparison with the recomputation.
    assert_summary(&app, &p, &items, "scenario").await;

    // A read mask without `summary` leaves it out; with it, only it (and the always-fields).
    let view = app
        .try_get_masked(by_id(&p), &["identifiers"], 0)
        .await
        .expect("GetProfile");
    assert!(view.summary.is_none(), "summary not asked for: {view:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_follows_late_events_merges_and_unmerges() {
    for seed in [0x5EED_0004, 0x5EED_0005, 0x5EED_0006] {
        random_history_through_a_merge(seed).await;
    }
}

/// 80 random interactions on A and B (late events included), a merge, 20 more on the merged
/// profile, an unmerge — and after each step the summary equals the recomputation.
async fn random_history_through_a_merge(seed: u64) {
    let app = RulesApp::spawn().await;
    let a = app.create(vec![new_email()]).await;
    let b = app.create(vec![new_email()]).await;
    let mut rng = Rng::new(seed);
    let mut used = HashSet::new();
    let mut own_a = Vec::new();
    let mut own_b = Vec::new();

    for n in 0..80 {
        let on_a = rng.chance(50);
        let i = random_interaction(&app, &mut rng, &mut used, if on_a { "a" } else { "b" });
        let p = if on_a { &a } else { &b };
        let stored = app.record_on(p, i).await;
        if on_a {
            own_a.push(stored);
        } else {
            own_b.push(stored);
        }
        app.advance(Duration(rng.below(36 * 3600 * 1_000_000) as i64));
        if n % 10 == 9 {
            assert_summary(
                &app,
                &a,
                &own_a,
                &format!("seed {seed:#x}: A after {n} writes"),
            )
            .await;
            assert_summary(
                &app,
                &b,
                &own_b,
                &format!("seed {seed:#x}: B after {n} writes"),
            )
            .await;
        }
    }

    let m = app.merge(vec![by_id(&a), by_id(&b)]).await;
    assert_eq!(m.profile_id, a);
    let merge_id = m.merges[0].merge_id.clone();
    let both: Vec<_> = own_a.iter().chain(&own_b).cloned().collect();
    assert_summary(&app, &a, &both, &format!("seed {seed:#x}: merged")).await;
    assert_summary(
        &app,
        &b,
        &both,
        &format!("seed {seed:#x}: merged, read by the absorbed id"),
    )
    .await;

    // Written to the merged profile: stays with the survivor after the unmerge.
    let mut after = Vec::new();
    for _ in 0..20 {
        let i = random_interaction(&app, &mut rng, &mut used, "m");
        after.push(app.record_on(&a, i).await);
        app.advance(Duration(rng.below(12 * 3600 * 1_000_000) as i64));
    }
    let all: Vec<_> = both.iter().chain(&after).cloned().collect();
    assert_summary(
        &app,
        &a,
        &all,
        &format!("seed {seed:#x}: merged, more writes"),
    )
    .await;

    app.advance(Duration::days(3));
    app.unmerge(&merge_id).await;
    let a_now: Vec<_> = own_a.iter().chain(&after).cloned().collect();
    assert_summary(
        &app,
        &a,
        &a_now,
        &format!("seed {seed:#x}: A after the unmerge"),
    )
    .await;
    assert_summary(
        &app,
        &b,
        &own_b,
        &format!("seed {seed:#x}: B after the unmerge"),
    )
    .await;
}

/// A random interaction that occurred up to 60 days before now (a distinct instant), with
/// cases named after `side`.
fn random_interaction(
    app: &RulesApp,
    rng: &mut Rng,
    used: &mut HashSet<i64>,
    side: &str,
) -> pb::Interaction {
    let occurred = loop {
        let t = app
            .now()
            .minus(Duration(rng.below(60 * 86_400 * 1_000_000) as i64));
        if used.insert(t.0) {
            break t;
        }
    };
    let channel = *rng.pick(&CHANNELS);
    let direction = if rng.chance(50) {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let department = *rng.pick(&[
        "finance",
        "customer_service",
        "marketing",
        "sales",
        "stores",
    ]);
    let kind = *rng.pick(&[
        "bill_payment",
        "plan_change",
        "support_call",
        "complaint",
        "purchase",
        "campaign_message",
        "car_configuration",
    ]);
    let mut i = pb::Interaction {
        occurred_at: Some(ts(occurred)),
        ..interaction(channel, direction, department, kind)
    };
    if direction == Direction::Outbound {
        i.purpose = *rng.pick(&[
            Purpose::Unspecified as i32,
            Purpose::Marketing as i32,
            Purpose::Service as i32,
        ]);
    }
    if rng.chance(30) {
        i.case_id = format!("{side}-case-{}", rng.below(3));
        i.case_state = if rng.chance(50) {
            CaseState::Open
        } else {
            CaseState::Closed
        } as i32;
    }
    if (kind == "purchase" && rng.chance(80)) || (kind == "bill_payment" && rng.chance(50)) {
        let currency: &&str = rng.pick(&["GBP", "EUR", "USD"]);
        i.amount = Some(money(
            currency,
            rng.below(1000) as i64,
            rng.below(1_000_000_000) as i32,
        ));
    }
    i
}
