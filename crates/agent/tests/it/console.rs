//! The web console's fleet and backups pages in Chromium, against a real server and real
//! `kernelize-agent` processes: `crates/server/console-tests/fleet.test.mjs` run with node
//! (playwright-core driving Debian's Chromium, axe-core over every view).
//! `scripts/console-tests.sh --prepare` installs what that needs.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser test's script, or a panic saying how to install node, Chromium and the
/// npm packages.
fn browser_test() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/console-tests");
    let chromium = std::env::var("KZ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = tests.join("node_modules/playwright-core");
    assert!(
        Path::new(&chromium).exists() && modules.exists(),
        "the console's browser test needs {chromium} and {}: run scripts/console-tests.sh --prepare",
        modules.display()
    );
    tests.join("fleet.test.mjs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_console_in_chromium() {
    let script = browser_test();
    let artifacts = std::env::var_os("KZ_ARTIFACTS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-fleet"),
        |d| PathBuf::from(d).join("console-fleet"),
    );
    // Heartbeats every 500 ms: a stopped agent is offline after 1.5 s.
    let f = Fleet::start(500, 64 << 10, None).await;
    f.kernel("ui", 200, 0, 0).await;
    let token = f.enrollment_token(2, "ui").await;
    let (release_key, kernel_key) = f.keys().await;
    let keys = ["--release-key", release_key.as_str(), "--kernel-key", kernel_key.as_str()];
    let spawn = |name: &str, token: Option<&str>| {
        let mut args = vec!["--identity", name];
        args.extend_from_slice(&keys);
        if let Some(t) = token {
            args.extend_from_slice(&["--enroll-token", t]);
        }
        AgentProc::spawn(&f.base, &f.dir.path().join(name), &args)
    };
    let agents = [spawn("sensor-a", Some(&token)), spawn("sensor-b", Some(&token)), spawn("sensor-c", None)];
    wait_for(120, "two agents online and one pending", || async {
        let (_, v) = f.get(ADMIN, "/v1/fleet/devices").await;
        let list = v["devices"].as_array().cloned().unwrap_or_default();
        let online = list.iter().filter(|d| d["status"] == "accepted" && d["online"] == true).count();
        let pending = list.iter().filter(|d| d["status"] == "pending").count();
        (online == 2 && pending == 1).then_some(())
    })
    .await;
    let pid_b = agents[1].child.as_ref().unwrap().id().to_string();

    let mut node = Command::new("node")
        .arg(&script)
        .args([&f.base, ADMIN, &f.admin2])
        .arg(&artifacts)
        .arg(&pid_b)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/console-tests.sh --prepare installs it)");
    // Read as it comes, so a chatty failure cannot fill the pipe and stall the script.
    let mut pipe = node.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    // The script bounds itself at 300 s; this bounds the script.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(360) {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stderr = reader.join().unwrap_or_default();
    let ok = status.is_some_and(|s| s.success());
    assert!(ok, "the fleet browser test failed ({status:?}; screenshots in {}):\n{stderr}", artifacts.display());
    eprintln!("{stderr}");
    assert!(artifacts.join("01-fleet-devices.png").exists());
    drop(agents);
    let mut f = f;
    f.stop().await;
}
