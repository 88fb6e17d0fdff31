//! `flotilla-coordinator export` and `distill` as a user runs them: a checkpoint in, ONNX and a
//! report out; bad input is a clear error, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flotilla_coordinator::persist::save_checkpoint;
use flotilla_learner::compute::BackendChoice;
use flotilla_learner::data::Dataset;
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use flotilla_learner::infer::Standardization;
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::model::{FeatureMoments, ModelSpec};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/phishing.csv")
}

/// A checkpoint of a small HBP network trained on the bundled rows, with their statistics.
fn checkpoint(dir: &Path) -> PathBuf {
    let file = std::fs::File::open(bundled()).unwrap();
    let data = Dataset::from_csv(std::io::BufReader::new(file), Some(2)).unwrap();
    let config = HbpConfig { hidden_layers: 4, width: 16, ..HbpConfig::new(data.features, 2) };
    let mut moments = FeatureMoments::new(data.features);
    (0..data.len()).for_each(|r| moments.add_row(data.row(r)));
    let standardization = Standardization::from_moments(&moments).unwrap();
    let device = flotilla_learner::compute::select(BackendChoice::Cpu).unwrap().device;
    let mut model = HbpModel::new(config.clone(), &device).unwrap();
    for r in 0..data.len() {
        let z: Vec<f32> = data
            .row(r)
            .iter()
            .zip(&standardization.mean)
            .zip(&standardization.inv_std)
            .map(|((x, m), s)| ((x - m) * s).clamp(-10.0, 10.0))
            .collect();
        let batch = model.batch(&z, &[data.labels[r]]);
        model.learn(batch);
    }
    let mut checkpoint = Checkpoint::initial(ModelSpec::Hbp(config), model.to_parameters().unwrap());
    checkpoint.model_version = 7;
    checkpoint.feature_moments = Some(moments);
    let path = dir.join("checkpoint.bin");
    save_checkpoint(&path, &checkpoint).unwrap();
    path
}

fn coordinator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla-coordinator")).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn report(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn export_writes_onnx_and_reports_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    let onnx = dir.path().join("model.onnx");
    let eval = bundled();
    let args = ["export", "--checkpoint", ckpt.to_str().unwrap(), "--onnx", onnx.to_str().unwrap()];
    let full = report(&coordinator(&[&args[..], &["--eval-data", eval.to_str().unwrap(), "--json"]].concat()));
    assert_eq!(full["model_version"], 7);
    let models = full["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    // Nothing applied: the export is the full model.
    assert_eq!(models[0]["onnx_bytes"], models[1]["onnx_bytes"]);
    assert_eq!(models[0]["error_pct"], models[1]["error_pct"]);
    assert!(models[0]["error_pct"].as_f64().unwrap() < 30.0);
    assert_eq!(std::fs::metadata(&onnx).unwrap().len(), models[1]["onnx_bytes"].as_u64().unwrap());

    // The data directory works as well as the file.
    let fused = ["--fuse", "--int8", "--prune", "0.5", "--json"];
    let small = report(&coordinator(&[&args[..2], &[dir.path().to_str().unwrap()], &args[3..], &fused].concat()));
    let models = small["models"].as_array().unwrap();
    assert_eq!(models[1]["name"], "prune=0.5+fuse+int8");
    // A model this small is mostly names, biases and scales: smaller, not 4× smaller.
    assert!(models[1]["onnx_bytes"].as_u64().unwrap() < models[0]["onnx_bytes"].as_u64().unwrap());
    let nonzero = models[1]["nonzero_parameters"].as_u64().unwrap();
    assert!(nonzero < models[0]["nonzero_parameters"].as_u64().unwrap() * 6 / 10);

    // Fusion alone: fewer nodes, the same predictions.
    let fused =
        report(&coordinator(&[&args[..], &["--fuse", "--eval-data", eval.to_str().unwrap(), "--json"]].concat()));
    let models = fused["models"].as_array().unwrap();
    assert!(models[1]["onnx_nodes"].as_u64().unwrap() < models[0]["onnx_nodes"].as_u64().unwrap());
    assert_eq!(models[0]["error_pct"], models[1]["error_pct"]);
    let notes = fused["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n.as_str().unwrap().starts_with("0 of 1250 held-back predictions changed")),
        "{notes:?}"
    );

    // Unit pruning: physically narrower, fewer parameters.
    let narrow = report(&coordinator(&[&args[..], &["--prune-units", "0.5", "--json"]].concat()));
    let models = narrow["models"].as_array().unwrap();
    assert!(models[1]["parameters"].as_u64().unwrap() < models[0]["parameters"].as_u64().unwrap() / 2);
    assert!(models[1]["onnx_bytes"].as_u64().unwrap() < models[0]["onnx_bytes"].as_u64().unwrap());

    // So does a --checkpoint-url store: its newest checkpoint.
    let store_dir = dir.path().join("store");
    let url = format!("file://{}", store_dir.display());
    let store = flotilla_coordinator::store::CheckpointStore::open(&url).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(store.commit(7, std::fs::read(&ckpt).unwrap())).unwrap();
    let stored = report(&coordinator(&["export", "--checkpoint", &url, "--onnx", onnx.to_str().unwrap(), "--json"]));
    assert_eq!(stored["model_version"], 7);
    let missing = coordinator(&["export", "--checkpoint", "file:///nonexistent-flotilla-store", "--onnx", "x.onnx"]);
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && message.contains("no checkpoint in file:///nonexistent-flotilla-store"),
        "{message}"
    );

    // The table form names both models.
    let table = coordinator(&[&args[..], &["--drop-depth-below", "0.1"]].concat());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success() && text.contains("full") && text.contains("drop-depth-below=0.1"), "{text}");
}

#[test]
fn distill_trains_a_student_a_fleet_can_start_from() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    let (onnx, student) = (dir.path().join("student.onnx"), dir.path().join("student.bin"));
    let data = bundled();
    let output = coordinator(&[
        "distill",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--student",
        "2x8",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "2",
        "--out",
        onnx.to_str().unwrap(),
        "--checkpoint-out",
        student.to_str().unwrap(),
        "--eval-data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let value = report(&output);
    let models = value["models"].as_array().unwrap();
    assert_eq!(models[1]["name"], "student 2x8");
    let (teacher, learnt) = (models[0]["error_pct"].as_f64().unwrap(), models[1]["error_pct"].as_f64().unwrap());
    assert!(learnt < teacher + 10.0, "teacher {teacher} %, student {learnt} %");
    assert!(models[1]["parameters"].as_u64().unwrap() < models[0]["parameters"].as_u64().unwrap());
    let checkpoint = Checkpoint::decode(&std::fs::read(&student).unwrap()).unwrap();
    let ModelSpec::Hbp(config) = &checkpoint.spec else { panic!("not an HBP spec") };
    assert_eq!((config.hidden_layers, config.width), (2, 8));
    assert!(checkpoint.feature_moments.is_some_and(|m| m.count > 0));
    assert!(std::fs::metadata(&onnx).unwrap().len() > 0);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    let onnx = dir.path().join("out.onnx");
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let narrow = dir.path().join("narrow.csv");
    std::fs::write(&narrow, "a,b,label\n1,2,0\n").unwrap();
    let (ckpt, onnx, narrow) = (ckpt.to_str().unwrap(), onnx.to_str().unwrap(), narrow.to_str().unwrap());
    let data = bundled();
    let data = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["export", "--checkpoint", "/nonexistent/x.bin", "--onnx", onnx], "no checkpoint"),
        (vec!["export", "--checkpoint", garbage.to_str().unwrap(), "--onnx", onnx], "unusable"),
        (vec!["export", "--checkpoint", ckpt, "--onnx", onnx, "--prune", "1.5"], "[0, 1)"),
        (vec!["export", "--checkpoint", ckpt, "--onnx", onnx, "--drop-depth-below", "0.99"], "nothing would be left"),
        (vec!["export", "--checkpoint", ckpt, "--onnx", onnx, "--eval-data", narrow], "2 features"),
        (vec!["export", "--checkpoint", ckpt, "--onnx", "/nonexistent/dir/x.onnx"], "writing"),
        (vec!["distill", "--checkpoint", ckpt, "--out", onnx, "--data", narrow, "--student", "2x4"], "line 2"),
        (vec!["distill", "--checkpoint", ckpt, "--out", onnx, "--data", narrow, "--student", "0x4"], "LxW"),
        (vec!["distill", "--checkpoint", ckpt, "--out", onnx, "--data", data, "--temperature", "0"], "temperature"),
    ];
    for (args, expected) in cases {
        let output = coordinator(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
