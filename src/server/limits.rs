//! Overload protection (SPEC §11): the `[limits]` configuration and the tower layer that sheds
//! calls beyond the concurrency budget and the per-principal rate limits, answering
//! RESOURCE_EXHAUSTED at once (no queue) with a RetryInfo hint. The one queue left is the
//! runtime's run queue: a probe task measures how long a woken task waits for a CPU, and while
//! that wait is too long, admitted calls are refused before their handler starts, so under a
//! flood the server spends its time on calls that can still finish in time.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::config::ConfigError;
use super::metrics::Metrics;
use crate::auth::Principal;

/// Methods whose reply is a stream: they hold a slot of `max_streams` for as long as the stream
/// is open instead of a slot of `max_in_flight`, so long-lived streams cannot starve unary calls.
pub const STREAMING_METHODS: [&str; 3] = [
    "/customer_profile.v1.ProfileService/WatchChanges",
    "/customer_profile.v1.PrivacyService/ExportCustomer",
    "/customer_profile.v1.AdminService/Backup",
];

/// The back-off hint sent with a shed call: long enough for in-flight calls to finish,
/// short enough not to idle a recovered server.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);

/// Error domain of the ErrorInfo details this layer sends.
const ERROR_DOMAIN: &str = "customer-profile";

/// Limits on work and input (`[limits]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Unary calls in progress at once, at most; beyond the current limit calls are refused
    /// with RESOURCE_EXHAUSTED (default 256 per CPU core).
    pub max_in_flight: usize,
    /// The adaptive limit's floor (default 4 per CPU core, at most `max_in_flight`). The limit
    /// starts at `max_in_flight`; while it is reached and admitted calls wait longer than
    /// `in_flight_wait_us` for a CPU it shrinks, otherwise it grows back. Set it equal to
    /// `max_in_flight` for a fixed limit.
    pub min_in_flight: usize,
    /// The wait for a CPU, microseconds, that an admitted call should not exceed (judged on the
    /// slowest tenth of the calls of each 50 ms).
    pub in_flight_wait_us: u64,
    /// Open server streams (WatchChanges, ExportCustomer, Backup) at once.
    pub max_streams: usize,
    /// Cap on a call's duration, seconds; the caller's `grpc-timeout` applies when shorter.
    /// Keep it above `shutdown.grace_secs`, or draining calls are cut by this cap instead.
    pub max_request_secs: u64,
    /// Largest request message, bytes (SPEC: 4 MiB).
    pub max_message_bytes: usize,
    /// Largest reply message, bytes.
    pub max_reply_bytes: usize,
    /// Messages buffered per server stream before the producer waits for the client.
    pub stream_buffer: usize,
    /// A stream whose buffer stays full this long (the client does not read) is ended with
    /// RESOURCE_EXHAUSTED, milliseconds.
    pub stream_stall_ms: u64,
    /// Queue-time shedding, milliseconds. The server measures how long a task waits for a
    /// CPU; when even the shortest such wait in the last `queue_interval_ms` was longer than
    /// this (a standing queue: overload), calls are refused unstarted while the wait is longer
    /// than this.
    pub queue_target_ms: u64,
    /// The window over which the wait is judged, milliseconds; outside overload it is also the
    /// longest wait tolerated before calls are refused unstarted.
    pub queue_interval_ms: u64,
    /// Token-bucket rate limits by principal name; `"*"` applies to every principal not
    /// listed (the development principal is `local`). No entry = unlimited.
    pub rate_limits: BTreeMap<String, RateLimit>,
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub per_second: f64,
    /// Calls allowed at once after an idle period.
    pub burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LimitsConfig {
            max_in_flight: 256 * cores,
            min_in_flight: 4 * cores,
            in_flight_wait_us: 500,
            max_streams: 256,
            max_request_secs: 60,
            max_message_bytes: 4 * 1024 * 1024,
            max_reply_bytes: 64 * 1024 * 1024,
            stream_buffer: 256,
            stream_stall_ms: 10_000,
            queue_target_ms: 30,
            queue_interval_ms: 300,
            rate_limits: BTreeMap::new(),
        }
    }
}

impl LimitsConfig {
    /// Checks the values; `principals` are the configured principal names.
    pub fn validate<'a>(
        &self,
        principals: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ConfigError> {
        let positive = [
            ("limits.max_in_flight", self.max_in_flight as u64),
            ("limits.min_in_flight", self.min_in_flight as u64),
            ("limits.in_flight_wait_us", self.in_flight_wait_us),
            ("limits.max_streams", self.max_streams as u64),
            ("limits.max_request_secs", self.max_request_secs),
            ("limits.max_message_bytes", self.max_message_bytes as u64),
            ("limits.max_reply_bytes", self.max_reply_bytes as u64),
            ("limits.stream_buffer", self.stream_buffer as u64),
            ("limits.stream_stall_ms", self.stream_stall_ms),
            ("limits.queue_target_ms", self.queue_target_ms),
            ("limits.queue_interval_ms", self.queue_interval_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError(format!("{key} must be above 0")));
            }
        }
        if self.max_message_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError(
                "limits.max_message_bytes must be at most 67108864 (64 MiB)".into(),
            ));
        }
        if self.queue_interval_ms < self.queue_target_ms {
            return Err(ConfigError(format!(
                "limits.queue_interval_ms ({}) must be at least limits.queue_target_ms ({})",
                self.queue_interval_ms, self.queue_target_ms
            )));
        }
        let known: Vec<&str> = principals.into_iter().collect();
        for (name, rl) in &self.rate_limits {
            let key = format!("limits.rate_limits.{name}");
            if name != "*" && name != "local" && !known.contains(&name.as_str()) {
                return Err(ConfigError(format!(
                    "{key}: no principal is named {name:?} (use a name from auth.principals, `local`, or `*` for every other principal)"
                )));
            }
            if !(rl.per_second.is_finite() && rl.per_second > 0.0) {
                return Err(ConfigError(format!(
                    "{key}.per_second must be a number above 0"
                )));
            }
            if rl.burst == 0 {
                return Err(ConfigError(format!("{key}.burst must be at least 1")));
            }
        }
        Ok(())
    }

    /// The longest a call may run.
    pub fn max_request(&self) -> Duration {
        Duration::from_secs(self.max_request_secs)
    }

    /// How long a full stream buffer is tolerated.
    pub fn stream_stall(&self) -> Duration {
        Duration::from_millis(self.stream_stall_ms)
    }
}

/// A token bucket in real time (rate limits protect the machine, so the domain clock that tests
/// move by hand does not apply).
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.limit.per_second;
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }
}

/// How often the probe task measures the run queue's wait.
const PROBE_PERIOD: Duration = Duration::from_millis(5);

/// Queue-time judgement in the manner of CoDel: the shortest wait the probe saw in each
/// interval tells a passing burst (some tasks still run at once) from a standing queue (none
/// do). Judging the minimum, not the mean, keeps one slow moment from tripping it.
#[derive(Debug)]
struct QueueClock {
    target: Duration,
    interval: Duration,
    /// When the current interval ends.
    interval_end: Instant,
    /// Shortest wait seen in the current interval.
    min: Option<Duration>,
    /// The last full interval's shortest wait exceeded the target.
    overloaded: bool,
}

/// Why a call is refused unstarted: the current wait, the limit, and the limit's key.
#[derive(Debug, PartialEq)]
struct Overdue {
    waited: Duration,
    limit: Duration,
    key: &'static str,
}

impl QueueClock {
    fn new(target: Duration, interval: Duration, now: Instant) -> QueueClock {
        QueueClock {
            target,
            interval,
            interval_end: now + interval,
            min: None,
            overloaded: false,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now >= self.interval_end {
            // The interval just ended judges; after an idle spell (a whole interval without a
            // sample) there is no evidence of a queue.
            let idle = now >= self.interval_end + self.interval;
            self.overloaded = !idle && self.min.is_some_and(|m| m > self.target);
            self.min = None;
            self.interval_end = now + self.interval;
        }
    }

    /// The probe saw a task wait `waited` for a CPU, at `now`.
    fn sample(&mut self, waited: Duration, now: Instant) {
        self.roll(now);
        self.min = Some(self.min.map_or(waited, |m| m.min(waited)));
    }

    /// Whether a call may start now, while tasks wait `waited` for a CPU.
    fn judge(&mut self, waited: Duration, now: Instant) -> Result<(), Overdue> {
        self.roll(now);
        let (limit, key) = if self.overloaded {
            (self.target, "limits.queue_target_ms")
        } else {
            (self.interval, "limits.queue_interval_ms")
        };
        if waited > limit {
            Err(Overdue { waited, limit, key })
        } else {
            Ok(())
        }
    }
}

/// The run queue's wait as the probe last measured it, lock-free for the call path.
struct Lag {
    base: Instant,
    /// When the probe is next due to run, nanoseconds after `base` (u64::MAX: no probe).
    next_due: AtomicU64,
    /// The wait the probe saw last, nanoseconds.
    last: AtomicU64,
}

impl Lag {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The current wait: what the probe saw last, or longer if the probe itself is overdue
    /// (then it is stuck in the queue, which is at least that long).
    fn now(&self, now: Instant) -> Duration {
        let overdue = self
            .nanos(now)
            .saturating_sub(self.next_due.load(Ordering::Relaxed));
        Duration::from_nanos(self.last.load(Ordering::Relaxed).max(overdue))
    }
}

/// Wakes every [`PROBE_PERIOD`] and records how late it runs: the wait of a task in the run
/// queue. Ends when the layer is gone.
async fn probe(shared: Weak<Shared>) {
    loop {
        let due = Instant::now() + PROBE_PERIOD;
        match shared.upgrade() {
            Some(s) => s.lag.next_due.store(s.lag.nanos(due), Ordering::Relaxed),
            None => return,
        }
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        let Some(s) = shared.upgrade() else { return };
        // The timer wheel rounds up to the next millisecond; that much is not queueing.
        let waited = now
            .saturating_duration_since(due)
            .saturating_sub(Duration::from_millis(1));
        s.lag.next_due.store(u64::MAX, Ordering::Relaxed);
        s.lag.last.store(
            u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        s.queue.lock().sample(waited, now);
        if let Some(limit) = s.adaptive.tick(now) {
            if let Some(m) = &s.metrics {
                m.gauge("grpc_in_flight_limit", &[]).set(limit as f64);
            }
        }
        if let Some(m) = &s.metrics {
            m.gauge("runtime_queue_wait_seconds", &[])
                .set(waited.as_secs_f64());
        }
    }
}

/// How often the adaptive in-flight limit is judged.
const LIMIT_WINDOW: Duration = Duration::from_millis(50);

/// The limit on unary calls in progress, adapted to load (additive increase, multiplicative
/// decrease on the wait for a CPU). Under a flood the excess waits in the sockets, where no
/// per-call measure sees it; what the server can see is that the calls it lets in wait behind
/// each other for the CPU. Keeping that wait short keeps the connections' tasks turning, so
/// the excess is read and refused at once (refusing costs a small part of serving) instead of
/// piling up unread.
struct Adaptive {
    min: usize,
    max: usize,
    target: Duration,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// Counts of the current window: admitted calls that reached their work, those of them
    /// that waited longer than `target` for it, calls the limit refused.
    admitted: AtomicU64,
    slow: AtomicU64,
    refused: AtomicU64,
    window_end: parking_lot::Mutex<Instant>,
}

/// The limit after a window: when the limit refused calls and more than a tenth of the
/// admitted ones waited too long (the calls it lets in queue behind each other), a quarter
/// less, or half when most waited too long (a flood arriving: the limit gets there in a few
/// windows); an eighth more (at least one) when no more than a tenth waited too long. A slow
/// window in which the limit refused nothing leaves it alone: the wait came from elsewhere (a
/// stall, another process, a burst below the limit), and refusing more would not shorten it.
fn next_limit(
    limit: usize,
    min: usize,
    max: usize,
    admitted: u64,
    slow: u64,
    refused: u64,
) -> usize {
    let too_slow = slow.saturating_mul(10) > admitted;
    let next = if too_slow && refused > 0 {
        if slow.saturating_mul(2) > admitted {
            limit / 2
        } else {
            limit.saturating_mul(3) / 4
        }
    } else if too_slow {
        limit
    } else {
        limit.saturating_add((limit / 8).max(1))
    };
    next.clamp(min, max)
}

impl Adaptive {
    fn new(config: &LimitsConfig, now: Instant) -> Adaptive {
        let max = config.max_in_flight;
        Adaptive {
            min: config.min_in_flight.min(max),
            max,
            target: Duration::from_micros(config.in_flight_wait_us),
            limit: AtomicUsize::new(max),
            in_flight: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            window_end: parking_lot::Mutex::new(now + LIMIT_WINDOW),
        }
    }

    /// An admitted call waited `waited` for a CPU before its work.
    fn waited(&self, waited: Duration) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        if waited > self.target {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Judges the window when it is over; returns the new limit then.
    fn tick(&self, now: Instant) -> Option<usize> {
        let mut end = self.window_end.lock();
        if now < *end {
            return None;
        }
        *end = now + LIMIT_WINDOW;
        let limit = next_limit(
            self.limit.load(Ordering::Relaxed),
            self.min,
            self.max,
            self.admitted.swap(0, Ordering::Relaxed),
            self.slow.swap(0, Ordering::Relaxed),
            self.refused.swap(0, Ordering::Relaxed),
        );
        self.limit.store(limit, Ordering::Relaxed);
        Some(limit)
    }
}

/// A unary call's place in the in-flight count, given back when dropped.
struct CallSlot(Arc<Shared>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.adaptive.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an admitted call holds while it runs.
enum Slot {
    Call(CallSlot),
    Stream(OwnedSemaphorePermit),
}

/// State shared by every connection's copy of the layer.
struct Shared {
    adaptive: Adaptive,
    streams: Arc<Semaphore>,
    /// Principal name → bucket; fixed at start (principals come from configuration), so
    /// callers cannot grow it.
    buckets: HashMap<String, parking_lot::Mutex<Bucket>>,
    queue: parking_lot::Mutex<QueueClock>,
    lag: Lag,
    metrics: Option<Arc<Metrics>>,
    /// The fixed refusals, encoded once: under a flood most calls get one, and building the
    /// status with its details for each would make refusing cost a good part of serving.
    refuse_in_flight: http::HeaderMap,
    refuse_streams: http::HeaderMap,
    /// `grpc_requests_shed_total` by reason, registered once.
    shed_in_flight: Option<metrics::Counter>,
}

/// The layer; build it once per server with [`LimitsLayer::new`].
#[derive(Clone)]
pub struct LimitsLayer {
    shared: Arc<Shared>,
}

impl LimitsLayer {
    /// Budgets from `config`; `principals` are every principal name that can call (their
    /// buckets are created now). Inside a tokio runtime it also starts the queue-wait probe
    /// (without one, queue-time shedding is off).
    pub fn new<'a>(
        config: &LimitsConfig,
        principals: impl IntoIterator<Item = &'a str>,
        metrics: Option<Arc<Metrics>>,
    ) -> LimitsLayer {
        let now = Instant::now();
        let default_limit = config.rate_limits.get("*").copied();
        let mut buckets = HashMap::new();
        for name in principals.into_iter().chain(["local"]) {
            if let Some(limit) = config.rate_limits.get(name).copied().or(default_limit) {
                buckets.insert(
                    name.to_string(),
                    parking_lot::Mutex::new(Bucket::new(limit, now)),
                );
            }
        }
        let adaptive = Adaptive::new(config, now);
        let refuse_in_flight = headers_of(in_flight_refusal(&adaptive));
        let layer = LimitsLayer {
            shared: Arc::new(Shared {
                adaptive,
                streams: Arc::new(Semaphore::new(config.max_streams)),
                buckets,
                queue: parking_lot::Mutex::new(QueueClock::new(
                    Duration::from_millis(config.queue_target_ms),
                    Duration::from_millis(config.queue_interval_ms),
                    now,
                )),
                lag: Lag {
                    base: now,
                    next_due: AtomicU64::new(u64::MAX),
                    last: AtomicU64::new(0),
                },
                refuse_in_flight,
                refuse_streams: headers_of(streams_refusal(config.max_streams)),
                shed_in_flight: metrics
                    .as_ref()
                    .map(|m| m.counter("grpc_requests_shed_total", &[("reason", "in_flight")])),
                metrics,
            }),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(probe(Arc::downgrade(&layer.shared)));
        }
        layer
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct LimitsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Health checks and reflection are never shed: a probe failing under load would take a busy
/// but healthy server out of rotation.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// RESOURCE_EXHAUSTED with ErrorInfo `reason` and a RetryInfo delay.
fn exhausted(reason: &str, message: String, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

impl Shared {
    fn shed(&self, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.counter("grpc_requests_shed_total", &[("reason", reason)])
                .increment(1);
        }
    }

    /// Takes a token from the caller's bucket, if it has one.
    fn rate_limit(&self, principal: Option<&Arc<Principal>>) -> Result<(), Status> {
        let Some(p) = principal else { return Ok(()) };
        let Some(bucket) = self.buckets.get(&p.name) else {
            return Ok(());
        };
        let mut bucket = bucket.lock();
        bucket.take(Instant::now()).map_err(|wait| {
            self.shed("rate_limited");
            if let Some(m) = &self.metrics {
                m.counter("grpc_requests_rate_limited_total", &[("principal", &p.name)])
                    .increment(1);
            }
            exhausted(
                "RATE_LIMITED",
                format!(
                    "principal {:?} is over its rate limit ({}/s, burst {}); retry after the RetryInfo delay",
                    p.name, bucket.limit.per_second, bucket.limit.burst
                ),
                wait,
            )
        })
    }

    /// Whether a call may start now, judged by the run queue's current wait.
    fn queue_time(&self) -> Result<(), Status> {
        let now = Instant::now();
        let waited = self.lag.now(now);
        let judged = self.queue.lock().judge(waited, now);
        judged.map_err(|o| {
            self.shed("queue_time");
            exhausted(
                "QUEUE_TIMEOUT",
                format!(
                    "the server is overloaded: its calls wait {} ms for a CPU, more than the {} ms allowed ({}), so this call was refused without starting; back off and retry later",
                    o.waited.as_millis(),
                    o.limit.as_millis(),
                    o.key
                ),
                SHED_RETRY_AFTER,
            )
        })
    }
}

/// A slot for a call on `path`: one of `max_streams` for a streaming method, else a place
/// under the adaptive in-flight limit.
fn admit(shared: &Arc<Shared>, path: &str) -> Result<Slot, http::HeaderMap> {
    if STREAMING_METHODS.contains(&path) {
        return shared
            .streams
            .clone()
            .try_acquire_owned()
            .map(Slot::Stream)
            .map_err(|_| {
                shared.shed("streams");
                shared.refuse_streams.clone()
            });
    }
    let a = &shared.adaptive;
    if a.in_flight.fetch_add(1, Ordering::AcqRel) < a.limit.load(Ordering::Relaxed) {
        return Ok(Slot::Call(CallSlot(shared.clone())));
    }
    a.in_flight.fetch_sub(1, Ordering::AcqRel);
    a.refused.fetch_add(1, Ordering::Relaxed);
    match &shared.shed_in_flight {
        Some(c) => c.increment(1),
        None => shared.shed("in_flight"),
    }
    Err(shared.refuse_in_flight.clone())
}

fn in_flight_refusal(limit: &Adaptive) -> Status {
    let (max, min) = (limit.max, limit.min);
    let how = if min == max {
        format!("its limit of {max} calls in progress (limits.max_in_flight)")
    } else {
        format!(
            "its limit of calls in progress (at most {max}, limits.max_in_flight; lowered towards {min}, limits.min_in_flight, while admitted calls wait longer than limits.in_flight_wait_us for a CPU)"
        )
    };
    exhausted(
        "OVERLOADED",
        format!(
            "the server is at {how} and refused this call without starting it; back off and retry later"
        ),
        SHED_RETRY_AFTER,
    )
}

fn streams_refusal(max_streams: usize) -> Status {
    exhausted(
        "TOO_MANY_STREAMS",
        format!(
            "the server has {max_streams} streams open, its limit (limits.max_streams); back off and retry later"
        ),
        SHED_RETRY_AFTER,
    )
}

/// The trailers-only reply headers of a refusal.
fn headers_of(status: Status) -> http::HeaderMap {
    status.into_http::<()>().into_parts().0.headers
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// How long a refusal waits for the rest of the request it refuses.
const REFUSAL_DRAIN: Duration = Duration::from_millis(100);

/// Reads what is left of a refused request, for at most [`REFUSAL_DRAIN`]. Answering before the
/// client has sent its whole request makes HTTP/2 end the stream with RST_STREAM; under a flood
/// that is thousands of resets per connection, and a client counts resets against a limit
/// (hyper's client: 1,024 per connection) past which it drops the connection with every call
/// on it. Measured at 28,000 refusals/s: 904 resets in 6 s before, none after. Usually the
/// request is already complete and this costs nothing; a timer is set only when it is not.
async fn drain<B: http_body::Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let mut read = |cx: &mut Context<'_>| loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    };
    let complete = read(&mut Context::from_waker(std::task::Waker::noop())).is_ready();
    if !complete {
        let _ = tokio::time::timeout(REFUSAL_DRAIN, std::future::poll_fn(read)).await;
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for LimitsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<PermitBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if exempt(path) {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(PermitBody::without)) });
        }
        let admitted = self
            .shared
            .rate_limit(req.extensions().get::<Arc<Principal>>())
            .and_then(|()| self.shared.queue_time())
            .map_err(headers_of)
            .and_then(|()| admit(&self.shared, path));
        match admitted {
            Ok(slot) => {
                let fut = self.inner.call(req);
                let shared = self.shared.clone();
                Box::pin(async move {
                    // Admission is decided when the call's task first runs; the work waits one
                    // turn of the run queue, so every call already queued behind this one is
                    // admitted or refused before any of the admitted work starts. Without it a
                    // flood queues as tasks the limits never see, and `max_in_flight` would
                    // count only the one call running: the queue would be unbounded.
                    let queued = Instant::now();
                    tokio::task::yield_now().await;
                    shared.adaptive.waited(queued.elapsed());
                    drop(shared);
                    let resp = fut.await?;
                    // A unary call's work is done when its reply is ready; a stream's goes on
                    // until its body ends, so its slot travels with the body.
                    Ok(match slot {
                        Slot::Stream(permit) => resp.map(|b| PermitBody::holding(b, permit)),
                        Slot::Call(call) => {
                            drop(call);
                            resp.map(PermitBody::without)
                        }
                    })
                })
            }
            Err(headers) => {
                let mut resp = http::Response::new(PermitBody::without(ResBody::default()));
                *resp.headers_mut() = headers;
                resp.extensions_mut().insert(crate::audit::NotStarted);
                let body = req.into_body();
                Box::pin(async move {
                    drain(body).await;
                    Ok(resp)
                })
            }
        }
    }
}

/// A reply body that keeps a concurrency slot until it is finished or dropped.
#[derive(Default)]
pub struct PermitBody<B> {
    inner: B,
    permit: Option<OwnedSemaphorePermit>,
}

impl<B> PermitBody<B> {
    fn without(inner: B) -> PermitBody<B> {
        PermitBody {
            inner,
            permit: None,
        }
    }

    fn holding(inner: B, permit: OwnedSemaphorePermit) -> PermitBody<B> {
        PermitBody {
            inner,
            permit: Some(permit),
        }
    }
}

impl<B> http_body::Body for PermitBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            RateLimit {
                per_second: 10.0,
                burst: 3,
            },
            t0,
        );
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).err().unwrap_or_default();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100)).is_err());
        // Idle time refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn queue_time_refuses_beyond_the_interval_and_beyond_the_target_only_under_a_standing_queue() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut q = QueueClock::new(ms(10), ms(100), t0);
        // The probe samples the run queue's wait; a call is judged by the wait at that moment.
        // Not overloaded: only a wait beyond the interval is refused.
        q.sample(ms(50), t0);
        assert!(q.judge(ms(50), t0).is_ok());
        q.sample(ms(150), t0 + ms(1));
        let over = q.judge(ms(150), t0 + ms(1)).err();
        assert_eq!(over.map(|o| o.key), Some("limits.queue_interval_ms"));
        // The whole interval's shortest wait was 50 ms > 10 ms: a standing queue.
        q.sample(ms(20), t0 + ms(100));
        assert!(q.judge(ms(20), t0 + ms(100)).is_err());
        q.sample(ms(11), t0 + ms(101));
        let over = q.judge(ms(11), t0 + ms(101)).err();
        assert_eq!(over.map(|o| o.key), Some("limits.queue_target_ms"));
        q.sample(ms(2), t0 + ms(102));
        assert!(q.judge(ms(2), t0 + ms(102)).is_ok());
        // That interval saw a 2 ms wait: the queue drained, back to the lenient limit.
        q.sample(ms(50), t0 + ms(200));
        assert!(q.judge(ms(50), t0 + ms(200)).is_ok());
        // That interval's shortest wait was 50 ms, but a whole idle interval followed it:
        // no evidence of a queue now.
        q.sample(ms(50), t0 + ms(400));
        assert!(q.judge(ms(50), t0 + ms(400)).is_ok());
        q.sample(ms(20), t0 + ms(500));
        assert!(q.judge(ms(20), t0 + ms(500)).is_err());
    }

    #[test]
    fn the_in_flight_limit_shrinks_only_when_reached_and_slow_and_grows_back() {
        let (min, max) = (4, 256);
        // A flood: every window refuses calls and most admitted calls waited too long.
        let mut l = max;
        let mut windows = 0;
        while l > min {
            l = next_limit(l, min, max, 100, 90, 500);
            windows += 1;
        }
        assert_eq!(windows, 6, "256 → 4 by halves");
        // Slow, but the limit refused nothing: not the limit's doing, left alone.
        assert_eq!(next_limit(64, min, max, 100, 90, 0), 64);
        // A tenth slow is fine; then it grows by an eighth, at least one.
        assert_eq!(next_limit(64, min, max, 100, 10, 5), 72);
        assert_eq!(next_limit(4, min, max, 100, 0, 5), 5);
        // A few slow but not most: a quarter less.
        assert_eq!(next_limit(64, min, max, 100, 20, 5), 48);
        // Idle windows (nothing admitted) grow it back to the maximum and no further.
        let mut l = min;
        for _ in 0..40 {
            l = next_limit(l, min, max, 0, 0, 0);
        }
        assert_eq!(l, max);
    }

    proptest::proptest! {
        #[test]
        fn the_in_flight_limit_stays_within_its_bounds_and_moves_the_right_way(
            min in 1usize..64,
            span in 0usize..1024,
            start in 0usize..2048,
            windows in proptest::collection::vec((0u64..1000, 0u64..1000, 0u64..100), 1..50),
        ) {
            let max = min + span;
            let mut l = start.clamp(min, max);
            for (admitted, slow, refused) in windows {
                let slow = slow.min(admitted);
                let next = next_limit(l, min, max, admitted, slow, refused);
                proptest::prop_assert!((min..=max).contains(&next));
                let too_slow = slow * 10 > admitted;
                if too_slow && refused > 0 {
                    proptest::prop_assert!(next <= l);
                    proptest::prop_assert!(next >= (l / 2).max(min));
                } else if too_slow {
                    proptest::prop_assert_eq!(next, l);
                } else {
                    proptest::prop_assert!(next >= l);
                    proptest::prop_assert!(next == max || next > l);
                }
                l = next;
            }
        }
    }

    #[test]
    fn queue_interval_must_cover_the_target() {
        let c = LimitsConfig {
            queue_target_ms: 200,
            queue_interval_ms: 100,
            ..LimitsConfig::default()
        };
        let err = c.validate([]).err().map(|e| e.0).unwrap_or_default();
        assert!(err.contains("limits.queue_interval_ms"), "{err}");
    }

    #[test]
    fn rate_limits_must_name_a_principal() {
        let mut c = LimitsConfig::default();
        c.rate_limits.insert(
            "billing".into(),
            RateLimit {
                per_second: 1.0,
                burst: 1,
            },
        );
        assert!(c.validate(["billing"]).is_ok());
        let err = c.validate(["crm"]).err().map(|e| e.0).unwrap_or_default();
        assert!(err.contains("limits.rate_limits.billing"), "{err}");
    }
}
