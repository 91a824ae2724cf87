//! Merging and comparing kernels. A kernel holds no full-precision vectors, so a merge
//! reconstructs each row's vector from its codes, resolves ids present in both inputs,
//! and builds a new kernel over the result — consolidating near-duplicates across the
//! inputs like any build (a second quantization: the merged kernel's report measures it).

use crate::build::{BuildOptions, Built, Progress, Unit, build};
use crate::error::{KernelError, Result};
use crate::format::SourceInfo;
use crate::kernel::Kernel;
use crate::keys::SigningKey;
use kernelize_index::distance;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// What to do with an id both kernels hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// Keep the first input's version.
    #[default]
    Union,
    /// The newer kernel's version wins (by `created`; the second input on a tie).
    Replace,
}

/// Drops `ids` from every unit; a unit left with no id goes.
fn without(units: Vec<Unit>, ids: &HashSet<String>) -> Vec<Unit> {
    units
        .into_iter()
        .filter_map(|mut u| {
            u.ids.retain(|i| !ids.contains(i));
            (!u.ids.is_empty()).then_some(u)
        })
        .collect()
}

/// Merges `a` and `b` into a new kernel built with `opts` (its `kernel_version` is set
/// to one past the inputs').
pub fn merge(
    a: &Kernel,
    b: &Kernel,
    mode: MergeMode,
    opts: &BuildOptions,
    key: &SigningKey,
    progress: Progress<'_>,
) -> Result<Built> {
    let (ma, mb) = (a.manifest(), b.manifest());
    if ma.dim != mb.dim || ma.metric != mb.metric {
        return Err(KernelError::Invalid(format!(
            "cannot merge a {}-dimension {} kernel with a {}-dimension {} one",
            ma.dim, ma.metric, mb.dim, mb.metric
        )));
    }
    if let (Some(ea), Some(eb)) = (&ma.source.encoder, &mb.source.encoder)
        && ea != eb
    {
        return Err(KernelError::Invalid(format!(
            "cannot merge kernels of different encoders ({} {} and {} {})",
            ea.modality, ea.model, eb.modality, eb.model
        )));
    }
    progress("decoding", 0.0);
    let (ua, ub) = (a.rows_decoded()?, b.rows_decoded()?);
    let a_wins = match mode {
        MergeMode::Union => true,
        MergeMode::Replace => mb.created < ma.created,
    };
    let ids_of = |u: &[Unit]| -> HashSet<String> { u.iter().flat_map(|x| x.ids.iter().cloned()).collect() };
    let (ua, ub) = if a_wins {
        let first = ids_of(&ua);
        (ua, without(ub, &first))
    } else {
        let second = ids_of(&ub);
        (without(ua, &second), ub)
    };
    let mut units = ua;
    units.extend(ub);
    let source = SourceInfo {
        collection: format!("{}+{}", ma.source.collection, mb.source.collection),
        records: units.iter().map(|u| u.ids.len() as u64).sum(),
        seq: 0,
        encoder: ma.source.encoder.clone().or_else(|| mb.source.encoder.clone()),
    };
    let mut opts = opts.clone();
    opts.kernel_version = ma.kernel_version.max(mb.kernel_version) + 1;
    build(units, ma.dim, ma.metric, source, &opts, key, progress)
}

/// How two kernels differ, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiffReport {
    /// Ids only the first holds.
    pub only_in_a: Vec<String>,
    /// Ids only the second holds.
    pub only_in_b: Vec<String>,
    /// Ids both hold whose text, metadata or vector differ (with what differs).
    pub changed: Vec<(String, String)>,
    /// Ids both hold, the same.
    pub unchanged: usize,
    /// Manifest fields that differ (`field: a → b`).
    pub manifest: Vec<String>,
}

/// Vectors whose reconstructions are at least this similar count as unchanged (two
/// quantizations of one vector differ a little).
const SAME_VECTOR: f32 = 0.95;

/// Compares two kernels id by id (an id inside a representative's provenance counts
/// with the representative's content).
pub fn diff(a: &Kernel, b: &Kernel) -> Result<DiffReport> {
    let by_id = |k: &Kernel| -> Result<BTreeMap<String, Unit>> {
        let mut m = BTreeMap::new();
        for u in k.rows_decoded()? {
            for id in &u.ids {
                m.insert(id.clone(), u.clone());
            }
        }
        Ok(m)
    };
    let (ia, ib) = (by_id(a)?, by_id(b)?);
    let mut r = DiffReport::default();
    for (id, ua) in &ia {
        let Some(ub) = ib.get(id) else {
            r.only_in_a.push(id.clone());
            continue;
        };
        let mut what = Vec::new();
        if ua.text != ub.text {
            what.push("text");
        }
        if ua.metadata != ub.metadata {
            what.push("metadata");
        }
        let cos = if a.manifest().dim == b.manifest().dim {
            distance::dot(&ua.vector, &ub.vector) / (distance::norm(&ua.vector) * distance::norm(&ub.vector)).max(1e-30)
        } else {
            0.0
        };
        if cos < SAME_VECTOR {
            what.push("vector");
        }
        if what.is_empty() {
            r.unchanged += 1;
        } else {
            r.changed.push((id.clone(), what.join("+")));
        }
    }
    r.only_in_b = ib.keys().filter(|id| !ia.contains_key(*id)).cloned().collect();
    let (ma, mb) = (a.manifest(), b.manifest());
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            r.manifest.push(format!("{name}: {x} → {y}"));
        }
    };
    field("kernel_version", ma.kernel_version.to_string(), mb.kernel_version.to_string());
    field("source", ma.source.collection.clone(), mb.source.collection.clone());
    field("rows", ma.rows.to_string(), mb.rows.to_string());
    field("ids", ma.ids.to_string(), mb.ids.to_string());
    field("quantization", format!("{:?}", ma.quantization), format!("{:?}", mb.quantization));
    field("dim", ma.dim.to_string(), mb.dim.to_string());
    field("metric", ma.metric.to_string(), mb.metric.to_string());
    field("key_id", ma.key_id.clone(), mb.key_id.clone());
    field("file_bytes", ma.file_bytes.to_string(), mb.file_bytes.to_string());
    Ok(r)
}
