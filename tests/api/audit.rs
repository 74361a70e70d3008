//! The audit log: one entry per call of the public contract, with the principal, method,
//! profile ids and outcome and no personal values; the hash chain verifies, and a flipped byte
//! is found and named — by the library and by `customer-profile audit-verify`.

use customer_profile::audit::{self, Stored, Verdict};

use customer_profile::service::pb;

use crate::helpers::*;

fn entries(app: &TestApp) -> Vec<Stored> {
    let text = std::fs::read_to_string(audit::log_path(app.data_dir())).expect("audit log");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("entry"))
        .collect()
}

#[tokio::test]
async fn every_access_is_one_chained_entry_without_personal_values() {
    let mut app = TestApp::spawn().await;
    let p = app.create(vec![email("audited.person@example.com")]).await;
    let _ = app.get(by_id(&p)).await;
    let _ = app.get(by_ident(email("audited.person@example.com"))).await;
    let missing = app.try_get(by_ident(email("nobody@example.com"))).await;
    assert!(missing.is_err());
    // Twice: the second reply is sent from the bytes the first kept; both name the profile.
    for _ in 0..2 {
        app.profiles
            .clone()
            .batch_get_profiles(pb::BatchGetProfilesRequest {
                profiles: vec![by_id(&p), by_ident(email("nobody@example.com"))],
                read_mask: None,
            })
            .await
            .expect("BatchGetProfiles");
    }
    app.stop().await;

    let log = entries(&app);
    let methods: Vec<&str> = log.iter().map(|e| e.entry.method.as_str()).collect();
    assert_eq!(
        methods,
        vec![
            "/customer_profile.v1.IdentityService/Resolve",
            "/customer_profile.v1.ProfileService/GetProfile",
            "/customer_profile.v1.ProfileService/GetProfile",
            "/customer_profile.v1.ProfileService/GetProfile",
            "/customer_profile.v1.ProfileService/BatchGetProfiles",
            "/customer_profile.v1.ProfileService/BatchGetProfiles",
        ]
    );
    assert_eq!(log[4].entry.profiles, vec![p.clone()]);
    assert_eq!(log[5].entry.profiles, vec![p.clone()]);
    assert_eq!(log[0].entry.profiles, vec![p.clone()]);
    assert_eq!(log[1].entry.profiles, vec![p.clone()]);
    assert_eq!(log[2].entry.profiles, vec![p.clone()]);
    assert_eq!(log[3].entry.outcome, "NOT_FOUND");
    assert_eq!(log[0].entry.outcome, "OK");
    assert!(log.iter().all(|e| e.entry.principal == "local"));
    let raw = std::fs::read_to_string(audit::log_path(app.data_dir())).expect("log");
    assert!(
        !raw.contains("audited.person"),
        "no personal values in the audit log"
    );
    assert_eq!(
        audit::verify(&audit::log_path(app.data_dir())).expect("verify"),
        Verdict::Intact {
            entries: 6,
            first_seq: 1
        }
    );

    // The chain continues across a restart.
    app.restart().await;
    let _ = app.get(by_id(&p)).await;
    app.stop().await;
    assert_eq!(
        audit::verify(&audit::log_path(app.data_dir())).expect("verify"),
        Verdict::Intact {
            entries: 7,
            first_seq: 1
        }
    );
}

#[tokio::test]
async fn a_flipped_byte_is_found_and_named() {
    let mut app = TestApp::spawn().await;
    let p = app.create(vec![email("flip@example.com")]).await;
    for _ in 0..3 {
        let _ = app.get(by_id(&p)).await;
    }
    app.stop().await;
    let path = audit::log_path(app.data_dir());
    let bin = env!("CARGO_BIN_EXE_customer-profile");
    let ok = std::process::Command::new(bin)
        .args(["audit-verify", "--data-dir"])
        .arg(app.data_dir())
        .output()
        .expect("run audit-verify");
    assert!(ok.status.success(), "{ok:?}");

    // Change one byte of the third entry's principal name.
    let mut bytes = std::fs::read(&path).expect("log");
    let third_start = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("three lines");
    let at = third_start
        + bytes[third_start..]
            .windows(7)
            .position(|w| w == b"\"local\"")
            .expect("principal field")
        + 1;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    match audit::verify(&path).expect("verify") {
        Verdict::Broken { line, reason, .. } => {
            assert_eq!(line, 3, "{reason}");
            assert!(reason.contains("entry 3"), "{reason}");
        }
        other => panic!("a changed entry went unnoticed: {other:?}"),
    }
    let out = std::process::Command::new(bin)
        .args(["audit-verify", "--data-dir"])
        .arg(app.data_dir())
        .output()
        .expect("run audit-verify");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("line 3") && text.contains("entry 3"),
        "{text}"
    );
}

/// A server whose audit log passes `audit.rotate_mb` closes the file and goes on in a new one,
/// keeps `audit.keep_files` closed files, and `audit-verify` checks the chain across the files
/// kept: every call of the run from the oldest kept entry on, each exactly once.
#[tokio::test]
async fn the_audit_log_rotates_keeps_the_newest_files_and_verifies_across_them() {
    let mut app = TestApp::spawn_with(|c| {
        c.audit.rotate_mb = 1;
        c.audit.keep_files = 2;
    })
    .await;
    // Entries naming 50 profiles are about 2 KiB: a file fills in about 500 calls.
    let mut refs = Vec::new();
    for i in 0..50 {
        let p = app
            .create(vec![email(&format!("rotated{i}@example.com"))])
            .await;
        refs.push(by_id(&p));
    }
    let calls = 2_000;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = app.profiles.clone();
        let refs = refs.clone();
        tasks.spawn(async move {
            for _ in 0..calls / 8 {
                client
                    .batch_get_profiles(pb::BatchGetProfilesRequest {
                        profiles: refs.clone(),
                        read_mask: None,
                    })
                    .await
                    .expect("BatchGetProfiles");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller");
    }
    app.stop().await;

    let active = audit::log_path(app.data_dir());
    let rotated = audit::rotated_files(&active).expect("list");
    assert_eq!(rotated.len(), 2, "keep_files closed files: {rotated:?}");
    for (_, file) in &rotated {
        let len = std::fs::metadata(file).expect("closed file").len();
        assert!(len >= 1024 * 1024, "a closed file is full: {len} bytes");
    }
    let total = 50 + calls as u64;
    match audit::verify(&active).expect("verify") {
        Verdict::Intact { entries, first_seq } => {
            assert!(first_seq > 1, "older files were deleted");
            assert_eq!(first_seq, rotated[0].0);
            assert_eq!(first_seq - 1 + entries, total, "every call once, none lost");
        }
        broken => panic!("{broken:?}"),
    }
    let bin = env!("CARGO_BIN_EXE_customer-profile");
    let out = std::process::Command::new(bin)
        .args(["audit-verify", "--data-dir"])
        .arg(app.data_dir())
        .output()
        .expect("run audit-verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("is intact"), "{text}");
    assert!(text.contains("3 files (2 of them rotated)"), "{text}");
    assert!(text.contains("since deleted"), "{text}");
}
