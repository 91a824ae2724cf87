//! The CLI end to end on a real data directory.

use super::{kz, ok};

fn write_jsonl(path: &std::path::Path, lines: &[String]) {
    fs_err::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn create_upsert_get_stats_backup_verify_restore_export() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.as_path();
    ok(d, &["collection", "create", "docs", "--dim", "3", "--metric", "dot"]);
    let lines: Vec<String> = (0..2500)
        .map(|i| format!(r#"{{"id":"d{i}","vector":[{i},1.5,-2],"text":"doc {i}","metadata":{{"n":{i}}}}}"#))
        .collect();
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &lines);
    let out = ok(d, &["upsert", "-c", "docs", file.to_str().unwrap(), "--batch", "1000"]);
    assert!(out.contains("upserted 2500 records in 3 batches"), "{out}");
    let got = ok(d, &["get", "-c", "docs", "d7"]);
    let r: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(r["vector"], serde_json::json!([7.0, 1.5, -2.0]));
    assert_eq!(r["metadata"]["n"], 7);
    assert!(!kz(d, &["get", "-c", "docs", "missing"]).status.success());
    ok(d, &["delete", "-c", "docs", "d1", "d2"]);
    let stats: serde_json::Value = serde_json::from_str(&ok(d, &["stats", "-c", "docs"])).unwrap();
    assert_eq!(stats["records"], 2498);
    assert_eq!(ok(d, &["scan", "-c", "docs", "--limit", "5"]).lines().count(), 5);
    ok(d, &["compact", "-c", "docs"]);
    let tar = tmp.path().join("b.tar");
    ok(d, &["backup", tar.to_str().unwrap()]);
    assert!(ok(d, &["verify", tar.to_str().unwrap()]).starts_with("ok"));
    let d2 = tmp.path().join("restored");
    ok(&d2, &["restore", tar.to_str().unwrap()]);
    let stats: serde_json::Value = serde_json::from_str(&ok(&d2, &["stats", "-c", "docs"])).unwrap();
    assert_eq!(stats["records"], 2498);
    let pq = tmp.path().join("docs.parquet");
    assert!(ok(d, &["export", "-c", "docs", "--out", pq.to_str().unwrap()]).contains("exported 2498"));
}

#[test]
fn a_bad_line_names_file_and_line_and_keeps_earlier_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    ok(&d, &["collection", "create", "c", "--dim", "2"]);
    let mut lines: Vec<String> = (0..25).map(|i| format!(r#"{{"id":"r{i}","vector":[1,{i}]}}"#)).collect();
    lines[22] = r#"{"id":"bad","vector":[1,"x"]}"#.into();
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &lines);
    let out = kz(&d, &["upsert", "-c", "c", file.to_str().unwrap(), "--batch", "10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in.jsonl:23:"), "{err}");
    assert!(err.contains("20 records in 2 batches before it were written"), "{err}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&d, &["stats", "-c", "c"])).unwrap();
    assert_eq!(stats["records"], 20, "the failing batch wrote nothing, earlier ones stay");
    lines[22] = r#"{"id":"nan","vector":[1,NaN]}"#.into();
    write_jsonl(&file, &lines);
    let err = String::from_utf8_lossy(&kz(&d, &["upsert", "-c", "c", file.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("in.jsonl:23:"), "{err}");
}

#[test]
fn verify_fails_on_a_flipped_byte_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    ok(&d, &["collection", "create", "c", "--dim", "2"]);
    let lines: Vec<String> = (0..50).map(|i| format!(r#"{{"id":"r{i}","vector":[1,{i}]}}"#)).collect();
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &lines);
    ok(&d, &["upsert", "-c", "c", file.to_str().unwrap()]);
    let wal_dir = d.join("collections/c/wal");
    let wal = fs_err::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let mut bytes = fs_err::read(&wal).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 1;
    fs_err::write(&wal, &bytes).unwrap();
    let out = kz(&d, &["verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{} at offset 16: frame checksum mismatch", wal.display())), "{err}");
}

#[test]
fn search_by_vector_filter_keyword_and_hybrid_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let d = d.as_path();
    ok(d, &["collection", "create", "s", "--dim", "4", "--metric", "cosine", "--quantization", "int8"]);
    let words = ["apple", "banana", "cherry", "durian"];
    let lines: Vec<String> = (0..600)
        .map(|i| {
            let a = i as f32 * 0.01;
            format!(
                r#"{{"id":"r{i}","vector":[{},{},{},1],"text":"{} fruit number {i}","metadata":{{"kind":"{}","n":{i}}}}}"#,
                a.cos(),
                a.sin(),
                (i % 7) as f32 * 0.1,
                words[i % 4],
                words[i % 4]
            )
        })
        .collect();
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &lines);
    ok(d, &["upsert", "-c", "s", file.to_str().unwrap(), "--batch", "200"]);
    ok(d, &["compact", "-c", "s"]);
    let built = ok(d, &["index", "build", "-c", "s"]);
    assert!(built.contains("built"), "{built}");
    // The query is record r42's own vector: it comes first, with cosine ~1.
    let q = tmp.path().join("q.json");
    let a = 0.42f32;
    fs_err::write(&q, format!("[{}, {}, {}, 1]", a.cos(), a.sin(), (42 % 7) as f32 * 0.1)).unwrap();
    let qs = q.to_str().unwrap();
    let out = ok(d, &["search", "-c", "s", "--vector-file", qs, "--k", "5"]);
    let hits: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0]["id"], "r42");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.999, "{out}");
    let out = ok(d, &["search", "-c", "s", "--vector-file", qs, "--filter", r#"kind = "durian" and n >= 100"#]);
    assert_eq!(out.lines().count(), 10);
    for l in out.lines() {
        let h: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(h["metadata"]["kind"], "durian", "{l}");
        assert!(h["metadata"]["n"].as_i64().unwrap() >= 100, "{l}");
    }
    let out = ok(d, &["search", "-c", "s", "--text", "cherry number 7", "--mode", "keyword", "--k", "3"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "r7", "{out}");
    let out = ok(d, &["search", "-c", "s", "--vector-file", qs, "--text", "cherry", "--hybrid", "--k", "4"]);
    assert_eq!(out.lines().count(), 4);
    // Errors name what is wrong.
    let bad = |args: &[&str], want: &str| {
        let o = kz(d, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    };
    bad(&["search", "-c", "s", "--vector-file", qs, "--filter", "colour = \"red\""], "unknown field \"colour\"");
    bad(&["search", "-c", "s", "--vector-file", qs, "--filter", "kind ="], "column");
    bad(&["search", "-c", "s", "--vector-file", qs, "--k", "0"], "k = 0");
    let q3 = tmp.path().join("q3.json");
    fs_err::write(&q3, "[1, 2, 3]").unwrap();
    bad(&["search", "-c", "s", "--vector-file", q3.to_str().unwrap()], "dimension 3");
    bad(&["search", "-c", "s"], "--text");
}

/// Flips a byte inside the third frame of collection `c`'s first WAL file.
fn damage_third_frame(d: &std::path::Path) -> u64 {
    let wal = kernelize_store::wal_path(&d.join("collections/c"), 1);
    let mut bytes = fs_err::read(&wal).unwrap();
    let third = kernelize_store::wal_format::scan(&bytes).frames[2].offset;
    bytes[third as usize + 20] ^= 0xff;
    fs_err::write(&wal, &bytes).unwrap();
    third
}

#[test]
fn recover_reports_mid_log_damage_then_cuts_it_with_accept_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    ok(&d, &["collection", "create", "c", "--dim", "2"]);
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &(0..5).map(|i| format!(r#"{{"id":"r{i}","vector":[1,{i}]}}"#)).collect::<Vec<_>>());
    ok(&d, &["upsert", "-c", "c", file.to_str().unwrap(), "--batch", "1"]);
    let third = damage_third_frame(&d);
    let out = kz(&d, &["stats", "-c", "c"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unavailable") && err.contains(&format!("offset {third}")), "{err}");
    let out = kz(&d, &["recover", "-c", "c"]);
    assert!(!out.status.success(), "without --accept-loss recover only reports");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("2 intact frames") && report.contains("sequence numbers 4..=5"), "{report}");
    assert!(report.contains("nothing was changed"), "{report}");
    assert!(!kz(&d, &["stats", "-c", "c"]).status.success(), "still unavailable");
    let out = ok(&d, &["recover", "-c", "c", "--accept-loss"]);
    assert!(out.contains("recovered") && out.contains("2 records"), "{out}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&d, &["stats", "-c", "c"])).unwrap();
    assert_eq!(stats["records"], 2);
}

#[test]
fn verify_reports_a_torn_wal_tail_as_a_note_not_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    ok(&d, &["collection", "create", "c", "--dim", "2"]);
    let file = tmp.path().join("in.jsonl");
    write_jsonl(&file, &[r#"{"id":"a","vector":[1,2]}"#.to_owned()]);
    ok(&d, &["upsert", "-c", "c", file.to_str().unwrap()]);
    let wal = kernelize_store::wal_path(&d.join("collections/c"), 1);
    let mut bytes = fs_err::read(&wal).unwrap();
    bytes.extend_from_slice(&kernelize_store::wal_format::frame_bytes(2, b"interrupted")[..19]);
    fs_err::write(&wal, &bytes).unwrap();
    let out = kz(&d, &["verify"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn WAL tail"));
}

#[test]
fn reads_work_beside_a_process_holding_the_data_directory() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let mut writer = std::process::Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(&d)
        .args(["--memtable-mb", "1", "debug", "write-loop", "-c", "c", "--prefix", "w", "--batch", "50"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(writer.stdout.take().unwrap()).lines();
    // Enough batches for a flush (segments to search) while it keeps writing.
    let segs = d.join("collections/c/seg");
    while let Some(Ok(_)) = lines.next() {
        if fs_err::read_dir(&segs)
            .is_ok_and(|mut r| r.any(|e| e.unwrap().path().extension().is_some_and(|x| x == "seg")))
        {
            break;
        }
    }
    let before: Vec<String> = {
        let mut v: Vec<String> =
            fs_err::read_dir(&segs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    // The writer holds the lock: reads fall back to read-only by themselves.
    let out = kz(&d, &["stats", "-c", "c"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["records"].as_u64().unwrap() >= 50);
    assert!(ok(&d, &["--read-only", "get", "-c", "c", "w-0-0"]).contains("w-0-0"));
    assert_eq!(ok(&d, &["--read-only", "scan", "-c", "c", "--limit", "3"]).lines().count(), 3);
    let q = tmp.path().join("q.json");
    fs_err::write(&q, "[0,0,0,0,0,0,0,1]").unwrap();
    assert_eq!(ok(&d, &["search", "-c", "c", "--vector-file", q.to_str().unwrap(), "--k", "3"]).lines().count(), 3);
    let out = ok(&d, &["verify"]);
    assert!(out.starts_with("ok"), "{out}");
    let pq = tmp.path().join("c.parquet");
    assert!(ok(&d, &["--read-only", "export", "-c", "c", "--out", pq.to_str().unwrap()]).contains("exported"));
    // A read-only search builds its indexes in memory: no .idx (or temporary) file.
    let idx: Vec<String> = fs_err::read_dir(&segs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| before.iter().any(|b| b.ends_with(".seg") && n.starts_with(&b[..8]) && !n.ends_with(".seg")))
        .collect();
    assert!(idx.is_empty(), "a read-only search wrote {idx:?}");
    let out = kz(&d, &["--read-only", "delete", "-c", "c", "w-0-0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--read-only"));
    writer.kill().unwrap();
    writer.wait().unwrap();
}
