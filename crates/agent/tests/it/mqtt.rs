//! MQTT wake-ups: with a Mosquitto of our own running, agents polling every 60 s get
//! their offers within 1 s of a phase starting; with Mosquitto killed mid-rollout,
//! polling alone completes it.

use crate::common::*;
use serde_json::{Value, json};

/// A Mosquitto of our own on a free port, killed by PID.
struct Broker(std::process::Child);

impl Broker {
    async fn start(port: u16) -> Broker {
        let child = std::process::Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (it runs as the system service)");
        let b = Broker(child);
        wait_for(10, "mosquitto to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        b
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// When an execution entered `offered` (Unix ms).
fn offered_at(e: &Value) -> i64 {
    e["history"].as_array().unwrap().iter().find(|h| h["state"] == "offered").unwrap()["at_ms"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_bring_offers_within_a_second_and_polling_finishes_without_the_broker() {
    let port = free_port();
    let broker = Broker::start(port).await;
    let url = format!("mqtt://127.0.0.1:{port}");
    let f = Fleet::start(60_000, 64 << 10, Some(url.clone())).await;
    let k = f.kernel("mqtt", 200, 0, 0).await;
    let rel = f.publish(&k, "stable", 1, json!([])).await;
    let token = f.enrollment_token(3, "mqtt").await;
    let (rk, kk) = f.keys().await;
    let agents: Vec<AgentProc> = (0..3)
        .map(|i| {
            AgentProc::spawn(
                &f.base,
                &f.dir.path().join(format!("mqtt-{i}")),
                &["--enroll-token", &token, "--release-key", &rk, "--kernel-key", &kk, "--mqtt-url", &url],
            )
        })
        .collect();
    for a in &agents {
        wait_for(30, "the agent to subscribe", || async {
            fs_err::read_to_string(&a.log).unwrap_or_default().contains("mqtt: listening on").then_some(())
        })
        .await;
    }
    // Phase 1 wakes one device, then the deployment pauses.
    let plan =
        json!({"phases": [{"count": 1, "on_success": "pause"}, {"percent": 100}], "in_progress_timeout_seconds": 300});
    let dep = f.deploy(rel["id"].as_str().unwrap(), "mqtt", plan).await;
    let started = f.deployment(&dep).await["started_ms"].as_i64().unwrap();
    let first = wait_for(10, "the first phase's device to succeed", || async {
        let (_, ex) = f.get(ADMIN, &format!("/v1/fleet/deployments/{dep}/executions?state=succeeded")).await;
        ex["executions"].as_array().unwrap().first().cloned()
    })
    .await;
    let delay = offered_at(&first) - started;
    assert!(delay <= 1000, "offered {delay} ms after the deployment started, with a 60 s polling interval");
    wait_for(10, "the pause after phase 1", || async { (f.deployment(&dep).await["state"] == "paused").then_some(()) })
        .await;

    // No broker: the second phase reaches the devices by polling.
    drop(broker);
    let (s, v) = f.post(ADMIN, &format!("/v1/fleet/deployments/{dep}/promote"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let done = wait_for(100, "polling to complete the rollout", || async {
        let d = f.deployment(&dep).await;
        (d["state"] == "completed").then_some(d)
    })
    .await;
    assert_eq!(done["counts"]["succeeded"], 3, "{done}");
}
