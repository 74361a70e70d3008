//! Building and running the server: one place that wires store, services, health, reflection
//! and the tower stack. Tests build an [`Application`] on port 0 and talk to it over gRPC.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use super::config::{Config, TlsConfig};
use super::metrics::{self, Metrics};
use crate::audit::AuditLog;
use crate::auth::layer::AuthLayer;
use crate::domain::time::Clock;
use crate::domain::view_cache::ViewCache;
use crate::service::pb::admin_service_server::AdminServiceServer;
use crate::service::pb::consent_service_server::ConsentServiceServer;
use crate::service::pb::contact_service_server::ContactServiceServer;
use crate::service::pb::identity_service_server::IdentityServiceServer;
use crate::service::pb::interaction_service_server::InteractionServiceServer;
use crate::service::pb::privacy_service_server::PrivacyServiceServer;
use crate::service::pb::profile_service_server::ProfileServiceServer;
use crate::service::{
    self, AdminApi, ConsentApi, ContactApi, Core, IdentityApi, InteractionApi, PrivacyApi,
    ProfileApi,
};
use crate::store::crypto::{Key, parse_master_key};
use crate::store::{SledStore, Store, StoreOptions};

/// Service names reported by grpc.health.v1 (besides the overall "").
const SERVICES: [&str; 7] = [
    "customer_profile.v1.IdentityService",
    "customer_profile.v1.ProfileService",
    "customer_profile.v1.InteractionService",
    "customer_profile.v1.ConsentService",
    "customer_profile.v1.ContactService",
    "customer_profile.v1.PrivacyService",
    "customer_profile.v1.AdminService",
];

/// A server ready to run: the store is open and the listener bound.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    health_listener: Option<TcpListener>,
    addr: SocketAddr,
    config: Config,
    store: Arc<SledStore>,
    core: Arc<Core>,
    shutdown: watch::Sender<bool>,
}

impl Application {
    /// Opens the store and binds `config.listen` (port 0 picks a free port).
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        config.validate()?;
        let policy = config.identity_policy()?;
        let rules = config.rules()?;
        let auth = Arc::new(config.authenticator()?);
        if auth.is_local() {
            if !config.listen.ip().is_loopback() {
                anyhow::bail!(
                    "refusing to listen on {} without authentication. Either listen on a loopback \
                     address (127.0.0.1) for local development, or configure principals: run \
                     `customer-profile token` to create a token and its hash, then add to the \
                     config file\n\n[[auth.principals]]\nname = \"billing-backend\"\n\
                     department = \"finance\"\nscopes = [\"profile:read\"]\n\
                     field_groups = [\"identity\", \"profile\"]\ntoken_sha256 = [\"<hash>\"]",
                    config.listen
                );
            }
            tracing::warn!(
                listen = %config.listen,
                "NO AUTHENTICATION CONFIGURED: every caller is the local development principal with \
                 every scope. This is allowed on a loopback address only; configure [[auth.principals]] \
                 before exposing the service"
            );
        }
        let store = Arc::new(
            SledStore::open(&StoreOptions {
                master_key: master_key(&config)?,
                path: config.data_dir.clone(),
                cache_capacity_bytes: config.storage.cache_capacity_mb.saturating_mul(1024 * 1024),
                min_free_mb: config.storage.min_free_mb,
            })
            .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?,
        );
        store.set_group_commit_delay(Duration::from_micros(config.storage.group_commit_delay_us));
        let audit = Arc::new(
            AuditLog::open(&config.data_dir, clock.clone(), config.audit.rotation()).with_context(
                || format!("opening the audit log in {}", config.data_dir.display()),
            )?,
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let metrics_listener = if config.metrics.enabled {
            Some(
                TcpListener::bind(config.metrics.listen)
                    .await
                    .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?,
            )
        } else {
            None
        };
        let health_listener = match config.health.listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding health.listen {a}"))?,
            ),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let views = Arc::new(ViewCache::new(config.storage.view_cache_entries));
        {
            let views = views.clone();
            store.on_commit(Box::new(move |touched| views.invalidate(touched)));
        }
        let core = Arc::new(Core {
            views,
            metrics: Arc::new(Metrics::new()),
            store: store.clone(),
            audit: audit.clone(),
            clock,
            policy,
            rules,
            auth: auth.clone(),
            shutdown: shutdown_rx,
            limits: config.limits.clone(),
        });
        Ok(Application {
            listener,
            metrics_listener,
            health_listener,
            addr,
            config,
            store,
            core,
            shutdown,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store (fault drills and tests).
    pub fn store(&self) -> Arc<SledStore> {
        self.store.clone()
    }

    /// Where `/metrics` is served, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `stop` completes, then drains, flushes and closes the store.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            metrics_listener,
            health_listener,
            addr,
            config,
            store,
            core,
            shutdown,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in SERVICES.into_iter().chain([""]) {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(service::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(service::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let pruner = tokio::spawn(prune_loop(core.clone(), config.clone()));
        let metrics_upkeep = tokio::spawn(metrics_upkeep_loop(core.clone()));
        // A storage fault takes the service out of rotation: health turns NOT_SERVING.
        let fault_watch = {
            let health = health.clone();
            let mut durable = core.store.watch_durable();
            tokio::spawn(async move {
                loop {
                    let fault = durable.borrow().fault.clone();
                    if let Some(reason) = fault {
                        tracing::error!(%reason, "storage fault: health NOT_SERVING");
                        for name in SERVICES.into_iter().chain([""]) {
                            health
                                .set_service_status(name, ServingStatus::NotServing)
                                .await;
                        }
                        return;
                    }
                    if durable.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let health_server = health_listener.map(|l| {
            let mut stop = core.shutdown.clone();
            let svc = health_service.clone();
            tokio::spawn(
                Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(l), async move {
                        let _ = stop.wait_for(|s| *s).await;
                    }),
            )
        });
        let metrics_server = metrics_listener.map(|l| {
            let mut stop = core.shutdown.clone();
            tokio::spawn(metrics::serve(
                l,
                core.metrics.clone(),
                core.store.clone(),
                core.views.clone(),
                core.audit.clone(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ))
        });

        let drain_delay_ms = config.shutdown.drain_delay_ms;
        let shutdown = Arc::new(shutdown);
        let core_shutdown = shutdown.clone();
        let signal = {
            let health = health.clone();
            async move {
                stop.await;
                for name in SERVICES.into_iter().chain([""]) {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                tracing::info!("shutting down: health NOT_SERVING, draining in-flight calls");
                // Load balancers and kubelets see NOT_SERVING before the listener closes.
                tokio::time::sleep(Duration::from_millis(drain_delay_ms)).await;
                let _ = shutdown.send(true);
            }
        };
        let grace = Duration::from_secs(config.shutdown.grace_secs);
        let mut stopping = core.shutdown.clone();
        tracing::info!(%addr, data_dir = %config.data_dir.display(), lifo_slot_disabled = super::runtime::LIFO_SLOT_DISABLED, "serving gRPC");
        // The tower stack: every request passes here.
        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(tls_server_config(tls)?)?;
        }
        // Limits sit inside the auth layer: the principal is known (rate limits), and a shed
        // call is still counted and audited. Messages are bounded per service; the timeout caps
        // every call (a shorter `grpc-timeout` from the caller wins) by dropping its future.
        let limits = &config.limits;
        let limits_layer = super::limits::LimitsLayer::new(
            limits,
            config.auth.principals.iter().map(|p| p.name.as_str()),
            Some(core.metrics.clone()),
        );
        let (max_in, max_out) = (limits.max_message_bytes, limits.max_reply_bytes);
        let serve = builder
            .timeout(limits.max_request())
            .trace_fn(super::telemetry::call_span)
            .layer(AuthLayer {
                auth: core.auth.clone(),
                audit: Some(core.audit.clone()),
                metrics: Some(Arc::new(super::metrics::CallMetrics::new(
                    core.metrics.clone(),
                ))),
            })
            .layer(limits_layer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                IdentityServiceServer::new(IdentityApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                ProfileServiceServer::new(ProfileApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                InteractionServiceServer::new(InteractionApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                ConsentServiceServer::new(ConsentApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                ContactServiceServer::new(ContactApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                PrivacyServiceServer::new(PrivacyApi(core.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            .add_service(
                AdminServiceServer::new(AdminApi(store.clone()))
                    .max_decoding_message_size(max_in)
                    .max_encoding_message_size(max_out),
            )
            // TCP_NODELAY: without it a reply larger than one segment waits for the client's
            // delayed ACK (Nagle), ~40 ms per call on Linux (measured by bench/run, issue 7).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            );
        // In-flight calls get `shutdown.grace_secs` to finish once stopping begins; then the
        // server stops regardless (the store is still flushed and closed below).
        let deadline = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serve => served.context("serving gRPC")?,
            _ = deadline => tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the shutdown grace were cut off"),
        }

        // The shutdown signal is set by now (also when serving ended on its own: set it here),
        // so the pruner returns after the prune it may be in.
        let _ = core_shutdown.send(true);
        let _ = pruner.await;
        metrics_upkeep.abort();
        fault_watch.abort();
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        if let Some(h) = health_server {
            let _ = h.await;
        }
        core.audit.close();
        drop(core);
        store.close()?;
        // Streams, connection tasks and a blocking prune finishing in the background may still
        // hold the store for a moment; sled's file lock is released only when the last handle
        // goes, and the next process (a restart, an offline import) needs it. So wait for that,
        // bounded: 2 s was too short on a loaded 2-core CI machine.
        let release_by = tokio::time::Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < release_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!(
                holders = Arc::strong_count(&store) - 1,
                "the store is still held 30 s after stopping; its file lock is released when they finish"
            );
        }
        drop(store);
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs in the background; stop it with [`RunningServer::stop`].
    pub fn spawn(self) -> RunningServer {
        let addr = self.addr;
        let metrics_addr = self.metrics_addr();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(self.run_until(async move {
            let _ = rx.await;
        }));
        RunningServer {
            addr,
            metrics_addr,
            stop: tx,
            handle,
        }
    }
}

/// The master key: from the configured file or value, else (local development) from
/// `<data_dir>/master.key`, generated on first start.
pub fn master_key(config: &Config) -> anyhow::Result<Key> {
    let enc = &config.encryption;
    if let Some(path) = &enc.master_key_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading encryption.master_key_file {}", path.display()))?;
        return parse_master_key(&bytes).with_context(|| {
            format!(
                "encryption.master_key_file {}: not a 32-byte key (raw, or base64 of 32 bytes)",
                path.display()
            )
        });
    }
    if let Some(text) = &enc.master_key {
        return parse_master_key(text.as_bytes())
            .context("encryption.master_key: not the base64 of 32 bytes");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let path = config.data_dir.join("master.key");
    if path.exists() {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        tracing::warn!(path = %path.display(), "using the master key generated in the data directory; configure encryption.master_key_file (e.g. from a Kubernetes Secret) outside development");
        return parse_master_key(&bytes)
            .with_context(|| format!("{} is not a 32-byte master key", path.display()));
    }
    let key = Key::generate()?;
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(key.0);
    // Written durably (temporary name, fsync, rename, directory fsync): a crash leaves either
    // no master.key (a new one is generated, and nothing was written with the lost one) or the
    // complete key, never a torn file that would lock the directory out for good.
    crate::store::write_durably(&path, text.as_bytes(), Some(0o600))
        .with_context(|| format!("creating {}", path.display()))?;
    tracing::warn!(path = %path.display(), "NO MASTER KEY CONFIGURED: generated one into the data directory (local development). Anyone with the directory can read the data; configure encryption.master_key_file outside development");
    Ok(key)
}

/// The server's TLS settings from the configured files.
fn tls_server_config(tls: &TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).with_context(|| format!("reading tls.{what} {}", p.display()))
    };
    let identity = Identity::from_pem(
        read(&tls.cert_file, "cert_file")?,
        read(&tls.key_file, "key_file")?,
    );
    let mut cfg = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca, "client_ca_file")?))
            .client_auth_optional(tls.client_auth_optional);
    }
    Ok(cfg)
}

/// Removes change events and idempotency records past their retention, periodically.
async fn prune_loop(core: Arc<Core>, config: Config) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.changes.prune_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = core.shutdown.clone();
    loop {
        // Stops between prunes, never during one: a prune cut off by an abort would keep
        // running on its blocking thread and hold the store (and sled's file lock) after stop.
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let now = core.now();
        let changes_before = now.plus_secs(-(config.changes.retention_secs as i64));
        let idem_before = now.plus_secs(-(config.idempotency.retention_secs as i64));
        let store = core.store.clone();
        match tokio::task::spawn_blocking(move || store.prune(changes_before, idem_before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                removed = n,
                "pruned expired change events and idempotency records"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "pruning task failed"),
        }
    }
}

/// Folds the latency samples recorded since the last time into the histograms' buckets, every
/// [`metrics::UPKEEP_EVERY`]. The Prometheus recorder keeps every recorded sample until then,
/// and otherwise only a scrape of `/metrics` folds them: without scrapes (no `[metrics] listen`,
/// or no scraper) memory grew with every call. Measured by hand: about 3 MB/s while a flood was
/// refused at 150,000 calls/s, 120 MB over two 20 s floods.
async fn metrics_upkeep_loop(core: Arc<Core>) {
    let mut tick = tokio::time::interval(metrics::UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = core.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => core.metrics.run_upkeep(),
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Where `/metrics` is served, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully and waits until the store is closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.handle.await.context("server task")?
    }
}
