//! A storage fault takes the service out of rotation: health turns NOT_SERVING, writes fail
//! with UNAVAILABLE and write nothing, reads keep working.

use std::sync::Arc;

use customer_profile::domain::time::ManualClock;
use customer_profile::server::config::Config;
use customer_profile::server::startup::Application;
use customer_profile::service::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::*;

#[tokio::test]
async fn a_storage_fault_turns_health_not_serving_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.metrics.enabled = false;
    let app = Application::build(config, Arc::new(ManualClock::new(START)))
        .await
        .expect("build");
    let store = app.store();
    let server = app.spawn();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", server.local_addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut identity = pb::identity_service_client::IdentityServiceClient::new(ch.clone());
    let mut profiles = pb::profile_service_client::ProfileServiceClient::new(ch.clone());
    let mut health = HealthClient::new(ch);
    let resolve = |v: &str| pb::ResolveRequest {
        identifiers: vec![email(v)],
        create_if_missing: true,
        source: "test".into(),
        ..Default::default()
    };
    let p = identity
        .resolve(resolve("before.fault@example.com"))
        .await
        .expect("resolve")
        .into_inner()
        .profile_id;
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.message().await.expect("ok").expect("status").status(),
        ServingStatus::Serving
    );

    store.declare_fault("drill: the disk went away");

    let next = tokio::time::timeout(STREAM_TIMEOUT, watch.message())
        .await
        .expect("health update")
        .expect("ok")
        .expect("status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let err = identity
        .resolve(resolve("after.fault@example.com"))
        .await
        .expect_err("write refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let got = profiles
        .get_profile(pb::GetProfileRequest {
            profile: Some(by_id(&p)),
            ..Default::default()
        })
        .await
        .expect("reads keep working");
    assert_eq!(got.into_inner().profile.expect("profile").profile_id, p);
    let missing = profiles
        .get_profile(pb::GetProfileRequest {
            profile: Some(by_ident(email("after.fault@example.com"))),
            ..Default::default()
        })
        .await
        .expect_err("the refused write wrote nothing");
    assert_eq!(missing.code(), Code::NotFound);
    drop(watch);
    let _ = server.stop().await;
}
