//! The tokio runtime every binary of the project runs on (the server, and the benchmark's
//! echo baseline and load generator, so that they compare like with like).
//!
//! One setting differs from tokio's defaults: the LIFO slot is off (when the build has
//! `--cfg tokio_unstable`, as `.cargo/config.toml` sets). With the slot, a task woken by the
//! task that is running runs right after it. In hyper that is the HTTP/2 connection task, woken
//! by every finished call: it ran after each call and wrote each reply with its own `writev`,
//! about one system call and one loopback TCP segment per call. Without the slot the
//! connection task waits its turn in the run queue, the calls ready by then finish first, and
//! one `writev` carries all their replies. Measured on the benchmark machine (server on one
//! core, 64 callers, 4 connections): GetProfile 12,108 -> 18,705 calls/s, Resolve 35,318 ->
//! 48,209; in a flood of 50,000 calls/s, 49,000 -> 20,000 `writev` a second.

use tokio::runtime::{Builder, Runtime};

/// A multi-thread runtime with I/O and timers, and without the LIFO slot where the build
/// allows turning it off.
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Whether this build turns the LIFO slot off (in the start-up log line "serving gRPC").
pub const LIFO_SLOT_DISABLED: bool = cfg!(tokio_unstable);
