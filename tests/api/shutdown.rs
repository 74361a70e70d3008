//! Graceful shutdown of the real binary: SIGTERM while 50 calls are in flight — every call
//! completes OK, health turns NOT_SERVING before the listener closes, the process exits 0, and
//! a restart finds every acknowledged write.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use customer_profile::service::pb;
use pb::identity_service_client::IdentityServiceClient;
use pb::interaction_service_client::InteractionServiceClient;
use pb::profile_service_client::ProfileServiceClient;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

struct Server {
    child: Child,
    port: u16,
    metrics_port: u16,
}

impl Drop for Server {
    /// A failed test never leaves a server running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(dir: &std::path::Path) -> Server {
    let (port, metrics_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env(
            "CUSTOMER_PROFILE_METRICS__LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("CUSTOMER_PROFILE_SHUTDOWN__DRAIN_DELAY_MS", "200")
        // Fifty heavy batches at once on a debug build hold the runtime for long stretches;
        // this test is about draining, so queue-time shedding must not refuse them.
        .env("CUSTOMER_PROFILE_LIMITS__QUEUE_TARGET_MS", "60000")
        .env("CUSTOMER_PROFILE_LIMITS__QUEUE_INTERVAL_MS", "60000")
        // 10,000 serialized interaction writes drain in a few seconds on a quiet machine but
        // took over the default 20 s grace on a loaded 2-core one (the calls were then cut off
        // by design); this test is about draining, so give it room.
        .env("CUSTOMER_PROFILE_SHUTDOWN__GRACE_SECS", "180")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the binary");
    Server {
        child,
        port,
        metrics_port,
    }
}

async fn connect(port: u16) -> GrpcChannel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ep = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("endpoint");
        match ep.connect().await {
            Ok(ch) => return ch,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the server did not come up: {e}"),
        }
    }
}

async fn in_flight(metrics_port: u16) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await else {
        return 0.0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines()
        .find(|l| l.starts_with("grpc_requests_in_flight"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

const CALLS: usize = 50;
const PER_CALL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_fifty_in_flight_calls_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(dir.path());
    let ch = connect(server.port).await;
    let profile = IdentityServiceClient::new(ch.clone())
        .resolve(pb::ResolveRequest {
            identifiers: vec![email("drain@example.com")],
            create_if_missing: true,
            source: "test".into(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner()
        .profile_id;
    let mut health = HealthClient::new(ch.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch health")
        .into_inner();
    let first = health.message().await.expect("health").expect("status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let mut calls = Vec::new();
    for c in 0..CALLS {
        let mut client = InteractionServiceClient::new(ch.clone());
        let profile = profile.clone();
        calls.push(tokio::spawn(async move {
            let requests = (0..PER_CALL)
                .map(|i| pb::RecordInteractionRequest {
                    profile: Some(by_id(&profile)),
                    interaction: Some(interaction(
                        pb::Channel::Web,
                        pb::Direction::Inbound,
                        "web",
                        "visit",
                    )),
                    request_id: format!("drain-{c}-{i}"),
                })
                .collect();
            client
                .record_interactions(pb::RecordInteractionsRequest { requests })
                .await
                .map(|r| r.into_inner().responses.len())
        }));
    }
    // SIGTERM while the calls are in flight: the server's own gauge shows most of them being
    // served (each batch is a serialized 500-entry write, so they cannot all be counted at
    // one instant); the rest are already on the wire, and every one must complete OK.
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_flight(server.metrics_port).await < (CALLS * 3 / 5) as f64 {
        assert!(Instant::now() < deadline, "the calls never were in flight");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    terminate(&server.child);

    // Health says NOT_SERVING before the server goes away.
    let next = tokio::time::timeout(Duration::from_secs(30), health.message())
        .await
        .expect("health update in time")
        .expect("health stream still open")
        .expect("a status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    // A health Watch stream stays open until the client ends it (or the shutdown grace ends
    // it); this client is done watching.
    drop(health);

    for call in calls {
        let n = call
            .await
            .expect("task")
            .expect("every in-flight call completes OK");
        assert_eq!(n, PER_CALL);
    }
    let status = wait_exit(&mut server.child);
    assert_eq!(status.code(), Some(0), "exit status");

    // A restart finds every acknowledged write.
    let mut again = start(dir.path());
    let ch = connect(again.port).await;
    let p = ProfileServiceClient::new(ch)
        .get_profile(pb::GetProfileRequest {
            profile: Some(by_id(&profile)),
            read_mask: mask(&["summary"]),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .profile
        .expect("profile");
    assert_eq!(
        p.summary.expect("summary").interaction_count,
        (CALLS * PER_CALL) as u64
    );
    terminate(&again.child);
    assert_eq!(wait_exit(&mut again.child).code(), Some(0));
}
