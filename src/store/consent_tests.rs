//! Property test of consent over merges, on a real sled store: random consent records on
//! random profiles, merges and unmerges, with time moving so grants expire. Checks, for every
//! purpose × channel:
//! - a record decides for its root at once;
//! - a merge gives DENIED_BY_MERGE_CONFLICT exactly where one side grants and the other
//!   denies, and otherwise the side with a decision (the newer when both agree);
//! - undoing that merge at once restores both sides exactly.

use std::sync::Arc;

use proptest::prelude::*;

use super::{SledStore, Store, StoreOptions};
use crate::domain::consent::{
    self, ConsentPolicy, ConsentState, Consents, Decision, NewConsent, Purpose,
};
use crate::domain::identifier::{Identifier, IdentifierKind};
use crate::domain::identity::{self, ProfileKey, ResolveInput};
use crate::domain::ids::ProfileId;
use crate::domain::interaction::Channel;
use crate::domain::policy::IdentityPolicy;
use crate::domain::ports::{ReadView, root_of};
use crate::domain::time::{Duration, Timestamp};
use crate::domain::tree::MergeTree;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
enum Op {
    Record {
        profile: usize,
        purpose: bool,
        channel: u8,
        grant: bool,
        days: i64,
    },
    Merge {
        a: usize,
        b: usize,
        keep: bool,
    },
    Unmerge {
        merge: usize,
    },
    Wait {
        days: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..6usize, any::<bool>(), 0..3u8, any::<bool>(), 1..40i64).prop_map(
            |(profile, purpose, channel, grant, days)| Op::Record { profile, purpose, channel, grant, days }
        ),
        3 => (0..6usize, 0..6usize, any::<bool>()).prop_map(|(a, b, keep)| Op::Merge { a, b, keep }),
        1 => (0..6usize).prop_map(|merge| Op::Unmerge { merge }),
        2 => (1..20i64).prop_map(|days| Op::Wait { days }),
    ]
}

const PAIRS: [(Purpose, Channel); 4] = [
    (Purpose::Marketing, Channel::Email),
    (Purpose::Marketing, Channel::Sms),
    (Purpose::Service, Channel::Email),
    (Purpose::Service, Channel::Sms),
];

type States = Vec<ConsentState>;

fn states(view: &dyn ReadView, p: ProfileId, now: Timestamp) -> Result<States> {
    let root = root_of(view, p)?.ok_or_else(|| Error::NotFound("profile".into()))?;
    let c = Consents::load(view, MergeTree::load(view, &root)?)?;
    Ok(PAIRS
        .iter()
        .map(|(pu, ch)| c.state(*pu, *ch, now))
        .collect())
}

/// Effect: Some(true) granted, Some(false) denied, None nothing.
fn effect(s: &ConsentState) -> Option<bool> {
    match s {
        ConsentState::None => None,
        ConsentState::Granted { .. } => Some(true),
        _ => Some(false),
    }
}

/// Merges the trees of `a` and `b`; returns the merge id.
fn merge(
    store: &dyn Store,
    a: ProfileId,
    b: ProfileId,
    policy: &IdentityPolicy,
    now: Timestamp,
) -> Result<crate::domain::ids::MergeId> {
    let mut merged = None;
    store.write(&mut |tx| {
        merged = Some(identity::merge_profiles(
            tx,
            &[ProfileKey::Id(a), ProfileKey::Id(b)],
            policy,
            "t",
            "test",
            now,
        )?);
        Ok(())
    })?;
    merged
        .and_then(|m| m.merges.first().map(|r| r.id))
        .ok_or_else(|| Error::Unavailable("no merge".into()))
}

fn run(ops: Vec<Op>) -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| Error::Unavailable(e.to_string()))?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&StoreOptions {
        path: dir.path().to_path_buf(),
        cache_capacity_bytes: 8 << 20,
        master_key: crate::store::crypto::Key([7; 32]),
        min_free_mb: 0,
    })?);
    let id_policy = IdentityPolicy::default();
    let policy = ConsentPolicy::default();
    let mut now = Timestamp(1_795_428_000_000_000);
    let mut profiles = Vec::new();
    for n in 0..6 {
        let email = Identifier::parse(IdentifierKind::Email, "", &format!("c{n}@example.com"))?;
        let mut out = None;
        store.write(&mut |tx| {
            let input = ResolveInput {
                identifiers: vec![email.clone()],
                create_if_missing: true,
                allow_merge: false,
                source: "t".into(),
            };
            let d = identity::decide(tx, &input, &id_policy)?;
            out = identity::apply(tx, d, "t", now)?.profile;
            Ok(())
        })?;
        profiles.push(out.ok_or_else(|| Error::Unavailable("not created".into()))?);
    }
    let mut merges = Vec::new();
    for op in ops {
        now = now.plus_secs(1);
        match op {
            Op::Wait { days } => now = now.plus(Duration::days(days)),
            Op::Record {
                profile,
                purpose,
                channel,
                grant,
                days,
            } => {
                let p = profiles[profile];
                let new = NewConsent {
                    purpose: if purpose {
                        Purpose::Marketing
                    } else {
                        Purpose::Service
                    },
                    channel: [Some(Channel::Email), Some(Channel::Sms), None][usize::from(channel)],
                    decision: if grant {
                        Decision::Granted
                    } else {
                        Decision::Denied
                    },
                    source: "t".into(),
                    expires_at: grant.then(|| now.plus(Duration::days(days))),
                };
                store.write(&mut |tx| {
                    consent::record(tx, &ProfileKey::Id(p), new.clone(), &policy, now).map(|_| ())
                })?;
                let after = store.read_with(|v| states(v, p, now))?;
                for (i, (pu, ch)) in PAIRS.iter().enumerate() {
                    if new.purpose == *pu && new.channel.is_none_or(|c| c == *ch) {
                        assert_eq!(effect(&after[i]), Some(grant), "a record decides at once");
                    }
                }
            }
            Op::Merge { a, b, keep } => {
                let (pa, pb) = (profiles[a], profiles[b]);
                let (ra, rb) = store.read_with(|v| {
                    Ok((root_of(v, pa)?.map(|r| r.id), root_of(v, pb)?.map(|r| r.id)))
                })?;
                if ra == rb {
                    continue;
                }
                let before_a = store.read_with(|v| states(v, pa, now))?;
                let before_b = store.read_with(|v| states(v, pb, now))?;
                let m = merge(&*store, pa, pb, &id_policy, now)?;
                let joined = store.read_with(|v| states(v, pa, now))?;
                for i in 0..PAIRS.len() {
                    let (x, y) = (effect(&before_a[i]), effect(&before_b[i]));
                    match (x, y) {
                        (Some(x), Some(y)) if x != y => assert!(
                            matches!(joined[i], ConsentState::DeniedByMergeConflict { .. }),
                            "{:?}: {:?} + {:?} -> {:?}",
                            PAIRS[i],
                            before_a[i],
                            before_b[i],
                            joined[i]
                        ),
                        (Some(_), None) => assert_eq!(joined[i], before_a[i]),
                        (None, Some(_)) => assert_eq!(joined[i], before_b[i]),
                        _ => assert_eq!(effect(&joined[i]), x),
                    }
                }
                // Undo at once: both sides exactly as before.
                store.write(&mut |tx| identity::unmerge(tx, m, "t", "test", now).map(|_| ()))?;
                assert_eq!(store.read_with(|v| states(v, pa, now))?, before_a);
                assert_eq!(store.read_with(|v| states(v, pb, now))?, before_b);
                if keep {
                    now = now.plus_secs(1);
                    merges.push((merge(&*store, pa, pb, &id_policy, now)?, pa, pb));
                }
            }
            Op::Unmerge { merge } if !merges.is_empty() => {
                let (m, _, _) = merges.remove(merge % merges.len());
                store.write(&mut |tx| identity::unmerge(tx, m, "t", "test", now).map(|_| ()))?;
            }
            Op::Unmerge { .. } => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn consent_merge_rule_and_exact_unmerge(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
