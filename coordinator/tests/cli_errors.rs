//! The real binary on bad input: a configuration it cannot use stops it with exit status 1 and
//! one `error:` line that names the cause once (no "Caused by" list, no repeated message, no
//! panic), before it binds a port or writes a file.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::process::Command;

/// Runs the coordinator in `dir` with `args`; its exit status and its one `error:` line.
fn refused(dir: &std::path::Path, args: &[&str]) -> String {
    let data_dir = dir.join("data");
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--allow-anonymous", "--data-dir", data_dir.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("Caused by"), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(!data_dir.join("checkpoint.bin").exists(), "{args:?}: a checkpoint was written");
    // The message up to the end of stderr (a TOML error spans lines): no part twice in a row.
    let message = &stderr[stderr.find("error: ").unwrap()..];
    let parts: Vec<&str> = message.split(": ").map(str::trim).collect();
    assert!(parts.windows(2).all(|pair| pair[0] != pair[1]), "{args:?}: {message}");
    message.to_owned()
}

#[test]
fn a_bad_config_file_is_one_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(&config, "rounds = \"x\"\n").unwrap();
    let message = refused(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(message.contains("coordinator.toml") && message.contains("line 1"), "{message}");
    // The TOML error is printed once, not again as its own cause.
    assert_eq!(message.matches("expected u64").count(), 1, "{message}");
}

#[test]
fn a_model_over_the_parameter_bound_is_refused_before_it_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let message = refused(dir.path(), &["--inputs", "10", "--classes", "4000000000"]);
    assert!(message.contains("4000000000 classes") && message.contains("at most 268435456"), "{message}");
}
