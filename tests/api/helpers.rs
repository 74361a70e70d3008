//! The test harness: a server per test (own port, own temporary data directory, own manual
//! clock), connected clients, and small builders and assertions shared by every module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use customer_profile::domain::time::{ManualClock, Timestamp};
use customer_profile::server::config::Config;
use customer_profile::server::startup::{Application, RunningServer};
use customer_profile::service::pb;
use pb::identity_service_client::IdentityServiceClient;
use pb::interaction_service_client::InteractionServiceClient;
use pb::profile_service_client::ProfileServiceClient;
use tempfile::TempDir;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

/// 2026-11-23T10:00:00Z, in microseconds since the epoch: where every test's clock starts.
pub const START: Timestamp = Timestamp(1_795_428_000_000_000);

/// How long one stream read may take before the test gives up (guards against hangs only;
/// nothing asserts on timing).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

type Configure = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// One running server and clients connected to it.
pub struct TestApp {
    /// The server's clock; clones share its time.
    pub clock: ManualClock,
    /// Where the server listens.
    pub addr: SocketAddr,
    pub identity: IdentityServiceClient<GrpcChannel>,
    pub profiles: ProfileServiceClient<GrpcChannel>,
    pub interactions: InteractionServiceClient<GrpcChannel>,
    server: Option<RunningServer>,
    configure: Configure,
    // Last, so the directory outlives the server.
    dir: TempDir,
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A loopback port free at the moment of asking, for a server the test starts as a process
/// (another test may still take it first; the crash harness retries on a bind failure).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A value unique within this test process (`prefix-<n>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

impl TestApp {
    /// A server with the default configuration.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose default configuration `configure` adjusts (listen address and data
    /// directory are set by the harness).
    pub async fn spawn_with(configure: impl Fn(&mut Config) + Send + Sync + 'static) -> TestApp {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let clock = ManualClock::new(START);
        let configure: Configure = Arc::new(configure);
        let (server, addr) = start(&dir, &clock, &configure).await;
        let (identity, profiles, interactions) = connect(addr).await;
        TestApp {
            clock,
            addr,
            identity,
            profiles,
            interactions,
            server: Some(server),
            configure,
            dir,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data directory and clock.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (server, addr) = start(&self.dir, &self.clock, &self.configure).await;
        let (identity, profiles, interactions) = connect(addr).await;
        self.server = Some(server);
        self.addr = addr;
        self.identity = identity;
        self.profiles = profiles;
        self.interactions = interactions;
    }

    /// Stops the server gracefully (idempotent).
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("graceful stop");
        }
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .and_then(|s| s.metrics_addr())
            .expect("metrics enabled")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's current time.
    pub fn now(&self) -> Timestamp {
        current(&self.clock)
    }

    /// Moves the clock one second forward (makes creation order unambiguous).
    pub fn tick(&self) {
        self.clock.advance_secs(1);
    }

    // ---------------------------------------------------------------- identity

    pub async fn try_resolve(
        &self,
        ids: Vec<pb::Identifier>,
        create: bool,
        merge: bool,
    ) -> Result<pb::ResolveResponse, Status> {
        self.identity
            .clone()
            .resolve(pb::ResolveRequest {
                identifiers: ids,
                create_if_missing: create,
                allow_merge: merge,
                source: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn resolve(
        &self,
        ids: Vec<pb::Identifier>,
        create: bool,
        merge: bool,
    ) -> pb::ResolveResponse {
        self.try_resolve(ids, create, merge).await.expect("Resolve")
    }

    /// Creates a profile holding `ids` (asserting CREATED) and moves the clock one second on,
    /// so profiles created one after the other have distinct ages.
    pub async fn create(&self, ids: Vec<pb::Identifier>) -> String {
        let r = self.resolve(ids, true, false).await;
        assert_eq!(
            outcome(&r),
            pb::ResolveOutcome::Created,
            "expected CREATED: {r:?}"
        );
        assert!(!r.profile_id.is_empty());
        self.tick();
        r.profile_id
    }

    pub async fn lookup(&self, ids: Vec<pb::Identifier>) -> Vec<pb::IdentifierLookup> {
        let n = ids.len();
        let r = self
            .identity
            .clone()
            .lookup_profile_ids(pb::LookupProfileIdsRequest { identifiers: ids })
            .await
            .expect("LookupProfileIds")
            .into_inner();
        assert_eq!(r.results.len(), n, "one lookup result per identifier");
        r.results
    }

    /// The live profile holding `id`, if any.
    pub async fn owner(&self, id: pb::Identifier) -> Option<String> {
        let r = self.lookup(vec![id]).await.remove(0);
        assert_eq!(
            r.found,
            !r.profile_id.is_empty(),
            "found agrees with profile_id: {r:?}"
        );
        r.found.then_some(r.profile_id)
    }

    pub async fn try_link(
        &self,
        profile: pb::ProfileRef,
        id: pb::Identifier,
    ) -> Result<pb::LinkIdentifierResponse, Status> {
        self.identity
            .clone()
            .link_identifier(pb::LinkIdentifierRequest {
                profile: Some(profile),
                identifier: Some(id),
                source: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn try_merge(
        &self,
        refs: Vec<pb::ProfileRef>,
    ) -> Result<pb::MergeProfilesResponse, Status> {
        self.identity
            .clone()
            .merge_profiles(pb::MergeProfilesRequest {
                profiles: refs,
                reason: "same customer".into(),
                source: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn merge(&self, refs: Vec<pb::ProfileRef>) -> pb::MergeProfilesResponse {
        self.try_merge(refs).await.expect("MergeProfiles")
    }

    pub async fn try_unmerge(&self, merge_id: &str) -> Result<pb::UnmergeProfilesResponse, Status> {
        self.identity
            .clone()
            .unmerge_profiles(pb::UnmergeProfilesRequest {
                merge_id: merge_id.into(),
                reason: "not the same customer".into(),
                source: "test".into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn unmerge(&self, merge_id: &str) -> pb::UnmergeProfilesResponse {
        self.try_unmerge(merge_id).await.expect("UnmergeProfiles")
    }

    pub async fn list_merges(&self, profile: pb::ProfileRef) -> Vec<pb::Merge> {
        self.identity
            .clone()
            .list_merges(pb::ListMergesRequest {
                profile: Some(profile),
            })
            .await
            .expect("ListMerges")
            .into_inner()
            .merges
    }

    // ---------------------------------------------------------------- profiles

    pub async fn try_get_masked(
        &self,
        profile: pb::ProfileRef,
        paths: &[&str],
        min_version: u64,
    ) -> Result<pb::Profile, Status> {
        self.profiles
            .clone()
            .get_profile(pb::GetProfileRequest {
                profile: Some(profile),
                read_mask: mask(paths),
                min_version,
            })
            .await
            .map(|r| {
                r.into_inner()
                    .profile
                    .expect("GetProfileResponse.profile is set")
            })
    }

    pub async fn try_get(&self, profile: pb::ProfileRef) -> Result<pb::Profile, Status> {
        self.try_get_masked(profile, &[], 0).await
    }

    pub async fn get(&self, profile: pb::ProfileRef) -> pb::Profile {
        self.try_get(profile).await.expect("GetProfile")
    }

    pub async fn try_update(
        &self,
        req: pb::UpdateProfileRequest,
    ) -> Result<pb::UpdateProfileResponse, Status> {
        self.profiles
            .clone()
            .update_profile(req)
            .await
            .map(|r| r.into_inner())
    }

    /// Sets the attributes named by `paths` (`attributes.<field>` / `attributes.custom.<k>`)
    /// to their values in `attrs` (absent = clear), observed at `observed_at`.
    pub async fn update(
        &self,
        profile: pb::ProfileRef,
        attrs: pb::ProfileAttributes,
        paths: &[&str],
        observed_at: Timestamp,
    ) -> pb::UpdateProfileResponse {
        self.try_update(update_request(profile, attrs, paths, observed_at))
            .await
            .expect("UpdateProfile")
    }

    pub async fn history(&self, profile: pb::ProfileRef, path: &str) -> Vec<pb::AttributeChange> {
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..1_000 {
            let r = self
                .profiles
                .clone()
                .get_profile_history(pb::GetProfileHistoryRequest {
                    profile: Some(profile.clone()),
                    path: path.into(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("GetProfileHistory")
                .into_inner();
            out.extend(r.changes);
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
        panic!("GetProfileHistory did not end after 1000 pages");
    }

    // ---------------------------------------------------------------- interactions

    pub async fn try_record(
        &self,
        profile: pb::ProfileRef,
        interaction: pb::Interaction,
        request_id: &str,
    ) -> Result<pb::RecordInteractionResponse, Status> {
        self.interactions
            .clone()
            .record_interaction(pb::RecordInteractionRequest {
                profile: Some(profile),
                interaction: Some(interaction),
                request_id: request_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn record(
        &self,
        profile: pb::ProfileRef,
        interaction: pb::Interaction,
    ) -> pb::RecordInteractionResponse {
        self.try_record(profile, interaction, "")
            .await
            .expect("RecordInteraction")
    }

    /// Every interaction ListInteractions returns for `req`'s filters, following page tokens.
    pub async fn list_all(&self, mut req: pb::ListInteractionsRequest) -> Vec<pb::Interaction> {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let r = self
                .interactions
                .clone()
                .list_interactions(req.clone())
                .await
                .expect("ListInteractions")
                .into_inner();
            if req.page_size > 0 {
                assert!(
                    r.interactions.len() <= req.page_size as usize,
                    "page larger than page_size"
                );
            }
            out.extend(r.interactions);
            if r.next_page_token.is_empty() {
                return out;
            }
            req.page_token = r.next_page_token;
        }
        panic!("ListInteractions did not end after 10000 pages");
    }

    /// Ids of every interaction of `profile`, in the order listed.
    pub async fn interaction_ids(&self, profile: pb::ProfileRef) -> Vec<String> {
        self.list_all(list_request(profile, 500))
            .await
            .into_iter()
            .map(|i| i.interaction_id)
            .collect()
    }

    // ---------------------------------------------------------------- change feed

    pub async fn try_watch(
        &self,
        from: u64,
    ) -> Result<Streaming<pb::WatchChangesResponse>, Status> {
        self.profiles
            .clone()
            .watch_changes(pb::WatchChangesRequest {
                from_sequence: from,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn watch(&self, from: u64) -> Streaming<pb::WatchChangesResponse> {
        self.try_watch(from).await.expect("WatchChanges")
    }

    /// Creates a marker profile and returns the sequence of its creation event: every change
    /// made before the call has a smaller sequence.
    pub async fn watermark(&mut self) -> u64 {
        let marker = self.new_marker().await;
        let mut stream = self.watch(0).await;
        for _ in 0..10_000_000u64 {
            let e = next_event(&mut stream).await;
            if e.profile_id == marker && e.kind == pb::ChangeKind::ProfileCreated as i32 {
                return e.sequence;
            }
        }
        panic!("marker event not found");
    }

    /// Asserts that nothing was written since `watermark()` returned `mark`: a new marker's
    /// creation is the very next event.
    pub async fn assert_no_changes_since(&mut self, mark: u64) {
        let marker = self.new_marker().await;
        let mut stream = self.watch(mark).await;
        let e = next_event(&mut stream).await;
        assert_eq!(
            (e.sequence, e.kind, e.profile_id.as_str()),
            (
                mark + 1,
                pb::ChangeKind::ProfileCreated as i32,
                marker.as_str()
            ),
            "a change was recorded by a request that should have written nothing: {e:?}"
        );
    }

    async fn new_marker(&mut self) -> String {
        let r = self
            .resolve(vec![device(&unique("marker"))], true, false)
            .await;
        assert_eq!(outcome(&r), pb::ResolveOutcome::Created);
        r.profile_id
    }
}

fn current(clock: &ManualClock) -> Timestamp {
    use customer_profile::domain::time::Clock;
    clock.now()
}

async fn start(
    dir: &TempDir,
    clock: &ManualClock,
    configure: &Configure,
) -> (RunningServer, SocketAddr) {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("socket address"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.metrics.listen = "127.0.0.1:0".parse().expect("socket address");
    // Each test's server shares one thread with its test, among many on a busy machine: a
    // stalled thread there is not overload, so queue-time shedding only acts on a long stall
    // (tests of it set their own values).
    config.limits.queue_target_ms = 5_000;
    config.limits.queue_interval_ms = 10_000;
    configure(&mut config);
    let app = Application::build(config, Arc::new(clock.clone()))
        .await
        .expect("Application::build");
    let addr = app.local_addr();
    (app.spawn(), addr)
}

async fn connect(
    addr: SocketAddr,
) -> (
    IdentityServiceClient<GrpcChannel>,
    ProfileServiceClient<GrpcChannel>,
    InteractionServiceClient<GrpcChannel>,
) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the test server");
    (
        IdentityServiceClient::new(channel.clone()),
        ProfileServiceClient::new(channel.clone()),
        InteractionServiceClient::new(channel),
    )
}

/// The next change event of a stream; fails the test if the stream ends, errs or stalls.
pub async fn next_event(stream: &mut Streaming<pb::WatchChangesResponse>) -> pb::ChangeEvent {
    match tokio::time::timeout(STREAM_TIMEOUT, stream.message()).await {
        Err(_) => panic!("no change event within {STREAM_TIMEOUT:?}"),
        Ok(Err(status)) => panic!("change stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("change stream ended"),
        Ok(Ok(Some(m))) => m.event.expect("WatchChangesResponse.event is set"),
    }
}

/// The next `n` events of a stream.
pub async fn next_events(
    stream: &mut Streaming<pb::WatchChangesResponse>,
    n: usize,
) -> Vec<pb::ChangeEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(stream).await);
    }
    out
}

// -------------------------------------------------------------------- builders

pub fn ident(kind: pb::IdentifierKind, value: &str) -> pb::Identifier {
    pb::Identifier {
        kind: kind as i32,
        value: value.into(),
        namespace: String::new(),
    }
}

pub fn email(v: &str) -> pb::Identifier {
    ident(pb::IdentifierKind::Email, v)
}

pub fn phone(v: &str) -> pb::Identifier {
    ident(pb::IdentifierKind::Phone, v)
}

pub fn customer_number(v: &str) -> pb::Identifier {
    ident(pb::IdentifierKind::CustomerNumber, v)
}

pub fn loyalty_card(v: &str) -> pb::Identifier {
    ident(pb::IdentifierKind::LoyaltyCard, v)
}

pub fn device(v: &str) -> pb::Identifier {
    ident(pb::IdentifierKind::DeviceId, v)
}

pub fn external(namespace: &str, v: &str) -> pb::Identifier {
    pb::Identifier {
        kind: pb::IdentifierKind::External as i32,
        value: v.into(),
        namespace: namespace.into(),
    }
}

/// A fresh, unique email address.
pub fn new_email() -> pb::Identifier {
    email(&format!("{}@example.com", unique("user")))
}

/// A fresh, unique device id.
pub fn new_device() -> pb::Identifier {
    device(&unique("device"))
}

pub fn by_id(id: &str) -> pb::ProfileRef {
    pb::ProfileRef {
        r#ref: Some(pb::profile_ref::Ref::ProfileId(id.into())),
    }
}

pub fn by_ident(id: pb::Identifier) -> pb::ProfileRef {
    pb::ProfileRef {
        r#ref: Some(pb::profile_ref::Ref::Identifier(id)),
    }
}

pub fn ts(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.to_parts();
    prost_types::Timestamp { seconds, nanos }
}

pub fn from_ts(t: &prost_types::Timestamp) -> Timestamp {
    Timestamp::from_parts(t.seconds, t.nanos).expect("timestamp in range")
}

pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    (!paths.is_empty()).then(|| prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

pub fn update_request(
    profile: pb::ProfileRef,
    attrs: pb::ProfileAttributes,
    paths: &[&str],
    observed_at: Timestamp,
) -> pb::UpdateProfileRequest {
    pb::UpdateProfileRequest {
        profile: Some(profile),
        attributes: Some(attrs),
        update_mask: mask(paths),
        source: "test".into(),
        observed_at: Some(ts(observed_at)),
        expected_version: 0,
        request_id: String::new(),
    }
}

pub fn string_value(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s.into())),
    }
}

/// A valid interaction.
pub fn interaction(
    channel: pb::Channel,
    direction: pb::Direction,
    department: &str,
    kind: &str,
) -> pb::Interaction {
    pb::Interaction {
        channel: channel as i32,
        direction: direction as i32,
        department: department.into(),
        r#type: kind.into(),
        summary: "test".into(),
        ..Default::default()
    }
}

/// A valid inbound web interaction that occurred at `t`.
pub fn interaction_at(t: Timestamp) -> pb::Interaction {
    pb::Interaction {
        occurred_at: Some(ts(t)),
        ..interaction(
            pb::Channel::Web,
            pb::Direction::Inbound,
            "customer_service",
            "support_call",
        )
    }
}

pub fn list_request(profile: pb::ProfileRef, page_size: i32) -> pb::ListInteractionsRequest {
    pb::ListInteractionsRequest {
        profile: Some(profile),
        page_size,
        ..Default::default()
    }
}

// -------------------------------------------------------------------- reading answers

pub fn outcome(r: &pb::ResolveResponse) -> pb::ResolveOutcome {
    pb::ResolveOutcome::try_from(r.outcome).expect("known outcome")
}

/// `(kind, value, namespace)` of each identifier, as a set.
pub fn ident_set<'a>(
    ids: impl IntoIterator<Item = &'a pb::Identifier>,
) -> BTreeSet<(i32, String, String)> {
    ids.into_iter()
        .map(|i| (i.kind, i.value.clone(), i.namespace.clone()))
        .collect()
}

/// The identifiers a profile view shows, as a set.
pub fn profile_idents(p: &pb::Profile) -> BTreeSet<(i32, String, String)> {
    ident_set(
        p.identifiers
            .iter()
            .map(|l| l.identifier.as_ref().expect("LinkedIdentifier.identifier")),
    )
}

pub fn merged_set(p: &pb::Profile) -> BTreeSet<String> {
    p.merged_ids.iter().cloned().collect()
}

pub fn attrs(p: &pb::Profile) -> pb::ProfileAttributes {
    p.attributes.clone().unwrap_or_default()
}

pub fn custom_string(p: &pb::Profile, key: &str) -> Option<String> {
    match attrs(p).custom.get(key).and_then(|v| v.kind.clone()) {
        Some(pb::value::Kind::StringValue(s)) => Some(s),
        None => None,
        Some(other) => panic!("custom.{key} is not a string: {other:?}"),
    }
}

/// Whether a path list (applied_paths, superseded_paths) names the attribute `field`
/// (`given_name`, `custom.tier`), written with or without the `attributes.` prefix.
pub fn names_path(paths: &[String], field: &str) -> bool {
    paths
        .iter()
        .any(|p| p == field || *p == format!("attributes.{field}"))
}

/// The google.rpc.ErrorInfo reason of a status.
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|e| e.reason)
}

/// The fields named by the google.rpc.BadRequest of a status.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// INVALID_ARGUMENT with a field violation naming exactly `field`.
pub fn assert_invalid(status: &Status, field: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "expected INVALID_ARGUMENT naming {field}: {status:?}"
    );
    let fields = violated_fields(status);
    assert!(
        fields.iter().any(|f| f == field),
        "expected a field violation for {field:?}, got {fields:?} ({status:?})"
    );
}

/// INVALID_ARGUMENT with a field violation whose path starts with `prefix`.
pub fn assert_invalid_prefix(status: &Status, prefix: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "expected INVALID_ARGUMENT under {prefix}: {status:?}"
    );
    let fields = violated_fields(status);
    assert!(
        fields.iter().any(|f| f.starts_with(prefix)),
        "expected a field violation under {prefix:?}, got {fields:?} ({status:?})"
    );
}

/// FAILED_PRECONDITION with ErrorInfo reason `reason`.
pub fn assert_precondition(status: &Status, reason: &str) {
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "expected FAILED_PRECONDITION {reason}: {status:?}"
    );
    assert_eq!(
        error_reason(status).as_deref(),
        Some(reason),
        "ErrorInfo reason of {status:?}"
    );
}

/// `GET /metrics` from `addr`: the sample and comment lines.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    // Chunked transfer encoding is possible; keep only sample and comment lines.
    body.lines()
        .filter(|l| l.starts_with('#') || l.contains(' '))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses the exposition format strictly: `# HELP|TYPE ...` comments and
/// `name{label="value",...} number` samples. Returns sample → value.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        out.insert(series.to_string(), v);
    }
    out
}
