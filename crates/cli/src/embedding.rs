//! Commands that use the embedder: `embed`, `ingest`, and the embedding benchmarks.

use crate::commands::open_db;
use crate::{Cli, progress};
use anyhow::{Context, Result, bail};
use clap::Args;
use kernelize_embed::Embedder;
use kernelize_ingest::{Format, IngestOptions};
use kernelize_media::{Encoder, Modality};
use kernelize_store::{CollectionConfig, Metric};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `embed` arguments.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// The text.
    #[arg(required_unless_present_any = ["image", "audio"])]
    pub text: Option<String>,
    /// An image file (JPEG, PNG, WebP) to encode with EfficientNet-Lite0 instead.
    #[arg(long, conflicts_with_all = ["text", "audio"])]
    pub image: Option<PathBuf>,
    /// An audio file (WAV, FLAC, MP3, Ogg Vorbis) to encode with the voice encoder instead.
    #[arg(long, conflicts_with_all = ["text", "image"])]
    pub audio: Option<PathBuf>,
    /// With --image: print the top ImageNet labels instead of the vector.
    #[arg(long, requires = "image")]
    pub labels: bool,
    /// Model directory (default: the model's folder in $KERNELIZE_MODELS_DIR, else in
    /// ~/.local/share/kernelize/models, where `kernelize models install` puts it).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// `ingest` arguments.
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Input file (the format comes from the extension unless `--format` is given), or a
    /// folder of image or audio files for an image or audio collection.
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
    /// With --create: the modality of the new collection (text, image, audio). Image and
    /// audio collections ingest files: a folder (recursively), a Parquet column of file
    /// bytes, or file paths in JSONL / CSV / Parquet (--media-field).
    #[arg(long)]
    pub modality: Option<String>,
    /// Image and audio collections: the field holding each row's file path (relative
    /// paths are resolved against the input file's folder) or, in Parquet, the file's
    /// bytes.
    #[arg(long, default_value = "path")]
    pub media_field: String,
    /// Image and audio collections: what a file that cannot be read or encoded does —
    /// `stop` the load (what was acknowledged stays) or `skip` it and report it.
    #[arg(long, default_value = "stop")]
    pub on_bad_file: String,
    /// Image and audio collections: keep a copy of each file in the collection, so the
    /// server serves it back (GET .../records/{id}/media; the console's thumbnails and
    /// players).
    #[arg(long)]
    pub keep_files: bool,
}

pub fn model_dir(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(Embedder::default_model_dir)
}

/// Loads the embedder, with a hint when the weights are missing.
pub fn load_embedder(dir: &Path) -> Result<Embedder> {
    Embedder::load(dir).with_context(|| format!("loading the embedding model from {}", dir.display()))
}

pub fn embed(a: &EmbedArgs) -> Result<ExitCode> {
    let media = match (&a.image, &a.audio) {
        (Some(f), _) => Some((Modality::Image, f)),
        (_, Some(f)) => Some((Modality::Audio, f)),
        _ => None,
    };
    let Some((modality, file)) = media else {
        let e = load_embedder(&model_dir(&a.model_dir))?;
        let v = e.embed(&[a.text.as_deref().unwrap_or_default()])?;
        println!("{}", serde_json::to_string(&v[0])?);
        return Ok(ExitCode::SUCCESS);
    };
    let bytes = kernelize_media::read_media_file(file)?;
    if a.labels {
        let dir = media_model_dir(Modality::Image, &a.model_dir);
        let encoder = kernelize_media::ImageEncoder::load(&dir)
            .with_context(|| format!("loading the image model from {}", dir.display()))?;
        for l in encoder.classify(&bytes, 5).with_context(|| file.display().to_string())? {
            println!("{:.4}\t{}\t{}", l.probability, l.index, l.name);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let encoder = load_media_encoder(modality, &a.model_dir)?;
    let mut out = encoder.encode(&[kernelize_media::Input::Bytes(&bytes)]);
    let v = out.pop().context("the encoder returned nothing")?.with_context(|| file.display().to_string())?;
    println!("{}", serde_json::to_string(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// The model folder of an image or audio encoder: `dir` when given, else its folder in
/// the models directory.
fn media_model_dir(modality: Modality, dir: &Option<PathBuf>) -> PathBuf {
    dir.clone().unwrap_or_else(|| {
        let spec = match modality {
            Modality::Image => &kernelize_embed::models::EFFICIENTNET_LITE0,
            Modality::Audio => &kernelize_embed::models::RESEMBLYZER,
            Modality::Text => &kernelize_embed::models::MINILM,
        };
        kernelize_embed::models::model_dir(spec.name)
    })
}

/// Loads the encoder of `modality` (from `dir` when given), with a hint when missing.
pub fn load_media_encoder(modality: Modality, dir: &Option<PathBuf>) -> Result<Box<dyn Encoder>> {
    let dir = media_model_dir(modality, dir);
    let loaded: kernelize_media::Result<Box<dyn Encoder>> = match modality {
        Modality::Image => kernelize_media::ImageEncoder::load(&dir).map(|e| Box::new(e) as Box<dyn Encoder>),
        Modality::Audio => kernelize_media::AudioEncoder::load(&dir).map(|e| Box::new(e) as Box<dyn Encoder>),
        Modality::Text => kernelize_media::TextEncoder::load(&dir).map(|e| Box::new(e) as Box<dyn Encoder>),
    };
    loaded.with_context(|| format!("loading the {modality} model from {}", dir.display()))
}

pub fn ingest(cli: &Cli, a: &IngestArgs) -> Result<ExitCode> {
    let modality = a.modality.as_deref().map(str::parse::<Modality>).transpose()?;
    if a.create
        && let Some(m) = modality.filter(|m| *m != Modality::Text)
    {
        let db = open_db(cli)?;
        if db.collection(&a.collection).is_err() {
            let record = kernelize_media::encoder_record(m);
            db.create_collection(
                &a.collection,
                CollectionConfig { encoder: Some(record.clone()), ..CollectionConfig::new(record.dim, Metric::Cosine) },
            )?;
        }
    }
    {
        let db = open_db(cli)?;
        if let Ok(c) = db.collection(&a.collection)
            && c.config().modality() != Modality::Text
        {
            return ingest_media(&c, a);
        }
    }
    let db = open_db(cli)?;
    let dir = model_dir(&a.model_dir);
    let format = a.format.as_deref().map(str::parse::<Format>).transpose().map_err(|e| anyhow::anyhow!("{e}"))?;
    // The model is needed only when texts must be embedded (never for the rows of a
    // tensor file, which are vectors), or for the dimension of a collection to create;
    // load it then, when present.
    let tensor_rows = format.or_else(|| Format::from_path(&a.file)).is_some_and(|f| f.is_tensor());
    let existing = db.collection(&a.collection);
    let embedder = if dir.join("model.safetensors").exists() && !(tensor_rows && existing.is_ok()) {
        Some(load_embedder(&dir)?)
    } else {
        None
    };
    let collection = match existing {
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
    opts.format = format;
    opts.id_field = a.id_field.clone();
    opts.vector_field = a.vector_field.clone();
    opts.text_field = a.text_field.clone();
    opts.chunk_tokens = a.chunk_tokens;
    opts.chunk_overlap = a.chunk_overlap;
    opts.batch_size = a.batch;
    opts.tensor = a.tensor.clone();
    opts.ids_file = a.ids_file.clone();
    opts.generate_ids = a.generate_ids;
    let s =
        with_progress(|progress| kernelize_ingest::ingest(&collection, &a.file, &opts, embedder.as_ref(), progress))?;
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

/// Runs an ingestion under a progress bar of the bytes read.
fn with_progress<T>(run: impl FnOnce(&mut dyn FnMut(&kernelize_ingest::Progress)) -> T) -> T {
    let pb = progress::bytes(0, "ingest");
    let out = run(&mut |p| {
        pb.set_length(p.bytes_total);
        pb.set_position(p.bytes_read);
    });
    pb.finish_and_clear();
    out
}

/// Ingests files into an image or audio collection.
fn ingest_media(collection: &kernelize_store::Collection, a: &IngestArgs) -> Result<ExitCode> {
    let modality = collection.config().modality();
    let encoder = load_media_encoder(modality, &a.model_dir)?;
    let mut opts = IngestOptions::default();
    opts.format = a.format.as_deref().map(str::parse::<Format>).transpose().map_err(|e| anyhow::anyhow!("{e}"))?;
    opts.id_field = a.id_field.clone();
    opts.text_field = a.text_field.clone();
    opts.batch_size = a.batch;
    opts.generate_ids = a.generate_ids;
    opts.media_field = Some(a.media_field.clone());
    opts.bad_media = a.on_bad_file.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    opts.keep_media = a.keep_files;
    let s = with_progress(|progress| kernelize_ingest::ingest_media(collection, &a.file, &opts, &*encoder, progress))?;
    println!(
        "ingested {} into {} ({modality}): {} files encoded, {} skipped, {} records in {} batches, {:.2}s ({:.1} files/s)",
        a.file.display(),
        a.collection,
        s.media_encoded,
        s.media_skipped,
        s.records_written,
        s.batches,
        s.seconds,
        if s.seconds > 0.0 { s.media_encoded as f64 / s.seconds } else { 0.0 }
    );
    for line in &s.skipped {
        println!("skipped {line}");
    }
    if s.media_skipped as usize > s.skipped.len() {
        println!("... and {} more skipped", s.media_skipped as usize - s.skipped.len());
    }
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
