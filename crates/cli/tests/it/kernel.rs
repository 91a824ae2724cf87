//! `keys generate` and `kernel build | inspect | verify | query | merge | diff` through
//! the binary: a tampered file, a wrong key and an expired kernel are refused with exit
//! code 1.

use crate::{kz, ok};
use std::io::Write;
use std::path::Path;

/// A deterministic pseudo-random vector per id number.
fn vector(i: usize) -> Vec<f32> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn load(dir: &Path, coll: &str, ids: std::ops::Range<usize>, text: &str) {
    let file = dir.join(format!("{coll}.jsonl"));
    let mut f = fs_err::File::create(&file).unwrap();
    for i in ids {
        let line = serde_json::json!({"id": format!("d{i}"), "vector": vector(i), "text": format!("{text} {i}"),
            "metadata": {"n": i}});
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let data = dir.join("data");
    let _ = kz(&data, &["collection", "create", coll, "--dim", "8"]);
    ok(&data, &["upsert", file.to_str().unwrap(), "--collection", coll]);
}

#[test]
fn kernel_commands_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, data) = (tmp.path(), tmp.path().join("data"));
    let stem = dir.join("k");
    let out = ok(&data, &["keys", "generate", "--out", stem.to_str().unwrap()]);
    assert!(out.contains("key id "), "{out}");
    let (key, pubkey) = (dir.join("k.key"), dir.join("k.pub"));
    let other = dir.join("other");
    ok(&data, &["keys", "generate", "--out", other.to_str().unwrap()]);
    assert!(!kz(&data, &["keys", "generate", "--out", stem.to_str().unwrap()]).status.success(), "no overwrite");

    load(dir, "a", 0..200, "first");
    let ka = dir.join("a.kernel");
    let build = |coll: &str, out: &Path, extra: &[&str]| {
        let mut args = vec!["kernel", "build", "--collection", coll, "--out", out.to_str().unwrap()];
        args.extend(["--key", key.to_str().unwrap()]);
        args.extend(extra);
        ok(&data, &args)
    };
    let report = build("a", &ka, &[]);
    assert!(report.contains("raw input") && report.contains("recall@10"), "{report}");
    let pk = pubkey.to_str().unwrap();
    let verify = |k: &Path, pk: &str, extra: &[&str]| {
        let mut args = vec!["kernel", "verify", k.to_str().unwrap(), "--pubkey", pk];
        args.extend(extra);
        kz(&data, &args)
    };
    let v = verify(&ka, pk, &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // The wrong key is refused, and so is a flipped byte.
    let v = verify(&ka, other.with_extension("pub").to_str().unwrap(), &[]);
    assert!(!v.status.success() && String::from_utf8_lossy(&v.stdout).contains("REFUSED"));
    let mut bytes = fs_err::read(&ka).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = dir.join("bad.kernel");
    fs_err::write(&bad, &bytes).unwrap();
    let v = verify(&bad, pk, &[]);
    assert!(!v.status.success(), "a flipped byte at {at} went unnoticed");
    assert!(!kz(&data, &["kernel", "inspect", bad.to_str().unwrap()]).status.success());

    // Queries answer offline from the file.
    let qfile = dir.join("q.json");
    fs_err::write(&qfile, serde_json::to_string(&vector(17)).unwrap()).unwrap();
    let q = ok(
        &data,
        &[
            "kernel",
            "query",
            ka.to_str().unwrap(),
            "--vector-file",
            qfile.to_str().unwrap(),
            "--k",
            "3",
            "--pubkey",
            pk,
        ],
    );
    let first: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(first["ids"][0], "d17", "{q}");
    assert_eq!(first["text"], "first 17");
    let q = ok(
        &data,
        &["kernel", "query", ka.to_str().unwrap(), "--vector-file", qfile.to_str().unwrap(), "--filter", "n < 10"],
    );
    assert!(
        q.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["metadata"]["n"].as_u64().unwrap() < 10)
    );

    // Expiry: refused once past, unless allowed.
    let kexp = dir.join("exp.kernel");
    build("a", &kexp, &["--expires-in", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let v = verify(&kexp, pk, &[]);
    assert!(!v.status.success() && String::from_utf8_lossy(&v.stdout).contains("expired"));
    assert!(verify(&kexp, pk, &["--allow-expired"]).status.success());

    // Merge: b updates d0..d49 (new text) and adds d200..d299; replace keeps b's.
    load(dir, "b", 0..50, "second");
    let kb = dir.join("b.kernel");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    load(dir, "c", 200..300, "third");
    build("b", &kb, &[]);
    let kc = dir.join("c.kernel");
    build("c", &kc, &[]);
    let kbc = dir.join("bc.kernel");
    ok(
        &data,
        &[
            "kernel",
            "merge",
            kb.to_str().unwrap(),
            kc.to_str().unwrap(),
            "--out",
            kbc.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let m = dir.join("m.kernel");
    ok(
        &data,
        &[
            "kernel",
            "merge",
            ka.to_str().unwrap(),
            kbc.to_str().unwrap(),
            "--out",
            m.to_str().unwrap(),
            "--mode",
            "replace",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let d = ok(&data, &["kernel", "diff", ka.to_str().unwrap(), m.to_str().unwrap(), "--json"]);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["only_in_a"].as_array().unwrap().len(), 0, "{d}");
    assert_eq!(d["only_in_b"].as_array().unwrap().len(), 100, "{d}");
    let changed = d["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 50, "{d}");
    assert!(changed.iter().all(|c| c[1].as_str().unwrap().contains("text")));
    let fq = dir.join("q0.json");
    fs_err::write(&fq, serde_json::to_string(&vector(3)).unwrap()).unwrap();
    let q = ok(&data, &["kernel", "query", m.to_str().unwrap(), "--vector-file", fq.to_str().unwrap(), "--k", "1"]);
    let hit: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(hit["text"], "second 3", "replace keeps the newer version: {q}");
}

#[test]
fn kernel_encrypted_to_a_device_key_opens_only_with_its_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, data) = (tmp.path(), tmp.path().join("data"));
    let stem = dir.join("k");
    ok(&data, &["keys", "generate", "--out", stem.to_str().unwrap()]);
    load(dir, "a", 0..150, "device");
    let k = dir.join("a.kernel");
    ok(
        &data,
        &[
            "kernel",
            "build",
            "--collection",
            "a",
            "--out",
            k.to_str().unwrap(),
            "--key",
            dir.join("k.key").to_str().unwrap(),
        ],
    );
    let (dev, other) = (dir.join("device.key"), dir.join("other.key"));
    let out = ok(&data, &["keys", "generate-device", "--out", dev.to_str().unwrap()]);
    let recipient = out.lines().find_map(|l| l.strip_prefix("recipient ")).unwrap().to_owned();
    ok(&data, &["keys", "generate-device", "--out", other.to_str().unwrap()]);
    let sealed = dir.join("a.kernel.age");
    ok(&data, &["kernel", "encrypt", k.to_str().unwrap(), "--recipient", &recipient]);
    let plain = fs_err::read(&k).unwrap();
    let bytes = fs_err::read(&sealed).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    assert!(!bytes.windows(32).any(|w| w == &plain[plain.len() / 2..plain.len() / 2 + 32]), "kernel bytes leak");
    let qfile = dir.join("q.json");
    fs_err::write(&qfile, serde_json::to_string(&vector(17)).unwrap()).unwrap();
    let query = |extra: &[&str]| {
        let mut args = vec!["kernel", "query", sealed.to_str().unwrap(), "--vector-file", qfile.to_str().unwrap()];
        args.extend(extra);
        kz(&data, &args)
    };
    let q = query(&["--identity", dev.to_str().unwrap()]);
    assert!(
        q.status.success() && String::from_utf8_lossy(&q.stdout).contains("d17"),
        "{}",
        String::from_utf8_lossy(&q.stderr)
    );
    let no = query(&[]);
    assert!(!no.status.success() && String::from_utf8_lossy(&no.stderr).contains("--identity"));
    assert!(!query(&["--identity", other.to_str().unwrap()]).status.success(), "another device's key opens it");
    let back = dir.join("back.kernel");
    ok(
        &data,
        &[
            "kernel",
            "decrypt",
            sealed.to_str().unwrap(),
            "--identity",
            dev.to_str().unwrap(),
            "--out",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(fs_err::read(&back).unwrap(), plain);
}
