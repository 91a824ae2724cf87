//! A real S3-compatible server for tests (feature `testing`; the crate's own tests include
//! this file too): moto's server (PyPI `moto[server]`), one per
//! test binary, on a port the OS picks on 127.0.0.1.
//!
//! It runs inside a small Python wrapper that prints the port and stops the server when
//! its stdin closes, so it goes away with the test binary however that ends (normal exit,
//! panic, SIGKILL) — a `static` is never dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The version `scripts/test.sh` installs.
/// The moto version the tests need.
pub const MOTO_PIN: &str = "moto[server]==5.2.1";

const WRAPPER: &str = r#"
import logging, sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
try:
    from moto.server import ThreadedMotoServer
except ImportError as e:
    print("IMPORT-ERROR", e, flush=True)
    sys.exit(3)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"#;

/// A running moto server.
pub struct Moto {
    /// Held for the life of the binary: its stdin pipe closes at exit, which stops the server.
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Only runs for a `Moto` that is not the shared one; kill by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("KERNELIZE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn start() -> Result<Moto, String> {
    let install = format!("run scripts/test.sh, or install it with `{} -m pip install '{MOTO_PIN}'`", python());
    let mut child = Command::new(python())
        .args(["-c", WRAPPER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {} for the S3 test server ({e}); {install}", python()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim();
    if let Some(port) = line.strip_prefix("PORT ") {
        let port = port.parse().map_err(|e| format!("moto printed {line:?}: {e}"))?;
        return Ok(Moto { child, port });
    }
    let _ = child.kill();
    let _ = child.wait();
    if line.starts_with("IMPORT-ERROR") {
        Err(format!("the S3 tests need moto's server, which {} cannot import ({line}); {install}", python()))
    } else {
        Err(format!("moto's server did not start (it printed {line:?}); {install}"))
    }
}

/// The shared server. Panics (failing the test) with the install command if moto is
/// missing: the S3 tests never skip silently.
pub fn server() -> &'static Moto {
    static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();
    match MOTO.get_or_init(start) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

impl Moto {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new, empty bucket.
    pub fn bucket(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("kz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let (status, _) = self.request("PUT", &format!("/{name}"), &[]);
        assert_eq!(status, 200, "creating bucket {name}");
        name
    }

    /// One unsigned HTTP/1.1 request (moto creates buckets without a signature): the
    /// status and the response head.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        s.write_all(body).expect("write");
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).expect("read");
        let text = String::from_utf8_lossy(&resp);
        let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head)
    }
}
