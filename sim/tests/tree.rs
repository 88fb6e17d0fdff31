//! End to end: a tree of the real coordinator binaries (a root and edge aggregators) with
//! virtual clients on loopback gives the flat fleet's FedAvg model.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::process::Command;

/// `flotilla-bench-fleet-round --topology 2x3 --rounds 2` of `params` parameters with `extra`
/// flags: its JSON line, once it succeeded.
fn bench_tree(params: &str, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-bench-fleet-round"))
        .args(["--topology", "2x3", "--params", params, "--rounds", "2", "--timeout-s", "120"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the benchmark failed:\n{stderr}");
    serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).unwrap()
}

#[test]
fn a_tree_of_coordinators_gives_the_flat_fleets_fedavg_model() {
    let figures = bench_tree("20000", &[]);
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
    let figures = bench_tree("5000", &["--aggregator-arg=--secure-aggregation"]);
    assert_eq!(figures["aggregator_args"][0], "--secure-aggregation");
    assert_eq!(figures["matches_reference"], true, "{figures}");
}

/// Differential privacy across the tree, with the real binaries: the root's `--dp-*` options
/// reach the aggregators in its rules, they sample and clip their cohorts, the root divides
/// by the cohorts' expected sizes. Without noise and with a clip above every delta that is
/// FedAvg of equal-sample clients (the reference); a clip 40 times below the deltas' norms
/// (about 0.04 here) leaves the model almost where it started, its summary off the reference
/// by about the rounds' steps (5.6e-4 relative, against 3e-8 unclipped), or the aggregators
/// did not clip.
#[test]
fn dp_across_the_tree_samples_and_clips_at_the_aggregators() {
    let run = |clip: &str| {
        let clip = format!("--coordinator-arg=--dp-clip={clip}");
        let figures = bench_tree("5000", &["--coordinator-arg=--dp-noise-multiplier=0", &clip]);
        figures["max_relative_difference"].as_f64().unwrap()
    };
    let unclipped = run("1000");
    assert!(unclipped <= 1e-4, "DP without noise or clipping is FedAvg: {unclipped}");
    let clipped = run("0.001");
    assert!(clipped > 3e-4, "a clip far below the deltas' norms must show: {clipped}");
}
