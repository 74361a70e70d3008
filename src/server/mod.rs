//! Running the service: configuration, startup, telemetry.

pub mod config;
pub mod limits;
pub mod metrics;
pub mod runtime;
pub mod startup;
pub mod telemetry;
