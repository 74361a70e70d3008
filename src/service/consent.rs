//! ConsentService handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Core;
use super::audit_ids::reply as audited_reply;
use super::convert::{Violations, profile_ref_in};
use super::pb::{self, consent_service_server::ConsentService};
use super::rules_convert::{
    consent_out, effective_out, new_consent_in, preferences_in, preferences_out,
};
use crate::domain::consent::{self, Consents, preferences_of};
use crate::domain::identity::find_root;
use crate::domain::ids::RequestId;
use crate::domain::tree::MergeTree;
use crate::error::Error;

/// ConsentService over the core.
pub struct ConsentApi(pub Arc<Core>);

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn record_consent(
        &self,
        req: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let new = v.check(new_consent_in("consent", req.consent.as_ref()));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(new), Some(request_id)) = (key, new, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        let core = &self.0;
        let policy = core.rules.consent.clone();
        let reply = core
            .write(
                "record_consent",
                request_id.as_ref(),
                |tx, now| consent::record(tx, &key, new, &policy, now),
                |(record, version)| pb::RecordConsentResponse {
                    consent: Some(consent_out(&record)),
                    version,
                },
            )
            .await?;
        Ok(audited_reply(reply))
    }

    async fn get_consents(
        &self,
        req: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        let req = req.into_inner();
        let key = profile_ref_in("profile", req.profile.as_ref())?;
        let now = self.0.now();
        let reply = self.0.read(|view| {
            let root = find_root(view, &key)?;
            let tree = MergeTree::load(view, &root)?;
            let prefs = preferences_of(view, &tree)?;
            let consents = Consents::load(view, tree)?;
            Ok::<_, Error>(pb::GetConsentsResponse {
                profile_id: root.id.to_string(),
                records: consents.records().into_iter().map(consent_out).collect(),
                effective: consents
                    .effective(now)
                    .iter()
                    .map(|(p, c, s)| effective_out(*p, *c, s))
                    .collect(),
                preferences: Some(preferences_out(prefs.as_ref())),
            })
        })?;
        Ok(audited_reply(reply))
    }

    async fn set_preferences(
        &self,
        req: Request<pb::SetPreferencesRequest>,
    ) -> Result<Response<pb::SetPreferencesResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let prefs = v.check(preferences_in("preferences", req.preferences.as_ref()));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(prefs), Some(request_id)) = (key, prefs, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        let reply = self
            .0
            .write(
                "set_preferences",
                request_id.as_ref(),
                |tx, now| consent::set_preferences(tx, &key, prefs, now),
                |(prefs, version, id)| pb::SetPreferencesResponse {
                    preferences: Some(preferences_out(Some(&prefs))),
                    version,
                    profile_id: id.to_string(),
                },
            )
            .await?;
        Ok(audited_reply(reply))
    }
}
