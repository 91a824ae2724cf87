//! `kernel build | inspect | verify | query | merge | diff` and `keys generate`.

use crate::Cli;
use crate::commands::open_db;
use crate::embedding::{load_embedder, model_dir};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kernelize_index::filter::Filter;
use kernelize_kernel::format::{SourceInfo, now_secs};
use kernelize_kernel::{
    BuildOptions, EvalQuery, IndexKind, Kernel, MergeMode, PublicKey, SearchParams, SigningKey, Trust,
};
use kernelize_store::Quantization;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Make an ed25519 signing key: `<out>.key` (PKCS#8, mode 0600; keep it secret, it
    /// never enters a kernel) and `<out>.pub` (hex; give it to whoever verifies kernels).
    Generate {
        /// Path stem of the two files.
        #[arg(long, default_value = "kernel-signing")]
        out: PathBuf,
    },
    /// Make a random master key for an encrypted data directory: a file of 64 hex digits,
    /// mode 0600 (keep it outside the data directory and its backups).
    GenerateMaster {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every data key of the encrypted data directory under a new master key
    /// (only `KEYRING` is rewritten; data files are not touched). The current key comes
    /// from the usual flags, the new one from --new-key-file or --new-key-command.
    RotateMaster {
        /// File with the new master key.
        #[arg(long, required_unless_present = "new_key_command")]
        new_key_file: Option<PathBuf>,
        /// Command that prints the new master key.
        #[arg(long, conflicts_with = "new_key_file")]
        new_key_command: Option<String>,
    },
    /// List the data keys of the encrypted data directory (ids and collections; never the keys).
    ListData,
    /// Make an X25519 device key for encrypted kernels: an age identity file (mode 0600;
    /// it stays on the device) and its `age1…` recipient, printed (give it to whoever
    /// encrypts kernels for the device).
    GenerateDevice {
        /// The identity file to create.
        #[arg(long)]
        out: PathBuf,
    },
}

/// How to build (shared by `build` and `merge`).
#[derive(Args, Debug, Clone)]
pub struct BuildFlags {
    /// Private signing key (from `kernelize keys generate`).
    #[arg(long, env = "KERNELIZE_SIGNING_KEY")]
    pub key: PathBuf,
    /// Consolidate records whose vectors have at least this cosine similarity into one
    /// representative that keeps all their ids.
    #[arg(long, default_value_t = 0.97, conflicts_with = "no_dedup")]
    pub dedup_threshold: f32,
    /// Keep every record as its own row.
    #[arg(long)]
    pub no_dedup: bool,
    /// How vectors are kept: rabitq4 (4 bits per dimension), rabitq1, int8 or none (f32).
    #[arg(long, default_value = "rabitq4")]
    pub quantization: String,
    /// Keep record text compressed (zstd with a dictionary trained on the collection) or drop it.
    #[arg(long, default_value = "zstd")]
    pub keep_text: String,
    /// Search structure: ivf (inverted lists; smallest) or hnsw (graph).
    #[arg(long, default_value = "ivf")]
    pub index: String,
    /// IVF lists (default about 2·√rows).
    #[arg(long)]
    pub nlist: Option<usize>,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// The kernel expires this long after it is built (e.g. `30d`, `12h`).
    #[arg(long)]
    pub expires_in: Option<humantime::Duration>,
    /// Held-out queries for the recall report: JSONL with `query`/`text` (embedded) or
    /// `vector`, and optionally `answer_id` (the id that answers it). Default: 200
    /// records sampled from the input.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Use only the first N lines of --queries.
    #[arg(long)]
    pub queries_limit: Option<usize>,
    /// Recall@10 the default nprobe / ef must reach.
    #[arg(long, default_value_t = 0.95)]
    pub target_recall: f32,
    /// Model directory (for text queries).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

/// How to trust a kernel when opening it.
#[derive(Args, Debug, Clone)]
pub struct TrustFlags {
    /// Public key (hex file from `keys generate`) the kernel must be signed with. Without
    /// it only integrity (section hashes) is checked, not who made the kernel.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// Open a kernel past its expiry.
    #[arg(long)]
    pub allow_expired: bool,
    /// Device identity file (from `keys generate-device`) to open kernels encrypted with
    /// `kernel encrypt`.
    #[arg(long, env = "KERNELIZE_DEVICE_IDENTITY")]
    pub identity: Option<PathBuf>,
}

/// `kernel` subcommands.
#[derive(Subcommand, Debug)]
pub enum KernelCmd {
    /// Compress a collection into a signed kernel file and print the compression report.
    Build {
        /// Source collection.
        #[arg(long, short)]
        collection: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Build settings.
        #[command(flatten)]
        flags: BuildFlags,
    },
    /// Print a kernel's manifest and compression report (`--json` for the manifest).
    Inspect {
        /// Kernel file.
        kernel: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Trust settings.
        #[command(flatten)]
        trust: TrustFlags,
    },
    /// Check a kernel's signature under a public key, every section hash and its expiry;
    /// exit code 1 (with the first problem) if anything is wrong.
    Verify {
        /// Kernel file.
        kernel: PathBuf,
        /// Public key the kernel must be signed with.
        #[arg(long)]
        pubkey: PathBuf,
        /// Accept an expired kernel.
        #[arg(long)]
        allow_expired: bool,
    },
    /// Query a kernel offline; prints JSON lines `{ids, score, text?, metadata?}`, best
    /// first (`ids`: the representative, then the ids it stands for).
    Query {
        /// Kernel file.
        kernel: PathBuf,
        /// Query text (embedded with the model).
        #[arg(long)]
        text: Option<String>,
        /// File holding the query vector as a JSON array.
        #[arg(long)]
        vector_file: Option<PathBuf>,
        /// Metadata filter (as `search --filter`).
        #[arg(long)]
        filter: Option<String>,
        /// Results.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// IVF lists probed or HNSW beam width (default: the kernel's, tuned at build).
        #[arg(long)]
        probe: Option<usize>,
        /// Trust settings.
        #[command(flatten)]
        trust: TrustFlags,
        /// Model directory (for --text).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Merge two kernels into a new one (near-duplicates across them consolidated).
    Merge {
        /// First kernel.
        a: PathBuf,
        /// Second kernel.
        b: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// union: ids in both keep the first kernel's version; replace: the newer kernel's
        /// version wins.
        #[arg(long, default_value = "union")]
        mode: String,
        /// Trust settings for the inputs.
        #[command(flatten)]
        trust: TrustFlags,
        /// Build settings of the result.
        #[command(flatten)]
        flags: BuildFlags,
    },
    /// Compare two kernels id by id.
    Diff {
        /// First kernel.
        a: PathBuf,
        /// Second kernel.
        b: PathBuf,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
        /// Trust settings.
        #[command(flatten)]
        trust: TrustFlags,
    },
    /// Encrypt a kernel to device keys (X25519 recipients, the age format): only holders
    /// of a matching identity can open it. The signature inside is kept.
    Encrypt {
        /// The kernel file.
        kernel: PathBuf,
        /// An `age1…` recipient (repeatable), e.g. from `keys generate-device`.
        #[arg(long = "recipient", short, required = true)]
        recipients: Vec<String>,
        /// Output file (default: `<kernel>.age`).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Decrypt a kernel encrypted with `kernel encrypt` back to a plain kernel file.
    Decrypt {
        /// The encrypted kernel.
        kernel: PathBuf,
        /// Device identity file.
        #[arg(long, env = "KERNELIZE_DEVICE_IDENTITY")]
        identity: PathBuf,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
}

pub fn keys(cli: &crate::Cli, cmd: &KeysCmd) -> Result<ExitCode> {
    let current = || {
        crate::commands::master_key(cli)?.ok_or_else(|| {
            anyhow::anyhow!(
                "give the current master key: --master-key-file, --master-key-command or $KERNELIZE_MASTER_KEY"
            )
        })
    };
    match cmd {
        KeysCmd::GenerateMaster { out } => {
            let key = kernelize_store::MasterKey::generate()?;
            let mut opts = fs_err::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            fs_err::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(out)?;
            std::io::Write::write_all(&mut f, format!("{}\n", key.to_hex()).as_bytes())?;
            f.sync_all()?;
            println!("master key {} (mode 0600; keep it outside the data directory and its backups)", out.display());
        }
        KeysCmd::RotateMaster { new_key_file, new_key_command } => {
            let new = match (new_key_file, new_key_command) {
                (Some(f), _) => kernelize_store::MasterKey::from_file(f)?,
                (None, Some(c)) => kernelize_store::MasterKey::from_command(c)?,
                (None, None) => anyhow::bail!("give --new-key-file or --new-key-command"),
            };
            let n = kernelize_store::rotate_master(&cli.data_dir, &current()?, &new)?;
            println!("{n} data keys re-wrapped under the new master key; data files unchanged");
        }
        KeysCmd::GenerateDevice { out } => {
            let (text, public) = kernelize_kernel::device::generate_identity();
            let mut opts = fs_err::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            fs_err::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(out)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            println!("device identity {} (mode 0600; keep it on the device)", out.display());
            println!("recipient {public}");
        }
        KeysCmd::ListData => {
            for k in kernelize_store::list_keys(&cli.data_dir, &current()?)? {
                println!("{} {} created {}", k.id, k.collection, k.created_unix);
            }
        }
        KeysCmd::Generate { out } => {
            let (private, public, pk) = SigningKey::generate_files(out)?;
            println!("key id {}", pk.key_id());
            println!("private key {} (keep secret; mode 0600)", private.display());
            println!("public key  {}", public.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens a kernel, decrypting it with --identity when it is encrypted to device keys.
fn open_kernel(path: &Path, t: &TrustFlags) -> Result<Kernel> {
    let ids = t.identity.as_deref().map(kernelize_kernel::device::Identities::load).transpose()?;
    Ok(kernelize_kernel::device::open(path, &trust(t)?, ids.as_ref())?)
}

fn trust(t: &TrustFlags) -> Result<Trust> {
    Ok(Trust {
        public_key: t.pubkey.as_deref().map(PublicKey::load).transpose()?,
        allow_expired: t.allow_expired,
        now: None,
    })
}

fn read_queries(path: &Path, limit: Option<usize>, model: &Option<PathBuf>) -> Result<Vec<EvalQuery>> {
    let f = fs_err::File::open(path)?;
    let mut texts: Vec<(usize, String)> = Vec::new();
    let mut out: Vec<EvalQuery> = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let line = line.with_context(|| format!("{}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        let answer = v.get("answer_id").or_else(|| v.get("answer")).and_then(|a| a.as_str()).map(str::to_owned);
        if let Some(vec) = v.get("vector") {
            let vector: Vec<f32> = serde_json::from_value(vec.clone())
                .with_context(|| format!("{}: line {}: field \"vector\": expected numbers", path.display(), i + 1))?;
            out.push(EvalQuery { vector, answer });
        } else if let Some(t) = v.get("query").or_else(|| v.get("text")).and_then(|t| t.as_str()) {
            texts.push((out.len(), t.to_owned()));
            out.push(EvalQuery { vector: Vec::new(), answer });
        } else {
            bail!("{}: line {}: needs a \"query\"/\"text\" string or a \"vector\"", path.display(), i + 1);
        }
    }
    if !texts.is_empty() {
        let e = load_embedder(&model_dir(model))?;
        let refs: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
        for ((i, _), v) in texts.iter().zip(e.embed(&refs)?) {
            out[*i].vector = v;
        }
    }
    Ok(out)
}

fn build_options(f: &BuildFlags) -> Result<BuildOptions> {
    let quantization: Quantization = f.quantization.parse()?;
    let keep_text = match f.keep_text.as_str() {
        "zstd" => true,
        "none" => false,
        o => bail!("--keep-text {o:?}: expected zstd or none"),
    };
    let index = match f.index.as_str() {
        "ivf" => IndexKind::Ivf { nlist: f.nlist },
        "hnsw" => IndexKind::Hnsw { m: f.m, ef_construction: 200 },
        o => bail!("--index {o:?}: expected ivf or hnsw"),
    };
    let queries = match &f.queries {
        Some(p) => read_queries(p, f.queries_limit, &f.model_dir)?,
        None => Vec::new(),
    };
    Ok(BuildOptions {
        dedup_threshold: (!f.no_dedup).then_some(f.dedup_threshold),
        quantization,
        keep_text,
        index,
        expires: f.expires_in.map(|d| now_secs() + d.as_secs()),
        queries,
        target_recall: f.target_recall,
        ..BuildOptions::default()
    })
}

fn progress_bar() -> (indicatif::ProgressBar, impl Fn(&str, f32) + Sync) {
    let pb = indicatif::ProgressBar::new(1000);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>18} [{bar:40}] {percent}% ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let p = pb.clone();
    (pb, move |stage: &str, frac: f32| {
        p.set_message(stage.to_owned());
        p.set_position((frac * 1000.0) as u64);
    })
}

fn write_built(out: &Path, built: &kernelize_kernel::Built) -> Result<()> {
    kernelize_kernel::write_file(out, &built.bytes)?;
    print!("{}", kernelize_kernel::describe(&built.manifest));
    println!("wrote {} ({} bytes)", out.display(), built.bytes.len());
    Ok(())
}

pub fn kernel(cli: &Cli, cmd: &KernelCmd) -> Result<ExitCode> {
    match cmd {
        KernelCmd::Build { collection, out, flags } => {
            let key = SigningKey::load(&flags.key)?;
            let opts = build_options(flags)?;
            let db = open_db(cli)?;
            let coll = db.collection(collection)?;
            let snap = coll.snapshot();
            let units = kernelize_kernel::units_of(&snap)?;
            let cfg = coll.config();
            let source = SourceInfo {
                collection: collection.clone(),
                records: units.len() as u64,
                seq: snap.seq(),
                encoder: cfg.encoder.clone(),
            };
            let (pb, progress) = progress_bar();
            let built = kernelize_kernel::build(units, cfg.dim, cfg.metric, source, &opts, &key, &progress)?;
            pb.finish_and_clear();
            write_built(out, &built)?;
        }
        KernelCmd::Encrypt { kernel, recipients, out } => {
            let bytes = fs_err::read(kernel)?;
            anyhow::ensure!(
                !kernelize_kernel::device::is_encrypted(&bytes),
                "{} is already encrypted",
                kernel.display()
            );
            // Only a kernel that opens is worth encrypting (integrity; the signer is checked on open).
            Kernel::from_bytes(
                &bytes,
                &kernel.display().to_string(),
                &Trust { allow_expired: true, ..Trust::default() },
            )?;
            let sealed = kernelize_kernel::device::encrypt(&bytes, recipients)?;
            let out = out.clone().unwrap_or_else(|| PathBuf::from(format!("{}.age", kernel.display())));
            kernelize_kernel::write_file(&out, &sealed)?;
            println!("wrote {} ({} bytes, for {} recipients)", out.display(), sealed.len(), recipients.len());
        }
        KernelCmd::Decrypt { kernel, identity, out } => {
            let ids = kernelize_kernel::device::Identities::load(identity)?;
            let plain = kernelize_kernel::device::decrypt(&fs_err::read(kernel)?, &ids, &kernel.display().to_string())?;
            kernelize_kernel::write_file(out, &plain)?;
            println!("wrote {} ({} bytes)", out.display(), plain.len());
        }
        KernelCmd::Inspect { kernel, json, trust: t } => {
            let k = open_kernel(kernel, t)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(k.manifest())?);
            } else {
                print!("{}", kernelize_kernel::describe(k.manifest()));
                let sig = if k.signature_verified() { "verified" } else { "not checked (no --pubkey)" };
                println!("  signature   {sig}; section hashes verified");
            }
        }
        KernelCmd::Verify { kernel, pubkey, allow_expired } => {
            let t = Trust { public_key: Some(PublicKey::load(pubkey)?), allow_expired: *allow_expired, now: None };
            match Kernel::open(kernel, &t) {
                Ok(k) => {
                    let m = k.manifest();
                    println!(
                        "{}: OK — signed by key {}, {} sections hashed, {} rows, {} ids",
                        kernel.display(),
                        m.key_id,
                        m.sections.len(),
                        m.rows,
                        m.ids
                    );
                }
                Err(e) => {
                    println!("{}: REFUSED — {e}", kernel.display());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        KernelCmd::Query { kernel, text, vector_file, filter, k, probe, trust: t, model_dir: md } => {
            let kern = open_kernel(kernel, t)?;
            let vector = match (text, vector_file) {
                (_, Some(p)) => {
                    let s = fs_err::read_to_string(p)?;
                    serde_json::from_str::<Vec<f32>>(s.trim())
                        .with_context(|| format!("{}: expected a JSON array of numbers", p.display()))?
                }
                (Some(t), None) => {
                    let e = load_embedder(&model_dir(md))?;
                    e.embed(&[t.as_str()])?.into_iter().next().unwrap_or_default()
                }
                (None, None) => bail!("give the query as --text \"…\" or --vector-file FILE"),
            };
            let filter = filter.as_deref().map(Filter::parse).transpose()?;
            let hits = kern.search(&vector, &SearchParams { k: *k, probe: *probe, filter })?;
            let mut out = std::io::stdout().lock();
            for h in hits {
                let mut line = serde_json::json!({"ids": h.ids, "score": h.score});
                if let Some(t) = h.text {
                    line["text"] = t.into();
                }
                if let Some(m) = h.metadata {
                    line["metadata"] = m.into();
                }
                writeln!(out, "{line}")?;
            }
        }
        KernelCmd::Merge { a, b, out, mode, trust: t, flags } => {
            let t = trust(t)?;
            let (ka, kb) = (Kernel::open(a, &t)?, Kernel::open(b, &t)?);
            let mode = match mode.as_str() {
                "union" => MergeMode::Union,
                "replace" => MergeMode::Replace,
                o => bail!("--mode {o:?}: expected union or replace"),
            };
            let key = SigningKey::load(&flags.key)?;
            let opts = build_options(flags)?;
            let (pb, progress) = progress_bar();
            let built = kernelize_kernel::merge(&ka, &kb, mode, &opts, &key, &progress)?;
            pb.finish_and_clear();
            write_built(out, &built)?;
        }
        KernelCmd::Diff { a, b, json, trust: t } => {
            let t = trust(t)?;
            let (ka, kb) = (Kernel::open(a, &t)?, Kernel::open(b, &t)?);
            let d = kernelize_kernel::diff(&ka, &kb)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                for m in &d.manifest {
                    println!("manifest  {m}");
                }
                println!(
                    "ids: {} only in {}, {} only in {}, {} changed, {} unchanged",
                    d.only_in_a.len(),
                    a.display(),
                    d.only_in_b.len(),
                    b.display(),
                    d.changed.len(),
                    d.unchanged
                );
                for id in d.only_in_a.iter().take(20) {
                    println!("- {id}");
                }
                for id in d.only_in_b.iter().take(20) {
                    println!("+ {id}");
                }
                for (id, what) in d.changed.iter().take(20) {
                    println!("~ {id} ({what})");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench kernel` settings.
#[derive(Args, Debug)]
pub struct KernelBenchArgs {
    /// Kernel file.
    pub kernel: PathBuf,
    /// Public key to verify it with (the device's setting).
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
    /// Query texts (JSONL `query`/`text`, or `vector`), embedded before timing.
    #[arg(long, default_value = "data/wordnet-queries.jsonl")]
    pub queries: PathBuf,
    /// Queries to use.
    #[arg(long, default_value_t = 200)]
    pub n_queries: usize,
    /// Open-to-first-query repetitions.
    #[arg(long, default_value_t = 21)]
    pub opens: usize,
    /// Model directory.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn bench(a: &KernelBenchArgs) -> Result<()> {
    let queries = read_queries(&a.queries, Some(a.n_queries), &a.model_dir)?;
    anyhow::ensure!(!queries.is_empty() && a.opens > 0, "need at least one query and one open");
    let t = Trust { public_key: a.pubkey.as_deref().map(PublicKey::load).transpose()?, allow_expired: true, now: None };
    let p = SearchParams { k: 10, probe: None, filter: None };
    let mut open_ms = Vec::new();
    let mut first_ms = Vec::new();
    for i in 0..a.opens {
        let t0 = std::time::Instant::now();
        let k = Kernel::open(&a.kernel, &t)?;
        let t1 = t0.elapsed().as_secs_f64() * 1e3;
        let hits = k.search(&queries[i % queries.len()].vector, &p)?;
        anyhow::ensure!(!hits.is_empty(), "the kernel answered nothing");
        open_ms.push(t1);
        first_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let k = Kernel::open(&a.kernel, &t)?;
    let mut lat = Vec::new();
    for q in &queries {
        let t0 = std::time::Instant::now();
        k.search(&q.vector, &p)?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    for v in [&mut open_ms, &mut first_ms, &mut lat] {
        v.sort_by(f64::total_cmp);
    }
    let m = k.manifest();
    println!(
        "kernel {} ({} bytes, {} rows), signature {}",
        a.kernel.display(),
        m.file_bytes,
        m.rows,
        if k.signature_verified() { "verified" } else { "not checked" }
    );
    println!(
        "open (mmap + signature + SHA-256 of every section + shapes): median {:.1} ms, p95 {:.1} ms ({} opens)",
        percentile(&open_ms, 0.5),
        percentile(&open_ms, 0.95),
        open_ms.len()
    );
    println!(
        "open to first answered query (ids + text + metadata decoded): median {:.1} ms, p95 {:.1} ms",
        percentile(&first_ms, 0.5),
        percentile(&first_ms, 0.95)
    );
    println!(
        "query at the default probe, 1 thread: median {:.2} ms, p95 {:.2} ms, {:.0} QPS ({} queries)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        lat.len() as f64 / lat.iter().sum::<f64>() * 1e3,
        lat.len()
    );
    println!(
        "{}",
        serde_json::json!({"bench": "kernel", "file_bytes": m.file_bytes, "open_ms_p50": percentile(&open_ms, 0.5),
            "first_query_ms_p50": percentile(&first_ms, 0.5), "first_query_ms_p95": percentile(&first_ms, 0.95),
            "query_ms_p50": percentile(&lat, 0.5), "query_ms_p95": percentile(&lat, 0.95)})
    );
    Ok(())
}
