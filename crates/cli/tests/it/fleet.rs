//! `kernelize fleet …` against a real server (in process, SQLite, real HTTP): enrollment
//! token → simulated devices enroll → list → group → deployment → approval by a second
//! admin → offers; bulk confirmation rules; error answers; the event stream.

use kernelize_fleet::client::DeviceClient;
use kernelize_fleet::{InstalledKernel, Inventory};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const ADMIN: &str = "kz_admfleetcli0_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Runs `kernelize fleet --server BASE --api-key KEY args…` off the async runtime.
async fn fleet(base: &str, key: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kernelize"));
    cmd.args(["fleet", "--server", base, "--api-key", key]).args(args).stdin(Stdio::null());
    cmd.env_remove("KERNELIZE_API_KEY");
    tokio::task::spawn_blocking(move || cmd.output().expect("kernelize runs")).await.unwrap()
}

/// stdout of a `fleet` run that must succeed.
async fn fleet_ok(base: &str, key: &str, args: &[&str]) -> String {
    let out = fleet(base, key, args).await;
    assert!(out.status.success(), "kernelize fleet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn fleet_json(base: &str, key: &str, args: &[&str]) -> Value {
    let out = fleet_ok(base, key, args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not one JSON document ({e}): {out}"))
}

async fn fleet_lines(base: &str, key: &str, args: &[&str]) -> Vec<Value> {
    fleet_ok(base, key, args).await.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn inventory() -> Inventory {
    let mut kernels = BTreeMap::new();
    kernels.insert("stable".to_owned(), InstalledKernel { kernel_id: "k1".into(), version: 1 });
    Inventory { agent_version: "0.1.0".into(), kernels, free_disk_bytes: 1 << 30, health: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_cli_enrolls_groups_deploys_and_approves_with_a_second_admin() {
    let dir = tempfile::tempdir().unwrap();
    let config = kernelize_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        admin_key: Some(ADMIN.into()),
        log_format: "text".into(),
        ..kernelize_server::Config::default()
    };
    let running = kernelize_server::start(config).await.unwrap();
    let base = format!("http://{}", running.addr());
    let http = reqwest::Client::new();
    // A second admin: the creator of a deployment cannot approve it.
    let r = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "second-admin", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let admin2 = r.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();

    // tokens create → devices enroll with it.
    let tok =
        fleet_json(&base, ADMIN, &["tokens", "create", "--ttl", "1h", "--uses", "3", "--label", "site=lab"]).await;
    let secret = tok["token"].as_str().expect("the secret is shown at creation").to_owned();
    assert_eq!(tok["uses_left"], 3, "{tok}");
    let listed = fleet_lines(&base, ADMIN, &["tokens", "list"]).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("token").is_none(), "secrets are not listed: {}", listed[0]);
    let inv = inventory();
    let mut devices = Vec::new();
    for i in 0..3 {
        let mut d = DeviceClient::generate(http.clone(), &base);
        d.enroll(&format!("box-{i}"), &inv, &BTreeMap::new(), Some(&secret)).await.unwrap();
        d.refresh_token().await.unwrap();
        d.heartbeat(Some(&inv), None).await.unwrap();
        devices.push(d);
    }
    // A fourth device without a token stays pending until accepted from the CLI.
    let pending = DeviceClient::generate(http.clone(), &base);
    pending.enroll("box-pending", &inv, &BTreeMap::new(), None).await.unwrap();
    let p = fleet_lines(&base, ADMIN, &["devices", "list", "--status", "pending"]).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["id"], pending.device_id.as_str());
    let accepted = fleet_json(&base, ADMIN, &["devices", "accept", &pending.device_id]).await;
    assert_eq!(accepted["status"], "accepted");

    // devices list / show.
    let lab = fleet_lines(&base, ADMIN, &["devices", "list", "--filter", "labels.site = \"lab\""]).await;
    assert_eq!(lab.len(), 3, "{lab:?}");
    let all = fleet_lines(&base, ADMIN, &["devices", "list"]).await;
    assert_eq!(all.len(), 4);
    let shown = fleet_json(&base, ADMIN, &["devices", "show", &devices[0].device_id]).await;
    assert_eq!(shown["identity"], "box-0");
    assert_eq!(shown["labels"]["site"], "lab");

    // groups create / list / show.
    let g = fleet_json(&base, ADMIN, &["groups", "create", "lab", "--filter", "labels.site = \"lab\""]).await;
    assert_eq!((g["kind"].as_str(), g["devices"].as_u64()), (Some("dynamic"), Some(3)), "{g}");
    assert_eq!(fleet_lines(&base, ADMIN, &["groups", "list"]).await.len(), 1);
    assert_eq!(fleet_json(&base, ADMIN, &["groups", "show", "lab"]).await["devices"], 3);

    // A kernel built by the server, published with the CLI, then listed.
    let post = |path: &str, body: Value| {
        let r = http.post(format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send();
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };
    post("/v1/collections", json!({"name": "src", "dim": 8})).await;
    let recs: Vec<Value> = (0..200u32)
        .map(|i| json!({"id": format!("r{i}"), "vector": (0..8).map(|j| ((i * 31 + j * 7) % 17) as f32 - 8.0).collect::<Vec<_>>()}))
        .collect();
    post("/v1/collections/src/records", json!({"records": recs})).await;
    let kernel = post("/v1/kernels", json!({"collection": "src"})).await["id"].as_str().unwrap().to_owned();
    for _ in 0..600 {
        let r = http.get(format!("{base}/v1/kernels/{kernel}")).bearer_auth(ADMIN).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        if v["state"] != "running" {
            assert_eq!(v["state"], "succeeded", "{v}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let published = fleet_json(
        &base,
        ADMIN,
        &["releases", "publish", "--kernel", &kernel, "--channel", "stable", "--version", "2"],
    )
    .await;
    let rel = published["id"].as_str().expect("a release id").to_owned();
    let rels = fleet_lines(&base, ADMIN, &["releases", "list"]).await;
    assert_eq!(rels.len(), 1);
    assert_eq!(rels[0]["id"], rel.as_str());
    assert_eq!(fleet_json(&base, ADMIN, &["releases", "show", &rel]).await["version"], 2);

    // deployments create (by ADMIN) → approve by ADMIN refused → approve by admin2.
    let plan = dir.path().join("plan.json");
    fs_err::write(&plan, r#"{"phases": [{"percent": 100}], "abort_policy": "keep"}"#).unwrap();
    let plan_s = plan.to_str().unwrap();
    let d = fleet_json(
        &base,
        ADMIN,
        &["deployments", "create", "--name", "v2 lab", "--release", &rel, "--group", "lab", "--plan", plan_s],
    )
    .await;
    assert_eq!(d["state"], "awaiting_approval", "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let digest = d["digest"].as_str().unwrap().to_owned();
    let own = fleet(&base, ADMIN, &["deployments", "approve", &id]).await;
    assert_eq!(own.status.code(), Some(1));
    let err = String::from_utf8_lossy(&own.stderr);
    assert!(err.contains("HTTP 403") && err.contains("(forbidden)"), "the server's status and code are shown: {err}");
    // A digest other than the current one is refused before anything is sent.
    let stale = fleet(&base, &admin2, &["deployments", "approve", &id, "--digest", "0000"]).await;
    assert_eq!(stale.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("review it again"));
    let out = fleet(&base, &admin2, &["deployments", "approve", &id, "--digest", &digest]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown_to_approver = String::from_utf8_lossy(&out.stderr);
    assert!(shown_to_approver.contains(&digest) && shown_to_approver.contains("phases"), "{shown_to_approver}");
    let approved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(approved["state"], "running", "{approved}");
    assert!(approved["approved_by"].as_str().unwrap().starts_with("key:"), "{approved}");

    // The devices get their offers; show and executions reflect them.
    for d in &devices {
        let o = d.offer().await.unwrap().expect("phase 1 is 100%: every device gets an offer");
        assert_eq!(o.release.id, rel);
    }
    let shown = fleet_json(&base, ADMIN, &["deployments", "show", &id]).await;
    assert_eq!((shown["state"].as_str(), shown["target_count"].as_u64()), (Some("running"), Some(3)), "{shown}");
    assert_eq!(shown["counts"]["offered"], 3, "{shown}");
    let ex = fleet_lines(&base, ADMIN, &["deployments", "executions", &id, "--state", "offered"]).await;
    assert_eq!(ex.len(), 3);
    assert_eq!(fleet_lines(&base, ADMIN, &["deployments", "list"]).await.len(), 1);
    assert_eq!(fleet_json(&base, &admin2, &["deployments", "pause", &id]).await["state"], "paused");
    assert_eq!(fleet_json(&base, &admin2, &["deployments", "resume", &id]).await["state"], "running");

    // Bulk: off a terminal without --expect-count it shows the dry run and refuses.
    let out =
        fleet(&base, ADMIN, &["devices", "bulk", "--select-group", "lab", "--action", "label", "--label", "tier=a"])
            .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("would touch 3 device(s)") && err.contains("--expect-count 3"), "{err}");
    let none = fleet_lines(&base, ADMIN, &["devices", "list", "--filter", "labels.tier = \"a\""]).await;
    assert!(none.is_empty(), "a refused bulk operation changes nothing");
    // A wrong count is the server's 409.
    let args = ["devices", "bulk", "--select-group", "lab", "--action", "label", "--label", "tier=a", "--expect-count"];
    let out = fleet(&base, ADMIN, &[&args[..], &["2"]].concat()).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 409"), "{}", String::from_utf8_lossy(&out.stderr));
    let done = fleet_json(&base, ADMIN, &[&args[..], &["3"]].concat()).await;
    assert_eq!((done["matched"].as_u64(), done["changed"].as_u64()), (Some(3), Some(3)), "{done}");
    assert_eq!(fleet_lines(&base, ADMIN, &["devices", "list", "--filter", "labels.tier = \"a\""]).await.len(), 3);

    // Errors: an unknown device is the server's 404 with its message; no key is a 401.
    let out = fleet(&base, ADMIN, &["devices", "show", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GET /v1/fleet/devices/nope: HTTP 404 Not Found (not_found)"), "{err}");
    let out = fleet(&base, "kz_wrong0000000_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX", &["devices", "list"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"), "{}", String::from_utf8_lossy(&out.stderr));

    // events: the backlog replays as JSON lines (the enrollments and the approval).
    let mut child = Command::new(env!("CARGO_BIN_EXE_kernelize"))
        .args(["fleet", "--server", &base, "--api-key", ADMIN, "events", "--after", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let ev: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    assert!(ev["seq"].as_u64().is_some() && ev["kind"].is_string(), "{ev}");

    running.shutdown().await.unwrap();
}
