//! gRPC handlers: parse the request (convert), run the rules over the store, convert the reply.
//! prost types never leave this module.

mod admin;
mod audit_ids;
mod bounded_stream;
mod consent;
mod contact;
pub mod convert;
#[doc(hidden)]
pub mod fuzz_entry;
mod identity;
mod interaction;
pub mod page_token;
mod privacy;
mod profile;
pub mod reply;
pub mod rules_convert;
pub mod status;

use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;

pub use admin::AdminApi;
pub use consent::ConsentApi;
pub use contact::ContactApi;
pub use identity::IdentityApi;
pub use interaction::InteractionApi;
pub use privacy::PrivacyApi;
pub use profile::ProfileApi;

use crate::audit::{AuditIds, AuditLog};
use crate::auth::Principal;
use crate::auth::layer::{Authenticator, Visibility, principal_of};
use crate::domain::consent::permits;
use crate::domain::ids::RequestId;
use crate::domain::policy::IdentityPolicy;
use crate::domain::ports::{ReadView, WriteTx};
use crate::domain::profile::ProfileRecord;
use crate::domain::rules::Rules;
use crate::domain::time::{Clock, Timestamp};
use crate::error::{Error, Result};
use crate::store::Store;

/// Generated protobuf and gRPC code for `customer_profile.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("customer_profile.v1");

    pub use super::reply::{GetProfileResponse, ProfileResult, profile_result};

    /// Encoded descriptors of every proto file (and its imports), for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("customer_profile_descriptor");
}

/// A reply that names the profiles it touched, for the audit log.
pub fn audited<T>(msg: T, ids: impl IntoIterator<Item = String>) -> tonic::Response<T> {
    let mut r = tonic::Response::new(msg);
    r.extensions_mut()
        .insert(AuditIds(ids.into_iter().collect()));
    r
}

/// The caller of a request: its principal and what it may read.
pub struct Caller {
    /// Who.
    pub principal: Arc<Principal>,
    /// What it may read.
    pub visible: Visibility,
}

impl Caller {
    /// FAILED_PRECONDITION with reason CONSENT_REQUIRED unless the customer permits the
    /// purpose the caller is bound to (callers without a bound purpose pass).
    pub fn check_purpose(
        &self,
        view: &dyn ReadView,
        root: &ProfileRecord,
        now: Timestamp,
    ) -> Result<()> {
        match self.principal.purpose {
            Some(p) if !permits(view, root, p, now)? => Err(Error::precondition(
                "CONSENT_REQUIRED",
                format!(
                    "principal {:?} is bound to {p:?} and this customer has not consented to it",
                    self.principal.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The department recorded on interactions this caller writes: its own when auth is on,
    /// else the one in the request.
    pub fn department(&self, requested: &str) -> String {
        match (&self.principal.department, self.principal.local) {
            (Some(d), false) => d.clone(),
            _ => requested.to_string(),
        }
    }
}

/// What every handler shares.
pub struct Core {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Profiles kept loaded between reads (the store drops what each commit changes).
    pub views: Arc<crate::domain::view_cache::ViewCache>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::server::metrics::Metrics>,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Identity policy.
    pub policy: IdentityPolicy,
    /// Consent, contact and summary rules.
    pub rules: Rules,
    /// Principals and field groups.
    pub auth: Arc<Authenticator>,
    /// Turns true when the server begins to shut down (ends change streams).
    pub shutdown: watch::Receiver<bool>,
    /// Stream buffers and stall limit (the rest of `[limits]` is enforced by the tower layer).
    pub limits: crate::server::limits::LimitsConfig,
}

impl Core {
    /// The caller of `req` (the auth layer put its principal there).
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> std::result::Result<Caller, tonic::Status> {
        let principal = principal_of(req)?;
        let visible = self.auth.visibility(&principal);
        Ok(Caller { principal, visible })
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs `f` over a consistent snapshot.
    pub fn read<T>(&self, f: impl FnOnce(&dyn ReadView) -> Result<T>) -> Result<T> {
        self.store.read_with(f)
    }

    /// The one write path of the service: inside one transaction, replays the stored response
    /// of `request_id` if there is one; otherwise runs `f`, converts its result to the reply
    /// and stores that reply under `request_id` — all committed atomically, acknowledged only
    /// once durable.
    pub async fn write<T, M>(
        &self,
        scope: &'static str,
        request_id: Option<&RequestId>,
        f: impl FnOnce(&mut dyn WriteTx, Timestamp) -> Result<T>,
        reply: impl FnOnce(T) -> M,
    ) -> Result<M>
    where
        M: Message + Default,
    {
        let now = self.now();
        self.store
            .write_with(|tx| {
                if let Some(id) = request_id {
                    if let Some(bytes) = tx.idempotent_response(scope, id.as_str())? {
                        return M::decode(bytes.as_slice())
                            .map_err(|e| Error::Corrupt(format!("stored {scope} response: {e}")));
                    }
                }
                let out = reply(f(tx, now)?);
                if let Some(id) = request_id {
                    tx.put_idempotent_response(scope, id.as_str(), now, &out.encode_to_vec())?;
                }
                Ok(out)
            })
            .await
    }

    /// The stored reply of an earlier call with `request_id`, if any (read-only paths).
    pub fn replayed<M: Message + Default>(
        &self,
        scope: &str,
        request_id: Option<&RequestId>,
    ) -> Result<Option<M>> {
        let Some(id) = request_id else {
            return Ok(None);
        };
        let bytes = self.read(|v| v.idempotent_response(scope, id.as_str()))?;
        bytes
            .map(|b| {
                M::decode(b.as_slice())
                    .map_err(|e| Error::Corrupt(format!("stored {scope} response: {e}")))
            })
            .transpose()
    }
}
