//! `scripts/nvidia-vulkan-icd` (the fix the NVIDIA diagnosis points at) on scratch manifests:
//! the EGL library named by its path where it lies beside the driver's library, by its bare
//! name (with a warning) where it is nowhere to be found, and a clear error on a file that is
//! no manifest.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nvidia-vulkan-icd")
}

fn run(from: &Path, out: &Path) -> Output {
    Command::new("python3")
        .arg(script())
        .arg("--from")
        .arg(from)
        .arg("--out")
        .arg(out)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("python3 runs")
}

fn library(manifest: &Path) -> String {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    json["ICD"]["library_path"].as_str().unwrap().to_string()
}

#[test]
fn the_egl_manifest_names_the_library_beside_the_drivers_or_its_bare_name() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib64");
    std::fs::create_dir_all(&lib).unwrap();
    let glx = lib.join("libGLX_nvidia.so.0");
    let from = dir.path().join("nvidia_icd.json");
    let manifest = format!(
        r#"{{"file_format_version": "1.0.1", "ICD": {{"library_path": "{}", "api_version": "1.4.312"}}}}"#,
        glx.display()
    );
    std::fs::write(&from, manifest).unwrap();
    let out = dir.path().join("out/nvidia_egl_icd.json");

    std::fs::write(lib.join("libEGL_nvidia.so.0"), "").unwrap();
    let done = run(&from, &out);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(library(&out), lib.join("libEGL_nvidia.so.0").display().to_string());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["ICD"]["api_version"], "1.4.312", "the driver's API version is kept");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert_eq!(stdout.trim(), format!("export VK_DRIVER_FILES={}", out.display()));

    std::fs::remove_file(lib.join("libEGL_nvidia.so.0")).unwrap();
    let done = run(&from, &out);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(library(&out), "libEGL_nvidia.so.0");
    // Written all the same (with a warning where the linker's cache has no such library).
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("wrote"), "{stderr}");
}

#[test]
fn a_file_that_is_no_manifest_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("broken.json");
    std::fs::write(&from, r#"{"ICD": 3}"#).unwrap();
    let out = dir.path().join("out.json");
    let done = run(&from, &out);
    assert!(!done.status.success());
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(stderr.contains("broken.json") && stderr.contains("is not a Vulkan ICD manifest"), "{stderr}");
    assert!(!out.exists());
}
