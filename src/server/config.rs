//! Configuration: defaults < TOML file < `CUSTOMER_PROFILE_*` environment < command-line flags,
//! layered by figment and checked once at start with messages that name the bad key.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::layer::Authenticator;
use crate::auth::{FieldAccess, Principal, Scope, tokens};
use crate::domain::consent::{ConsentPolicy, Purpose};
use crate::domain::contact::{ContactPolicy, FrequencyCap};
use crate::domain::identifier::{Identifier, IdentifierKind};
use crate::domain::policy::IdentityPolicy;
use crate::domain::rules::Rules;
use crate::domain::summary::SummaryPolicy;
use crate::domain::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Data directory (sled).
    pub data_dir: PathBuf,
    /// Storage tuning.
    pub storage: StorageConfig,
    /// Identity policy.
    pub identity: IdentityConfig,
    /// Change feed retention.
    pub changes: ChangesConfig,
    /// Idempotency key retention.
    pub idempotency: IdempotencyConfig,
    /// Audit log rotation and retention.
    pub audit: AuditConfig,
    /// Logging.
    pub log: LogConfig,
    /// Consent lifetimes.
    pub consent: ConsentConfig,
    /// Contact policy: caps, de-duplication.
    pub contact: ContactConfig,
    /// Profile summary: moment types, scores.
    pub summary: SummaryConfig,
    /// Authentication and authorisation.
    pub auth: AuthConfig,
    /// TLS for the gRPC port (and mutual TLS when a client CA is given).
    pub tls: Option<TlsConfig>,
    /// Encryption at rest.
    pub encryption: EncryptionConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// A separate plaintext port serving only grpc.health.v1 (for kubelet probes when the
    /// gRPC port uses TLS).
    pub health: HealthConfig,
    /// Overload protection and input limits (see `server/limits.rs`).
    pub limits: super::limits::LimitsConfig,
}

/// The optional health-only port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Where, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// Graceful shutdown on SIGTERM/SIGINT: health turns NOT_SERVING, then after `drain_delay_ms`
/// the listener closes and in-flight calls get `grace_secs` to finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds in-flight calls may still take (keep the pod's termination grace above it).
    pub grace_secs: u64,
    /// Milliseconds between NOT_SERVING and closing the listener (lets load balancers notice).
    pub drain_delay_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_secs: 20,
            drain_delay_ms: 0,
        }
    }
}

/// Prometheus metrics at `http://<listen>/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve them.
    pub enabled: bool,
    /// Where (its own port, so the gRPC port stays gRPC only).
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Encryption at rest: where the master key comes from. Without either setting a key is
/// generated into `<data_dir>/master.key` (local development; a warning says so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A file holding the 32-byte master key, raw or base64 (a mounted Kubernetes Secret).
    pub master_key_file: Option<PathBuf>,
    /// The master key itself, base64 (for `CUSTOMER_PROFILE_ENCRYPTION__MASTER_KEY`).
    pub master_key: Option<String>,
}

/// TLS for the gRPC port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates; set for mutual TLS. A client
    /// certificate's subject common name maps it to the principal listing that name in
    /// `client_cert_names`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: also accept connections without a client certificate (those must then
    /// send a bearer token). Default false: every client must present a certificate.
    #[serde(default)]
    pub client_auth_optional: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./data"),
            storage: StorageConfig::default(),
            identity: IdentityConfig::default(),
            changes: ChangesConfig::default(),
            audit: AuditConfig::default(),
            idempotency: IdempotencyConfig::default(),
            log: LogConfig::default(),
            consent: ConsentConfig::default(),
            contact: ContactConfig::default(),
            summary: SummaryConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            encryption: EncryptionConfig::default(),
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            health: HealthConfig::default(),
            limits: super::limits::LimitsConfig::default(),
        }
    }
}

/// Authentication and authorisation (SPEC §10). No principals = local development: the server
/// then starts only on a loopback address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Who may call.
    pub principals: Vec<PrincipalConfig>,
    /// Extra field groups: name → attribute paths (`custom.iban`, or a prefix `custom.credit_*`)
    /// readable only by principals holding the group. `finance` is predefined (see
    /// [`default_field_groups`]) and may be redefined here.
    pub field_groups: BTreeMap<String, Vec<String>>,
}

/// One principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Name (audited, logged).
    pub name: String,
    /// Department recorded on the interactions it writes.
    #[serde(default)]
    pub department: Option<String>,
    /// Scopes (`profile:read`, ...).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Readable field groups (`identity`, `profile`, `consent`, `activity`, `finance`, or a
    /// configured one); `["*"]` = all.
    #[serde(default)]
    pub field_groups: Vec<String>,
    /// Bound purpose (`MARKETING`, ...), if any.
    #[serde(default)]
    pub purpose: Option<String>,
    /// SHA-256 hashes (hex) of its bearer tokens (several, to rotate).
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// Subject common names of client certificates (mutual TLS) that are this principal.
    #[serde(default)]
    pub client_cert_names: Vec<String>,
}

/// Built-in field groups.
pub const BUILTIN_FIELD_GROUPS: [&str; 5] =
    ["identity", "profile", "consent", "activity", "finance"];

/// The attribute paths of the predefined `finance` group.
pub fn default_field_groups() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([(
        "finance".to_string(),
        [
            "custom.credit_*",
            "custom.iban",
            "custom.payment_*",
            "custom.income*",
        ]
        .map(String::from)
        .to_vec(),
    )])
}

/// Consent lifetimes (SPEC §7: no perpetual licence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsentConfig {
    /// A grant recorded without `expires_at` ends this many calendar months later.
    pub default_grant_months: u32,
    /// A grant may not end more than this many calendar months after it is recorded.
    pub max_grant_months: u32,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            default_grant_months: 12,
            max_grant_months: 24,
        }
    }
}

/// One marketing frequency cap: at most `max` contacts in any rolling `window_hours`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    /// Window length, hours.
    pub window_hours: u32,
    /// Most outbound marketing contacts in the window.
    pub max: u32,
}

/// Contact policy (SPEC §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContactConfig {
    /// The same `message_key` is not sent twice within this many days, on any channel.
    pub dedup_window_days: u32,
    /// Marketing frequency caps across all channels.
    pub caps: Vec<CapConfig>,
    /// OUTBOUND interaction types that count as marketing when recorded without a purpose.
    pub marketing_types: Vec<String>,
}

impl Default for ContactConfig {
    fn default() -> Self {
        ContactConfig {
            dedup_window_days: 30,
            caps: vec![
                CapConfig {
                    window_hours: 24,
                    max: 1,
                },
                CapConfig {
                    window_hours: 7 * 24,
                    max: 3,
                },
                CapConfig {
                    window_hours: 30 * 24,
                    max: 8,
                },
            ],
            marketing_types: vec!["campaign_message".into()],
        }
    }
}

/// Profile summary (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummaryConfig {
    /// Interaction types whose latest occurrence is kept as a moment that matters.
    pub moment_types: Vec<String>,
    /// Interaction types whose `amount` adds to lifetime spend.
    pub purchase_types: Vec<String>,
    /// Half-life of the engagement score (inbound interactions), days.
    pub engagement_half_life_days: f64,
    /// Half-life of the contact pressure score (outbound marketing), days.
    pub contact_pressure_half_life_days: f64,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            moment_types: [
                "bill_payment",
                "plan_change",
                "support_call",
                "complaint",
                "purchase",
            ]
            .map(String::from)
            .to_vec(),
            purchase_types: vec!["purchase".into()],
            engagement_half_life_days: 30.0,
            contact_pressure_half_life_days: 7.0,
        }
    }
}

/// Storage tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// sled page cache, MiB.
    pub cache_capacity_mb: u64,
    /// Writes are refused (UNAVAILABLE) while the data directory's volume has less free space
    /// than this, MiB; 0 disables the guard.
    pub min_free_mb: u64,
    /// While writers are concurrent, the group commit waits this long before each flush so
    /// that one flush makes more writes durable, microseconds; 0 disables. A lone writer is
    /// never delayed.
    pub group_commit_delay_us: u64,
    /// Profiles kept loaded between reads (GetProfile, BatchGetProfiles); every commit drops
    /// those it changed. About 8 KiB each for the benchmark's customers (1,000 entries: RSS
    /// 143 MB against 135 MB with the cache off), plus up to two encoded GetProfile replies
    /// (about 2 KiB each) once read; a large merge tree weighs more. 0 disables.
    pub view_cache_entries: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_capacity_mb: 256,
            min_free_mb: 64,
            group_commit_delay_us: 1000,
            view_cache_entries: 20_000,
        }
    }
}

/// Identity policy (SPEC §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Caps per kind.
    pub caps: CapsConfig,
    /// Blocked values per kind (EXTERNAL as `namespace:value`).
    pub blocked: BlockedConfig,
}

/// Most identifiers of a kind one profile may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapsConfig {
    /// Emails.
    pub email: usize,
    /// Phones.
    pub phone: usize,
    /// Loyalty cards.
    pub loyalty_card: usize,
    /// Device ids.
    pub device_id: usize,
    /// External ids per namespace.
    pub external_per_namespace: usize,
}

impl Default for CapsConfig {
    fn default() -> Self {
        CapsConfig {
            email: 10,
            phone: 10,
            loyalty_card: 5,
            device_id: 50,
            external_per_namespace: 20,
        }
    }
}

/// Values accepted for lookup but never linked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BlockedConfig {
    /// Emails.
    pub email: Vec<String>,
    /// Phones.
    pub phone: Vec<String>,
    /// Customer numbers.
    pub customer_number: Vec<String>,
    /// Loyalty cards.
    pub loyalty_card: Vec<String>,
    /// Device ids.
    pub device_id: Vec<String>,
    /// External ids, `namespace:value`.
    pub external: Vec<String>,
}

/// Change feed retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangesConfig {
    /// Events older than this are pruned, seconds (default 7 days).
    pub retention_secs: u64,
    /// How often pruning runs, milliseconds.
    pub prune_interval_ms: u64,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        ChangesConfig {
            retention_secs: 7 * 24 * 3600,
            prune_interval_ms: 60_000,
        }
    }
}

/// Idempotency key retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// A retried write within this many seconds returns the first answer (default 24 h).
    pub retention_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            retention_secs: 24 * 3600,
        }
    }
}

/// Audit log rotation and retention (`<data_dir>/audit/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Once `audit.log` holds this many MiB it is closed as `audit.log.<first entry's seq>` and
    /// a new file continues the hash chain (0: one file that only grows).
    pub rotate_mb: u64,
    /// Closed files kept beside the active one; past this many the oldest are deleted, so ship
    /// them elsewhere first if they must be kept longer (0: keep every file).
    pub keep_files: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            rotate_mb: 64,
            keep_files: 16,
        }
    }
}

impl AuditConfig {
    /// The writer's rotation.
    pub fn rotation(&self) -> crate::audit::Rotation {
        crate::audit::Rotation {
            max_file_bytes: self.rotate_mb.saturating_mul(1024 * 1024),
            keep_files: self.keep_files,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// pretty or json.
    pub format: LogFormat,
    /// tracing filter directive, e.g. `info,customer_profile=debug`; `RUST_LOG` overrides.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// The top-level keys of [`Config`], the only ones the environment may set.
pub const CONFIG_SECTIONS: [&str; 18] = [
    "listen",
    "data_dir",
    "storage",
    "identity",
    "changes",
    "idempotency",
    "audit",
    "log",
    "consent",
    "contact",
    "summary",
    "auth",
    "tls",
    "encryption",
    "metrics",
    "shutdown",
    "health",
    "limits",
];

/// A configuration error naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Layers defaults, the TOML files (later ones override earlier ones), the environment
    /// and `overrides`.
    pub fn load(files: &[PathBuf], overrides: &Config) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        for f in files {
            if !f.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only variables that name a configuration section: CUSTOMER_PROFILE_CONFIG (the file
        // list, read by the command line) and variables Kubernetes derives from a Service name
        // (CUSTOMER_PROFILE_PORT=tcp://...) are not configuration.
        fig = fig.merge(
            Env::prefixed("CUSTOMER_PROFILE_")
                .filter(|k| {
                    let top = k.as_str().split("__").next().unwrap_or_default();
                    CONFIG_SECTIONS.iter().any(|s| top.eq_ignore_ascii_case(s))
                })
                .split("__"),
        );
        let mut config: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        let defaults = Config::default();
        if overrides.listen != defaults.listen {
            config.listen = overrides.listen;
        }
        if overrides.data_dir != defaults.data_dir {
            config.data_dir = overrides.data_dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, with secrets redacted (the master key; token hashes
    /// are shown shortened).
    pub fn redacted_toml(&self) -> Result<String, ConfigError> {
        let mut c = self.clone();
        if c.encryption.master_key.is_some() {
            c.encryption.master_key = Some("<redacted>".into());
        }
        for p in &mut c.auth.principals {
            for h in &mut p.token_sha256 {
                let short: String = h.chars().take(8).collect();
                *h = format!("{short}…<redacted>");
            }
        }
        toml::to_string_pretty(&c).map_err(|e| ConfigError(format!("cannot print: {e}")))
    }

    /// Checks what types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.changes.prune_interval_ms == 0 {
            return Err(ConfigError(
                "changes.prune_interval_ms must be above 0".into(),
            ));
        }
        if self.storage.cache_capacity_mb == 0 {
            return Err(ConfigError(
                "storage.cache_capacity_mb must be above 0".into(),
            ));
        }
        if self.storage.group_commit_delay_us > 100_000 {
            return Err(ConfigError(
                "storage.group_commit_delay_us must be at most 100000 (100 ms): every concurrent write waits up to that long".into(),
            ));
        }
        self.identity_policy()?;
        self.rules()?;
        self.limits
            .validate(self.auth.principals.iter().map(|p| p.name.as_str()))?;
        self.authenticator().map(|_| ())
    }

    /// The principals and token hashes this configuration describes.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        let mut groups = default_field_groups();
        groups.extend(self.auth.field_groups.clone());
        let mut principals = Vec::new();
        let mut hashes = Vec::new();
        let mut names = HashSet::new();
        let mut certs = HashSet::new();
        let mut cert_names = Vec::new();
        for (i, p) in self.auth.principals.iter().enumerate() {
            let key = |k: &str| format!("auth.principals[{i}].{k}");
            if p.name.trim().is_empty() || !names.insert(p.name.clone()) {
                return Err(ConfigError(format!(
                    "{}: every principal needs a unique, non-empty name",
                    key("name")
                )));
            }
            let mut scopes = BTreeSet::new();
            for (j, s) in p.scopes.iter().enumerate() {
                let scope = Scope::parse(s).ok_or_else(|| {
                    ConfigError(format!(
                        "{}[{j}]: unknown scope {s:?}; known: {}",
                        key("scopes"),
                        Scope::ALL.map(Scope::name).join(", ")
                    ))
                })?;
                scopes.insert(scope);
            }
            let fields = if p.field_groups.iter().any(|g| g == "*") {
                FieldAccess::All
            } else {
                let mut set = BTreeSet::new();
                for (j, g) in p.field_groups.iter().enumerate() {
                    if !BUILTIN_FIELD_GROUPS.contains(&g.as_str()) && !groups.contains_key(g) {
                        return Err(ConfigError(format!(
                            "{}[{j}]: unknown field group {g:?}",
                            key("field_groups")
                        )));
                    }
                    set.insert(g.clone());
                }
                FieldAccess::Groups(set)
            };
            let purpose = match p.purpose.as_deref() {
                None => None,
                Some("MARKETING") => Some(Purpose::Marketing),
                Some("PROFILING") => Some(Purpose::Profiling),
                Some("THIRD_PARTY_SHARING") => Some(Purpose::ThirdPartySharing),
                Some("SERVICE") => Some(Purpose::Service),
                Some(other) => {
                    return Err(ConfigError(format!(
                        "{}: unknown purpose {other:?} (MARKETING, PROFILING, THIRD_PARTY_SHARING, SERVICE)",
                        key("purpose")
                    )));
                }
            };
            if let Some(d) = &p.department {
                if !crate::domain::interaction::valid_department(d) {
                    return Err(ConfigError(format!(
                        "{}: 1 to 64 characters from [a-z0-9_]",
                        key("department")
                    )));
                }
            }
            let writes =
                scopes.contains(&Scope::InteractionWrite) || scopes.contains(&Scope::ContactCheck);
            if writes && p.department.is_none() {
                return Err(ConfigError(format!(
                    "{}: a principal with interaction:write or contact:check records interactions and needs a department",
                    key("department")
                )));
            }
            if p.token_sha256.is_empty() && p.client_cert_names.is_empty() {
                return Err(ConfigError(format!(
                    "{}: give at least one token hash (create one with `customer-profile token`) or a client certificate name",
                    key("token_sha256")
                )));
            }
            for n in &p.client_cert_names {
                if !certs.insert(n.clone()) {
                    return Err(ConfigError(format!(
                        "{}: client certificate name {n:?} is given to two principals",
                        key("client_cert_names")
                    )));
                }
                cert_names.push((n.clone(), i));
            }
            for (j, h) in p.token_sha256.iter().enumerate() {
                let hash = tokens::parse_hash(h).ok_or_else(|| {
                    ConfigError(format!(
                        "{}[{j}]: not a SHA-256 hash (64 hex digits); configure the hash, never the token",
                        key("token_sha256")
                    ))
                })?;
                hashes.push((i, hash));
            }
            principals.push(Principal {
                name: p.name.clone(),
                department: p.department.clone(),
                scopes,
                fields,
                purpose,
                local: false,
            });
        }
        Ok(Authenticator::new(principals, hashes, groups).with_cert_names(cert_names))
    }

    /// The consent, contact and summary rules this configuration describes.
    pub fn rules(&self) -> Result<Rules, ConfigError> {
        let c = &self.consent;
        if c.default_grant_months == 0 || c.max_grant_months == 0 {
            return Err(ConfigError(
                "consent.default_grant_months and consent.max_grant_months must be at least 1"
                    .into(),
            ));
        }
        if c.default_grant_months > c.max_grant_months {
            return Err(ConfigError(format!(
                "consent.default_grant_months ({}) may not exceed consent.max_grant_months ({})",
                c.default_grant_months, c.max_grant_months
            )));
        }
        if c.max_grant_months > 1200 {
            return Err(ConfigError(
                "consent.max_grant_months must be at most 1200".into(),
            ));
        }
        let k = &self.contact;
        if k.dedup_window_days == 0 || k.dedup_window_days > 3650 {
            return Err(ConfigError(
                "contact.dedup_window_days must be 1 to 3650".into(),
            ));
        }
        let mut caps = Vec::new();
        for (i, cap) in k.caps.iter().enumerate() {
            if cap.window_hours == 0 || cap.window_hours > 24 * 3650 {
                return Err(ConfigError(format!(
                    "contact.caps[{i}].window_hours must be 1 to 87600"
                )));
            }
            if cap.max == 0 {
                return Err(ConfigError(format!(
                    "contact.caps[{i}].max must be at least 1 (remove the cap to allow any number)"
                )));
            }
            caps.push(FrequencyCap {
                window: Duration::hours(i64::from(cap.window_hours)),
                max: cap.max,
            });
        }
        let s = &self.summary;
        for (name, v) in [
            (
                "summary.engagement_half_life_days",
                s.engagement_half_life_days,
            ),
            (
                "summary.contact_pressure_half_life_days",
                s.contact_pressure_half_life_days,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 36500.0) {
                return Err(ConfigError(format!(
                    "{name} must be above 0 and at most 36500"
                )));
            }
        }
        let types = |key: &str, list: &[String]| -> Result<BTreeSet<String>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    if crate::domain::interaction::valid_type(t) {
                        Ok(t.clone())
                    } else {
                        Err(ConfigError(format!(
                            "{key}[{i}]: {t:?} is not an interaction type ([a-z0-9_.]{{1,64}})"
                        )))
                    }
                })
                .collect()
        };
        Ok(Rules {
            consent: ConsentPolicy {
                default_grant_months: c.default_grant_months,
                max_grant_months: c.max_grant_months,
            },
            contact: ContactPolicy {
                dedup_window: Duration::days(i64::from(k.dedup_window_days)),
                caps,
            },
            summary: SummaryPolicy {
                moment_types: types("summary.moment_types", &s.moment_types)?,
                purchase_types: types("summary.purchase_types", &s.purchase_types)?,
                marketing_types: types("contact.marketing_types", &k.marketing_types)?,
                engagement_half_life: Duration::from_days_f64(s.engagement_half_life_days),
                pressure_half_life: Duration::from_days_f64(s.contact_pressure_half_life_days),
            },
        })
    }

    /// The identity policy this configuration describes; blocked values are normalised.
    pub fn identity_policy(&self) -> Result<IdentityPolicy, ConfigError> {
        let c = &self.identity.caps;
        let caps = BTreeMap::from([
            (IdentifierKind::Email, c.email),
            (IdentifierKind::Phone, c.phone),
            (IdentifierKind::LoyaltyCard, c.loyalty_card),
            (IdentifierKind::DeviceId, c.device_id),
            (IdentifierKind::External, c.external_per_namespace),
        ]);
        for (kind, cap) in &caps {
            if *cap == 0 {
                return Err(ConfigError(format!(
                    "identity.caps.{} must be at least 1",
                    kind.config_name()
                )));
            }
        }
        let b = &self.identity.blocked;
        let mut blocked = HashSet::new();
        let lists = [
            (IdentifierKind::Email, &b.email),
            (IdentifierKind::Phone, &b.phone),
            (IdentifierKind::CustomerNumber, &b.customer_number),
            (IdentifierKind::LoyaltyCard, &b.loyalty_card),
            (IdentifierKind::DeviceId, &b.device_id),
            (IdentifierKind::External, &b.external),
        ];
        for (kind, values) in lists {
            for (i, raw) in values.iter().enumerate() {
                let (ns, value) = match kind {
                    IdentifierKind::External => raw.split_once(':').unwrap_or(("", raw.as_str())),
                    _ => ("", raw.as_str()),
                };
                let id = Identifier::parse(kind, ns, value).map_err(|e| {
                    ConfigError(format!("identity.blocked.{}[{i}]: {e}", kind.config_name()))
                })?;
                blocked.insert(id);
            }
        }
        Ok(IdentityPolicy {
            caps,
            unique: vec![IdentifierKind::CustomerNumber],
            blocked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() -> Result<(), ConfigError> {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.identity_policy()?, IdentityPolicy::default());
        assert_eq!(c.rules()?, Rules::default());
        Ok(())
    }

    #[test]
    fn bad_blocked_value_names_the_key() {
        let mut c = Config::default();
        c.identity.blocked.phone.push("07700 900123".into());
        let err = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("identity.blocked.phone[0]"), "{err}");
    }
}
