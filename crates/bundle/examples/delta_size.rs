//! Delta size between two kernel builds of a collection in which a share of the records
//! changed: whole-file zstd patch-from (the library's method) at several levels, section
//! by section, and plain zstd of the new file; plus a rebuild with nothing changed, to
//! tell the build's own churn from the data's.
//!
//! ```text
//! cargo run --release -p kernelize-bundle --example delta_size -- [records] [dim] [percent]
//! ```
//!
//! Data: synthetic (seeded): unit vectors around 200 cluster centres, and text of 20–60
//! words drawn from a Zipf-like 5,000-word vocabulary. The change overwrites the vector
//! and the text of every `100/percent`-th record.

use kernelize_bundle::{DeltaOptions, apply_delta, make_delta_with};
use kernelize_kernel::format::{SourceInfo, Trust, parse};
use kernelize_kernel::{BuildOptions, SigningKey, Unit, build};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn words(rng: &mut StdRng) -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "ri", "mo", "te", "lan", "su", "vo", "ne", "pra", "di", "zu", "mel", "or", "qui", "sta", "ben", "lo",
        "ga", "fi", "ter", "um", "ax", "pe", "dro",
    ];
    (0..5000)
        .map(|_| (0..rng.random_range(1..4)).map(|_| SYL[rng.random_range(0..SYL.len())]).collect::<String>())
        .collect()
}

fn sentence(rng: &mut StdRng, vocab: &[String]) -> String {
    let n = rng.random_range(20..60);
    (0..n)
        .map(|_| {
            // Zipf-like: small ranks far more often.
            let u: f64 = rng.random_range(0.0..1.0);
            let r = ((vocab.len() as f64).powf(u) - 1.0) as usize;
            vocab[r.min(vocab.len() - 1)].as_str()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn vector(rng: &mut StdRng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[rng.random_range(0..centres.len())];
    let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.35f32..0.35)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn kernel(units: &[Unit], dim: usize, key: &SigningKey) -> (Vec<u8>, f64) {
    let t = Instant::now();
    let source = SourceInfo { collection: "delta-bench".into(), records: units.len() as u64, seq: 1, encoder: None };
    let built =
        build(units.to_vec(), dim, kernelize_store::Metric::Cosine, source, &BuildOptions::default(), key, &|_, _| {})
            .expect("build");
    (built.bytes, t.elapsed().as_secs_f64())
}

fn sections(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let p = parse(bytes, "kernel", &Trust { allow_expired: true, ..Default::default() }).expect("parse");
    let first = p.manifest.sections.iter().map(|s| s.offset as usize).min().unwrap_or(bytes.len());
    let mut out = vec![("(header+manifest)".to_owned(), 0..first)];
    out.extend(p.manifest.sections.iter().map(|s| (s.name.clone(), s.offset as usize..(s.offset + s.len) as usize)));
    out
}

type ById = std::collections::HashMap<String, usize>;

/// Row number and IVF list of each representative's own id.
fn placement(bytes: &[u8]) -> (ById, ById, Vec<u8>) {
    let k = kernelize_kernel::Kernel::from_bytes(bytes, "kernel", &Trust { allow_expired: true, ..Default::default() })
        .expect("open");
    let rows = k.rows_decoded().expect("rows");
    let offsets: Vec<usize> = sections(bytes)
        .into_iter()
        .find(|(n, _)| n == "ivf.offsets")
        .map(|(_, r)| bytes[r].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect())
        .unwrap_or_default();
    let mut pos = ById::new();
    let mut list = ById::new();
    let mut text = Vec::new();
    for (r, u) in rows.iter().enumerate() {
        pos.insert(u.ids[0].clone(), r);
        list.insert(u.ids[0].clone(), offsets.partition_point(|&o| o <= r).saturating_sub(1));
        text.extend_from_slice(u.text.as_deref().unwrap_or("").as_bytes());
        text.push(b'\n');
    }
    (pos, list, text)
}

/// zstd of `new` with `old` as its reference (raw frame, no header).
fn patch(old: &[u8], new: &[u8], level: i32) -> usize {
    let mut d = make_delta_with(old, new, &DeltaOptions { level }).expect("delta");
    d.drain(..kernelize_bundle::DELTA_HEADER_BYTES);
    d.len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let records: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30_000);
    let dim: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(384);
    let percent: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let mut rng = StdRng::seed_from_u64(42);
    let vocab = words(&mut rng);
    let centres: Vec<Vec<f32>> = (0..200).map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()).collect();
    let units: Vec<Unit> = (0..records)
        .map(|i| Unit {
            ids: vec![format!("doc-{i:07}")],
            vector: vector(&mut rng, &centres),
            text: Some(sentence(&mut rng, &vocab)),
            metadata: None,
        })
        .collect();
    let step = (100.0 / percent).round().max(1.0) as usize;
    let mut changed = units.clone();
    let mut n_changed = 0;
    for u in changed.iter_mut().step_by(step) {
        u.vector = vector(&mut rng, &centres);
        u.text = Some(sentence(&mut rng, &vocab));
        n_changed += 1;
    }
    let key = SigningKey::generate().expect("key");
    eprintln!("building 3 kernels of {records} × {dim} ({n_changed} records changed in the third)…");
    let (old, t_old) = kernel(&units, dim, &key);
    let (same, _) = kernel(&units, dim, &key);
    let (new, t_new) = kernel(&changed, dim, &key);
    println!(
        "records {records}, dim {dim}, changed {n_changed} ({percent}%), kernel {} bytes (old {}), build {t_old:.1} s / {t_new:.1} s",
        new.len(),
        old.len()
    );

    println!("\n{:<44} {:>12} {:>8} {:>9} {:>9}", "method", "bytes", "% full", "make s", "apply s");
    let row = |name: &str, bytes: usize, make: f64, apply: Option<f64>| {
        println!(
            "{name:<44} {bytes:>12} {:>7.1}% {make:>9.2} {:>9}",
            100.0 * bytes as f64 / new.len() as f64,
            apply.map_or_else(|| "-".into(), |a| format!("{a:.3}"))
        );
    };
    row("full file", new.len(), 0.0, None);
    let t = Instant::now();
    let plain = zstd::bulk::compress(&new, 19).expect("zstd").len();
    row("zstd -19 of the new file alone", plain, t.elapsed().as_secs_f64(), None);
    let mut json = Vec::new();
    for level in [3, 9, 19] {
        let t = Instant::now();
        let d = make_delta_with(&old, &new, &DeltaOptions { level }).expect("delta");
        let make = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = apply_delta(&old, &d, new.len() as u64).expect("apply");
        let apply = t.elapsed().as_secs_f64();
        assert_eq!(back, new);
        row(&format!("patch-from, whole file, level {level}"), d.len(), make, Some(apply));
        json.push(format!(r#""patch_from_l{level}":{}"#, d.len()));
    }
    // Section by section: each new section against the old section of the same name.
    let (so, sn) = (sections(&old), sections(&new));
    let t = Instant::now();
    let mut per_section = Vec::new();
    let mut total = 0;
    for (name, r) in &sn {
        let base = so.iter().find(|(n, _)| n == name).map_or(&[][..], |(_, r)| &old[r.clone()]);
        let d = patch(base, &new[r.clone()], 19);
        total += d;
        per_section.push((name.clone(), r.len(), d));
    }
    row("section by section (patch-from, level 19)", total, t.elapsed().as_secs_f64(), None);
    json.push(format!(r#""section_l19":{total}"#));
    let t = Instant::now();
    let d_same = make_delta_with(&old, &same, &DeltaOptions { level: 19 }).expect("delta").len();
    row("rebuild, NOTHING changed (patch-from, 19)", d_same, t.elapsed().as_secs_f64(), None);
    json.push(format!(r#""unchanged_rebuild_l19":{d_same}"#));

    println!("\nper section (1% change, patch-from level 19 against the same section of the old kernel):");
    println!("{:<22} {:>12} {:>12} {:>8} {:>14}", "section", "bytes", "delta", "% sect", "same offset %");
    for (name, len, d) in &per_section {
        let base = so.iter().find(|(n, _)| n == name).map(|(_, r)| &old[r.clone()]);
        let same_pos = base.map_or(0.0, |b| {
            let nr = &sn.iter().find(|(n, _)| n == name).expect("section").1;
            let s = &new[nr.clone()];
            let eq = b.iter().zip(s).filter(|(a, b)| a == b).count();
            100.0 * eq as f64 / s.len().max(1) as f64
        });
        println!("{name:<22} {len:>12} {d:>12} {:>7.1}% {same_pos:>13.1}%", 100.0 * *d as f64 / (*len).max(1) as f64);
    }
    // Why: where each record's row went (row number, IVF list) between the two builds.
    let (pos_old, list_old, text_old) = placement(&old);
    let (pos_new, list_new, text_new) = placement(&new);
    let changed_ids: std::collections::HashSet<&str> =
        changed.iter().step_by(step).map(|u| u.ids[0].as_str()).collect();
    let (mut same_pos, mut same_list, mut kept) = (0usize, 0usize, 0usize);
    for (id, p) in &pos_new {
        if changed_ids.contains(id.as_str()) {
            continue;
        }
        kept += 1;
        same_pos += usize::from(pos_old.get(id) == Some(p));
        same_list += usize::from(list_old.get(id) == list_new.get(id));
    }
    let pct = |x: usize| 100.0 * x as f64 / kept.max(1) as f64;
    println!(
        "\nunchanged records ({kept} representative rows): {:.1}% keep their row number, {:.1}% keep their IVF list",
        pct(same_pos),
        pct(same_list)
    );
    json.push(format!(r#""same_row_pct":{:.1},"same_list_pct":{:.1}"#, pct(same_pos), pct(same_list)));
    // What the text could cost if the kernel kept it delta-friendly: the decoded texts in
    // row order, uncompressed, patched against the old ones.
    let text_patch = patch(&text_old, &text_new, 19);
    println!(
        "text decoded in row order ({} bytes raw): patch-from level 19 = {text_patch} bytes, vs {} for the compressed text section",
        text_new.len(),
        per_section.iter().find(|(n, _, _)| n == "text").map_or(0, |(_, _, d)| *d)
    );
    json.push(format!(r#""raw_text_patch_l19":{text_patch}"#));
    println!(
        "\n{{\"bench\":\"fleet_delta\",\"records\":{records},\"dim\":{dim},\"changed\":{n_changed},\"full\":{},\"zstd_alone\":{plain},{}}}",
        new.len(),
        json.join(",")
    );
}
