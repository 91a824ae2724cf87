//! Knowledge kernels: a collection compressed into one signed, versioned file that opens
//! by mmap in milliseconds and answers vector queries offline.
//!
//! A build ([`build()`]) consolidates near-duplicate records into representatives that
//! keep every original id (provenance), groups the rows into IVF lists (or an HNSW graph),
//! keeps vectors as RaBitQ or int8 codes only, compresses ids, text and metadata with zstd
//! dictionaries trained on the collection, measures recall against exact search over the
//! original records, and signs a manifest (ed25519) that hashes every section. [`Kernel`]
//! opens one (checking signature, hashes and expiry) and searches it in place; [`merge()`]
//! and [`diff()`] combine and compare kernels. The byte layout is in
//! `docs/format/kernel.md`.

mod blocks;
pub mod build;
pub mod device;
mod error;
pub mod format;
mod ivf;
pub mod kernel;
pub mod keys;
mod merge;

pub use build::{BuildOptions, Built, EvalQuery, IndexKind, RawBytes, Report, Unit, build};
pub use error::{KernelError, Result};
pub use format::{Manifest, Trust};
pub use kernel::{Kernel, KernelHit, SearchParams};
pub use keys::{PublicKey, SigningKey};
pub use merge::{DiffReport, MergeMode, diff, merge};

/// File extension of kernels.
pub const EXT: &str = "kernel";

/// A row's ids as one byte string: `count u32`, then `len u32` + UTF-8 per id.
fn pack_ids<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let ids: Vec<&str> = ids.collect();
    let mut out = Vec::new();
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&(id.len() as u32).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    out
}

fn unpack_ids(b: &[u8]) -> std::result::Result<Vec<String>, String> {
    let u32_at = |at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize);
    let count = u32_at(0).ok_or("id list is truncated")?;
    if count == 0 || count > b.len() / 4 {
        return Err(format!("id list claims {count} ids in {} bytes", b.len()));
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32_at(at).ok_or("id list is truncated")?;
        let end = (at + 4).checked_add(len).filter(|&e| e <= b.len()).ok_or("id runs past its list")?;
        out.push(String::from_utf8(b[at + 4..end].to_vec()).map_err(|_| "id is not UTF-8")?);
        at = end;
    }
    if at != b.len() {
        return Err("trailing bytes after the id list".into());
    }
    Ok(out)
}

/// Writes kernel bytes to `path` atomically (temporary file, fsync, rename, directory
/// fsync): a reader never sees a half-written kernel.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("kernel.tmp");
    let mut f = fs_err::File::create(&tmp).map_err(|e| KernelError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| KernelError::io(&tmp, e))?;
    f.sync_all().map_err(|e| KernelError::io(&tmp, e))?;
    drop(f);
    fs_err::rename(&tmp, path).map_err(|e| KernelError::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs_err::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads every record of a collection snapshot as build input.
pub fn units_of(snapshot: &kernelize_store::Snapshot) -> Result<Vec<Unit>> {
    snapshot
        .scan(None)
        .map(|r| {
            let r = r?;
            Ok(Unit {
                ids: vec![r.id.clone()],
                vector: r.vector.clone(),
                text: r.text.clone(),
                metadata: r.metadata.clone(),
            })
        })
        .collect()
}

/// A human-readable report of a kernel: identity, sections, what was kept and lost.
pub fn describe(m: &Manifest) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mb = |b: u64| b as f64 / 1e6;
    let _ = writeln!(s, "kernel {} v{} (format {})", m.kernel_id, m.kernel_version, m.format_version);
    let _ = writeln!(s, "  source      {} ({} records, seq {})", m.source.collection, m.source.records, m.source.seq);
    let _ = writeln!(s, "  created     {}", format::rfc3339(m.created));
    let _ = writeln!(s, "  expires     {}", m.expires.map_or_else(|| "never".into(), format::rfc3339));
    let _ = writeln!(s, "  signed by   key {}", m.key_id);
    let index = match &m.index {
        format::IndexSpec::Ivf { nlist, nprobe } => format!("IVF, {nlist} lists, default nprobe {nprobe}"),
        format::IndexSpec::Hnsw { m, ef, .. } => format!("HNSW, m {m}, default ef {ef}"),
    };
    let q = serde_json::to_value(m.quantization).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let _ = writeln!(s, "  vectors     {} × {} {}, {q}, {index}", m.rows, m.dim, m.metric);
    let _ = writeln!(s, "  text        {}", if m.keep_text { "kept (zstd, trained dictionary)" } else { "dropped" });
    let _ = writeln!(s, "  sections    (bytes)");
    for sec in &m.sections {
        let _ = writeln!(
            s,
            "    {:<18} {:>12}  {:>5.1}%",
            sec.name,
            sec.len,
            100.0 * sec.len as f64 / m.file_bytes.max(1) as f64
        );
    }
    let _ = writeln!(s, "    {:<18} {:>12}", "file", m.file_bytes);
    if let Some(r) = &m.report {
        let _ = writeln!(s, "  compression");
        let _ = writeln!(
            s,
            "    raw input   {:.2} MB = vectors {:.2} + text {:.2} + metadata {:.2} (binary); ids {:.2} MB not counted",
            mb(r.raw.total),
            mb(r.raw.vectors),
            mb(r.raw.text),
            mb(r.raw.metadata),
            mb(r.raw.ids)
        );
        let ratio = r.raw.total as f64 / m.file_bytes.max(1) as f64;
        let _ = writeln!(
            s,
            "    kernel      {:.2} MB: {:.2}× smaller (1/{ratio:.2} of the raw bytes)",
            mb(m.file_bytes),
            ratio
        );
        let dedup = m.dedup_threshold.map_or_else(|| "off".into(), |t| format!("cosine ≥ {t}"));
        let _ = writeln!(
            s,
            "    records     {} in → {} rows ({} consolidated into representatives, dedup {dedup}; their ids kept, their own text/metadata/vector not)",
            r.records_in, r.rows_out, r.consolidated
        );
        if let Some(e) = &r.eval {
            let curve: Vec<String> = e.curve.iter().map(|(p, r)| format!("{p}:{r:.3}")).collect();
            let _ = writeln!(
                s,
                "    recall@{}   {:.4} vs exact search over the original records at {} {} ({})",
                e.k, e.recall, e.param, e.chosen, e.source
            );
            let _ = writeln!(s, "    curve       {} {}", e.param, curve.join(" "));
            if let Some(t) = &e.task {
                let _ = writeln!(
                    s,
                    "    task        answer in top {}: {:.4} before (exact, original records) → {:.4} after (kernel), {} queries",
                    e.k, t.before, t.after, t.queries
                );
            }
        }
        let _ = writeln!(s, "    build       {:.1} s", r.build_secs);
    }
    s
}
