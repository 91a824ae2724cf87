//! Resumable downloads: an agent SIGKILLed at 5 random points of a 32 MB download
//! finishes with at most 1.1× the file's bytes transferred (counted by a TCP proxy
//! between it and the server) and the right hash.

use crate::common::*;
use rand::Rng as _;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TCP proxy to `target` counting the bytes that flow back to the client.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicU64::new(0));
    let count = down.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, down)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_five_times_resumes_to_the_right_hash() {
    let f = Fleet::start(300, 64 << 10, None).await;
    // About 32 MB of kernel: texts that hardly compress.
    let k = f.kernel("big", 2600, 0, 16_000).await;
    let rel = f.publish(&k, "stable", 1, json!([])).await;
    let len = rel["length"].as_u64().unwrap();
    assert!(len >= 30 << 20, "the kernel is {len} bytes; the test wants about 32 MB");
    let sha = rel["sha256"].as_str().unwrap().to_owned();

    let addr: SocketAddr = f.base.trim_start_matches("http://").parse().unwrap();
    let (proxy, down) = counting_proxy(addr).await;
    let token = f.enrollment_token(1, "resume").await;
    let (rk, kk) = f.keys().await;
    // 8 MB/s: the download takes about 4 s, time enough to cut it 5 times.
    let mut a = AgentProc::spawn(
        &format!("http://{proxy}"),
        &f.dir.path().join("agent"),
        &["--enroll-token", &token, "--release-key", &rk, "--kernel-key", &kk, "--max-bytes-per-sec", "8000000"],
    );
    wait_for(30, "enrollment", || async {
        let (_, d) = f.get(ADMIN, "/v1/fleet/devices").await;
        (d["devices"].as_array().map_or(0, Vec::len) == 1).then_some(())
    })
    .await;
    let dev = a.device_id();
    let before = down.load(Ordering::Relaxed);
    let dep = f.deploy(rel["id"].as_str().unwrap(), "resume", json!({"phases": [{"percent": 100}]})).await;

    let part = a.dir.join("downloads").join(format!("{sha}.part"));
    let mut points: Vec<u64> = (0..5).map(|_| rand::rng().random_range(len / 20..len * 19 / 20)).collect();
    points.sort_unstable();
    for p in &points {
        wait_for(60, &format!("the download to pass byte {p}"), || async {
            (fs_err::metadata(&part).map(|m| m.len()).unwrap_or(0) >= *p).then_some(())
        })
        .await;
        a.kill();
        a.start();
    }
    f.wait_execution(&dep, &dev, "succeeded", 120).await;
    let total = down.load(Ordering::Relaxed) - before;
    let file = fs_err::read(a.dir.join("kernels").join(format!("{sha}.kernel"))).unwrap();
    assert_eq!(kernelize_bundle::Sha256::of(&file).to_hex(), sha);
    let ratio = total as f64 / len as f64;
    eprintln!("killed at {points:?}: {total} bytes through the proxy for a file of {len} ({ratio:.3}x)");
    assert!(ratio <= 1.1, "{total} bytes transferred for a {len}-byte file ({ratio:.3}x)");
}
