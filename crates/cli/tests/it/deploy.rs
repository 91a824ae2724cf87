//! The deployment files (`deploy/`: Dockerfile, compose file, Kubernetes manifests) use
//! only `kernelize` flags and `KERNELIZE_*` variables that exist, and their cluster
//! configurations parse.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kernelize ARGS… --help`, as printed (also used by `runbooks.rs`).
pub(crate) fn help_text(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kernelize")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "kernelize {args:?} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn help(args: &[&str]) -> String {
    // One line: clap wraps long help (`[env:\n    KERNELIZE_…]`).
    help_text(args).split_whitespace().collect::<Vec<_>>().join(" ") + " "
}

/// Variables read by the code rather than declared on a flag, and the file that reads each.
const READ_BY_CODE: &[(&str, &str)] =
    &[("KERNELIZE_NODE_ID", "crates/cluster/src/config.rs"), ("KERNELIZE_MODELS_DIR", "crates/embed/src/models.rs")];

fn words(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let w: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
        out.push(w.clone());
        rest = &rest[i + w.len().max(1)..];
    }
    out
}

#[test]
fn deployment_files_use_only_flags_and_variables_that_exist() {
    let helps =
        [help(&[]), help(&["serve"]), help(&["cluster"]), help(&["cluster", "secrets"]), help(&["models", "install"])]
            .join("\n");
    let files = ["deploy/Dockerfile", "deploy/compose.yaml", "deploy/k8s/kernelize.yaml"];
    let mut checked = (0, 0);
    for f in files {
        let text = fs_err::read_to_string(root().join(f)).unwrap();
        for var in words(&text, "KERNELIZE_") {
            match READ_BY_CODE.iter().find(|(v, _)| *v == var) {
                Some((_, src)) => {
                    let code = fs_err::read_to_string(root().join(src)).unwrap();
                    assert!(code.contains(&format!("\"{var}\"")), "{f}: {var} is not read by {src}");
                }
                None => {
                    let declared = helps.contains(&format!("[env: {var}=")) || helps.contains(&format!("[env: {var}]"));
                    assert!(declared, "{f}: no flag reads {var}");
                }
            }
            checked.0 += 1;
        }
        // Flags of the kernelize commands: after `kernelize ` on a line (not cargo's
        // `-p kernelize`), and the container's `args`.
        for line in text.lines().filter(|l| !l.contains("cargo ")) {
            // `kernelize ` as a command word (not a path such as /var/lib/kernelize).
            let command = line
                .match_indices("kernelize ")
                .map(|(i, _)| i)
                .find(|&i| line[..i].chars().next_back().is_none_or(|c| c == ' ' || c == '"' || c == '[' || c == '\''));
            let args = match command {
                _ if line.trim_start().starts_with("args:") => line,
                // Up to the end of that shell command.
                Some(i) => line[i..].split(['"', ';', '&']).next().unwrap_or(""),
                None => continue,
            };
            for flag in words(args, "--") {
                let known = helps.contains(&format!("{flag} "));
                assert!(known, "{f}: {flag} does not exist: {line}");
                checked.1 += 1;
            }
        }
    }
    assert!(checked.0 >= 10 && checked.1 >= 4, "too little checked: {checked:?}");
    // The cluster configurations they carry parse (every field known and in range).
    let compose_toml = fs_err::read_to_string(root().join("deploy/cluster.toml")).unwrap();
    kernelize_cluster::ClusterConfig::parse(&compose_toml, "deploy/cluster.toml").unwrap_or_else(|e| panic!("{e}"));
    let k8s = fs_err::read_to_string(root().join("deploy/k8s/kernelize.yaml")).unwrap();
    let block: String = k8s
        .split("cluster.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    kernelize_cluster::ClusterConfig::parse(&block, "deploy/k8s/kernelize.yaml").unwrap_or_else(|e| panic!("{e}"));
}
