//! How load is applied and measured: closed loop (C workers back to back, for maximum
//! throughput) and open loop (a fixed schedule, latency from the *intended* send time so a
//! stalled server cannot hide its stall: coordinated omission corrected), into HDR histograms.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;

use super::lean::{LeanCalls, LeanConn};
use super::workload::{Clients, Outcome, Rng, Workload};

/// How a run is driven.
#[derive(Clone, Debug)]
pub struct Plan {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Open loop when set: requests per second on a fixed timeline.
    pub rate: Option<f64>,
    /// Stop after this many measured requests (closed loop).
    pub max_requests: Option<u64>,
    /// RESOURCE_EXHAUSTED is expected shedding: counted apart, not an error, and kept out of
    /// the latency histogram (which then holds admitted calls only).
    pub shed_ok: bool,
    /// Open loop: after the run, probe until calls succeed within this latency again.
    pub recovery_latency: Option<Duration>,
}

/// What one worker (or the open-loop collector) saw.
struct Tally {
    hist: Histogram<u64>,
    /// Latency of calls refused with RESOURCE_EXHAUSTED when that is expected (`shed_ok`).
    shed_hist: Histogram<u64>,
    shed_ok: bool,
    ok: u64,
    errors: BTreeMap<String, (u64, String)>,
    labels: BTreeMap<&'static str, u64>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new(shed_ok: bool) -> anyhow::Result<Tally> {
        Ok(Tally {
            // 1 µs .. 10 min at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            shed_hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            shed_ok,
            ok: 0,
            errors: BTreeMap::new(),
            labels: BTreeMap::new(),
            last_done: None,
        })
    }

    fn record(&mut self, outcome: Outcome, latency: Duration, done: Instant) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        match outcome {
            Outcome::Failed(s) if self.shed_ok && s.code() == tonic::Code::ResourceExhausted => {
                self.shed_hist.saturating_record(micros);
                return;
            }
            Outcome::Ok(label) => {
                self.ok += 1;
                if let Some(l) = label {
                    *self.labels.entry(l).or_default() += 1;
                }
            }
            Outcome::Failed(s) => {
                let e = self
                    .errors
                    .entry(format!("{:?}", s.code()))
                    .or_insert_with(|| (0, s.message().chars().take(300).collect()));
                e.0 += 1;
            }
            Outcome::Exhausted => return,
        }
        self.hist.saturating_record(micros);
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.shed_hist.add(&other.shed_hist)?;
        self.ok += other.ok;
        for (k, (n, msg)) in other.errors {
            self.errors.entry(k).or_insert((0, msg)).0 += n;
        }
        for (k, n) in other.labels {
            *self.labels.entry(k).or_default() += n;
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// After an open-loop run: how long until the server served normally again.
#[derive(Serialize, Debug)]
pub struct Recovery {
    /// A call counts as normal when it succeeds within this many milliseconds.
    pub threshold_ms: f64,
    /// Calls in a row that must be normal.
    pub streak: u32,
    /// From the end of the run's schedule to the send of the first call of the first normal
    /// streak, milliseconds; None when it did not come within the probe's time limit.
    pub recovery_ms: Option<f64>,
    pub probe_calls: u64,
    pub probe_shed: u64,
    pub probe_errors: u64,
}

/// One run's result, written as JSON.
#[derive(Serialize, Debug)]
pub struct Report {
    pub scenario: String,
    pub mode: &'static str,
    /// The client library the calls went through: `tonic`, or `lean-h2` (`--lean`).
    pub client: &'static str,
    pub target: String,
    pub concurrency: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub measured_s: f64,
    pub target_rate: Option<f64>,
    /// Calls counted in the latency histogram (with `shed_ok`: admitted calls only).
    pub count: u64,
    pub ok: u64,
    /// Open loop: calls due in the measured window, and how many of them were sent on time
    /// (within 1 ms of their due time; the rest waited for a free slot of `concurrency`).
    pub due: Option<u64>,
    pub sent_on_time: Option<u64>,
    /// Open loop: the rate the schedule offered, calls due per second.
    pub offered_rps: Option<f64>,
    /// With `shed_ok`: calls refused with RESOURCE_EXHAUSTED, and how fast the refusals came.
    pub shed: u64,
    pub shed_latency_us: Option<Latency>,
    pub recovery: Option<Recovery>,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    pub labels: BTreeMap<&'static str, u64>,
    pub throughput_rps: f64,
    pub latency_us: Latency,
    /// True when any call failed: such a run is not a result.
    pub not_a_result: bool,
}

impl Report {
    /// The one-line human summary.
    pub fn summary(&self) -> String {
        let l = &self.latency_us;
        let errs: u64 = self.errors.values().sum();
        let shed = if self.shed > 0 || self.shed_latency_us.is_some() {
            format!(
                " shed={} (p99 {}µs) offered={:.0}/s",
                self.shed,
                self.shed_latency_us.as_ref().map_or(0, |l| l.p99),
                self.offered_rps.unwrap_or(0.0)
            )
        } else {
            String::new()
        };
        let recovery = self.recovery.as_ref().map_or(String::new(), |r| {
            format!(
                " recovery={}",
                r.recovery_ms
                    .map_or("none".to_string(), |ms| format!("{ms:.0}ms"))
            )
        });
        format!(
            "{:<22} {:<6} c={:<4} {:>9.0} req/s  p50 {:>7}µs p90 {:>7}µs p99 {:>7}µs p99.9 {:>7}µs max {:>8}µs  n={} errors={}{}{}{}{}",
            self.scenario,
            self.mode,
            self.concurrency,
            self.throughput_rps,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.count,
            errs,
            shed,
            recovery,
            if self.labels.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.labels)
            },
            if self.not_a_result {
                "  NOT A RESULT (errors)"
            } else {
                ""
            }
        )
    }
}

/// Open-loop extras for the report.
#[derive(Default)]
struct OpenFacts {
    due: u64,
    sent_on_time: u64,
    recovery: Option<Recovery>,
}

fn report(
    w: &Workload,
    plan: &Plan,
    target: &str,
    connections: usize,
    t: Tally,
    measured: Duration,
    open: Option<OpenFacts>,
) -> Report {
    let count = t.hist.len();
    let secs = measured.as_secs_f64().max(1e-9);
    let errors_total: u64 = t.errors.values().map(|e| e.0).sum();
    Report {
        scenario: w.scenario.name(),
        mode: if plan.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        client: "tonic",
        target: target.to_string(),
        concurrency: plan.concurrency,
        connections,
        warmup_s: plan.warmup.as_secs_f64(),
        measured_s: secs,
        target_rate: plan.rate,
        count,
        ok: t.ok,
        due: open.as_ref().map(|o| o.due),
        sent_on_time: open.as_ref().map(|o| o.sent_on_time),
        offered_rps: open.as_ref().map(|o| o.due as f64 / secs),
        shed: t.shed_hist.len(),
        shed_latency_us: plan.shed_ok.then(|| Latency::of(&t.shed_hist)),
        recovery: open.and_then(|o| o.recovery),
        errors: t.errors.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        error_samples: t
            .errors
            .iter()
            .map(|(k, v)| (k.clone(), v.1.clone()))
            .collect(),
        labels: t.labels,
        throughput_rps: t.ok as f64 / secs,
        latency_us: Latency::of(&t.hist),
        not_a_result: errors_total > 0 || count == 0,
    }
}

/// C workers, each sending back to back; worker i uses connection i mod N. Only calls that
/// start after the warm-up are counted; throughput is over the measured window.
pub async fn closed_loop(
    w: Arc<Workload>,
    channels: &[Channel],
    plan: &Plan,
    target: &str,
) -> anyhow::Result<Report> {
    let start = Instant::now();
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let measured_calls = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency {
        let w = w.clone();
        let mut clients = Clients::new(channels[worker % channels.len()].clone());
        let max = plan.max_requests;
        let shed_ok = plan.shed_ok;
        let measured_calls = measured_calls.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::new(shed_ok)?;
            let mut rng = Rng::new(worker as u64 + 1);
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let counted = t0 >= warm_end;
                if counted {
                    if let Some(max) = max {
                        if measured_calls.fetch_add(1, Ordering::Relaxed) >= max {
                            break;
                        }
                    }
                }
                seq += 1;
                let outcome = w.call(&mut clients, &mut rng, worker, seq).await;
                if matches!(outcome, Outcome::Exhausted) {
                    break;
                }
                let t1 = Instant::now();
                if counted {
                    tally.record(outcome, t1 - t0, t1);
                }
            }
            anyhow::Ok(tally)
        }));
    }
    let mut total = Tally::new(plan.shed_ok)?;
    for h in handles {
        total.merge(h.await??)?;
    }
    // A run that ended early (max requests, ids exhausted) is measured until its last reply.
    let stop = total.last_done.map_or(end, |d| d.min(end).max(warm_end));
    let measured = if plan.max_requests.is_some() || stop < end {
        stop - warm_end
    } else {
        plan.duration
    };
    Ok(report(
        &w,
        plan,
        target,
        channels.len(),
        total,
        measured,
        None,
    ))
}

/// Busy-waits the last stretch before `at`: tokio's timer has millisecond granularity, which
/// would add up to a millisecond of scheduling noise to every sub-millisecond latency.
async fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now + Duration::from_millis(2) {
        tokio::time::sleep_until((at - Duration::from_millis(1)).into()).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// A fixed rate: request k is due at start + k/R. One task sends each on time (at most
/// `concurrency` in flight; when that many are outstanding the next waits, and its wait counts
/// as latency because latency is measured from the due time). The calls in flight are futures
/// polled by the same task (no task or channel per call): the load generator's own cost per
/// call is what limits the rate it can offer, so it is kept to the call itself. With `lean`,
/// calls go through the lean HTTP/2 client ([`super::lean`]) instead of tonic's.
pub async fn open_loop(
    w: Arc<Workload>,
    channels: &[Channel],
    plan: &Plan,
    target: &str,
    rate: f64,
    lean: Option<(LeanCalls, Vec<LeanConn>)>,
) -> anyhow::Result<Report> {
    let clients: Arc<[Clients]> = channels.iter().cloned().map(Clients::new).collect();
    let connections = channels.len();
    match lean {
        Some((calls, conns)) => {
            let calls = Arc::new(calls);
            let conns: Arc<[LeanConn]> = conns.into();
            let connections = conns.len();
            schedule(&w, &clients, plan, target, rate, connections, move |k| {
                let calls = calls.clone();
                let conns = conns.clone();
                async move {
                    let body = calls.body(k);
                    calls.call(&conns[k as usize % conns.len()], body).await
                }
            })
            .await
        }
        None => {
            let send_clients = clients.clone();
            let sender = w.clone();
            schedule(&w, &clients, plan, target, rate, connections, move |k| {
                let mut c = send_clients[k as usize % send_clients.len()].clone();
                let w = sender.clone();
                async move {
                    let mut rng = Rng::new(k.wrapping_mul(0x2545_F491_4F6C_DD1D) + 1);
                    w.call(&mut c, &mut rng, usize::MAX, k).await
                }
            })
            .await
        }
    }
}

/// The open loop's schedule, sending call k with `send(k)`.
async fn schedule<F, Fut>(
    w: &Arc<Workload>,
    clients: &[Clients],
    plan: &Plan,
    target: &str,
    rate: f64,
    connections: usize,
    send: F,
) -> anyhow::Result<Report>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = Instant::now() + Duration::from_millis(10);
    let warm_end = start + plan.warmup;
    let end = warm_end + plan.duration;
    let cap = plan.concurrency.max(1);
    let mut tally = Tally::new(plan.shed_ok)?;
    let mut inflight = FuturesUnordered::new();
    let mut k: u64 = 0;
    let mut open = OpenFacts::default();
    loop {
        let due = start + interval.mul_f64(k as f64);
        if due >= end {
            break;
        }
        // Take replies until this call is due and a slot is free.
        loop {
            if inflight.len() >= cap {
                // Full: only a reply frees a slot.
                if let Some(done) = inflight.next().await {
                    take(&mut tally, done);
                }
                continue;
            }
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => take(&mut tally, done),
                () = wait_until(due) => {}
            }
        }
        if Instant::now() >= end {
            // Behind schedule at the window's end: what is left was offered but never sent.
            open.due += (end - due).as_secs_f64().div_euclid(interval.as_secs_f64()) as u64 + 1;
            break;
        }
        if due >= warm_end {
            open.due += 1;
            if Instant::now() <= due + Duration::from_millis(1) {
                open.sent_on_time += 1;
            }
        }
        let counted = due >= warm_end;
        let call = send(k);
        inflight.push(async move {
            let outcome = call.await;
            let now = Instant::now();
            Done {
                outcome,
                latency: now - due,
                at: now,
                counted,
            }
        });
        // Send it now: a pushed future does nothing until it is polled.
        while let Some(Some(done)) = inflight.next().now_or_never() {
            take(&mut tally, done);
        }
        k += 1;
    }
    // The run's last calls drain while the recovery probe runs, as a client arriving after a
    // flood would see them.
    let drain = async {
        while let Some(done) = inflight.next().await {
            take(&mut tally, done);
        }
    };
    match plan.recovery_latency {
        Some(threshold) => {
            let since = end.max(Instant::now());
            let ((), recovery) = tokio::join!(drain, recovery_probe(w, clients, since, threshold));
            open.recovery = Some(recovery);
        }
        None => drain.await,
    }
    Ok(report(
        w,
        plan,
        target,
        connections,
        tally,
        plan.duration,
        Some(open),
    ))
}

/// One open-loop call's result.
struct Done {
    outcome: Outcome,
    latency: Duration,
    at: Instant,
    counted: bool,
}

fn take(tally: &mut Tally, d: Done) {
    if d.counted {
        tally.record(d.outcome, d.latency, d.at);
    }
}

/// Sends one call at a time from `since` (the end of a flood) until `STREAK` calls in a row
/// succeed within `threshold`, for at most 30 s.
async fn recovery_probe(
    w: &Arc<Workload>,
    clients: &[Clients],
    since: Instant,
    threshold: Duration,
) -> Recovery {
    const STREAK: u32 = 20;
    let give_up = since + Duration::from_secs(30);
    let mut r = Recovery {
        threshold_ms: threshold.as_secs_f64() * 1000.0,
        streak: STREAK,
        recovery_ms: None,
        probe_calls: 0,
        probe_shed: 0,
        probe_errors: 0,
    };
    let mut streak_start: Option<Instant> = None;
    let mut streak = 0;
    let mut k: u64 = 0;
    while Instant::now() < give_up {
        let mut c = clients[(k as usize) % clients.len()].clone();
        let mut rng = Rng::new(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) + 7);
        let t0 = Instant::now();
        let outcome = w.call(&mut c, &mut rng, usize::MAX, u64::MAX - k).await;
        let took = t0.elapsed();
        k += 1;
        r.probe_calls += 1;
        let normal = match outcome {
            Outcome::Ok(_) => took <= threshold,
            Outcome::Failed(s) if s.code() == tonic::Code::ResourceExhausted => {
                r.probe_shed += 1;
                false
            }
            Outcome::Failed(_) => {
                r.probe_errors += 1;
                false
            }
            Outcome::Exhausted => break,
        };
        if normal {
            let begun = *streak_start.get_or_insert(t0);
            streak += 1;
            if streak >= STREAK {
                r.recovery_ms = Some(begun.saturating_duration_since(since).as_secs_f64() * 1000.0);
                break;
            }
        } else {
            streak = 0;
            streak_start = None;
        }
    }
    r
}
