//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a small OTLP collector run by
//! the test, a call carrying a W3C `traceparent` produces a span in that trace.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use customer_profile::service::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::metadata::MetadataValue;

use crate::helpers::*;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().expect("lock").push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_continues_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().expect("dir");
    let (port, metrics) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env(
            "CUSTOMER_PROFILE_METRICS__LISTEN",
            format!("127.0.0.1:{metrics}"),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let ch = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(ch) => break ch,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server did not start: {e}"),
        }
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::ResolveRequest {
        identifiers: vec![email("traced@example.com")],
        create_if_missing: true,
        source: "test".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b7-01")).expect("header"),
    );
    pb::identity_service_client::IdentityServiceClient::new(ch)
        .resolve(req)
        .await
        .expect("resolve");
    // A clean stop exports whatever is buffered.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _guard = Kill(child);
    let want = hex::decode(trace_id).expect("hex");
    let spans: Vec<(Vec<u8>, String)> = collector
        .0
        .lock()
        .expect("lock")
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| (s.trace_id.clone(), s.name.clone()))
        .collect();
    assert!(
        spans.iter().any(|(t, name)| *t == want && name == "grpc"),
        "no span of trace {trace_id} among {spans:?}"
    );
    server.abort();
}
