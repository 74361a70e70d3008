//! Fallback data loading over gRPC, for when the bulk importer is unavailable: creates
//! profiles through the public API (so it costs durable writes) and writes the identifiers file
//! the scenarios read.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use customer_profile::service::pb;
use prost_types::Timestamp;

#[derive(clap::Args)]
pub struct SeedArgs {
    #[arg(long)]
    target: String,
    /// How many profiles to create.
    #[arg(long)]
    profiles: usize,
    /// Where to write `kind<TAB>value` lines (every profile's email, phone and loyalty card).
    #[arg(long)]
    ids_out: PathBuf,
    /// Concurrent loaders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

const CITIES: [&str; 8] = [
    "Manchester",
    "Leeds",
    "Bristol",
    "Glasgow",
    "Cardiff",
    "Norwich",
    "Brighton",
    "Belfast",
];
const GENDERS: [pb::Gender; 3] = [pb::Gender::Female, pb::Gender::Male, pb::Gender::NonBinary];

fn identifiers(i: usize) -> Vec<pb::Identifier> {
    let id = |kind: pb::IdentifierKind, value: String| pb::Identifier {
        kind: kind as i32,
        value,
        namespace: String::new(),
    };
    vec![
        id(
            pb::IdentifierKind::Email,
            format!("seed{i}@bench.example.com"),
        ),
        id(pb::IdentifierKind::Phone, format!("+44740{i:07}")),
        id(pb::IdentifierKind::LoyaltyCard, format!("LC{i:09}")),
    ]
}

fn ts_days_ago(days: i64) -> Option<Timestamp> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    Some(Timestamp {
        seconds: now - days * 86_400,
        nanos: 0,
    })
}

async fn seed_one(c: &mut crate::workload::Clients, i: usize) -> Result<(), tonic::Status> {
    let (profile, identity, interaction) = c.seed_clients();
    let r = identity
        .resolve(pb::ResolveRequest {
            identifiers: identifiers(i),
            create_if_missing: true,
            source: "bench_seed".into(),
            request_id: format!("seed-resolve-{i}"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let pid = r.profile_id;
    let by_id = || {
        Some(pb::ProfileRef {
            r#ref: Some(pb::profile_ref::Ref::ProfileId(pid.clone())),
        })
    };
    profile
        .update_profile(pb::UpdateProfileRequest {
            profile: by_id(),
            attributes: Some(pb::ProfileAttributes {
                given_name: Some(format!("Seed{i}")),
                family_name: Some("Bench".into()),
                city: Some(CITIES[i % CITIES.len()].into()),
                gender: GENDERS[i % GENDERS.len()] as i32,
                country: Some("GB".into()),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "attributes.given_name".into(),
                    "attributes.family_name".into(),
                    "attributes.city".into(),
                    "attributes.gender".into(),
                    "attributes.country".into(),
                ],
            }),
            source: "bench_seed".into(),
            observed_at: ts_days_ago(1),
            request_id: format!("seed-update-{i}"),
            ..Default::default()
        })
        .await?;
    let kinds = [
        ("purchase", "stores", pb::Channel::Store),
        ("support_call", "customer_service", pb::Channel::PhoneCall),
        ("page_view", "digital", pb::Channel::Web),
    ];
    let requests = kinds
        .iter()
        .enumerate()
        .map(|(n, (kind, dept, channel))| pb::RecordInteractionRequest {
            profile: by_id(),
            interaction: Some(pb::Interaction {
                channel: *channel as i32,
                direction: pb::Direction::Inbound as i32,
                department: (*dept).into(),
                r#type: (*kind).into(),
                summary: format!("seeded {kind}"),
                occurred_at: ts_days_ago(((i * 7 + n * 31) % 700) as i64 + 2),
                ..Default::default()
            }),
            request_id: format!("seed-int-{i}-{n}"),
        })
        .collect();
    interaction
        .record_interactions(pb::RecordInteractionsRequest { requests })
        .await?;
    Ok(())
}

/// Creates `profiles` customers with `concurrency` loaders, then writes the identifiers file.
pub async fn seed(a: SeedArgs) -> anyhow::Result<()> {
    let ch = crate::connect(&a.target).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let next = next.clone();
        let mut c = crate::workload::Clients::new(ch.clone());
        let total = a.profiles;
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                seed_one(&mut c, i)
                    .await
                    .with_context(|| format!("seeding profile {i}"))?;
            }
        }));
    }
    for h in handles {
        h.await??;
    }
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&a.ids_out)
            .with_context(|| format!("creating {}", a.ids_out.display()))?,
    );
    for i in 0..a.profiles {
        for id in identifiers(i) {
            let kind = pb::IdentifierKind::try_from(id.kind)
                .map(|k| k.as_str_name().trim_start_matches("IDENTIFIER_KIND_"))
                .unwrap_or("UNSPECIFIED");
            writeln!(out, "{kind}\t{}", id.value)?;
        }
    }
    out.flush()?;
    Ok(())
}
