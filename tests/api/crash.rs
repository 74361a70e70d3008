//! Crash harness (issue 8, acceptance 1): the real binary is killed with SIGKILL at random
//! moments while six writers drive it over gRPC, then started again on the same data directory.
//! After every restart: the store opens and serves; every acknowledged write is there exactly
//! once; the invariants hold (an identifier belongs to one live profile, summaries equal a
//! recomputation from the interactions, the change feed has no gaps and no repeats); the last
//! acknowledged request of every writer, sent again with its `request_id`, answers as before
//! and writes nothing. One restart in five is itself killed while the store recovers.
//!
//! `CRASH_CYCLES` (default 20) and `CRASH_SEED` (default fixed) are read from the environment;
//! `CRASH_CYCLES=500 cargo test --release --test api crash:: -- --nocapture` is the long run.
//!
//! Every writer owns its profiles (no two writers touch the same one), so each writer's log of
//! acknowledged requests is a sequential history and fully determines what must be stored. A
//! request cut off by the kill may or may not have committed; the writer sends it again after
//! the restart with the same `request_id` (what a real client does), which makes it either
//! way acknowledged, exactly once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use customer_profile::service::pb;
use pb::consent_service_client::ConsentServiceClient;
use pb::contact_service_client::ContactServiceClient;
use pb::identity_service_client::IdentityServiceClient;
use pb::interaction_service_client::InteractionServiceClient;
use pb::profile_service_client::ProfileServiceClient;
use tonic::Status;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{by_id, device, email, free_port, mask};

/// Small deterministic generator (splitmix64): the whole run follows from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn now_ts() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: (d.subsec_micros() * 1000) as i32,
    }
}

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref()
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------- the server

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn spawn(dir: &Path, log: &Path) -> Server {
        let port = free_port();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("server log file");
        let child = Command::new(env!("CARGO_BIN_EXE_customer-profile"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .env("CUSTOMER_PROFILE_METRICS__ENABLED", "false")
            // This harness is about durability: on a loaded CI machine queue-time shedding
            // would refuse the retries it must make after a restart.
            .env("CUSTOMER_PROFILE_LIMITS__QUEUE_TARGET_MS", "60000")
            .env("CUSTOMER_PROFILE_LIMITS__QUEUE_INTERVAL_MS", "60000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the binary");
        Server {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }

    /// SIGKILL, and reap the process.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    /// Waits until health says SERVING; returns a channel to it.
    async fn serving(&mut self, log: &Path) -> GrpcChannel {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server") {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                // The port was free when picked, but a test running alongside may take it
                // before the binary binds it: pick another and start again.
                let bind_failed = format!("binding 127.0.0.1:{}", self.port);
                if tail.contains(&bind_failed) && tail.contains("in use") {
                    let dir = self.dir.clone();
                    *self = Server::spawn(&dir, log);
                    continue;
                }
                panic!("the server exited during start ({status}); its last log lines:\n{tail}");
            }
            assert!(
                Instant::now() < deadline,
                "the store did not reach SERVING within 60 s"
            );
            let ep = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
                .expect("endpoint")
                .timeout(Duration::from_secs(20));
            if let Ok(ch) = ep.connect().await {
                let health = HealthClient::new(ch.clone())
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if matches!(health, Ok(r) if r.get_ref().status() == ServingStatus::Serving) {
                    return ch;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    /// A failed test never leaves a server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone)]
struct Clients {
    identity: IdentityServiceClient<GrpcChannel>,
    profiles: ProfileServiceClient<GrpcChannel>,
    interactions: InteractionServiceClient<GrpcChannel>,
    consent: ConsentServiceClient<GrpcChannel>,
    contact: ContactServiceClient<GrpcChannel>,
}

impl Clients {
    fn new(ch: GrpcChannel) -> Clients {
        Clients {
            identity: IdentityServiceClient::new(ch.clone()),
            profiles: ProfileServiceClient::new(ch.clone()),
            interactions: InteractionServiceClient::new(ch.clone()),
            consent: ConsentServiceClient::new(ch.clone()),
            contact: ContactServiceClient::new(ch),
        }
    }

    async fn profile(&self, id: &str) -> pb::Profile {
        self.profiles
            .clone()
            .get_profile(pb::GetProfileRequest {
                profile: Some(by_id(id)),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetProfile {id}: {s:?}"))
            .into_inner()
            .profile
            .expect("GetProfileResponse.profile")
    }

    async fn interactions(&self, id: &str) -> Vec<pb::Interaction> {
        let mut req = pb::ListInteractionsRequest {
            profile: Some(by_id(id)),
            page_size: 500,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let r = self
                .interactions
                .clone()
                .list_interactions(req.clone())
                .await
                .unwrap_or_else(|s| panic!("ListInteractions {id}: {s:?}"))
                .into_inner();
            out.extend(r.interactions);
            if r.next_page_token.is_empty() {
                return out;
            }
            req.page_token = r.next_page_token;
        }
    }

    async fn owners(&self, idents: Vec<pb::Identifier>) -> Vec<pb::IdentifierLookup> {
        let mut out = Vec::new();
        for chunk in idents.chunks(100) {
            let r = self
                .identity
                .clone()
                .lookup_profile_ids(pb::LookupProfileIdsRequest {
                    identifiers: chunk.to_vec(),
                })
                .await
                .expect("LookupProfileIds")
                .into_inner();
            assert_eq!(r.results.len(), chunk.len(), "one lookup per identifier");
            out.extend(r.results);
        }
        out
    }

    /// Creates a marker profile; returns its id (its creation event follows every change
    /// committed before the call).
    async fn marker(&self, tag: &str) -> String {
        self.identity
            .clone()
            .resolve(pb::ResolveRequest {
                identifiers: vec![device(tag)],
                create_if_missing: true,
                source: "crash-marker".into(),
                ..Default::default()
            })
            .await
            .expect("marker Resolve")
            .into_inner()
            .profile_id
    }
}

// ------------------------------------------------------------------------------ the writers

/// A write request, kept so it can be sent again with its `request_id`.
#[derive(Clone, Debug)]
enum Op {
    Resolve(pb::ResolveRequest),
    Merge(pb::MergeProfilesRequest),
    Unmerge(pb::UnmergeProfilesRequest),
    Update(pb::UpdateProfileRequest),
    Record(pb::RecordInteractionRequest),
    Consent(pb::RecordConsentRequest),
    Contact(pb::CheckContactRequest),
}

#[derive(Clone, Debug, PartialEq)]
enum Reply {
    Resolve(pb::ResolveResponse),
    Merge(pb::MergeProfilesResponse),
    Unmerge(pb::UnmergeProfilesResponse),
    Update(Box<pb::UpdateProfileResponse>),
    Record(pb::RecordInteractionResponse),
    Consent(pb::RecordConsentResponse),
    Contact(pb::CheckContactResponse),
}

impl Op {
    async fn send(&self, c: &Clients) -> Result<Reply, Status> {
        Ok(match self.clone() {
            Op::Resolve(r) => Reply::Resolve(c.identity.clone().resolve(r).await?.into_inner()),
            Op::Merge(r) => Reply::Merge(c.identity.clone().merge_profiles(r).await?.into_inner()),
            Op::Unmerge(r) => {
                Reply::Unmerge(c.identity.clone().unmerge_profiles(r).await?.into_inner())
            }
            Op::Update(r) => Reply::Update(Box::new(
                c.profiles.clone().update_profile(r).await?.into_inner(),
            )),
            Op::Record(r) => Reply::Record(
                c.interactions
                    .clone()
                    .record_interaction(r)
                    .await?
                    .into_inner(),
            ),
            Op::Consent(r) => {
                Reply::Consent(c.consent.clone().record_consent(r).await?.into_inner())
            }
            Op::Contact(r) => {
                Reply::Contact(c.contact.clone().check_contact(r).await?.into_inner())
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Resolve: create, link new identifiers, merge by a shared request (allow_merge).
    Resolver,
    /// Pairs of profiles with an interaction each, merged, then half of them unmerged.
    Merger,
    /// UpdateProfile of a counter (given_name and a custom value).
    Updater,
    /// RecordInteraction with a request_id.
    Recorder,
    /// RecordConsent, granted and denied in turn.
    Consenter,
    /// CheckContact with reserve.
    Reserver,
}

const KINDS: [Kind; 6] = [
    Kind::Resolver,
    Kind::Merger,
    Kind::Updater,
    Kind::Recorder,
    Kind::Consenter,
    Kind::Reserver,
];

/// Where a merger's current pair stands.
#[derive(Clone, Debug, Default)]
enum PairStep {
    #[default]
    CreateA,
    CreateB(String),
    RecordA(String, String),
    RecordB(String, String),
    Merge(String, String),
    Unmerge(String),
}

/// One writer: what it sent, what the server promised, and what it owns.
struct Writer {
    kind: Kind,
    tag: String,
    rng: Rng,
    n: u64,
    /// Its profiles, oldest first.
    profiles: Vec<String>,
    /// Absorbed profile → the survivor it is merged into (while merged).
    merged_into: HashMap<String, String>,
    /// Identifier → the profile it was acknowledged as linked to.
    claims: Vec<(pb::Identifier, String)>,
    /// (profile the interaction was recorded on, interaction id), acknowledged.
    interactions: Vec<(String, String)>,
    /// Profile → the last acknowledged counter written to it.
    counters: HashMap<String, u64>,
    /// Profile → (acknowledged consent ids, last acknowledged decision).
    consents: HashMap<String, (Vec<String>, i32)>,
    /// Profile → highest acknowledged version.
    versions: HashMap<String, u64>,
    /// (profile, version) of changes acknowledged since the last check, which the feed
    /// must hold.
    feed_expect: Vec<(String, u64)>,
    /// Profiles touched since the last check.
    touched: BTreeSet<String>,
    pair: PairStep,
    /// The request in flight when the server died (maybe committed, maybe not).
    pending: Option<Op>,
    /// The last acknowledged request and its answer.
    last: Option<(Op, Reply)>,
    acked: u64,
}

impl Writer {
    fn new(kind: Kind, seed: u64, index: usize) -> Writer {
        Writer {
            kind,
            tag: format!("crash{seed:x}-w{index}"),
            rng: Rng(seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
            n: 0,
            profiles: Vec::new(),
            merged_into: HashMap::new(),
            claims: Vec::new(),
            interactions: Vec::new(),
            counters: HashMap::new(),
            consents: HashMap::new(),
            versions: HashMap::new(),
            feed_expect: Vec::new(),
            touched: BTreeSet::new(),
            pair: PairStep::default(),
            pending: None,
            last: None,
            acked: 0,
        }
    }

    fn next_id(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{}-{what}-{}", self.tag, self.n)
    }

    fn canonical(&self, p: &str) -> String {
        let mut p = p.to_string();
        while let Some(s) = self.merged_into.get(&p) {
            p = s.clone();
        }
        p
    }

    /// One of the writer's recent profiles (keeps each profile's history short).
    fn recent(&mut self) -> String {
        let k = self.profiles.len().min(3) as u64;
        let i = self.profiles.len() - 1 - self.rng.below(k) as usize;
        self.profiles[i].clone()
    }

    fn create(&mut self) -> Op {
        let (e, d) = (self.next_id("e"), self.next_id("d"));
        let request_id = self.next_id("req");
        Op::Resolve(pb::ResolveRequest {
            identifiers: vec![email(&format!("{e}@crash.example")), device(&d)],
            create_if_missing: true,
            allow_merge: false,
            source: "crash".into(),
            request_id,
        })
    }

    /// The next request this writer sends.
    fn next_op(&mut self) -> Op {
        let request_id = self.next_id("req");
        if self.kind != Kind::Merger && (self.profiles.len() < 2 || self.rng.chance(4)) {
            return self.create();
        }
        match self.kind {
            Kind::Resolver => {
                let p = self.recent();
                let owned: Vec<pb::Identifier> = self
                    .claims
                    .iter()
                    .filter(|(i, o)| {
                        i.kind == pb::IdentifierKind::Email as i32
                            && self.canonical(o) == self.canonical(&p)
                    })
                    .map(|(i, _)| i.clone())
                    .collect();
                let Some(mine) = owned.first().cloned() else {
                    return self.create();
                };
                let mut identifiers = vec![mine];
                let allow_merge = self.rng.chance(15);
                if allow_merge {
                    // An email of another (live) profile of this writer: a merge by Resolve.
                    let other = self
                        .claims
                        .iter()
                        .rev()
                        .find(|(i, o)| {
                            i.kind == pb::IdentifierKind::Email as i32
                                && self.canonical(o) != self.canonical(&p)
                        })
                        .map(|(i, _)| i.clone());
                    identifiers.extend(other);
                } else {
                    let d = self.next_id("d");
                    identifiers.push(device(&d));
                }
                Op::Resolve(pb::ResolveRequest {
                    identifiers,
                    create_if_missing: true,
                    allow_merge,
                    source: "crash".into(),
                    request_id,
                })
            }
            Kind::Merger => match self.pair.clone() {
                PairStep::CreateA | PairStep::CreateB(_) => self.create(),
                PairStep::RecordA(a, _) | PairStep::RecordB(_, a) => {
                    Op::Record(self.record_request(&a, request_id))
                }
                PairStep::Merge(a, b) => Op::Merge(pb::MergeProfilesRequest {
                    profiles: vec![by_id(&a), by_id(&b)],
                    reason: "crash harness".into(),
                    source: "crash".into(),
                    request_id,
                }),
                PairStep::Unmerge(merge_id) => Op::Unmerge(pb::UnmergeProfilesRequest {
                    merge_id,
                    reason: "crash harness".into(),
                    source: "crash".into(),
                    request_id,
                }),
            },
            Kind::Updater => {
                let p = self.recent();
                let value = self.n;
                Op::Update(pb::UpdateProfileRequest {
                    profile: Some(by_id(&p)),
                    attributes: Some(pb::ProfileAttributes {
                        given_name: Some(format!("n{value}")),
                        custom: [(
                            "counter".to_string(),
                            pb::Value {
                                kind: Some(pb::value::Kind::IntValue(value as i64)),
                            },
                        )]
                        .into_iter()
                        .collect(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["attributes.given_name", "attributes.custom.counter"]),
                    source: "crash".into(),
                    observed_at: Some(now_ts()),
                    expected_version: 0,
                    request_id,
                })
            }
            Kind::Recorder => {
                let p = self.recent();
                Op::Record(self.record_request(&p, request_id))
            }
            Kind::Consenter => {
                let p = self.recent();
                let decision = if self.rng.chance(50) {
                    pb::ConsentDecision::Granted
                } else {
                    pb::ConsentDecision::Denied
                };
                Op::Consent(pb::RecordConsentRequest {
                    profile: Some(by_id(&p)),
                    consent: Some(pb::ConsentRecord {
                        purpose: pb::Purpose::Marketing as i32,
                        channel: pb::Channel::Email as i32,
                        decision: decision as i32,
                        source: "crash".into(),
                        ..Default::default()
                    }),
                    request_id,
                })
            }
            Kind::Reserver => {
                let p = self.recent();
                let message_key = self.next_id("msg");
                Op::Contact(pb::CheckContactRequest {
                    profile: Some(by_id(&p)),
                    channel: pb::Channel::Email as i32,
                    purpose: pb::Purpose::Service as i32,
                    message_key,
                    reserve: true,
                    request_id,
                    department: "support".into(),
                    r#type: "service_notice".into(),
                })
            }
        }
    }

    fn record_request(&mut self, p: &str, request_id: String) -> pb::RecordInteractionRequest {
        let (channel, direction) = match self.rng.below(3) {
            0 => (pb::Channel::Web, pb::Direction::Inbound),
            1 => (pb::Channel::App, pb::Direction::Inbound),
            _ => (pb::Channel::Email, pb::Direction::Outbound),
        };
        pb::RecordInteractionRequest {
            profile: Some(by_id(p)),
            interaction: Some(pb::Interaction {
                channel: channel as i32,
                direction: direction as i32,
                department: "support".into(),
                r#type: "crash_visit".into(),
                summary: "crash harness".into(),
                ..Default::default()
            }),
            request_id,
        }
    }

    fn saw(&mut self, p: &str, version: u64, feed: bool) {
        let v = self.versions.entry(p.to_string()).or_default();
        *v = (*v).max(version);
        self.touched.insert(p.to_string());
        if feed {
            self.feed_expect.push((p.to_string(), version));
        }
    }

    /// Records what an acknowledged request promised.
    fn acknowledge(&mut self, op: &Op, reply: &Reply) {
        self.acked += 1;
        match (op, reply) {
            (Op::Resolve(_), Reply::Resolve(r)) => {
                let outcome = r.outcome();
                assert!(
                    !matches!(
                        outcome,
                        pb::ResolveOutcome::Unspecified | pb::ResolveOutcome::NoMatch
                    ),
                    "unexpected Resolve outcome {r:?}"
                );
                if outcome == pb::ResolveOutcome::Created {
                    self.profiles.push(r.profile_id.clone());
                    self.pair = match std::mem::take(&mut self.pair) {
                        PairStep::CreateA => PairStep::CreateB(r.profile_id.clone()),
                        PairStep::CreateB(a) => PairStep::RecordA(a, r.profile_id.clone()),
                        other => other,
                    };
                }
                for o in &r.other_profile_ids {
                    if outcome == pb::ResolveOutcome::Merged {
                        self.merged_into.insert(o.clone(), r.profile_id.clone());
                    }
                    self.touched.insert(o.clone());
                }
                for i in &r.linked {
                    self.claims.push((i.clone(), r.profile_id.clone()));
                }
                self.saw(&r.profile_id, r.version, false);
            }
            (Op::Record(q), Reply::Record(r)) => {
                let i = r.interaction.as_ref().expect("recorded interaction");
                let p = match &q.profile.as_ref().and_then(|p| p.r#ref.clone()) {
                    Some(pb::profile_ref::Ref::ProfileId(p)) => p.clone(),
                    other => panic!("recorded by id only: {other:?}"),
                };
                self.interactions
                    .push((p.clone(), i.interaction_id.clone()));
                self.saw(&i.profile_id, r.version, true);
                self.pair = match std::mem::take(&mut self.pair) {
                    PairStep::RecordA(a, b) => PairStep::RecordB(a, b),
                    PairStep::RecordB(a, b) => PairStep::Merge(a, b),
                    other => other,
                };
            }
            (Op::Merge(_), Reply::Merge(r)) => {
                for m in &r.merges {
                    self.merged_into
                        .insert(m.absorbed_profile_id.clone(), r.profile_id.clone());
                    self.touched.insert(m.absorbed_profile_id.clone());
                }
                self.saw(&r.profile_id, r.version, false);
                self.pair = match (self.rng.chance(50), r.merges.first()) {
                    (true, Some(m)) => PairStep::Unmerge(m.merge_id.clone()),
                    _ => PairStep::CreateA,
                };
            }
            (Op::Unmerge(_), Reply::Unmerge(r)) => {
                self.merged_into.remove(&r.restored_profile_id);
                self.saw(&r.survivor_profile_id, r.survivor_version, false);
                self.saw(&r.restored_profile_id, r.restored_version, false);
                self.pair = PairStep::CreateA;
            }
            (Op::Update(_), Reply::Update(r)) => {
                let p = r.profile.as_ref().expect("updated profile");
                let value = match p.attributes.as_ref().and_then(|a| a.given_name.as_deref()) {
                    Some(v) => v.trim_start_matches('n').parse::<u64>().expect("counter"),
                    None => panic!("an acknowledged update left no given_name: {p:?}"),
                };
                self.counters.insert(p.profile_id.clone(), value);
                self.saw(&p.profile_id, p.version, !r.applied_paths.is_empty());
            }
            (Op::Consent(q), Reply::Consent(r)) => {
                let c = r.consent.as_ref().expect("recorded consent");
                let p = match &q.profile.as_ref().and_then(|p| p.r#ref.clone()) {
                    Some(pb::profile_ref::Ref::ProfileId(p)) => p.clone(),
                    other => panic!("consent by id only: {other:?}"),
                };
                let e = self.consents.entry(p.clone()).or_default();
                e.0.push(c.consent_id.clone());
                e.1 = c.decision;
                self.saw(&p, r.version, true);
            }
            (Op::Contact(_), Reply::Contact(r)) => {
                if let Some(i) = &r.reserved {
                    assert!(r.allowed, "a reservation on a denied check: {r:?}");
                    self.interactions
                        .push((r.profile_id.clone(), i.interaction_id.clone()));
                    self.saw(&r.profile_id, r.version, true);
                }
            }
            (op, reply) => panic!("reply {reply:?} does not answer {op:?}"),
        }
    }

    /// Sends requests until one fails (the server died); the failed one stays pending.
    async fn run(mut self, c: Clients) -> Writer {
        loop {
            let op = self.next_op();
            self.pending = Some(op.clone());
            match op.send(&c).await {
                Ok(reply) => {
                    self.acknowledge(&op, &reply);
                    self.last = Some((op, reply));
                    self.pending = None;
                }
                Err(_) => return self,
            }
        }
    }

    /// After a restart: the cut-off request again, with its request_id.
    async fn retry_pending(&mut self, c: &Clients) {
        if let Some(op) = self.pending.take() {
            let reply = op
                .send(c)
                .await
                .unwrap_or_else(|s| panic!("{:?}: retry of {op:?} failed: {s:?}", self.kind));
            self.acknowledge(&op, &reply);
            self.last = Some((op, reply));
        }
    }
}

// ------------------------------------------------------------------------------- the checks

#[derive(Default)]
struct Totals {
    acked: u64,
    checks: u64,
    feed_events: u64,
    replays: u64,
    recovery_kills: u64,
    /// Requests cut off by a kill and sent again after the restart.
    retried: u64,
}

/// Checks everything `w` was promised about the profiles it touched since the last check and
/// a few sampled ones (every profile when `all`).
async fn verify(w: &mut Writer, c: &Clients, sample: &mut Rng, all: bool, t: &mut Totals) {
    let mut subjects: BTreeSet<String> = std::mem::take(&mut w.touched);
    if all {
        subjects.extend(w.profiles.iter().cloned());
    } else {
        for _ in 0..3 {
            if !w.profiles.is_empty() {
                let i = sample.below(w.profiles.len() as u64) as usize;
                subjects.insert(w.profiles[i].clone());
            }
        }
    }
    let kind = w.kind;
    let live: BTreeSet<String> = subjects.iter().map(|p| w.canonical(p)).collect();

    // Identifiers: every acknowledged link is owned by the live profile its profile is (now)
    // part of.
    let claims: Vec<(pb::Identifier, String)> = w
        .claims
        .iter()
        .filter(|(_, p)| subjects.contains(p) || live.contains(&w.canonical(p)))
        .cloned()
        .collect();
    let found = c
        .owners(claims.iter().map(|(i, _)| i.clone()).collect())
        .await;
    for ((i, p), r) in claims.iter().zip(&found) {
        assert!(
            r.found && r.profile_id == w.canonical(p),
            "{kind:?}: identifier {i:?} acknowledged on {p} (now part of {}) is {r:?}",
            w.canonical(p)
        );
        t.checks += 1;
    }

    for p in &live {
        let profile = c.profile(p).await;
        assert_eq!(&profile.profile_id, p, "{kind:?}: {p} is live");
        let acked_version = w.versions.get(p).copied().unwrap_or(0);
        if !w.merged_into.values().any(|s| s == p) {
            assert!(
                profile.version >= acked_version,
                "{kind:?}: {p} at version {} after version {acked_version} was acknowledged",
                profile.version
            );
            t.checks += 1;
        }

        // An identifier belongs to at most one live profile: each one this profile lists
        // looks up to this profile.
        let listed: Vec<pb::Identifier> = profile
            .identifiers
            .iter()
            .filter_map(|l| l.identifier.clone())
            .collect();
        for r in c.owners(listed).await {
            assert_eq!(
                &r.profile_id, p,
                "{kind:?}: {p} lists {:?}, which belongs to another profile",
                r.identifier
            );
        }

        // Interactions: each acknowledged one exactly once, on the profile it is part of.
        let listed = c.interactions(p).await;
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &listed {
            *count.entry(i.interaction_id.as_str()).or_default() += 1;
        }
        assert!(
            count.values().all(|n| *n == 1),
            "{kind:?}: an interaction is listed twice on {p}"
        );
        for (origin, id) in w.interactions.iter().filter(|(o, _)| w.canonical(o) == *p) {
            assert!(
                count.contains_key(id.as_str()),
                "{kind:?}: acknowledged interaction {id} (recorded on {origin}) is missing from {p}"
            );
            t.checks += 1;
        }

        // The summary equals a recomputation from the interactions.
        let s = profile.summary.clone().unwrap_or_default();
        assert_eq!(
            s.interaction_count,
            listed.len() as u64,
            "{kind:?}: {p}'s interaction_count against its interactions"
        );
        let last = listed.iter().map(|i| micros(&i.occurred_at)).max();
        assert_eq!(
            last.unwrap_or(0),
            micros(&s.last_interaction_at),
            "{kind:?}: {p}'s last_interaction_at against its interactions"
        );
        let mut channels: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for i in &listed {
            let e = channels.entry(i.channel).or_default();
            let at = micros(&i.occurred_at);
            if i.direction == pb::Direction::Inbound as i32 {
                e.0 = e.0.max(at);
            } else {
                e.1 = e.1.max(at);
            }
        }
        let reported: BTreeMap<i32, (i64, i64)> = s
            .channels
            .iter()
            .map(|a| {
                (
                    a.channel,
                    (micros(&a.last_inbound_at), micros(&a.last_outbound_at)),
                )
            })
            .collect();
        assert_eq!(
            reported, channels,
            "{kind:?}: {p}'s channel activity against its interactions"
        );
        t.checks += 3;

        // Attributes: the last acknowledged value.
        if let Some(n) = w.counters.get(p) {
            let attrs = profile.attributes.clone().unwrap_or_default();
            assert_eq!(
                attrs.given_name,
                Some(format!("n{n}")),
                "{kind:?}: {p}'s given_name after the acknowledged update to n{n}"
            );
            let counter = attrs.custom.get("counter").and_then(|v| v.kind.clone());
            assert_eq!(
                counter,
                Some(pb::value::Kind::IntValue(*n as i64)),
                "{kind:?}: {p}'s custom.counter"
            );
            t.checks += 1;
        }

        // Consents: every acknowledged record once; the last decision is in effect.
        if let Some((ids, decision)) = w.consents.get(p) {
            let r = c
                .consent
                .clone()
                .get_consents(pb::GetConsentsRequest {
                    profile: Some(by_id(p)),
                })
                .await
                .expect("GetConsents")
                .into_inner();
            for id in ids {
                let n = r.records.iter().filter(|x| &x.consent_id == id).count();
                assert_eq!(n, 1, "{kind:?}: acknowledged consent {id} on {p}");
                t.checks += 1;
            }
            let state = r
                .effective
                .iter()
                .find(|e| {
                    e.purpose == pb::Purpose::Marketing as i32
                        && e.channel == pb::Channel::Email as i32
                })
                .map(|e| e.state)
                .unwrap_or(0);
            let expected = if *decision == pb::ConsentDecision::Granted as i32 {
                pb::ConsentState::Granted
            } else {
                pb::ConsentState::Denied
            };
            assert_eq!(
                state, expected as i32,
                "{kind:?}: {p}'s marketing/email consent after the last acknowledged decision"
            );
        }
    }
}

/// Reads the change feed after sequence `from` up to a new marker's creation: consecutive
/// sequence numbers from `from + 1`, none repeated. Returns the marker's sequence and the (profile, version) pairs.
async fn read_feed(c: &Clients, from: u64, tag: &str) -> (u64, BTreeSet<(String, u64)>) {
    let marker = c.marker(tag).await;
    let mut stream = c
        .profiles
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            from_sequence: from,
        })
        .await
        .expect("WatchChanges")
        .into_inner();
    let mut expected_next = from + 1;
    let mut seen = BTreeSet::new();
    loop {
        let e = match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
            Ok(Ok(Some(m))) => m.event.expect("event"),
            other => panic!("the change feed stopped before the marker: {other:?}"),
        };
        assert_eq!(
            e.sequence, expected_next,
            "the change feed has a gap or a repeat: {} where {expected_next} was due",
            e.sequence
        );
        expected_next = e.sequence + 1;
        seen.insert((e.profile_id.clone(), e.version));
        if e.profile_id == marker && e.kind == pb::ChangeKind::ProfileCreated as i32 {
            return (e.sequence, seen);
        }
    }
}

/// A reply as a replay must repeat it. A Resolve that wrote nothing (a lookup, a conflict, a
/// match with nothing to add: the handler's fast path) stores no reply, so a retry reads the
/// profile as it is now: its version may have moved on with other writers' changes. The rest
/// must match, and the change-feed marker below proves the retry wrote nothing.
fn comparable(r: &Reply) -> Reply {
    match r {
        Reply::Resolve(x)
            if x.outcome != pb::ResolveOutcome::Created as i32
                && x.linked.is_empty()
                && x.merge_ids.is_empty() =>
        {
            Reply::Resolve(pb::ResolveResponse {
                version: 0,
                ..x.clone()
            })
        }
        other => other.clone(),
    }
}

/// Sends each writer's last acknowledged request again: the same answer, and nothing
/// written (a marker made after the replays is the very next change).
async fn replay_last(writers: &[Writer], c: &Clients, head: u64, tag: &str, t: &mut Totals) {
    for w in writers {
        let Some((op, reply)) = &w.last else { continue };
        let again = op
            .send(c)
            .await
            .unwrap_or_else(|s| panic!("{:?}: replay of {op:?} failed: {s:?}", w.kind));
        assert_eq!(
            comparable(&again),
            comparable(reply),
            "{:?}: a replay after the restart answers differently",
            w.kind
        );
        t.replays += 1;
    }
    let marker = c.marker(tag).await;
    let mut stream = c
        .profiles
        .clone()
        .watch_changes(pb::WatchChangesRequest {
            from_sequence: head,
        })
        .await
        .expect("WatchChanges")
        .into_inner();
    let e = match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Ok(Ok(Some(m))) => m.event.expect("event"),
        other => panic!("no change after the replays: {other:?}"),
    };
    assert_eq!(
        (e.sequence, e.profile_id.as_str()),
        (head + 1, marker.as_str()),
        "a replayed request wrote something: {e:?}"
    );
}

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("crash-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("crash-")
        .tempdir()
        .expect("temporary directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let cycles = env_u64("CRASH_CYCLES", 20);
    let seed = env_u64("CRASH_SEED", 0x5EED_C0DE);
    let started = Instant::now();
    let scratch = scratch_dir();
    let data = scratch.path().join("data");
    let log = scratch.path().join("server.log");
    let mut rng = Rng(seed);
    let mut writers: Vec<Writer> = KINDS
        .iter()
        .enumerate()
        .map(|(i, k)| Writer::new(*k, seed, i))
        .collect();
    let mut t = Totals::default();
    let mut head = 0;
    let mut start_ms = 300;

    let mut server = Server::spawn(&data, &log);
    let mut channel = server.serving(&log).await;
    for cycle in 0..cycles {
        // Write until the kill.
        let clients = Clients::new(channel.clone());
        let tasks: Vec<_> = writers
            .drain(..)
            .map(|w| tokio::spawn(w.run(clients.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(450))).await;
        server.kill();
        drop(clients);
        drop(channel);
        for task in tasks {
            writers.push(task.await.expect("writer task"));
        }

        // One restart in five is killed while the store recovers.
        if rng.chance(20) {
            let mut early = Server::spawn(&data, &log);
            tokio::time::sleep(Duration::from_millis(rng.below(start_ms))).await;
            early.kill();
            t.recovery_kills += 1;
        }
        let began = Instant::now();
        server = Server::spawn(&data, &log);
        channel = server.serving(&log).await;
        start_ms = (began.elapsed().as_millis() as u64).max(20);
        let c = Clients::new(channel.clone());

        let tag = format!("crash{seed:x}-marker-{cycle}");
        let (mark, _) = read_feed(&c, head, &format!("{tag}-a")).await;
        replay_last(&writers, &c, mark, &format!("{tag}-b"), &mut t).await;
        for w in &mut writers {
            t.retried += u64::from(w.pending.is_some());
            w.retry_pending(&c).await;
        }
        let last = cycle + 1 == cycles;
        for w in &mut writers {
            verify(w, &c, &mut rng, last, &mut t).await;
        }
        // The feed from the last checked head (from 0 at the end): no gaps, no repeats, and
        // every acknowledged change since the last check.
        let from = if last { 0 } else { head };
        let (new_head, seen) = read_feed(&c, from, &format!("{tag}-c")).await;
        for w in &mut writers {
            for (p, v) in w.feed_expect.drain(..) {
                assert!(
                    seen.contains(&(p.clone(), v)),
                    "{:?}: no change event for {p} version {v}, which was acknowledged",
                    w.kind
                );
                t.checks += 1;
            }
        }
        if last {
            t.feed_events = new_head;
        }
        head = new_head;
        if (cycle + 1) % 50 == 0 {
            eprintln!(
                "crash harness: {} cycles, {:.0} s",
                cycle + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    server.kill();
    // The audit log survived the kills as an intact hash chain (a torn last entry is cut off
    // at open).
    let audit_log = customer_profile::audit::log_path(&data);
    match customer_profile::audit::verify(&audit_log).expect("read the audit log") {
        customer_profile::audit::Verdict::Intact { entries, .. } => assert!(entries > 0),
        broken => panic!("the audit log is broken after the kills: {broken:?}"),
    }
    t.acked = writers.iter().map(|w| w.acked).sum();
    eprintln!(
        "crash harness: seed={seed:#x} cycles={cycles} recovery_kills={} acked_writes={} \
         checks={} replays={} cut_off_and_resent={} feed_events={} lost=0 violations=0 wall={:.1}s",
        t.recovery_kills,
        t.acked,
        t.checks,
        t.replays,
        t.retried,
        t.feed_events,
        started.elapsed().as_secs_f64()
    );
    assert!(t.acked > 0, "the writers got nothing acknowledged");
}
