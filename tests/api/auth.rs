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
pub(crate) async fn call(
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
            client_cert_names: vec![],
        });
        self.tokens.insert(name.into(), token);
    }

    fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }
}

pub(crate) async fn channel(app: &TestApp) -> GrpcChannel {
    Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[test]
fn every_rpc_has_an_entry_in_the_access_table() {
    let rpcs = every_rpc();
    assert!(rpcs.len() >= 23, "found only {} RPCs", rpcs.len());
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
    ps.add("admin", &Scope::ALL, &["*"], None);
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    let fx = fixtures(&mut clients(&ch, ps.token("admin"))).await;
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
        // With exactly that scope, a valid request succeeds.
        let right = ps.token(&format!("only-{}", scope.name())).to_string();
        let code = call(&ch, &path, streaming, Some(&right), valid_body(&path, &fx)).await;
        assert_eq!(code, Code::Ok, "{path} with only {}", scope.name());
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

/// Profiles and a merge prepared by an admin, so every RPC has a valid request.
struct Fixtures {
    p1: String,
    p2: String,
    p3: String,
    erase_me: String,
    merge_to_undo: String,
}

async fn fixtures(admin: &mut Clients) -> Fixtures {
    let p1 = create(admin, "m1@auth.example").await;
    let p2 = create(admin, "m2@auth.example").await;
    let p3 = create(admin, "m3@auth.example").await;
    let erase_me = create(admin, "m4@auth.example").await;
    let a = create(admin, "m5@auth.example").await;
    let b = create(admin, "m6@auth.example").await;
    admin
        .identity
        .link_identifier(pb::LinkIdentifierRequest {
            profile: Some(by_id(&p1)),
            identifier: Some(loyalty_card("LC-UNLINK-1")),
            source: "test".into(),
            request_id: String::new(),
        })
        .await
        .expect("link");
    let merged = admin
        .identity
        .merge_profiles(pb::MergeProfilesRequest {
            profiles: vec![by_id(&a), by_id(&b)],
            reason: "test".into(),
            source: "test".into(),
            request_id: String::new(),
        })
        .await
        .expect("merge")
        .into_inner();
    Fixtures {
        p1,
        p2,
        p3,
        erase_me,
        merge_to_undo: merged.merges[0].merge_id.clone(),
    }
}

/// A valid request for each RPC of the contract.
fn valid_body(path: &str, fx: &Fixtures) -> Vec<u8> {
    let p1 = || Some(by_id(&fx.p1));
    let method = path.rsplit('/').next().expect("method");
    match method {
        "Resolve" => resolve_body("matrix.new@auth.example"),
        "LookupProfileIds" => pb::LookupProfileIdsRequest {
            identifiers: vec![email("m1@auth.example")],
        }
        .encode_to_vec(),
        "LinkIdentifier" => pb::LinkIdentifierRequest {
            profile: p1(),
            identifier: Some(phone("+447700900444")),
            source: "test".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "UnlinkIdentifier" => pb::UnlinkIdentifierRequest {
            profile: p1(),
            identifier: Some(loyalty_card("LC-UNLINK-1")),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "MergeProfiles" => pb::MergeProfilesRequest {
            profiles: vec![by_id(&fx.p2), by_id(&fx.p3)],
            reason: "test".into(),
            source: "test".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "UnmergeProfiles" => pb::UnmergeProfilesRequest {
            merge_id: fx.merge_to_undo.clone(),
            reason: "test".into(),
            source: "test".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "ListMerges" => pb::ListMergesRequest { profile: p1() }.encode_to_vec(),
        "GetProfile" => pb::GetProfileRequest {
            profile: p1(),
            ..Default::default()
        }
        .encode_to_vec(),
        "BatchGetProfiles" => pb::BatchGetProfilesRequest {
            profiles: vec![by_id(&fx.p1)],
            read_mask: None,
        }
        .encode_to_vec(),
        "UpdateProfile" => {
            let mut r = update_request(
                by_id(&fx.p1),
                pb::ProfileAttributes {
                    city: Some("York".into()),
                    ..Default::default()
                },
                &["attributes.city"],
                START,
            );
            r.source = "test".into();
            r.encode_to_vec()
        }
        "GetProfileHistory" => pb::GetProfileHistoryRequest {
            profile: p1(),
            ..Default::default()
        }
        .encode_to_vec(),
        "WatchChanges" => pb::WatchChangesRequest { from_sequence: 0 }.encode_to_vec(),
        "SearchProfiles" => pb::SearchProfilesRequest::default().encode_to_vec(),
        "CountProfiles" => pb::CountProfilesRequest::default().encode_to_vec(),
        "RecordInteraction" => pb::RecordInteractionRequest {
            profile: p1(),
            interaction: Some(interaction(
                pb::Channel::Web,
                pb::Direction::Inbound,
                "web",
                "visit",
            )),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "RecordInteractions" => pb::RecordInteractionsRequest {
            requests: vec![pb::RecordInteractionRequest {
                profile: p1(),
                interaction: Some(interaction(
                    pb::Channel::Web,
                    pb::Direction::Inbound,
                    "web",
                    "visit",
                )),
                request_id: String::new(),
            }],
        }
        .encode_to_vec(),
        "ListInteractions" => pb::ListInteractionsRequest {
            profile: p1(),
            ..Default::default()
        }
        .encode_to_vec(),
        "RecordConsent" => pb::RecordConsentRequest {
            profile: p1(),
            consent: Some(pb::ConsentRecord {
                purpose: pb::Purpose::Marketing as i32,
                channel: pb::Channel::Email as i32,
                decision: pb::ConsentDecision::Granted as i32,
                source: "test".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "GetConsents" => pb::GetConsentsRequest { profile: p1() }.encode_to_vec(),
        "SetPreferences" => pb::SetPreferencesRequest {
            profile: p1(),
            preferences: Some(pb::Preferences {
                language: "en-GB".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "CheckContact" => pb::CheckContactRequest {
            profile: p1(),
            channel: pb::Channel::Email as i32,
            purpose: pb::Purpose::Service as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        "ExportCustomer" => pb::ExportCustomerRequest { profile: p1() }.encode_to_vec(),
        "EraseCustomer" => pb::EraseCustomerRequest {
            profile: Some(by_id(&fx.erase_me)),
            reason: "test".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        "Backup" => pb::BackupRequest {}.encode_to_vec(),
        other => panic!("no valid request for {other}: add one here"),
    }
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

/// Adds a bearer token to every call.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

type Authed = tonic::service::interceptor::InterceptedService<GrpcChannel, Bearer>;

struct Clients {
    identity: pb::identity_service_client::IdentityServiceClient<Authed>,
    profiles: pb::profile_service_client::ProfileServiceClient<Authed>,
    interactions: pb::interaction_service_client::InteractionServiceClient<Authed>,
    consent: pb::consent_service_client::ConsentServiceClient<Authed>,
}

fn clients(ch: &GrpcChannel, token: &str) -> Clients {
    let b = Bearer(MetadataValue::try_from(format!("Bearer {token}")).expect("header"));
    Clients {
        identity: pb::identity_service_client::IdentityServiceClient::with_interceptor(
            ch.clone(),
            b.clone(),
        ),
        profiles: pb::profile_service_client::ProfileServiceClient::with_interceptor(
            ch.clone(),
            b.clone(),
        ),
        interactions: pb::interaction_service_client::InteractionServiceClient::with_interceptor(
            ch.clone(),
            b.clone(),
        ),
        consent: pb::consent_service_client::ConsentServiceClient::with_interceptor(ch.clone(), b),
    }
}

async fn create(c: &mut Clients, address: &str) -> String {
    c.identity
        .resolve(pb::ResolveRequest {
            identifiers: vec![email(address)],
            create_if_missing: true,
            source: "test".into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner()
        .profile_id
}

fn credit_and_city(
    profile: &str,
    at: customer_profile::domain::time::Timestamp,
) -> pb::UpdateProfileRequest {
    let mut custom = std::collections::HashMap::new();
    custom.insert(
        "credit_limit".to_string(),
        pb::Value {
            kind: Some(pb::value::Kind::IntValue(5000)),
        },
    );
    let mut req = update_request(
        by_id(profile),
        pb::ProfileAttributes {
            city: Some("Leeds".into()),
            custom,
            ..Default::default()
        },
        &["attributes.city", "attributes.custom.credit_limit"],
        at,
    );
    req.source = "crm".into();
    req
}

#[tokio::test]
async fn finance_fields_never_reach_a_principal_without_the_finance_group() {
    let mut ps = Principals::new();
    ps.add("admin", &Scope::ALL, &["*"], None);
    ps.add(
        "service-desk",
        &[
            Scope::ProfileRead,
            Scope::ProfileWrite,
            Scope::SegmentRead,
            Scope::ChangesRead,
            Scope::InteractionRead,
        ],
        &["identity", "profile", "activity", "consent"],
        None,
    );
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    let mut admin = clients(&ch, ps.token("admin"));
    let mut desk = clients(&ch, ps.token("service-desk"));
    let p = create(&mut admin, "fin@auth.example").await;
    admin
        .profiles
        .update_profile(credit_and_city(&p, app.now()))
        .await
        .expect("update");
    admin
        .interactions
        .record_interaction(pb::RecordInteractionRequest {
            profile: Some(by_id(&p)),
            interaction: Some(pb::Interaction {
                amount: Some(pb::Money {
                    currency_code: "GBP".into(),
                    units: 12,
                    nanos: 0,
                }),
                ..interaction(
                    pb::Channel::Store,
                    pb::Direction::Inbound,
                    "stores",
                    "purchase",
                )
            }),
            request_id: String::new(),
        })
        .await
        .expect("purchase");

    // The admin sees the finance attribute and the spend.
    let full = admin
        .profiles
        .get_profile(pb::GetProfileRequest {
            profile: Some(by_id(&p)),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .profile
        .expect("profile");
    let attrs = full.attributes.clone().expect("attributes");
    assert!(attrs.custom.contains_key("credit_limit"));
    assert!(
        !full
            .summary
            .clone()
            .expect("summary")
            .lifetime_spend
            .is_empty()
    );

    // The desk never does, whatever its mask asks for.
    for paths in [
        vec![],
        vec!["attributes.custom.credit_limit"],
        vec!["attributes", "summary"],
        vec!["attributes.custom"],
    ] {
        let got = desk
            .profiles
            .get_profile(pb::GetProfileRequest {
                profile: Some(by_id(&p)),
                read_mask: mask(&paths),
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner()
            .profile
            .expect("profile");
        let a = got.attributes.clone().unwrap_or_default();
        assert!(!a.custom.contains_key("credit_limit"), "{paths:?}: {a:?}");
        assert!(
            !got.attribute_provenance.contains_key("custom.credit_limit"),
            "{paths:?}"
        );
        if let Some(s) = &got.summary {
            assert!(s.lifetime_spend.is_empty(), "{paths:?}: spend is finance");
        }
    }
    let batch = desk
        .profiles
        .batch_get_profiles(pb::BatchGetProfilesRequest {
            profiles: vec![by_id(&p)],
            read_mask: None,
        })
        .await
        .expect("batch")
        .into_inner();
    let text = format!("{batch:?}");
    assert!(!text.contains("credit_limit"), "{text}");
    assert!(
        text.contains("Leeds"),
        "non-finance attributes stay visible"
    );

    // Searches: results carry no finance attributes, and filtering on one is refused.
    let city = pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: "city".into(),
            any_of: vec![pb::Value {
                kind: Some(pb::value::Kind::StringValue("leeds".into())),
            }],
            ..Default::default()
        })),
    };
    let found = desk
        .profiles
        .search_profiles(pb::SearchProfilesRequest {
            filter: Some(pb::ProfileFilter {
                clauses: vec![city],
            }),
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(found.profiles.len(), 1);
    assert!(!format!("{found:?}").contains("credit_limit"));
    let by_credit = pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: "custom.credit_limit".into(),
            lower: Some(pb::RangeBound {
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::IntValue(1000)),
                }),
                inclusive: true,
            }),
            ..Default::default()
        })),
    };
    let refused = desk
        .profiles
        .count_profiles(pb::CountProfilesRequest {
            filter: Some(pb::ProfileFilter {
                clauses: vec![by_credit],
            }),
        })
        .await
        .expect_err("filtering on finance");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Its own update's reply, the history and the change feed leave the finance path out too.
    let reply = desk
        .profiles
        .update_profile(credit_and_city(&p, app.now()))
        .await
        .expect("update")
        .into_inner();
    assert!(!format!("{:?}", reply.profile).contains("credit_limit"));
    let history = desk
        .profiles
        .get_profile_history(pb::GetProfileHistoryRequest {
            profile: Some(by_id(&p)),
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    assert!(!history.changes.is_empty());
    assert!(
        history
            .changes
            .iter()
            .all(|c| c.path != "custom.credit_limit")
    );
    let mut stream = desk
        .profiles
        .watch_changes(pb::WatchChangesRequest { from_sequence: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut seen_update = false;
    for _ in 0..4 {
        let e = tokio::time::timeout(STREAM_TIMEOUT, stream.message())
            .await
            .expect("event")
            .expect("ok")
            .expect("some")
            .event
            .expect("event");
        assert!(
            e.changed_paths.iter().all(|p| !p.contains("credit_limit")),
            "{e:?}"
        );
        seen_update |= e.changed_paths.iter().any(|p| p == "attributes.city");
    }
    assert!(seen_update);
    // Interactions keep their amount hidden.
    let listed = desk
        .interactions
        .list_interactions(pb::ListInteractionsRequest {
            profile: Some(by_id(&p)),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.interactions.iter().all(|i| i.amount.is_none()));
}

#[tokio::test]
async fn a_marketing_bound_principal_sees_only_consenting_customers() {
    let mut ps = Principals::new();
    ps.add("admin", &Scope::ALL, &["*"], None);
    ps.add(
        "campaigns",
        &[Scope::ProfileRead, Scope::SegmentRead],
        &["*"],
        Some("MARKETING"),
    );
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    let mut admin = clients(&ch, ps.token("admin"));
    let mut campaigns = clients(&ch, ps.token("campaigns"));
    let p = create(&mut admin, "mkt@auth.example").await;
    let other = create(&mut admin, "other@auth.example").await;
    let get = |id: String| pb::GetProfileRequest {
        profile: Some(by_id(&id)),
        ..Default::default()
    };

    let err = campaigns
        .profiles
        .get_profile(get(p.clone()))
        .await
        .expect_err("no grant yet");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&err).as_deref(),
        Some("CONSENT_REQUIRED"),
        "{err:?}"
    );
    let everyone = pb::SearchProfilesRequest {
        filter: Some(pb::ProfileFilter { clauses: vec![] }),
        ..Default::default()
    };
    let found = campaigns
        .profiles
        .search_profiles(everyone.clone())
        .await
        .expect("search")
        .into_inner();
    assert!(found.profiles.is_empty(), "{found:?}");
    let count = campaigns
        .profiles
        .count_profiles(pb::CountProfilesRequest { filter: None })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(count.count, 0);

    admin
        .consent
        .record_consent(pb::RecordConsentRequest {
            profile: Some(by_id(&p)),
            consent: Some(pb::ConsentRecord {
                purpose: pb::Purpose::Marketing as i32,
                channel: pb::Channel::Email as i32,
                decision: pb::ConsentDecision::Granted as i32,
                source: "web_form".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("grant");
    let got = campaigns
        .profiles
        .get_profile(get(p.clone()))
        .await
        .expect("granted now")
        .into_inner();
    assert_eq!(got.profile.expect("profile").profile_id, p);
    assert!(
        campaigns
            .profiles
            .get_profile(get(other.clone()))
            .await
            .is_err()
    );
    let found = campaigns
        .profiles
        .search_profiles(everyone)
        .await
        .expect("search")
        .into_inner();
    let ids: Vec<String> = found.profiles.into_iter().map(|x| x.profile_id).collect();
    assert_eq!(ids, vec![p.clone()]);
    let count = campaigns
        .profiles
        .count_profiles(pb::CountProfilesRequest { filter: None })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(count.count, 1);
}

#[tokio::test]
async fn interactions_carry_the_department_of_the_principal() {
    let mut ps = Principals::new();
    ps.add("admin", &Scope::ALL, &["*"], None);
    let config = ps.config.clone();
    let app = TestApp::spawn_with(move |c: &mut Config| c.auth.principals = config.clone()).await;
    let ch = channel(&app).await;
    let mut admin = clients(&ch, ps.token("admin"));
    let p = create(&mut admin, "dept@auth.example").await;
    let recorded = admin
        .interactions
        .record_interaction(pb::RecordInteractionRequest {
            profile: Some(by_id(&p)),
            interaction: Some(interaction(
                pb::Channel::Web,
                pb::Direction::Inbound,
                "pretend_finance",
                "visit",
            )),
            request_id: String::new(),
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!(
        recorded.interaction.expect("interaction").department,
        "dept_admin"
    );
}

#[tokio::test]
async fn a_writer_without_a_department_is_a_configuration_error() {
    let (_, hash) = tokens::generate().expect("randomness");
    let mut config = Config::default();
    config.auth.principals.push(PrincipalConfig {
        name: "writer".into(),
        department: None,
        scopes: vec!["interaction:write".into()],
        field_groups: vec![],
        purpose: None,
        token_sha256: vec![hash],
        client_cert_names: vec![],
    });
    let err = config.validate().expect_err("department required");
    assert!(
        err.to_string().contains("auth.principals[0].department"),
        "{err}"
    );
    config.auth.principals[0].department = Some("stores".into());
    config.auth.principals[0].token_sha256 = vec!["not-a-hash".into()];
    let err = config.validate().expect_err("bad hash");
    assert!(err.to_string().contains("token_sha256[0]"), "{err}");
}

#[test]
fn without_auth_the_binary_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the binary");
    assert!(!out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{text}"
    );
    assert!(
        text.contains("customer-profile token"),
        "says how to configure: {text}"
    );
    assert!(
        !dir.path().join("db").exists(),
        "nothing was opened or written"
    );
}
