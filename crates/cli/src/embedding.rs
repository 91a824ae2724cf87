//! Commands that use the embedder: `embed`, `ingest`, and the embedding benchmarks.

use crate::commands::open_db;
use crate::{Cli, progress};
use anyhow::{Context, Result, bail};
use clap::Args;
use kernelize_embed::Embedder;
use kernelize_ingest::{Format, IngestOptions};
use kernelize_store::{CollectionConfig, Metric};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `embed` arguments.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// The text.
    pub text: String,
    /// Model directory (default: all-MiniLM-L6-v2 in $KERNELIZE_MODELS_DIR, else in
    /// ~/.local/share/kernelize/models, where `kernelize models install` puts it).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// `ingest` arguments.
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Input file; the format comes from the extension unless `--format` is given.
    pub file: PathBuf,
    /// Collection to write into.
    #[arg(long, short)]
    pub collection: String,
    /// Create the collection if missing (dimension of the embedder, cosine).
    #[arg(long)]
    pub create: bool,
    /// Format: jsonl, csv, parquet, safetensors, npy.
    #[arg(long)]
    pub format: Option<String>,
    /// Field holding the id.
    #[arg(long, default_value = "id")]
    pub id_field: String,
    /// Field holding a pre-computed vector (taken as is).
    #[arg(long, default_value = "vector")]
    pub vector_field: String,
    /// Field holding text; embedded when the row has no vector.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Split texts longer than this many tokens into overlapping chunks (`{id}#{n}`).
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// Tokens shared by consecutive chunks (default: chunk-tokens / 8).
    #[arg(long)]
    pub chunk_overlap: Option<usize>,
    /// Records per atomic batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Tensor name inside a safetensors file (default: the only 2-D tensor).
    #[arg(long)]
    pub tensor: Option<String>,
    /// Ids for safetensors/.npy rows, one per line (default: `{file stem}-{row}`).
    #[arg(long)]
    pub ids_file: Option<PathBuf>,
    /// Make ids `{file stem}-{line}` for rows without one instead of failing.
    #[arg(long)]
    pub generate_ids: bool,
    /// Model directory.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

pub fn model_dir(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(Embedder::default_model_dir)
}

/// Loads the embedder, with a hint when the weights are missing.
pub fn load_embedder(dir: &Path) -> Result<Embedder> {
    Embedder::load(dir).with_context(|| format!("loading the embedding model from {}", dir.display()))
}

pub fn embed(a: &EmbedArgs) -> Result<ExitCode> {
    let e = load_embedder(&model_dir(&a.model_dir))?;
    let v = e.embed(&[a.text.as_str()])?;
    println!("{}", serde_json::to_string(&v[0])?);
    Ok(ExitCode::SUCCESS)
}

pub fn ingest(cli: &Cli, a: &IngestArgs) -> Result<ExitCode> {
    let db = open_db(cli)?;
    let dir = model_dir(&a.model_dir);
    // The model is needed only when texts must be embedded; load it when present.
    let embedder = if dir.join("model.safetensors").exists() { Some(load_embedder(&dir)?) } else { None };
    let collection = match db.collection(&a.collection) {
        Ok(c) => c,
        Err(_) if a.create => {
            let Some(e) = &embedder else {
                bail!(
                    "--create needs the embedding model for the dimension; install it with `kernelize models install`"
                );
            };
            db.create_collection(&a.collection, CollectionConfig::new(e.dim(), Metric::Cosine))?
        }
        Err(e) => return Err(e).context("use --create to create it"),
    };
    let mut opts = IngestOptions::default();
    opts.format = a.format.as_deref().map(str::parse::<Format>).transpose().map_err(|e| anyhow::anyhow!("{e}"))?;
    opts.id_field = a.id_field.clone();
    opts.vector_field = a.vector_field.clone();
    opts.text_field = a.text_field.clone();
    opts.chunk_tokens = a.chunk_tokens;
    opts.chunk_overlap = a.chunk_overlap;
    opts.batch_size = a.batch;
    opts.tensor = a.tensor.clone();
    opts.ids_file = a.ids_file.clone();
    opts.generate_ids = a.generate_ids;
    let pb = progress::bytes(0, "ingest");
    let summary = kernelize_ingest::ingest(&collection, &a.file, &opts, embedder.as_ref(), &mut |p| {
        pb.set_length(p.bytes_total);
        pb.set_position(p.bytes_read);
    });
    pb.finish_and_clear();
    let s = summary?;
    println!(
        "ingested {} into {}: {} rows, {} records ({} chunks, {} texts embedded) in {} batches, {:.2}s ({:.0} records/s)",
        a.file.display(),
        a.collection,
        s.rows_read,
        s.records_written,
        s.chunks_created,
        s.texts_embedded,
        s.batches,
        s.seconds,
        s.records_per_second
    );
    Ok(ExitCode::SUCCESS)
}

/// Texts from a file: JSONL (the `text` field of each object) or plain lines.
pub fn read_texts(path: &Path, limit: usize) -> Result<Vec<String>> {
    let body = fs_err::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        if out.len() >= limit {
            break;
        }
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            match v.get("text").and_then(|t| t.as_str()) {
                Some(t) => out.push(t.to_owned()),
                None => bail!("{}:{}: no string field \"text\"", path.display(), i + 1),
            }
        } else {
            out.push(line.to_owned());
        }
    }
    Ok(out)
}
