//! The one error type every layer returns; `service::status` maps each variant to a gRPC code.
//!
//! One enum rather than one per layer: every error a caller can cause must reach the edge with
//! its precise code, and a single `match` without a catch-all arm in `service::status` makes
//! the compiler demand a code for every new variant.

/// A field of the request that is wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `identifiers[2].value`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub description: String,
}

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was written.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The named profile, merge or other entity does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The customer was erased; only the tombstone of its profile id remains.
    #[error("{0}")]
    Erased(String),
    /// Optimistic concurrency failed (`expected_version` mismatch); nothing was written.
    #[error("{0}")]
    Aborted(String),
    /// A policy refuses the request; `reason` is a stable UPPER_SNAKE code for machines.
    #[error("{message}")]
    FailedPrecondition {
        /// Stable machine-readable reason (google.rpc.ErrorInfo reason).
        reason: &'static str,
        /// Human explanation.
        message: String,
    },
    /// The caller's principal may not see or do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A position (sequence, page) outside what is retained.
    #[error("{0}")]
    OutOfRange(String),
    /// The store cannot serve the request right now (I/O error, storage fault).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes failed to decode: never served as data.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// One field violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// Prefixes every violated field with `prefix` (`identifiers[3]` + `value`), so nested
    /// parsers can report paths relative to themselves.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument(vs) => Error::InvalidArgument(
                vs.into_iter()
                    .map(|v| FieldViolation {
                        field: if v.field.is_empty() {
                            prefix.to_string()
                        } else if v.field.starts_with('[') {
                            format!("{prefix}{}", v.field)
                        } else {
                            format!("{prefix}.{}", v.field)
                        },
                        description: v.description,
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// A policy refusal.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
