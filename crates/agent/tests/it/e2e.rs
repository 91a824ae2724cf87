//! Agents as real processes against a real server: a two-phase rollout to 20 agents that
//! then answer offline; power cuts in trial and after the commit; a release whose golden
//! queries fail; queries during a swap.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The golden query every good release carries: `r0`'s own vector finds `r0`.
fn golden(salt: u64) -> Value {
    json!([{"vector": vector(salt, DIM), "k": 5, "expected_ids": ["r0"], "min_overlap": 1, "max_latency_ms": 2000}])
}

/// Starts `n` agents enrolled with a token for label `label`, provisioned with the keys.
async fn agents(f: &Fleet, n: usize, label: &str, extra: &[&str]) -> Vec<AgentProc> {
    let token = f.enrollment_token(n as u64, label).await;
    let (release_key, kernel_key) = f.keys().await;
    let mut args = vec!["--enroll-token", &token, "--release-key", &release_key, "--kernel-key", &kernel_key];
    args.extend_from_slice(extra);
    let out: Vec<AgentProc> =
        (0..n).map(|i| AgentProc::spawn(&f.base, &f.dir.path().join(format!("{label}-{i}")), &args)).collect();
    wait_for(120, "every agent to enroll", || async {
        let (_, d) =
            f.get(ADMIN, &format!("/v1/fleet/devices?filter={}", urlenc(&format!("labels.test = \"{label}\"")))).await;
        (d["devices"].as_array().map_or(0, Vec::len) == n).then_some(())
    })
    .await;
    out
}

fn urlenc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Waits until the deployment completes; its final document.
async fn completed(f: &Fleet, dep: &str, secs: u64) -> Value {
    wait_for(secs, &format!("deployment {dep} to complete"), || async {
        let d = f.deployment(dep).await;
        if d["state"] == "aborted" {
            let (_, ex) = f.get(ADMIN, &format!("/v1/fleet/deployments/{dep}/executions")).await;
            panic!("deployment aborted: {d}\nexecutions: {ex}");
        }
        (d["state"] == "completed").then_some(d)
    })
    .await
}

fn one_phase() -> Value {
    json!({"phases": [{"percent": 100}], "in_progress_timeout_seconds": 120})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_agents_roll_out_in_two_phases_and_answer_offline() {
    let mut f = Fleet::start(500, 64 << 10, None).await;
    let k1 = f.kernel("e2e", 400, 0, 0).await;
    let r1 = f.publish(&k1, "stable", 1, golden(0)).await;
    let k2 = f.kernel("e2e", 50, 1000, 0).await;
    let r2 = f.publish(&k2, "stable", 2, golden(1000)).await;
    let agents = agents(&f, 20, "e2e", &[]).await;

    let d1 = f.deploy(r1["id"].as_str().unwrap(), "e2e", one_phase()).await;
    completed(&f, &d1, 120).await;
    let plan = json!({"phases": [{"count": 5}, {"percent": 100}], "in_progress_timeout_seconds": 120});
    let d2 = f.deploy(r2["id"].as_str().unwrap(), "e2e", plan).await;
    let done = completed(&f, &d2, 180).await;
    assert_eq!(done["counts"]["succeeded"], 20, "{done}");
    let (_, ex) = f.get(ADMIN, &format!("/v1/fleet/deployments/{d2}/executions")).await;
    let phases: Vec<u64> = ex["executions"].as_array().unwrap().iter().map(|e| e["phase"].as_u64().unwrap()).collect();
    assert_eq!(phases.iter().filter(|p| **p == 0).count(), 5, "five devices in the first phase: {ex}");
    assert_eq!(phases.iter().filter(|p| **p == 1).count(), 15, "{ex}");
    let phase_done = |p: u64| {
        ex["executions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["phase"] == p)
            .map(|e| e["finished_ms"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let first_done = phase_done(0).into_iter().max().unwrap();
    assert!(phase_done(1).into_iter().all(|t| t >= first_done), "phase 2 finished after phase 1");
    // Inventory and the log excerpt went up with the heartbeats.
    let dev = agents[0].device_id();
    let shown = wait_for(30, "the inventory and log of version 2", || async {
        let (_, d) = f.get(ADMIN, &format!("/v1/fleet/devices/{dev}")).await;
        (d["inventory"]["kernels"]["stable"]["version"] == 2
            && d["log"].as_str().is_some_and(|l| l.contains("committed version 2")))
        .then_some(d)
    })
    .await;
    assert_eq!(shown["inventory"]["health"]["ok"], true, "{shown}");

    // The server goes away; every agent answers from the new kernel.
    f.stop().await;
    let http = reqwest::Client::new();
    for a in &agents {
        let (s, ans) = a.query(&http, "stable", &vector(1000, DIM), 3).await;
        assert_eq!(s, 200, "{ans}");
        assert_eq!(ans["release"]["version"], 2, "{ans}");
        assert_eq!(ans["hits"][0]["ids"][0], "r0", "{ans}");
    }
    // Without the key, nothing.
    let r = http
        .post(format!("http://{}/v1/kernels/stable/query", agents[0].addr().await))
        .json(&json!({"vector": vector(1, DIM)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_in_trial_roll_back_and_after_the_commit_keep_the_new_kernel() {
    let f = Fleet::start(300, 64 << 10, None).await;
    let http = reqwest::Client::new();
    let k1 = f.kernel("cut", 300, 0, 0).await;
    let r1 = f.publish(&k1, "stable", 1, golden(0)).await;
    let mut a = agents(&f, 1, "cut", &[]).await.pop().unwrap();
    let dev = a.device_id();
    let d1 = f.deploy(r1["id"].as_str().unwrap(), "cut", one_phase()).await;
    completed(&f, &d1, 60).await;
    assert_eq!(a.served_version(&http, "stable").await, Some(1));

    // A long trial, and the power goes out in it.
    a.kill();
    a.set_arg("--trial-secs", "60");
    a.start();
    let k2 = f.kernel("cut", 30, 500, 0).await;
    let r2 = f.publish(&k2, "stable", 2, golden(500)).await;
    let d2 = f.deploy(r2["id"].as_str().unwrap(), "cut", one_phase()).await;
    f.wait_execution(&d2, &dev, "trial", 60).await;
    assert_eq!(a.served_version(&http, "stable").await, Some(2), "in trial the new kernel serves");
    a.kill();
    let st = a.state();
    assert!(st["channels"]["stable"]["trial"].is_object(), "the trial was not committed: {st}");
    a.set_arg("--trial-secs", "1");
    a.start();
    let e = f.wait_execution(&d2, &dev, "rolled_back", 60).await;
    assert!(e["reason"].as_str().unwrap_or_default().contains("power_cut_in_trial"), "{e}");
    wait_for(30, "the old kernel to serve", || async {
        (a.served_version(&http, "stable").await == Some(1)).then_some(())
    })
    .await;
    assert!(a.state()["channels"]["stable"]["trial"].is_null());

    // Committed, then the power goes out: the new kernel stays.
    let k3 = f.kernel("cut", 30, 900, 0).await;
    let r3 = f.publish(&k3, "stable", 3, golden(900)).await;
    let d3 = f.deploy(r3["id"].as_str().unwrap(), "cut", one_phase()).await;
    f.wait_execution(&d3, &dev, "succeeded", 60).await;
    a.kill();
    assert!(a.state()["channels"]["stable"]["trial"].is_null(), "success is reported after the commit");
    a.start();
    wait_for(30, "the agent to serve again", || async { a.served_version(&http, "stable").await }).await;
    assert_eq!(a.served_version(&http, "stable").await, Some(3));
    assert!(
        !a.dir.join("kernels").join(format!("{}.kernel", r1["sha256"].as_str().unwrap())).exists(),
        "the old kernel was removed after the commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_golden_queries_keep_the_old_kernel_and_queries_never_fail_during_a_swap() {
    let f = Fleet::start(300, 64 << 10, None).await;
    let http = reqwest::Client::new();
    let k1 = f.kernel("gold", 300, 0, 0).await;
    let r1 = f.publish(&k1, "stable", 1, golden(0)).await;
    let a = agents(&f, 1, "gold", &[]).await.pop().unwrap();
    let dev = a.device_id();
    let d1 = f.deploy(r1["id"].as_str().unwrap(), "gold", one_phase()).await;
    completed(&f, &d1, 60).await;

    // Correctly signed, but its golden query expects an id the kernel does not have.
    let k2 = f.kernel("gold", 20, 300, 0).await;
    let bad = json!([{"vector": vector(300, DIM), "k": 5, "expected_ids": ["no-such-id"], "min_overlap": 1, "max_latency_ms": 2000}]);
    let r2 = f.publish(&k2, "stable", 2, bad).await;
    let d2 = f.deploy(r2["id"].as_str().unwrap(), "gold", one_phase()).await;
    let e = f.wait_execution(&d2, &dev, "health_failed", 60).await;
    assert!(e["reason"].as_str().unwrap_or_default().contains("golden query 0"), "{e}");
    assert_eq!(a.served_version(&http, "stable").await, Some(1));
    assert!(!a.dir.join("kernels").join(format!("{}.kernel", r2["sha256"].as_str().unwrap())).exists());

    // 50 queries a second through a swap: none fails, and both kernels answer.
    let k3 = f.kernel("gold", 20, 700, 0).await;
    let r3 = f.publish(&k3, "stable", 3, golden(700)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listen = a.addr().await;
    let key = a.key();
    let loop_task = {
        let stop = stop.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut versions) = (0u64, Vec::new(), std::collections::BTreeSet::new());
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let r = http
                    .post(format!("http://{listen}/v1/kernels/stable/query"))
                    .bearer_auth(&key)
                    .json(&json!({"vector": vector(ok, DIM), "k": 5}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap();
                        versions.insert(v["release"]["version"].as_u64().unwrap());
                        ok += 1;
                    }
                    Ok(r) => failed.push(format!("{}", r.status())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed, versions)
        })
    };
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d3 = f.deploy(r3["id"].as_str().unwrap(), "gold", one_phase()).await;
    f.wait_execution(&d3, &dev, "succeeded", 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, versions) = loop_task.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} queries failed during the swap: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok as f64 >= 40.0 * t.elapsed().as_secs_f64() * 0.8, "{ok} queries in {:?}", t.elapsed());
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec![1, 3], "both kernels answered");

    // A revert order: version 4 goes in, the deployment is aborted with `revert`, and the
    // device goes back down to version 3 — a downgrade only a signed revert offer allows.
    let k4 = f.kernel("gold", 20, 900, 0).await;
    let r4 = f.publish(&k4, "stable", 4, golden(900)).await;
    let plan = json!({"phases": [{"percent": 100, "bake_seconds": 3600}], "abort_policy": "revert",
        "in_progress_timeout_seconds": 120});
    let d4 = f.deploy(r4["id"].as_str().unwrap(), "gold", plan).await;
    f.wait_execution(&d4, &dev, "succeeded", 60).await;
    assert_eq!(a.served_version(&http, "stable").await, Some(4));
    assert_eq!(f.deployment(&d4).await["state"], "running", "baking");
    let (s, v) = f.post(ADMIN, &format!("/v1/fleet/deployments/{d4}/abort"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let e = f.wait_execution(&d4, &dev, "rolled_back", 60).await;
    assert_eq!(e["revert"], "done", "{e}");
    assert_eq!(a.served_version(&http, "stable").await, Some(3), "back on the previous release");
    assert_eq!(a.state()["channels"]["stable"]["highest_seen"], 4, "the highest version seen stays");
}
