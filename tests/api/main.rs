//! Integration tests of the gRPC API: every test starts its own server on 127.0.0.1:0 with its
//! own temporary data directory and a manual clock, and talks to it through the generated
//! clients, exactly as a department's backend would.
//!
//! Acceptance items (issue 3) and where they are covered:
//! 1. resolution outcomes, customer numbers, blocked values, caps ........ `identity`
//! 2. 50 concurrent Resolve calls sharing one email ....................... `concurrency`
//! 3. merge A+B, merge C, unmerge the first; the reference model ........... `merge`, `merge_model`
//! 4. reads by every key, read_mask, BatchGetProfiles of 1000 keys ........ `profiles`
//! 5. recent supersedes older, history, expected_version ................. `updates`
//! 6. idempotent interactions, paging through 1,200 ...................... `interactions`
//! 7. WatchChanges replay, live follow, resume, retention ................ `changes`
//! 8. invalid input names the field and writes nothing ................... `validation`
//! 9. restart on the same data directory keeps everything ................ `restart`
//!
//! Acceptance items (issue 4, customer rules; harness in `rules_helpers`):
//! 1, 6. consent expiry, default and maximum lifetimes, merge conflict, unmerge ... `consent`
//! 2–5. caps, concurrent reservations, open cases, duplicates, reasons ........... `contact`
//! 7. summary and decayed scores through late events, merge and unmerge ......... `summary`
//! 8, 9. segment search on 10,000 generated profiles, clauses, invalid filters .. `segments`
//!
//! Issue 8 (reliability), acceptance 1: SIGKILL at random moments loses no acknowledged write,
//! invariants hold, the feed has no gaps (`CRASH_CYCLES`, `CRASH_SEED`) ...... `crash`

// Test code: a failed expectation is a test failure, which is what unwrap/expect/panic report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_model;
mod audit;
mod auth;
mod backup;
mod changes;
mod concurrency;
mod consent;
mod contact;
mod crash;
mod encryption;
mod faults;
mod fuzz_corpus;
mod helpers;
mod identity;
mod import;
mod interactions;
mod limits;
mod merge;
mod merge_model;
mod metrics;
mod privacy;
mod profiles;
mod restart;
mod rules_helpers;
mod segments;
mod shutdown;
mod summary;
mod tls;
mod tracing;
mod updates;
mod validation;
