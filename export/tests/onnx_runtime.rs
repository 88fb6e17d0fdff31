//! Exported models against the Rust forward pass: fusion, pruning and int8 as networks, and
//! their ONNX graphs run by onnxruntime (a Python with onnxruntime and numpy named by
//! `FLOTILLA_PYTHON`; `scripts/test` installs one and sets `FLOTILLA_REQUIRE_ONNXRUNTIME=1`,
//! so in CI a missing runtime fails the suite instead of skipping).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_export::{fuse, onnx, prune, quantize};
use flotilla_learner::data::Dataset;
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use flotilla_learner::network::{InputStage, Network, Storage};
use flotilla_protocol::model::FeatureMoments;

/// The bundled dataset (9 features, 2 classes), every row.
fn bundled() -> Dataset {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/phishing.csv");
    let file = std::fs::File::open(&path).unwrap();
    Dataset::from_csv(std::io::BufReader::new(file), Some(2)).unwrap()
}

/// An HBP network trained for one pass over the bundled rows, with and without the input
/// head, served through the rows' standardisation.
fn trained(input_head: bool) -> (Network, Dataset) {
    let data = bundled();
    let config = HbpConfig { hidden_layers: 6, width: 24, input_head, seed: 3, ..HbpConfig::new(data.features, 2) };
    let device = burn::tensor::Device::flex();
    let mut model = HbpModel::new(config.clone(), &device).unwrap();
    let mut moments = FeatureMoments::new(data.features);
    (0..data.len()).for_each(|r| moments.add_row(data.row(r)));
    let (mean, std) = moments.mean_std().unwrap();
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let inv_std: Vec<f32> = std.iter().map(|&s| if s > 0.0 { (1.0 / s) as f32 } else { 0.0 }).collect();
    let input = InputStage::Standardize { mean, inv_std, clip: 10.0 };
    let standardize =
        Network { inputs: data.features, classes: 2, input: input.clone(), layers: vec![], heads: vec![] };
    let z = standardize.input_stage(&data.values);
    for r in 0..data.len() {
        let batch = model.batch(&z[r * data.features..(r + 1) * data.features], &[data.labels[r]]);
        model.learn(batch);
    }
    let params = model.to_parameters().unwrap();
    (Network::from_hbp(&config, &params, input).unwrap(), data)
}

fn close(a: &[f32], b: &[f32], tolerance: f32) -> Option<(usize, f32, f32)> {
    a.iter().zip(b).enumerate().find(|(_, (x, y))| (*x - *y).abs() > tolerance).map(|(i, (x, y))| (i, *x, *y))
}

#[test]
fn fusion_changes_no_prediction_and_drops_the_standardiser() {
    for input_head in [true, false] {
        let (network, data) = trained(input_head);
        // Rows far outside the data, so that the clip binds on some.
        let mut rows = data.values.clone();
        rows.extend(data.values.iter().take(data.features * 50).enumerate().map(|(i, v)| v * 40.0 - (i % 3) as f32));
        let fused = fuse::fuse(&network);
        assert!(matches!(fused.input, InputStage::Clamp { .. }));
        assert!(fuse::clip_binding_rows(&network, &rows) > 0);
        let (a, b) = (network.forward(&rows), fused.forward(&rows));
        assert_eq!(close(&a, &b, 1e-5), None, "input head {input_head}");
    }
}

#[test]
fn pruning_and_quantisation_do_what_they_say() {
    let (network, data) = trained(true);
    let mut pruned = network.clone();
    prune::magnitude(&mut pruned, 0.8).unwrap();
    for (before, after) in network.dense_layers().zip(pruned.dense_layers()) {
        let zero = after.weight.len() - after.nonzero();
        assert_eq!(zero, (after.weight.len() as f64 * 0.8).round() as usize);
        // What was kept is unchanged, and every kept weight is at least as large as every
        // removed one.
        let kept_min = after.weight.iter().filter(|w| **w != 0.0).map(|w| w.abs()).fold(f32::MAX, f32::min);
        let removed_max = before
            .weight
            .iter()
            .zip(&after.weight)
            .filter(|(_, a)| **a == 0.0)
            .map(|(b, _)| b.abs())
            .fold(0.0, f32::max);
        assert!(kept_min >= removed_max);
        assert_eq!(after.storage, Storage::Sparse);
    }
    assert!(prune::magnitude(&mut pruned.clone(), 1.0).is_err());

    let best = network.heads.iter().map(|h| h.alpha).fold(0.0, f32::max);
    let shallow = prune::drop_depth_below(&network, best).unwrap();
    assert_eq!(shallow.heads.len(), 1);
    assert!((shallow.heads[0].alpha - 1.0).abs() < 1e-6);
    assert_eq!(shallow.layers.len(), shallow.heads[0].source);
    assert!(prune::drop_depth_below(&network, best + 0.01).is_err());
    // Depth 0 keeps everything.
    assert_eq!(prune::drop_depth_below(&network, 0.0).unwrap().heads.len(), network.heads.len());

    let (narrow, removed) = prune::units(&network, 0.5).unwrap();
    assert_eq!(removed, 6 * 12);
    assert!(narrow.layers.iter().all(|l| l.outputs == 12));
    assert!(narrow.layers.iter().skip(1).all(|l| l.inputs == 12));
    assert!(narrow.heads.iter().filter(|h| h.source > 0).all(|h| h.dense.inputs == 12));
    let p = narrow.forward(&data.values);
    assert!(p.chunks(2).all(|row| (row[0] + row[1] - 1.0).abs() < 1e-5));
    assert!(narrow.parameters() < network.parameters() / 2);
    assert!(prune::units(&network, 1.0).is_err());

    let mut int8 = network.clone();
    quantize::int8(&mut int8);
    let agree =
        network.classify(&data.values).iter().zip(int8.classify(&data.values)).filter(|(a, b)| **a == *b).count();
    assert!(agree as f64 >= 0.98 * data.len() as f64, "int8 agrees on {agree} of {}", data.len());
}

/// A Python with onnxruntime, or `None` (the test is skipped) where not required.
fn python() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FLOTILLA_PYTHON") {
        return Some(PathBuf::from(path));
    }
    assert!(
        std::env::var("FLOTILLA_REQUIRE_ONNXRUNTIME").as_deref() != Ok("1"),
        "FLOTILLA_REQUIRE_ONNXRUNTIME=1 but FLOTILLA_PYTHON names no Python with onnxruntime"
    );
    eprintln!("skipped: set FLOTILLA_PYTHON to a Python with onnxruntime and numpy (scripts/test does)");
    None
}

/// onnxruntime's probabilities and classes for `rows` through `model`.
fn run_onnx(python: &Path, model: &Path, rows: &[f32], d: usize, exact: bool) -> (Vec<f32>, Vec<usize>) {
    let dir = model.parent().unwrap();
    let csv = dir.join("rows.csv");
    let text: String =
        rows.chunks(d).map(|row| row.iter().map(|v| format!("{v:e}")).collect::<Vec<_>>().join(",") + "\n").collect();
    std::fs::write(&csv, text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/onnx/run.py");
    let output = Command::new(python)
        .arg(script)
        .arg("predict")
        .arg(model)
        .arg(&csv)
        .env("FLOTILLA_ORT_EXACT", if exact { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(output.status.success(), "onnxruntime failed: {}", String::from_utf8_lossy(&output.stderr));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let probabilities = value["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect::<Vec<_>>())
        .collect();
    let classes = value["class"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
    (probabilities, classes)
}

#[test]
fn onnxruntime_predicts_what_rust_predicts() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    for input_head in [true, false] {
        let (network, data) = trained(input_head);
        let d = data.features;
        let mut pruned = network.clone();
        prune::magnitude(&mut pruned, 0.8).unwrap();
        let mut int8 = fuse::fuse(&network);
        quantize::int8(&mut int8);
        let best = network.heads.iter().map(|h| h.alpha).fold(0.0, f32::max);
        let variants = [
            ("full", network.clone(), onnx::Mix::PerHead),
            ("fused", fuse::fuse(&network), onnx::Mix::Fused),
            ("pruned", pruned, onnx::Mix::PerHead),
            ("int8", int8, onnx::Mix::Fused),
            ("shallow", prune::drop_depth_below(&network, best / 2.0).unwrap(), onnx::Mix::PerHead),
            ("narrow", prune::units(&network, 0.5).unwrap().0, onnx::Mix::Fused),
        ];
        for (name, variant, mix) in variants {
            let path = dir.path().join(format!("{name}.onnx"));
            std::fs::write(&path, onnx::encode(&variant, mix, &onnx::Metadata::default())).unwrap();
            // onnxruntime's optimiser turns DequantizeLinear + Gemm into integer kernels that
            // also quantise activations: the int8 graph is checked as written.
            let (probabilities, classes) = run_onnx(&python, &path, &data.values, d, name == "int8");
            let expected = variant.forward(&data.values);
            assert_eq!(probabilities.len(), expected.len(), "{name}");
            assert_eq!(close(&probabilities, &expected, 1e-5), None, "{name}, input head {input_head}");
            for (row, (class, p)) in classes.iter().zip(expected.chunks(2)).enumerate() {
                // A tie within float noise may break either way; anything else must agree.
                if (p[0] - p[1]).abs() > 1e-6 {
                    assert_eq!(*class, flotilla_learner::network::argmax(p), "{name}: row {row}");
                }
            }
        }
    }
}
