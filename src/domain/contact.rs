//! The contact policy (SPEC §8): may this customer be contacted now, on this channel, for
//! this purpose — and, when asked, record the contact in the same atomic step.

use super::consent::{Consents, Purpose, preferences_of};
use super::identity::{ProfileKey, find_root};
use super::interaction::{Channel, Direction, Interaction, NewInteraction};
use super::ports::{ReadView, WriteTx};
use super::profile::ProfileRecord;
use super::rules::Rules;
use super::summary::Summary;
use super::time::{Duration, Timestamp};
use super::tree::MergeTree;
use crate::error::Result;

/// One marketing frequency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    /// Rolling window.
    pub window: Duration,
    /// Most contacts in it.
    pub max: u32,
}

/// Caps and de-duplication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactPolicy {
    /// The same message key is not sent twice within this window.
    pub dedup_window: Duration,
    /// Marketing caps across channels.
    pub caps: Vec<FrequencyCap>,
}

impl Default for ContactPolicy {
    fn default() -> Self {
        ContactPolicy {
            dedup_window: Duration::days(30),
            caps: vec![
                FrequencyCap {
                    window: Duration::hours(24),
                    max: 1,
                },
                FrequencyCap {
                    window: Duration::days(7),
                    max: 3,
                },
                FrequencyCap {
                    window: Duration::days(30),
                    max: 8,
                },
            ],
        }
    }
}

impl ContactPolicy {
    /// How far back the rules look at past contacts.
    pub fn horizon(&self) -> Duration {
        self.caps
            .iter()
            .map(|c| c.window)
            .max()
            .unwrap_or(Duration(0))
    }
}

/// The purposes a contact can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactPurpose {
    /// Marketing: needs a grant, capped, not during an open case.
    Marketing,
    /// Service: only a denial stops it.
    Service,
}

impl ContactPurpose {
    /// As a consent purpose.
    pub fn purpose(self) -> Purpose {
        match self {
            ContactPurpose::Marketing => Purpose::Marketing,
            ContactPurpose::Service => Purpose::Service,
        }
    }
}

/// Why a contact is denied, in rule order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DenyReason {
    /// No grant (marketing) or a denial (service).
    Consent,
    /// Opted out of the channel.
    ChannelOptedOut,
    /// Same message key sent within the window.
    DuplicateMessage,
    /// A marketing cap is reached.
    FrequencyCap,
    /// An open case blocks marketing.
    OpenCase,
}

/// A contact check, parsed.
#[derive(Debug, Clone)]
pub struct ContactCheck {
    /// Channel.
    pub channel: Channel,
    /// Purpose.
    pub purpose: ContactPurpose,
    /// Message key (required to reserve).
    pub message_key: Option<String>,
    /// With reserve: department and type of the recorded interaction.
    pub department: String,
    /// Type.
    pub kind: String,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactDecision {
    /// Every denying reason with an explanation; empty = allowed.
    pub reasons: Vec<(DenyReason, String)>,
    /// When waiting alone helps: the earliest time the check passes.
    pub next_allowed_at: Option<Timestamp>,
    /// The most preferred channel that would be allowed.
    pub suggested: Option<Channel>,
}

impl ContactDecision {
    /// True when nothing denies.
    pub fn allowed(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// What the rules need to know about one customer.
struct Customer {
    consents: Consents,
    opted_out: Vec<Channel>,
    preferred: Vec<Channel>,
    summary: Summary,
    last_sent: Option<Timestamp>,
}

fn load(
    view: &dyn ReadView,
    root: &ProfileRecord,
    message_key: Option<&str>,
    rules: &Rules,
) -> Result<Customer> {
    let tree = MergeTree::load(view, root)?;
    let prefs = preferences_of(view, &tree)?.unwrap_or_default();
    let summary =
        super::summary::combined(view, tree.nodes.iter().map(|n| n.record.id), &rules.summary)?;
    let mut last_sent: Option<Timestamp> = None;
    for n in &tree.nodes {
        if let Some(k) = message_key {
            if let Some(t) = view.message_sent(n.record.id, k)? {
                last_sent = last_sent.max(Some(t));
            }
        }
    }
    let consents = Consents::load(view, tree)?;
    Ok(Customer {
        consents,
        opted_out: prefs.opted_out,
        preferred: prefs.preferred,
        summary,
        last_sent,
    })
}

/// The channel-dependent rules (consent, opt-out) for `channel`.
fn channel_reasons(
    c: &Customer,
    channel: Channel,
    purpose: ContactPurpose,
    now: Timestamp,
) -> Vec<(DenyReason, String)> {
    let mut out = Vec::new();
    let state = c.consents.state(purpose.purpose(), channel, now);
    match purpose {
        ContactPurpose::Marketing if !state.is_granted() => out.push((
            DenyReason::Consent,
            format!("no active marketing consent for {}", channel.name()),
        )),
        ContactPurpose::Service if state.is_denied() => out.push((
            DenyReason::Consent,
            format!("the customer denied service contact on {}", channel.name()),
        )),
        _ => {}
    }
    if c.opted_out.contains(&channel) {
        out.push((
            DenyReason::ChannelOptedOut,
            format!("the customer opted out of {}", channel.name()),
        ));
    }
    out
}

/// The channel-independent rules, with the time each stops denying where waiting helps.
fn timing_reasons(
    c: &Customer,
    check: &ContactCheck,
    policy: &super::contact::ContactPolicy,
    now: Timestamp,
) -> Vec<(DenyReason, String, Option<Timestamp>)> {
    let mut out = Vec::new();
    if let Some(sent) = c.last_sent {
        if sent > now.minus(policy.dedup_window) {
            out.push((
                DenyReason::DuplicateMessage,
                format!(
                    "this message_key was sent to the customer within the last {} days",
                    policy.dedup_window.0 / Duration::days(1).0
                ),
                Some(sent.plus(policy.dedup_window)),
            ));
        }
    }
    if check.purpose == ContactPurpose::Marketing {
        let (hit, free_at) = caps_reached(&c.summary, &policy.caps, now);
        if !hit.is_empty() {
            let text: Vec<String> = hit
                .iter()
                .map(|(cap, n)| {
                    format!(
                        "{n} of {} marketing contacts in {} h",
                        cap.max,
                        cap.window.0 / Duration::hours(1).0
                    )
                })
                .collect();
            out.push((
                DenyReason::FrequencyCap,
                format!("frequency cap reached: {}", text.join("; ")),
                free_at,
            ));
        }
        let open = c.summary.open_cases();
        if !open.is_empty() {
            let ids: Vec<&str> = open.iter().map(|(id, _)| id.as_str()).collect();
            out.push((
                DenyReason::OpenCase,
                format!("open case(s) {}: no marketing until closed", ids.join(", ")),
                None,
            ));
        }
    }
    out
}

/// The caps reached at `now` (with the number of contacts in each window) and the earliest
/// time at which none is reached any more, if no new contact is made.
pub fn caps_reached(
    summary: &Summary,
    caps: &[FrequencyCap],
    now: Timestamp,
) -> (Vec<(FrequencyCap, usize)>, Option<Timestamp>) {
    let mut hit = Vec::new();
    let mut free_at: Option<Timestamp> = None;
    for cap in caps {
        let recent = summary.contacts_within(now, cap.window);
        let max = cap.max as usize;
        if recent.len() >= max {
            // The contact that must leave the window for one more to fit.
            let oldest_to_go = recent[recent.len() - max];
            free_at = free_at.max(Some(oldest_to_go.plus(cap.window)));
            hit.push((*cap, recent.len()));
        }
    }
    (hit, free_at)
}

fn decide(c: &Customer, check: &ContactCheck, rules: &Rules, now: Timestamp) -> ContactDecision {
    let timing = timing_reasons(c, check, &rules.contact, now);
    let mut reasons = channel_reasons(c, check.channel, check.purpose, now);
    let channel_ok = reasons.is_empty();
    reasons.extend(timing.iter().map(|(r, e, _)| (*r, e.clone())));
    reasons.sort_by_key(|(r, _)| *r);
    let next_allowed_at = if channel_ok && !timing.is_empty() {
        timing
            .iter()
            .map(|(_, _, t)| *t)
            .try_fold(now, |acc, t| t.map(|t| acc.max(t)))
    } else {
        None
    };
    let suggested = if timing.is_empty() {
        c.preferred
            .iter()
            .copied()
            .chain(
                Channel::ALL
                    .iter()
                    .copied()
                    .filter(|ch| !c.preferred.contains(ch)),
            )
            .find(|ch| channel_reasons(c, *ch, check.purpose, now).is_empty())
    } else {
        None
    };
    ContactDecision {
        reasons,
        next_allowed_at,
        suggested,
    }
}

/// Checks without recording (a read).
pub fn check(
    view: &dyn ReadView,
    key: &ProfileKey,
    check: &ContactCheck,
    rules: &Rules,
    now: Timestamp,
) -> Result<(ProfileRecord, ContactDecision)> {
    let root = find_root(view, key)?;
    let c = load(view, &root, check.message_key.as_deref(), rules)?;
    let d = decide(&c, check, rules, now);
    Ok((root, d))
}

/// Checks and, when allowed, records the contact as an OUTBOUND interaction in the same
/// transaction. Returns the decision, the interaction recorded, the live id and its version.
pub fn check_and_reserve(
    tx: &mut dyn WriteTx,
    key: &ProfileKey,
    req: &ContactCheck,
    rules: &Rules,
    now: Timestamp,
) -> Result<(ContactDecision, Option<Interaction>, ProfileRecord)> {
    let (root, decision) = check(tx, key, req, rules, now)?;
    if !decision.allowed() {
        return Ok((decision, None, root));
    }
    let new = NewInteraction {
        channel: req.channel,
        direction: Direction::Outbound,
        department: req.department.clone(),
        kind: req.kind.clone(),
        message_key: req.message_key.clone(),
        case: None,
        amount: None,
        summary: String::new(),
        attributes: Default::default(),
        occurred_at: Some(now),
        purpose: Some(req.purpose.purpose()),
    };
    let (interaction, _) = super::timeline::record(tx, key, new, rules, now)?;
    let root = find_root(tx, key)?;
    Ok((decision, Some(interaction), root))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn summary_with(times: &[i64]) -> Summary {
        let mut marketing_contacts: Vec<Timestamp> = times.iter().map(|t| Timestamp(*t)).collect();
        marketing_contacts.sort();
        Summary {
            marketing_contacts,
            ..Summary::default()
        }
    }

    proptest! {
        /// Caps are exact rolling windows: denied exactly when some window `(now − w, now]`
        /// (future-dated contacts included) holds `max` contacts, and `next_allowed_at` is
        /// the first instant none does.
        #[test]
        fn caps_are_exact_rolling_windows(
            times in proptest::collection::vec(0i64..1_000, 0..20),
            caps in proptest::collection::vec((1i64..400, 1u32..5), 1..4),
            now in 0i64..1_200,
        ) {
            let caps: Vec<FrequencyCap> = caps
                .iter()
                .map(|(w, max)| FrequencyCap { window: Duration(*w), max: *max })
                .collect();
            let s = summary_with(&times);
            let brute = |at: i64| {
                caps.iter().any(|c| {
                    times.iter().filter(|t| **t > at - c.window.0).count() >= c.max as usize
                })
            };
            let (hit, free_at) = caps_reached(&s, &caps, Timestamp(now));
            prop_assert_eq!(!hit.is_empty(), brute(now));
            match free_at {
                None => prop_assert!(hit.is_empty()),
                Some(t) => {
                    prop_assert!(t.0 > now);
                    prop_assert!(!brute(t.0), "allowed at next_allowed_at");
                    prop_assert!(brute(t.0 - 1), "denied just before");
                }
            }
        }
    }
}
