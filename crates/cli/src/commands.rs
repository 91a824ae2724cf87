//! Commands on the data directory.

use crate::progress;
use crate::{Cli, Command};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use kernelize_store::{
    BackupFormat, CollectionConfig, Database, Durability, Health, IndexSettings, Metric, Options, SegmentOptions,
    backup, export_parquet, restore,
};
use kernelize_store::{MasterKey, Op};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// Collection management.
#[derive(Subcommand, Debug)]
pub enum CollectionCmd {
    /// Create a collection with a fixed dimension and metric.
    Create {
        /// Name: 1-64 letters, digits, '_' or '-'.
        name: String,
        /// Vector dimension (set by --modality when given).
        #[arg(long, required_unless_present = "modality")]
        dim: Option<usize>,
        /// What the collection holds, encoded in process: text (all-MiniLM-L6-v2, 384),
        /// image (EfficientNet-Lite0, 1280) or audio (Resemblyzer voices, 256). Recorded
        /// in the collection's configuration; `ingest` and `search --media` use it.
        #[arg(long)]
        modality: Option<String>,
        /// Distance metric: cosine, dot or l2.
        #[arg(long, default_value = "cosine")]
        metric: String,
        /// Keep obsolete WAL files in `wal-archive/` for point-in-time restore.
        #[arg(long)]
        wal_archive: bool,
        /// What the graph walk keeps in memory: none (f32 vectors), int8, rabitq1 or
        /// rabitq4; quantized searches re-rank with the f32 vectors, read from disk.
        #[arg(long, default_value = "none")]
        quantization: String,
        /// HNSW links per node.
        #[arg(long, default_value_t = 16)]
        m: usize,
        /// HNSW beam width while building.
        #[arg(long, default_value_t = 200)]
        ef_construction: usize,
    },
    /// List collections with their dimension, metric and record count.
    List,
    /// Drop a collection and all its data.
    Drop {
        /// Name.
        name: String,
    },
}

/// `upsert` arguments.
#[derive(Args, Debug)]
pub struct UpsertArgs {
    /// Collection to write into.
    #[arg(long, short)]
    pub collection: String,
    /// JSONL file (`-` for stdin).
    pub file: PathBuf,
    /// Records per atomic batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// `get` arguments.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Collection.
    #[arg(long, short)]
    pub collection: String,
    /// Ids to fetch.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `delete` arguments.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Collection.
    #[arg(long, short)]
    pub collection: String,
    /// Ids to delete.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `scan` arguments.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Collection.
    #[arg(long, short)]
    pub collection: String,
    /// Most records to print.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after this id (pagination cursor: the last id of the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

/// `stats` arguments.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only this collection (default: all).
    #[arg(long, short)]
    pub collection: Option<String>,
}

/// `compact` arguments.
#[derive(Args, Debug)]
pub struct CompactArgs {
    /// Collection.
    #[arg(long, short)]
    pub collection: String,
}

/// `backup` arguments.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Destination: a new directory, or a file ending in `.tar`.
    pub dest: PathBuf,
    /// Only these collections (repeatable; default: all).
    #[arg(long, short)]
    pub collection: Vec<String>,
}

/// `restore` arguments.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Backup directory or `.tar`.
    pub src: PathBuf,
    /// Original data directory whose `wal-archive/` and `wal/` are replayed on top of the
    /// backup (collections created with `--wal-archive`).
    #[arg(long)]
    pub wal_from: Option<PathBuf>,
    /// Stop replay after this sequence number (inclusive).
    #[arg(long, requires = "wal_from")]
    pub until_seq: Option<u64>,
}

/// `verify` arguments.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Data directory, backup directory or backup `.tar` (default: the data directory).
    pub path: Option<PathBuf>,
}

/// `recover` arguments.
#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The unavailable collection.
    #[arg(long, short)]
    pub collection: String,
    /// Drop what follows the bad frame (without it: only report, change nothing).
    #[arg(long)]
    pub accept_loss: bool,
}

/// `export` arguments.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Collection.
    #[arg(long, short)]
    pub collection: String,
    /// Output format (only `parquet`).
    #[arg(long, default_value = "parquet")]
    pub format: String,
    /// Output file.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Test tools.
#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// Writes batches `{prefix}-{i}-{j}` (j < batch) forever, printing `ack {i}` on stdout
    /// after each batch is acknowledged. The crash tests kill it at random points.
    WriteLoop {
        /// Collection (created with dim 8 if missing).
        #[arg(long, short)]
        collection: String,
        /// Id prefix.
        #[arg(long)]
        prefix: String,
        /// Records per batch.
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Writer threads (batches are numbered across them).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn debug(cli: &Cli, cmd: &DebugCmd) -> Result<()> {
    let DebugCmd::WriteLoop { collection, prefix, batch, threads } = cmd;
    let db = open_db(cli)?;
    let c = match db.collection(collection) {
        Ok(c) => c,
        Err(_) => db.create_collection(collection, CollectionConfig::new(8, Metric::L2))?,
    };
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..(*threads).max(1) {
            s.spawn(|| -> Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let records = (0..*batch)
                        .map(|j| kernelize_store::Record {
                            id: format!("{prefix}-{i}-{j}"),
                            vector: vec![i as f32; 8],
                            text: Some(format!("batch {i} record {j}")),
                            metadata: None,
                        })
                        .collect();
                    c.upsert(records)?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {i}")?;
                    out.flush()?;
                }
            });
        }
    });
    Ok(())
}

/// The master key from --master-key-file, --master-key-command or $KERNELIZE_MASTER_KEY
/// (in that order), if any is given.
pub fn master_key(cli: &Cli) -> Result<Option<MasterKey>> {
    if let Some(f) = &cli.master_key_file {
        return Ok(Some(MasterKey::from_file(f)?));
    }
    if let Some(c) = &cli.master_key_command {
        return Ok(Some(MasterKey::from_command(c)?));
    }
    match std::env::var(kernelize_store::MASTER_KEY_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            Ok(Some(MasterKey::parse(&v).with_context(|| format!("${}", kernelize_store::MASTER_KEY_ENV))?))
        }
        _ => Ok(None),
    }
}

fn options(cli: &Cli) -> Result<Options> {
    let durability: Durability = cli.durability.parse()?;
    Ok(Options {
        durability,
        memtable_bytes: cli.memtable_mb.max(1) << 20,
        segment: SegmentOptions::default(),
        ..Options::default()
    })
}

/// Opens the data directory for a command that writes.
pub fn open_db(cli: &Cli) -> Result<Database> {
    if cli.read_only {
        bail!("this command writes to the data directory; run it without --read-only");
    }
    let key = master_key(cli)?;
    let db = Database::open_keyed(&cli.data_dir, options(cli)?, key.as_ref())
        .with_context(|| format!("opening {}", cli.data_dir.display()))?;
    report_recovery(&db);
    Ok(db)
}

fn report_recovery(db: &Database) {
    for c in db.collections() {
        let r = c.recovery_report();
        if let Some((path, offset, reason, cut)) = &r.truncated {
            let kept = match &r.not_kept {
                None => "kept in wal/quarantine/".to_owned(),
                Some(why) => format!("not kept ({why})"),
            };
            eprintln!(
                "warning: collection {}: WAL tail cut at {} offset {offset} ({reason}); {cut} bytes {kept}",
                c.name(),
                path.display()
            );
        }
        for q in &r.quarantined {
            eprintln!("warning: collection {}: WAL file after a bad frame quarantined: {}", c.name(), q.display());
        }
    }
    warn_unavailable(db);
}

/// Opens the data directory for a command that only reads: read-only with --read-only,
/// or when another process (a server) holds it; otherwise as a writer would.
pub fn open_db_for_reading(cli: &Cli) -> Result<Database> {
    let opts = options(cli)?;
    let key = master_key(cli)?;
    let read_only = || {
        Database::open_read_only_keyed(&cli.data_dir, opts, key.as_ref())
            .with_context(|| format!("opening {} read-only", cli.data_dir.display()))
    };
    let db = if cli.read_only {
        read_only()?
    } else {
        match Database::open_keyed(&cli.data_dir, opts, key.as_ref()) {
            Ok(db) => {
                report_recovery(&db);
                db
            }
            Err(e) if e.is_locked() => {
                eprintln!(
                    "note: {} is in use by another process; reading a snapshot as of now (read-only)",
                    cli.data_dir.display()
                );
                read_only()?
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", cli.data_dir.display())),
        }
    };
    if db.is_read_only() {
        warn_unavailable(&db);
        for c in db.collections() {
            if let Some(loss) = &c.recovery_report().loss {
                eprintln!("note: collection {}: the WAL ends in a torn tail, not read: {loss}", c.name());
            }
        }
    }
    Ok(db)
}

fn warn_unavailable(db: &Database) {
    for (name, reason) in db.unavailable() {
        eprintln!("warning: collection {name} is unavailable: {reason}");
    }
}

pub fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init { encrypt } => {
            if *encrypt {
                let key = master_key(cli)?.ok_or_else(|| {
                    anyhow!("--encrypt needs a master key: --master-key-file, --master-key-command or $KERNELIZE_MASTER_KEY (make one with `kernelize keys generate-master`)")
                })?;
                kernelize_store::init_encrypted(&cli.data_dir, &key)?;
            }
            let db = open_db(cli)?;
            println!("data directory ready: {} ({} collections)", db.root().display(), db.list().len());
        }
        Command::Collection(cmd) => collection(cli, cmd)?,
        Command::Upsert(a) => upsert(cli, a)?,
        Command::Get(a) => {
            let db = open_db_for_reading(cli)?;
            let c = db.collection(&a.collection)?;
            let snap = c.snapshot();
            let mut missing = 0;
            let mut out = std::io::stdout().lock();
            for id in &a.ids {
                match snap.get(id)? {
                    Some(r) => writeln!(out, "{}", serde_json::to_string(&*r)?)?,
                    None => {
                        eprintln!("not found: {id:?}");
                        missing += 1;
                    }
                }
            }
            if missing > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Delete(a) => {
            let db = open_db(cli)?;
            let c = db.collection(&a.collection)?;
            let seq = c.delete(a.ids.clone())?;
            println!("deleted {} ids (seq {seq})", a.ids.len());
        }
        Command::Scan(a) => {
            let db = open_db_for_reading(cli)?;
            let snap = db.collection(&a.collection)?.snapshot();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for r in snap.scan(a.after.as_deref()).take(a.limit.unwrap_or(usize::MAX)) {
                writeln!(out, "{}", serde_json::to_string(&*r?)?)?;
            }
        }
        Command::Stats(a) => {
            let db = open_db_for_reading(cli)?;
            let names = match &a.collection {
                Some(n) => vec![n.clone()],
                None => db.list(),
            };
            for n in names {
                println!("{}", serde_json::to_string_pretty(&db.collection(&n)?.stats()?)?);
            }
        }
        Command::Compact(a) => {
            let db = open_db(cli)?;
            let start = Instant::now();
            let r = db.collection(&a.collection)?.compact()?;
            println!(
                "compacted {}: {} segments, {} entries ({} bytes) -> 1 segment, {} entries ({} bytes) in {:.2}s",
                a.collection,
                r.segments_before,
                r.entries_before,
                r.bytes_before,
                r.entries_after,
                r.bytes_after,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Backup(a) => {
            let db = open_db(cli)?;
            let format =
                if a.dest.extension().is_some_and(|e| e == "tar") { BackupFormat::Tar } else { BackupFormat::Dir };
            let pb = progress::bytes(0, "backup");
            let start = Instant::now();
            let r = backup(&db, &a.dest, format, &a.collection, &mut |done, total| {
                pb.set_length(total);
                pb.set_position(done);
            })?;
            pb.finish_and_clear();
            for c in &r.collections {
                println!("backed up {} at seq {} ({} segments)", c.name, c.seq, c.segments);
            }
            println!(
                "backup written to {} ({} bytes, {:.2}s)",
                a.dest.display(),
                r.bytes,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Restore(a) => {
            let db = open_db(cli)?;
            let r = restore(&db, &a.src, a.wal_from.as_deref(), a.until_seq)?;
            for (name, seq) in &r.collections {
                println!("restored {name} at seq {seq}");
            }
            if a.wal_from.is_some() {
                println!("replayed {} WAL batches", r.replayed_batches);
            }
            for s in &r.replay_stopped {
                eprintln!("note: replay stopped: {s}");
            }
        }
        Command::Verify(a) => {
            let path = a.path.clone().unwrap_or_else(|| cli.data_dir.clone());
            let keys = match master_key(cli)? {
                Some(k) if kernelize_store::is_encrypted(&cli.data_dir) => Some(
                    kernelize_store::EncryptedStorage::open(Arc::new(kernelize_store::FileStorage), &cli.data_dir, &k)?,
                ),
                _ => None,
            };
            let r = kernelize_store::verify_keyed(&path, keys.as_ref())?;
            for t in &r.torn_tails {
                eprintln!(
                    "note: torn WAL tail (an interrupted or in-progress write, never acknowledged; cut on the next open): {t}"
                );
            }
            if let Some(p) = r.problems.first() {
                eprintln!("FAILED: {p}");
                if r.problems.len() > 1 {
                    eprintln!("({} more problems)", r.problems.len() - 1);
                }
                return Ok(ExitCode::FAILURE);
            }
            if r.sealed > 0 {
                println!(
                    "ok: {} verified, {} files, {} bytes; {} sealed files not opened (give the data directory's master key to check them)",
                    r.kind, r.files, r.bytes, r.sealed
                );
            } else {
                println!("ok: {} verified, {} files, {} bytes, every checksum matches", r.kind, r.files, r.bytes);
            }
        }
        Command::Export(a) => {
            if a.format != "parquet" {
                bail!("unsupported export format {:?}: only parquet", a.format);
            }
            let db = open_db_for_reading(cli)?;
            let snap = db.collection(&a.collection)?.snapshot();
            let pb = progress::count("exported");
            let rows = export_parquet(&snap, &a.out, &mut |n| pb.set_position(n))?;
            pb.finish_and_clear();
            println!("exported {rows} records to {}", a.out.display());
        }
        Command::Recover(a) => return recover(cli, a),
        Command::Debug(cmd) => debug(cli, cmd)?,
        Command::Bench(_)
        | Command::Embed(_)
        | Command::Ingest(_)
        | Command::Search(_)
        | Command::Index(_)
        | Command::Serve(_)
        | Command::Audit(_)
        | Command::AdminKey(_)
        | Command::Kernel(_)
        | Command::Keys(_)
        | Command::Models(_)
        | Command::Program(_)
        | Command::Fleet(_)
        | Command::Cluster(_)
        | Command::Agent(_) => {
            unreachable!("handled in main")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn recover(cli: &Cli, a: &RecoverArgs) -> Result<ExitCode> {
    let db = open_db(cli)?;
    let Some(loss) = db.recover(&a.collection, a.accept_loss)? else {
        println!("collection {} is open and its WAL is clean: nothing to recover", a.collection);
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "collection {}: the WAL is bad at {} offset {}: {}",
        a.collection,
        loss.file.display(),
        loss.offset,
        loss.reason
    );
    println!("  drop: {} bytes of {} from offset {}", loss.bytes, loss.file.display(), loss.cut_at);
    for f in &loss.later_files {
        println!("  drop: later WAL file {}", f.display());
    }
    match loss.seqs {
        Some((lo, hi)) => println!(
            "  lost: {} intact frames (write batches), sequence numbers {lo}..={hi}, {} bytes in all",
            loss.intact_frames,
            loss.bytes + loss.later_bytes
        ),
        None => println!("  lost: no intact frame (a torn tail)"),
    }
    if a.accept_loss {
        let c = db.collection(&a.collection)?;
        println!(
            "recovered: WAL cut at offset {}, dropped bytes kept in {}; collection {} is open with {} records",
            loss.cut_at,
            c.dir().join("wal/quarantine").display(),
            a.collection,
            c.snapshot().count()?
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "nothing was changed. Restore the collection from a backup with its archived WAL, or accept this loss: \
             kernelize recover --collection {} --accept-loss",
            a.collection
        );
        Ok(ExitCode::FAILURE)
    }
}

fn collection(cli: &Cli, cmd: &CollectionCmd) -> Result<()> {
    let db = if matches!(cmd, CollectionCmd::List) { open_db_for_reading(cli)? } else { open_db(cli)? };
    match cmd {
        CollectionCmd::Create { name, dim, modality, metric, wal_archive, quantization, m, ef_construction } => {
            let metric: Metric = metric.parse()?;
            if !(2..=256).contains(m) || !(1..=4096).contains(ef_construction) {
                bail!("--m must be in 2..=256 and --ef-construction in 1..=4096");
            }
            let encoder = modality
                .as_deref()
                .map(|m| m.parse::<kernelize_store::Modality>().map(kernelize_media::encoder_record))
                .transpose()?;
            let dim = match (&encoder, dim) {
                (Some(e), Some(d)) if *d != e.dim => {
                    bail!("--dim {d} does not match the {} encoder ({} dimensions); leave --dim out", e.model, e.dim)
                }
                (Some(e), _) => e.dim,
                (None, Some(d)) => *d,
                (None, None) => bail!("give --dim or --modality"),
            };
            let index = IndexSettings { m: *m, ef_construction: *ef_construction, quantization: quantization.parse()? };
            let what = encoder.as_ref().map(|e| format!(", {} encoder {}", e.modality, e.model)).unwrap_or_default();
            let config = CollectionConfig { dim, metric, wal_archive: *wal_archive, index, encoder };
            db.create_collection(name, config)?;
            println!(
                "created collection {name} (dim {dim}, {metric}{what}, index m={m} ef_construction={ef_construction} quantization={quantization})"
            );
        }
        CollectionCmd::List => {
            for c in db.collections() {
                let cfg = c.config();
                let encoder =
                    cfg.encoder.as_ref().map(|e| format!("\tencoder={} {}", e.modality, e.model)).unwrap_or_default();
                println!(
                    "{}\tdim={}\tmetric={}\trecords={}{encoder}",
                    c.name(),
                    cfg.dim,
                    cfg.metric,
                    c.snapshot().count()?
                );
            }
            for (name, _) in db.unavailable() {
                println!("{name}\tunavailable (see `kernelize recover --collection {name}`)");
            }
        }
        CollectionCmd::Drop { name } => {
            db.drop_collection(name)?;
            println!("dropped collection {name}");
        }
    }
    Ok(())
}

fn upsert(cli: &Cli, a: &UpsertArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let db = open_db(cli)?;
    let c = db.collection(&a.collection)?;
    let dim = c.config().dim;
    let name = a.file.display().to_string();
    let (reader, total): (Box<dyn BufRead + Send>, u64) = if name == "-" {
        (Box::new(BufReader::new(std::io::stdin())), 0)
    } else {
        let f = fs_err::File::open(&a.file)?;
        let len = f.metadata()?.len();
        (Box::new(BufReader::with_capacity(1 << 20, f)), len)
    };
    let pb = if total > 0 { progress::bytes(total, "upsert") } else { progress::count("lines") };
    let start = Instant::now();
    let (mut records, mut batches) = (0u64, 0u64);
    // A parser thread turns lines into validated batches while this thread writes.
    // Three stages overlap: a reader thread splits the input into line batches, a parser
    // thread parses each batch on the rayon pool, and this thread writes.
    let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Result<crate::jsonl::RawBatch>>(4);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<crate::jsonl::Batch>>(4);
    let outcome = std::thread::scope(|s| -> Result<()> {
        s.spawn(move || {
            let mut lines = crate::jsonl::LineBatches::new(reader, a.batch);
            loop {
                let item = lines.next_raw().transpose();
                let Some(item) = item else { break };
                let stop = item.is_err();
                if raw_tx.send(item).is_err() || stop {
                    break;
                }
            }
        });
        s.spawn(move || {
            for raw in raw_rx {
                let item = raw.and_then(|(raw, bytes)| {
                    let first_line = raw.first().map_or(0, |l| l.0);
                    crate::jsonl::parse_lines(&name, &raw, dim).map(|records| crate::jsonl::Batch {
                        records,
                        first_line,
                        bytes,
                    })
                });
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    break;
                }
            }
        });
        // Commit whatever batches are parsed and waiting (up to 8) together: each stays
        // atomic and is acknowledged only after the one fsync that covers them all.
        let mut pending_error = None;
        while let Ok(first) = rx.recv() {
            let mut ready = vec![first];
            while ready.len() < 8 {
                match rx.try_recv() {
                    Ok(item) => ready.push(item),
                    Err(_) => break,
                }
            }
            let mut group = Vec::new();
            for item in ready {
                match item {
                    Ok(b) => group.push(b),
                    Err(e) => {
                        pending_error = Some(e);
                        break;
                    }
                }
            }
            if !group.is_empty() {
                let first_line = group[0].first_line;
                let (n, bytes): (u64, u64) =
                    group.iter().fold((0, 0), |(n, b), g| (n + g.records.len() as u64, b + g.bytes));
                let count = group.len() as u64;
                c.write_many(
                    group
                        .into_iter()
                        .map(|b| b.records.into_iter().map(|r| Op::Upsert(Arc::new(r))).collect())
                        .collect(),
                )
                .with_context(|| {
                    format!(
                        "writing {count} batches starting at line {first_line} (not acknowledged: they are absent after \
                         a reopen unless their WAL write reached the disk before the failure)"
                    )
                })?;
                records += n;
                batches += count;
                pb.inc(if total > 0 { bytes } else { n });
            }
            if let Some(e) = pending_error {
                return Err(e);
            }
        }
        Ok(())
    });
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if let Health::FlushFailing(why) = c.health() {
        eprintln!(
            "warning: flushing the memtable to a segment failed ({why}); the acknowledged writes are durable in the \
             WAL, and the flush is retried by later writes"
        );
    }
    if let Err(e) = outcome {
        return Err(anyhow!(
            "{e:#}\n{records} records in {batches} batches before it were written and acknowledged; the failing batches were not"
        ));
    }
    println!(
        "upserted {records} records in {batches} batches into {} in {secs:.2}s ({:.0} records/s, durability {})",
        a.collection,
        records as f64 / secs.max(1e-9),
        cli.durability
    );
    Ok(())
}
