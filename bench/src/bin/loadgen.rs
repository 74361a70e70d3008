//! The benchmark's load generator: runs one scenario against customer-profile or the echo
//! baseline (closed or open loop) and writes a JSON report; also waits for health SERVING,
//! probes the typical GetProfile reply size, and can seed a server over gRPC.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// mimalloc, as in customer-profile: the load generator's own cost per call limits the rate it can offer.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../loadgen/driver.rs"]
mod driver;
#[path = "../loadgen/lean.rs"]
mod lean;
#[path = "../loadgen/seed.rs"]
mod seed;
#[path = "../loadgen/workload.rs"]
mod workload;

mod echo_pb {
    tonic::include_proto!("cpbench.echo.v1");
}

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use customer_profile::service::pb;
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use workload::Scenario;

#[derive(Parser)]
#[command(about = "Load generator for the customer-profile benchmark.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario and report throughput, latency percentiles and errors.
    Run(RunArgs),
    /// Wait until grpc.health.v1 says SERVING; prints the milliseconds waited.
    Wait {
        #[arg(long)]
        target: String,
        /// Give up after this many seconds (exit 1).
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Print the median encoded size in bytes of GetProfile replies for sampled profiles.
    Probe {
        #[arg(long)]
        target: String,
        #[arg(long)]
        ids: PathBuf,
        #[arg(long, default_value_t = 200)]
        sample: usize,
    },
    /// Fill a server over gRPC (Resolve + UpdateProfile + RecordInteractions) and write an
    /// identifiers file: the fallback when the bulk importer is not available.
    Seed(seed::SeedArgs),
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
struct RunArgs {
    /// Server address, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Identifiers file (`kind<TAB>value` lines) naming existing customers.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// How many identifiers of the file to look up and use.
    #[arg(long, default_value_t = 20_000)]
    sample: usize,
    /// Closed loop: concurrent workers. Open loop: most requests in flight.
    #[arg(long, short, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections; workers are spread over them (0: one per 16 workers).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, short, default_value_t = 10.0)]
    duration: f64,
    /// Seconds before measuring starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: stop after this many measured requests.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Bytes sent in each echo request.
    #[arg(long, default_value_t = 64)]
    echo_request_bytes: usize,
    /// Write the JSON report here (it is also printed on stdout with --json-stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 0 even when calls failed (the report still says "not a result").
    #[arg(long)]
    allow_errors: bool,
    /// RESOURCE_EXHAUSTED is expected load shedding: counted as `shed`, not as an error, and
    /// kept out of the latency percentiles (which then describe admitted calls).
    #[arg(long)]
    shed_ok: bool,
    /// Open loop: after the run, send one call at a time until 20 in a row succeed within this
    /// many milliseconds, and report how long after the run's end that streak began.
    #[arg(long)]
    recovery_probe_ms: Option<f64>,
    /// Open loop: send through the lean HTTP/2 client (pre-encoded requests, status read from
    /// the headers, reply not decoded) instead of tonic's; get-by-id and echo only. It costs
    /// the load generator much less per call, so one core can offer a flood's rate.
    #[arg(long)]
    lean: bool,
}

pub async fn connect(target: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(target.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))
}

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    let connections = if a.connections == 0 {
        a.concurrency.div_ceil(16).max(1)
    } else {
        a.connections
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&a.target).await?);
    }
    let w = workload::prepare(
        a.scenario,
        a.ids.as_deref(),
        a.sample,
        channels[0].clone(),
        a.echo_request_bytes,
    )
    .await?;
    let plan = driver::Plan {
        concurrency: a.concurrency,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
        rate: a.rate,
        max_requests: a.max_requests,
        shed_ok: a.shed_ok,
        recovery_latency: a
            .recovery_probe_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
    };
    let lean = match (a.lean, a.rate) {
        (false, _) => None,
        (true, None) => bail!("--lean is for open-loop runs (give --rate)"),
        (true, Some(_)) => {
            let calls = lean::LeanCalls::of(&w, &a.target)?.ok_or_else(|| {
                anyhow::anyhow!("--lean speaks get-by-id and echo only, not this scenario")
            })?;
            let mut conns = Vec::with_capacity(connections);
            for _ in 0..connections {
                conns.push(lean::connect(&a.target).await?);
            }
            Some((calls, conns))
        }
    };
    let client = if lean.is_some() { "lean-h2" } else { "tonic" };
    let mut report = match a.rate {
        Some(rate) => driver::open_loop(w, &channels, &plan, &a.target, rate, lean).await?,
        None => driver::closed_loop(w, &channels, &plan, &a.target).await?,
    };
    report.client = client;
    println!("{}", report.summary());
    for (code, msg) in &report.error_samples {
        eprintln!("loadgen: {code}: {msg}");
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(!report.not_a_result || a.allow_errors)
}

async fn wait(target: &str, timeout: f64) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(timeout);
    let endpoint = Endpoint::from_shared(target.to_string())?
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(1));
    while Instant::now() < deadline {
        if let Ok(ch) = endpoint.connect().await {
            let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
            if let Ok(r) = c
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                if r.get_ref().status == ServingStatus::Serving as i32 {
                    println!("{}", start.elapsed().as_millis());
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{target} not SERVING after {timeout} s")
}

async fn probe(target: &str, ids: &std::path::Path, sample: usize) -> anyhow::Result<()> {
    let ch = connect(target).await?;
    let w = workload::prepare(Scenario::GetById, Some(ids), sample, ch.clone(), 0).await?;
    let mut client = pb::profile_service_client::ProfileServiceClient::new(ch);
    let mut sizes = Vec::new();
    for id in w.profile_ids.iter().take(sample) {
        let r = client
            .get_profile(pb::GetProfileRequest {
                profile: Some(pb::ProfileRef {
                    r#ref: Some(pb::profile_ref::Ref::ProfileId(id.clone())),
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        sizes.push(r.encoded_len());
    }
    sizes.sort_unstable();
    let Some(median) = sizes.get(sizes.len() / 2) else {
        bail!("no profile to probe");
    };
    println!("{median}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match customer_profile::server::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // The work runs as a task on the runtime's workers, not on this thread: driven from here
    // (block_on), every reply would hand over between this thread and a worker, a context
    // switch per call on a pinned core.
    let work = runtime.spawn(async move {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::Wait { target, timeout } => wait(&target, timeout).await.map(|()| true),
            Command::Probe {
                target,
                ids,
                sample,
            } => probe(&target, &ids, sample).await.map(|()| true),
            Command::Seed(a) => seed::seed(a).await.map(|()| true),
        }
    });
    let result = runtime
        .block_on(work)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the load generator's task failed: {e}")));
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
