//! Recording and listing interactions over a merge tree (SPEC §5).

use super::identity::{ProfileKey, find_root};
use super::ids::InteractionId;
use super::interaction::{
    Direction, Interaction, InteractionCursor, InteractionFilter, NewInteraction,
};
use super::ports::{NewChange, ReadView, WriteTx, members};
use super::profile::ChangeKind;
use super::rules::Rules;
use super::time::Timestamp;
use crate::error::Result;

/// Stores one interaction on the live profile `key` names. Returns it and the new version.
pub fn record(
    tx: &mut dyn WriteTx,
    key: &ProfileKey,
    new: NewInteraction,
    rules: &Rules,
    now: Timestamp,
) -> Result<(Interaction, u64)> {
    let mut root = find_root(tx, key)?;
    let interaction = Interaction {
        id: InteractionId::new_at(now),
        origin: root.id,
        channel: new.channel,
        direction: new.direction,
        department: new.department,
        kind: new.kind,
        message_key: new.message_key,
        case: new.case,
        amount: new.amount,
        summary: new.summary,
        attributes: new.attributes,
        occurred_at: new.occurred_at.unwrap_or(now),
        recorded_at: now,
        purpose: new.purpose,
    };
    tx.put_interaction(&interaction)?;
    // The summary of what was written to this profile, updated in O(1).
    let mut summary = tx.summary(root.id)?.unwrap_or_default();
    summary.add(&interaction, &rules.summary);
    summary.prune_contacts(now.minus(rules.contact.horizon()));
    tx.put_summary(root.id, &summary)?;
    if let (Direction::Outbound, Some(k)) = (interaction.direction, &interaction.message_key) {
        let last = tx.message_sent(root.id, k)?;
        if last.is_none_or(|t| t < interaction.occurred_at) {
            tx.put_message_sent(root.id, k, interaction.occurred_at)?;
        }
    }
    root.version += 1;
    root.updated_at = now;
    tx.put_profile(&root)?;
    tx.emit(
        NewChange {
            kind: ChangeKind::InteractionRecorded,
            profile: root.id,
            version: root.version,
            paths: vec!["interactions".into(), "summary".into()],
            related: vec![],
        },
        now,
    )?;
    Ok((interaction, root.version))
}

/// Reads one member's interactions newest first, a chunk at a time.
struct MemberCursor {
    profile: super::ids::ProfileId,
    buffer: std::collections::VecDeque<Interaction>,
    before: Option<InteractionCursor>,
    exhausted: bool,
}

const CHUNK: usize = 128;

impl MemberCursor {
    fn head(&mut self, view: &dyn ReadView) -> Result<Option<&Interaction>> {
        if self.buffer.is_empty() && !self.exhausted {
            let chunk = view.interactions(self.profile, self.before, CHUNK)?;
            self.exhausted = chunk.len() < CHUNK;
            if let Some(last) = chunk.last() {
                self.before = Some((last.occurred_at, last.id));
            }
            self.buffer.extend(chunk);
        }
        Ok(self.buffer.front())
    }
}

/// A page of the merged, filtered timeline, newest `occurred_at` first (ties: newest id), and
/// the cursor to continue from when more may follow.
pub fn list(
    view: &dyn ReadView,
    key: &ProfileKey,
    filter: &InteractionFilter,
    after_cursor: Option<InteractionCursor>,
    page_size: usize,
) -> Result<(Vec<Interaction>, Option<InteractionCursor>)> {
    let root = find_root(view, key)?;
    // Start no later than the `before` bound: every id sorts above the nil id.
    let start = match (after_cursor, filter.before) {
        (Some(c), Some(b)) => Some(c.min((b, InteractionId(uuid::Uuid::nil())))),
        (Some(c), None) => Some(c),
        (None, Some(b)) => Some((b, InteractionId(uuid::Uuid::nil()))),
        (None, None) => None,
    };
    let mut cursors: Vec<MemberCursor> = members(view, &root)?
        .into_iter()
        .map(|m| MemberCursor {
            profile: m.id,
            buffer: Default::default(),
            before: start,
            exhausted: false,
        })
        .collect();
    let mut out = Vec::new();
    loop {
        let mut best: Option<(usize, InteractionCursor)> = None;
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(h) = c.head(view)? {
                let k = (h.occurred_at, h.id);
                if best.is_none_or(|(_, b)| k > b) {
                    best = Some((i, k));
                }
            }
        }
        let Some((i, key)) = best else {
            return Ok((out, None));
        };
        if filter.after.is_some_and(|a| key.0 < a) {
            return Ok((out, None));
        }
        if let Some(item) = cursors[i].buffer.pop_front() {
            if filter.matches(&item) {
                if out.len() == page_size {
                    // Another match exists, so a next page does: continue after the last one.
                    let last = out.last().map(|x: &Interaction| (x.occurred_at, x.id));
                    return Ok((out, last));
                }
                out.push(item);
            }
        }
    }
}
