//! The Kernelize server: a REST API (`/v1`) over the durable engine, search and the
//! embedder, safe to put on a network on day one — no anonymous access to data, API keys
//! stored only as keyed hashes, short-lived EdDSA tokens, roles and collection scopes
//! checked where the engine is called, per-key rate limits and usage, a hash-chained
//! audit log, Prometheus metrics and structured logs.
//!
//! [`start`] brings a server up from a [`Config`] and returns a [`Running`] handle;
//! [`Running::shutdown`] drains requests and syncs every write-ahead log.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod console;
pub mod docs;
pub mod engine;
pub mod error;
mod files;
pub mod fleet;
pub mod fleet_notify;
pub mod http;
pub mod kernels;
pub mod map;
pub mod media;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod oidc;
pub mod programs;
mod programs_compile;
pub mod progress;
pub mod quota;
mod ratelimit;
pub mod reload;
pub mod state;

pub use config::{Config, Limits};

use anyhow::{Context, Result};
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long shutdown waits for the last holders of the state to let go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// A started server.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_key: Option<String>,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<Result<()>>,
    state: Arc<AppState>,
}

impl Running {
    /// The address it listens on (the real port when the configured one was 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The admin key generated at this first start (shown once), if one was.
    pub fn generated_admin_key(&self) -> Option<&str> {
        self.admin_key.as_deref()
    }
    /// The shared state (for tests and tools in the same process).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }
    /// Applies a re-read configuration (SIGHUP): see [`AppState::reload`].
    pub async fn reload(&self, config: Config) -> Result<reload::Reloaded> {
        self.state.reload(config).await
    }
    /// Records a reload that failed before it had a configuration (a file that does not
    /// parse or validate): see [`AppState::reload_failed`].
    pub async fn reload_failed(&self, error: &anyhow::Error) {
        self.state.reload_failed(error).await;
    }
    /// Stops accepting, drains requests in flight (up to [`DRAIN_TIMEOUT`]), writes
    /// pending usage, syncs every collection's WAL and closes the metadata store;
    /// returns once the data directory's lock is released.
    pub async fn shutdown(self) -> Result<()> {
        self.state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.programs.cancel_all();
        self.handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
        // Drain requests, not connections: once none is in flight, close the idle
        // kept-alive connections rather than wait for their clients to hang up.
        let started = tokio::time::Instant::now();
        let all = self.state.live().limits.concurrency;
        let busy = |st: &AppState| {
            st.inflight.available_permits() < all || st.handlers.load(std::sync::atomic::Ordering::SeqCst) > 0
        };
        while busy(&self.state) && started.elapsed() < DRAIN_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last responses may still be on their way out: give the connections a
        // moment to finish on their own, then close what is left.
        let mut task = self.task;
        let ended = tokio::time::timeout(Duration::from_secs(1), &mut task).await;
        let result = match ended {
            Ok(r) => r,
            Err(_) => {
                self.handle.shutdown();
                task.await
            }
        };
        result.context("server task")??;
        if let Some(node) = &self.state.cluster
            && let Err(e) = node.shutdown().await
        {
            tracing::warn!(error = %e, "cluster node did not leave cleanly (its leases run out)");
        }
        let st = self.state;
        if let Err(e) = st.flush_usage().await {
            tracing::error!(error = %e, "could not write usage at shutdown");
        }
        if let Err(e) = st.checkpoint_head(None).await {
            tracing::error!(error = %e, "could not checkpoint the audit head at shutdown");
        }
        let db = st.db.clone();
        tokio::task::spawn_blocking(move || {
            for c in db.collections() {
                c.sync()?;
            }
            Ok::<_, kernelize_store::Error>(())
        })
        .await??;
        st.meta.close().await;
        // Connection tasks and the usage flusher may still hold the state for a
        // moment; the data directory's lock goes with the last holder. Returning
        // before then would let a restart in this process find the lock taken.
        let db = Arc::downgrade(&st.db);
        drop(st);
        let released = tokio::time::Instant::now();
        while db.strong_count() > 0 {
            anyhow::ensure!(
                released.elapsed() < RELEASE_TIMEOUT,
                "the data directory is still held {RELEASE_TIMEOUT:?} after shutdown"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Logging and optional trace export, set up once per process by [`init_telemetry`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends spans still buffered to the OTLP endpoint and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "OTLP exporter did not shut down cleanly");
        }
    }
}

/// The handle that swaps the log filter of the subscriber [`init_telemetry`] installed.
type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Set once, by the [`init_telemetry`] call whose subscriber became the global one.
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// The filter of a `log_level` directive: sqlx's per-statement logs stay at `warn`
/// unless the directive names `sqlx` itself.
fn log_filter(directive: &str) -> Result<tracing_subscriber::EnvFilter> {
    let full = if directive.contains("sqlx") { directive.to_owned() } else { format!("{directive},sqlx=warn") };
    tracing_subscriber::EnvFilter::builder().parse(&full).with_context(|| format!("log_level {directive:?}"))
}

/// Replaces the log filter of the running process with `directive` (a reload of
/// `log_level`). `Ok(false)` when this process did not install the subscriber (a
/// test harness, or a second server in one process): nothing changed.
pub fn set_log_level(directive: &str) -> Result<bool> {
    let filter = log_filter(directive)?;
    match LOG_FILTER.get() {
        Some(h) => {
            h.reload(filter).context("replacing the log filter")?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Sets up logging — JSON lines (or text) on stderr, level from `RUST_LOG` when set,
/// else from `log_level` (a tracing `EnvFilter` directive; reloadable with
/// [`set_log_level`]) — and, with an `otlp_endpoint` (`http://host:4318/v1/traces`),
/// exports each request's span over OTLP/HTTP (protobuf) in batches.
pub fn init_telemetry(format: &str, log_level: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => log_filter(log_level)?,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" { fmt.json().flatten_event(true).boxed() } else { fmt.boxed() };
    let mut telemetry = Telemetry::default();
    let otel = match otlp_endpoint {
        Some(url) => {
            anyhow::ensure!(url.starts_with("http://"), "otlp_endpoint must be an http:// URL (got {url:?})");
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
                .with_context(|| format!("OTLP exporter for {url}"))?;
            let resource = opentelemetry_sdk::Resource::builder().with_service_name("kernelize").build();
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("kernelize");
            telemetry.provider = Some(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };
    // A second call in one process (tests) keeps the first subscriber.
    if tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init().is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
    Ok(telemetry)
}

/// The router with every middleware, over `state`. Body limit and CORS consult the
/// live settings on each request, so a reload changes them for the next one.
pub fn router(state: Arc<AppState>) -> axum::Router {
    api::protected_routes()
        .merge(fleet::protected_routes())
        .merge(programs::protected_routes())
        .merge(oidc::protected_routes())
        .merge(map::protected_routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), http::guard))
        .merge(api::public_routes())
        .merge(oidc::public_routes())
        .merge(console::routes())
        .merge(fleet::device_routes(state.clone()))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::observe))
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::cors))
        .with_state(state)
}

/// Opens everything the configuration names and starts serving.
pub async fn start(config: Config) -> Result<Running> {
    config.validate()?;
    if let Some(path) = &config.cluster
        && !config
            .database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
    {
        anyhow::bail!(
            "--cluster {}: the nodes of a cluster share one control plane (keys, audit log, fleet): \
             set --database-url (KERNELIZE_DATABASE_URL) to the cluster's PostgreSQL",
            path.display()
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Bind first: a taken port fails here, at once, before anything is opened.
    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    listener.set_nonblocking(true).with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().with_context(|| format!("listening on {}", config.listen))?;
    files::private_dir(&config.data_dir)?;
    if config.database_url.is_none() {
        files::private_sqlite(&config.data_dir.join("control.db"))?;
    }
    let data_dir = config.data_dir.clone();
    let opts = kernelize_store::Options {
        durability: config.durability.parse()?,
        memtable_bytes: config.memtable_mb.saturating_mul(1 << 20),
        ..Default::default()
    };
    let master = config.master_key()?;
    let db =
        tokio::task::spawn_blocking(move || kernelize_store::Database::open_keyed(&data_dir, opts, master.as_ref()))
            .await?
            .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    for (collection, reason) in db.unavailable() {
        tracing::error!(collection, reason, "collection unavailable: /readyz fails until it is recovered");
    }
    let model_dir = config.model_dir.clone().unwrap_or_else(kernelize_embed::Embedder::default_model_dir);
    let embedder = tokio::task::spawn_blocking(move || {
        kernelize_embed::Embedder::load(&model_dir).map(Arc::new).map_err(|e| format!("embedder unavailable: {e}"))
    })
    .await?;
    if let Err(e) = &embedder {
        tracing::warn!(error = %e, "embedding endpoints will answer 503");
    }
    let secrets = auth::Secrets::load_or_create(&config.data_dir)?;
    let meta = meta::MetaStore::connect(&config.database_url()).await?;
    meta.fail_interrupted_jobs(state::now_ms()).await?;
    let kernels = kernels::Kernels::load(&config.data_dir)?;
    files::private_dir(&config.data_dir.join("kernels"))?;
    let audit_keys = Arc::new(audit::AuditKeys::load_or_create(&config.data_dir)?);
    meta.ensure_keyed(&audit_keys).await?;
    let fleet = kernelize_fleet::Fleet::new(meta.pool().clone(), config.fleet.to_fleet_config())
        .with_distribution(fleet::distribution(&config).await?);
    fleet.load().await.context("loading the fleet's device liveness")?;
    let mut state = AppState::new(config, Arc::new(db), embedder, meta, secrets, kernels, audit_keys, fleet);
    if let Some(path) = state.config.cluster.clone() {
        let cluster = kernelize_cluster::ClusterConfig::load(&path)?;
        if let Some(url) = &cluster.redis_url {
            state.shared_limiter = Some(ratelimit::SharedLimiter::connect(url, &cluster.name).await?);
        }
        let node = kernelize_cluster::Node::start(cluster).await.context("joining the cluster")?;
        tracing::info!(node = node.id(), cluster = %path.display(), "cluster node started");
        state.cluster = Some(Arc::new(node));
    }
    let state = Arc::new(state);
    let admin_key = state.bootstrap_admin().await?;
    state.adopt_legacy_kernels().await?;
    audit::spawn_checkpointer(&state).await?;
    fleet_notify::spawn(&state)?;

    let flusher = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let Some(st) = flusher.upgrade() else { break };
            if let Err(e) = st.flush_usage().await {
                tracing::warn!(error = %e, "usage flush failed; will retry");
            }
        }
    });

    let ticker = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = ticker.upgrade() else { break };
            if let Err(e) = st.fleet.tick(state::now_ms()).await {
                tracing::warn!(error = %e, "fleet tick failed; will retry");
            }
        }
    });

    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let header_timeout = Duration::from_millis(state.config.limits.header_read_timeout_ms);
    let task = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| format!("loading TLS certificate {} and key {}", cert.display(), key.display()))?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(header_timeout)
                .acceptor(FirstByte(header_timeout));
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor).handle(handle.clone());
            connection_timeouts(server.http_builder(), header_timeout);
            tokio::spawn(async move { server.serve(app).await.context("serving HTTPS") })
        }
        _ => {
            let mut server = axum_server::from_tcp(listener).acceptor(FirstByte(header_timeout)).handle(handle.clone());
            connection_timeouts(server.http_builder(), header_timeout);
            tokio::spawn(async move { server.serve(app).await.context("serving HTTP") })
        }
    };
    let scheme = if state.config.tls_cert.is_some() { "https" } else { "http" };
    tracing::info!(addr = %addr, scheme, metadata = ?state.meta.backend(), "listening");
    Ok(Running { addr, admin_key, handle, task, state })
}

/// Closes connections whose request headers take longer than `header` to arrive, and
/// kept-alive connections idle for as long (hyper starts the same timer while it waits
/// for the next request's first byte).
fn connection_timeouts(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    header: Duration,
) {
    b.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header);
}

/// Hands a new connection on only once its first byte arrived, within the given time
/// (else drops it): before that, hyper's own header timer is not running yet (it first
/// reads to tell HTTP/1 from HTTP/2).
#[derive(Debug, Clone, Copy)]
struct FirstByte(Duration);

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for FirstByte {
    type Stream = tokio::net::TcpStream;
    type Service = S;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(tokio::net::TcpStream, S)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let wait = self.0;
        Box::pin(async move {
            let mut first = [0u8; 1];
            match tokio::time::timeout(wait, stream.peek(&mut first)).await {
                Ok(peeked) => peeked.map(|_| (stream, service)),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request on a new connection")),
            }
        })
    }
}

/// Waits for SIGINT or SIGTERM.
///
/// The handlers are installed when this is called (inside the runtime), not when the
/// future is first polled: call it before announcing the address, so a signal sent
/// right after startup stops the server cleanly instead of killing the process.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (int, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! { () = wait(int) => {}, () = wait(term) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
