//! Authentication and authorisation over real gRPC: the matrix of every RPC × (no credentials,
//! a principal without the method's scope, a principal with only that scope), token hashes,
//! field groups, purpose binding and the department taken from the principal.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use customer_profile::auth::{Access, Scope, required_access, tokens};
use customer_profile::server::config::{Config, PrincipalConfig};
use customer_profile::service::pb;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

use crate::helpers::*;

/// Sends and receives raw protobuf bytes, so one client can call every method.
#[derive(Default, Clone)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Every RPC of every service of the public contract, as `/package.Service/Method`, with
/// whether it streams its answer.
fn every_rpc() -> Vec<(String, bool)> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut out = Vec::new();
    for file in set.file {
        if file.package() != "customer_profile.v1" {
            continue;
        }
        for service in &file.service {
            for m in &service.method {
                out.push((
                    format!("/customer_profile.v1.{}/{}", service.name(), m.name()),
                    m.server_streaming(),
                ));
            }
        }
    }
    out
}

fn scope_of(path: &str) -> Scope {
    match required_access(path) {
        Some(Access::Scope(s)) => s,
        other => panic!("{path} has no scope entry: {other:?}"),
    }
}

/// Calls `path` with `body` as `token` (None: no credentials); the status code, `Ok` when the
/// call succeeded.
async fn call(
    channel: &GrpcChannel,
    path: &str,
    streaming: bool,
    token: Option<&str>,
    body: Vec<u8>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).expect("header"),
        );
    }
    let path = http::uri::PathAndQuery::try_from(path.to_string()).expect("path");
    if streaming {
        match grpc.server_streaming(req, path, RawCodec).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    } else {
        match grpc.unary(req, path, RawCodec).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
}

struct Principals {
    config: Vec<PrincipalConfig>,
    tokens: BTreeMap<String, String>,
}

impl Principals {
    fn new() -> Principals {
        Principals {
            config: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }

    fn add(&mut self, name: &str, scopes: &[Scope], groups: &[&str], purpose: Option<&str>) {
        let (token, hash) = tokens::generate().expect("randomness");
        self.config.push(PrincipalConfig {
            name: name.into(),
            department: Some(format!("dept_{}", name.replace(['-', ':'], "_"))),
            scopes: scopes.iter().map(|s| s.name().to_string()).collect(),
            field_groups: groups.iter().map(|g| g.to_string()).collect(),
            purpose: purpose.map(String::from),
            token_sha256: vec![hash],
        });
        self.tokens.insert(name.into(), token);
    }

    fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}

async fn channel(app: &TestApp) -> GrpcChannel {
    Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[test]
fn every_rpc_has_an_entry_in_the_access_table() {
    let rpcs = every_rpc();
    assert!(rpcs.len() >= 21, "found only {} RPCs", rpcs.len());
    for (path, _) in &rpcs {
        assert!(
            matches!(required_access(path), Some(Access::Scope(_))),
            "{path} has no scope entry: add it to auth::required_access"
        );
    }
    assert_eq!(
        required_access("/customer_profile.v1.ProfileService/NoSuchMethod"),
        None
    );
    assert_eq!(
        required_access("/grpc.health.v1.Health/Check"),
        Some(Access::Public)
    );
}

#[tokio::test]
async fn authorisation_matrix_over_every_rpc() {
    let mut ps = Principals::new();
    for s in Scope::ALL {
        ps.add(&format!("only-{}", s.name()), &[s], &["*"], None);
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|x| *x != s).collect();
        ps.add(&format!("all-but-{}", s.name()), &others, &["*"], None);
    }
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    for (path, streaming) in every_rpc() {
        let scope = scope_of(&path);
        assert_eq!(
            call(&ch, &path, streaming, None, Vec::new()).await,
            Code::Unauthenticated,
            "{path} without credentials"
        );
        assert_eq!(
            call(&ch, &path, streaming, Some("cpt_not-a-token"), Vec::new()).await,
            Code::Unauthenticated,
            "{path} with an unknown token"
        );
        let wrong = ps.token(&format!("all-but-{}", scope.name())).to_string();
        assert_eq!(
            call(&ch, &path, streaming, Some(&wrong), Vec::new()).await,
            Code::PermissionDenied,
            "{path} without {}",
            scope.name()
        );
        // With the scope the request reaches the handler: an empty request is then judged on
        // its content (INVALID_ARGUMENT for most), never refused by the auth layer.
        let right = ps.token(&format!("only-{}", scope.name())).to_string();
        let code = call(&ch, &path, streaming, Some(&right), Vec::new()).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{path} with {}: {code:?}",
            scope.name()
        );
    }
    // Health stays public (probes); an unknown method is refused for everyone.
    let health = pb_health_check(&ch).await;
    assert_eq!(health, Code::Ok);
    let admin = ps.token("only-profile:read").to_string();
    assert_eq!(
        call(
            &ch,
            "/customer_profile.v1.ProfileService/DropEverything",
            false,
            Some(&admin),
            Vec::new()
        )
        .await,
        Code::PermissionDenied
    );
}

async fn pb_health_check(ch: &GrpcChannel) -> Code {
    let body = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }
    .encode_to_vec();
    call(ch, "/grpc.health.v1.Health/Check", false, None, body).await
}

fn resolve_body(email_value: &str) -> Vec<u8> {
    pb::ResolveRequest {
        identifiers: vec![email(email_value)],
        create_if_missing: true,
        source: "test".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn right_scope_is_ok_and_a_token_authenticates_only_its_principal() {
    let mut ps = Principals::new();
    ps.add("resolver", &[Scope::IdentityResolve], &["*"], None);
    ps.add("reader", &[Scope::ProfileRead], &["*"], None);
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    let resolve = "/customer_profile.v1.IdentityService/Resolve";
    let get = "/customer_profile.v1.ProfileService/GetProfile";
    assert_eq!(
        call(
            &ch,
            resolve,
            false,
            Some(ps.token("resolver")),
            resolve_body("a@auth.example")
        )
        .await,
        Code::Ok
    );
    let get_body = pb::GetProfileRequest {
        profile: Some(by_ident(email("a@auth.example"))),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        call(&ch, get, false, Some(ps.token("reader")), get_body.clone()).await,
        Code::Ok
    );
    // Each token is its own principal: the reader cannot resolve, the resolver cannot read.
    assert_eq!(
        call(
            &ch,
            resolve,
            false,
            Some(ps.token("reader")),
            resolve_body("b@auth.example")
        )
        .await,
        Code::PermissionDenied
    );
    assert_eq!(
        call(
            &ch,
            get,
            false,
            Some(ps.token("resolver")),
            get_body.clone()
        )
        .await,
        Code::PermissionDenied
    );
    // A token that differs in one character, or the hash itself, authenticates nothing.
    let t = ps.token("reader");
    let mut altered = t.to_string();
    altered.pop();
    altered.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        call(&ch, get, false, Some(&altered), get_body.clone()).await,
        Code::Unauthenticated
    );
    let hash = &ps.config[1].token_sha256[0];
    assert_eq!(
        call(&ch, get, false, Some(hash), get_body).await,
        Code::Unauthenticated
    );
}
