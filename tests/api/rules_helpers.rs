//! Harness for the customer rules (issue 4): a [`TestApp`] with ConsentService and
//! ContactService clients, clock moves, and builders and readers for consents, contact checks,
//! summaries and segment filters.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use customer_profile::domain::time::{Duration, Timestamp};
use customer_profile::server::config::Config;
use customer_profile::service::pb;
use pb::consent_service_client::ConsentServiceClient;
use pb::contact_service_client::ContactServiceClient;
use pb::{Channel, ConsentDecision, ConsentState, DenyReason, Direction, Purpose};
use tonic::Status;
use tonic::transport::{Channel as GrpcChannel, Endpoint};

use crate::helpers::*;

/// One day.
pub const DAY: Duration = Duration::days(1);
/// One hour.
pub const HOUR: Duration = Duration::hours(1);

/// Every concrete channel, in enum order.
pub const CHANNELS: [Channel; 10] = [
    Channel::Email,
    Channel::Sms,
    Channel::PhoneCall,
    Channel::Web,
    Channel::App,
    Channel::Store,
    Channel::Post,
    Channel::Push,
    Channel::Chat,
    Channel::Social,
];

/// A [`TestApp`] plus clients of the rule services. Derefs to the `TestApp`, so every
/// existing helper (`create`, `record`, `merge`, `clock`…) is available.
pub struct RulesApp {
    pub app: TestApp,
    pub consent: ConsentServiceClient<GrpcChannel>,
    pub contact: ContactServiceClient<GrpcChannel>,
}

impl Deref for RulesApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl DerefMut for RulesApp {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

impl RulesApp {
    /// A server with the default configuration.
    pub async fn spawn() -> RulesApp {
        Self::wrap(TestApp::spawn().await).await
    }

    /// A server whose default configuration `configure` adjusts.
    pub async fn spawn_with(configure: impl Fn(&mut Config) + Send + Sync + 'static) -> RulesApp {
        Self::wrap(TestApp::spawn_with(configure).await).await
    }

    async fn wrap(app: TestApp) -> RulesApp {
        let channel = Endpoint::from_shared(format!("http://{}", app.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the test server");
        RulesApp {
            app,
            consent: ConsentServiceClient::new(channel.clone()),
            contact: ContactServiceClient::new(channel),
        }
    }

    // ------------------------------------------------------------------------ clock

    /// Sets the server's clock.
    pub fn set_time(&self, t: Timestamp) {
        self.clock.set(t);
    }

    /// Moves the server's clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.clock.set(self.now().plus(d));
    }

    // ------------------------------------------------------------------------ consent

    pub async fn try_record_consent(
        &self,
        profile: pb::ProfileRef,
        consent: pb::ConsentRecord,
        request_id: &str,
    ) -> Result<pb::RecordConsentResponse, Status> {
        self.consent
            .clone()
            .record_consent(pb::RecordConsentRequest {
                profile: Some(profile),
                consent: Some(consent),
                request_id: request_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Records `consent` on profile `p`; returns the stored record.
    pub async fn record_consent(&self, p: &str, consent: pb::ConsentRecord) -> pb::ConsentRecord {
        self.try_record_consent(by_id(p), consent, "")
            .await
            .expect("RecordConsent")
            .consent
            .expect("RecordConsentResponse.consent")
    }

    /// A grant with the default lifetime. `Channel::Unspecified` = every channel.
    pub async fn grant(&self, p: &str, purpose: Purpose, channel: Channel) -> pb::ConsentRecord {
        self.record_consent(p, consent(purpose, channel, ConsentDecision::Granted, None))
            .await
    }

    /// A grant that ends at `until`.
    pub async fn grant_until(
        &self,
        p: &str,
        purpose: Purpose,
        channel: Channel,
        until: Timestamp,
    ) -> pb::ConsentRecord {
        self.record_consent(
            p,
            consent(purpose, channel, ConsentDecision::Granted, Some(until)),
        )
        .await
    }

    /// A denial. `Channel::Unspecified` = every channel.
    pub async fn deny(&self, p: &str, purpose: Purpose, channel: Channel) -> pb::ConsentRecord {
        self.record_consent(p, consent(purpose, channel, ConsentDecision::Denied, None))
            .await
    }

    pub async fn try_consents(
        &self,
        profile: pb::ProfileRef,
    ) -> Result<pb::GetConsentsResponse, Status> {
        self.consent
            .clone()
            .get_consents(pb::GetConsentsRequest {
                profile: Some(profile),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn consents(&self, p: &str) -> pb::GetConsentsResponse {
        self.try_consents(by_id(p)).await.expect("GetConsents")
    }

    /// The state GetConsents reports now for `purpose` × `channel` (NONE when not listed).
    pub async fn consent_state(&self, p: &str, purpose: Purpose, channel: Channel) -> ConsentState {
        state_of(&self.consents(p).await.effective, purpose, channel)
    }

    pub async fn try_set_preferences(
        &self,
        profile: pb::ProfileRef,
        preferences: pb::Preferences,
        request_id: &str,
    ) -> Result<pb::SetPreferencesResponse, Status> {
        self.consent
            .clone()
            .set_preferences(pb::SetPreferencesRequest {
                profile: Some(profile),
                preferences: Some(preferences),
                request_id: request_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn set_preferences(
        &self,
        p: &str,
        preferred: &[Channel],
        opted_out: &[Channel],
        language: &str,
    ) -> pb::SetPreferencesResponse {
        self.try_set_preferences(by_id(p), preferences(preferred, opted_out, language), "")
            .await
            .expect("SetPreferences")
    }

    // ------------------------------------------------------------------------ contact

    pub async fn try_check(
        &self,
        req: pb::CheckContactRequest,
    ) -> Result<pb::CheckContactResponse, Status> {
        self.contact
            .clone()
            .check_contact(req)
            .await
            .map(|r| r.into_inner())
    }

    /// CheckContact without reserving (`message_key` may be empty).
    pub async fn check(
        &self,
        p: &str,
        channel: Channel,
        purpose: Purpose,
        message_key: &str,
    ) -> pb::CheckContactResponse {
        self.try_check(contact_request(p, channel, purpose, message_key, false))
            .await
            .expect("CheckContact")
    }

    /// CheckContact with `reserve = true`.
    pub async fn reserve(
        &self,
        p: &str,
        channel: Channel,
        purpose: Purpose,
        message_key: &str,
    ) -> pb::CheckContactResponse {
        self.try_check(contact_request(p, channel, purpose, message_key, true))
            .await
            .expect("CheckContact(reserve)")
    }

    /// Reserves a marketing contact and asserts it was allowed and recorded.
    pub async fn send_marketing(
        &self,
        p: &str,
        channel: Channel,
        message_key: &str,
    ) -> pb::Interaction {
        let r = self
            .reserve(p, channel, Purpose::Marketing, message_key)
            .await;
        assert!(
            r.allowed,
            "expected the marketing contact to be allowed: {r:?}"
        );
        r.reserved
            .expect("an allowed reserve returns the interaction")
    }

    // ------------------------------------------------------------------------ summary

    pub async fn summary(&self, p: &str) -> pb::ProfileSummary {
        self.try_get_masked(by_id(p), &["summary"], 0)
            .await
            .expect("GetProfile(summary)")
            .summary
            .expect("GetProfile with read_mask summary returns the summary")
    }

    /// Records an interaction on `p` (by id) and returns the stored interaction.
    pub async fn record_on(&self, p: &str, i: pb::Interaction) -> pb::Interaction {
        self.record(by_id(p), i)
            .await
            .interaction
            .expect("RecordInteractionResponse.interaction")
    }

    // ------------------------------------------------------------------------ segments

    pub async fn try_search(
        &self,
        clauses: Vec<pb::FilterClause>,
        page_size: i32,
        page_token: &str,
        read_mask: &[&str],
    ) -> Result<pb::SearchProfilesResponse, Status> {
        self.profiles
            .clone()
            .search_profiles(pb::SearchProfilesRequest {
                filter: Some(pb::ProfileFilter { clauses }),
                read_mask: mask(read_mask),
                page_size,
                page_token: page_token.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Every profile id SearchProfiles returns for `clauses`, following page tokens; asserts
    /// every page respects `page_size`.
    pub async fn search_ids(&self, clauses: Vec<pb::FilterClause>, page_size: i32) -> Vec<String> {
        let limit = if page_size == 0 {
            50
        } else {
            page_size as usize
        };
        let mut out = Vec::new();
        let mut token = String::new();
        for _ in 0..100_000 {
            let r = self
                .try_search(clauses.clone(), page_size, &token, &["merged_ids"])
                .await
                .expect("SearchProfiles");
            assert!(
                r.profiles.len() <= limit,
                "a page of {} profiles with page_size {page_size}",
                r.profiles.len()
            );
            out.extend(r.profiles.into_iter().map(|p| p.profile_id));
            if r.next_page_token.is_empty() {
                return out;
            }
            token = r.next_page_token;
        }
        panic!("SearchProfiles did not end after 100000 pages");
    }

    pub async fn try_count(&self, clauses: Vec<pb::FilterClause>) -> Result<u64, Status> {
        self.profiles
            .clone()
            .count_profiles(pb::CountProfilesRequest {
                filter: Some(pb::ProfileFilter { clauses }),
            })
            .await
            .map(|r| r.into_inner().count)
    }

    pub async fn count(&self, clauses: Vec<pb::FilterClause>) -> u64 {
        self.try_count(clauses).await.expect("CountProfiles")
    }
}

// ---------------------------------------------------------------------------- time

/// Days since 1970-01-01 of a proleptic Gregorian date (independent of the server's code).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC wall-clock time.
pub fn utc(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Timestamp {
    Timestamp((days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000)
}

pub fn opt_ts(t: &Option<prost_types::Timestamp>) -> Option<Timestamp> {
    t.as_ref().map(from_ts)
}

// ---------------------------------------------------------------------------- consent

pub fn consent(
    purpose: Purpose,
    channel: Channel,
    decision: ConsentDecision,
    expires_at: Option<Timestamp>,
) -> pb::ConsentRecord {
    pb::ConsentRecord {
        purpose: purpose as i32,
        channel: channel as i32,
        decision: decision as i32,
        source: "web_signup_form".into(),
        expires_at: expires_at.map(ts),
        ..Default::default()
    }
}

pub fn preferences(
    preferred: &[Channel],
    opted_out: &[Channel],
    language: &str,
) -> pb::Preferences {
    pb::Preferences {
        preferred_channels: preferred.iter().map(|c| *c as i32).collect(),
        opted_out_channels: opted_out.iter().map(|c| *c as i32).collect(),
        language: language.into(),
        updated_at: None,
    }
}

/// The effective consents as a map; asserts no pair is listed twice and none is NONE.
#[track_caller]
pub fn effective_map(
    effective: &[pb::EffectiveConsent],
) -> BTreeMap<(i32, i32), pb::EffectiveConsent> {
    let mut out = BTreeMap::new();
    for e in effective {
        assert_ne!(
            e.state,
            ConsentState::None as i32,
            "NONE pairs are not listed: {e:?}"
        );
        assert_ne!(
            e.channel,
            Channel::Unspecified as i32,
            "effective consents name concrete channels: {e:?}"
        );
        let prev = out.insert((e.purpose, e.channel), e.clone());
        assert!(prev.is_none(), "pair listed twice: {e:?}");
    }
    out
}

/// The state of one pair in an effective list (NONE when not listed).
#[track_caller]
pub fn state_of(
    effective: &[pb::EffectiveConsent],
    purpose: Purpose,
    channel: Channel,
) -> ConsentState {
    effective_map(effective)
        .get(&(purpose as i32, channel as i32))
        .map_or(ConsentState::None, |e| {
            ConsentState::try_from(e.state).expect("known consent state")
        })
}

// ---------------------------------------------------------------------------- contact

pub fn contact_request(
    p: &str,
    channel: Channel,
    purpose: Purpose,
    message_key: &str,
    reserve: bool,
) -> pb::CheckContactRequest {
    pb::CheckContactRequest {
        profile: Some(by_id(p)),
        channel: channel as i32,
        purpose: purpose as i32,
        message_key: message_key.into(),
        reserve,
        ..Default::default()
    }
}

pub fn reasons(r: &pb::CheckContactResponse) -> Vec<DenyReason> {
    r.reasons
        .iter()
        .map(|x| DenyReason::try_from(*x).expect("known deny reason"))
        .collect()
}

pub fn suggested(r: &pb::CheckContactResponse) -> Channel {
    Channel::try_from(r.suggested_channel).expect("known channel")
}

/// Asserts an allowed answer (no reasons, no next_allowed_at).
#[track_caller]
pub fn assert_allowed(r: &pb::CheckContactResponse, what: &str) {
    assert!(
        r.allowed && r.reasons.is_empty() && r.next_allowed_at.is_none(),
        "{what}: expected allowed, got {r:?}"
    );
}

/// Asserts a denied answer with exactly `expected` reasons (in order), one explanation each,
/// and nothing reserved.
#[track_caller]
pub fn assert_denied(r: &pb::CheckContactResponse, expected: &[DenyReason], what: &str) {
    assert!(!r.allowed, "{what}: expected denied, got {r:?}");
    assert_eq!(reasons(r), expected, "{what}: reasons of {r:?}");
    assert_eq!(
        r.explanations.len(),
        r.reasons.len(),
        "{what}: one explanation per reason: {r:?}"
    );
    assert!(
        r.reserved.is_none(),
        "{what}: a denied check reserves nothing: {r:?}"
    );
}

/// An OUTBOUND interaction at `t`.
pub fn outbound(
    channel: Channel,
    purpose: Purpose,
    kind: &str,
    key: &str,
    t: Timestamp,
) -> pb::Interaction {
    pb::Interaction {
        purpose: purpose as i32,
        message_key: key.into(),
        occurred_at: Some(ts(t)),
        ..interaction(channel, Direction::Outbound, "marketing", kind)
    }
}

/// An INBOUND interaction at `t`.
pub fn inbound(channel: Channel, department: &str, kind: &str, t: Timestamp) -> pb::Interaction {
    pb::Interaction {
        occurred_at: Some(ts(t)),
        ..interaction(channel, Direction::Inbound, department, kind)
    }
}

/// An interaction of a case.
pub fn case_event(
    case_id: &str,
    state: pb::CaseState,
    kind: &str,
    t: Timestamp,
) -> pb::Interaction {
    pb::Interaction {
        case_id: case_id.into(),
        case_state: state as i32,
        ..inbound(Channel::PhoneCall, "customer_service", kind, t)
    }
}

// ---------------------------------------------------------------------------- segments

pub fn text(s: &str) -> pb::Value {
    string_value(s)
}

pub fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::IntValue(i)),
    }
}

pub fn attr_any(path: &str, values: Vec<pb::Value>) -> pb::FilterClause {
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: path.into(),
            any_of: values,
            lower: None,
            upper: None,
        })),
    }
}

pub fn attr_eq(path: &str, value: &str) -> pb::FilterClause {
    attr_any(path, vec![text(value)])
}

/// A range clause; each bound is (value, inclusive).
pub fn attr_range(
    path: &str,
    lower: Option<(pb::Value, bool)>,
    upper: Option<(pb::Value, bool)>,
) -> pb::FilterClause {
    let bound = |b: Option<(pb::Value, bool)>| {
        b.map(|(v, inclusive)| pb::RangeBound {
            value: Some(v),
            inclusive,
        })
    };
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Attribute(pb::AttributeClause {
            path: path.into(),
            any_of: vec![],
            lower: bound(lower),
            upper: bound(upper),
        })),
    }
}

pub fn has_kind(kind: pb::IdentifierKind) -> pb::FilterClause {
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::IdentifierKind(
            pb::IdentifierKindClause { kind: kind as i32 },
        )),
    }
}

pub fn consent_active(purpose: Purpose, channel: Channel) -> pb::FilterClause {
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Consent(pb::ConsentClause {
            purpose: purpose as i32,
            channel: channel as i32,
        })),
    }
}

pub fn did(kind: &str, attr: Option<(&str, &str)>, within_days: i32) -> pb::FilterClause {
    let (k, v) = attr.unwrap_or(("", ""));
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Interaction(
            pb::InteractionClause {
                r#type: kind.into(),
                attribute_key: k.into(),
                attribute_value: v.into(),
                within_days,
            },
        )),
    }
}

pub fn score_at_least(kind: pb::ScoreKind, at_least: f64, below: Option<f64>) -> pb::FilterClause {
    pb::FilterClause {
        clause: Some(pb::filter_clause::Clause::Score(pb::ScoreClause {
            score: kind as i32,
            at_least,
            below,
        })),
    }
}

// ---------------------------------------------------------------------------- randomness

/// A small deterministic generator (SplitMix64): the same seed gives the same data set.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
