//! The profile summary (SPEC §6): derived from interactions, updated on every write in O(1),
//! exact at read time.
//!
//! Each profile keeps the summary of the interactions written to it; a live profile's summary
//! combines those of its merge tree. Every part combines without loss — latest-by-time maps,
//! sums, and decayed scores brought to a common time — so combining per-profile summaries
//! equals summarising the union of their interactions, and unmerge is exact.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::consent::Purpose;
use super::ids::InteractionId;
use super::interaction::{CaseState, Channel, Direction, Interaction};
use super::time::{Duration, Timestamp};

/// What the summary takes from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryPolicy {
    /// Types kept as moments that matter.
    pub moment_types: BTreeSet<String>,
    /// Types whose amount counts as spend.
    pub purchase_types: BTreeSet<String>,
    /// OUTBOUND types that count as marketing when recorded without a purpose.
    pub marketing_types: BTreeSet<String>,
    /// Half-life of `engagement`.
    pub engagement_half_life: Duration,
    /// Half-life of `contact_pressure`.
    pub pressure_half_life: Duration,
}

impl Default for SummaryPolicy {
    fn default() -> Self {
        let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        SummaryPolicy {
            moment_types: set(&[
                "bill_payment",
                "plan_change",
                "support_call",
                "complaint",
                "purchase",
            ]),
            purchase_types: set(&["purchase"]),
            marketing_types: set(&["campaign_message"]),
            engagement_half_life: Duration::days(30),
            pressure_half_life: Duration::days(7),
        }
    }
}

impl SummaryPolicy {
    /// Whether `i` is an outbound marketing contact (counts towards caps and pressure).
    pub fn is_marketing_contact(&self, i: &Interaction) -> bool {
        i.direction == Direction::Outbound
            && match i.purpose {
                Some(p) => p == Purpose::Marketing,
                None => self.marketing_types.contains(&i.kind),
            }
    }
}

/// A reference to one interaction, ordered by (occurred_at, id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    /// When it happened.
    pub occurred_at: Timestamp,
    /// Its id (tie-breaker).
    pub id: InteractionId,
    /// Channel.
    pub channel: Channel,
    /// Department.
    pub department: String,
    /// Type.
    pub kind: String,
    /// Direction.
    pub direction: Direction,
}

impl Latest {
    fn of(i: &Interaction) -> Latest {
        Latest {
            occurred_at: i.occurred_at,
            id: i.id,
            channel: i.channel,
            department: i.department.clone(),
            kind: i.kind.clone(),
            direction: i.direction,
        }
    }

    fn key(&self) -> (Timestamp, InteractionId) {
        (self.occurred_at, self.id)
    }
}

fn keep_latest(slot: &mut Option<Latest>, new: &Latest) {
    if slot.as_ref().is_none_or(|cur| new.key() > cur.key()) {
        *slot = Some(new.clone());
    }
}

fn keep_latest_in<K: Ord + Clone>(map: &mut BTreeMap<K, Latest>, k: &K, new: &Latest) {
    match map.get(k) {
        Some(cur) if cur.key() >= new.key() => {}
        _ => {
            map.insert(k.clone(), new.clone());
        }
    }
}

/// What is known about one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseInfo {
    /// Its earliest interaction (opened the case).
    pub first: Latest,
    /// Its latest interaction.
    pub last: Latest,
    /// The state its latest interaction left it in.
    pub state: CaseState,
}

/// A decayed sum Σ w·2^(−(t − tᵢ)/h), kept as its value at `as_of`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Decayed {
    /// The value at `as_of`.
    pub value: f64,
    /// When `value` holds; `None` while empty.
    pub as_of: Option<Timestamp>,
}

fn decay(value: f64, from: Timestamp, to: Timestamp, half_life: Duration) -> f64 {
    let age = (to.0 - from.0) as f64;
    value * (-age / half_life.0 as f64).exp2()
}

impl Decayed {
    /// Adds `weight` at time `t`. The sum is kept at the latest time seen, so values only
    /// shrink when decayed forward (no overflow from far-future growth).
    pub fn add(&mut self, weight: f64, t: Timestamp, half_life: Duration) {
        match self.as_of {
            None => {
                self.value = weight;
                self.as_of = Some(t);
            }
            Some(a) if t <= a => self.value += decay(weight, t, a, half_life),
            Some(a) => {
                self.value = decay(self.value, a, t, half_life) + weight;
                self.as_of = Some(t);
            }
        }
    }

    /// Combines two sums of the same half-life.
    pub fn combine(&mut self, other: &Decayed, half_life: Duration) {
        if let (Some(t), v) = (other.as_of, other.value) {
            self.add(v, t, half_life);
        }
    }

    /// The exact value at `now`.
    pub fn at(&self, now: Timestamp, half_life: Duration) -> f64 {
        match self.as_of {
            None => 0.0,
            Some(a) => decay(self.value, a, now, half_life),
        }
    }
}

/// The summary of a set of interactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    /// Latest inbound per channel.
    pub last_inbound: BTreeMap<Channel, Latest>,
    /// Latest outbound per channel.
    pub last_outbound: BTreeMap<Channel, Latest>,
    /// Latest per department.
    pub departments: BTreeMap<String, Latest>,
    /// Every case seen.
    pub cases: BTreeMap<String, CaseInfo>,
    /// Latest per moment type.
    pub moments: BTreeMap<String, Latest>,
    /// Inbound interactions, decayed.
    pub engagement: Decayed,
    /// Outbound marketing, decayed.
    pub pressure: Decayed,
    /// Spend per currency, in billionths.
    pub spend: BTreeMap<String, i128>,
    /// Number of interactions.
    pub count: u64,
    /// The latest interaction.
    pub last: Option<Latest>,
    /// Times of outbound marketing contacts, ascending; entries older than the longest cap
    /// window before the last write may be dropped (the contact rules never look that far).
    pub marketing_contacts: Vec<Timestamp>,
}

impl Summary {
    /// Adds one interaction: O(1) in the number of interactions (bounded maps).
    pub fn add(&mut self, i: &Interaction, policy: &SummaryPolicy) {
        let l = Latest::of(i);
        match i.direction {
            Direction::Inbound => {
                keep_latest_in(&mut self.last_inbound, &i.channel, &l);
                self.engagement
                    .add(1.0, i.occurred_at, policy.engagement_half_life);
            }
            Direction::Outbound => keep_latest_in(&mut self.last_outbound, &i.channel, &l),
        }
        keep_latest_in(&mut self.departments, &i.department, &l);
        if let Some((case_id, state)) = &i.case {
            let entry = self.cases.entry(case_id.clone()).or_insert(CaseInfo {
                first: l.clone(),
                last: l.clone(),
                state: *state,
            });
            if l.key() < entry.first.key() {
                entry.first = l.clone();
            }
            if l.key() >= entry.last.key() {
                entry.last = l.clone();
                entry.state = *state;
            }
        }
        if policy.moment_types.contains(&i.kind) {
            keep_latest_in(&mut self.moments, &i.kind, &l);
        }
        if policy.is_marketing_contact(i) {
            self.pressure
                .add(1.0, i.occurred_at, policy.pressure_half_life);
            let at = self
                .marketing_contacts
                .partition_point(|t| *t <= i.occurred_at);
            self.marketing_contacts.insert(at, i.occurred_at);
        }
        if let Some(m) = &i.amount {
            if policy.purchase_types.contains(&i.kind) {
                *self.spend.entry(m.currency.clone()).or_insert(0) +=
                    i128::from(m.units) * 1_000_000_000 + i128::from(m.nanos);
            }
        }
        self.count += 1;
        keep_latest(&mut self.last, &l);
    }

    /// Drops marketing contact times before `horizon` (bounded storage).
    pub fn prune_contacts(&mut self, horizon: Timestamp) {
        let keep_from = self.marketing_contacts.partition_point(|t| *t < horizon);
        self.marketing_contacts.drain(..keep_from);
    }

    /// Folds another profile's summary into this one.
    pub fn combine(&mut self, o: &Summary, policy: &SummaryPolicy) {
        for (k, v) in &o.last_inbound {
            keep_latest_in(&mut self.last_inbound, k, v);
        }
        for (k, v) in &o.last_outbound {
            keep_latest_in(&mut self.last_outbound, k, v);
        }
        for (k, v) in &o.departments {
            keep_latest_in(&mut self.departments, k, v);
        }
        for (k, v) in &o.moments {
            keep_latest_in(&mut self.moments, k, v);
        }
        for (id, c) in &o.cases {
            match self.cases.get_mut(id) {
                None => {
                    self.cases.insert(id.clone(), c.clone());
                }
                Some(cur) => {
                    if c.first.key() < cur.first.key() {
                        cur.first = c.first.clone();
                    }
                    if c.last.key() > cur.last.key() {
                        cur.last = c.last.clone();
                        cur.state = c.state;
                    }
                }
            }
        }
        self.engagement
            .combine(&o.engagement, policy.engagement_half_life);
        self.pressure
            .combine(&o.pressure, policy.pressure_half_life);
        for (cur, v) in &o.spend {
            *self.spend.entry(cur.clone()).or_insert(0) += v;
        }
        self.count += o.count;
        if let Some(l) = &o.last {
            keep_latest(&mut self.last, l);
        }
        let mut all = std::mem::take(&mut self.marketing_contacts);
        all.extend_from_slice(&o.marketing_contacts);
        all.sort();
        self.marketing_contacts = all;
    }

    /// Cases whose latest interaction left them open, oldest first.
    pub fn open_cases(&self) -> Vec<(&String, &CaseInfo)> {
        let mut open: Vec<_> = self
            .cases
            .iter()
            .filter(|(_, c)| c.state == CaseState::Open)
            .collect();
        open.sort_by_key(|(id, c)| (c.first.key(), (*id).clone()));
        open
    }

    /// Marketing contacts in `(now − window, ∞)`, ascending.
    pub fn contacts_within(&self, now: Timestamp, window: Duration) -> &[Timestamp] {
        let from = now.minus(window);
        let start = self.marketing_contacts.partition_point(|t| *t <= from);
        &self.marketing_contacts[start..]
    }
}

/// The summary of a merge tree: the per-profile summaries of `members` combined.
pub fn combined(
    view: &dyn super::ports::ReadView,
    members: impl IntoIterator<Item = super::ids::ProfileId>,
    policy: &SummaryPolicy,
) -> crate::error::Result<Summary> {
    let mut s = Summary::default();
    for id in members {
        if let Some(x) = view.summary(id)? {
            s.combine(&x, policy);
        }
    }
    Ok(s)
}

/// Spend in billionths as (units, nanos) with the same sign.
pub fn money_parts(total: i128) -> (i64, i32) {
    let units = total / 1_000_000_000;
    let nanos = total % 1_000_000_000;
    (
        i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX }),
        nanos as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decayed_sum_matches_the_closed_form_in_any_order() {
        let h = Duration::days(7);
        let times = [0i64, 5, 3, 40, 12, 12, 1].map(|d| Timestamp(d * 86_400_000_000));
        let mut d = Decayed::default();
        for t in times {
            d.add(1.0, t, h);
        }
        let now = Timestamp(50 * 86_400_000_000);
        let closed: f64 = times
            .iter()
            .map(|t| (-((now.0 - t.0) as f64) / h.0 as f64).exp2())
            .sum();
        let got = d.at(now, h);
        assert!(((got - closed) / closed).abs() < 1e-12, "{got} vs {closed}");
    }

    #[test]
    fn money_parts_keep_the_sign() {
        assert_eq!(money_parts(1_500_000_000), (1, 500_000_000));
        assert_eq!(money_parts(-1_500_000_000), (-1, -500_000_000));
    }
}
