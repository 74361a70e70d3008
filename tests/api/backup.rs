//! Online backup while a writer runs, offline restore into an empty directory: the restored
//! server holds every write acknowledged before the backup began; a flipped byte is refused.

use std::path::Path;
use std::sync::{Arc, Mutex};

use customer_profile::service::pb;

use crate::helpers::*;

fn key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([5u8; 32])
}

fn run(args: &[&str], paths: &[&Path]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"));
    cmd.args(args);
    for p in paths {
        cmd.arg(p);
    }
    cmd.env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_writing_then_restore_holds_every_acknowledged_write() {
    let app = TestApp::spawn_with(|c| c.encryption.master_key = Some(key())).await;
    let p = app.create(vec![email("backup.person@example.com")]).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, stop, p) = (
            app.interactions.clone(),
            acked.clone(),
            stop.clone(),
            p.clone(),
        );
        tokio::spawn(async move {
            let mut client = client;
            for i in 0..2_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let r = client
                    .record_interaction(pb::RecordInteractionRequest {
                        profile: Some(by_id(&p)),
                        interaction: Some(interaction(
                            pb::Channel::Web,
                            pb::Direction::Inbound,
                            "web",
                            "visit",
                        )),
                        request_id: format!("w-{i}"),
                    })
                    .await
                    .expect("write");
                let id = r
                    .into_inner()
                    .interaction
                    .expect("interaction")
                    .interaction_id;
                acked.lock().expect("lock").push(id);
            }
        })
    };
    while acked.lock().expect("lock").len() < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: Vec<String> = acked.lock().expect("lock").clone();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("cp.backup");
    let server = format!("http://{}", app.addr);
    let out = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            run(&["backup", "--server", &server, "--out"], &[&file])
        })
        .await
        .expect("backup task")
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = acked.lock().expect("lock").len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer");
    assert!(
        during > before.len(),
        "the writer kept writing during the backup"
    );

    // Restore into an empty directory and serve from it with the same master key.
    let restored = dir.path().join("restored");
    let out = run(&["restore", "--from"], &[&file]);
    assert!(!out.status.success(), "restore needs --data-dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut config = customer_profile::server::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: restored.clone(),
        ..Default::default()
    };
    config.encryption.master_key = Some(key());
    config.metrics.enabled = false;
    let server = customer_profile::server::startup::Application::build(
        config,
        Arc::new(customer_profile::domain::time::ManualClock::new(START)),
    )
    .await
    .expect("serve the restored directory")
    .spawn();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = pb::interaction_service_client::InteractionServiceClient::new(ch);
    let mut have = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_interactions(pb::ListInteractionsRequest {
                profile: Some(by_ident(email("backup.person@example.com"))),
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        have.extend(page.interactions.into_iter().map(|i| i.interaction_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    for id in &before {
        assert!(
            have.contains(id),
            "acknowledged before the backup began, missing after restore: {id}"
        );
    }
    server.stop().await.expect("stop");

    // A flipped byte is refused, and nothing is written.
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).expect("write");
    let target = dir.path().join("from-damaged");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args(["restore", "--from"])
        .arg(&damaged)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .expect("restore");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checksum"), "{err}");
    assert!(!target.exists(), "nothing was written");
    // A non-empty directory is refused too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args(["restore", "--from"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("restore");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}
