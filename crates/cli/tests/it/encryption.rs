//! `init --encrypt`, the master key from a file, a variable or a command, search over
//! sealed segments and indexes, key rotation, and crypto-shredding through the CLI.

use super::{kz, ok};
use std::path::Path;

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn encrypted_data_directory_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let mk = tmp.path().join("mk");
    let mk2 = tmp.path().join("mk2");
    let mkf = mk.to_str().unwrap();
    ok(tmp.path(), &["keys", "generate-master", "--out", mkf]);
    ok(tmp.path(), &["keys", "generate-master", "--out", mk2.to_str().unwrap()]);
    ok(&d, &["--master-key-file", mkf, "init", "--encrypt"]);
    ok(&d, &["--master-key-file", mkf, "collection", "create", "c", "--dim", "3"]);
    let lines: String =
        (0..300).map(|i| format!("{{\"id\":\"r{i}\",\"vector\":[{i},1,0.5],\"text\":\"hush-hush {i}\"}}\n")).collect();
    let jsonl = tmp.path().join("r.jsonl");
    fs_err::write(&jsonl, lines).unwrap();
    ok(&d, &["--master-key-file", mkf, "upsert", "-c", "c", jsonl.to_str().unwrap()]);
    ok(&d, &["--master-key-file", mkf, "compact", "-c", "c"]);
    ok(&d, &["--master-key-file", mkf, "index", "build", "-c", "c"]);
    let q = tmp.path().join("q.json");
    fs_err::write(&q, "[3,1,0.5]").unwrap();
    let hits = ok(
        &d,
        &[
            "--master-key-command",
            &format!("cat {mkf}"),
            "search",
            "-c",
            "c",
            "--vector-file",
            q.to_str().unwrap(),
            "--k",
            "1",
        ],
    );
    assert!(hits.contains("\"r3\""), "{hits}");
    for f in files_under(&d) {
        let b = fs_err::read(&f).unwrap();
        assert!(!b.windows(9).any(|w| w == b"hush-hush"), "{} holds plaintext", f.display());
    }
    // Without the key: a clear error, not "corruption".
    let out = kz(&d, &["stats"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is encrypted"), "{err}");
    // verify without the key counts sealed files; with it, checks them.
    assert!(ok(&d, &["verify"]).contains("sealed files not opened"));
    assert!(ok(&d, &["--master-key-file", mkf, "verify"]).contains("every checksum matches"));
    // Rotation: the old key stops working, the new one (from the variable) works.
    ok(&d, &["--master-key-file", mkf, "keys", "rotate-master", "--new-key-file", mk2.to_str().unwrap()]);
    assert!(!kz(&d, &["--master-key-file", mkf, "stats"]).status.success());
    let key2 = fs_err::read_to_string(&mk2).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .args(["--data-dir", d.to_str().unwrap(), "stats", "-c", "c"])
        .env("KERNELIZE_MASTER_KEY", key2.trim())
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"records\": 300"));
    // Drop destroys the data key: the list is empty.
    ok(&d, &["--master-key-file", mk2.to_str().unwrap(), "collection", "drop", "c"]);
    assert_eq!(ok(&d, &["--master-key-file", mk2.to_str().unwrap(), "keys", "list-data"]).trim(), "");
}
