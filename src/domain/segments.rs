//! Segments (SPEC §9): a structured filter — an AND of clauses, nothing evaluated from a
//! string — over live profiles, and the index that keeps a selective filter from scanning
//! every profile.
//!
//! Index: every live (root) profile has a set of *terms* — its winning attribute values
//! (text lowercased), the identifier kinds it holds, and the purpose × channel pairs with a
//! GRANTED record in its tree. The store keeps `term → profile` entries; every write that can
//! change a root's terms calls [`reindex`], which diffs the stored set. Interactions are
//! indexed by the store by `type (+ attribute) → time → origin profile`. A search probes each
//! index-backed clause, drives from the most selective one (or, when none is selective, reads
//! one clause's posting lists in id order a chunk at a time, so a page stops early), and checks
//! every clause exactly on each candidate; scores and consent expiry depend on "now" and are always checked, never
//! trusted to an index.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::attributes::{AttrMap, Value, combine};
use super::consent::{Consents, Purpose};
use super::identifier::IdentifierKind;
use super::ids::ProfileId;
use super::interaction::Channel;
use super::ports::{ReadView, WriteTx, members, root_of, tree_identifiers};
use super::profile::ProfileRecord;
use super::rules::Rules;
use super::summary::Summary;
use super::time::{Duration, Timestamp};
use super::tree::MergeTree;
use crate::error::Result;

/// An attribute value as the index and filters compare it: text lowercased, numbers and
/// times by value. Values of different types never compare equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IndexValue {
    /// Lowercased text.
    Text(String),
    /// Integer.
    Int(i64),
    /// Finite double (−0 stored as 0).
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// A time.
    Time(Timestamp),
}

impl IndexValue {
    /// From an attribute value.
    pub fn of(v: &Value) -> IndexValue {
        match v {
            Value::String(s) => IndexValue::Text(s.to_lowercase()),
            Value::Int(i) => IndexValue::Int(*i),
            Value::Double(d) => IndexValue::Double(if *d == 0.0 { 0.0 } else { *d }),
            Value::Bool(b) => IndexValue::Bool(*b),
            Value::Timestamp(t) => IndexValue::Time(*t),
        }
    }

    /// Type tag; also the first byte of its index encoding.
    pub fn tag(&self) -> u8 {
        match self {
            IndexValue::Text(_) => 1,
            IndexValue::Int(_) => 2,
            IndexValue::Double(_) => 3,
            IndexValue::Bool(_) => 4,
            IndexValue::Time(_) => 5,
        }
    }

    /// Order within one type; `None` across types.
    pub fn compare(&self, o: &IndexValue) -> Option<std::cmp::Ordering> {
        match (self, o) {
            (IndexValue::Text(a), IndexValue::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (IndexValue::Int(a), IndexValue::Int(b)) => Some(a.cmp(b)),
            (IndexValue::Double(a), IndexValue::Double(b)) => a.partial_cmp(b),
            (IndexValue::Bool(a), IndexValue::Bool(b)) => Some(a.cmp(b)),
            (IndexValue::Time(a), IndexValue::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// One indexed fact about a live profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IndexTerm {
    /// The winning value of an attribute path (`city`, `custom.tier`).
    Attr {
        /// Path.
        path: String,
        /// Value.
        value: IndexValue,
    },
    /// Holds an identifier of this kind.
    Kind(IdentifierKind),
    /// A GRANTED record exists for this pair (maybe expired or superseded since).
    Grant(Purpose, Channel),
}

/// What an index scan looks for.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexQuery {
    /// Exactly this term.
    Term(IndexTerm),
    /// Values of one path and type within bounds (`(value, inclusive)`); at least one bound.
    AttrRange {
        /// Path.
        path: String,
        /// Lower bound.
        lower: Option<(IndexValue, bool)>,
        /// Upper bound.
        upper: Option<(IndexValue, bool)>,
    },
}

/// How an attribute clause tests a value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrTest {
    /// Equal to one of these.
    AnyOf(Vec<IndexValue>),
    /// Within bounds (`(value, inclusive)`), same type as the bounds.
    Range {
        /// Lower bound.
        lower: Option<(IndexValue, bool)>,
        /// Upper bound.
        upper: Option<(IndexValue, bool)>,
    },
}

impl AttrTest {
    fn matches(&self, v: &IndexValue) -> bool {
        use std::cmp::Ordering::*;
        match self {
            AttrTest::AnyOf(xs) => xs.iter().any(|x| v.compare(x) == Some(Equal)),
            AttrTest::Range { lower, upper } => {
                let lo_ok = lower.as_ref().is_none_or(|(b, incl)| match v.compare(b) {
                    Some(Greater) => true,
                    Some(Equal) => *incl,
                    _ => false,
                });
                let hi_ok = upper.as_ref().is_none_or(|(b, incl)| match v.compare(b) {
                    Some(Less) => true,
                    Some(Equal) => *incl,
                    _ => false,
                });
                lo_ok && hi_ok
            }
        }
    }
}

/// Which score a clause tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreKind {
    /// Engagement.
    Engagement,
    /// Contact pressure.
    ContactPressure,
}

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// An attribute's winning value passes a test.
    Attribute {
        /// Path (`city`, `custom.tier`).
        path: String,
        /// Test.
        test: AttrTest,
    },
    /// Holds an identifier of a kind.
    IdentifierKind(IdentifierKind),
    /// Active grant for purpose × channel.
    Consent {
        /// Purpose.
        purpose: Purpose,
        /// Channel.
        channel: Channel,
    },
    /// An interaction of a type (with an attribute value) within a window back from now.
    Interaction {
        /// Type.
        kind: String,
        /// Attribute key and value.
        attr: Option<(String, String)>,
        /// How far back.
        within: Duration,
    },
    /// The customer permits this purpose (see [`super::consent::permits`]); added for callers
    /// bound to a purpose.
    Permits(Purpose),
    /// A score, decayed to now, in `[at_least, below)`.
    Score {
        /// Which.
        score: ScoreKind,
        /// Lower bound, inclusive.
        at_least: f64,
        /// Upper bound, exclusive.
        below: Option<f64>,
    },
}

/// AND of clauses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Clauses.
    pub clauses: Vec<Clause>,
}

/// How many candidates a probe of a clause that can be streamed (its posting lists, in id
/// order) reads before calling it unselective: past this, streaming it costs no more than
/// reading it whole.
const PROBE: usize = 512;

/// The same for a clause that cannot be streamed (an interaction or range clause): it can only
/// drive by being read whole, which is still far better than streaming another clause and
/// checking it on every candidate when it matches a few thousand profiles.
const PROBE_WHOLE: usize = 2_000;

/// How many ids a streamed posting list reads at a time.
const STREAM_CHUNK: usize = 256;

/// Where candidates come from.
enum Candidates {
    /// These roots (sorted).
    Some(BTreeSet<ProfileId>),
    /// The union of these terms' posting lists, read in id order a chunk at a time: no clause
    /// is selective, so the scan stops as soon as the page is full instead of first reading a
    /// whole posting list (at 1,000,000 profiles one city is 40,000 entries).
    Stream(Vec<IndexTerm>),
    /// Every profile.
    All,
}

/// The index terms whose posting lists together are exactly the candidates of `c` (live
/// profiles), when there are such.
fn clause_terms(c: &Clause) -> Option<Vec<IndexTerm>> {
    match c {
        Clause::Attribute {
            path,
            test: AttrTest::AnyOf(values),
        } => Some(
            values
                .iter()
                .map(|v| IndexTerm::Attr {
                    path: path.clone(),
                    value: v.clone(),
                })
                .collect(),
        ),
        Clause::IdentifierKind(k) => Some(vec![IndexTerm::Kind(*k)]),
        Clause::Consent { purpose, channel } => Some(vec![IndexTerm::Grant(*purpose, *channel)]),
        _ => None,
    }
}

/// The next ids of the union of `terms`' posting lists above `after`, in id order, and whether
/// more may follow (then the last id returned is where to continue).
fn next_chunk(
    view: &dyn ReadView,
    terms: &[IndexTerm],
    after: Option<ProfileId>,
) -> Result<(Vec<ProfileId>, bool)> {
    let mut ids = Vec::new();
    // Every list was read completely up to the lowest last id of a full chunk: ids above it
    // may be missing from the lists cut there.
    let mut bound: Option<ProfileId> = None;
    for t in terms {
        let chunk = view.term_postings(t, after, STREAM_CHUNK)?;
        if chunk.len() == STREAM_CHUNK {
            if let Some(&last) = chunk.last() {
                bound = Some(bound.map_or(last, |b| b.min(last)));
            }
        }
        ids.extend(chunk);
    }
    ids.sort_unstable();
    ids.dedup();
    if let Some(b) = bound {
        ids.retain(|id| *id <= b);
    }
    Ok((ids, bound.is_some()))
}

fn clause_candidates(
    view: &dyn ReadView,
    c: &Clause,
    now: Timestamp,
    limit: usize,
) -> Result<Option<(Vec<ProfileId>, bool)>> {
    let (ids, roots_already) = match c {
        Clause::Attribute { path, test } => match test {
            AttrTest::AnyOf(values) => {
                let mut out = Vec::new();
                for v in values {
                    let q = IndexQuery::Term(IndexTerm::Attr {
                        path: path.clone(),
                        value: v.clone(),
                    });
                    match view.index_scan(&q, limit)? {
                        Some(ids) => out.extend(ids),
                        None => return Ok(None),
                    }
                }
                (out, true)
            }
            AttrTest::Range { lower, upper } => {
                let q = IndexQuery::AttrRange {
                    path: path.clone(),
                    lower: lower.clone(),
                    upper: upper.clone(),
                };
                match view.index_scan(&q, limit)? {
                    Some(ids) => (ids, true),
                    None => return Ok(None),
                }
            }
        },
        Clause::IdentifierKind(k) => {
            match view.index_scan(&IndexQuery::Term(IndexTerm::Kind(*k)), limit)? {
                Some(ids) => (ids, true),
                None => return Ok(None),
            }
        }
        Clause::Consent { purpose, channel } => {
            let q = IndexQuery::Term(IndexTerm::Grant(*purpose, *channel));
            match view.index_scan(&q, limit)? {
                Some(ids) => (ids, true),
                None => return Ok(None),
            }
        }
        Clause::Interaction { kind, attr, within } => (
            view.interactions_indexed(
                kind,
                attr.as_ref().map(|(k, v)| (k.as_str(), v.as_str())),
                now.minus(*within),
                limit,
            )?,
            false,
        ),
        Clause::Score { .. } | Clause::Permits(_) => return Ok(None),
    };
    Ok(Some((ids, roots_already)))
}

fn plan(view: &dyn ReadView, f: &Filter, now: Timestamp) -> Result<Candidates> {
    let mut best: Option<(Vec<ProfileId>, bool)> = None;
    let mut first_big: Option<&Clause> = None;
    let mut first_streamable: Option<Vec<IndexTerm>> = None;
    for c in &f.clauses {
        let terms = clause_terms(c);
        let probe = if terms.is_some() { PROBE } else { PROBE_WHOLE };
        let Some((ids, roots)) = clause_candidates(view, c, now, probe + 1)? else {
            continue;
        };
        if ids.len() > probe {
            first_big.get_or_insert(c);
            if first_streamable.is_none() {
                first_streamable = terms;
            }
        } else if best.as_ref().is_none_or(|(b, _)| ids.len() < b.len()) {
            best = Some((ids, roots));
        }
    }
    if best.is_none() {
        if let Some(terms) = first_streamable {
            return Ok(Candidates::Stream(terms));
        }
    }
    let (ids, roots) = match (best, first_big) {
        (Some(b), _) => b,
        (None, Some(c)) => match clause_candidates(view, c, now, usize::MAX)? {
            Some(all) => all,
            None => return Ok(Candidates::All),
        },
        (None, None) => return Ok(Candidates::All),
    };
    let mut out = BTreeSet::new();
    for id in ids {
        if roots {
            out.insert(id);
        } else if let Some(r) = root_of(view, id)? {
            out.insert(r.id);
        }
    }
    Ok(Candidates::Some(out))
}

/// A live profile, loaded as far as the clauses need.
struct Subject<'a> {
    view: &'a dyn ReadView,
    root: ProfileRecord,
    members: Option<Vec<ProfileRecord>>,
    attributes: Option<AttrMap>,
    consents: Option<Consents>,
    summary: Option<Summary>,
}

impl Subject<'_> {
    fn members(&mut self) -> Result<&Vec<ProfileRecord>> {
        if self.members.is_none() {
            self.members = Some(members(self.view, &self.root)?);
        }
        Ok(self.members.get_or_insert_with(Vec::new))
    }

    fn attribute(&mut self, path: &str) -> Result<Option<IndexValue>> {
        if self.attributes.is_none() {
            let ms = self.members()?;
            let a = combine(ms.iter().map(|m| &m.attributes));
            self.attributes = Some(a);
        }
        Ok(self
            .attributes
            .as_ref()
            .and_then(|a| a.get(path))
            .and_then(|v| v.value.as_ref())
            .map(IndexValue::of))
    }

    fn matches(&mut self, c: &Clause, rules: &Rules, now: Timestamp) -> Result<bool> {
        Ok(match c {
            Clause::Attribute { path, test } => {
                self.attribute(path)?.is_some_and(|v| test.matches(&v))
            }
            Clause::IdentifierKind(k) => {
                let view = self.view;
                let ms = self.members()?;
                tree_identifiers(view, ms)?
                    .iter()
                    .any(|l| l.identifier.kind() == *k)
            }
            Clause::Permits(purpose) => {
                super::consent::permits(self.view, &self.root, *purpose, now)?
            }
            Clause::Consent { purpose, channel } => {
                if self.consents.is_none() {
                    let tree = MergeTree::load(self.view, &self.root)?;
                    self.consents = Some(Consents::load(self.view, tree)?);
                }
                self.consents
                    .as_ref()
                    .is_some_and(|cs| cs.state(*purpose, *channel, now).is_granted())
            }
            Clause::Interaction { kind, attr, within } => {
                let since = now.minus(*within);
                let view = self.view;
                let ids: Vec<ProfileId> = self.members()?.iter().map(|m| m.id).collect();
                let mut found = false;
                'members: for id in ids {
                    let mut before = None;
                    loop {
                        let chunk = view.interactions(id, before, 256)?;
                        for i in &chunk {
                            if i.occurred_at < since {
                                continue 'members;
                            }
                            if &i.kind == kind
                                && attr
                                    .as_ref()
                                    .is_none_or(|(k, v)| i.attributes.get(k) == Some(v))
                            {
                                found = true;
                                break 'members;
                            }
                        }
                        match chunk.last() {
                            Some(last) if chunk.len() == 256 => {
                                before = Some((last.occurred_at, last.id));
                            }
                            _ => continue 'members,
                        }
                    }
                }
                found
            }
            Clause::Score {
                score,
                at_least,
                below,
            } => {
                if self.summary.is_none() {
                    let view = self.view;
                    let ids: Vec<ProfileId> = self.members()?.iter().map(|m| m.id).collect();
                    self.summary = Some(super::summary::combined(view, ids, &rules.summary)?);
                }
                let Some(s) = &self.summary else {
                    return Ok(false);
                };
                let v = match score {
                    ScoreKind::Engagement => {
                        s.engagement.at(now, rules.summary.engagement_half_life)
                    }
                    ScoreKind::ContactPressure => {
                        s.pressure.at(now, rules.summary.pressure_half_life)
                    }
                };
                v >= *at_least && below.is_none_or(|b| v < b)
            }
        })
    }
}

fn matches_all(
    view: &dyn ReadView,
    root: ProfileRecord,
    f: &Filter,
    rules: &Rules,
    now: Timestamp,
) -> Result<bool> {
    if !root.is_root() {
        return Ok(false);
    }
    let mut s = Subject {
        view,
        root,
        members: None,
        attributes: None,
        consents: None,
        summary: None,
    };
    for c in &f.clauses {
        if !s.matches(c, rules, now)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Visits matching live profiles in id order after `after` until `visit` returns false.
fn for_each_match(
    view: &dyn ReadView,
    f: &Filter,
    rules: &Rules,
    now: Timestamp,
    after: Option<ProfileId>,
    visit: &mut dyn FnMut(ProfileId) -> bool,
) -> Result<()> {
    match plan(view, f, now)? {
        Candidates::Some(ids) => {
            let range = match after {
                Some(a) => ids.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                None => ids.range(..),
            };
            for id in range {
                let Some(rec) = view.profile(*id)? else {
                    continue;
                };
                if matches_all(view, rec, f, rules, now)? && !visit(*id) {
                    return Ok(());
                }
            }
        }
        Candidates::Stream(terms) => {
            let mut cursor = after;
            loop {
                let (ids, more) = next_chunk(view, &terms, cursor)?;
                for id in &ids {
                    let Some(rec) = view.profile(*id)? else {
                        continue;
                    };
                    if matches_all(view, rec, f, rules, now)? && !visit(*id) {
                        return Ok(());
                    }
                }
                match ids.last() {
                    Some(last) if more => cursor = Some(*last),
                    _ => return Ok(()),
                }
            }
        }
        Candidates::All => {
            let mut cursor = after;
            loop {
                let chunk = view.profiles_after(cursor, 512)?;
                let Some(last) = chunk.last().map(|p| p.id) else {
                    return Ok(());
                };
                for rec in chunk {
                    let id = rec.id;
                    if matches_all(view, rec, f, rules, now)? && !visit(id) {
                        return Ok(());
                    }
                }
                cursor = Some(last);
            }
        }
    }
    Ok(())
}

/// A page of matching live profile ids in id order, and the id to continue after when more
/// match.
pub fn search(
    view: &dyn ReadView,
    f: &Filter,
    rules: &Rules,
    now: Timestamp,
    after: Option<ProfileId>,
    page_size: usize,
) -> Result<(Vec<ProfileId>, Option<ProfileId>)> {
    let mut out = Vec::new();
    let mut more = false;
    for_each_match(view, f, rules, now, after, &mut |id| {
        if out.len() == page_size {
            more = true;
            return false;
        }
        out.push(id);
        true
    })?;
    let next = if more { out.last().copied() } else { None };
    Ok((out, next))
}

/// How many live profiles match.
pub fn count(view: &dyn ReadView, f: &Filter, rules: &Rules, now: Timestamp) -> Result<u64> {
    let mut n = 0u64;
    for_each_match(view, f, rules, now, None, &mut |_| {
        n += 1;
        true
    })?;
    Ok(n)
}

/// The terms a live profile should be indexed under.
fn terms_of(view: &dyn ReadView, root: &ProfileRecord) -> Result<Vec<IndexTerm>> {
    let tree = MergeTree::load(view, root)?;
    let ms: Vec<ProfileRecord> = tree.nodes.iter().map(|n| n.record.clone()).collect();
    let mut terms = Vec::new();
    for (path, v) in combine(ms.iter().map(|m| &m.attributes)) {
        if let Some(value) = &v.value {
            terms.push(IndexTerm::Attr {
                path,
                value: IndexValue::of(value),
            });
        }
    }
    let kinds: BTreeSet<IdentifierKind> = tree_identifiers(view, &ms)?
        .iter()
        .map(|l| l.identifier.kind())
        .collect();
    terms.extend(kinds.into_iter().map(IndexTerm::Kind));
    let consents = Consents::load(view, tree)?;
    terms.extend(
        consents
            .granted_pairs()
            .into_iter()
            .map(|(p, c)| IndexTerm::Grant(p, c)),
    );
    Ok(terms)
}

/// Brings the index entries of `ids` up to date: a live profile is indexed under its current
/// terms, a merged-away one under none.
pub fn reindex(tx: &mut dyn WriteTx, ids: &[ProfileId]) -> Result<()> {
    for id in ids {
        let Some(rec) = tx.profile(*id)? else {
            continue;
        };
        let new = if rec.is_root() {
            terms_of(tx, &rec)?
        } else {
            Vec::new()
        };
        let old = tx.index_terms(*id)?;
        if old != new {
            tx.set_index_terms(*id, &old, &new)?;
        }
    }
    Ok(())
}
