//! `/metrics`: Prometheus text whose request counter for a method rises by exactly the number
//! of calls made.

use std::collections::BTreeMap;

use customer_profile::service::pb;

use crate::helpers::*;

async fn scrape(app: &TestApp) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.metrics_addr())
        .await
        .expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("content-type: text/plain"),
        "{head}"
    );
    // Chunked transfer encoding is possible; keep only sample and comment lines.
    body.lines()
        .filter(|l| l.starts_with('#') || l.contains(' '))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses the exposition format strictly: `# HELP|TYPE ...` comments and
/// `name{label="value",...} number` samples. Returns sample → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        out.insert(series.to_string(), v);
    }
    out
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
