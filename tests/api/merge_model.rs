//! Acceptance 3 (model): random sequences of creates, interactions, attribute updates, merges
//! and unmerges, run against a real server and against a small in-memory model of the merge
//! forest. After every sequence every profile id ever created must read exactly as the model
//! says, and every identifier must have exactly one live owner.
//!
//! The model: every write belongs to the live root at write time; a profile's view is the
//! union over its current merge tree; an attribute's winner is the greatest
//! (observed_at, write order) over the tree.

use std::collections::{BTreeMap, BTreeSet};

use customer_profile::domain::time::Timestamp;
use customer_profile::service::pb;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tonic::Code;

use crate::helpers::*;

const PATHS: [&str; 3] = ["given_name", "city", "custom.tier"];

#[derive(Debug, Clone)]
enum Op {
    /// A new profile with a new device id and a given_name observed `obs_ago` seconds ago.
    Create { obs_ago: i64 },
    /// An interaction that occurred `ago` minutes ago, to profile `target` (by id or device).
    Interact {
        target: usize,
        ago: i64,
        by_device: bool,
    },
    /// Sets attribute PATHS[path] observed `obs_ago` seconds ago.
    Update {
        target: usize,
        path: usize,
        obs_ago: i64,
    },
    /// Merges the profiles of two ids.
    Merge { a: usize, b: usize },
    /// Undoes the active merge number `which` (modulo the active ones).
    Unmerge { which: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i64..2_000).prop_map(|obs_ago| Op::Create { obs_ago }),
        3 => (any::<usize>(), 0i64..20, any::<bool>())
            .prop_map(|(target, ago, by_device)| Op::Interact { target, ago, by_device }),
        3 => (any::<usize>(), 0usize..PATHS.len(), 0i64..2_000)
            .prop_map(|(target, path, obs_ago)| Op::Update { target, path, obs_ago }),
        4 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Merge { a, b }),
        3 => any::<usize>().prop_map(|which| Op::Unmerge { which }),
    ]
}

/// One attribute write as the model keeps it: (observed_at, write order, value).
type Write = (Timestamp, u64, String);

#[derive(Debug, Default)]
struct MProfile {
    id: String,
    device: String,
    /// The active merge that absorbed this profile: (merge index).
    parent: Option<usize>,
    attrs: BTreeMap<&'static str, Write>,
    /// (occurred_at, interaction id).
    interactions: Vec<(Timestamp, String)>,
}

#[derive(Debug)]
struct MMerge {
    id: String,
    survivor: usize,
    absorbed: usize,
    active: bool,
}

#[derive(Debug, Default)]
struct Model {
    profiles: Vec<MProfile>,
    merges: Vec<MMerge>,
    writes: u64,
}

impl Model {
    fn root(&self, mut i: usize) -> usize {
        while let Some(m) = self.profiles[i].parent {
            i = self.merges[m].survivor;
        }
        i
    }

    fn members(&self, root: usize) -> Vec<usize> {
        (0..self.profiles.len())
            .filter(|&i| self.root(i) == root)
            .collect()
    }

    fn winner(&self, root: usize, path: &str) -> Option<&Write> {
        self.members(root)
            .into_iter()
            .filter_map(|m| self.profiles[m].attrs.get(path))
            .max_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)))
    }
}

fn attrs_for(path: &str, value: &str) -> pb::ProfileAttributes {
    match path {
        "given_name" => pb::ProfileAttributes {
            given_name: Some(value.into()),
            ..Default::default()
        },
        "city" => pb::ProfileAttributes {
            city: Some(value.into()),
            ..Default::default()
        },
        _ => pb::ProfileAttributes {
            custom: [("tier".to_string(), string_value(value))]
                .into_iter()
                .collect(),
            ..Default::default()
        },
    }
}

fn attr_value(p: &pb::Profile, path: &str) -> Option<String> {
    let a = attrs(p);
    match path {
        "given_name" => a.given_name,
        "city" => a.city,
        _ => custom_string(p, "tier"),
    }
}

/// Writes `path = value` to the profile `target` names, and mirrors it in the model.
async fn write_attr(
    app: &TestApp,
    model: &mut Model,
    target: usize,
    path: &'static str,
    obs_ago: i64,
    value: String,
) {
    let observed = app.now().plus_secs(-obs_ago);
    let root = model.root(target);
    let wins = model
        .winner(root, path)
        .is_none_or(|w| (observed, model.writes + 1) > (w.0, w.1));
    let r = app
        .update(
            by_id(&model.profiles[target].id),
            attrs_for(path, &value),
            &[&format!("attributes.{path}")],
            observed,
        )
        .await;
    assert_eq!(
        r.profile.as_ref().map(|p| p.profile_id.as_str()),
        Some(model.profiles[root].id.as_str())
    );
    if wins {
        assert!(
            names_path(&r.applied_paths, path),
            "{path} should apply: {r:?}"
        );
    } else {
        assert!(
            names_path(&r.superseded_paths, path),
            "{path} should be superseded: {r:?}"
        );
    }
    model.writes += 1;
    let w = (observed, model.writes, value);
    let own = &mut model.profiles[root].attrs;
    if own.get(path).is_none_or(|o| (w.0, w.1) > (o.0, o.1)) {
        own.insert(path, w);
    }
}

async fn apply(app: &TestApp, model: &mut Model, step: usize, op: &Op) {
    app.tick();
    let n = model.profiles.len();
    match *op {
        Op::Create { obs_ago } => {
            let dev = unique("model-device");
            let id = app.create(vec![device(&dev)]).await;
            model.profiles.push(MProfile {
                id,
                device: dev,
                ..Default::default()
            });
            write_attr(app, model, n, "given_name", obs_ago, format!("name-{step}")).await;
        }
        Op::Interact {
            target,
            ago,
            by_device,
        } if n > 0 => {
            let t = target % n;
            let key = if by_device {
                by_ident(device(&model.profiles[t].device))
            } else {
                by_id(&model.profiles[t].id)
            };
            let occurred = app.now().plus_secs(-ago * 60);
            let r = app.record(key, interaction_at(occurred)).await;
            let i = r.interaction.expect("interaction");
            let root = model.root(t);
            assert_eq!(i.profile_id, model.profiles[root].id);
            model.profiles[root]
                .interactions
                .push((occurred, i.interaction_id));
        }
        Op::Update {
            target,
            path,
            obs_ago,
        } if n > 0 => {
            write_attr(
                app,
                model,
                target % n,
                PATHS[path],
                obs_ago,
                format!("v-{step}"),
            )
            .await;
        }
        Op::Merge { a, b } if n > 0 => {
            let (a, b) = (a % n, b % n);
            let (ra, rb) = (model.root(a), model.root(b));
            let res = app
                .try_merge(vec![
                    by_id(&model.profiles[a].id),
                    by_id(&model.profiles[b].id),
                ])
                .await;
            if ra == rb {
                let err = res.expect_err("merging a profile with itself");
                assert_precondition(&err, "ALREADY_MERGED");
            } else {
                let r = res.expect("MergeProfiles");
                // Profiles are created one per second: the oldest is the first created.
                let (survivor, absorbed) = (ra.min(rb), ra.max(rb));
                assert_eq!(r.profile_id, model.profiles[survivor].id);
                assert_eq!(r.merges.len(), 1);
                assert_eq!(r.merges[0].absorbed_profile_id, model.profiles[absorbed].id);
                model.merges.push(MMerge {
                    id: r.merges[0].merge_id.clone(),
                    survivor,
                    absorbed,
                    active: true,
                });
                model.profiles[absorbed].parent = Some(model.merges.len() - 1);
            }
        }
        Op::Unmerge { which } => {
            let active: Vec<usize> = (0..model.merges.len())
                .filter(|&m| model.merges[m].active)
                .collect();
            if active.is_empty() {
                return;
            }
            let m = active[which % active.len()];
            let r = app.unmerge(&model.merges[m].id).await;
            let absorbed = model.merges[m].absorbed;
            assert_eq!(r.restored_profile_id, model.profiles[absorbed].id);
            model.merges[m].active = false;
            model.profiles[absorbed].parent = None;
            let root = model.root(model.merges[m].survivor);
            assert_eq!(r.survivor_profile_id, model.profiles[root].id);
        }
        _ => {}
    }
}

async fn check(app: &TestApp, model: &Model) {
    let mut owners_seen: BTreeMap<(i32, String, String), String> = BTreeMap::new();
    for (i, p) in model.profiles.iter().enumerate() {
        let root = model.root(i);
        let members = model.members(root);
        let view = app.get(by_id(&p.id)).await;
        let ctx = format!("profile #{i} ({}) in model {model:#?}", p.id);
        assert_eq!(view.profile_id, model.profiles[root].id, "root of {ctx}");
        let merged: BTreeSet<String> = members
            .iter()
            .filter(|&&m| m != root)
            .map(|&m| model.profiles[m].id.clone())
            .collect();
        assert_eq!(merged_set(&view), merged, "merged_ids of {ctx}");
        let idents: Vec<pb::Identifier> = members
            .iter()
            .map(|&m| device(&model.profiles[m].device))
            .collect();
        assert_eq!(
            profile_idents(&view),
            ident_set(&idents),
            "identifiers of {ctx}"
        );
        assert_eq!(
            view.identifiers.len(),
            idents.len(),
            "no identifier listed twice in {ctx}"
        );
        for path in PATHS {
            let want = model.winner(root, path).map(|w| w.2.clone());
            assert_eq!(attr_value(&view, path), want, "attribute {path} of {ctx}");
        }
        let mut want: Vec<(Timestamp, String)> = members
            .iter()
            .flat_map(|&m| model.profiles[m].interactions.iter().cloned())
            .collect();
        want.sort_by(|x, y| y.cmp(x));
        let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            app.interaction_ids(by_id(&p.id)).await,
            want,
            "interactions of {ctx}"
        );

        if root == i {
            for id in profile_idents(&view) {
                let prev = owners_seen.insert(id.clone(), p.id.clone());
                assert!(
                    prev.is_none(),
                    "{id:?} is shown by two live profiles: {prev:?} and {}",
                    p.id
                );
            }
        }
    }
    // The invariant, as LookupProfileIds sees it.
    let all: Vec<pb::Identifier> = model.profiles.iter().map(|p| device(&p.device)).collect();
    if !all.is_empty() {
        for (k, l) in app.lookup(all).await.into_iter().enumerate() {
            assert!(l.found, "{l:?}");
            assert_eq!(
                l.profile_id,
                model.profiles[model.root(k)].id,
                "lookup of profile #{k}'s device"
            );
        }
    }
}

async fn run(ops: Vec<Op>) {
    let mut app = TestApp::spawn().await;
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        apply(&app, &mut model, step, op).await;
        // Checked after every step: a later write could hide an earlier misattribution.
        check(&app, &model).await;
    }
    // Unknown ids are not profiles.
    let err = app
        .try_get(by_id("0192f3a4-5b6c-7d8e-9f00-112233445566"))
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);
    app.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn merge_forest_matches_the_model(ops in prop::collection::vec(op(), 8..=25)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(run(ops));
    }
}

/// The sequences the model exists for, run every time: writes through a merged-away id belong
/// to the live root, so they stay with the root when that id's merge is undone.
#[test]
fn writes_through_a_merged_away_id_stay_with_the_root_after_unmerge() {
    let ops = vec![
        Op::Create { obs_ago: 100 },
        Op::Create { obs_ago: 50 },
        Op::Merge { a: 1, b: 0 },
        Op::Interact {
            target: 1,
            ago: 1,
            by_device: false,
        },
        Op::Interact {
            target: 1,
            ago: 2,
            by_device: true,
        },
        Op::Update {
            target: 1,
            path: 1,
            obs_ago: 10,
        },
        Op::Update {
            target: 1,
            path: 0,
            obs_ago: 0,
        },
        Op::Create { obs_ago: 10 },
        Op::Merge { a: 2, b: 1 },
        Op::Interact {
            target: 2,
            ago: 3,
            by_device: false,
        },
        Op::Unmerge { which: 0 },
        Op::Update {
            target: 2,
            path: 2,
            obs_ago: 5,
        },
        Op::Unmerge { which: 0 },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(ops));
}
