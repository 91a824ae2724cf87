//! `kernelize serve` as a process: starts, prints its address, answers, stops on
//! SIGTERM; `kernelize audit verify` checks the audit chain it left and catches an edit.

use crate::{kz, ok};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

fn http_get(addr: &str, path: &str, key: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_answers_stops_on_sigterm_and_audit_verify_catches_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let key = "kz_clitest00000_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--print-addr", "--admin-key", key, "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).to_owned();
    let r = http_get(&addr, "/v1/collections", None);
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(r.contains("\"code\":\"unauthenticated\""));
    let r = http_get(&addr, "/v1/collections", Some(key));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let st = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "serve exited with {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("\"message\":\"shut down cleanly\""), "{log}");
    assert!(log.contains("\"request_id\""), "logs carry request ids: {log}");

    let verified = ok(dir.path(), &["audit", "verify"]);
    assert!(verified.starts_with("audit log OK: 4 entries"), "{verified}");
    // Edit one entry behind the server's back: verify names it and fails.
    let db = dir.path().join("control.db");
    let edit = Command::new("python3")
        .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"UPDATE audit SET outcome = 'ok' WHERE seq = 4\"); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(edit.success());
    let out = kz(dir.path(), &["audit", "verify"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entry 4") && text.contains("edited"), "{text}");
}

/// Accepts HTTP requests on 127.0.0.1 and hands each `(request line, body)` to a channel,
/// answering 200 — a minimal OTLP/HTTP collector.
fn collector() -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let mut r = BufReader::new(conn);
            let mut first = String::new();
            if r.read_line(&mut first).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((first.trim().to_owned(), body));
        }
    });
    (addr, rx)
}

#[test]
fn request_spans_are_exported_over_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let (collector_addr, received) = collector();
    let key = "kz_clitest00000_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--print-addr", "--admin-key", key])
        .arg("--otlp-endpoint")
        .arg(format!("http://{collector_addr}/v1/traces"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).to_owned();
    assert!(http_get(&addr, "/v1/collections", Some(key)).starts_with("HTTP/1.1 200"));
    // Shutdown flushes the batch.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
    let (request_line, body) = received.recv_timeout(std::time::Duration::from_secs(20)).expect("no OTLP export");
    assert!(request_line.starts_with("POST /v1/traces"), "{request_line}");
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"kernelize"), "service name missing");
    assert!(has(b"GET /v1/collections"), "span name missing");
    assert!(has(b"request_id"), "request id attribute missing");
}

/// Starts `kernelize serve` with `extra` arguments; returns the child and its address.
fn start_serve(dir: &std::path::Path, key: &str, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .args(["serve", "--listen", "127.0.0.1:0", "--print-addr", "--admin-key", key])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).to_owned();
    (child, addr)
}

fn stop(child: std::process::Child) {
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "serve exited with {:?}", out.status);
}

fn http(addr: &str, method: &str, path: &str, key: &str, body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_exits_when_port_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for run in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", &addr, "--log-format", "text"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                let _ = child.kill();
                panic!("run {run}: serve still running 30 s after its port was found taken");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!status.success(), "run {run}");
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(err.contains(&addr) && err.contains("in use"), "run {run}: {err}");
    }
    drop(taken);
}

#[test]
fn serve_honours_memtable_mb() {
    let dir = tempfile::tempdir().unwrap();
    let key = "kz_clitest00000_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    let (child, addr) = start_serve(dir.path(), key, &["--memtable-mb", "1"]);
    let r = http(&addr, "POST", "/v1/collections", key, r#"{"name": "docs", "dim": 64}"#);
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    // About 2.5 MiB of records: past a 1 MiB memtable, far below the 64 MiB default.
    for b in 0..5 {
        let recs: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"id": "b{b}-{i}", "vector": [{}], "text": "{}"}}"#,
                    vec!["0.5"; 64].join(","),
                    "t".repeat(200)
                )
            })
            .collect();
        let r = http(
            &addr,
            "POST",
            "/v1/collections/docs/records",
            key,
            &format!(r#"{{"records": [{}]}}"#, recs.join(",")),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let mut segments = 0;
    for _ in 0..200 {
        let r = http(&addr, "GET", "/v1/collections/docs", key, "");
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        segments = v["segments"].as_u64().unwrap_or(0);
        if segments > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(segments > 0, "no segment flushed with --memtable-mb 1");
    stop(child);
}

#[test]
fn admin_key_reset_recovers_a_locked_out_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = "kz_clitest00000_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    let (child, _) = start_serve(dir.path(), key, &[]);
    stop(child);
    // A wrong directory is refused, and nothing is created there.
    let wrong = tempfile::tempdir().unwrap();
    let out = kz(wrong.path(), &["admin-key", "reset"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a server's data directory"));
    assert_eq!(fs_err::read_dir(wrong.path()).unwrap().count(), 0, "files left in the wrong directory");
    // Locked out: the operator lost the only admin key (revoking it is refused now, and
    // editing the table by hand would be caught by `audit verify`).
    let out = kz(dir.path(), &["admin-key", "reset"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(fresh.starts_with("kz_") && !fresh.contains('\n'), "the key alone on stdout: {fresh}");
    // The new key administers the server, and can revoke the lost one.
    let (child, addr) = start_serve(dir.path(), key, &[]);
    assert!(http(&addr, "GET", "/v1/keys", &fresh, "").starts_with("HTTP/1.1 200"));
    let lost = key[3..].split_once('_').unwrap().0;
    let r = http(&addr, "DELETE", &format!("/v1/keys/{lost}"), &fresh, "");
    assert!(r.starts_with("HTTP/1.1 204") || r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(http(&addr, "GET", "/v1/keys", key, "").starts_with("HTTP/1.1 401"));
    let r = http(&addr, "GET", "/v1/audit?action=keys.reset", &fresh, "");
    assert!(r.contains("\"actor\":\"system\""), "{r}");
    stop(child);
    let verified = ok(dir.path(), &["audit", "verify"]);
    assert!(verified.starts_with("audit log OK"), "{verified}");
}

/// Sends `GET path` with extra header lines; returns the whole response.
fn get_with(addr: &str, path: &str, headers: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The origin CORS allows for a request from `origin`, if any.
fn cors_allowed(addr: &str, origin: &str) -> Option<String> {
    let r = get_with(addr, "/healthz", &format!("Origin: {origin}\r\n"));
    let head = r.split("\r\n\r\n").next().unwrap_or("").to_owned();
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("access-control-allow-origin:").map(|v| v.trim().to_owned()))
}

/// Statuses of `n` back-to-back authenticated requests.
fn statuses(addr: &str, key: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let r = http_get(addr, "/v1/collections", Some(key));
            r.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
        })
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "still waiting for {what} after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn hangup(child: &std::process::Child) {
    let st = Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

#[test]
fn sighup_reloads_limits_and_cors_keeps_the_old_on_a_bad_file_and_audits_both() {
    let dir = tempfile::tempdir().unwrap();
    let key = "kz_clitest00000_DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
    let conf = dir.path().join("server.toml");
    let log = dir.path().join("serve.log");
    fs_err::write(&conf, "cors_origins = [\"https://a.example\"]\n[limits]\nrate_per_sec = 1000\nburst = 1000\n")
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--print-addr", "--admin-key", key, "--log-format", "json"])
        .arg("--config")
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line}")).to_owned();
    let read_log = || fs_err::read_to_string(&log).unwrap_or_default();

    // As started: origin a allowed, b not; a burst of 1000.
    assert_eq!(cors_allowed(&addr, "https://a.example").as_deref(), Some("https://a.example"));
    assert_eq!(cors_allowed(&addr, "https://b.example"), None);
    assert!(statuses(&addr, key, 5).iter().all(|s| *s == 200));

    // New origins and limits (and a setting that needs a restart).
    fs_err::write(
        &conf,
        "cors_origins = [\"https://b.example\"]\nbackup_dir = \"/nonexistent/elsewhere\"\n[limits]\nrate_per_sec = 1\nburst = 2\n",
    )
    .unwrap();
    hangup(&child);
    wait_for("the new CORS origins", || cors_allowed(&addr, "https://b.example").is_some());
    assert_eq!(cors_allowed(&addr, "https://a.example"), None);
    let got = statuses(&addr, key, 4);
    assert_eq!(&got[..2], [200, 200], "{got:?}");
    assert_eq!(got[3], 429, "a burst of 2 at 1/s: {got:?}");
    let text = read_log();
    assert!(text.contains("configuration reloaded"), "{text}");
    assert!(text.contains("limits.rate_per_sec 1000 -> 1") && text.contains("limits.burst 1000 -> 2"), "{text}");
    assert!(text.contains("needs a restart") && text.contains("backup_dir"), "{text}");

    // A bad value: nothing changes, and the log says where.
    fs_err::write(&conf, "cors_origins = [\"https://c.example\"]\n[limits]\nrate_per_sec = 1000\nburst = 0\n").unwrap();
    hangup(&child);
    wait_for("the failed reload in the log", || read_log().contains("configuration reload failed"));
    let text = read_log();
    let failed = text.lines().find(|l| l.contains("configuration reload failed")).unwrap();
    assert!(failed.contains("server.toml") && failed.contains("line 4") && failed.contains("limits.burst"), "{failed}");
    assert_eq!(cors_allowed(&addr, "https://c.example"), None);
    assert!(cors_allowed(&addr, "https://b.example").is_some());
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(statuses(&addr, key, 3)[2], 429, "the limits of the last good reload still hold");

    // Both reloads are in the audit log, with their changes and error.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = http_get(&addr, "/v1/audit?action=config.reload", Some(key));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("limits.rate_per_sec 1000 -> 1") && r.contains("\"actor\":\"system\""), "{r}");
    assert!(!r.contains(key), "no secret in the detail");
    let r = http_get(&addr, "/v1/audit?action=config.reload_failed", Some(key));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("line 4") && r.contains("limits.burst"), "{r}");
    stop(child);
    let verified = ok(&dir.path().join("data"), &["audit", "verify"]);
    assert!(verified.starts_with("audit log OK"), "{verified}");
}
