//! `kernelize-agent`: the device agent as its own small binary (no server, ingestion,
//! Parquet or OTLP in it). `kernelize agent` runs the same code.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// The Kernelize device agent: enrolls with a fleet server, installs signed kernels behind
/// a health gate and serves queries offline.
#[derive(Parser, Debug)]
#[command(name = "kernelize-agent", version, about, long_about = None)]
struct Cli {
    /// The agent's data directory (device key, state, kernels).
    #[arg(long, env = "KERNELIZE_DATA_DIR", default_value = "kernelize-agent")]
    data_dir: PathBuf,
    #[command(flatten)]
    agent: kernelize_agent::AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kernelize_agent::init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(kernelize_agent::run(&cli.agent, cli.data_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
