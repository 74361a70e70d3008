//! The tower layer every request passes: authenticate (bearer token, or local development),
//! authorise against [`super::required_access`], and hand the principal to the handlers in
//! the request extensions. A refusal never reaches a handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use super::tokens::{self, TokenHash};
use super::{Access, Principal, required_access};
use crate::audit::{Access as AuditAccess, AuditIds, AuditLog, NotStarted, code_name};
use crate::server::metrics::{CallMetrics, MethodMetrics, UNKNOWN_METHOD};

/// Everything needed to decide who a request comes from.
#[derive(Debug)]
pub struct Authenticator {
    /// Configured principals; empty = local development (every request is [`Principal::local`]).
    principals: Vec<Arc<Principal>>,
    /// Token hashes and the index of their principal.
    hashes: Vec<TokenHash>,
    owners: Vec<usize>,
    local: Arc<Principal>,
    /// Field groups defined by attribute paths.
    groups: std::collections::BTreeMap<String, Vec<String>>,
    /// Client certificate common name → principal index.
    cert_names: Vec<(String, usize)>,
}

impl Authenticator {
    /// From principals and their token hashes (`(principal index, hash)`).
    pub fn new(
        principals: Vec<Principal>,
        tokens: Vec<(usize, TokenHash)>,
        groups: std::collections::BTreeMap<String, Vec<String>>,
    ) -> Authenticator {
        Authenticator {
            cert_names: Vec::new(),
            groups,
            principals: principals.into_iter().map(Arc::new).collect(),
            hashes: tokens.iter().map(|(_, h)| *h).collect(),
            owners: tokens.iter().map(|(i, _)| *i).collect(),
            local: Arc::new(Principal::local()),
        }
    }

    /// Maps client certificate common names to principals (mutual TLS).
    pub fn with_cert_names(mut self, names: Vec<(String, usize)>) -> Authenticator {
        self.cert_names = names;
        self
    }

    /// The principal of a verified client certificate (DER), by its subject common name.
    fn by_certificate(&self, der: &[u8]) -> Result<Arc<Principal>, Status> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| Status::unauthenticated("the client certificate cannot be read"))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string();
        self.cert_names
            .iter()
            .find(|(n, _)| *n == cn)
            .map(|(_, i)| self.principals[*i].clone())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the client certificate CN={cn:?} is not mapped to a principal (auth.principals[].client_cert_names)"
                ))
            })
    }

    /// What `principal` may read.
    pub fn visibility(&self, principal: &Principal) -> Visibility {
        let mut attribute_groups = Vec::new();
        for (group, patterns) in &self.groups {
            let allowed = principal.fields.allows(group);
            for p in patterns {
                attribute_groups.push((p.clone(), allowed));
            }
        }
        Visibility {
            identity: principal.fields.allows("identity"),
            profile: principal.fields.allows("profile"),
            consent: principal.fields.allows("consent"),
            activity: principal.fields.allows("activity"),
            finance: principal.fields.allows("finance"),
            attribute_groups,
        }
    }

    /// True when no principal is configured (local development).
    pub fn is_local(&self) -> bool {
        self.principals.is_empty()
    }

    /// Decides a request: `Ok(None)` for public methods, `Ok(Some(principal))` when allowed.
    pub fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Arc<Principal>>, Status> {
        let path = req.uri().path();
        let Some(access) = required_access(path) else {
            return Err(Status::permission_denied(format!(
                "{path} is not in the access table; it is refused for everyone"
            )));
        };
        if access == Access::Public {
            return Ok(None);
        }
        let principal = self.authenticate(req)?;
        match access {
            Access::Scope(scope) if !principal.has(scope) => {
                Err(Status::permission_denied(format!(
                    "principal {:?} lacks the scope {} that {path} requires",
                    principal.name,
                    scope.name()
                )))
            }
            _ => Ok(Some(principal)),
        }
    }

    fn authenticate<B>(&self, req: &http::Request<B>) -> Result<Arc<Principal>, Status> {
        if self.is_local() {
            return Ok(self.local.clone());
        }
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()));
        let header = req.headers().get(http::header::AUTHORIZATION);
        if let (Some(der), None) = (&leaf, header) {
            return self.by_certificate(der);
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "credentials required: send the header `authorization: Bearer <token>` or a client certificate",
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        match tokens::find(token, &self.hashes) {
            Some(i) => Ok(self.principals[self.owners[i]].clone()),
            None => Err(Status::unauthenticated("the token is not valid")),
        }
    }
}

/// The layer: authentication, authorisation and the audit entry of every call.
#[derive(Clone)]
pub struct AuthLayer {
    /// Who is who.
    pub auth: Arc<Authenticator>,
    /// Where accesses are recorded.
    pub audit: Option<Arc<AuditLog>>,
    /// Request counts and latencies.
    pub metrics: Option<Arc<CallMetrics>>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    audit: Option<Arc<AuditLog>>,
    metrics: Option<Arc<CallMetrics>>,
}

/// One call in the `grpc_requests_in_flight` gauge; leaves it however the call ends, also when
/// its future is dropped (deadline passed, client cancelled).
struct InFlight(Option<Arc<CallMetrics>>);

impl InFlight {
    fn enter(metrics: Option<&Arc<CallMetrics>>) -> InFlight {
        if let Some(m) = metrics {
            m.in_flight().increment(1.0);
        }
        InFlight(metrics.cloned())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.in_flight().decrement(1.0);
        }
    }
}

/// Counts a finished call.
fn observe(method: &str, metrics: Option<&MethodMetrics>, code: tonic::Code, started: Instant) {
    // The call's span gets its status and latency; one line per call; never a personal value.
    let elapsed = started.elapsed();
    let code_name = code_name(code as i32);
    let latency_us = elapsed.as_micros() as u64;
    let span = tracing::Span::current();
    span.record("code", code_name);
    span.record("latency_us", latency_us);
    tracing::info!(method, code = code_name, latency_us, "grpc call");
    if let Some(m) = metrics {
        m.finished(code, elapsed);
    }
}

/// Whether calls of `path` are audited: every method of the public contract.
fn audited(path: &str) -> bool {
    path.starts_with("/customer_profile.v1.")
}

fn outcome_of<B>(resp: &http::Response<B>) -> tonic::Code {
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    tonic::Code::from_i32(code)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        // A path that names no method is counted under one label, as the client wrote it only
        // in the log line and audit entry.
        let known = required_access(path).is_some();
        let method = self
            .metrics
            .as_ref()
            .map(|m| m.method(if known { path } else { UNKNOWN_METHOD }));
        let path = path.to_string();
        let audit = self.audit.clone().filter(|_| audited(&path));
        let started = Instant::now();
        let audit_failure = audit.as_ref().and_then(|log| log.failing());
        match (self.auth.check(&req), audit_failure) {
            // No access without its audit entry: while the log cannot be written, an
            // authenticated caller's audited calls are refused before they run (and, as nothing
            // can record them, without an entry).
            (Ok(_), Some(why)) => {
                let status = Status::unavailable(format!(
                    "the audit log cannot be written ({why}); calls are refused until it can: free space on the data directory's volume"
                ));
                observe(&path, method.as_deref(), status.code(), started);
                let response = status.into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
            (Ok(principal), None) => {
                let name = principal.as_ref().map(|p| p.name.clone());
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                let fut = self.inner.call(req);
                let in_flight = InFlight::enter(self.metrics.as_ref());
                Box::pin(async move {
                    let result = fut.await;
                    drop(in_flight);
                    let resp = result?;
                    let outcome = outcome_of(&resp);
                    observe(&path, method.as_deref(), outcome, started);
                    let ran = resp.extensions().get::<NotStarted>().is_none();
                    if let Some(log) = audit.filter(|_| ran) {
                        log.record(AuditAccess {
                            principal: name.unwrap_or_else(|| "anonymous".into()),
                            method: path,
                            profiles: resp
                                .extensions()
                                .get::<AuditIds>()
                                .map(|a| a.0.clone())
                                .unwrap_or_default(),
                            outcome: code_name(outcome as i32).to_string(),
                        });
                    }
                    Ok(resp)
                })
            }
            (Err(status), _) => {
                observe(&path, method.as_deref(), status.code(), started);
                if let Some(log) = audit {
                    let who = self.auth.authenticate(&req).ok();
                    log.record(AuditAccess {
                        principal: who.map_or_else(|| "unauthenticated".into(), |p| p.name.clone()),
                        method: path,
                        profiles: Vec::new(),
                        outcome: code_name(status.code() as i32).to_string(),
                    });
                }
                let response = status.into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// The principal a handler runs for (inserted by the layer).
pub fn principal_of<T>(req: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    req.extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no principal on the request"))
}

/// The fields a principal may read, by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// Identifiers and merged ids.
    pub identity: bool,
    /// Attributes outside every attribute-defined group.
    pub profile: bool,
    /// Consent and preferences.
    pub consent: bool,
    /// Summary and interactions' details.
    pub activity: bool,
    /// Money: lifetime spend, interaction amounts.
    pub finance: bool,
    /// Attribute path patterns of attribute-defined groups and whether each is readable.
    pub attribute_groups: Vec<(String, bool)>,
}

impl Visibility {
    /// Everything.
    pub fn all() -> Visibility {
        Visibility {
            identity: true,
            profile: true,
            consent: true,
            activity: true,
            finance: true,
            attribute_groups: Vec::new(),
        }
    }

    /// Whether the attribute at `path` (`given_name`, `custom.iban`) is readable: the group
    /// of the first pattern that matches decides; attributes in no such group are `profile`.
    pub fn attribute(&self, path: &str) -> bool {
        for (pattern, allowed) in &self.attribute_groups {
            let hit = match pattern.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == pattern,
            };
            if hit {
                return *allowed;
            }
        }
        self.profile
    }

    /// Whether a changed path of the change feed (`attributes.custom.iban`, `identifiers`) may
    /// be shown.
    pub fn changed_path(&self, path: &str) -> bool {
        match path.strip_prefix("attributes.") {
            Some(attr) => self.attribute(attr),
            None => true,
        }
    }
}
