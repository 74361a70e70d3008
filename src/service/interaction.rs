//! InteractionService handlers.

use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::audit_ids::reply as audited_reply;
use super::convert::{self, Violations, profile_ref_in};
use super::pb::{self, interaction_service_server::InteractionService};
use super::profile::page_size_in;
use super::{Core, page_token};
use crate::domain::identity::ProfileKey;
use crate::domain::ids::{InteractionId, RequestId};
use crate::domain::interaction::{InteractionFilter, NewInteraction};
use crate::domain::time::Timestamp;
use crate::domain::timeline;
use crate::error::{Error, Result};

/// Most entries in one RecordInteractions.
pub const MAX_INTERACTION_BATCH: usize = 500;
/// Most values per ListInteractions filter list (channels, departments, types).
pub const MAX_FILTER_VALUES: usize = 32;
/// Idempotency scope shared by RecordInteraction and RecordInteractions, so a retry through
/// either finds the first answer.
const SCOPE: &str = "record_interaction";

/// InteractionService over the core.
pub struct InteractionApi(pub Arc<Core>);

pub(super) struct Entry {
    key: ProfileKey,
    new: NewInteraction,
    request_id: Option<RequestId>,
}

pub(super) fn entry_in(
    prefix: &str,
    r: &pb::RecordInteractionRequest,
    now: Timestamp,
) -> Result<Entry> {
    let p = |f: &str| convert::path(prefix, f);
    let mut v = Violations::default();
    let key = v.check(profile_ref_in(&p("profile"), r.profile.as_ref()));
    let new = v.check(convert::new_interaction_in(
        &p("interaction"),
        r.interaction.as_ref(),
        now,
    ));
    let request_id = v.check(RequestId::parse_optional(&p("request_id"), &r.request_id));
    v.finish()?;
    match (key, new, request_id) {
        (Some(key), Some(new), Some(request_id)) => Ok(Entry {
            key,
            new,
            request_id,
        }),
        _ => Err(Error::invalid(prefix, "incomplete")),
    }
}

/// Records entries in one transaction; entries already recorded under their request id
/// answer with their first response.
async fn record_all(
    core: &Core,
    entries: Vec<Entry>,
) -> Result<Vec<pb::RecordInteractionResponse>> {
    let now = core.now();
    core.store
        .write_with(|tx| {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                if let Some(id) = &e.request_id {
                    if let Some(bytes) = tx.idempotent_response(SCOPE, id.as_str())? {
                        out.push(
                            pb::RecordInteractionResponse::decode(bytes.as_slice()).map_err(
                                |err| Error::Corrupt(format!("stored interaction response: {err}")),
                            )?,
                        );
                        continue;
                    }
                }
                let (interaction, version) = timeline::record(tx, &e.key, e.new, &core.rules, now)?;
                let reply = pb::RecordInteractionResponse {
                    interaction: Some(convert::interaction_out(&interaction, interaction.origin)),
                    version,
                };
                if let Some(id) = &e.request_id {
                    tx.put_idempotent_response(SCOPE, id.as_str(), now, &reply.encode_to_vec())?;
                }
                out.push(reply);
            }
            Ok(out)
        })
        .await
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct ListPosition {
    occurred_at: i64,
    interaction_id: [u8; 16],
}

#[tonic::async_trait]
impl InteractionService for InteractionApi {
    async fn record_interaction(
        &self,
        req: Request<pb::RecordInteractionRequest>,
    ) -> Result<Response<pb::RecordInteractionResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut entry = entry_in("", &req, self.0.now())?;
        entry.new.department = caller.department(&entry.new.department);
        let mut replies = record_all(&self.0, vec![entry]).await?;
        replies
            .pop()
            .map(audited_reply)
            .ok_or_else(|| Status::internal("no reply recorded"))
    }

    async fn record_interactions(
        &self,
        req: Request<pb::RecordInteractionsRequest>,
    ) -> Result<Response<pb::RecordInteractionsResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        if req.requests.is_empty() || req.requests.len() > MAX_INTERACTION_BATCH {
            return Err(Error::invalid(
                "requests",
                format!(
                    "send 1 to {MAX_INTERACTION_BATCH} entries, got {}",
                    req.requests.len()
                ),
            )
            .into());
        }
        let now = self.0.now();
        let mut v = Violations::default();
        let entries: Vec<Option<Entry>> = req
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| v.check(entry_in(&format!("requests[{i}]"), r, now)))
            .collect();
        v.finish()?;
        let entries = entries
            .into_iter()
            .flatten()
            .map(|mut e| {
                e.new.department = caller.department(&e.new.department);
                e
            })
            .collect();
        let responses = record_all(&self.0, entries).await?;
        Ok(audited_reply(pb::RecordInteractionsResponse { responses }))
    }

    async fn list_interactions(
        &self,
        req: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let channels: Vec<_> = req
            .channels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                v.check(
                    convert::channel_in(*c)
                        .map_err(|e| Error::invalid(format!("channels[{i}]"), e)),
                )
            })
            .collect();
        let direction = v
            .check(
                convert::direction_in(req.direction, true)
                    .map_err(|e| Error::invalid("direction", e)),
            )
            .flatten();
        let after = req
            .occurred_after
            .as_ref()
            .and_then(|t| v.check(convert::time_in("occurred_after", t)));
        let before = req
            .occurred_before
            .as_ref()
            .and_then(|t| v.check(convert::time_in("occurred_before", t)));
        let page_size = v.check(page_size_in(req.page_size, 50, 500));
        for (field, len) in [
            ("channels", req.channels.len()),
            ("departments", req.departments.len()),
            ("types", req.types.len()),
        ] {
            if len > MAX_FILTER_VALUES {
                v.check::<()>(Err(Error::invalid(
                    field,
                    format!("at most {MAX_FILTER_VALUES} values, got {len}"),
                )));
            }
        }
        for (i, d) in req.departments.iter().enumerate().take(MAX_FILTER_VALUES) {
            if !crate::domain::interaction::valid_department(d) {
                v.check::<()>(Err(Error::invalid(
                    format!("departments[{i}]"),
                    "1 to 64 characters from [a-z0-9_]",
                )));
            }
        }
        for (i, t) in req.types.iter().enumerate().take(MAX_FILTER_VALUES) {
            if !crate::domain::interaction::valid_type(t) {
                v.check::<()>(Err(Error::invalid(
                    format!("types[{i}]"),
                    "1 to 64 characters from [a-z0-9_.]",
                )));
            }
        }
        v.finish()?;
        let (Some(key), Some(page_size)) = (key, page_size) else {
            return Err(Status::internal("validation passed without values"));
        };
        let filter = InteractionFilter {
            channels,
            departments: req.departments.clone(),
            kinds: req.types.clone(),
            direction,
            after,
            before,
        };
        let fp = page_token::fingerprint(&[
            b"interactions",
            format!("{key:?}").as_bytes(),
            format!("{filter:?}").as_bytes(),
        ]);
        let cursor = page_token::decode::<ListPosition>(&req.page_token, fp)?.map(|p| {
            (
                Timestamp(p.occurred_at),
                InteractionId::from_bytes(p.interaction_id),
            )
        });
        let now = self.0.now();
        let (items, next) = self.0.read(|view| {
            let root = crate::domain::identity::find_root(view, &key)?;
            caller.check_purpose(view, &root, now)?;
            let (items, next) = timeline::list(view, &key, &filter, cursor, page_size)?;
            Ok((
                items
                    .iter()
                    .map(|i| {
                        let mut out = convert::interaction_out(i, root.id);
                        if !caller.visible.finance {
                            out.amount = None;
                        }
                        out
                    })
                    .collect::<Vec<_>>(),
                next,
            ))
        })?;
        Ok(audited_reply(pb::ListInteractionsResponse {
            interactions: items,
            next_page_token: next
                .map(|(t, id)| {
                    page_token::encode(
                        &ListPosition {
                            occurred_at: t.0,
                            interaction_id: *id.as_bytes(),
                        },
                        fp,
                    )
                })
                .unwrap_or_default(),
        }))
    }
}
