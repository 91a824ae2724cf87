//! Runs the Python package's pytest suite (`tests/*.py`) against the extension module of
//! this very build: the module (`deps/lib_native.so`, built beside this test by the same
//! cargo invocation) and the package's Python sources are staged as an importable `kernelize`
//! package, and pytest runs in the venv `scripts/python.sh --prepare` makes
//! ($KZ_PYTHON_VENV, else ~/.cache/kz-venv-python). The suite starts the `kernelize`
//! binary of the same target directory as a server.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test driver: failing loudly is the point")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn venv() -> PathBuf {
    match std::env::var_os("KZ_PYTHON_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kz-venv-python"),
    }
}

/// Copies the package's Python files and the freshly built extension into `dest/kernelize`.
fn stage(profile_dir: &Path, dest: &Path) -> PathBuf {
    let pkg = dest.join("kernelize");
    let _ = fs_err::remove_dir_all(&pkg);
    fs_err::create_dir_all(&pkg).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kernelize");
    for entry in fs_err::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs_err::copy(&path, pkg.join(path.file_name().unwrap())).unwrap();
        }
    }
    // The cdylib of this same cargo invocation (`target/<profile>/lib_native.so` is only
    // refreshed by `cargo build`, and may hold another build's).
    let module = profile_dir.join("deps/lib_native.so");
    assert!(module.exists(), "{} is missing: build with `cargo test --workspace`", module.display());
    fs_err::copy(&module, pkg.join("_native.abi3.so")).unwrap();
    pkg
}

#[test]
fn python_package_pytest_suite() {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "no Python venv at {}: run `scripts/python.sh --prepare` (scripts/test.sh does)",
        venv().display()
    );
    // target/<profile>/deps/pytest-<hash> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let kernelize = profile_dir.join("kernelize");
    assert!(kernelize.exists(), "{} is missing: build with `cargo test --workspace`", kernelize.display());
    let staged = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-package");
    stage(&profile_dir, &staged);
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "tests",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error::pytest.PytestUnraisableExceptionWarning",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONPATH", &staged)
        .env("KERNELIZE_BIN", &kernelize)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran nothing:\n{text}");
}
