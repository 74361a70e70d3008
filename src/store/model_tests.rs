//! Property test of the identity graph on a real sled store: random creates, attribute
//! updates, interactions, merges and unmerges (in any order) against a small reference model in
//! which a view is simply "the union over the current merge forest". Checks every profile id
//! ever created after every sequence, plus "an identifier belongs to at most one live profile",
//! and that the summary maintained on every write equals one recomputed from the tree's
//! interactions (late events included) and scores equal their closed form.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::{SledStore, Store, StoreOptions};
use crate::domain::attributes::{AttrPath, CoreField, Value};
use crate::domain::consent::Purpose;
use crate::domain::identifier::{Identifier, IdentifierKind};
use crate::domain::identity::{self, ProfileKey, ResolveInput};
use crate::domain::ids::{InteractionId, MergeId, ProfileId};
use crate::domain::interaction::{
    CaseState, Channel, Direction, InteractionFilter, Money, NewInteraction,
};
use crate::domain::policy::IdentityPolicy;
use crate::domain::profiles::{self, Parts};
use crate::domain::rules::Rules;
use crate::domain::summary::Summary;
use crate::domain::time::{Duration, Timestamp};
use crate::domain::timeline;
use crate::domain::view_cache::ViewCache;
use crate::error::Result;

#[derive(Debug, Clone)]
enum Op {
    Create,
    SetCity {
        profile: usize,
        observed: i64,
    },
    Interact {
        profile: usize,
        hours_ago: i64,
        shape: u8,
    },
    Merge {
        a: usize,
        b: usize,
    },
    Unmerge {
        merge: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        3 => (0..8usize, 0..50i64).prop_map(|(profile, observed)| Op::SetCity { profile, observed }),
        4 => (0..8usize, 0..2000i64, any::<u8>())
            .prop_map(|(profile, hours_ago, shape)| Op::Interact { profile, hours_ago, shape }),
        3 => (0..8usize, 0..8usize).prop_map(|(a, b)| Op::Merge { a, b }),
        2 => (0..8usize).prop_map(|merge| Op::Unmerge { merge }),
    ]
}

#[derive(Default)]
struct Model {
    parent: HashMap<ProfileId, ProfileId>,
    created: Vec<(ProfileId, Timestamp)>,
    merges: Vec<(MergeId, ProfileId, bool)>,
    /// origin -> (observed, write order, city)
    cities: Vec<(ProfileId, i64, usize, String)>,
    /// origin -> interactions (occurred, id)
    interactions: Vec<(ProfileId, Timestamp, InteractionId)>,
    emails: Vec<(ProfileId, Identifier)>,
}

impl Model {
    fn root(&self, mut p: ProfileId) -> ProfileId {
        while let Some(q) = self.parent.get(&p) {
            p = *q;
        }
        p
    }
    fn tree(&self, root: ProfileId) -> BTreeSet<ProfileId> {
        self.created
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| self.root(*p) == root)
            .collect()
    }
}

fn email(n: usize) -> Identifier {
    Identifier::parse(IdentifierKind::Email, "", &format!("p{n}@example.com"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn run(ops: Vec<Op>) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| crate::error::Error::Unavailable(e.to_string()))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&StoreOptions {
        path: dir.path().to_path_buf(),
        cache_capacity_bytes: 8 << 20,
        master_key: crate::store::crypto::Key([7; 32]),
        min_free_mb: 0,
    })?);
    let policy = IdentityPolicy::default();
    let rules = Rules::default();
    // A small view cache, so that reads hit, miss and evict; after every step each profile
    // read through it must equal one loaded from the store.
    let views = Arc::new(ViewCache::new(3));
    {
        let views = views.clone();
        store.on_commit(Box::new(move |t| views.invalidate(t)));
    }
    let mut m = Model::default();
    let mut now = Timestamp(1_700_000_000_000_000);
    let mut writes = 0usize;
    for op in ops {
        now = now.plus_secs(1);
        check_cached(&*store, &views, &m, &rules, now)?;
        let live: Vec<ProfileId> = m
            .created
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| m.root(*p) == *p)
            .collect();
        match op {
            Op::Create => {
                let id = email(m.created.len());
                let input = ResolveInput {
                    identifiers: vec![id.clone()],
                    create_if_missing: true,
                    allow_merge: false,
                    source: "t".into(),
                };
                let mut out = None;
                store.write(&mut |tx| {
                    let d = identity::decide(tx, &input, &policy)?;
                    out = Some(identity::apply(tx, d, "t", now)?);
                    Ok(())
                })?;
                let p = out
                    .and_then(|r| r.profile)
                    .unwrap_or_else(|| panic!("created"));
                m.created.push((p, now));
                m.emails.push((p, id));
            }
            Op::SetCity { profile, observed } if !m.created.is_empty() => {
                let p = m.created[profile % m.created.len()].0;
                let city = format!("c{writes}");
                store.write(&mut |tx| {
                    profiles::update_profile(
                        tx,
                        &ProfileKey::Id(p),
                        vec![(
                            AttrPath::Core(CoreField::City),
                            Some(Value::String(city.clone())),
                        )],
                        "t",
                        Timestamp(observed),
                        None,
                        now,
                    )
                    .map(|_| ())
                })?;
                m.cities.push((m.root(p), observed, writes, city));
                writes += 1;
            }
            Op::Interact {
                profile,
                hours_ago,
                shape,
            } if !m.created.is_empty() => {
                let p = m.created[profile % m.created.len()].0;
                let new = interaction_of_shape(shape, now.minus(Duration::hours(hours_ago)));
                let mut out = None;
                store.write(&mut |tx| {
                    out = Some(timeline::record(
                        tx,
                        &ProfileKey::Id(p),
                        new.clone(),
                        &rules,
                        now,
                    )?);
                    Ok(())
                })?;
                let (i, _) = out.unwrap_or_else(|| panic!("recorded"));
                m.interactions.push((m.root(p), i.occurred_at, i.id));
            }
            Op::Merge { a, b } if live.len() >= 2 => {
                let (pa, pb) = (live[a % live.len()], live[b % live.len()]);
                if pa == pb {
                    continue;
                }
                let mut out = None;
                store.write(&mut |tx| {
                    out = Some(identity::merge_profiles(
                        tx,
                        &[ProfileKey::Id(pa), ProfileKey::Id(pb)],
                        &policy,
                        "t",
                        "test",
                        now,
                    )?);
                    Ok(())
                })?;
                let merged = out.unwrap_or_else(|| panic!("merged"));
                let rec = &merged.merges[0];
                // The survivor is the oldest.
                let age = |p: ProfileId| {
                    m.created
                        .iter()
                        .find(|(q, _)| *q == p)
                        .map(|(_, t)| (*t, p))
                };
                assert_eq!(rec.survivor, if age(pa) < age(pb) { pa } else { pb });
                m.parent.insert(rec.absorbed, rec.survivor);
                m.merges.push((rec.id, rec.absorbed, true));
            }
            Op::Unmerge { merge } if !m.merges.is_empty() => {
                let i = merge % m.merges.len();
                let (mid, absorbed, active) = m.merges[i];
                let result =
                    store.write(&mut |tx| identity::unmerge(tx, mid, "t", "test", now).map(|_| ()));
                if active {
                    result?;
                    m.parent.remove(&absorbed);
                    m.merges[i].2 = false;
                } else {
                    assert!(result.is_err(), "a merge undone twice must be refused");
                }
            }
            _ => {}
        }
    }
    check_cached(&*store, &views, &m, &rules, now)?;
    check(&*store, &m, &rules, now)
}

/// Every profile, by id and by each e-mail, read through `views` equals the view loaded from
/// the store (a commit that left a changed profile in the cache fails this at the next step).
fn check_cached(
    store: &dyn Store,
    views: &ViewCache,
    m: &Model,
    rules: &Rules,
    now: Timestamp,
) -> Result<()> {
    let keys = m.created.iter().map(|(p, _)| ProfileKey::Id(*p)).chain(
        m.emails
            .iter()
            .map(|(_, i)| ProfileKey::Identifier(i.clone())),
    );
    for key in keys {
        store.read_with(|view| {
            let fresh = profiles::view_profile(view, &key, Parts::ALL, rules, now);
            let cached = views
                .snapshot(view, &key, rules)
                .map(|s| s.view(Parts::ALL, rules, now));
            assert_eq!(
                format!("{cached:?}"),
                format!("{fresh:?}"),
                "{key:?} read through the view cache"
            );
            Ok(())
        })?;
    }
    Ok(())
}

/// A varied interaction: channel, direction, type, case, amount and purpose from `shape`.
fn interaction_of_shape(shape: u8, occurred_at: Timestamp) -> NewInteraction {
    let kinds = [
        "purchase",
        "complaint",
        "campaign_message",
        "support_call",
        "visit",
    ];
    let kind = kinds[usize::from(shape) % kinds.len()];
    let direction = if shape & 0x08 == 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let case = match (shape >> 4) % 4 {
        0 => Some((format!("case-{}", shape % 3), CaseState::Open)),
        1 => Some((format!("case-{}", shape % 3), CaseState::Closed)),
        _ => None,
    };
    NewInteraction {
        channel: Channel::ALL[usize::from(shape) % Channel::ALL.len()],
        direction,
        department: ["web", "sales", "care"][usize::from(shape) % 3].into(),
        kind: kind.into(),
        message_key: (shape & 0x40 != 0).then(|| format!("m{}", shape % 5)),
        case,
        amount: (shape & 0x20 != 0).then(|| Money {
            currency: ["EUR", "GBP"][usize::from(shape) % 2].into(),
            units: i64::from(shape),
            nanos: 250_000_000,
        }),
        summary: String::new(),
        attributes: BTreeMap::new(),
        occurred_at: Some(occurred_at),
        purpose: match shape >> 6 {
            0 => None,
            1 => Some(Purpose::Marketing),
            2 => Some(Purpose::Service),
            _ => None,
        },
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || ((a - b) / a.abs().max(b.abs())).abs() < 1e-9
}

/// The summary the tree's interactions give when summarised from scratch, compared with the
/// one maintained on every write and combined over the tree; scores also against the closed
/// form Σ 2^(−age/half-life).
fn check_summary(
    view: &dyn crate::domain::ports::ReadView,
    v: &profiles::ProfileView,
    all: &[crate::domain::interaction::Interaction],
    rules: &Rules,
    now: Timestamp,
) {
    let got = v
        .summary
        .as_ref()
        .unwrap_or_else(|| panic!("summary asked for"));
    let mut want = Summary::default();
    for i in all {
        want.add(i, &rules.summary);
    }
    let s = &got.summary;
    assert_eq!(s.last_inbound, want.last_inbound);
    assert_eq!(s.last_outbound, want.last_outbound);
    assert_eq!(s.departments, want.departments);
    assert_eq!(s.cases, want.cases);
    assert_eq!(s.moments, want.moments);
    assert_eq!(s.spend, want.spend);
    assert_eq!(s.count, want.count);
    assert_eq!(s.last, want.last);
    let horizon = rules.contact.horizon();
    assert_eq!(
        s.contacts_within(now, horizon),
        want.contacts_within(now, horizon)
    );
    let closed = |hl: Duration, pick: &dyn Fn(&crate::domain::interaction::Interaction) -> bool| {
        all.iter()
            .filter(|i| pick(i))
            .map(|i| (-((now.0 - i.occurred_at.0) as f64) / hl.0 as f64).exp2())
            .sum::<f64>()
    };
    let e = closed(rules.summary.engagement_half_life, &|i| {
        i.direction == Direction::Inbound
    });
    let pr = closed(rules.summary.pressure_half_life, &|i| {
        rules.summary.is_marketing_contact(i)
    });
    assert!(
        close(got.engagement, e),
        "engagement {} vs {e}",
        got.engagement
    );
    assert!(close(got.pressure, pr), "pressure {} vs {pr}", got.pressure);
    let _ = view;
}

fn check(store: &dyn Store, m: &Model, rules: &Rules, now: Timestamp) -> Result<()> {
    store.read_with(|view| {
        for (p, _) in &m.created {
            let root = m.root(*p);
            let tree = m.tree(root);
            let v = profiles::view_profile(view, &ProfileKey::Id(*p), Parts::ALL, rules, now)?;
            assert_eq!(v.root.id, root, "root of {p}");
            let merged: BTreeSet<ProfileId> = v.merged_ids.iter().copied().chain([root]).collect();
            assert_eq!(merged, tree, "members of {root}");
            let ids: BTreeSet<&Identifier> = v.identifiers.iter().map(|l| &l.identifier).collect();
            let want: BTreeSet<&Identifier> = m
                .emails
                .iter()
                .filter(|(o, _)| tree.contains(o))
                .map(|(_, i)| i)
                .collect();
            assert_eq!(ids, want, "identifiers of {root}");
            let city = m
                .cities
                .iter()
                .filter(|(o, ..)| tree.contains(o))
                .max_by_key(|(_, obs, seq, _)| (*obs, *seq))
                .map(|(.., c)| Value::String(c.clone()));
            assert_eq!(
                v.attributes.get("city").and_then(|a| a.value.clone()),
                city,
                "city of {root}"
            );
            let mut want_i: Vec<(Timestamp, InteractionId)> = m
                .interactions
                .iter()
                .filter(|(o, ..)| tree.contains(o))
                .map(|(_, t, i)| (*t, *i))
                .collect();
            want_i.sort_by(|a, b| b.cmp(a));
            let (got, _) = timeline::list(
                view,
                &ProfileKey::Id(*p),
                &InteractionFilter::default(),
                None,
                10_000,
            )?;
            check_summary(view, &v, &got, rules, now);
            let got: Vec<(Timestamp, InteractionId)> =
                got.iter().map(|i| (i.occurred_at, i.id)).collect();
            assert_eq!(got, want_i, "interactions of {root}");
        }
        // Every identifier resolves to exactly the live root of the profile it was given to.
        for (origin, id) in &m.emails {
            let owner = identity::find_root(view, &ProfileKey::Identifier(id.clone()))?;
            assert_eq!(owner.id, m.root(*origin));
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn views_equal_the_union_over_the_current_merge_forest(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
