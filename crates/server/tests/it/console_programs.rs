//! The console's programs, chat and kernel verify/query pages in Chromium
//! (`console-tests/programs.test.mjs`) against a real server on the real local model
//! (SmolLM2-135M-Instruct, `kernelize models install`) and a kernel of a small collection
//! embedded by the server (MiniLM).

use crate::browser::{artifacts, console_tests, run_node};
use crate::common::{ADMIN_KEY, Backend, TestServer};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_chat_and_kernel_checks_in_chromium() {
    let dir = console_tests();
    let ts = TestServer::start(Backend::Sqlite).await;
    let kernel = crate::programs::facts_kernel(&ts).await;
    let writer = ts.key("writer", None).await;
    let reader = ts.key("reader", None).await;
    let out = artifacts("programs");
    let (base, out2) = (ts.base.clone(), out.clone());
    let started = Instant::now();
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        let args = [
            "programs.test.mjs".as_ref(),
            base.as_ref(),
            writer.as_ref(),
            reader.as_ref(),
            kernel.as_ref(),
            out2.as_os_str(),
        ];
        run_node(&dir, &args, Duration::from_secs(240))
    })
    .await
    .unwrap();
    assert!(ok, "the programs browser test failed (screenshots in {}):\n{stderr}", out.display());
    eprintln!("{stderr}\n(the browser part took {:.1} s)", started.elapsed().as_secs_f64());
    for shot in ["01-programs", "02-program", "03-program-try", "04-compile-job", "05-chat", "06-kernel-verify-query"] {
        assert!(out.join(format!("{shot}.png")).exists(), "{shot}");
    }
    // What the browser did went through the API: a compiled version and the runs.
    let (_, qa) = ts.get(ADMIN_KEY, "/v1/programs/qa").await;
    assert!(qa["origin"].as_str().unwrap().starts_with("compiled:"), "{qa}");
    let (_, runs) = ts.get(ADMIN_KEY, "/v1/programs/runs?program=chat").await;
    assert!(runs["runs"].as_array().unwrap().iter().any(|r| r["ok"] == true), "{runs}");
    ts.shutdown().await;
}
