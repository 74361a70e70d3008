//! Encryption at rest: no stored email, phone, name or interaction summary can be found in
//! the data directory's files (sled's included), before or after a restart, while every read
//! still returns them.

use std::path::Path;

use customer_profile::service::pb;

use crate::helpers::*;

/// Files under `dir` containing `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

const SECRETS: [&str; 5] = [
    "quintessa.grep@example.com",
    "+447700900777",
    "Quintessa",
    "Featherstonehaugh",
    "complained about roaming charges",
];

#[tokio::test]
async fn no_personal_value_is_stored_in_plaintext() {
    let mut app = TestApp::spawn().await;
    let p = app
        .create(vec![
            email("Quintessa.Grep@example.com"),
            phone("+44 7700 900777"),
        ])
        .await;
    app.update(
        by_id(&p),
        pb::ProfileAttributes {
            given_name: Some("Quintessa".into()),
            family_name: Some("Featherstonehaugh".into()),
            ..Default::default()
        },
        &["attributes.given_name", "attributes.family_name"],
        app.now(),
    )
    .await;
    let mut call = interaction(
        pb::Channel::PhoneCall,
        pb::Direction::Inbound,
        "customer_service",
        "complaint",
    );
    call.summary = "Quintessa complained about roaming charges".into();
    app.record(by_id(&p), call).await;
    app.stop().await;
    for s in SECRETS {
        assert_eq!(
            files_containing(app.data_dir(), s),
            Vec::<String>::new(),
            "{s:?} found in plaintext"
        );
    }

    app.restart().await;
    let got = app.get(by_ident(phone("+447700900777"))).await;
    assert_eq!(got.profile_id, p);
    let attrs = got.attributes.expect("attributes");
    assert_eq!(attrs.given_name.as_deref(), Some("Quintessa"));
    let ids: Vec<String> = got
        .identifiers
        .iter()
        .map(|l| l.identifier.clone().expect("id").value)
        .collect();
    assert!(
        ids.contains(&"quintessa.grep@example.com".to_string()),
        "{ids:?}"
    );
    let listed = app
        .list_all(pb::ListInteractionsRequest {
            profile: Some(by_id(&p)),
            ..Default::default()
        })
        .await;
    assert_eq!(
        listed[0].summary,
        "Quintessa complained about roaming charges"
    );
    app.stop().await;
    for s in SECRETS {
        assert_eq!(
            files_containing(app.data_dir(), s),
            Vec::<String>::new(),
            "{s:?} found after restart"
        );
    }
}

#[tokio::test]
async fn another_master_key_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let key = |b: u8| {
        use base64::Engine;
        Some(base64::engine::general_purpose::STANDARD.encode([b; 32]))
    };
    let config = |b: u8| {
        let mut c = customer_profile::server::config::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        c.encryption.master_key = key(b);
        c.metrics.enabled = false;
        c
    };
    let clock = std::sync::Arc::new(customer_profile::domain::time::ManualClock::new(START));
    let app = customer_profile::server::startup::Application::build(config(1), clock.clone())
        .await
        .expect("first start");
    app.spawn().stop().await.expect("stop");
    let err = customer_profile::server::startup::Application::build(config(2), clock)
        .await
        .err()
        .expect("a different master key must be refused");
    assert!(format!("{err:#}").contains("master key"), "{err:#}");
}
