//! Typed ids: a profile, an interaction and a merge are never passed around as a bare Uuid.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::time::Timestamp;
use crate::error::{Error, Result};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id for an entity created at `now`.
            pub fn new_at(now: Timestamp) -> Self {
                $name(new_v7(now))
            }

            /// Parses the textual form; the error names `field`.
            pub fn parse(field: &str, text: &str) -> Result<Self> {
                Uuid::try_parse(text.trim()).map($name).map_err(|_| {
                    Error::invalid(
                        field,
                        format!(
                            concat!("not a valid ", $what, " id (a UUID such as 0192f3a4-5b6c-7d8e-9f00-112233445566): {:?}"),
                            text
                        ),
                    )
                })
            }

            /// The 16 bytes used in storage keys.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// From the 16 bytes of a storage key.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A customer profile.
    ProfileId,
    "profile"
);
uuid_id!(
    /// One recorded interaction.
    InteractionId,
    "interaction"
);
uuid_id!(
    /// One merge of an absorbed profile into a survivor.
    MergeId,
    "merge"
);

uuid_id!(
    /// One consent record.
    ConsentId,
    "consent"
);

fn new_v7(now: Timestamp) -> Uuid {
    let micros = now.0.max(0);
    let secs = (micros / Timestamp::MICROS_PER_SEC) as u64;
    let nanos = ((micros % Timestamp::MICROS_PER_SEC) * 1_000) as u32;
    Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos))
}

/// A client's idempotency key: 1 to 128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Longest accepted key.
    pub const MAX_LEN: usize = 128;

    /// `None` for an empty key (no idempotency asked for).
    pub fn parse_optional(field: &str, text: &str) -> Result<Option<Self>> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                field,
                format!("at most {} characters, got {}", Self::MAX_LEN, text.len()),
            ));
        }
        if !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(Error::invalid(
                field,
                "only printable ASCII without spaces is allowed (use a UUID)",
            ));
        }
        Ok(Some(RequestId(text.to_string())))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
