//! ProfileService handlers, including the change stream.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::audit_ids::reply as audited_reply;
use super::bounded_stream::{self, Stop};
use super::convert::{self, Violations, profile_ref_in, read_mask_in, text_in};
use super::identity::MAX_BATCH;
use super::pb::{self, profile_service_server::ProfileService};
use super::{Core, page_token, rules_convert};
use crate::domain::identity::ProfileKey;
use crate::domain::ids::ProfileId;
use crate::domain::ids::RequestId;
use crate::domain::interaction::MAX_FUTURE_SECS;
use crate::domain::profiles;
use crate::domain::segments;
use crate::error::Error;

/// Events read from the store per round of a change stream.
const WATCH_CHUNK: usize = 256;

/// ProfileService over the core.
pub struct ProfileApi(pub Arc<Core>);

fn check_min_version(view: &profiles::ProfileView, min_version: u64) -> Result<(), Error> {
    if min_version > view.root.version {
        return Err(Error::precondition(
            "VERSION_NOT_REACHED",
            format!(
                "profile {} is at version {}, below min_version {min_version}",
                view.root.id, view.root.version
            ),
        ));
    }
    Ok(())
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::WatchChangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProfileService for ProfileApi {
    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let mask = v.check(read_mask_in("read_mask", req.read_mask.as_ref()));
        v.finish()?;
        let (Some(key), Some(mask)) = (key, mask) else {
            return Err(Status::internal("validation passed without values"));
        };
        let mask = mask.restrict(&caller.visible);
        let core = &self.0;
        let now = core.now();
        let (view, snapshot) = core.read(|view| {
            let (p, snapshot) =
                core.views
                    .view_and_snapshot(view, &key, mask.parts(), &core.rules, now)?;
            caller.check_purpose(view, &p.root, now)?;
            Ok((p, snapshot))
        })?;
        check_min_version(&view, req.min_version)?;
        Ok(audited_reply(match snapshot {
            Some(s) => pb::GetProfileResponse::from_snapshot(&s, &view, &mask),
            None => pb::GetProfileResponse::new(convert::profile_out(&view, &mask)),
        }))
    }

    async fn batch_get_profiles(
        &self,
        req: Request<pb::BatchGetProfilesRequest>,
    ) -> Result<Response<pb::BatchGetProfilesResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        if req.profiles.is_empty() || req.profiles.len() > MAX_BATCH {
            return Err(Error::invalid(
                "profiles",
                format!("name 1 to {MAX_BATCH} profiles, got {}", req.profiles.len()),
            )
            .into());
        }
        let mask = read_mask_in("read_mask", req.read_mask.as_ref())?.restrict(&caller.visible);
        let core = &self.0;
        let now = core.now();
        let results = core.read(|view| {
            req.profiles
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let outcome =
                        profile_ref_in(&format!("profiles[{i}]"), Some(p)).and_then(|key| {
                            let (p, snapshot) = core.views.view_and_snapshot(
                                view,
                                &key,
                                mask.parts(),
                                &core.rules,
                                now,
                            )?;
                            caller.check_purpose(view, &p.root, now)?;
                            Ok((p, snapshot))
                        });
                    let result = match outcome {
                        Ok((view, Some(s))) => {
                            return Ok(pb::ProfileResult::from_snapshot(&s, &view, &mask));
                        }
                        Ok((view, None)) => {
                            pb::profile_result::Result::Profile(convert::profile_out(&view, &mask))
                        }
                        Err(
                            e @ (Error::NotFound(_)
                            | Error::Erased(_)
                            | Error::InvalidArgument(_)
                            | Error::FailedPrecondition { .. }),
                        ) => {
                            let status = Status::from(e);
                            pb::profile_result::Result::Error(pb::ProfileError {
                                code: status.code() as i32,
                                message: status.message().to_string(),
                            })
                        }
                        Err(other) => return Err(other),
                    };
                    Ok(pb::ProfileResult::new(result))
                })
                .collect::<Result<Vec<_>, Error>>()
        })?;
        Ok(audited_reply(pb::BatchGetProfilesResponse { results }))
    }

    async fn update_profile(
        &self,
        req: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let core = &self.0;
        let now = core.now();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let changes = v.check(convert::attribute_changes_in(
            req.attributes.as_ref(),
            req.update_mask.as_ref(),
            now,
        ));
        let source = v.check(text_in("source", &req.source, 64, true));
        let observed_at = v.check(match &req.observed_at {
            None => Ok(now),
            Some(t) => convert::time_in("observed_at", t).and_then(|t| {
                if t > now.plus_secs(MAX_FUTURE_SECS) {
                    Err(Error::invalid("observed_at", "is more than 5 minutes in the future; send when the values were true (UTC)"))
                } else {
                    Ok(t)
                }
            }),
        });
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(changes), Some(source), Some(observed_at), Some(request_id)) =
            (key, changes, source, observed_at, request_id)
        else {
            return Err(Status::internal("validation passed without values"));
        };
        let expected = (req.expected_version != 0).then_some(req.expected_version);
        let rules = &core.rules;
        let reply = core
            .write(
                "update_profile",
                request_id.as_ref(),
                |tx, now| {
                    let updated = profiles::update_profile(
                        tx,
                        &key,
                        changes,
                        &source,
                        observed_at,
                        expected,
                        now,
                    )?;
                    let view = profiles::view_profile(tx, &key, profiles::Parts::ALL, rules, now)?;
                    Ok((updated, view))
                },
                |(updated, view)| pb::UpdateProfileResponse {
                    profile: Some(convert::profile_out(
                        &view,
                        &convert::ReadMask::all().restrict(&caller.visible),
                    )),
                    applied_paths: updated.applied,
                    superseded_paths: updated.superseded,
                },
            )
            .await?;
        Ok(audited_reply(reply))
    }

    async fn get_profile_history(
        &self,
        req: Request<pb::GetProfileHistoryRequest>,
    ) -> Result<Response<pb::GetProfileHistoryResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        if !req.path.is_empty() && crate::domain::attributes::AttrPath::parse(&req.path).is_none() {
            v.check::<()>(Err(Error::invalid(
                "path",
                format!(
                    "unknown attribute path {:?} (e.g. given_name, custom.tier)",
                    req.path
                ),
            )));
        }
        let page_size = v.check(page_size_in(req.page_size, 100, 1000));
        v.finish()?;
        let (Some(key), Some(page_size)) = (key, page_size) else {
            return Err(Status::internal("validation passed without values"));
        };
        let fp = page_token::fingerprint(&[
            b"history",
            format!("{key:?}").as_bytes(),
            req.path.as_bytes(),
        ]);
        let after: u64 = page_token::decode(&req.page_token, fp)?.unwrap_or(0);
        let path = (!req.path.is_empty()).then_some(req.path.as_str());
        let now = self.0.now();
        let (entries, next) = self.0.read(|view| {
            let root = crate::domain::identity::find_root(view, &key)?;
            caller.check_purpose(view, &root, now)?;
            profiles::history_page(view, &key, path, after, page_size)
        })?;
        Ok(audited_reply(pb::GetProfileHistoryResponse {
            changes: entries
                .iter()
                .filter(|h| caller.visible.attribute(&h.path))
                .map(convert::history_out)
                .collect(),
            next_page_token: next.map(|n| page_token::encode(&n, fp)).unwrap_or_default(),
        }))
    }

    type WatchChangesStream = ChangeStream;

    async fn watch_changes(
        &self,
        req: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let caller = self.0.caller(&req)?;
        let from = req.into_inner().from_sequence;
        let core = self.0.clone();
        let floor = core.store.changes_floor()?;
        if from < floor {
            return Err(Error::OutOfRange(format!(
                "events up to sequence {floor} are past retention; resume from {floor} or later (a full resync is needed)"
            ))
            .into());
        }
        let stall = core.limits.stream_stall();
        let stall_ms = core.limits.stream_stall_ms;
        let (tx, rx) = bounded_stream::channel(
            core.limits.stream_buffer,
            stall,
            |r: &pb::WatchChangesResponse| r.event.as_ref().map(|e| e.sequence),
            move |last| {
                format!(
                    "consumer too slow: the change stream was not read for {stall_ms} ms with its buffer full (limits.stream_stall_ms), so the server ended it; resume with from_sequence = {}",
                    last.unwrap_or(from)
                )
            },
        );
        let too_slow = core.metrics.counter(
            "stream_consumers_too_slow_total",
            &[("method", "WatchChanges")],
        );
        let subscribers = core.metrics.gauge("change_feed_subscribers", &[]);
        subscribers.increment(1.0);
        tokio::spawn(async move {
            // Counted down however the stream ends.
            struct Gone(metrics::Gauge);
            impl Drop for Gone {
                fn drop(&mut self) {
                    self.0.decrement(1.0);
                }
            }
            let _gone = Gone(subscribers);
            let mut durable = core.store.watch_durable();
            let mut shutdown = core.shutdown.clone();
            let mut cursor = from;
            loop {
                let events = match core.store.changes_after(cursor, WATCH_CHUNK) {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if let Some(first) = events.first() {
                    if first.sequence != cursor + 1 {
                        let _ = tx
                            .send(Err(Error::OutOfRange(format!("events after {cursor} were pruned before they could be sent; resume from a full resync")).into()))
                            .await;
                        return;
                    }
                }
                if events.is_empty() {
                    tokio::select! {
                        changed = durable.changed() => if changed.is_err() { return },
                        _ = shutdown.wait_for(|stop| *stop) => return,
                        _ = tx.closed() => return,
                    }
                    continue;
                }
                for mut e in events {
                    cursor = e.sequence;
                    e.paths.retain(|p| caller.visible.changed_path(p));
                    let sent = tx
                        .send(Ok(pb::WatchChangesResponse {
                            event: Some(convert::change_out(&e)),
                        }))
                        .await;
                    match sent {
                        Ok(()) => {}
                        Err(Stop::TooSlow) => {
                            too_slow.increment(1);
                            return;
                        }
                        Err(Stop::Gone) => return,
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn search_profiles(
        &self,
        req: Request<pb::SearchProfilesRequest>,
    ) -> Result<Response<pb::SearchProfilesResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut v = Violations::default();
        let filter = v.check(rules_convert::filter_in("filter", req.filter.as_ref()));
        let mask = v.check(read_mask_in("read_mask", req.read_mask.as_ref()));
        let page_size = v.check(page_size_in(req.page_size, 50, 1000));
        v.finish()?;
        let (Some(mut filter), Some(mask), Some(page_size)) = (filter, mask, page_size) else {
            return Err(Status::internal("validation passed without values"));
        };
        let mask = mask.restrict(&caller.visible);
        check_filter_visible(&filter, &caller)?;
        if let Some(p) = caller.principal.purpose {
            filter.clauses.push(segments::Clause::Permits(p));
        }
        let fp = page_token::fingerprint(&[b"search", format!("{filter:?}").as_bytes()]);
        let after = page_token::decode::<[u8; 16]>(&req.page_token, fp)?.map(ProfileId::from_bytes);
        let core = &self.0;
        let now = core.now();
        let (profiles, next) = core.read(|view| {
            let (ids, next) = segments::search(view, &filter, &core.rules, now, after, page_size)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let key = ProfileKey::Id(id);
                let p = profiles::view_profile(view, &key, mask.parts(), &core.rules, now)?;
                out.push(convert::profile_out(&p, &mask));
            }
            Ok::<_, Error>((out, next))
        })?;
        Ok(audited_reply(pb::SearchProfilesResponse {
            profiles,
            next_page_token: next
                .map(|id| page_token::encode(id.as_bytes(), fp))
                .unwrap_or_default(),
        }))
    }

    async fn count_profiles(
        &self,
        req: Request<pb::CountProfilesRequest>,
    ) -> Result<Response<pb::CountProfilesResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut filter = rules_convert::filter_in("filter", req.filter.as_ref())?;
        check_filter_visible(&filter, &caller)?;
        if let Some(p) = caller.principal.purpose {
            filter.clauses.push(segments::Clause::Permits(p));
        }
        let core = &self.0;
        let now = core.now();
        let count = core.read(|view| segments::count(view, &filter, &core.rules, now))?;
        Ok(audited_reply(pb::CountProfilesResponse { count }))
    }
}

/// A caller may only filter on what it may read (a filter on a hidden attribute would reveal
/// its values through who matches).
fn check_filter_visible(filter: &segments::Filter, caller: &super::Caller) -> Result<(), Error> {
    for c in &filter.clauses {
        let hidden = match c {
            segments::Clause::Attribute { path, .. } => !caller.visible.attribute(path),
            segments::Clause::IdentifierKind(_) => !caller.visible.identity,
            segments::Clause::Consent { .. } => !caller.visible.consent,
            segments::Clause::Interaction { .. } | segments::Clause::Score { .. } => {
                !caller.visible.activity
            }
            segments::Clause::Permits(_) => false,
        };
        if hidden {
            return Err(Error::PermissionDenied(format!(
                "principal {:?} may not read what this clause filters on: {c:?}",
                caller.principal.name
            )));
        }
    }
    Ok(())
}

/// A page size: 0 means the default; above the maximum is refused.
pub fn page_size_in(raw: i32, default: usize, max: usize) -> Result<usize, Error> {
    match raw {
        0 => Ok(default),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n if n as usize > max => Err(Error::invalid(
            "page_size",
            format!("at most {max}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}
