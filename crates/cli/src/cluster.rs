//! `kernelize cluster …`: check a cluster configuration against its services, show the
//! members and shards, collect unreferenced files in its object store, take a cluster
//! down for good.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kernelize_cluster::ClusterConfig;
use kernelize_cluster::meta::Meta;
use std::path::PathBuf;
use std::process::ExitCode;

/// `cluster` arguments.
#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The cluster configuration (`cluster.toml`, as `serve --cluster` takes it).
    #[arg(long, env = "KERNELIZE_CLUSTER", global = true)]
    pub cluster: Option<PathBuf>,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Validate the configuration and reach every service it names (PostgreSQL, NATS
    /// JetStream, the object store); exit code 1 if any fails.
    Check,
    /// Live members, collections and every shard's lease owner, epoch and checkpoint.
    Status,
    /// Create the server secrets every node of a cluster must share (`server-secret`,
    /// `token-signing.pk8`, `audit-key`, `audit-checkpoint.pk8`) in DIR, keeping any
    /// already there; copy them into each node's data directory (or mount them). Also
    /// `admin-key`: a new admin API key for `--admin-key-file` of every node.
    Secrets {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Delete files in the cluster's object store that no shard's committed state names
    /// (replaced by later seals, compacted away, of dropped collections) and older than
    /// --min-age-secs. The bucket (or prefix) must be the cluster's own.
    Gc {
        /// Keep unreferenced files younger than this, in seconds; more than 3 ×
        /// `blob_options.refresh_after_secs` (3 h with the defaults).
        #[arg(long, default_value_t = 86_400)]
        min_age_secs: u64,
    },
    /// Delete the cluster's stream and PostgreSQL schema (every node must be stopped;
    /// sealed segments stay in the object store).
    Destroy {
        /// Really.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `cluster` command.
pub fn run(a: &ClusterArgs) -> Result<ExitCode> {
    if let ClusterCmd::Secrets { dir } = &a.cmd {
        kernelize_server::auth::Secrets::load_or_create(dir)?;
        kernelize_server::audit::AuditKeys::load_or_create(dir)?;
        let admin = dir.join("admin-key");
        if !admin.exists() {
            kernelize_kernel::keys::write_private(&admin, kernelize_server::auth::generate_key().1.as_bytes())?;
        }
        println!(
            "server secrets in {}: server-secret token-signing.pk8 audit-key audit-checkpoint.pk8 admin-key",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(path) = &a.cluster else { bail!("--cluster FILE (or KERNELIZE_CLUSTER) is required") };
    let cfg = ClusterConfig::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        match &a.cmd {
            ClusterCmd::Check => {
                let mut failed = false;
                println!("{}: valid (cluster {}, node {})", path.display(), cfg.name, cfg.node());
                for (what, r) in kernelize_cluster::check(&cfg).await {
                    match r {
                        Ok(s) => println!("  {what}: ok: {s}"),
                        Err(e) => {
                            failed = true;
                            println!("  {what}: FAILED: {e}");
                        }
                    }
                }
                Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
            }
            ClusterCmd::Status => {
                let meta = Meta::connect(&cfg.database_url, &cfg.name).await?;
                let window = cfg.timing.heartbeat() * 3;
                println!("members: {}", meta.live_members(window).await?.join(", "));
                for c in meta.collections().await? {
                    println!("collection {} ({} shards, dim {}, {:?})", c.name, c.shards, c.config.dim, c.config.metric);
                    for s in meta.shards(&c.cid).await? {
                        let owner = if s.lease_live { s.owner.as_deref().unwrap_or("-") } else { "- (lease expired)" };
                        println!(
                            "  shard {:>3}  owner {owner:<16} epoch {:>4}  checkpoint {:>10}  segments {:>3}  commits {}",
                            s.shard,
                            s.epoch,
                            s.checkpoint,
                            s.state.segments.len(),
                            s.commits
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCmd::Secrets { .. } => Ok(ExitCode::SUCCESS),
            ClusterCmd::Gc { min_age_secs } => {
                let r = kernelize_cluster::gc(&cfg, std::time::Duration::from_secs(*min_age_secs)).await?;
                println!(
                    "deleted {} files ({} bytes); kept {} referenced ({} bytes) and {} younger than {min_age_secs} s ({} bytes)",
                    r.deleted, r.deleted_bytes, r.referenced, r.referenced_bytes, r.young, r.young_bytes
                );
                if !r.missing.is_empty() {
                    println!("MISSING: {} files a shard names are not in the object store", r.missing.len());
                    for d in &r.missing {
                        println!("  {d}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                Ok(ExitCode::SUCCESS)
            }
            ClusterCmd::Destroy { yes } => {
                if !yes {
                    bail!("this deletes every write not yet sealed and every shard's state: pass --yes");
                }
                kernelize_cluster::destroy(&cfg).await?;
                println!("cluster {} destroyed (stream {}, schema kzc_{})", cfg.name, cfg.stream_name(), cfg.name);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
