//! Issue 8, acceptance 2: a model-based test of the whole public API.
//!
//! Random sequences of Resolve (create / match / link / merge, with and without `allow_merge`),
//! LinkIdentifier, UnlinkIdentifier, MergeProfiles, UnmergeProfiles, UpdateProfile,
//! RecordInteraction (with `request_id` retries), RecordConsent (grant / withdraw) and
//! EraseCustomer run against a real server and against a small in-memory reference model of
//! SPEC §2–§3, §4, §5, §7 and §10. Every answer (status code, ErrorInfo reason, ids, outcome,
//! linked identifiers, conflicts) is compared with the model's; every few steps and at the end
//! of a case every read is compared: each profile id and each pool identifier through
//! BatchGetProfiles (owner, identifiers, attributes, merged ids), LookupProfileIds, the
//! interactions and the consent state of every live profile.
//!
//! Identifiers come from a small pool per case (6 emails, 4 phones, 3 loyalty cards, 2
//! customer numbers) and the server runs with small caps (3 emails, 2 phones, 2 cards), so
//! collisions, merges, conflicts and caps happen all the time.
//!
//! Knobs: `API_MODEL_CASES` (default 1000), `API_MODEL_RUNNERS` (parallel runners, each with its
//! own server reused across its cases; default 3), `API_MODEL_SEED` (default: from the clock;
//! printed on a divergence together with the minimal failing sequence).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use customer_profile::domain::time::Timestamp;
use customer_profile::service::pb;
use pb::privacy_service_client::PrivacyServiceClient;
use pb::profile_result::Result as KeyResult;
use pb::{Channel, ConsentDecision, ConsentState, Purpose};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
};
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic::{Code, Status};

use crate::helpers::*;
use crate::rules_helpers::{RulesApp, consent, state_of};

// ------------------------------------------------------------------------------------ pool

const EMAILS: usize = 6;
const PHONES: usize = 4;
const CARDS: usize = 3;
const CUSTOMER_NUMBERS: usize = 2;
const POOL: usize = EMAILS + PHONES + CARDS + CUSTOMER_NUMBERS;

const CAP_EMAIL: usize = 3;
const CAP_PHONE: usize = 2;
const CAP_CARD: usize = 2;

/// Attribute paths the model writes.
const PATHS: [&str; 3] = ["given_name", "city", "custom.tier"];
/// Consent channels the model writes (purpose MARKETING).
const CONSENT_CHANNELS: [Channel; 2] = [Channel::Email, Channel::Sms];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Email,
    Phone,
    Card,
    CustomerNumber,
}

fn kind(i: usize) -> Kind {
    if i < EMAILS {
        Kind::Email
    } else if i < EMAILS + PHONES {
        Kind::Phone
    } else if i < EMAILS + PHONES + CARDS {
        Kind::Card
    } else {
        Kind::CustomerNumber
    }
}

/// SPEC §2 strength order (only the kinds in the pool).
fn strength(k: Kind) -> u8 {
    match k {
        Kind::CustomerNumber => 4,
        Kind::Card => 3,
        Kind::Email => 2,
        Kind::Phone => 1,
    }
}

fn cap(k: Kind) -> Option<usize> {
    match k {
        Kind::Email => Some(CAP_EMAIL),
        Kind::Phone => Some(CAP_PHONE),
        Kind::Card => Some(CAP_CARD),
        Kind::CustomerNumber => None,
    }
}

static CASE: AtomicU64 = AtomicU64::new(1);

/// The identifiers of one case, already in normal form; `n` makes them unique to the case, so
/// one server serves many cases.
fn pool(n: u64) -> Vec<pb::Identifier> {
    (0..POOL)
        .map(|i| match kind(i) {
            Kind::Email => email(&format!("m{i}.c{n}@example.com")),
            Kind::Phone => phone(&format!("+1{:010}{i:02}", n % 10_000_000_000)),
            Kind::Card => loyalty_card(&format!("L{n}X{i}")),
            Kind::CustomerNumber => customer_number(&format!("C{n}X{i}")),
        })
        .collect()
}

// ------------------------------------------------------------------------------------ ops

/// How a request names a profile.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The profile created `n`-th in the case (modulo the number created), by id.
    Profile(usize),
    /// A pool identifier.
    Ident(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Resolve {
        ids: Vec<usize>,
        create: bool,
        merge: bool,
    },
    Link {
        target: Target,
        ident: usize,
    },
    Unlink {
        target: Target,
        ident: usize,
    },
    Merge {
        a: Target,
        b: Target,
    },
    /// Undoes merge number `which` (modulo the merges made so far, undone ones included).
    Unmerge {
        which: usize,
    },
    Update {
        target: Target,
        path: usize,
        obs_ago: i64,
    },
    /// A new interaction with a new `request_id`, sent twice when `retry_now`.
    Record {
        target: Target,
        ago: i64,
        retry_now: bool,
    },
    /// Sends an earlier RecordInteraction again, same `request_id`, same body.
    Retry {
        which: usize,
    },
    Consent {
        target: Target,
        channel: usize,
        grant: bool,
    },
    Erase {
        target: Target,
    },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (0usize..8).prop_map(Target::Profile),
        (0usize..POOL).prop_map(Target::Ident),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (prop::collection::vec(0usize..POOL, 1..=3), prop::bool::weighted(0.85), any::<bool>())
            .prop_map(|(ids, create, merge)| Op::Resolve { ids, create, merge }),
        2 => (target(), 0usize..POOL).prop_map(|(target, ident)| Op::Link { target, ident }),
        2 => (target(), 0usize..POOL).prop_map(|(target, ident)| Op::Unlink { target, ident }),
        2 => (target(), target()).prop_map(|(a, b)| Op::Merge { a, b }),
        2 => (0usize..8).prop_map(|which| Op::Unmerge { which }),
        2 => (target(), 0usize..PATHS.len(), 0i64..100)
            .prop_map(|(target, path, obs_ago)| Op::Update { target, path, obs_ago }),
        2 => (target(), 0i64..20, any::<bool>())
            .prop_map(|(target, ago, retry_now)| Op::Record { target, ago, retry_now }),
        1 => (0usize..8).prop_map(|which| Op::Retry { which }),
        2 => (target(), 0usize..CONSENT_CHANNELS.len(), any::<bool>())
            .prop_map(|(target, channel, grant)| Op::Consent { target, channel, grant }),
        1 => target().prop_map(|target| Op::Erase { target }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 5..=25)
}

// ------------------------------------------------------------------------------------ model

/// Orders writes: (time, write order).
type Key = (Timestamp, u64);
/// One attribute write: (observed_at, write order, value).
type Write = (Timestamp, u64, String);
/// What the model expects instead of an answer: a status code and ErrorInfo reason.
type Refusal = (Code, Option<&'static str>);

#[derive(Debug, Default)]
struct MProfile {
    id: String,
    /// The active merge that absorbed it.
    parent: Option<usize>,
    erased: bool,
    attrs: BTreeMap<&'static str, Write>,
    /// (occurred_at, interaction id) written while this profile was the live root.
    interactions: Vec<(Timestamp, String)>,
    /// (key, channel index, granted) written while this profile was the live root.
    consents: Vec<(Key, usize, bool)>,
}

#[derive(Debug)]
struct MMerge {
    id: String,
    survivor: usize,
    absorbed: usize,
    at: Key,
    active: bool,
}

/// A RecordInteraction as sent, for retries.
#[derive(Debug)]
struct Sent {
    request_id: String,
    target: pb::ProfileRef,
    model_target: Target,
    occurred: Timestamp,
    /// (interaction id, profile it was written to) once the server accepted it.
    done: Option<(String, usize)>,
}

#[derive(Debug, Default)]
struct Model {
    profiles: Vec<MProfile>,
    merges: Vec<MMerge>,
    /// Pool identifier → the profile it was linked to (SPEC §3: links keep their profile).
    links: BTreeMap<usize, usize>,
    sent: Vec<Sent>,
    /// Write order of attribute values, consent records and merges.
    order: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eff {
    Nothing,
    Record(Key, bool),
    Conflict(Key),
}

impl Eff {
    fn effect(self) -> Option<bool> {
        match self {
            Eff::Nothing => None,
            Eff::Record(_, g) => Some(g),
            Eff::Conflict(_) => Some(false),
        }
    }

    fn at(self) -> Option<Key> {
        match self {
            Eff::Nothing => None,
            Eff::Record(k, _) | Eff::Conflict(k) => Some(k),
        }
    }
}

impl Model {
    fn next_order(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    fn root(&self, mut i: usize) -> usize {
        while let Some(m) = self.profiles[i].parent {
            i = self.merges[m].survivor;
        }
        i
    }

    fn members(&self, root: usize) -> Vec<usize> {
        (0..self.profiles.len())
            .filter(|&i| !self.profiles[i].erased && self.root(i) == root)
            .collect()
    }

    /// The live profile holding pool identifier `x`.
    fn owner(&self, x: usize) -> Option<usize> {
        self.links.get(&x).map(|&o| self.root(o))
    }

    /// Pool identifiers shown by the live profile `root`.
    fn held(&self, root: usize) -> Vec<usize> {
        self.links
            .iter()
            .filter(|&(_, &o)| self.root(o) == root)
            .map(|(&x, _)| x)
            .collect()
    }

    fn find(&self, t: Target) -> Result<usize, Refusal> {
        match t {
            Target::Profile(i) => {
                let i = i % self.profiles.len();
                if self.profiles[i].erased {
                    Err((Code::NotFound, Some("ERASED")))
                } else {
                    Ok(self.root(i))
                }
            }
            Target::Ident(x) => self.owner(x).ok_or((Code::NotFound, None)),
        }
    }

    /// SPEC §2: may `x` join a profile holding `held`?
    fn may_link(held: &[usize], x: usize) -> Result<(), &'static str> {
        let k = kind(x);
        if k == Kind::CustomerNumber && held.iter().any(|&h| kind(h) == k && h != x) {
            return Err("CUSTOMER_NUMBER_ALREADY_SET");
        }
        if let Some(c) = cap(k) {
            if held.iter().filter(|&&h| kind(h) == k).count() >= c {
                return Err("IDENTIFIER_CAP_REACHED");
            }
        }
        Ok(())
    }

    /// SPEC §2–§3: may profiles holding `held` together become one?
    fn may_merge(held: &[usize]) -> Result<(), &'static str> {
        let cns: BTreeSet<usize> = held
            .iter()
            .copied()
            .filter(|&h| kind(h) == Kind::CustomerNumber)
            .collect();
        if cns.len() > 1 {
            return Err("CUSTOMER_NUMBER_CONFLICT");
        }
        for k in [Kind::Email, Kind::Phone, Kind::Card] {
            if cap(k).is_some_and(|c| held.iter().filter(|&&h| kind(h) == k).count() > c) {
                return Err("IDENTIFIER_CAP_REACHED");
            }
        }
        Ok(())
    }

    /// Attribute winner over a tree: newest observed_at, ties by newest write.
    fn winner(&self, root: usize, path: &str) -> Option<&Write> {
        self.members(root)
            .into_iter()
            .filter_map(|m| self.profiles[m].attrs.get(path))
            .max_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)))
    }

    /// SPEC §7: the consent in force for MARKETING × `channel` over the tree of `node`.
    fn eff(&self, node: usize, channel: usize) -> Eff {
        let own: Vec<(Key, bool)> = {
            let mut v: Vec<(Key, bool)> = self.profiles[node]
                .consents
                .iter()
                .filter(|c| c.1 == channel)
                .map(|c| (c.0, c.2))
                .collect();
            v.sort();
            v
        };
        let mut children: Vec<(Key, usize)> = self
            .merges
            .iter()
            .filter(|m| m.active && m.survivor == node)
            .map(|m| (m.at, m.absorbed))
            .collect();
        children.sort();
        let newest = |from: Option<Key>, until: Option<Key>| {
            own.iter()
                .rev()
                .find(|(k, _)| until.is_none_or(|u| *k < u) && from.is_none_or(|f| *k >= f))
                .map(|&(k, g)| Eff::Record(k, g))
        };
        let mut acc = newest(None, children.first().map(|c| c.0)).unwrap_or(Eff::Nothing);
        for (n, &(at, child)) in children.iter().enumerate() {
            let other = self.eff(child, channel);
            acc = match (acc.effect(), other.effect()) {
                (Some(x), Some(y)) if x != y => Eff::Conflict(at),
                (Some(_), None) => acc,
                (None, Some(_)) => other,
                _ if other.at() > acc.at() => other,
                _ => acc,
            };
            if let Some(r) = newest(Some(at), children.get(n + 1).map(|c| c.0)) {
                acc = r;
            }
        }
        acc
    }

    fn consent_state(&self, root: usize, channel: usize) -> ConsentState {
        match self.eff(root, channel) {
            Eff::Nothing => ConsentState::None,
            Eff::Record(_, true) => ConsentState::Granted,
            Eff::Record(_, false) => ConsentState::Denied,
            Eff::Conflict(_) => ConsentState::DeniedByMergeConflict,
        }
    }
}

// ------------------------------------------------------------------------------------ checks

macro_rules! check_eq {
    ($got:expr, $want:expr, $($what:tt)+) => {{
        match (&$got, &$want) {
            (got, want) => {
                if got != want {
                    return Err(format!(
                        "{}: server {:?}, model {:?}",
                        format!($($what)+),
                        got,
                        want
                    ));
                }
            }
        }
    }};
}

type Checked = Result<(), String>;

/// Compares a result with the model's expectation; returns the answer when both succeeded.
fn outcome_of<T: std::fmt::Debug>(
    got: Result<T, Status>,
    want: Result<(), Refusal>,
    what: &str,
) -> Result<Option<T>, String> {
    match (got, want) {
        (Ok(r), Ok(())) => Ok(Some(r)),
        (Err(s), Err((code, reason))) => {
            if s.code() != code {
                return Err(format!(
                    "{what}: server {:?} ({}), model {code:?} {reason:?}",
                    s.code(),
                    s.message()
                ));
            }
            if let Some(reason) = reason {
                check_eq!(
                    error_reason(&s).as_deref(),
                    Some(reason),
                    "{what}: ErrorInfo reason ({})",
                    s.message()
                );
            }
            Ok(None)
        }
        (Ok(r), Err(want)) => Err(format!("{what}: server succeeded ({r:?}), model {want:?}")),
        (Err(s), Ok(())) => Err(format!(
            "{what}: server {:?} ({}), model expected success",
            s.code(),
            s.message()
        )),
    }
}

fn conflict_reason(r: &str) -> pb::ConflictReason {
    match r {
        "CUSTOMER_NUMBER_ALREADY_SET" => pb::ConflictReason::CustomerNumberAlreadySet,
        "IDENTIFIER_CAP_REACHED" => pb::ConflictReason::IdentifierCapReached,
        "CUSTOMER_NUMBER_CONFLICT" => pb::ConflictReason::CustomerNumberConflict,
        "MERGE_NOT_ALLOWED" => pb::ConflictReason::MergeNotAllowed,
        _ => pb::ConflictReason::OwnedByOtherProfile,
    }
}

/// One case: a fresh pool on a shared server.
struct Case<'a> {
    app: &'a ModelApp,
    pool: Vec<pb::Identifier>,
    n: u64,
    model: Model,
}

impl Case<'_> {
    fn pref(&self, t: Target) -> pb::ProfileRef {
        match t {
            Target::Profile(i) if !self.model.profiles.is_empty() => {
                by_id(&self.model.profiles[i % self.model.profiles.len()].id)
            }
            Target::Profile(i) => by_ident(self.pool[i % POOL].clone()),
            Target::Ident(x) => by_ident(self.pool[x].clone()),
        }
    }

    /// `t` with a profile target reduced to an existing profile (or mapped to an identifier
    /// while no profile exists yet), so it names the same profile later in the case.
    fn norm(&self, t: Target) -> Target {
        match t {
            Target::Profile(i) if self.model.profiles.is_empty() => Target::Ident(i % POOL),
            Target::Profile(i) => Target::Profile(i % self.model.profiles.len()),
            t => t,
        }
    }

    fn pid(&self, i: usize) -> String {
        self.model.profiles[i].id.clone()
    }

    fn idents(&self, xs: impl IntoIterator<Item = usize>) -> BTreeSet<(i32, String, String)> {
        let v: Vec<pb::Identifier> = xs.into_iter().map(|x| self.pool[x].clone()).collect();
        ident_set(&v)
    }

    fn new_profile(&mut self, id: String) -> usize {
        self.model.profiles.push(MProfile {
            id,
            ..Default::default()
        });
        self.model.profiles.len() - 1
    }

    async fn step(&mut self, step: usize, op: &Op) -> Checked {
        self.app.tick();
        let now = self.app.now();
        match op {
            Op::Resolve { ids, create, merge } => self.resolve(ids, *create, *merge).await,
            Op::Link { target, ident } => self.link(*target, *ident).await,
            Op::Unlink { target, ident } => self.unlink(*target, *ident).await,
            Op::Merge { a, b } => self.merge(*a, *b, now).await,
            Op::Unmerge { which } => self.unmerge(*which).await,
            Op::Update {
                target,
                path,
                obs_ago,
            } => {
                self.update(*target, PATHS[*path], now.plus_secs(-obs_ago), step)
                    .await
            }
            Op::Record {
                target,
                ago,
                retry_now,
            } => {
                let target = self.norm(*target);
                self.model.sent.push(Sent {
                    request_id: format!("model-{}-{step}", self.n),
                    target: self.pref(target),
                    model_target: target,
                    occurred: now.plus_secs(-ago * 60),
                    done: None,
                });
                let k = self.model.sent.len() - 1;
                self.record(k).await?;
                if *retry_now {
                    self.record(k).await?;
                }
                Ok(())
            }
            Op::Retry { which } => {
                if self.model.sent.is_empty() {
                    return Ok(());
                }
                self.record(which % self.model.sent.len()).await
            }
            Op::Consent {
                target,
                channel,
                grant,
            } => self.consent(*target, *channel, *grant, now).await,
            Op::Erase { target } => self.erase(*target).await,
        }
    }

    async fn resolve(&mut self, ids: &[usize], create: bool, merge: bool) -> Checked {
        let req: Vec<pb::Identifier> = ids.iter().map(|&x| self.pool[x].clone()).collect();
        let r = self
            .app
            .try_resolve(req, create, merge)
            .await
            .map_err(|s| format!("Resolve {ids:?}: {s:?}"))?;
        let what = format!("Resolve {ids:?} create={create} merge={merge}: {r:?}");
        let m = &self.model;

        // SPEC §3 step 1–2: distinct identifiers, owners in order of first mention.
        let mut usable: Vec<usize> = Vec::new();
        let mut duplicates = BTreeSet::new();
        for &x in ids {
            if usable.contains(&x) {
                duplicates.insert(x);
            } else {
                usable.push(x);
            }
        }
        let mut cands: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut unowned = Vec::new();
        for &x in &usable {
            match m.owner(x) {
                Some(o) => match cands.iter_mut().find(|c| c.0 == o) {
                    Some(c) => c.1.push(x),
                    None => cands.push((o, vec![x])),
                },
                None => unowned.push(x),
            }
        }
        let ignored: BTreeSet<(i32, String, String)> = r
            .ignored
            .iter()
            .filter_map(|i| i.identifier.as_ref())
            .map(|i| (i.kind, i.value.clone(), i.namespace.clone()))
            .collect();
        check_eq!(ignored, self.idents(duplicates), "{what}: ignored");
        let got_linked = ident_set(&r.linked);
        let got_conflicts: BTreeSet<(String, i32)> = r
            .conflicts
            .iter()
            .map(|c| {
                (
                    c.identifier
                        .as_ref()
                        .map_or(String::new(), |i| i.value.clone()),
                    c.reason,
                )
            })
            .collect();
        let admit = |held: &mut Vec<usize>, wanted: &[usize]| {
            let mut link = Vec::new();
            let mut refused = BTreeSet::new();
            for &x in wanted {
                match Model::may_link(held, x) {
                    Ok(()) => {
                        held.push(x);
                        link.push(x);
                    }
                    Err(r) => {
                        refused.insert((self.pool[x].value.clone(), conflict_reason(r) as i32));
                    }
                }
            }
            (link, refused)
        };
        let others: BTreeSet<String> = r.other_profile_ids.iter().cloned().collect();

        match cands.len() {
            0 if !create => {
                check_eq!(outcome(&r), pb::ResolveOutcome::NoMatch, "{what}: outcome");
            }
            0 => {
                let (link, refused) = admit(&mut Vec::new(), &unowned);
                check_eq!(outcome(&r), pb::ResolveOutcome::Created, "{what}: outcome");
                check_eq!(got_linked, self.idents(link.clone()), "{what}: linked");
                check_eq!(got_conflicts, refused, "{what}: conflicts");
                let p = self.new_profile(r.profile_id.clone());
                for x in link {
                    self.model.links.insert(x, p);
                }
            }
            1 => {
                let root = cands[0].0;
                let mut held = m.held(root);
                let (link, refused) = admit(&mut held, &unowned);
                let want = if link.is_empty() {
                    pb::ResolveOutcome::Matched
                } else {
                    pb::ResolveOutcome::Linked
                };
                check_eq!(outcome(&r), want, "{what}: outcome");
                check_eq!(r.profile_id, self.pid(root), "{what}: profile");
                check_eq!(got_linked, self.idents(link.clone()), "{what}: linked");
                check_eq!(got_conflicts, refused, "{what}: conflicts");
                for x in link {
                    self.model.links.insert(x, root);
                }
            }
            _ => {
                let mut held: Vec<usize> = cands.iter().flat_map(|c| m.held(c.0)).collect();
                let refusal = if !merge {
                    Some("MERGE_NOT_ALLOWED")
                } else {
                    Model::may_merge(&held).err()
                };
                if let Some(reason) = refusal {
                    // The primary match owns the strongest identifier (first on ties).
                    let best = |c: &(usize, Vec<usize>)| {
                        c.1.iter().map(|&x| strength(kind(x))).max().unwrap_or(0)
                    };
                    let mut primary = 0;
                    for (i, c) in cands.iter().enumerate() {
                        if best(c) > best(&cands[primary]) {
                            primary = i;
                        }
                    }
                    let want_conflicts: BTreeSet<(String, i32)> = cands
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != primary)
                        .flat_map(|(_, c)| c.1.iter())
                        .map(|&x| (self.pool[x].value.clone(), conflict_reason(reason) as i32))
                        .collect();
                    let want_others: BTreeSet<String> = cands
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != primary)
                        .map(|(_, c)| self.pid(c.0))
                        .collect();
                    check_eq!(outcome(&r), pb::ResolveOutcome::Conflict, "{what}: outcome");
                    check_eq!(r.profile_id, self.pid(cands[primary].0), "{what}: primary");
                    check_eq!(others, want_others, "{what}: other profiles");
                    check_eq!(got_conflicts, want_conflicts, "{what}: conflicts");
                    check_eq!(r.linked.len(), 0, "{what}: nothing linked on CONFLICT");
                } else {
                    // The survivor is the oldest (created first in the case).
                    let mut roots: Vec<usize> = cands.iter().map(|c| c.0).collect();
                    roots.sort();
                    let survivor = roots.remove(0);
                    let (link, refused) = admit(&mut held, &unowned);
                    check_eq!(outcome(&r), pb::ResolveOutcome::Merged, "{what}: outcome");
                    check_eq!(r.profile_id, self.pid(survivor), "{what}: survivor");
                    let want_others: BTreeSet<String> =
                        roots.iter().map(|&a| self.pid(a)).collect();
                    check_eq!(others, want_others, "{what}: absorbed");
                    check_eq!(r.merge_ids.len(), roots.len(), "{what}: merge ids");
                    check_eq!(got_linked, self.idents(link.clone()), "{what}: linked");
                    check_eq!(got_conflicts, refused, "{what}: conflicts");
                    let now = self.app.now();
                    for (k, pid) in r.other_profile_ids.iter().enumerate() {
                        let a = roots
                            .iter()
                            .copied()
                            .find(|&a| self.model.profiles[a].id == *pid)
                            .ok_or_else(|| format!("{what}: unknown absorbed id {pid}"))?;
                        self.absorb(r.merge_ids[k].clone(), survivor, a, now);
                    }
                    for x in link {
                        self.model.links.insert(x, survivor);
                    }
                }
            }
        }
        Ok(())
    }

    fn absorb(&mut self, merge_id: String, survivor: usize, absorbed: usize, now: Timestamp) {
        let order = self.model.next_order();
        self.model.merges.push(MMerge {
            id: merge_id,
            survivor,
            absorbed,
            at: (now, order),
            active: true,
        });
        self.model.profiles[absorbed].parent = Some(self.model.merges.len() - 1);
    }

    async fn link(&mut self, target: Target, x: usize) -> Checked {
        let target = self.norm(target);
        let got = self
            .app
            .try_link(self.pref(target), self.pool[x].clone())
            .await;
        let what = format!("LinkIdentifier {target:?} {x}");
        let m = &self.model;
        let want = m.find(target).and_then(|root| match m.owner(x) {
            Some(o) if o == root => Ok((root, false)),
            Some(_) => Err((
                Code::FailedPrecondition,
                Some("IDENTIFIER_OWNED_BY_OTHER_PROFILE"),
            )),
            None => Model::may_link(&m.held(root), x)
                .map(|()| (root, true))
                .map_err(|r| (Code::FailedPrecondition, Some(r))),
        });
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let (root, linked) = want.map_err(|_| what.clone())?;
            check_eq!(r.profile_id, self.pid(root), "{what}: profile");
            check_eq!(r.linked, linked, "{what}: linked");
            if linked {
                self.model.links.insert(x, root);
            }
        }
        Ok(())
    }

    async fn unlink(&mut self, target: Target, x: usize) -> Checked {
        let target = self.norm(target);
        let got = self
            .app
            .identity
            .clone()
            .unlink_identifier(pb::UnlinkIdentifierRequest {
                profile: Some(self.pref(target)),
                identifier: Some(self.pool[x].clone()),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner());
        let what = format!("UnlinkIdentifier {target:?} {x}");
        let m = &self.model;
        let want = m.find(target).and_then(|root| match m.owner(x) {
            Some(o) if o == root => Ok(root),
            _ => Err((Code::NotFound, None)),
        });
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let root = want.map_err(|_| what.clone())?;
            check_eq!(r.profile_id, self.pid(root), "{what}: profile");
            self.model.links.remove(&x);
        }
        Ok(())
    }

    async fn merge(&mut self, a: Target, b: Target, now: Timestamp) -> Checked {
        let (a, b) = (self.norm(a), self.norm(b));
        let got = self.app.try_merge(vec![self.pref(a), self.pref(b)]).await;
        let what = format!("MergeProfiles {a:?} {b:?}");
        let m = &self.model;
        let want = m.find(a).and_then(|ra| {
            let rb = m.find(b)?;
            if ra == rb {
                return Err((Code::FailedPrecondition, Some("ALREADY_MERGED")));
            }
            let mut held = m.held(ra);
            held.extend(m.held(rb));
            Model::may_merge(&held).map_err(|r| (Code::FailedPrecondition, Some(r)))?;
            Ok((ra.min(rb), ra.max(rb)))
        });
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let (survivor, absorbed) = want.map_err(|_| what.clone())?;
            check_eq!(r.profile_id, self.pid(survivor), "{what}: survivor");
            check_eq!(r.merges.len(), 1, "{what}: merges");
            check_eq!(
                r.merges[0].absorbed_profile_id,
                self.pid(absorbed),
                "{what}: absorbed"
            );
            self.absorb(r.merges[0].merge_id.clone(), survivor, absorbed, now);
        }
        Ok(())
    }

    async fn unmerge(&mut self, which: usize) -> Checked {
        if self.model.merges.is_empty() {
            return Ok(());
        }
        let k = which % self.model.merges.len();
        let got = self.app.try_unmerge(&self.model.merges[k].id).await;
        let what = format!("UnmergeProfiles #{k}");
        let mm = &self.model.merges[k];
        let want = if !mm.active {
            Err((Code::FailedPrecondition, Some("ALREADY_UNMERGED")))
        } else if self.model.profiles[mm.absorbed].erased {
            Err((Code::NotFound, Some("ERASED")))
        } else {
            Ok(())
        };
        if let Some(r) = outcome_of(got, want, &what)? {
            let absorbed = mm.absorbed;
            let survivor = mm.survivor;
            self.model.merges[k].active = false;
            self.model.profiles[absorbed].parent = None;
            let root = self.model.root(survivor);
            check_eq!(
                r.restored_profile_id,
                self.pid(absorbed),
                "{what}: restored"
            );
            check_eq!(
                r.survivor_profile_id,
                self.pid(root),
                "{what}: survivor root"
            );
        }
        Ok(())
    }

    async fn update(
        &mut self,
        target: Target,
        path: &'static str,
        observed: Timestamp,
        step: usize,
    ) -> Checked {
        let target = self.norm(target);
        let value = format!("v{step}-c{}", self.n);
        let attrs = match path {
            "given_name" => pb::ProfileAttributes {
                given_name: Some(value.clone()),
                ..Default::default()
            },
            "city" => pb::ProfileAttributes {
                city: Some(value.clone()),
                ..Default::default()
            },
            _ => pb::ProfileAttributes {
                custom: [("tier".to_string(), string_value(&value))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
        };
        let got = self
            .app
            .try_update(update_request(
                self.pref(target),
                attrs,
                &[&format!("attributes.{path}")],
                observed,
            ))
            .await;
        let what = format!("UpdateProfile {target:?} {path}");
        let want = self.model.find(target);
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let root = want.map_err(|_| what.clone())?;
            let order = self.model.next_order();
            let wins = self
                .model
                .winner(root, path)
                .is_none_or(|w| (observed, order) > (w.0, w.1));
            check_eq!(
                r.profile.as_ref().map(|p| p.profile_id.clone()),
                Some(self.pid(root)),
                "{what}: profile"
            );
            let listed = if wins {
                &r.applied_paths
            } else {
                &r.superseded_paths
            };
            check_eq!(
                names_path(listed, path),
                true,
                "{what}: listed as {} in {r:?}",
                if wins { "applied" } else { "superseded" }
            );
            let own = &mut self.model.profiles[root].attrs;
            if own.get(path).is_none_or(|o| (observed, order) > (o.0, o.1)) {
                own.insert(path, (observed, order, value));
            }
        }
        Ok(())
    }

    /// Sends RecordInteraction number `k` of the case (again, when it was sent before).
    async fn record(&mut self, k: usize) -> Checked {
        let s = &self.model.sent[k];
        let got = self
            .app
            .try_record(
                s.target.clone(),
                interaction_at(s.occurred),
                &s.request_id.clone(),
            )
            .await;
        let what = format!("RecordInteraction #{k} ({:?})", s.model_target);
        // A retry answers the first response, unless erasure removed the record of it.
        if let Some((iid, origin)) = s.done.clone() {
            if !self.model.profiles[origin].erased {
                let r = outcome_of(got, Ok(()), &what)?;
                let i = r.and_then(|r| r.interaction).map(|i| i.interaction_id);
                check_eq!(i, Some(iid), "{what}: retry answers the first interaction");
                return Ok(());
            }
        }
        let want = self.model.find(s.model_target);
        let occurred = s.occurred;
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let root = want.map_err(|_| what.clone())?;
            let i = r
                .interaction
                .ok_or_else(|| format!("{what}: no interaction"))?;
            check_eq!(i.profile_id, self.pid(root), "{what}: profile");
            self.model.profiles[root]
                .interactions
                .push((occurred, i.interaction_id.clone()));
            self.model.sent[k].done = Some((i.interaction_id, root));
        }
        Ok(())
    }

    async fn consent(&mut self, target: Target, ch: usize, grant: bool, now: Timestamp) -> Checked {
        let target = self.norm(target);
        let decision = if grant {
            ConsentDecision::Granted
        } else {
            ConsentDecision::Denied
        };
        let got = self
            .app
            .try_record_consent(
                self.pref(target),
                consent(Purpose::Marketing, CONSENT_CHANNELS[ch], decision, None),
                "",
            )
            .await;
        let what = format!("RecordConsent {target:?} channel {ch} grant={grant}");
        let want = self.model.find(target);
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let root = want.map_err(|_| what.clone())?;
            check_eq!(
                r.consent.map(|c| c.origin_profile_id),
                Some(self.pid(root)),
                "{what}: origin profile"
            );
            let order = self.model.next_order();
            self.model.profiles[root]
                .consents
                .push(((now, order), ch, grant));
        }
        Ok(())
    }

    async fn erase(&mut self, target: Target) -> Checked {
        let target = self.norm(target);
        let got = self
            .app
            .privacy
            .clone()
            .erase_customer(pb::EraseCustomerRequest {
                profile: Some(self.pref(target)),
                reason: "ticket-model".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner());
        let what = format!("EraseCustomer {target:?}");
        if let Target::Profile(i) = target {
            let i = i % self.model.profiles.len();
            if self.model.profiles[i].erased {
                let r = outcome_of(got, Ok(()), &what)?;
                let r = r.ok_or_else(|| what.clone())?;
                check_eq!(r.already_erased, true, "{what}: already erased");
                return Ok(());
            }
        }
        let want = self.model.find(target);
        if let Some(r) = outcome_of(got, want.map(|_| ()), &what)? {
            let root = want.map_err(|_| what.clone())?;
            let members = self.model.members(root);
            let got_ids: BTreeSet<String> = r.erased_profile_ids.iter().cloned().collect();
            let want_ids: BTreeSet<String> = members.iter().map(|&p| self.pid(p)).collect();
            check_eq!(r.profile_id, self.pid(root), "{what}: profile");
            check_eq!(r.already_erased, false, "{what}: already erased");
            check_eq!(got_ids, want_ids, "{what}: erased ids");
            for &p in &members {
                self.model.profiles[p].erased = true;
            }
            self.model.links.retain(|_, o| !members.contains(o));
        }
        Ok(())
    }

    /// Every read the model can answer.
    async fn check(&self) -> Checked {
        let m = &self.model;
        let app = self.app;
        let mut keys: Vec<pb::ProfileRef> = m.profiles.iter().map(|p| by_id(&p.id)).collect();
        keys.extend(self.pool.iter().cloned().map(by_ident));
        let results = app
            .profiles
            .clone()
            .batch_get_profiles(pb::BatchGetProfilesRequest {
                profiles: keys,
                read_mask: None,
            })
            .await
            .map_err(|s| format!("BatchGetProfiles: {s:?}"))?
            .into_inner()
            .results;
        check_eq!(
            results.len(),
            m.profiles.len() + POOL,
            "BatchGetProfiles results"
        );
        let expect_root = |k: usize| -> Option<usize> {
            if k < m.profiles.len() {
                (!m.profiles[k].erased).then(|| m.root(k))
            } else {
                m.owner(k - m.profiles.len())
            }
        };
        for (k, res) in results.iter().enumerate() {
            let what = if k < m.profiles.len() {
                format!("read of profile #{k}")
            } else {
                format!("read by pool identifier {}", k - m.profiles.len())
            };
            match (&res.result, expect_root(k)) {
                (Some(KeyResult::Error(e)), None) => {
                    check_eq!(e.code, Code::NotFound as i32, "{what}: error code ({e:?})");
                }
                (Some(KeyResult::Profile(p)), Some(root)) => {
                    check_eq!(p.profile_id, self.pid(root), "{what}: profile id");
                    let members = m.members(root);
                    let merged: BTreeSet<String> = members
                        .iter()
                        .filter(|&&x| x != root)
                        .map(|&x| self.pid(x))
                        .collect();
                    check_eq!(merged_set(p), merged, "{what}: merged_ids");
                    let held = m.held(root);
                    check_eq!(
                        profile_idents(p),
                        self.idents(held.clone()),
                        "{what}: identifiers"
                    );
                    check_eq!(p.identifiers.len(), held.len(), "{what}: identifier count");
                    let a = attrs(p);
                    for path in PATHS {
                        let got = match path {
                            "given_name" => a.given_name.clone(),
                            "city" => a.city.clone(),
                            _ => custom_string(p, "tier"),
                        };
                        let want = m.winner(root, path).map(|w| w.2.clone());
                        check_eq!(got, want, "{what}: attribute {path}");
                    }
                }
                (got, want) => {
                    return Err(format!(
                        "{what}: server {got:?}, model {:?}",
                        want.map(|r| self.pid(r))
                    ));
                }
            }
        }
        for (x, l) in app.lookup(self.pool.clone()).await.iter().enumerate() {
            check_eq!(
                l.found.then(|| l.profile_id.clone()),
                m.owner(x).map(|o| self.pid(o)),
                "LookupProfileIds of pool identifier {x}"
            );
        }
        for root in 0..m.profiles.len() {
            if m.profiles[root].erased || m.profiles[root].parent.is_some() {
                continue;
            }
            let mut want: Vec<(Timestamp, String)> = m
                .members(root)
                .iter()
                .flat_map(|&x| m.profiles[x].interactions.iter().cloned())
                .collect();
            want.sort_by(|x, y| y.cmp(x));
            let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
            check_eq!(
                app.interaction_ids(by_id(&self.pid(root))).await,
                want,
                "interactions of profile #{root}"
            );
            let c = app
                .try_consents(by_id(&self.pid(root)))
                .await
                .map_err(|s| format!("GetConsents #{root}: {s:?}"))?;
            for (ch, channel) in CONSENT_CHANNELS.iter().enumerate() {
                check_eq!(
                    state_of(&c.effective, Purpose::Marketing, *channel),
                    m.consent_state(root, ch),
                    "consent MARKETING × {channel:?} of profile #{root}"
                );
            }
            check_eq!(
                c.effective
                    .iter()
                    .filter(|e| !CONSENT_CHANNELS.iter().any(|ch| *ch as i32 == e.channel))
                    .count(),
                0,
                "profile #{root}: consent pairs nobody recorded"
            );
        }
        Ok(())
    }
}

/// Full reads every `API_MODEL_CHECK_EVERY` steps (default 8) and always at the end of a case.
fn check_every() -> usize {
    static EVERY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        usize::try_from(env_u64("API_MODEL_CHECK_EVERY", 8))
            .unwrap_or(8)
            .max(1)
    })
}

/// Runs one sequence on `app` against a fresh model.
async fn run_case(app: &ModelApp, ops: &[Op]) -> Checked {
    let n = CASE.fetch_add(1, Ordering::Relaxed);
    let mut case = Case {
        app,
        pool: pool(n),
        n,
        model: Model::default(),
    };
    for (step, op) in ops.iter().enumerate() {
        case.step(step, op)
            .await
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        if (step + 1) % check_every() == 0 {
            case.check()
                .await
                .map_err(|e| format!("after step {step}: {e}"))?;
        }
    }
    case.check().await.map_err(|e| format!("at the end: {e}"))
}

// ------------------------------------------------------------------------------------ runners

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

/// A server for the model: data on /dev/shm when there is one (fsync is cheap there), small
/// identifier caps.
async fn model_server(dir: &std::path::Path) -> ModelApp {
    let dir = dir.to_path_buf();
    let rules = RulesApp::spawn_with(move |c| {
        c.data_dir = dir.clone();
        c.identity.caps.email = CAP_EMAIL;
        c.identity.caps.phone = CAP_PHONE;
        c.identity.caps.loyalty_card = CAP_CARD;
    })
    .await;
    let channel = Endpoint::from_shared(format!("http://{}", rules.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the model's server");
    ModelApp {
        rules,
        privacy: PrivacyServiceClient::new(channel),
    }
}

/// The server the model talks to: the rules harness plus a PrivacyService client.
struct ModelApp {
    rules: RulesApp,
    privacy: PrivacyServiceClient<GrpcChannel>,
}

impl std::ops::Deref for ModelApp {
    type Target = RulesApp;
    fn deref(&self) -> &RulesApp {
        &self.rules
    }
}

impl std::ops::DerefMut for ModelApp {
    fn deref_mut(&mut self) -> &mut RulesApp {
        &mut self.rules
    }
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temporary data directory")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One runner: its own server, `cases` random sequences, shrinking on a divergence.
fn run_runner(seed: u64, runner: u64, cases: u32) -> Result<(), String> {
    let rt = runtime();
    let dir = scratch_dir();
    let mut app = rt.block_on(model_server(dir.path()));
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&runner.to_le_bytes());
    let mut tr = TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            max_shrink_iters: 2_000,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let result = tr.run(&ops(), |ops| {
        rt.block_on(run_case(&app, &ops))
            .map_err(TestCaseError::fail)
    });
    rt.block_on(app.stop());
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(why, ops)) => Err(format!(
            "API model divergence (API_MODEL_SEED={seed}, runner {runner}; rerun with the same \
             API_MODEL_SEED, API_MODEL_CASES and API_MODEL_RUNNERS):\n  {why}\nminimal failing \
             sequence ({} ops):\n{ops:#?}",
            ops.len()
        )),
        Err(TestError::Abort(why)) => Err(format!(
            "API model runner {runner} aborted (API_MODEL_SEED={seed}): {why}"
        )),
    }
}

#[test]
fn public_api_matches_the_model() {
    let cases = env_u64("API_MODEL_CASES", 1_000);
    let runners = env_u64("API_MODEL_RUNNERS", 3).clamp(1, 64);
    let seed = env_u64(
        "API_MODEL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    eprintln!("api_model: {cases} cases on {runners} runners, API_MODEL_SEED={seed}");
    let started = std::time::Instant::now();
    let handles: Vec<_> = (0..runners)
        .map(|r| {
            let share = cases / runners + u64::from(r < cases % runners);
            let share = u32::try_from(share).expect("API_MODEL_CASES fits u32");
            std::thread::spawn(move || run_runner(seed, r, share))
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| match h.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("a runner panicked (API_MODEL_SEED={seed})")),
        })
        .collect();
    eprintln!(
        "api_model: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Hand-picked sequences, run every time.
#[test]
fn sequences_that_matter_match_the_model() {
    use Op::*;
    use Target::{Ident, Profile};
    let r = |ids: &[usize], merge: bool| Resolve {
        ids: ids.to_vec(),
        create: true,
        merge,
    };
    const CN0: usize = EMAILS + PHONES + CARDS;
    const CN1: usize = CN0 + 1;
    const CARD0: usize = EMAILS + PHONES;
    let sequences: Vec<(&str, Vec<Op>)> = vec![
        (
            "merge, unmerge, erase",
            vec![
                r(&[0], false),
                r(&[1], false),
                Merge {
                    a: Profile(0),
                    b: Profile(1),
                },
                Unmerge { which: 0 },
                Erase { target: Profile(1) },
                Unmerge { which: 0 },
            ],
        ),
        (
            "erase, then unmerge the erased customer's merge",
            vec![
                r(&[0], false),
                r(&[1], false),
                r(&[0, 1], true),
                Erase { target: Ident(1) },
                Unmerge { which: 0 },
                Erase { target: Profile(1) },
                r(&[0, 1], true),
            ],
        ),
        (
            "link an identifier owned elsewhere",
            vec![
                r(&[0], false),
                r(&[1], false),
                Link {
                    target: Profile(0),
                    ident: 1,
                },
                Link {
                    target: Ident(0),
                    ident: 0,
                },
                Unlink {
                    target: Profile(0),
                    ident: 1,
                },
            ],
        ),
        (
            "customer numbers never merge automatically; one per profile",
            vec![
                r(&[CN0, 0], false),
                r(&[CN1, 1], false),
                r(&[0, 1], true),
                Merge {
                    a: Ident(0),
                    b: Ident(1),
                },
                r(&[0, CN1], true),
                Link {
                    target: Ident(0),
                    ident: CN1,
                },
            ],
        ),
        (
            "caps: linking, resolving and merging beyond them",
            vec![
                r(&[0, 1, 2], false),
                r(&[0, 3], false),
                r(&[4], false),
                r(&[0, 4], true),
                Merge {
                    a: Profile(0),
                    b: Profile(1),
                },
                r(&[CARD0, CARD0 + 1, CARD0 + 2], false),
            ],
        ),
        (
            "retries across a merge, an unmerge and an erasure",
            vec![
                r(&[0], false),
                Record {
                    target: Ident(0),
                    ago: 3,
                    retry_now: true,
                },
                r(&[1], false),
                r(&[1, 0], true),
                Retry { which: 0 },
                Record {
                    target: Ident(1),
                    ago: 1,
                    retry_now: false,
                },
                Unmerge { which: 0 },
                Retry { which: 1 },
                Erase { target: Ident(0) },
                Retry { which: 0 },
                Retry { which: 1 },
            ],
        ),
        (
            "consent: merge conflict, a decision after it, unmerge",
            vec![
                r(&[0], false),
                r(&[1], false),
                Consent {
                    target: Profile(0),
                    channel: 0,
                    grant: true,
                },
                Consent {
                    target: Profile(1),
                    channel: 0,
                    grant: false,
                },
                Consent {
                    target: Profile(1),
                    channel: 1,
                    grant: true,
                },
                Merge {
                    a: Profile(1),
                    b: Profile(0),
                },
                Consent {
                    target: Profile(1),
                    channel: 1,
                    grant: false,
                },
                Unmerge { which: 0 },
            ],
        ),
        (
            "unlink after a merge, then unmerge; attributes on both sides",
            vec![
                r(&[0, 6], false),
                Update {
                    target: Profile(0),
                    path: 0,
                    obs_ago: 5,
                },
                r(&[1], false),
                Update {
                    target: Profile(1),
                    path: 0,
                    obs_ago: 50,
                },
                r(&[0, 1], true),
                Unlink {
                    target: Ident(1),
                    ident: 0,
                },
                Update {
                    target: Profile(1),
                    path: 1,
                    obs_ago: 0,
                },
                Unmerge { which: 0 },
                Link {
                    target: Profile(1),
                    ident: 0,
                },
            ],
        ),
    ];
    let rt = runtime();
    let dir = scratch_dir();
    let mut app = rt.block_on(model_server(dir.path()));
    let mut failures = Vec::new();
    for (name, ops) in &sequences {
        if let Err(e) = rt.block_on(run_case(&app, ops)) {
            failures.push(format!("{name}: {e}"));
        }
    }
    rt.block_on(app.stop());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
