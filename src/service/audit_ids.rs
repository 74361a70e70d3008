//! The profile ids each reply names, for the audit log: every reply of the public contract
//! says here which customers it touched.

use super::pb;

/// The profiles a reply touched.
pub trait ProfileIds {
    /// Their ids.
    fn profile_ids(&self) -> Vec<String>;
}

fn one(id: &str) -> Vec<String> {
    if id.is_empty() {
        Vec::new()
    } else {
        vec![id.to_string()]
    }
}

fn of_profile(p: Option<&pb::Profile>) -> Vec<String> {
    p.map(|p| one(&p.profile_id)).unwrap_or_default()
}

macro_rules! ids {
    ($t:ty, |$r:ident| $e:expr) => {
        impl ProfileIds for $t {
            fn profile_ids(&self) -> Vec<String> {
                let $r = self;
                $e
            }
        }
    };
}

ids!(pb::ResolveResponse, |r| {
    let mut v = one(&r.profile_id);
    v.extend(r.other_profile_ids.iter().cloned());
    v
});
ids!(pb::LookupProfileIdsResponse, |r| r
    .results
    .iter()
    .flat_map(|x| one(&x.profile_id))
    .collect());
ids!(pb::LinkIdentifierResponse, |r| one(&r.profile_id));
ids!(pb::UnlinkIdentifierResponse, |r| one(&r.profile_id));
ids!(pb::MergeProfilesResponse, |r| {
    let mut v = one(&r.profile_id);
    v.extend(r.merges.iter().map(|m| m.absorbed_profile_id.clone()));
    v
});
ids!(pb::UnmergeProfilesResponse, |r| {
    let mut v = one(&r.survivor_profile_id);
    v.extend(one(&r.restored_profile_id));
    v
});
ids!(pb::ListMergesResponse, |r| {
    let mut v: Vec<String> = r
        .merges
        .iter()
        .flat_map(|m| [m.survivor_profile_id.clone(), m.absorbed_profile_id.clone()])
        .collect();
    v.sort();
    v.dedup();
    v
});
ids!(pb::GetProfileResponse, |r| r
    .profile_id()
    .map(one)
    .unwrap_or_default());
ids!(pb::BatchGetProfilesResponse, |r| r
    .results
    .iter()
    .flat_map(|x| x.profile_id().map(one).unwrap_or_default())
    .collect());
ids!(pb::UpdateProfileResponse, |r| of_profile(
    r.profile.as_ref()
));
ids!(pb::GetProfileHistoryResponse, |r| {
    let mut v: Vec<String> = r
        .changes
        .iter()
        .map(|c| c.origin_profile_id.clone())
        .collect();
    v.sort();
    v.dedup();
    v
});
ids!(pb::SearchProfilesResponse, |r| r
    .profiles
    .iter()
    .map(|p| p.profile_id.clone())
    .collect());
ids!(pb::CountProfilesResponse, |_r| Vec::new());
ids!(pb::RecordInteractionResponse, |r| r
    .interaction
    .as_ref()
    .map(|i| one(&i.profile_id))
    .unwrap_or_default());
ids!(pb::RecordInteractionsResponse, |r| {
    let mut v: Vec<String> = r.responses.iter().flat_map(|x| x.profile_ids()).collect();
    v.sort();
    v.dedup();
    v
});
ids!(pb::ListInteractionsResponse, |r| r
    .interactions
    .first()
    .map(|i| one(&i.profile_id))
    .unwrap_or_default());
ids!(pb::RecordConsentResponse, |r| r
    .consent
    .as_ref()
    .map(|c| one(&c.origin_profile_id))
    .unwrap_or_default());
ids!(pb::GetConsentsResponse, |r| one(&r.profile_id));
ids!(pb::SetPreferencesResponse, |r| one(&r.profile_id));
ids!(pb::CheckContactResponse, |r| one(&r.profile_id));

/// A reply carrying its profile ids for the audit log.
pub fn reply<T: ProfileIds>(msg: T) -> tonic::Response<T> {
    let ids = msg.profile_ids();
    super::audited(msg, ids)
}
