//! End to end: a tree of the real coordinator binaries (a root and edge aggregators) with
//! virtual clients on loopback gives the flat fleet's FedAvg model.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::process::Command;

#[test]
fn a_tree_of_coordinators_gives_the_flat_fleets_fedavg_model() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-bench-fleet-round"))
        .args(["--topology", "2x3", "--params", "20000", "--rounds", "2", "--timeout-s", "120"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the benchmark failed:\n{stderr}");
    let line = String::from_utf8_lossy(&output.stdout);
    let figures: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(figures["topology"], "2x3");
    assert_eq!(figures["clients"], 6);
    // The workload's deltas depend on each client's index: the tree's model is the flat one.
    let difference = figures["max_relative_difference"].as_f64().unwrap();
    assert!(difference <= 1e-4, "{figures}");
    assert_eq!(figures["aggregators_peak_rss_mib"].as_array().unwrap().len(), 2, "{figures}");
}

/// Secure aggregation per edge cohort: each aggregator learns only its cohort's sum (SecAgg+
/// between it and its clients), the root only the cohorts' aggregates; the model is still the
/// flat FedAvg one, up to SecAgg's fixed-point rounding.
#[test]
fn secure_aggregation_per_edge_cohort_gives_the_same_model() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-bench-fleet-round"))
        .args(["--topology", "2x3", "--params", "5000", "--rounds", "2", "--timeout-s", "120"])
        .arg("--aggregator-arg=--secure-aggregation")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the benchmark failed:\n{stderr}");
    let figures: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap();
    assert_eq!(figures["aggregator_args"][0], "--secure-aggregation");
    assert_eq!(figures["matches_reference"], true, "{figures}");
}
