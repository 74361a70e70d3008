//! Bulk import (issue 7): NDJSON into a data directory offline, then the real server on that
//! directory answers over gRPC; rejected lines are reported with their numbers and write
//! nothing; an interrupted import resumes without importing a line twice.

use std::path::Path;
use std::sync::Arc;

use customer_profile::import::{self, Options, Report};
use customer_profile::server::config::Config;
use customer_profile::service::pb;

use crate::helpers::*;

/// Runs the import of `file` into `app`'s (stopped) data directory with the app's clock.
async fn import_file(app: &TestApp, opts: Options) -> Report {
    let config = Config {
        data_dir: app.data_dir().to_path_buf(),
        ..Config::default()
    };
    let clock = Arc::new(app.clock.clone());
    tokio::task::spawn_blocking(move || import::run(&opts, &config, clock))
        .await
        .expect("import thread")
        .expect("import runs")
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write the input file");
}

fn quiet(path: &Path) -> Options {
    Options {
        progress: false,
        ..Options::new(path)
    }
}

#[tokio::test]
async fn imported_customers_are_served_and_rejected_lines_write_nothing() {
    let mut app = TestApp::spawn().await;
    app.stop().await;
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("crm.ndjson");
    let lines = [
        // 1: a whole customer.
        r#"{"identifiers":[{"kind":"EMAIL","value":"Ann.Smith@Example.com"},{"kind":"EXTERNAL","namespace":"crm","value":"C-1"}],
           "attributes":{"given_name":"Ann","city":"Manchester","gender":"FEMALE","birth_date":"1980-02-03","custom":{"tier":"gold"}},
           "observed_at":"2025-01-02T03:04:05Z","source":"crm_migration",
           "consents":[{"purpose":"MARKETING","channel":"EMAIL","decision":"GRANTED"}],
           "interactions":[
             {"channel":"STORE","direction":"INBOUND","department":"stores","type":"purchase","occurred_at":"2026-10-01T10:00:00Z","amount":{"units":19,"nanos":990000000,"currency":"GBP"},"attributes":{"product":"kettle"}},
             {"channel":"PHONE_CALL","direction":"INBOUND","department":"customer_service","type":"complaint","occurred_at":"2026-10-02T10:00:00Z","case_id":"CASE-1","case_state":"OPEN","summary":"late delivery"}]}"#
            .replace('\n', " "),
        // 2: not JSON.
        r#"{"identifiers":[{"kind":"EMAIL","value":"broken@example.com"}"#.to_string(),
        // 3: a bad email.
        r#"{"identifiers":[{"kind":"EMAIL","value":"not-an-email"}]}"#.to_string(),
        // 4: blank.
        String::new(),
        // 5: fine identifiers, a bad interaction: nothing of the line may be written.
        r#"{"identifiers":[{"kind":"EMAIL","value":"carol@example.com"}],"attributes":{"city":"Leeds"},
           "interactions":[{"channel":"WEB","direction":"SIDEWAYS","department":"online","type":"visit"}]}"#
            .replace('\n', " "),
        // 6: the customer of line 1 again, with a new phone and one more interaction: linked.
        r#"{"identifiers":[{"kind":"EMAIL","value":"ann.smith@example.com"},{"kind":"PHONE","value":"+447700900123"}],
           "interactions":[{"channel":"WEB","direction":"INBOUND","department":"online","type":"bill_payment","occurred_at":"2026-10-03T10:00:00Z","amount":{"units":40,"currency":"GBP"}}]}"#
            .replace('\n', " "),
        // 7: another customer.
        r#"{"identifiers":[{"kind":"EMAIL","value":"bob@example.com"}],"attributes":{"given_name":"Bob"}}"#
            .to_string(),
        // 8: identifiers of two profiles, no --allow-merge: rejected with the conflict.
        r#"{"identifiers":[{"kind":"EMAIL","value":"bob@example.com"},{"kind":"PHONE","value":"+447700900123"}],"attributes":{"city":"Bath"}}"#
            .to_string(),
    ];
    write_lines(&input, &lines);

    let report = import_file(
        &app,
        Options {
            batch: 3,
            ..quiet(&input)
        },
    )
    .await;
    assert_eq!(report.this_run.lines, 8);
    assert_eq!(report.this_run.imported, 3);
    assert_eq!(report.this_run.rejected, 4);
    assert_eq!(report.this_run.created, 2);
    assert_eq!(report.this_run.interactions, 3);
    assert!(report.complete);

    let rejects_path = report.rejects_file.clone().expect("a rejects file");
    assert_eq!(rejects_path, files.path().join("crm.rejects.ndjson"));
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(&rejects_path)
        .expect("rejects file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON reject"))
        .collect();
    let numbers: Vec<u64> = rejects
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(numbers, vec![2, 3, 5, 8]);
    let reason = |i: usize| rejects[i]["reason"].as_str().expect("reason").to_string();
    assert!(reason(0).contains("import format"), "{}", reason(0));
    assert!(reason(1).contains("identifiers[0].value"), "{}", reason(1));
    assert!(
        reason(2).contains("interactions[0].direction"),
        "{}",
        reason(2)
    );
    assert!(
        reason(3).contains("IDENTIFIERS_OF_SEVERAL_PROFILES"),
        "{}",
        reason(3)
    );

    app.restart().await;
    let ann = app.get(by_ident(email("ann.smith@example.com"))).await;
    let a = attrs(&ann);
    assert_eq!(a.given_name.as_deref(), Some("Ann"));
    assert_eq!(
        a.city.as_deref(),
        Some("Manchester"),
        "line 8 wrote nothing"
    );
    assert_eq!(a.gender, pb::Gender::Female as i32);
    assert_eq!(custom_string(&ann, "tier").as_deref(), Some("gold"));
    assert_eq!(
        ann.attribute_provenance["city"].source, "crm_migration",
        "the line's source is the provenance"
    );
    let idents = profile_idents(&ann);
    assert_eq!(
        idents.len(),
        3,
        "email, crm id and the phone of line 6: {idents:?}"
    );
    assert!(ann.merged_ids.is_empty());
    assert_eq!(
        app.owner(phone("+447700900123")).await.as_deref(),
        Some(ann.profile_id.as_str())
    );
    let listed = app
        .list_all(list_request(by_ident(email("ann.smith@example.com")), 50))
        .await;
    let types: Vec<&str> = listed.iter().map(|i| i.r#type.as_str()).collect();
    assert_eq!(
        types,
        vec!["bill_payment", "complaint", "purchase"],
        "newest first"
    );
    let summary = ann.summary.as_ref().expect("summary");
    assert_eq!(summary.interaction_count, 3);
    assert_eq!(summary.open_cases.len(), 1);
    let granted = ann.consents.iter().any(|c| {
        c.purpose == pb::Purpose::Marketing as i32
            && c.channel == pb::Channel::Email as i32
            && c.state == pb::ConsentState::Granted as i32
    });
    assert!(granted, "marketing by email granted: {:?}", ann.consents);

    // Rejected lines wrote nothing, not even the identifiers that were fine on their own.
    assert_eq!(app.owner(email("carol@example.com")).await, None);
    assert_eq!(app.owner(email("broken@example.com")).await, None);
    let bob = app.get(by_ident(email("bob@example.com"))).await;
    assert_eq!(attrs(&bob).city, None, "line 8 set nothing on Bob");
    assert_eq!(profile_idents(&bob).len(), 1);
}

fn customer(i: usize) -> String {
    format!(
        r#"{{"identifiers":[{{"kind":"EMAIL","value":"c{i}@example.com"}}],"attributes":{{"given_name":"C{i}"}},"interactions":[{{"channel":"STORE","direction":"INBOUND","department":"stores","type":"purchase","occurred_at":"2026-09-01T10:00:00Z"}},{{"channel":"EMAIL","direction":"OUTBOUND","department":"marketing","type":"campaign_message","message_key":"m{i}","occurred_at":"2026-09-02T10:00:00Z"}}]}}"#
    )
}

#[tokio::test]
async fn an_interrupted_import_resumes_after_its_last_batch_and_imports_each_line_once() {
    let mut app = TestApp::spawn().await;
    app.stop().await;
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("many.ndjson");
    let mut lines: Vec<String> = (0..25).map(customer).collect();
    lines[17] = r#"{"identifiers":[{"kind":"PHONE","value":"07700 900123"}]}"#.to_string();
    write_lines(&input, &lines);
    let opts = Options {
        batch: 10,
        ..quiet(&input)
    };

    // Interrupted after 15 lines (a batch of 10 and one of 5 committed).
    let first = import_file(
        &app,
        Options {
            max_lines: Some(15),
            ..opts.clone()
        },
    )
    .await;
    assert!(!first.complete);
    assert_eq!(first.this_run.imported, 15);
    assert_eq!(first.this_run.interactions, 30);

    // The same command continues after line 15.
    let second = import_file(&app, opts.clone()).await;
    assert!(second.complete);
    assert_eq!(second.resumed_after_line, 15);
    assert_eq!(second.this_run.lines, 10);
    assert_eq!(second.this_run.imported, 9);
    assert_eq!(second.this_run.rejected, 1);
    assert_eq!(second.total.imported, 24);
    let rejects =
        std::fs::read_to_string(second.rejects_file.expect("rejects file")).expect("rejects file");
    assert!(rejects.contains(r#""line":18"#), "{rejects}");
    assert!(rejects.contains("E.164"), "{rejects}");

    // Run again: nothing left to import.
    let third = import_file(&app, opts.clone()).await;
    assert_eq!(third.this_run.lines, 0);
    assert_eq!(third.total.imported, 24);

    app.restart().await;
    for i in (0..25).filter(|i| *i != 17) {
        let listed = app
            .list_all(list_request(
                by_ident(email(&format!("c{i}@example.com"))),
                50,
            ))
            .await;
        assert_eq!(
            listed.len(),
            2,
            "customer {i}: each interaction exactly once"
        );
        let p = app.get(by_ident(email(&format!("c{i}@example.com")))).await;
        assert_eq!(p.summary.expect("summary").interaction_count, 2);
    }
    app.stop().await;

    // --restart imports from the first line again: the customers match, interactions repeat.
    let again = import_file(
        &app,
        Options {
            restart: true,
            ..opts
        },
    )
    .await;
    assert_eq!(again.this_run.lines, 25);
    assert_eq!(again.this_run.created, 0, "every customer matched by email");
}

#[tokio::test]
async fn allow_merge_merges_the_profiles_a_line_names() {
    let mut app = TestApp::spawn().await;
    app.stop().await;
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("merge.ndjson");
    write_lines(
        &input,
        &[
            r#"{"identifiers":[{"kind":"EMAIL","value":"x@example.com"}]}"#.to_string(),
            r#"{"identifiers":[{"kind":"LOYALTY_CARD","value":"LC-9"}]}"#.to_string(),
            r#"{"identifiers":[{"kind":"EMAIL","value":"x@example.com"},{"kind":"LOYALTY_CARD","value":"LC-9"}]}"#
                .to_string(),
        ],
    );
    let report = import_file(
        &app,
        Options {
            allow_merge: true,
            ..quiet(&input)
        },
    )
    .await;
    assert_eq!(report.this_run.rejected, 0);
    assert_eq!(report.this_run.merged, 1);
    app.restart().await;
    let a = app.owner(email("x@example.com")).await;
    assert!(a.is_some());
    assert_eq!(a, app.owner(loyalty_card("LC-9")).await);
}

#[tokio::test]
async fn the_binary_imports_and_says_where_the_rejects_are() {
    let mut app = TestApp::spawn().await;
    app.stop().await;
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("cli.ndjson");
    let rejects = files.path().join("bad.ndjson");
    write_lines(
        &input,
        &[customer(1), r#"{"identifiers":"nope"}"#.to_string()],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
        .args(["import", "--no-progress", "--strict", "--data-dir"])
        .arg(app.data_dir())
        .arg("--rejects")
        .arg(&rejects)
        .arg(&input)
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--strict with a rejected line: {stderr}"
    );
    assert!(stdout.contains("imported 1, rejected 1"), "{stdout}");
    assert!(stderr.contains("line 2 rejected"), "{stderr}");
    assert!(
        std::fs::read_to_string(&rejects)
            .expect("rejects file")
            .contains(r#""line":2"#)
    );
    app.restart().await;
    assert!(app.owner(email("c1@example.com")).await.is_some());
}

/// SIGKILL during an import (the binary, killed at seeded random moments, then run again to the
/// end) loses no committed batch and commits none twice: every customer is there once with
/// each of its interactions once, and every profile reads back (its data key committed with
/// it). `IMPORT_KILL_SEED` picks other moments.
///
/// The moments are drawn between 5 % and 45 % of one uninterrupted import of the same file on
/// this machine, timed first, so a loaded machine (CI runs the suite beside other tests) still
/// kills mid-import. A round counts when a run that was not killed (one that finished before
/// its kill, or the last) resumed after a line above 0: every run before it was killed, so a
/// kill landed after a committed batch. Otherwise another round runs, up to four, with the
/// moments halved when a run finished before its kill and doubled when none resumed.
#[tokio::test]
async fn an_import_killed_at_random_moments_resumes_and_imports_each_line_once() {
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("killed.ndjson");
    let n = 1200;
    write_lines(&input, &(0..n).map(customer).collect::<Vec<_>>());
    let mut seed: u64 = std::env::var("IMPORT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129);
    let import = |data_dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_customer-profile"))
            .args(["import", "--no-progress", "--batch", "40", "--data-dir"])
            .arg(data_dir)
            .arg(&input)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the binary")
    };
    // "resumed after line X" of a run's report.
    let resumed_after = |report: &str| -> u64 {
        report
            .split("resumed after line ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let scratch = tempfile::tempdir().expect("temporary directory");
    let started = std::time::Instant::now();
    let timed = import(scratch.path())
        .wait_with_output()
        .expect("run the binary");
    assert!(timed.status.success(), "the timing run failed");
    let full_ms = started.elapsed().as_millis().max(50) as f64;
    let mut scale = 1.0f64;
    for round in 0..4 {
        let mut app = TestApp::spawn().await;
        app.stop().await;
        let mut kills = 0;
        let mut finished_alone = None;
        for _ in 0..4 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let share = 0.05 + 0.40 * ((seed >> 33) % 1000) as f64 / 1000.0;
            let wait = std::time::Duration::from_millis((full_ms * scale * share) as u64);
            let mut child = import(app.data_dir());
            tokio::time::sleep(wait).await;
            if child.try_wait().expect("poll the importer").is_some() {
                let out = child.wait_with_output().expect("the importer's report");
                finished_alone = Some(String::from_utf8_lossy(&out.stdout).into_owned());
                break;
            }
            child.kill().expect("SIGKILL the importer");
            child.wait().expect("reap the importer");
            kills += 1;
        }
        let last = import(app.data_dir())
            .wait_with_output()
            .expect("run the binary");
        let stdout = String::from_utf8_lossy(&last.stdout);
        assert!(last.status.success(), "{stdout}");
        eprintln!(
            "round {round} (uninterrupted import {full_ms:.0} ms, moments x{scale}): killed {kills} times; \
             a run finished before its kill: {}; the last run said: {stdout}",
            finished_alone.is_some()
        );
        // A resumed run reports the whole file on its own line; a run from line 1 is the whole
        // file.
        let whole = if resumed_after(&stdout) > 0 {
            format!("whole file so far: lines {n}, imported {n}, rejected 0")
        } else {
            format!("lines read {n}, imported {n}, rejected 0")
        };
        assert!(stdout.contains(&whole), "after {kills} kills: {stdout}");
        app.restart().await;
        for i in 0..n {
            let ident = email(&format!("c{i}@example.com"));
            let listed = app
                .list_all(list_request(by_ident(ident.clone()), 50))
                .await;
            assert_eq!(listed.len(), 2, "customer {i} after {kills} kills");
            let p = app.get(by_ident(ident)).await;
            assert_eq!(p.summary.expect("summary").interaction_count, 2);
        }
        app.stop().await;
        let first_unkilled = finished_alone.as_deref().unwrap_or(&stdout);
        if kills > 0 && resumed_after(first_unkilled) > 0 {
            return;
        }
        scale = if finished_alone.is_some() {
            scale / 2.0
        } else {
            scale * 2.0
        };
    }
    panic!(
        "in four rounds no kill landed after a committed batch (uninterrupted import {full_ms:.0} ms); the resume path was not exercised"
    );
}

/// An import line records its consents and interactions one by one, in one transaction: the
/// change feed shows one event per kind of change a line made to its profile (not one per
/// interaction), each with the version after the line's last change of that kind, and the
/// last with the version GetProfile shows.
#[tokio::test]
async fn an_import_line_makes_one_change_event_per_kind_with_the_version_it_ends_at() {
    let mut app = TestApp::spawn().await;
    app.stop().await;
    let files = tempfile::tempdir().expect("temporary directory");
    let input = files.path().join("crm.ndjson");
    let interaction = |day: u32| {
        format!(
            r#"{{"channel":"WEB","direction":"INBOUND","department":"online","type":"page_view","occurred_at":"2026-10-{day:02}T10:00:00Z"}}"#
        )
    };
    let line = format!(
        r#"{{"identifiers":[{{"kind":"EMAIL","value":"feed@example.com"}}],"attributes":{{"city":"York"}},"consents":[{{"purpose":"MARKETING","channel":"EMAIL","decision":"GRANTED"}},{{"purpose":"SERVICE","channel":"SMS","decision":"DENIED"}}],"interactions":[{},{},{}]}}"#,
        interaction(1),
        interaction(2),
        interaction(3)
    );
    write_lines(
        &input,
        &[
            line,
            r#"{"identifiers":[{"kind":"EMAIL","value":"other@example.com"}]}"#.to_string(),
        ],
    );
    let report = import_file(&app, quiet(&input)).await;
    assert_eq!(report.this_run.imported, 2);
    assert_eq!(report.this_run.interactions, 3);
    app.restart().await;

    let marker = app.watermark().await;
    let mut stream = app.watch(0).await;
    let events = next_events(&mut stream, (marker - 1) as usize).await;
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..marker).collect::<Vec<_>>(), "no gaps");
    let profile = app.get(by_ident(email("feed@example.com"))).await;
    let of_line: Vec<&pb::ChangeEvent> = events
        .iter()
        .filter(|e| e.profile_id == profile.profile_id)
        .collect();
    let kinds: Vec<pb::ChangeKind> = of_line
        .iter()
        .map(|e| pb::ChangeKind::try_from(e.kind).expect("known kind"))
        .collect();
    for k in [
        pb::ChangeKind::ProfileCreated,
        pb::ChangeKind::ProfileUpdated,
        pb::ChangeKind::ConsentChanged,
        pb::ChangeKind::InteractionRecorded,
    ] {
        assert_eq!(
            kinds.iter().filter(|x| **x == k).count(),
            1,
            "{k:?} once: {kinds:?}"
        );
    }
    let versions: Vec<u64> = of_line.iter().map(|e| e.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions rise along the sequence: {versions:?}"
    );
    let last = of_line.last().expect("events of the line");
    assert_eq!(last.version, profile.version, "{of_line:?}");
    assert_eq!(
        pb::ChangeKind::try_from(last.kind).ok(),
        Some(pb::ChangeKind::InteractionRecorded)
    );
    // Three interactions went into that one event: the profile's version counts each write.
    let consents = of_line[kinds
        .iter()
        .position(|k| *k == pb::ChangeKind::ConsentChanged)
        .expect("consent event")];
    assert!(
        last.version >= consents.version + 3,
        "three interactions after the consents: {of_line:?}"
    );
}
