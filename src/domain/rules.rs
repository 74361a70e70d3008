//! The configurable customer rules, bundled: consent lifetimes, contact policy, summary.

use super::consent::ConsentPolicy;
use super::contact::ContactPolicy;
use super::summary::SummaryPolicy;

/// Everything the consent, contact and summary rules take from configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rules {
    /// Grant lifetimes.
    pub consent: ConsentPolicy,
    /// Caps and de-duplication.
    pub contact: ContactPolicy,
    /// Moment types, purchase types, score half-lives.
    pub summary: SummaryPolicy,
}
