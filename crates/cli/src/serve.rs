//! `serve`, `audit verify` and `admin-key reset`.

use crate::Cli;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kernelize_server::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// `serve` arguments: each overrides the config file; each has a `KERNELIZE_*` variable.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (keys as in `kernelize_server::Config`: listen, tls_cert, tls_key,
    /// database_url, cors_origins, log_format, [limits] …).
    #[arg(long, env = "KERNELIZE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7700).
    #[arg(long, env = "KERNELIZE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, env = "KERNELIZE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "KERNELIZE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Control-plane database: `postgres://…` (default: SQLite `<data-dir>/control.db`).
    #[arg(long, env = "KERNELIZE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Admin key to install at first start instead of generating one.
    #[arg(long, env = "KERNELIZE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// File holding the admin key to install at first start.
    #[arg(long, env = "KERNELIZE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Model directory for embeddings.
    #[arg(long, env = "KERNELIZE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// GGUF file of the local language model of `/v1/programs` and `/v1/chat/completions`
    /// (default: SmolLM2-135M-Instruct in the models directory; loaded on first use).
    #[arg(long, env = "KERNELIZE_LLM_MODEL")]
    pub llm_model: Option<PathBuf>,
    /// Log format: json or text.
    #[arg(long, env = "KERNELIZE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log level: a tracing filter directive (default `info`; `RUST_LOG`, when set, wins
    /// at start). `log_level` in the config file is reloaded on SIGHUP.
    #[arg(long, env = "KERNELIZE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Export request spans over OTLP/HTTP to this endpoint (e.g.
    /// http://127.0.0.1:4318/v1/traces).
    #[arg(long, env = "KERNELIZE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Per-key sustained requests per second.
    #[arg(long, env = "KERNELIZE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Log searches taking at least this many milliseconds, with their explain (and keep
    /// the last 100 for `GET /v1/slow-queries`); 0 turns it off.
    #[arg(long, env = "KERNELIZE_SLOW_QUERY_MS")]
    pub slow_query_ms: Option<u64>,
    /// Run as a node of a cluster described by this file (`cluster.toml`: NATS, PostgreSQL,
    /// S3; see docs/cluster.md); collections then live in the cluster.
    #[arg(long, env = "KERNELIZE_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Print the listening address as `listening on ADDR` on stdout (for scripts).
    #[arg(long, hide = true)]
    pub print_addr: bool,
}

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the audit log against the data directory's audit key and signed checkpoints:
    /// any edited, inserted or removed entry, a cut or rolled-back tail, and any API key
    /// whose row is not the state the log last recorded is reported (exit code 1).
    Verify {
        /// Control-plane database (default: SQLite `<data-dir>/control.db`).
        #[arg(long, env = "KERNELIZE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

/// `admin-key` subcommands.
#[derive(Subcommand, Debug)]
pub enum AdminKeyCmd {
    /// Recovery when no key can administer the server (every admin key revoked, expired
    /// or scoped): add a new admin key of all collections that does not expire, straight
    /// to the control database, and print it once. Audited as `system` (`keys.reset`).
    /// Works with the server stopped or running.
    Reset {
        /// Control-plane database (default: SQLite `<data-dir>/control.db`).
        #[arg(long, env = "KERNELIZE_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// The server configuration: defaults, the `--config` file, `KERNELIZE_*` variables and
/// flags (clap has merged those two into `a`), validated. The master key is read only at
/// start (`start`): a reload keeps the one in use.
fn build_config(cli: &Cli, a: &ServeArgs, start: bool) -> Result<Config> {
    Config::load(a.config.as_deref(), |c| {
        c.data_dir = cli.data_dir.clone();
        c.durability = cli.durability.clone();
        c.memtable_mb = cli.memtable_mb;
        if start && let Some(k) = crate::commands::master_key(cli)? {
            c.master_key = Some(k);
        }
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &a.$f { c.$f = Some(v.clone()); } )* };
        }
        over!(tls_cert, tls_key, database_url, admin_key, admin_key_file, model_dir, llm_model, otlp_endpoint, cluster);
        if let Some(l) = a.listen {
            c.listen = l;
        }
        if let Some(f) = &a.log_format {
            c.log_format = f.clone();
        }
        if let Some(l) = &a.log_level {
            c.log_level = l.clone();
        }
        if let Some(ms) = a.slow_query_ms {
            c.slow_query_ms = ms;
        }
        if let Some(r) = a.rate_limit {
            c.limits.rate_per_sec = r;
            c.limits.burst = c.limits.burst.max(r);
        }
        Ok(())
    })
}

/// Waits for the next SIGHUP (forever where there is none).
async fn hangup(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs the server until SIGINT or SIGTERM; on SIGHUP re-reads the configuration the
/// same way and applies what can change live (`kernelize_server::reload`).
pub fn serve(cli: &Cli, a: &ServeArgs) -> Result<ExitCode> {
    let c = build_config(cli, a, true)?;
    let telemetry = kernelize_server::init_telemetry(&c.log_format, &c.log_level, c.otlp_endpoint.as_deref())?;
    runtime()?.block_on(async {
        let running = kernelize_server::start(c).await?;
        // Both installed before the address is announced: a signal sent right after
        // is handled, not the default action (which for SIGHUP is to exit).
        let stop = kernelize_server::shutdown_signal();
        let mut hup = Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("installing the SIGHUP handler")?,
        );
        if let Some(key) = running.generated_admin_key() {
            eprintln!(
                "\n  First start: generated the admin API key (shown only now; only its hash is stored):\n\n    {key}\n\n  \
                 Use it as `Authorization: Bearer <key>`; create narrower keys with POST /v1/keys.\n"
            );
        }
        if a.print_addr {
            println!("listening on {}", running.addr());
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = hangup(&mut hup) => {
                    match build_config(cli, a, false) {
                        // Logged and audited inside, applied or not.
                        Ok(c) => drop(running.reload(c).await),
                        Err(e) => running.reload_failed(&e).await,
                    }
                }
            }
        }
        running.shutdown().await
    })?;
    telemetry.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// `audit verify`.
pub fn audit(cli: &Cli, cmd: &AuditCmd) -> Result<ExitCode> {
    let AuditCmd::Verify { database_url } = cmd;
    let c = Config { data_dir: cli.data_dir.clone(), database_url: database_url.clone(), ..Config::default() };
    let url = c.database_url();
    runtime()?.block_on(async {
        let meta = kernelize_server::meta::MetaStore::connect(&url).await?;
        let v = meta.verify_audit(&c.data_dir).await;
        meta.close().await;
        let v = v?;
        match v.problem {
            None => {
                let keyed = v
                    .keyed_from
                    .map_or_else(|| "unkeyed (no audit-key)".to_owned(), |s| format!("keyed from entry {s}"));
                let cp = v.checkpoint_seq.map_or_else(|| "none".to_owned(), |s| format!("up to entry {s}"));
                println!(
                    "audit log OK: {} entries, head {}, {keyed}, {} signed checkpoints ({cp}), {} keys match the log",
                    v.entries, v.head_hash, v.checkpoints, v.keys_checked
                );
                Ok(ExitCode::SUCCESS)
            }
            Some(p) => {
                println!("audit log BROKEN after {} good entries: {p}", v.entries);
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// `admin-key reset`.
pub fn admin_key(cli: &Cli, cmd: &AdminKeyCmd) -> Result<ExitCode> {
    let AdminKeyCmd::Reset { database_url } = cmd;
    let c = Config { data_dir: cli.data_dir.clone(), database_url: database_url.clone(), ..Config::default() };
    let key = runtime()?.block_on(kernelize_server::admin::reset_admin_key(&c))?;
    eprintln!("New admin API key (shown only now; only its hash is stored):");
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}
