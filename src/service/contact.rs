//! ContactService handlers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Core;
use super::audit_ids::reply as audited_reply;
use super::convert::{self, Violations, profile_ref_in};
use super::pb::{self, contact_service_server::ContactService};
use super::rules_convert::{contact_check_in, decision_out};
use crate::domain::contact;
use crate::domain::ids::RequestId;

/// ContactService over the core.
pub struct ContactApi(pub Arc<Core>);

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn check_contact(
        &self,
        req: Request<pb::CheckContactRequest>,
    ) -> Result<Response<pb::CheckContactResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let req = req.into_inner();
        let mut v = Violations::default();
        let key = v.check(profile_ref_in("profile", req.profile.as_ref()));
        let check = v.check(contact_check_in(&req));
        let request_id = v.check(RequestId::parse_optional("request_id", &req.request_id));
        v.finish()?;
        let (Some(key), Some(mut check), Some(request_id)) = (key, check, request_id) else {
            return Err(Status::internal("validation passed without values"));
        };
        if !caller.principal.local && caller.principal.department.is_some() {
            check.department = caller.department(&check.department);
        }
        let core = &self.0;
        if !req.reserve {
            let now = core.now();
            let (root, decision) =
                core.read(|view| contact::check(view, &key, &check, &core.rules, now))?;
            let mut reply = decision_out(&decision);
            reply.version = root.version;
            reply.profile_id = root.id.to_string();
            count_decision(core, &reply);
            return Ok(audited_reply(reply));
        }
        let rules = &core.rules;
        let reply = core
            .write(
                "check_contact",
                request_id.as_ref(),
                |tx, now| contact::check_and_reserve(tx, &key, &check, rules, now),
                |(decision, reserved, root)| {
                    let mut reply = decision_out(&decision);
                    reply.reserved = reserved
                        .as_ref()
                        .map(|i| convert::interaction_out(i, root.id));
                    reply.version = root.version;
                    reply.profile_id = root.id.to_string();
                    reply
                },
            )
            .await?;
        count_decision(core, &reply);
        Ok(audited_reply(reply))
    }
}

/// `contact_decisions_total{reason}`: `allowed`, or each denying reason.
fn count_decision(core: &Core, reply: &pb::CheckContactResponse) {
    if reply.allowed {
        core.metrics
            .counter("contact_decisions_total", &[("reason", "allowed")])
            .increment(1);
    }
    for r in &reply.reasons {
        let name = pb::DenyReason::try_from(*r)
            .map(|r| r.as_str_name())
            .unwrap_or("DENY_REASON_UNSPECIFIED");
        core.metrics
            .counter("contact_decisions_total", &[("reason", name)])
            .increment(1);
    }
}
