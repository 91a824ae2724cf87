//! `kernelize agent`: the device side of the fleet.
//!
//! The agent runs on the device, keeps serving queries offline whatever happens to the
//! network or the power, and never runs anything that came from the server: it installs
//! kernel files only, checked against signed release manifests.
//!
//! - [`agent::Agent`]: enrollment (a device key made on first start, mode 0600), device
//!   tokens, heartbeats at the server's interval (or early on an MQTT wake-up), offers
//!   carried out and reported: verify (release key pinned, rotated only through root
//!   documents; offers bound to the device and expiring; versions only move up unless a
//!   signed revert order says otherwise), download ([`download`]: resumable, checked chunk
//!   by chunk, capped at the signed length, stall and throughput limits, a bandwidth cap;
//!   deltas with a fallback to the full file), stage and run the golden queries, switch
//!   into trial, commit (the state file's rename, [`state`]) and only then report success.
//!   A restart in trial goes back to the previous kernel and reports `rolled_back`.
//! - [`serve`]: the local query API (the server's kernel query route) with a local key.
//! - [`window`]: maintenance windows (cron, duration, time zone) for swaps.
//!
//! Reason codes and the data directory layout: `docs/agent.md`.

pub mod agent;
pub mod download;
pub mod error;
pub mod logbuf;
pub mod serve;
pub mod state;
pub mod window;

pub use agent::{AGENT_VERSION, Agent, Config};
pub use error::{AgentError, Refusal, Result};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The agent's command-line options (the data directory comes from the caller: the
/// `kernelize` tool's global `--data-dir`, or the `kernelize-agent` binary's own).
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// The fleet server's base URL.
    #[arg(long, env = "KERNELIZE_AGENT_SERVER")]
    pub server: String,
    /// Enrollment token: the device is accepted at once (otherwise it waits for an admin).
    #[arg(long, env = "KERNELIZE_ENROLL_TOKEN")]
    pub enroll_token: Option<String>,
    /// What the device calls itself (serial number, host name; default: the host name).
    #[arg(long)]
    pub identity: Option<String>,
    /// A label proposed at enrollment, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Serve the local query API here (e.g. 127.0.0.1:7300; port 0 picks a free port,
    /// written to `local.addr` in the data directory).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The release key to trust (64 hex digits, from `kernelize fleet keys`). Without it
    /// the key is pinned on first contact with the server.
    #[arg(long, env = "KERNELIZE_RELEASE_KEY")]
    pub release_key: Option<String>,
    /// The kernel signing key to trust (64 hex digits). Without it the key is pinned on
    /// first contact with the server.
    #[arg(long, env = "KERNELIZE_KERNEL_KEY")]
    pub kernel_key: Option<String>,
    /// Wake up early when the server says so over MQTT (`mqtt://host[:port]`).
    #[arg(long, env = "KERNELIZE_AGENT_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Seconds a new kernel serves in trial (health watched) before it is committed.
    #[arg(long, default_value_t = 10)]
    pub trial_secs: u64,
    /// Maintenance window: a cron expression (`0 2 * * *`) for when swaps may start.
    #[arg(long)]
    pub window: Option<String>,
    /// How long each maintenance window lasts, minutes.
    #[arg(long, default_value_t = 60)]
    pub window_minutes: u64,
    /// Time zone of the maintenance window (IANA name).
    #[arg(long, default_value = "UTC")]
    pub window_tz: String,
    /// Read downloads at most this fast, bytes per second.
    #[arg(long)]
    pub max_bytes_per_sec: Option<u64>,
    /// Drop a download that receives nothing for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
    /// Drop a download slower than this many bytes per second over a minute.
    #[arg(long, default_value_t = 1024)]
    pub min_bytes_per_sec: u64,
}

impl AgentArgs {
    /// The agent's configuration for the data directory `data_dir`.
    pub fn config(&self, data_dir: PathBuf) -> Result<Config> {
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) =
                l.split_once('=').ok_or_else(|| AgentError::Config(format!("--label {l:?}: expected key=value")))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let window = match &self.window {
            None => None,
            Some(w) => Some(window::Window::new(w, Duration::from_secs(self.window_minutes * 60), &self.window_tz)?),
        };
        if let Some(u) = &self.mqtt_url {
            kernelize_fleet::parse_mqtt_url(u).map_err(|e| AgentError::Config(format!("--mqtt-url {e}")))?;
        }
        let identity = self.identity.clone().unwrap_or_else(|| {
            fs_err::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "device".into())
        });
        Ok(Config {
            data_dir,
            server: self.server.clone(),
            enroll_token: self.enroll_token.clone(),
            identity,
            labels,
            release_key: self.release_key.clone(),
            kernel_key: self.kernel_key.clone(),
            limits: download::Limits {
                stall: Duration::from_secs(self.stall_secs.max(1)),
                min_bytes_per_sec: self.min_bytes_per_sec,
                rate_window: Duration::from_secs(60),
                max_bytes_per_sec: self.max_bytes_per_sec,
                attempts: 3,
                window: download::Limits::window_for(self.max_bytes_per_sec),
            },
            trial: Duration::from_secs(self.trial_secs),
            window,
        })
    }
}

/// Subscribes to the device's wake-up topic and pokes the agent on each message; a
/// broker that goes away is retried (polling goes on regardless).
async fn mqtt_wakeups(agent: Arc<Agent>, url: String) {
    let Ok((host, port)) = kernelize_fleet::parse_mqtt_url(&url) else { return };
    let device = agent.device_id().await;
    let topic = kernelize_fleet::wake_topic(&device);
    let mut opts = rumqttc::MqttOptions::new(format!("kz-agent-{device}"), host, port);
    opts.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if let Err(e) = client.subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce).await {
                    agent.log.note(format!("mqtt: subscribing to {topic}: {e}"));
                } else {
                    agent.log.note(format!("mqtt: listening on {topic}"));
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic == topic => agent.wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("mqtt: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM: local API, MQTT wake-ups, rounds.
pub async fn run(args: &AgentArgs, data_dir: PathBuf) -> anyhow::Result<()> {
    let cfg = args.config(data_dir.clone())?;
    let agent = Arc::new(Agent::open(cfg)?);
    agent.log.note(format!(
        "agent {AGENT_VERSION}: device {} with data in {}",
        agent.device_id().await,
        data_dir.display()
    ));
    if let Some(addr) = args.listen {
        let key = agent::local_key(&data_dir)?;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--listen {addr}: {e}"))?;
        let app = serve::router(agent.kernels.clone(), &key);
        // The address bound (a port of 0 picks a free one), for scripts and tests.
        let bound = listener.local_addr()?;
        state::write_durable(&data_dir.join(agent::LOCAL_ADDR_FILE), bound.to_string().as_bytes())?;
        agent.log.note(format!("local API on http://{bound}"));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("local API: {e}");
            }
        });
    }
    if let Some(u) = &args.mqtt_url {
        tokio::spawn(mqtt_wakeups(agent.clone(), u.clone()));
    }
    let runner = tokio::spawn(agent.clone().run());
    shutdown_signal().await;
    runner.abort();
    agent.log.note("stopping");
    Ok(())
}

/// Logs to stderr, filtered by `$KERNELIZE_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KERNELIZE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
