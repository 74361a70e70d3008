//! IdentityService handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Core;
use super::audit_ids::reply as audited_reply;
use super::convert::{
    self, Violations, identifiers_in, profile_ref_in, required_identifier, text_in,
};
use super::pb::{self, identity_service_server::IdentityService};
use crate::domain::identity::{self, ProfileKey, ResolveInput};
use crate::domain::ids::{MergeId, RequestId};

/// Most identifiers in one Resolve.
pub const MAX_RESOLVE_IDENTIFIERS: usize = 32;
/// Most keys in one batch.
pub const MAX_BATCH: usize = 1000;

/// IdentityService over the core.
pub struct IdentityApi(pub Arc<Core>);

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    async fn resolve(
        &self,
        req: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let identifiers = v.check(identifiers_in(
            "identifiers",
            &req.identifiers,
            1,
            MAX_RESOLVE_IDENTIFIERS,
        ));
        let source = v.check(text_in("source", &req.source, 64, false));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(identifiers), Some(source), Some(request_id)) = (identifiers, source, request_id)
        else {
            return Err(Status::internal("validation passed without values"));
        };
        let input = ResolveInput {
            identifiers,
            create_if_missing: req.create_if_missing,
            allow_merge: req.allow_merge,
            source,
        };
        let core = &self.0;
        if let Some(r) = core.replayed::<pb::ResolveResponse>("resolve", request_id.as_ref())? {
            return Ok(audited_reply(r));
        }
        // Fast path: a lookup, a conflict or a match with nothing to add writes nothing. Not
        // with a request_id: its answer is kept like any write's, so a retry gets the first
        // answer even after the profile changed (a merge, a new version).
        if request_id.is_none() {
            let decision = core.read(|view| identity::decide(view, &input, &core.policy))?;
            if let Some(r) = decision.without_writes() {
                return Ok(audited_reply(convert::resolution_out(&r)));
            }
        }
        let reply = core
            .write(
                "resolve",
                request_id.as_ref(),
                |tx, now| {
                    let decision = identity::decide(tx, &input, &core.policy)?;
                    identity::apply(tx, decision, &input.source, now)
                },
                |r| convert::resolution_out(&r),
            )
            .await?;
        if reply.outcome == pb::ResolveOutcome::Created as i32 {
            core.metrics
                .counter("profiles_created_total", &[])
                .increment(1);
        }
        Ok(audited_reply(reply))
    }

    async fn lookup_profile_ids(
        &self,
        req: Request<pb::LookupProfileIdsRequest>,
    ) -> Result<Response<pb::LookupProfileIdsResponse>, Status> {
        let req = req.into_inner();
        let ids = identifiers_in("identifiers", &req.identifiers, 1, MAX_BATCH)?;
        let results = self.0.read(|view| {
            ids.iter()
                .map(|id| {
                    let root = match identity::find_root(view, &ProfileKey::Identifier(id.clone()))
                    {
                        Ok(r) => Some(r.id),
                        Err(crate::error::Error::NotFound(_)) => None,
                        Err(e) => return Err(e),
                    };
                    Ok(pb::IdentifierLookup {
                        identifier: Some(convert::identifier_out(id)),
                        profile_id: root.map(|r| r.to_string()).unwrap_or_default(),
                        found: root.is_some(),
                    })
                })
                .collect::<crate::error::Result<Vec<_>>>()
        })?;
        Ok(audited_reply(pb::LookupProfileIdsResponse { results }))
    }

    async fn link_identifier(
        &self,
        req: Request<pb::LinkIdentifierRequest>,
    ) -> Result<Response<pb::LinkIdentifierResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let id = v.check(required_identifier("identifier", req.identifier.as_ref()));
        let source = v.check(text_in("source", &req.source, 64, false));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(id), Some(source), Some(request_id)) = (key, id, source, request_id)
        else {
            return Err(Status::internal("validation passed without values"));
        };
        let core = &self.0;
        let reply = core
            .write(
                "link_identifier",
                request_id.as_ref(),
                |tx, now| identity::link(tx, &key, &id, &core.policy, &source, now),
                |(profile, version, linked)| pb::LinkIdentifierResponse {
                    profile_id: profile.to_string(),
                    version,
                    identifier: Some(convert::identifier_out(&id)),
                    linked,
                },
            )
            .await?;
        Ok(audited_reply(reply))
    }

    async fn unlink_identifier(
        &self,
        req: Request<pb::UnlinkIdentifierRequest>,
    ) -> Result<Response<pb::UnlinkIdentifierResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let id = v.check(required_identifier("identifier", req.identifier.as_ref()));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(id), Some(request_id)) = (key, id, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        let reply = self
            .0
            .write(
                "unlink_identifier",
                request_id.as_ref(),
                |tx, now| identity::unlink(tx, &key, &id, now),
                |(profile, version)| pb::UnlinkIdentifierResponse {
                    profile_id: profile.to_string(),
                    version,
                },
            )
            .await?;
        Ok(audited_reply(reply))
    }

    async fn merge_profiles(
        &self,
        req: Request<pb::MergeProfilesRequest>,
    ) -> Result<Response<pb::MergeProfilesResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        if req.profiles.len() < 2 || req.profiles.len() > MAX_RESOLVE_IDENTIFIERS {
            v.check::<()>(Err(crate::error::Error::invalid(
                "profiles",
                format!(
                    "name 2 to {MAX_RESOLVE_IDENTIFIERS} profiles, got {}",
                    req.profiles.len()
                ),
            )));
        }
        let keys: Vec<Option<ProfileKey>> = req
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| v.check(profile_ref_in(&format!("profiles[{i}]"), Some(p))))
            .collect();
        let reason = v.check(text_in("reason", &req.reason, 256, false));
        let source = v.check(text_in("source", &req.source, 64, false));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(reason), Some(source), Some(request_id)) = (reason, source, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        let keys: Vec<ProfileKey> = keys.into_iter().flatten().collect();
        let core = &self.0;
        let reply = core
            .write(
                "merge_profiles",
                request_id.as_ref(),
                |tx, now| identity::merge_profiles(tx, &keys, &core.policy, &source, &reason, now),
                |m| pb::MergeProfilesResponse {
                    profile_id: m.survivor.to_string(),
                    version: m.version,
                    merges: m.merges.iter().map(convert::merge_out).collect(),
                },
            )
            .await?;
        self.0
            .metrics
            .counter("merges_total", &[])
            .increment(reply.merges.len() as u64);
        Ok(audited_reply(reply))
    }

    async fn unmerge_profiles(
        &self,
        req: Request<pb::UnmergeProfilesRequest>,
    ) -> Result<Response<pb::UnmergeProfilesResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let merge_id = v.check(if req.merge_id.is_empty() {
            Err(crate::error::Error::invalid(
                "merge_id",
                "the merge id is required (see ListMerges)",
            ))
        } else {
            MergeId::parse("merge_id", &req.merge_id)
        });
        let reason = v.check(text_in("reason", &req.reason, 256, false));
        let source = v.check(text_in("source", &req.source, 64, false));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(merge_id), Some(reason), Some(source), Some(request_id)) =
            (merge_id, reason, source, request_id)
        else {
            return Err(Status::internal("validation passed without values"));
        };
        let reply = self
            .0
            .write(
                "unmerge_profiles",
                request_id.as_ref(),
                |tx, now| identity::unmerge(tx, merge_id, &source, &reason, now),
                |u| pb::UnmergeProfilesResponse {
                    merge: Some(convert::merge_out(&u.merge)),
                    survivor_profile_id: u.survivor_root.0.to_string(),
                    survivor_version: u.survivor_root.1,
                    restored_profile_id: u.restored.0.to_string(),
                    restored_version: u.restored.1,
                },
            )
            .await?;
        self.0.metrics.counter("unmerges_total", &[]).increment(1);
        Ok(audited_reply(reply))
    }

    async fn list_merges(
        &self,
        req: Request<pb::ListMergesRequest>,
    ) -> Result<Response<pb::ListMergesResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let key = profile_ref_in("profile", req.profile.as_ref())?;
        let now = self.0.now();
        let merges = self.0.read(|view| {
            let root = identity::find_root(view, &key)?;
            caller.check_purpose(view, &root, now)?;
            identity::list_merges(view, &root)
        })?;
        Ok(audited_reply(pb::ListMergesResponse {
            merges: merges.iter().map(convert::merge_out).collect(),
        }))
    }
}
