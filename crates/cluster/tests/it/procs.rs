//! Private copies of the services, as real processes that a fault test may kill and start
//! again on the same port and the same data: `nats-server` with JetStream (Debian's
//! `nats-server`), PostgreSQL (Debian's `postgresql`: `initdb` and `postgres` run as the
//! `postgres` user when the tests run as root) and `s3s-fs`, an S3-compatible server that
//! keeps objects in a directory (crates.io; `scripts/test.sh` installs it under
//! `~/.cache/kz-tools`). The shared services at the standard ports are never touched.
//! Each process is stopped by its PID when its guard drops.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound once, then released for the service to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, what: &str, log: &Path, child: &mut Child) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = fs_err::read_to_string(log).unwrap_or_default();
            panic!("{what} exited at start ({status}); its output:\n{out}");
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn find(env: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("the fault tests need {install} (or ${env} naming the binary); run scripts/test.sh"))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {}", child.id());
}

/// One restartable service process.
pub struct Proc {
    what: &'static str,
    cmd: Box<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Where its output goes (printed when it fails to start).
    log: PathBuf,
    /// Its own data directory, when it needs one another user can enter.
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    fn spawn(what: &'static str, port: u16, cmd: Box<dyn Fn() -> Command + Send + Sync>) -> Proc {
        let log = std::env::temp_dir().join(format!("kz-{what}-{port}.log"));
        let mut p = Proc { what, cmd, child: None, port, log, _dir: None };
        p.start();
        p
    }

    /// Starts the process (again) and waits for its port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.what);
        let out = fs_err::OpenOptions::new().create(true).append(true).open(&self.log).unwrap().into_parts().0;
        let err = out.try_clone().unwrap();
        let mut child = (self.cmd)().stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e}", self.what);
        });
        wait_port(self.port, self.what, &self.log, &mut child);
        self.child = Some(child);
    }

    /// Kills the process (`sig`: `-KILL`, or `-QUIT` for PostgreSQL's immediate shutdown,
    /// which skips the checkpoint as a crash does) and waits until it is gone.
    pub fn kill(&mut self, sig: &str) {
        let mut child = self.child.take().expect("running");
        signal(&child, sig);
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs_err::remove_file(&self.log);
    }
}

/// `nats-server -js` with its store in `dir`.
pub fn nats(dir: &Path) -> Proc {
    let bin = find(
        "KERNELIZE_TEST_NATS_SERVER",
        &[PathBuf::from("/usr/sbin/nats-server"), PathBuf::from("/usr/bin/nats-server")],
        "Debian's nats-server",
    );
    let port = free_port();
    let dir = dir.to_owned();
    Proc::spawn(
        "nats-server",
        port,
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(&dir);
            c
        }),
    )
}

/// `s3s-fs` serving the directory `dir` (a bucket is a subdirectory) with the test keys.
pub fn s3(dir: &Path) -> Proc {
    let home = std::env::var("HOME").unwrap_or_default();
    let bin = find(
        "KERNELIZE_TEST_S3S_FS",
        &[PathBuf::from(home).join(".cache/kz-tools/bin/s3s-fs")],
        "s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary --root ~/.cache/kz-tools)",
    );
    let port = free_port();
    let dir = dir.to_owned();
    fs_err::create_dir_all(&dir).unwrap();
    Proc::spawn(
        "s3s-fs",
        port,
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                "test",
                "--secret-key",
                "test",
            ])
            .arg(&dir);
            c
        }),
    )
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = fs_err::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin").join(name)).collect())
        .unwrap_or_default();
    found.sort();
    find("KERNELIZE_TEST_PG_BIN", &found.into_iter().rev().collect::<Vec<_>>(), "Debian's postgresql")
        .with_file_name(name)
}

/// The `postgres` user's uid and gid when the tests run as root (PostgreSQL refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let field = |f: &str| -> Option<u32> {
        let o = Command::new("id").args([f, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((field("-u")?, field("-g")?))
}

fn as_postgres(mut c: Command, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = user {
        c.uid(uid).gid(gid);
    }
    c
}

/// A PostgreSQL cluster of its own (made with `initdb` in a directory of its own under
/// the system's temporary directory, which the `postgres` user can enter), trust
/// authentication, listening on 127.0.0.1 only.
pub fn postgres() -> Proc {
    let user = postgres_user();
    let dir = tempfile::Builder::new().prefix("kz-pg-").tempdir().unwrap();
    let data = dir.path().join("data");
    if let Some((uid, gid)) = user {
        let ok = Command::new("chown").arg(format!("{uid}:{gid}")).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "chown {}", dir.path().display());
    }
    let mut init = Command::new(postgres_bin("initdb"));
    init.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data).stdout(Stdio::null());
    let ok = as_postgres(init, user).status().unwrap();
    assert!(ok.success(), "initdb {}", data.display());
    let port = free_port();
    let bin = postgres_bin("postgres");
    let mut p = Proc::spawn(
        "postgres",
        port,
        Box::new(move || {
            let mut c = Command::new(&bin);
            c.arg("-D").arg(&data).args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"]);
            c.arg("-c").arg(format!("unix_socket_directories={}", data.display()));
            as_postgres(c, user)
        }),
    );
    p._dir = Some(dir);
    p
}

impl Proc {
    /// The URL of a PostgreSQL started by [`postgres`].
    pub fn pg_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}
