//! `/metrics`: Prometheus text whose request counter for a method rises by exactly the number
//! of calls made.

use std::collections::BTreeMap;

use customer_profile::service::pb;

use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    scrape_metrics(app.metrics_addr()).await
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    parse_metrics(text)
}

fn requests(m: &BTreeMap<String, f64>, method: &str, code: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("grpc_requests_total{")
                && k.contains(&format!("method=\"{method}\""))
                && k.contains(&format!("code=\"{code}\""))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn request_counter_rises_by_exactly_the_calls_made() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let get = "/customer_profile.v1.ProfileService/GetProfile";
    let before = parse(&scrape(&app).await);
    let base_ok = requests(&before, get, "OK");
    let base_missing = requests(&before, get, "NOT_FOUND");
    for _ in 0..7 {
        let _ = app.get(by_id(&p)).await;
    }
    for _ in 0..3 {
        assert!(
            app.try_get(by_ident(email("nobody.metrics@example.com")))
                .await
                .is_err()
        );
    }
    let after = parse(&scrape(&app).await);
    assert_eq!(requests(&after, get, "OK") - base_ok, 7.0);
    assert_eq!(requests(&after, get, "NOT_FOUND") - base_missing, 3.0);
    let latency = after
        .iter()
        .find(|(k, _)| k.starts_with("grpc_request_duration_seconds_count") && k.contains(get))
        .map(|(_, v)| *v)
        .expect("latency histogram");
    assert!(latency >= 10.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("store_size_on_disk_bytes"))
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("store_writes_per_flush"))
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("grpc_requests_in_flight"))
    );
}

#[tokio::test]
async fn calls_to_made_up_methods_share_one_label() {
    // The method label comes from the server's own method table, not from the path a client
    // sends: otherwise every made-up path would add series to the registry for good.
    let app = TestApp::spawn().await;
    let ch = crate::auth::channel(&app).await;
    let before = parse(&scrape(&app).await);
    let base = requests(&before, "unknown", "PERMISSION_DENIED");
    for i in 0..5 {
        let path = format!("/customer_profile.v1.ProfileService/NoSuchMethod{i}");
        let code = crate::auth::call(&ch, &path, false, None, Vec::new()).await;
        // No entry in the access table: refused before routing.
        assert_eq!(code, tonic::Code::PermissionDenied, "{path}");
    }
    let text = scrape(&app).await;
    assert!(
        !text.contains("NoSuchMethod"),
        "a made-up path became a label"
    );
    let after = parse(&text);
    assert_eq!(requests(&after, "unknown", "PERMISSION_DENIED") - base, 5.0);
}

async fn set_city(app: &TestApp, profile: &str, city: &str) {
    app.update(
        by_id(profile),
        pb::ProfileAttributes {
            city: Some(city.into()),
            ..Default::default()
        },
        &["attributes.city"],
        app.now(),
    )
    .await;
}

fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v)
        .sum()
}

/// Repeated reads of a profile are answered from the view cache, and a write to the profile
/// makes the next read load it again and show the write (counted by the cache's metrics).
#[tokio::test]
async fn repeated_reads_hit_the_view_cache_and_a_write_makes_the_next_read_load_again() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let before = parse(&scrape(&app).await);
    let first = app.get(by_id(&p)).await;
    for _ in 0..4 {
        assert_eq!(app.get(by_id(&p)).await, first);
    }
    let mid = parse(&scrape(&app).await);
    assert_eq!(
        total(&mid, "view_cache_misses_total") - total(&before, "view_cache_misses_total"),
        1.0
    );
    assert_eq!(
        total(&mid, "view_cache_hits_total") - total(&before, "view_cache_hits_total"),
        4.0
    );
    set_city(&app, &p, "Leeds").await;
    let after_write = app.get(by_id(&p)).await;
    assert_eq!(after_write.version, first.version + 1);
    assert_eq!(
        after_write.attributes.and_then(|a| a.city).as_deref(),
        Some("Leeds")
    );
    let after = parse(&scrape(&app).await);
    assert_eq!(
        total(&after, "view_cache_misses_total") - total(&mid, "view_cache_misses_total"),
        1.0
    );
    assert!(total(&after, "view_cache_entries") >= 1.0);
}

/// With `storage.view_cache_entries = 0` nothing is kept: every read loads, and reads show
/// every write as before.
#[tokio::test]
async fn with_the_view_cache_off_reads_load_every_time_and_show_writes() {
    let app = TestApp::spawn_with(|c| c.storage.view_cache_entries = 0).await;
    let p = app.create(vec![new_email()]).await;
    let first = app.get(by_id(&p)).await;
    set_city(&app, &p, "York").await;
    let after = app.get(by_id(&p)).await;
    assert_eq!(after.version, first.version + 1);
    assert_eq!(
        after.attributes.and_then(|a| a.city).as_deref(),
        Some("York")
    );
    let m = parse(&scrape(&app).await);
    assert_eq!(total(&m, "view_cache_hits_total"), 0.0);
    assert_eq!(total(&m, "view_cache_misses_total"), 0.0);
    assert_eq!(total(&m, "view_cache_entries"), 0.0);
}

/// The audit log's gauges: its size on disk grows as calls are written to it, and it is not
/// failing (the full-disk test in `faults.rs` sees it at 1).
#[tokio::test]
async fn the_audit_log_size_and_failure_are_exported() {
    let app = TestApp::spawn().await;
    let p = app.create(vec![new_email()]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let first = loop {
        let m = parse(&scrape(&app).await);
        assert_eq!(m.get("audit_log_failing"), Some(&0.0), "{m:?}");
        let size = m
            .get("audit_log_size_on_disk_bytes")
            .copied()
            .expect("audit_log_size_on_disk_bytes");
        if size > 0.0 {
            break size;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing written in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for _ in 0..20 {
        let _ = app.get(by_id(&p)).await;
    }
    loop {
        let m = parse(&scrape(&app).await);
        if m["audit_log_size_on_disk_bytes"] >= first + 20.0 * 100.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(10),
            "20 more entries not counted: {m:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
