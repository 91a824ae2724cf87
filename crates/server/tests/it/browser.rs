//! What the single sign-on and map tests share: ports from this suite's range
//! (127.0.0.1:18200–18299, for URLs that must be known before a server starts), node
//! scripts run under a deadline and stopped by PID, and the real OpenID provider
//! (`console-tests/oidc-provider.mjs`, npm `oidc-provider`).

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A port of 18200–18299 that nothing listens on now (each call tries the next one).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    for _ in 0..100 {
        let port = 18200 + NEXT.fetch_add(1, Ordering::SeqCst) % 100;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:18200-18299");
}

/// `crates/server/console-tests`, checked to have its npm packages and Chromium.
pub fn console_tests() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("console-tests");
    let chromium = std::env::var("KZ_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    for need in [dir.join("node_modules/playwright-core"), dir.join("node_modules/oidc-provider"), chromium.into()] {
        assert!(need.exists(), "the browser tests need {}: run scripts/console-tests.sh --prepare", need.display());
    }
    dir
}

/// Where a browser test's screenshots go: `$KZ_ARTIFACTS/<name>`, else beside the
/// console test's (`<target tmp>/console/<name>`).
pub fn artifacts(name: &str) -> PathBuf {
    std::env::var_os("KZ_ARTIFACTS")
        .map_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("console"), PathBuf::from)
        .join(name)
}

/// Runs `node <args>` for at most `limit`; a run still going then is killed (by its
/// PID). Returns whether it exited 0, and its standard error.
pub fn run_node(dir: &Path, args: &[&std::ffi::OsStr], limit: Duration) -> (bool, String) {
    let mut child = Command::new("node")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (scripts/console-tests.sh --prepare installs it)");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = reader.join().unwrap_or_default();
            return (false, format!("{err}\n(node was still running after {limit:?} and was stopped)"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (ok, reader.join().unwrap_or_default())
}

/// The OpenID provider, stopped (by PID) when dropped.
pub struct OidcProvider {
    child: Child,
    /// Its issuer URL (`http://localhost:<port>`).
    pub issuer: String,
}

/// The client secret the provider is started with.
pub const CLIENT_SECRET: &str = "kernelize-test-secret-0123456789";
/// Its client id.
pub const CLIENT_ID: &str = "kernelize-console";

impl OidcProvider {
    /// Starts the provider on `port`, with `redirect_uri` as its client's only redirect
    /// URI, and waits (at most 30 s) until it listens.
    pub fn start(port: u16, redirect_uri: &str) -> OidcProvider {
        let dir = console_tests();
        let mut child = Command::new("node")
            .current_dir(&dir)
            .arg("oidc-provider.mjs")
            .arg(port.to_string())
            .arg(redirect_uri)
            .arg(CLIENT_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the OpenID provider");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("ready ") {
                    let _ = tx.send(issuer.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(issuer) => OidcProvider { child, issuer },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the OpenID provider did not start on port {port} within 30 s");
            }
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
