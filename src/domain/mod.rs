//! The rules of the service: identifiers, resolution, merge trees, attributes, interactions.
//! Pure Rust: no tokio, tonic, prost or sled; time is a parameter, storage a trait (`ports`).

pub mod attributes;
pub mod identifier;
pub mod identity;
pub mod ids;
pub mod interaction;
pub mod policy;
pub mod ports;
pub mod profile;
pub mod profiles;
pub mod time;
pub mod timeline;
