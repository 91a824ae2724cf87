//! `search` and `index build`: queries over a collection's segment indexes and memtable.

use crate::Cli;
use crate::commands::{open_db, open_db_for_reading};
use crate::embedding::{load_embedder, model_dir};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kernelize_index::filter::Filter;
use kernelize_index::search::{IndexCache, Mode, Plan, Query, Searcher};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `search` arguments.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Collection to search.
    #[arg(long, short)]
    pub collection: String,
    /// Query text: embedded for vector search, matched with BM25 for keyword search, both
    /// for hybrid.
    #[arg(long)]
    pub text: Option<String>,
    /// File holding the query vector as a JSON array of numbers.
    #[arg(long)]
    pub vector_file: Option<PathBuf>,
    /// Image or audio collections: the query file (an image: "more like this"; a voice
    /// clip: search by voice), encoded with the collection's encoder.
    #[arg(long, conflicts_with = "vector_file")]
    pub media: Option<PathBuf>,
    /// Metadata filter, e.g. `pos = "n" and (year >= 1990 or tag in ["a", "b"])`;
    /// operators `= != < <= > >= in`, `and`, `or`, `not`, parentheses, dotted paths.
    #[arg(long)]
    pub filter: Option<String>,
    /// Results.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Beam width of the graph search (default 128, at least k); higher is slower and
    /// more exact.
    #[arg(long)]
    pub ef: Option<usize>,
    /// Fuse keyword (BM25) and vector results with reciprocal rank fusion.
    #[arg(long, conflicts_with = "mode")]
    pub hybrid: bool,
    /// Ranking: vector (default), keyword (BM25 over `text`) or hybrid.
    #[arg(long)]
    pub mode: Option<String>,
    /// Exact search over every live record (ground truth; slow on large collections).
    #[arg(long)]
    pub exact: bool,
    /// Filtered queries: `auto` lets the planner choose per segment between walking the
    /// graph (skipping rows the filter rejects) and scanning the matching rows; `walk`
    /// and `scan` force one.
    #[arg(long, default_value = "auto")]
    pub plan: String,
    /// Model directory (for `--text` in vector and hybrid modes).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// `index` subcommands.
#[derive(Subcommand, Debug)]
pub enum IndexCmd {
    /// Build (or open and check) the search index of every segment of a collection.
    /// Searches build missing indexes themselves; this does it ahead of time.
    Build {
        /// Collection.
        #[arg(long, short)]
        collection: String,
    },
}

fn read_vector(path: &PathBuf) -> Result<Vec<f32>> {
    let text = fs_err::read_to_string(path)?;
    let v: Vec<f64> = serde_json::from_str(text.trim())
        .with_context(|| format!("{}: expected a JSON array of numbers", path.display()))?;
    Ok(v.into_iter().map(|x| x as f32).collect())
}

pub fn search(cli: &Cli, a: &SearchArgs) -> Result<ExitCode> {
    let mode = match (a.hybrid, a.mode.as_deref()) {
        (true, _) | (_, Some("hybrid")) => Mode::Hybrid,
        (_, Some("keyword")) => Mode::Keyword,
        (_, Some("vector")) | (_, None) => Mode::Vector,
        (_, Some(m)) => bail!("unknown mode {m:?}: expected vector, keyword or hybrid"),
    };
    if a.text.is_none() && a.vector_file.is_none() && a.media.is_none() {
        bail!("give the query as --text \"…\", --vector-file FILE or --media FILE");
    }
    let filter = a.filter.as_deref().map(Filter::parse).transpose()?;
    let mut vector = a.vector_file.as_ref().map(read_vector).transpose()?;
    let db = open_db_for_reading(cli)?;
    let coll = db.collection(&a.collection)?;
    let modality = coll.config().modality();
    if let Some(file) = &a.media {
        if modality == kernelize_media::Modality::Text {
            bail!(
                "collection {} has no image or audio encoder; --media needs one (collection create --modality)",
                a.collection
            );
        }
        let bytes = kernelize_media::read_media_file(file)?;
        let encoder = crate::embedding::load_media_encoder(modality, &a.model_dir)?;
        let v =
            encoder.encode(&[kernelize_media::Input::Bytes(&bytes)]).pop().context("the encoder returned nothing")?;
        vector = Some(v.with_context(|| file.display().to_string())?);
    } else if vector.is_none() && mode != Mode::Keyword {
        if modality != kernelize_media::Modality::Text {
            bail!(
                "collection {} is an {modality} collection: query it with --media FILE (or --text in keyword mode)",
                a.collection
            );
        }
        let e = load_embedder(&model_dir(&a.model_dir))?;
        let text = a.text.as_deref().unwrap_or_default();
        vector = e.embed(&[text])?.into_iter().next();
    }
    // A read-only directory gets no index files: missing ones are built in memory.
    let cache = if db.is_read_only() { IndexCache::read_only() } else { IndexCache::new() };
    let searcher = Searcher::new(&coll, &**db.storage(), &cache);
    let plan = match a.plan.as_str() {
        "auto" => Plan::Auto,
        "walk" => Plan::Walk,
        "scan" => Plan::Scan,
        p => bail!("unknown plan {p:?}: expected auto, walk or scan"),
    };
    let q = Query { vector, text: a.text.clone(), k: a.k, ef: a.ef, filter, mode, exact: a.exact, plan, bm25: None };
    let hits = searcher.search(&q)?;
    let mut out = std::io::stdout().lock();
    for h in hits {
        let mut line = serde_json::json!({"id": h.id, "score": h.score});
        if let Some(t) = &h.record.text {
            line["text"] = serde_json::Value::String(t.clone());
        }
        if let Some(m) = &h.record.metadata {
            line["metadata"] = serde_json::Value::Object(m.clone());
        }
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn index(cli: &Cli, cmd: &IndexCmd) -> Result<ExitCode> {
    match cmd {
        IndexCmd::Build { collection } => {
            let db = open_db(cli)?;
            let coll = db.collection(collection)?;
            let cache = IndexCache::new();
            let reports = cache.ensure(&coll, &**db.storage())?;
            if reports.is_empty() {
                println!("{collection}: no segments yet (the memtable is searched exactly)");
            }
            for r in reports {
                let what = if r.built { "built" } else { "opened" };
                println!("{}: {} rows, {what} in {:.2}s", r.path.display(), r.rows, r.secs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
