//! customer-profile: the company's single source of truth about its customers, as a gRPC
//! service. See ARCHITECTURE.md for the bird's-eye view.

pub mod audit;
pub mod auth;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod import;
pub mod server;
pub mod service;
pub mod store;
