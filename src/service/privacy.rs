//! PrivacyService handlers: export everything held about a customer; erase it.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::bounded_stream;
use super::convert::{self, ReadMask, Violations, profile_ref_in, text_in};
use super::pb::{self, privacy_service_server::PrivacyService};
use super::rules_convert::consent_out;
use super::{Core, audited};
use crate::domain::consent::Consents;
use crate::domain::identity::{self, ProfileKey, find_root};
use crate::domain::ids::RequestId;
use crate::domain::interaction::InteractionFilter;
use crate::domain::privacy;
use crate::domain::profiles::{self, Parts};
use crate::domain::timeline;
use crate::domain::tree::MergeTree;
use crate::error::Error;

/// History entries or interactions per export message.
const EXPORT_CHUNK: usize = 500;

/// PrivacyService over the core.
pub struct PrivacyApi(pub Arc<Core>);

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportCustomerResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PrivacyService for PrivacyApi {
    type ExportCustomerStream = ExportStream;

    async fn export_customer(
        &self,
        req: Request<pb::ExportCustomerRequest>,
    ) -> Result<Response<Self::ExportCustomerStream>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let key = profile_ref_in("profile", req.profile.as_ref())?;
        let core = &self.0;
        let now = core.now();
        let mask = ReadMask::all().restrict(&caller.visible);
        // One snapshot: the export is consistent.
        let (head, history, interactions, ids) = core.read(|view| {
            let root = find_root(view, &key)?;
            let live = ProfileKey::Id(root.id);
            let p = profiles::view_profile(view, &live, Parts::ALL, &core.rules, now)?;
            let consents = Consents::load(view, MergeTree::load(view, &root)?)?;
            let merges = identity::list_merges(view, &root)?;
            let mut history = Vec::new();
            let mut after = 0;
            loop {
                let (page, next) = profiles::history_page(view, &live, None, after, 1000)?;
                history.extend(
                    page.iter()
                        .filter(|h| caller.visible.attribute(&h.path))
                        .map(convert::history_out),
                );
                match next {
                    Some(n) => after = n,
                    None => break,
                }
            }
            let (items, _) =
                timeline::list(view, &live, &InteractionFilter::default(), None, usize::MAX)?;
            let interactions: Vec<pb::Interaction> = items
                .iter()
                .map(|i| {
                    let mut out = convert::interaction_out(i, root.id);
                    if !caller.visible.finance {
                        out.amount = None;
                    }
                    out
                })
                .collect();
            let mut ids = vec![root.id.to_string()];
            ids.extend(p.merged_ids.iter().map(ToString::to_string));
            let head = pb::ExportCustomerResponse {
                profile: Some(convert::profile_out(&p, &mask)),
                consents: if caller.visible.consent {
                    consents.records().into_iter().map(consent_out).collect()
                } else {
                    Vec::new()
                },
                merges: merges.iter().map(convert::merge_out).collect(),
                history: Vec::new(),
                interactions: Vec::new(),
                exported_at: Some(convert::time_out(now)),
            };
            Ok::<_, Error>((head, history, interactions, ids))
        })?;
        let stall_ms = self.0.limits.stream_stall_ms;
        // The export is already read into memory; the bound keeps the encoded copies few and
        // the stall limit frees it when the client stops reading.
        let (tx, rx) = bounded_stream::channel(
            4,
            self.0.limits.stream_stall(),
            |_: &pb::ExportCustomerResponse| None,
            move |_| {
                format!(
                    "consumer too slow: the export was not read for {stall_ms} ms (limits.stream_stall_ms), so the server ended it; call ExportCustomer again"
                )
            },
        );
        tokio::spawn(async move {
            if tx.send(Ok(head)).await.is_err() {
                return;
            }
            for chunk in history.chunks(EXPORT_CHUNK) {
                let msg = pb::ExportCustomerResponse {
                    history: chunk.to_vec(),
                    ..Default::default()
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            for chunk in interactions.chunks(EXPORT_CHUNK) {
                let msg = pb::ExportCustomerResponse {
                    interactions: chunk.to_vec(),
                    ..Default::default()
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        let stream: ExportStream = Box::pin(rx);
        Ok(audited(stream, ids))
    }

    async fn erase_customer(
        &self,
        req: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let _reason = v.check(text_in("reason", &req.reason, 256, true));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(request_id)) = (key, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        let reply = self
            .0
            .write(
                "erase_customer",
                request_id.as_ref(),
                |tx, now| privacy::erase(tx, &key, now),
                |e| pb::EraseCustomerResponse {
                    profile_id: e.profile.to_string(),
                    erased_profile_ids: e.erased.iter().map(ToString::to_string).collect(),
                    already_erased: e.already,
                    erased_at: Some(convert::time_out(e.at)),
                },
            )
            .await?;
        let ids = reply.erased_profile_ids.clone();
        Ok(audited(reply, ids))
    }
}
