//! The rules of the service: identifiers, resolution, merge trees, attributes, interactions,
//! consent, contact policy, summaries and segments.
//! Pure Rust: no tokio, tonic, prost or sled; time is a parameter, storage a trait (`ports`).

pub mod attributes;
pub mod consent;
pub mod contact;
pub mod identifier;
pub mod identity;
pub mod ids;
pub mod interaction;
pub mod policy;
pub mod ports;
pub mod privacy;
pub mod profile;
pub mod profiles;
pub mod rules;
pub mod segments;
pub mod summary;
pub mod time;
pub mod timeline;
pub mod tree;
pub mod view_cache;
