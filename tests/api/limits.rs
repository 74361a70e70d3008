//! Overload protection and limits (issue 8): calls beyond `max_in_flight` are refused at once
//! with RESOURCE_EXHAUSTED (health is never refused), per-principal rate limits, a change-stream
//! consumer that stops reading is cut off while a reading one keeps going, message and list
//! size limits, a write cut off by its deadline writes nothing and is safely retried, and an
//! admitted call that waited too long for a CPU is refused unstarted.

use std::sync::Arc;
use std::time::Duration;

use customer_profile::auth::{Scope, tokens};
use customer_profile::domain::time::ManualClock;
use customer_profile::server::config::{Config, PrincipalConfig};
use customer_profile::server::limits::RateLimit;
use customer_profile::server::startup::{Application, RunningServer};
use customer_profile::service::pb;
use customer_profile::store::{SledStore, Store};
use pb::identity_service_client::IdentityServiceClient;
use pb::interaction_service_client::InteractionServiceClient;
use pb::profile_service_client::ProfileServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel as GrpcChannel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::helpers::*;

/// A server built by hand, so the test can reach its store (to hold the write gate).
struct Server {
    store: Arc<SledStore>,
    channel: GrpcChannel,
    metrics: std::net::SocketAddr,
    addr: std::net::SocketAddr,
    running: Option<RunningServer>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.metrics.listen = "127.0.0.1:0".parse().expect("addr");
        // The server shares this test's thread, which stalls on its own work (decoding 4 MiB
        // in a debug build takes a second): not overload, so queue-time shedding is lenient
        // unless a test sets it.
        config.limits.queue_target_ms = 5_000;
        config.limits.queue_interval_ms = 10_000;
        configure(&mut config);
        let app = Application::build(config, Arc::new(ManualClock::new(START)))
            .await
            .expect("build");
        let store = app.store();
        let running = app.spawn();
        let metrics = running.metrics_addr().expect("metrics enabled");
        let addr = running.local_addr();
        let channel = Endpoint::from_shared(format!("http://{}", running.local_addr()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Server {
            store,
            channel,
            metrics,
            addr,
            running: Some(running),
            _dir: dir,
        }
    }

    fn identity(&self) -> IdentityServiceClient<GrpcChannel> {
        IdentityServiceClient::new(self.channel.clone())
    }

    fn profiles(&self) -> ProfileServiceClient<GrpcChannel> {
        ProfileServiceClient::new(self.channel.clone())
    }

    /// `n` lookups sent at once (of `tag-i@example.com`), their outcomes.
    async fn burst(
        &self,
        tag: &str,
        n: usize,
    ) -> Vec<Result<tonic::Response<pb::LookupProfileIdsResponse>, tonic::Status>> {
        let calls = (0..n).map(|i| {
            let mut identity = self.identity();
            let req = lookup_req(&format!("{tag}-{i}@example.com"));
            async move { identity.lookup_profile_ids(req).await }
        });
        futures::future::join_all(calls).await
    }

    fn interactions(&self) -> InteractionServiceClient<GrpcChannel> {
        InteractionServiceClient::new(self.channel.clone())
    }

    async fn scrape(&self) -> String {
        scrape_metrics(self.metrics).await
    }

    async fn stop(self) {
        // The test's handle on the store goes first: stopping waits (up to 30 s) for the last
        // one before it closes the store.
        let Server { store, running, .. } = self;
        drop(store);
        if let Some(r) = running {
            r.stop().await.expect("graceful stop");
        }
    }
}

fn resolve_req(value: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        identifiers: vec![email(value)],
        create_if_missing: true,
        source: "test".into(),
        ..Default::default()
    }
}

fn lookup_req(value: &str) -> pb::LookupProfileIdsRequest {
    pb::LookupProfileIdsRequest {
        identifiers: vec![email(value)],
    }
}

/// The value of a counter sample line starting with `prefix`, 0 when absent.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn calls_beyond_max_in_flight_are_refused_at_once_and_served_again_after() {
    let server = Server::start(|c| c.limits.max_in_flight = 2).await;
    // Two writes queue at the held write gate and keep both slots.
    let gate = server.store.write_gate().lock().await;
    let mut writers = Vec::new();
    for i in 0..2 {
        let mut identity = server.identity();
        writers.push(tokio::spawn(async move {
            identity
                .resolve(resolve_req(&format!("held{i}@example.com")))
                .await
        }));
    }
    // Both must hold their slots before the probing starts: a probing call admitted at the
    // same moment would take a slot for its own turn and crowd a writer out.
    for _ in 0..2000 {
        let metrics = server.scrape().await;
        if sample(&metrics, "grpc_requests_in_flight") >= 2.0 {
            break;
        }
        // A hang guard, not a timing check.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut identity = server.identity();
    let mut refused = None;
    for _ in 0..2000 {
        if let Err(s) = identity
            .lookup_profile_ids(lookup_req("x@example.com"))
            .await
        {
            refused = Some(s);
            break;
        }
        // Waits for the two writers to reach the gate (a hang guard, not a timing check).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = refused.expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_in_flight"), "{status:?}");
    assert!(status.message().contains("back off"), "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|e| e.reason.as_str()),
        Some("OVERLOADED")
    );
    assert!(details.retry_info().and_then(|r| r.retry_delay).is_some());
    // Still full: every further call is refused, but health is never shed.
    for _ in 0..5 {
        let err = identity
            .lookup_profile_ids(lookup_req("y@example.com"))
            .await
            .expect_err("full");
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is served while full")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    drop(gate);
    for w in writers {
        let r = w.await.expect("task").expect("held writes complete");
        assert!(!r.into_inner().profile_id.is_empty());
    }
    identity
        .lookup_profile_ids(lookup_req("held0@example.com"))
        .await
        .expect("served again once the slots are free");
    let metrics = server.scrape().await;
    assert!(
        sample(&metrics, "grpc_requests_shed_total{reason=\"in_flight\"}") >= 6.0,
        "{metrics}"
    );
    server.stop().await;
}

/// A burst of reads that each finish without waiting (no lock, no I/O) is still bounded by
/// `max_in_flight`: admission happens as each call's task first runs, and the admitted work
/// waits one turn of the run queue, so a burst queued as tasks is sorted into admitted and
/// refused before the admitted work runs. Without that turn each read would run to the end in
/// its first poll, `max_in_flight` would only ever count one call, and a flood would queue
/// as tasks the limits never see.
#[tokio::test]
async fn a_burst_of_quick_reads_beyond_max_in_flight_is_refused_not_queued() {
    let server = Server::start(|c| c.limits.max_in_flight = 1).await;
    let mut refused = 0;
    let mut served = 0;
    // Bounded: a few bursts are plenty; the first usually shows it.
    for round in 0..20 {
        for r in server.burst(&format!("burst{round}"), 200).await {
            match r {
                Ok(_) => served += 1,
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                    assert!(s.message().contains("max_in_flight"), "{s:?}");
                    refused += 1;
                }
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "no call of the bursts was refused ({served} served)"
    );
    assert!(served > 0, "every call was refused");
    server.stop().await;
}

/// The in-flight limit follows the load: bursts that reach it while the admitted calls wait
/// for a CPU longer than `in_flight_wait_us` shrink it towards `min_in_flight` (the gauge
/// `grpc_in_flight_limit` says where it is; refusals name the keys), and once the bursts stop
/// it grows back to `max_in_flight`.
#[tokio::test]
async fn the_in_flight_limit_shrinks_under_bursts_that_wait_and_grows_back_after() {
    let server = Server::start(|c| {
        c.limits.max_in_flight = 64;
        c.limits.min_in_flight = 2;
        // Every admitted call waits longer than this: a burst that reaches the limit shrinks it.
        c.limits.in_flight_wait_us = 1;
    })
    .await;
    let limit = |text: &str| sample(text, "grpc_in_flight_limit");
    let mut lowest = f64::MAX;
    let mut refused = 0;
    // Bounded: each round is a burst of 300 lookups, then a look at the gauge.
    for round in 0..100 {
        for r in server.burst(&format!("adapt{round}"), 300).await {
            if let Err(s) = r {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("limits.min_in_flight")
                        && s.message().contains("limits.in_flight_wait_us"),
                    "{s:?}"
                );
                refused += 1;
            }
        }
        lowest = lowest.min(limit(&server.scrape().await));
        if lowest <= 8.0 {
            break;
        }
    }
    assert!(refused > 0, "no call was refused");
    assert!(lowest <= 8.0, "the limit stayed at {lowest} (max 64)");
    // Idle: each 50 ms window grows it by an eighth, back to the maximum in about two seconds.
    let mut now = lowest;
    for _ in 0..200 {
        now = limit(&server.scrape().await);
        if now == 64.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, 64.0, "the limit did not grow back");
    server.stop().await;
}

/// A refusal does not answer before the client has sent its whole request: answering first
/// ends the HTTP/2 stream with RST_STREAM, and a client drops its connection (with every call
/// on it) after 1,024 of those, which a flood of refusals reaches in seconds. A raw HTTP/2
/// client sends a refused call's headers, then its message a little later: the message is
/// still accepted (the stream was not reset) and the answer is the refusal.
#[tokio::test]
async fn a_refused_call_is_answered_after_its_request_and_its_stream_is_not_reset() {
    let server = Server::start(|c| {
        // One call, then nothing for hours: the next call is refused by the rate limit.
        c.limits.rate_limits.insert(
            "local".into(),
            RateLimit {
                per_second: 0.0001,
                burst: 1,
            },
        );
    })
    .await;
    server
        .identity()
        .lookup_profile_ids(lookup_req("first@example.com"))
        .await
        .expect("the burst allows one call");
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/customer_profile.v1.IdentityService/LookupProfileIds",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send headers");
    // The message follows the headers a moment later, as under load it often does.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let message = prost::Message::encode_to_vec(&lookup_req("second@example.com"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(frame.into(), true)
        .expect("the stream is still open: the refusal waited for the request");
    let response = response.await.expect("response");
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"8"[..]),
        "RESOURCE_EXHAUSTED: {:?}",
        response.headers()
    );
    // Nothing reset the stream: the server read the whole request before answering.
    let reset = std::future::poll_fn(|cx| match body.poll_reset(cx) {
        std::task::Poll::Pending => std::task::Poll::Ready(None),
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
    })
    .await;
    assert!(
        !matches!(reset, Some(Ok(_))),
        "the server reset the stream: {reset:?}"
    );
    server.stop().await;
}

fn principal(name: &str, token_hash: String) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        department: None,
        scopes: vec![Scope::IdentityResolve.name().into()],
        field_groups: vec!["*".into()],
        purpose: None,
        token_sha256: vec![token_hash],
        client_cert_names: vec![],
    }
}

fn as_token<T>(token: &str, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("header"),
    );
    req
}

#[tokio::test]
async fn a_rate_limited_principal_is_refused_beyond_its_burst_while_another_is_not() {
    let (limited, limited_hash) = tokens::generate().expect("token");
    let (free, free_hash) = tokens::generate().expect("token");
    let server = Server::start(move |c| {
        c.auth.principals = vec![
            principal("limited", limited_hash),
            principal("free", free_hash),
        ];
        // A refill of one call per ~3 hours: nothing refills during the test.
        c.limits.rate_limits.insert(
            "limited".into(),
            RateLimit {
                per_second: 0.0001,
                burst: 3,
            },
        );
    })
    .await;
    let mut identity = server.identity();
    for _ in 0..3 {
        identity
            .lookup_profile_ids(as_token(&limited, lookup_req("a@example.com")))
            .await
            .expect("within the burst");
    }
    let err = identity
        .lookup_profile_ids(as_token(&limited, lookup_req("a@example.com")))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("\"limited\""), "{err:?}");
    let details = err.get_error_details();
    assert_eq!(
        details.error_info().map(|e| e.reason.as_str()),
        Some("RATE_LIMITED")
    );
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a retry delay");
    assert!(delay > Duration::from_secs(1), "{delay:?}");
    for _ in 0..10 {
        identity
            .lookup_profile_ids(as_token(&free, lookup_req("a@example.com")))
            .await
            .expect("another principal is not limited");
    }
    let metrics = server.scrape().await;
    assert_eq!(
        sample(
            &metrics,
            "grpc_requests_rate_limited_total{principal=\"limited\"}"
        ),
        1.0,
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_change_stream_consumer_that_stops_reading_is_cut_off_and_told_where_to_resume() {
    let server = Server::start(|c| {
        c.limits.stream_buffer = 2;
        c.limits.stream_stall_ms = 200;
    })
    .await;
    // The slow client grants the server a small flow-control window, so unread events pile
    // up in the server's buffer instead of the client's.
    let slow_channel = Endpoint::from_shared(format!(
        "http://{}",
        server.running.as_ref().expect("running").local_addr()
    ))
    .expect("endpoint")
    .initial_stream_window_size(Some(1024))
    .initial_connection_window_size(Some(1024))
    .connect()
    .await
    .expect("connect");
    let watch = pb::WatchChangesRequest { from_sequence: 0 };
    let mut slow = ProfileServiceClient::new(slow_channel)
        .watch_changes(watch)
        .await
        .expect("slow watch")
        .into_inner();
    let mut fast = server
        .profiles()
        .watch_changes(watch)
        .await
        .expect("fast watch")
        .into_inner();
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut sequences = Vec::new();
        while let Ok(Ok(Some(m))) = tokio::time::timeout(STREAM_TIMEOUT, fast.message()).await {
            let seq = m.event.expect("event").sequence;
            sequences.push(seq);
            let _ = seen_tx.send(seq);
        }
        sequences
    });

    let mut n = 0;
    let mut cut = false;
    for _ in 0..100 {
        let mut batch = Vec::new();
        for _ in 0..25 {
            n += 1;
            let mut identity = server.identity();
            let v = format!("flood{n}@example.com");
            batch.push(tokio::spawn(async move {
                identity.resolve(resolve_req(&v)).await
            }));
        }
        for b in batch {
            b.await.expect("task").expect("resolve");
        }
        let metrics = server.scrape().await;
        if sample(
            &metrics,
            "stream_consumers_too_slow_total{method=\"WatchChanges\"}",
        ) >= 1.0
        {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow consumer was never cut off");
    // The reading consumer keeps going: it sees the newest event.
    let last = server
        .identity()
        .resolve(resolve_req("after.cut@example.com"))
        .await
        .expect("resolve")
        .into_inner();
    assert!(!last.profile_id.is_empty());
    let newest = server
        .store
        .changes_after(0, usize::MAX)
        .expect("changes")
        .last()
        .map(|e| e.sequence)
        .expect("events");
    let mut seen = seen_rx.clone();
    tokio::time::timeout(STREAM_TIMEOUT, seen.wait_for(|s| *s >= newest))
        .await
        .expect("the fast consumer keeps up")
        .expect("reader alive");

    // The slow consumer now reads: what was delivered, in order, then the error naming the
    // last sequence it got.
    let mut got = Vec::new();
    let status = loop {
        match tokio::time::timeout(STREAM_TIMEOUT, slow.message())
            .await
            .expect("the slow stream ends")
        {
            Ok(Some(m)) => got.push(m.event.expect("event").sequence),
            Ok(None) => panic!("the slow stream ended without an error"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too slow"), "{status:?}");
    let resume = got.last().copied().unwrap_or(0);
    assert!(
        status
            .message()
            .contains(&format!("from_sequence = {resume}")),
        "{status:?} after {got:?}"
    );
    assert!(
        got.iter().copied().eq(1..=resume),
        "gapless prefix: {got:?}"
    );
    assert!(resume < newest, "the slow consumer did fall behind");

    server.stop().await;
    let sequences = reader.await.expect("reader");
    assert!(sequences.iter().copied().eq(1..=newest), "{sequences:?}");
}

#[tokio::test]
async fn oversized_messages_and_lists_are_refused_with_what_to_fix() {
    let server = Server::start(|_| {}).await;
    let mut identity = server.identity();
    // 5 MiB: refused by the message size limit before any decoding.
    let mut big = resolve_req("big@example.com");
    big.source = "x".repeat(5 * 1024 * 1024);
    let err = identity.resolve(big).await.expect_err("too large");
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("4194304"), "{err:?}");
    // 3 MiB passes the size limit and meets the field's own limit.
    let mut large = resolve_req("large@example.com");
    large.source = "x".repeat(3 * 1024 * 1024);
    let err = identity.resolve(large).await.expect_err("source too long");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_invalid(&err, "source");

    let err = identity
        .resolve(pb::ResolveRequest {
            identifiers: (0..33)
                .map(|i| email(&format!("many{i}@example.com")))
                .collect(),
            create_if_missing: true,
            source: "test".into(),
            ..Default::default()
        })
        .await
        .expect_err("33 identifiers");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_invalid(&err, "identifiers");

    let err = server
        .profiles()
        .batch_get_profiles(pb::BatchGetProfilesRequest {
            profiles: (0..1001)
                .map(|i| by_ident(email(&format!("k{i}@example.com"))))
                .collect(),
            ..Default::default()
        })
        .await
        .expect_err("1001 keys");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_invalid(&err, "profiles");

    let p = identity
        .resolve(resolve_req("lists@example.com"))
        .await
        .expect("resolve")
        .into_inner()
        .profile_id;
    let err = server
        .interactions()
        .list_interactions(pb::ListInteractionsRequest {
            profile: Some(by_id(&p)),
            types: (0..33).map(|i| format!("type_{i}")).collect(),
            ..Default::default()
        })
        .await
        .expect_err("33 types");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_invalid(&err, "types");
    let err = server
        .interactions()
        .list_interactions(pb::ListInteractionsRequest {
            profile: Some(by_id(&p)),
            departments: vec!["Not A Department".into()],
            ..Default::default()
        })
        .await
        .expect_err("bad department");
    assert_invalid(&err, "departments[0]");
    // A million bad entries get a bounded answer.
    let err = server
        .interactions()
        .list_interactions(pb::ListInteractionsRequest {
            profile: Some(by_id(&p)),
            channels: vec![999; 1_000_000],
            ..Default::default()
        })
        .await
        .expect_err("bad channels");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let violations = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.len())
        .unwrap_or_default();
    assert!((1..=101).contains(&violations), "{violations}");
    server.stop().await;
}

#[tokio::test]
async fn a_write_cut_off_by_its_deadline_writes_nothing_and_its_retry_writes_once() {
    let server = Server::start(|_| {}).await;
    let p = server
        .identity()
        .resolve(resolve_req("deadline@example.com"))
        .await
        .expect("resolve")
        .into_inner()
        .profile_id;
    let record = pb::RecordInteractionRequest {
        profile: Some(by_id(&p)),
        interaction: Some(interaction(
            pb::Channel::Web,
            pb::Direction::Inbound,
            "web",
            "page_view",
        )),
        request_id: "deadline-retry-1".into(),
    };
    let list = pb::ListInteractionsRequest {
        profile: Some(by_id(&p)),
        ..Default::default()
    };

    // The gate is held, so the write cannot reach the store before its deadline passes.
    let gate = server.store.write_gate().lock().await;
    let mut req = tonic::Request::new(record.clone());
    req.set_timeout(Duration::from_millis(100));
    let err = server
        .interactions()
        .record_interaction(req)
        .await
        .expect_err("deadline passes at the gate");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // The server drops the call when the deadline passes (so its writer leaves the gate's
    // queue): the in-flight gauge returns to zero while the gate is still held.
    let mut drained = false;
    for _ in 0..2000 {
        if sample(&server.scrape().await, "grpc_requests_in_flight ") == 0.0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(drained, "the cut-off call never left the server");
    drop(gate);
    // The abandoned writer is gone: a write after it commits, and the first wrote nothing.
    server
        .identity()
        .resolve(resolve_req("after.deadline@example.com"))
        .await
        .expect("a later write");
    let listed = server
        .interactions()
        .list_interactions(list.clone())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.interactions.is_empty(), "{listed:?}");

    let first = server
        .interactions()
        .record_interaction(record.clone())
        .await
        .expect("retry")
        .into_inner();
    let again = server
        .interactions()
        .record_interaction(record)
        .await
        .expect("second retry")
        .into_inner();
    assert_eq!(first, again);
    let listed = server
        .interactions()
        .list_interactions(list)
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.interactions.len(), 1, "{listed:?}");
    server.stop().await;
}

/// Calls `f` until it is not refused with RESOURCE_EXHAUSTED (at most 400 times, 5 ms apart).
async fn served_eventually<T, F, Fut>(mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for _ in 0..400 {
        match f().await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => return other,
        }
    }
    f().await
}

/// What the client thread of the queue-time test saw: the identifier and the profile id or
/// the refusal.
type Outcome = (String, Result<String, tonic::Status>);

#[tokio::test]
async fn while_overloaded_a_call_that_waited_too_long_is_refused_unstarted_and_writes_nothing() {
    let server = Server::start(|c| {
        c.limits.queue_target_ms = 5;
        c.limits.queue_interval_ms = 20;
    })
    .await;
    // The server runs on this test's one runtime thread; the client runs on a thread of its
    // own, so it can send while the server's thread is busy.
    let target = format!(
        "http://{}",
        server.running.as_ref().expect("running").local_addr()
    );
    let (send, requests) = std::sync::mpsc::channel::<Vec<String>>();
    let (reply, mut outcomes) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let channel = Endpoint::from_shared(target)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            while let Ok(values) = requests.recv() {
                let calls = values.into_iter().map(|value| {
                    let mut identity = IdentityServiceClient::new(channel.clone());
                    async move {
                        let r = identity.resolve(resolve_req(&value)).await;
                        (value, r.map(|r| r.into_inner().profile_id))
                    }
                });
                for outcome in futures::future::join_all(calls).await {
                    reply.send(outcome).expect("test listens");
                }
            }
        });
    });
    // One round: the client sends 8 writes while this thread (the server's) is held for 60 ms,
    // three times `queue_interval_ms`, as a flood holds a server's CPU. When the thread is
    // free the server finds tasks have waited 60 ms for it and refuses the calls unstarted,
    // until it has caught up.
    let mut refused = Vec::new();
    let mut served = Vec::new();
    for _round in 0..20 {
        let values: Vec<String> = (0..8)
            .map(|_| format!("{}@example.com", unique("queued")))
            .collect();
        send.send(values.clone()).expect("client thread runs");
        std::thread::sleep(Duration::from_millis(60));
        for _ in &values {
            let (value, outcome) = outcomes.recv().await.expect("an outcome per call");
            match outcome {
                Ok(id) => served.push((value, id)),
                Err(s) => refused.push((value, s)),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    drop(send);
    client.join().expect("client thread");
    assert!(
        !refused.is_empty(),
        "no call was refused for its queue time"
    );
    // The server catches up within milliseconds, but on a busy machine this thread may stall
    // again and calls be refused again: from here on a refused call is retried (bounded).
    let identity = server.identity();
    let lookup = |value: String| {
        let identity = identity.clone();
        served_eventually(move || {
            let mut identity = identity.clone();
            let req = lookup_req(&value);
            async move { identity.lookup_profile_ids(req).await }
        })
    };
    for (value, status) in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("refused without starting")
                && status.message().contains("wait")
                && status.message().contains("limits.queue_")
                && status.message().contains("back off"),
            "{status:?}"
        );
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|e| e.reason.as_str()),
            Some("QUEUE_TIMEOUT")
        );
        assert!(details.retry_info().and_then(|r| r.retry_delay).is_some());
        // Refused unstarted: the identifier belongs to no profile.
        let found = lookup(value.clone()).await.expect("lookup").into_inner();
        assert!(!found.results[0].found, "{value} was written: {found:?}");
    }
    // Served calls wrote their profile; a refused call's retry, sent normally, is served.
    for (value, id) in &served {
        let found = lookup(value.clone()).await.expect("lookup").into_inner();
        assert_eq!(&found.results[0].profile_id, id, "{value}");
    }
    let (value, _) = &refused[0];
    let retried = served_eventually(|| {
        let mut identity = identity.clone();
        let req = resolve_req(value);
        async move { identity.resolve(req).await }
    })
    .await
    .expect("the retry is served once the queue is gone")
    .into_inner();
    let found = lookup(value.clone()).await.expect("lookup").into_inner();
    assert_eq!(found.results[0].profile_id, retried.profile_id);
    let metrics = server.scrape().await;
    assert!(
        sample(&metrics, "grpc_requests_shed_total{reason=\"queue_time\"}") >= refused.len() as f64,
        "{metrics}"
    );
    server.stop().await;
}
