//! Who is calling and what they may do (SPEC §10): principals, scopes, field groups, bound
//! purposes; bearer tokens checked against SHA-256 hashes from configuration; the tower layer
//! that authenticates every request and authorises it against one table of method → scope.

pub mod layer;
pub mod tokens;

use std::collections::BTreeSet;

use crate::domain::consent::Purpose;

/// A permission. Every RPC needs exactly one (see [`required_access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read profiles (GetProfile, BatchGetProfiles, GetProfileHistory, ListMerges).
    ProfileRead,
    /// Update profiles.
    ProfileWrite,
    /// Resolve, look up, link and unlink identifiers.
    IdentityResolve,
    /// Merge and unmerge profiles.
    IdentityMerge,
    /// List interactions.
    InteractionRead,
    /// Record interactions.
    InteractionWrite,
    /// Read consent and preferences.
    ConsentRead,
    /// Record consent, set preferences.
    ConsentWrite,
    /// CheckContact (and reserve).
    ContactCheck,
    /// Search and count profiles.
    SegmentRead,
    /// The change feed.
    ChangesRead,
    /// ExportCustomer.
    PrivacyExport,
    /// EraseCustomer.
    PrivacyErase,
    /// Online backup (a copy of everything, still encrypted).
    AdminBackup,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 14] = [
        Scope::ProfileRead,
        Scope::ProfileWrite,
        Scope::IdentityResolve,
        Scope::IdentityMerge,
        Scope::InteractionRead,
        Scope::InteractionWrite,
        Scope::ConsentRead,
        Scope::ConsentWrite,
        Scope::ContactCheck,
        Scope::SegmentRead,
        Scope::ChangesRead,
        Scope::PrivacyExport,
        Scope::PrivacyErase,
        Scope::AdminBackup,
    ];

    /// Its name in configuration (`profile:read`).
    pub fn name(self) -> &'static str {
        match self {
            Scope::ProfileRead => "profile:read",
            Scope::ProfileWrite => "profile:write",
            Scope::IdentityResolve => "identity:resolve",
            Scope::IdentityMerge => "identity:merge",
            Scope::InteractionRead => "interaction:read",
            Scope::InteractionWrite => "interaction:write",
            Scope::ConsentRead => "consent:read",
            Scope::ConsentWrite => "consent:write",
            Scope::ContactCheck => "contact:check",
            Scope::SegmentRead => "segment:read",
            Scope::ChangesRead => "changes:read",
            Scope::PrivacyExport => "privacy:export",
            Scope::PrivacyErase => "privacy:erase",
            Scope::AdminBackup => "admin:backup",
        }
    }

    /// Parses a configured name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a method requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (health checks for probes).
    Public,
    /// Any authenticated principal (server reflection: the schema, no data).
    Authenticated,
    /// A principal holding this scope.
    Scope(Scope),
}

/// The one table of method → access. A method missing here is refused (deny by default); a
/// test checks that every RPC of every service in the descriptor set has an entry.
pub fn required_access(path: &str) -> Option<Access> {
    use Scope::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let scope = match (service, method) {
        ("grpc.health.v1.Health", _) => return Some(Access::Public),
        ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => return Some(Access::Authenticated),
        ("customer_profile.v1.IdentityService", m) => match m {
            "Resolve" | "LookupProfileIds" | "LinkIdentifier" | "UnlinkIdentifier" => {
                IdentityResolve
            }
            "MergeProfiles" | "UnmergeProfiles" => IdentityMerge,
            "ListMerges" => ProfileRead,
            _ => return None,
        },
        ("customer_profile.v1.ProfileService", m) => match m {
            "GetProfile" | "BatchGetProfiles" | "GetProfileHistory" => ProfileRead,
            "UpdateProfile" => ProfileWrite,
            "SearchProfiles" | "CountProfiles" => SegmentRead,
            "WatchChanges" => ChangesRead,
            _ => return None,
        },
        ("customer_profile.v1.InteractionService", m) => match m {
            "RecordInteraction" | "RecordInteractions" => InteractionWrite,
            "ListInteractions" => InteractionRead,
            _ => return None,
        },
        ("customer_profile.v1.ConsentService", m) => match m {
            "RecordConsent" | "SetPreferences" => ConsentWrite,
            "GetConsents" => ConsentRead,
            _ => return None,
        },
        ("customer_profile.v1.ContactService", "CheckContact") => ContactCheck,
        ("customer_profile.v1.AdminService", "Backup") => AdminBackup,
        ("customer_profile.v1.PrivacyService", m) => match m {
            "ExportCustomer" => PrivacyExport,
            "EraseCustomer" => PrivacyErase,
            _ => return None,
        },
        _ => return None,
    };
    Some(Access::Scope(scope))
}

/// Which fields a principal may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldAccess {
    /// Every field group.
    All,
    /// Only these groups.
    Groups(BTreeSet<String>),
}

impl FieldAccess {
    /// Whether `group` is readable.
    pub fn allows(&self, group: &str) -> bool {
        match self {
            FieldAccess::All => true,
            FieldAccess::Groups(g) => g.contains(group),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name (logged and audited; never a secret).
    pub name: String,
    /// Its department; recorded on the interactions it writes.
    pub department: Option<String>,
    /// What it may call.
    pub scopes: BTreeSet<Scope>,
    /// What it may read.
    pub fields: FieldAccess,
    /// The purpose it is bound to, if any.
    pub purpose: Option<Purpose>,
    /// The local-development principal (no auth configured, loopback only).
    pub local: bool,
}

impl Principal {
    /// The principal of an unauthenticated local-development server: every scope, every field.
    pub fn local() -> Principal {
        Principal {
            name: "local".into(),
            department: None,
            scopes: Scope::ALL.into_iter().collect(),
            fields: FieldAccess::All,
            purpose: None,
            local: true,
        }
    }

    /// Whether it holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}
