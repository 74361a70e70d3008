//! What the load generator asks for: the scenarios, the data they draw from (profile ids and
//! identifiers that exist, search filters that match) and one request per scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::ValueEnum;
use customer_profile::service::pb;
use prost_types::Timestamp;
use tonic::transport::Channel;

use super::echo_pb;

/// One benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// GetProfile by profile id.
    GetById,
    /// GetProfile by e-mail identifier.
    GetByEmail,
    /// Resolve, lookup only (create_if_missing = false).
    Resolve,
    /// BatchGetProfiles of 100 profile ids.
    #[value(name = "batch-get-100")]
    BatchGet100,
    /// RecordInteraction (durable), distinct request ids.
    RecordInteraction,
    /// CheckContact with reserve = true, distinct message keys.
    CheckContactReserve,
    /// SearchProfiles: city + gender + an interaction clause.
    Search,
    /// 80 % GetProfile by id, 15 % RecordInteraction, 5 % Resolve.
    Mix,
    /// The echo baseline's one RPC.
    Echo,
    /// UpdateProfile of one attribute (churn for the data-directory size goal).
    UpdateProfile,
    /// EraseCustomer, each profile once (churn; stops when the ids run out).
    Erase,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    fn needs_data(self) -> bool {
        self != Scenario::Echo
    }
}

/// The result of one call beyond OK / status: a label worth counting (e.g. contact denied).
pub enum Outcome {
    /// OK, optionally with a label counted in the report.
    Ok(Option<&'static str>),
    /// A non-OK gRPC status.
    Failed(tonic::Status),
    /// Nothing left to do (erase ran out of profiles).
    Exhausted,
}

/// A filter that matches some profiles: city and gender taken from a real profile.
#[derive(Clone, Debug)]
pub struct SearchParams {
    city: String,
    gender: String,
}

/// The data every worker draws from.
pub struct Workload {
    pub scenario: Scenario,
    pub profile_ids: Vec<String>,
    pub emails: Vec<String>,
    pub identifiers: Vec<pb::Identifier>,
    pub searches: Vec<SearchParams>,
    pub run_tag: String,
    pub echo_request: Bytes,
    pub erase_cursor: AtomicUsize,
}

/// Every client a worker may need, over one connection.
#[derive(Clone)]
pub struct Clients {
    profile: pb::profile_service_client::ProfileServiceClient<Channel>,
    identity: pb::identity_service_client::IdentityServiceClient<Channel>,
    interaction: pb::interaction_service_client::InteractionServiceClient<Channel>,
    contact: pb::contact_service_client::ContactServiceClient<Channel>,
    privacy: pb::privacy_service_client::PrivacyServiceClient<Channel>,
    echo: echo_pb::echo_service_client::EchoServiceClient<Channel>,
}

impl Clients {
    pub fn new(channel: Channel) -> Clients {
        // Large replies (BatchGet of 100 profiles, search pages) exceed tonic's 4 MiB default.
        let max = 64 * 1024 * 1024;
        Clients {
            profile: pb::profile_service_client::ProfileServiceClient::new(channel.clone())
                .max_decoding_message_size(max),
            identity: pb::identity_service_client::IdentityServiceClient::new(channel.clone())
                .max_decoding_message_size(max),
            interaction: pb::interaction_service_client::InteractionServiceClient::new(
                channel.clone(),
            ),
            contact: pb::contact_service_client::ContactServiceClient::new(channel.clone()),
            privacy: pb::privacy_service_client::PrivacyServiceClient::new(channel.clone()),
            echo: echo_pb::echo_service_client::EchoServiceClient::new(channel),
        }
    }
}

impl Clients {
    /// The clients the gRPC seeding path writes through.
    pub fn seed_clients(
        &mut self,
    ) -> (
        &mut pb::profile_service_client::ProfileServiceClient<Channel>,
        &mut pb::identity_service_client::IdentityServiceClient<Channel>,
        &mut pb::interaction_service_client::InteractionServiceClient<Channel>,
    ) {
        (&mut self.profile, &mut self.identity, &mut self.interaction)
    }
}

/// A small deterministic generator (splitmix64): the benchmark needs spread, not quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

fn by_id(id: &str) -> Option<pb::ProfileRef> {
    Some(pb::ProfileRef {
        r#ref: Some(pb::profile_ref::Ref::ProfileId(id.to_string())),
    })
}

/// GetProfile of the customer with profile id `id`.
pub fn get_by_id_request(id: &str) -> pb::GetProfileRequest {
    pb::GetProfileRequest {
        profile: by_id(id),
        ..Default::default()
    }
}

fn by_identifier(id: pb::Identifier) -> Option<pb::ProfileRef> {
    Some(pb::ProfileRef {
        r#ref: Some(pb::profile_ref::Ref::Identifier(id)),
    })
}

fn now_ts() -> Option<Timestamp> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s.to_string())),
    }
}

fn done<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok(None),
        Err(s) => Outcome::Failed(s),
    }
}

impl Workload {
    fn pick<'a, T>(list: &'a [T], rng: &mut Rng) -> &'a T {
        &list[rng.below(list.len())]
    }

    fn interaction(&self, id: &str, worker: usize, seq: u64) -> pb::RecordInteractionRequest {
        pb::RecordInteractionRequest {
            profile: by_id(id),
            interaction: Some(pb::Interaction {
                channel: pb::Channel::Web as i32,
                direction: pb::Direction::Inbound as i32,
                department: "digital".into(),
                r#type: "page_view".into(),
                summary: "benchmark page view".into(),
                occurred_at: now_ts(),
                ..Default::default()
            }),
            request_id: format!("bench-{}-ri-{worker}-{seq}", self.run_tag),
        }
    }

    /// Sends one request of this workload's scenario.
    pub async fn call(&self, c: &mut Clients, rng: &mut Rng, worker: usize, seq: u64) -> Outcome {
        let scenario = match self.scenario {
            Scenario::Mix => match rng.below(100) {
                0..80 => Scenario::GetById,
                80..95 => Scenario::RecordInteraction,
                _ => Scenario::Resolve,
            },
            s => s,
        };
        match scenario {
            Scenario::GetById | Scenario::Mix => {
                let id = Self::pick(&self.profile_ids, rng);
                done(c.profile.get_profile(get_by_id_request(id)).await)
            }
            Scenario::GetByEmail => {
                let email = Self::pick(&self.emails, rng);
                let id = pb::Identifier {
                    kind: pb::IdentifierKind::Email as i32,
                    value: email.clone(),
                    namespace: String::new(),
                };
                done(
                    c.profile
                        .get_profile(pb::GetProfileRequest {
                            profile: by_identifier(id),
                            ..Default::default()
                        })
                        .await,
                )
            }
            Scenario::Resolve => {
                let id = Self::pick(&self.identifiers, rng).clone();
                match c
                    .identity
                    .resolve(pb::ResolveRequest {
                        identifiers: vec![id],
                        create_if_missing: false,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) if r.get_ref().outcome == pb::ResolveOutcome::NoMatch as i32 => {
                        Outcome::Ok(Some("no_match"))
                    }
                    Ok(_) => Outcome::Ok(None),
                    Err(s) => Outcome::Failed(s),
                }
            }
            Scenario::BatchGet100 => {
                let profiles = (0..100)
                    .map(|_| pb::ProfileRef {
                        r#ref: Some(pb::profile_ref::Ref::ProfileId(
                            Self::pick(&self.profile_ids, rng).clone(),
                        )),
                    })
                    .collect();
                done(
                    c.profile
                        .batch_get_profiles(pb::BatchGetProfilesRequest {
                            profiles,
                            ..Default::default()
                        })
                        .await,
                )
            }
            Scenario::RecordInteraction => {
                let id = Self::pick(&self.profile_ids, rng).clone();
                done(
                    c.interaction
                        .record_interaction(self.interaction(&id, worker, seq))
                        .await,
                )
            }
            Scenario::CheckContactReserve => {
                let id = Self::pick(&self.profile_ids, rng);
                let r = c
                    .contact
                    .check_contact(pb::CheckContactRequest {
                        profile: by_id(id),
                        channel: pb::Channel::Email as i32,
                        purpose: pb::Purpose::Marketing as i32,
                        message_key: format!("bench-{}-msg-{worker}-{seq}", self.run_tag),
                        reserve: true,
                        request_id: format!("bench-{}-cc-{worker}-{seq}", self.run_tag),
                        department: "marketing".into(),
                        r#type: "campaign_message".into(),
                    })
                    .await;
                match r {
                    Ok(r) if r.get_ref().allowed => Outcome::Ok(Some("allowed")),
                    Ok(_) => Outcome::Ok(Some("denied")),
                    Err(s) => Outcome::Failed(s),
                }
            }
            Scenario::Search => {
                let p = Self::pick(&self.searches, rng);
                let clause = |c| pb::FilterClause { clause: Some(c) };
                let filter = pb::ProfileFilter {
                    clauses: vec![
                        clause(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
                            path: "city".into(),
                            any_of: vec![text(&p.city)],
                            ..Default::default()
                        })),
                        clause(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
                            path: "gender".into(),
                            any_of: vec![text(&p.gender)],
                            ..Default::default()
                        })),
                        clause(pb::filter_clause::Clause::Interaction(
                            pb::InteractionClause {
                                r#type: "purchase".into(),
                                within_days: 730,
                                ..Default::default()
                            },
                        )),
                    ],
                };
                match c
                    .profile
                    .search_profiles(pb::SearchProfilesRequest {
                        filter: Some(filter),
                        page_size: 20,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(r) if r.get_ref().profiles.is_empty() => Outcome::Ok(Some("empty_page")),
                    Ok(_) => Outcome::Ok(None),
                    Err(s) => Outcome::Failed(s),
                }
            }
            Scenario::Echo => done(
                c.echo
                    .echo(echo_pb::EchoRequest {
                        payload: self.echo_request.clone(),
                    })
                    .await,
            ),
            Scenario::UpdateProfile => {
                let id = Self::pick(&self.profile_ids, rng);
                let city = ["Leeds", "York", "Bath", "Derby", "Truro"][rng.below(5)];
                done(
                    c.profile
                        .update_profile(pb::UpdateProfileRequest {
                            profile: by_id(id),
                            attributes: Some(pb::ProfileAttributes {
                                city: Some(city.into()),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["attributes.city".into()],
                            }),
                            source: "bench".into(),
                            observed_at: now_ts(),
                            request_id: format!("bench-{}-up-{worker}-{seq}", self.run_tag),
                            ..Default::default()
                        })
                        .await,
                )
            }
            Scenario::Erase => {
                let i = self.erase_cursor.fetch_add(1, Ordering::Relaxed);
                let Some(id) = self.profile_ids.get(i) else {
                    return Outcome::Exhausted;
                };
                match c
                    .privacy
                    .erase_customer(pb::EraseCustomerRequest {
                        profile: by_id(id),
                        reason: "benchmark churn".into(),
                        request_id: format!("bench-{}-er-{i}", self.run_tag),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().already_erased => Outcome::Ok(Some("already_erased")),
                    Ok(_) => Outcome::Ok(None),
                    Err(s) => Outcome::Failed(s),
                }
            }
        }
    }
}

/// One line of the identifiers file.
fn parse_kind(s: &str) -> Option<Result<pb::IdentifierKind, ()>> {
    let k = s.trim().to_ascii_uppercase();
    let k = k.strip_prefix("IDENTIFIER_KIND_").unwrap_or(&k);
    Some(match k {
        "EMAIL" => Ok(pb::IdentifierKind::Email),
        "PHONE" => Ok(pb::IdentifierKind::Phone),
        "LOYALTY_CARD" => Ok(pb::IdentifierKind::LoyaltyCard),
        "DEVICE_ID" => Ok(pb::IdentifierKind::DeviceId),
        "CUSTOMER_NUMBER" => Ok(pb::IdentifierKind::CustomerNumber),
        "EXTERNAL" => Ok(pb::IdentifierKind::External),
        "PROFILE_ID" | "PROFILE" | "ID" => Err(()),
        _ => return None,
    })
}

/// Reads `kind<TAB>value` lines defensively: unknown kinds and malformed lines are counted and
/// skipped; `PROFILE_ID` lines are ids; EXTERNAL takes `namespace:value` or a third column.
pub fn read_ids_file(path: &std::path::Path) -> anyhow::Result<(Vec<pb::Identifier>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut idents, mut ids, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split('\t');
        let (Some(kind), Some(value)) = (cols.next(), cols.next()) else {
            skipped += 1;
            continue;
        };
        let value = value.trim();
        match parse_kind(kind) {
            Some(Ok(kind)) if !value.is_empty() => {
                let (namespace, value) = match (kind, cols.next()) {
                    (pb::IdentifierKind::External, Some(v)) => (value.to_string(), v.to_string()),
                    (pb::IdentifierKind::External, None) => match value.split_once(':') {
                        Some((ns, v)) => (ns.to_string(), v.to_string()),
                        None => (String::new(), value.to_string()),
                    },
                    _ => (String::new(), value.to_string()),
                };
                idents.push(pb::Identifier {
                    kind: kind as i32,
                    value,
                    namespace,
                });
            }
            Some(Err(())) if !value.is_empty() => ids.push(value.to_string()),
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!(
            "loadgen: skipped {skipped} unrecognised lines in {}",
            path.display()
        );
    }
    Ok((idents, ids))
}

/// Builds the workload: reads the identifiers file, looks up their profile ids (in batches,
/// once, before the clock starts) and samples a few profiles for search filters.
pub async fn prepare(
    scenario: Scenario,
    ids_file: Option<&std::path::Path>,
    sample: usize,
    channel: Channel,
    echo_request_bytes: usize,
) -> anyhow::Result<Arc<Workload>> {
    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros()
    );
    let mut w = Workload {
        scenario,
        profile_ids: Vec::new(),
        emails: Vec::new(),
        identifiers: Vec::new(),
        searches: Vec::new(),
        run_tag,
        echo_request: Bytes::from(vec![b'r'; echo_request_bytes]),
        erase_cursor: AtomicUsize::new(0),
    };
    if !scenario.needs_data() {
        return Ok(Arc::new(w));
    }
    let Some(path) = ids_file else {
        bail!(
            "scenario {} needs --ids (an identifiers file)",
            scenario.name()
        );
    };
    let (mut idents, mut ids) = read_ids_file(path)?;
    // Spread the sample over the whole file, deterministically.
    if idents.len() > sample {
        let step = idents.len() / sample;
        idents = idents
            .into_iter()
            .step_by(step.max(1))
            .take(sample)
            .collect();
    }
    let clients = Clients::new(channel);
    for chunk in idents.chunks(500) {
        let reply = patiently(|| {
            let mut c = clients.identity.clone();
            let identifiers = chunk.to_vec();
            async move {
                c.lookup_profile_ids(pb::LookupProfileIdsRequest { identifiers })
                    .await
            }
        })
        .await
        .context("LookupProfileIds while preparing the workload")?
        .into_inner();
        ids.extend(
            reply
                .results
                .into_iter()
                .filter(|r| r.found)
                .map(|r| r.profile_id),
        );
    }
    ids.sort();
    ids.dedup();
    // Erase takes ids in order; shuffle so churn is spread, deterministically.
    let mut rng = Rng::new(7);
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    w.emails = idents
        .iter()
        .filter(|i| i.kind == pb::IdentifierKind::Email as i32)
        .map(|i| i.value.clone())
        .collect();
    w.identifiers = idents;
    w.profile_ids = ids;
    if w.profile_ids.is_empty() {
        bail!(
            "no identifier in {} belongs to a profile on the server",
            path.display()
        );
    }
    if scenario == Scenario::GetByEmail && w.emails.is_empty() {
        bail!("get-by-email needs EMAIL lines in {}", path.display());
    }
    if scenario == Scenario::Search {
        for id in w.profile_ids.iter().take(50) {
            let p = patiently(|| {
                let mut c = clients.profile.clone();
                let profile = by_id(id);
                async move {
                    c.get_profile(pb::GetProfileRequest {
                        profile,
                        ..Default::default()
                    })
                    .await
                }
            })
            .await
            .context("GetProfile while preparing search filters")?
            .into_inner();
            let Some(attrs) = p.profile.and_then(|p| p.attributes) else {
                continue;
            };
            let gender = pb::Gender::try_from(attrs.gender)
                .ok()
                .map(|g| g.as_str_name().trim_start_matches("GENDER_").to_string());
            if let (Some(city), Some(gender)) = (attrs.city, gender) {
                if gender != "UNSPECIFIED" {
                    w.searches.push(SearchParams { city, gender });
                }
            }
        }
        if w.searches.is_empty() {
            bail!("search: no sampled profile has both a city and a gender");
        }
    }
    Ok(Arc::new(w))
}

/// Runs a set-up call until the server stops refusing it for overload (RESOURCE_EXHAUSTED,
/// UNAVAILABLE), waiting 50 ms, then twice as long each time up to 2 s, for at most two minutes
/// in all: a run's set-up must not fail because the server, just started on a large data set,
/// sheds load while it warms up (seen at 1,000,000 profiles before the flood). The runs
/// themselves never retry: a refusal there is counted.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut wait = std::time::Duration::from_millis(50);
    loop {
        match call().await {
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                ) && std::time::Instant::now() + wait < give_up =>
            {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}
