//! A merge tree loaded with the order of its merges, for rules that depend on *when* two
//! profiles became one (consent conflicts, preferences).

use super::ports::ReadView;
use super::profile::ProfileRecord;
use super::time::Timestamp;
use crate::error::{Error, Result};

/// Orders events within a tree: time, then the global write sequence (so two writes in the
/// same microsecond keep their order).
pub type EventKey = (Timestamp, u64);

/// One profile of a merge tree and the merges in which it absorbed another, oldest first.
#[derive(Debug, Clone)]
pub struct TreeNode {
    /// The profile.
    pub record: ProfileRecord,
    /// (when the merge happened, index of the absorbed child in [`MergeTree::nodes`]).
    pub children: Vec<(EventKey, usize)>,
}

/// A live profile's merge tree; `nodes[0]` is the root.
#[derive(Debug, Clone)]
pub struct MergeTree {
    /// Every member, root first.
    pub nodes: Vec<TreeNode>,
}

impl MergeTree {
    /// Loads the tree rooted at `root` (which must be a root).
    pub fn load(view: &dyn ReadView, root: &ProfileRecord) -> Result<MergeTree> {
        let mut nodes = vec![TreeNode {
            record: root.clone(),
            children: Vec::new(),
        }];
        let mut i = 0;
        while i < nodes.len() {
            let absorbed = nodes[i].record.absorbed.clone();
            for (merge_id, child) in absorbed {
                let m = view.merge(merge_id)?.ok_or_else(|| {
                    Error::Corrupt(format!("merge tree names missing merge {merge_id}"))
                })?;
                let rec = view.profile(child)?.ok_or_else(|| {
                    Error::Corrupt(format!("merge tree names missing profile {child}"))
                })?;
                let idx = nodes.len();
                nodes.push(TreeNode {
                    record: rec,
                    children: Vec::new(),
                });
                nodes[i].children.push(((m.merged_at, m.write_seq), idx));
            }
            nodes[i].children.sort();
            i += 1;
            if nodes.len() > 1_000_000 {
                return Err(Error::Corrupt("merge tree too large".into()));
            }
        }
        Ok(MergeTree { nodes })
    }
}

/// The newest of `items` (sorted by key, ascending) whose key lies in `[from, until)`.
pub fn newest_between<T>(
    items: &[T],
    key: impl Fn(&T) -> EventKey,
    from: Option<EventKey>,
    until: Option<EventKey>,
) -> Option<&T> {
    items
        .iter()
        .rev()
        .find(|x| until.is_none_or(|u| key(x) < u))
        .filter(|x| from.is_none_or(|f| key(x) >= f))
}
