//! The report: `report.json` (everything) and `report.md` (the human summary and verdict).

use std::fmt::Write as _;

use serde::Serialize;

use crate::fleet::FleetOutcome;

/// One client's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClientLine {
    /// Name.
    pub name: String,
    /// Rows in its stream.
    pub stream_rows: usize,
    /// Its stream's label counts.
    pub label_counts: Vec<usize>,
    /// Samples the federated client learnt.
    pub federated_samples: u64,
    /// Its personalised prequential error in the fleet (its own model mixed with the global
    /// one), percent.
    pub federated_error_pct: Option<f64>,
    /// Prequential error of the plain global model's own predictions on the same samples,
    /// percent (`None` when its exit report lacks it).
    pub federated_global_error_pct: Option<f64>,
    /// Samples of its `alone` pass (the same prefix of the same stream).
    pub alone_samples: Option<u64>,
    /// Its prequential error learning alone, percent.
    pub alone_error_pct: Option<f64>,
    /// Error of its final `alone` model on the held-back rows, percent.
    pub alone_heldback_error_pct: Option<f64>,
    /// Updates it sent.
    pub updates_sent: u64,
    /// Bytes it sent in all.
    pub bytes_sent: u64,
    /// Bytes it received in all.
    pub bytes_received: u64,
    /// Bytes sent per update (≈ per round it took part in).
    pub bytes_sent_per_update: Option<f64>,
    /// Processes started for it (1 + restarts).
    pub processes: u32,
}

/// The three lines' numbers and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Rounds committed.
    pub rounds_committed: usize,
    /// Why the fleet stopped.
    pub stop_reason: String,
    /// Mean over clients of their personalised prequential error in the fleet, percent.
    pub federated_mean_client_error_pct: Option<f64>,
    /// Mean over clients of the plain global model's prequential error on their samples, percent.
    pub federated_mean_client_global_error_pct: Option<f64>,
    /// Mean over clients of their prequential error alone, percent.
    pub alone_mean_client_error_pct: Option<f64>,
    /// Prequential error of one learner on all the streams interleaved, percent.
    pub centralised_error_pct: Option<f64>,
    /// Mean over clients of their final `alone` model's error on the held-back rows, percent.
    pub alone_mean_heldback_error_pct: Option<f64>,
    /// The centralised final model's error on the held-back rows, percent.
    pub centralised_heldback_error_pct: Option<f64>,
    /// Global model's error on the held-back rows after the last round, percent.
    pub final_global_error_pct: Option<f64>,
    /// Its lowest over the rounds, percent.
    pub best_global_error_pct: Option<f64>,
    /// Final minus best global error on the held-back rows, points (how much the global model
    /// oscillated away from its best round).
    pub final_minus_best_global_pts: Option<f64>,
    /// Per-client prequential error, alone minus federated (personalised), points (positive:
    /// federation helps).
    pub federated_gain_over_alone_pts: Option<f64>,
    /// Per-client prequential error, federated (personalised) minus centralised, points (the
    /// price of not pooling the data).
    pub federated_gap_to_centralised_pts: Option<f64>,
    /// Held-back rows: alone (mean of the clients' final models) minus the final global model,
    /// points (positive: federation helps).
    pub federated_heldback_gain_over_alone_pts: Option<f64>,
    /// Held-back rows: final global model minus the centralised final model, points.
    pub federated_heldback_gap_to_centralised_pts: Option<f64>,
    /// Mean round duration, seconds.
    pub mean_round_duration_s: Option<f64>,
    /// Wall time of the federated run, seconds.
    pub fleet_wall_s: f64,
    /// Two or three sentences: both measures (per-client prequential, held-back rows), each
    /// federated vs alone vs centralised.
    pub verdict: String,
    /// Drift partition: mean over clients of the prequential error in the stretch right after
    /// each client's drift point (the first fifth of its stream after it), federated
    /// (personalised) and alone: how fast each recovers.
    pub drift_recovery: Option<DriftRecovery>,
}

/// Errors right after the drift point, percent.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct DriftRecovery {
    /// Federated (personalised) clients, mean over clients.
    pub federated_pct: f64,
    /// The same clients learning alone.
    pub alone_pct: f64,
    /// Clients whose window could be measured.
    pub clients: usize,
}

/// The error (percent) between samples `from` and `to` of a stream whose cumulative wrong
/// predictions are `errors_at(k)` after `k` samples (`k` a multiple of `every`): the window is
/// snapped inward to the marks; `None` when no whole mark interval fits.
pub fn window_error_pct(errors_at: impl Fn(u64) -> Option<f64>, every: u64, from: u64, to: u64) -> Option<f64> {
    let every = every.max(1);
    let start = from.div_ceil(every) * every;
    let end = to / every * every;
    if end <= start {
        return None;
    }
    let before = if start == 0 { 0.0 } else { errors_at(start)? };
    Some(100.0 * (errors_at(end)? - before) / (end - start) as f64)
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The options and what was derived from them.
    pub config: serde_json::Value,
    /// The numbers that matter.
    pub summary: Summary,
    /// Per client.
    pub clients: Vec<ClientLine>,
    /// The coordinator's per-round records.
    pub rounds: Vec<serde_json::Value>,
    /// Round durations, seconds, in round order.
    pub round_durations_s: Vec<f64>,
    /// Injected churn and faults.
    pub events: Vec<crate::fleet::Event>,
    /// The centralised pass's report.
    pub centralised: Option<serde_json::Value>,
    /// The fleet's raw outcome (all client exit reports).
    pub fleet: FleetOutcome,
}

/// The drift partition's recovery figure: per client, the prequential error over the first
/// fifth of its stream after its drift point, federated (from its exit report's marks) and
/// alone (from the baseline's cumulative marks); the means over the clients where both fit.
pub fn drift_recovery(
    streams: &[Vec<crate::dataset::Row>],
    consumed: &[usize],
    fleet: &[crate::fleet::ClientOutcome],
    alone: &[serde_json::Value],
    drift_at: f64,
) -> Option<DriftRecovery> {
    let (mut federated, mut alone_errors) = (Vec::new(), Vec::new());
    for (((stream, &n), client), alone) in streams.iter().zip(consumed).zip(fleet).zip(alone) {
        let len = stream.len() as u64;
        let from = (len as f64 * drift_at).round() as u64;
        let to = (from + (len / 5).max(flotilla_learner::local::MARK_EVERY)).min(n as u64);
        let Some(report) = client.reports.last() else { continue };
        let every = report["marks_every"].as_u64().filter(|e| *e == flotilla_learner::local::MARK_EVERY);
        let (Some(every), Some(marks)) = (every, report["errors_at_marks"].as_array()) else { continue };
        let federated_at = |k: u64| marks.get(usize::try_from(k / every).ok()?.checked_sub(1)?)?.as_f64();
        let alone_at =
            |k: u64| alone["error_pct_at"][k.to_string()].as_f64().map(|pct| (pct * k as f64 / 100.0).round());
        let window = (window_error_pct(federated_at, every, from, to), window_error_pct(alone_at, every, from, to));
        if let (Some(f), Some(a)) = window {
            federated.push(f);
            alone_errors.push(a);
        }
    }
    let mean_of = |v: &[f64]| mean(v.iter().copied().map(Some)).map(round2);
    Some(DriftRecovery {
        federated_pct: mean_of(&federated)?,
        alone_pct: mean_of(&alone_errors)?,
        clients: federated.len(),
    })
}

/// Mean of the present values.
pub fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().filter(|v| v.is_finite()).collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `12.34 %`, or `–` when missing.
fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2} %"))
}

/// Below this many points of difference from `alone`, federation does not pay.
pub const PAYS_PTS: f64 = 0.5;

/// Whether federation pays against `alone` (`where_` e.g. "" or " on the held-back rows").
fn against_alone(federated: f64, alone: f64, where_: &str) -> String {
    let gain = alone - federated;
    if gain >= PAYS_PTS {
        format!("federation pays{where_}, {gain:.2} points better than alone")
    } else if -gain >= PAYS_PTS {
        format!("federation does not pay{where_}, {:.2} points worse than alone", -gain)
    } else {
        format!("federation does not pay{where_}, within {PAYS_PTS} points of alone ({gain:+.2})")
    }
}

/// How far federated is from centralised.
fn against_centralised(federated: f64, centralised: f64) -> String {
    format!(
        "{:.2} points {} centralised",
        (federated - centralised).abs(),
        if federated >= centralised { "behind" } else { "ahead of" }
    )
}

/// `"{numbers}: {judgement}."`, or an "incomplete" note when no judgement can be made.
fn sentence(
    numbers: String,
    federated: Option<f64>,
    alone: Option<f64>,
    centralised: Option<f64>,
    where_: &str,
) -> String {
    let judgements: Vec<String> = [
        federated.zip(alone).map(|(f, a)| against_alone(f, a, where_)),
        federated.zip(centralised).map(|(f, c)| against_centralised(f, c)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if judgements.is_empty() {
        format!("{numbers}: incomplete, some lines have no numbers (see the report).")
    } else {
        format!("{numbers}: {}.", judgements.join(", "))
    }
}

/// The summary of a run.
pub fn summarise(
    fleet: &FleetOutcome,
    clients: &[ClientLine],
    centralised: Option<f64>,
    centralised_heldback: Option<f64>,
) -> Summary {
    let alone_heldback = mean(clients.iter().map(|c| c.alone_heldback_error_pct)).map(round2);
    let federated = mean(clients.iter().map(|c| c.federated_error_pct)).map(round2);
    let federated_global = mean(clients.iter().map(|c| c.federated_global_error_pct)).map(round2);
    let alone = mean(clients.iter().map(|c| c.alone_error_pct)).map(round2);
    let globals: Vec<f64> =
        fleet.rounds.iter().filter_map(|r| r["global_error_pct"].as_f64()).filter(|v| v.is_finite()).collect();
    let final_global = globals.last().copied();
    let best_global = globals.iter().copied().reduce(f64::min);
    let gain = federated.zip(alone).map(|(f, a)| round2(a - f));
    let gap = federated.zip(centralised).map(|(f, c)| round2(f - c));
    let heldback_gain = final_global.zip(alone_heldback).map(|(g, a)| round2(a - g));
    let heldback_gap = final_global.zip(centralised_heldback).map(|(g, c)| round2(g - c));
    let per_client = sentence(
        format!(
            "Per-client prequential error: federated (personalised) {}, alone {}, centralised {} (plain global \
             model {})",
            pct(federated),
            pct(alone),
            pct(centralised),
            pct(federated_global)
        ),
        federated,
        alone,
        centralised,
        "",
    );
    let heldback = sentence(
        format!(
            "Held-back rows (the whole population's distribution): final global model {} (best round {}), alone \
             (mean of the clients' final models) {}, centralised {}",
            pct(final_global),
            pct(best_global),
            pct(alone_heldback),
            pct(centralised_heldback)
        ),
        final_global,
        alone_heldback,
        centralised_heldback,
        " on the held-back rows",
    );
    Summary {
        rounds_committed: fleet.rounds.len(),
        stop_reason: fleet.stop_reason.clone(),
        federated_mean_client_error_pct: federated,
        federated_mean_client_global_error_pct: federated_global,
        alone_mean_client_error_pct: alone,
        centralised_error_pct: centralised,
        alone_mean_heldback_error_pct: alone_heldback,
        centralised_heldback_error_pct: centralised_heldback,
        final_global_error_pct: final_global,
        best_global_error_pct: best_global,
        final_minus_best_global_pts: final_global.zip(best_global).map(|(f, b)| round2(f - b)),
        federated_gain_over_alone_pts: gain,
        federated_gap_to_centralised_pts: gap,
        federated_heldback_gain_over_alone_pts: heldback_gain,
        federated_heldback_gap_to_centralised_pts: heldback_gap,
        mean_round_duration_s: mean(fleet.rounds.iter().map(|r| r["duration_s"].as_f64()))
            .map(|v| (v * 1000.0).round() / 1000.0),
        fleet_wall_s: round2(fleet.wall_s),
        verdict: format!("{per_client} {heldback}"),
        drift_recovery: None,
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// `report.md`.
pub fn markdown(report: &Report) -> String {
    let s = &report.summary;
    let c = &report.config;
    let mut md = String::new();
    let _ = writeln!(md, "# Fleet simulation: does federation pay?\n");
    let _ = writeln!(md, "**Verdict.** {}\n", s.verdict);
    let _ = writeln!(
        md,
        "Data `{}` ({} rows, {} features, {} classes), {} clients, partition `{}`{}, {} held-back rows; \
         model {}×{} HBP; {} rounds committed ({}); clients learn at {} samples/s.\n",
        c["data"].as_str().unwrap_or("?"),
        c["rows"],
        c["inputs"],
        c["classes"],
        c["clients"],
        c["partition"].as_str().unwrap_or("?"),
        if c["partition"] == "label-skew" { format!(" (α = {})", c["dirichlet_alpha"]) } else { String::new() },
        c["eval_rows"],
        c["hidden_layers"],
        c["width"],
        s.rounds_committed,
        s.stop_reason,
        c["rate"],
    );
    let _ = writeln!(
        md,
        "| line | mean per-client prequential error | error on the held-back rows | notes |\n|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| federated | {} personalised (global model {}) | {} final global model (best round {}) | each client \
         predicts with a mix of its own model and the global one, adopting the global model each round |",
        pct(s.federated_mean_client_error_pct),
        pct(s.federated_mean_client_global_error_pct),
        pct(s.final_global_error_pct),
        pct(s.best_global_error_pct),
    );
    let _ = writeln!(
        md,
        "| alone | {} | {} mean of the clients' final models | each client's stream, no federation \
         (`flotilla-client learn`) |",
        pct(s.alone_mean_client_error_pct),
        pct(s.alone_mean_heldback_error_pct),
    );
    let _ = writeln!(
        md,
        "| centralised | {} | {} final model | one learner on all streams interleaved round-robin |",
        pct(s.centralised_error_pct),
        pct(s.centralised_heldback_error_pct),
    );
    let pts = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:+.2}"));
    let _ = writeln!(
        md,
        "\nFederated gain over alone: **{}** points per client (personalised), **{}** points on the held-back \
         rows; gap to centralised: **{}** and **{}** points. Final minus best round's global error on the \
         held-back rows: {} points. Mean round duration {} s; fleet wall time {:.1} s.\n",
        pts(s.federated_gain_over_alone_pts),
        pts(s.federated_heldback_gain_over_alone_pts),
        pts(s.federated_gap_to_centralised_pts),
        pts(s.federated_heldback_gap_to_centralised_pts),
        pts(s.final_minus_best_global_pts),
        s.mean_round_duration_s.map_or("–".into(), |v| format!("{v:.3}")),
        s.fleet_wall_s,
    );
    if let Some(d) = s.drift_recovery {
        let _ = writeln!(
            md,
            "Right after the drift (the first fifth of each stream after its drift point, {} clients): \
             federated {:.2} %, alone {:.2} %: federated recovers {}.\n",
            d.clients,
            d.federated_pct,
            d.alone_pct,
            if d.federated_pct <= d.alone_pct { "at least as fast as alone" } else { "more slowly than alone" },
        );
    }
    let _ = writeln!(md, "![global error](global_error.png)\n![comparison](comparison.png)\n");
    let _ = writeln!(
        md,
        "## Rounds\n\n| round | participants | samples | mean local error | global error | duration | bytes in | bytes out |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &report.rounds {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} s | {} | {} |",
            r["round"],
            r["participants"],
            r["samples"],
            pct(r["mean_local_error"].as_f64().map(|e| e * 100.0)),
            pct(r["global_error_pct"].as_f64()),
            r["duration_s"].as_f64().unwrap_or(0.0),
            kib(r["bytes_in"].as_f64().unwrap_or(0.0)),
            kib(r["bytes_out"].as_f64().unwrap_or(0.0)),
        );
    }
    let _ = writeln!(md, "\n![round duration](round_duration.png)\n");
    let _ = writeln!(
        md,
        "## Clients\n\n| client | labels in stream | samples | federated error (personalised) | federated error (global model) | alone error | updates | sent | sent per update | received | processes |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for line in &report.clients {
        let labels: Vec<String> = line.label_counts.iter().map(usize::to_string).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            line.name,
            labels.join("/"),
            line.federated_samples,
            pct(line.federated_error_pct),
            pct(line.federated_global_error_pct),
            pct(line.alone_error_pct),
            line.updates_sent,
            kib(line.bytes_sent as f64),
            line.bytes_sent_per_update.map_or("–".into(), kib),
            kib(line.bytes_received as f64),
            line.processes,
        );
    }
    let _ = writeln!(md, "\n![per-client error](client_error.png)\n");
    if !report.events.is_empty() {
        let _ = writeln!(md, "## Churn and faults injected\n");
        for e in &report.events {
            let _ = writeln!(md, "- t = {:.1} s, after round {}: {}", e.t_s, e.after_round, e.what);
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Prequential errors are test-then-train over each client's own stream; a federated client's \
         personalised error scores its predictions mixing its own model with the global one, its global-model \
         error the plain global model's predictions on the same samples; `alone` runs on the same prefix the \
         federated client consumed. The global error is the coordinator's evaluation on the \
         held-back rows (standardised with their own statistics). Files: `report.json` (all numbers), \
         `shards/`, `fleet/logs/`, `baselines/`."
    );
    md
}

#[cfg(test)]
mod window_tests {
    use super::window_error_pct;

    #[test]
    fn window_error_is_a_difference_of_marks_snapped_inward() {
        // One error per 25 samples up to 100, then 10 per 25.
        let errors_at = |k: u64| Some(if k <= 100 { (k / 25) as f64 } else { 4.0 + 10.0 * ((k - 100) / 25) as f64 });
        assert_eq!(window_error_pct(errors_at, 25, 0, 100), Some(4.0));
        // 101..160 snaps to 125..150: 10 errors in 25 samples.
        assert_eq!(window_error_pct(errors_at, 25, 101, 160), Some(40.0));
        assert_eq!(window_error_pct(errors_at, 25, 101, 120), None, "no whole interval");
        assert_eq!(window_error_pct(|_| None, 25, 0, 100), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(globals: &[f64]) -> FleetOutcome {
        FleetOutcome {
            rounds: globals
                .iter()
                .enumerate()
                .map(|(i, g)| serde_json::json!({"round": i + 1, "global_error_pct": g, "duration_s": 0.5}))
                .collect(),
            clients: Vec::new(),
            events: Vec::new(),
            wall_s: 12.345,
            stop_reason: "2 rounds committed".into(),
            port: 0,
        }
    }

    fn client(federated: f64, global: Option<f64>, alone: f64, alone_heldback: f64) -> ClientLine {
        ClientLine {
            name: "client00".into(),
            stream_rows: 100,
            label_counts: vec![50, 50],
            federated_samples: 100,
            federated_error_pct: Some(federated),
            federated_global_error_pct: global,
            alone_samples: Some(100),
            alone_error_pct: Some(alone),
            alone_heldback_error_pct: Some(alone_heldback),
            updates_sent: 2,
            bytes_sent: 2048,
            bytes_received: 4096,
            bytes_sent_per_update: Some(1024.0),
            processes: 1,
        }
    }

    #[test]
    fn the_verdict_states_both_measures_for_all_three_lines() {
        let clients = [client(10.0, Some(14.0), 12.0, 30.0), client(12.0, Some(16.0), 14.0, 34.0)];
        let s = summarise(&fleet(&[20.0, 8.0, 9.5]), &clients, Some(9.0), Some(7.25));
        assert_eq!(s.federated_mean_client_error_pct, Some(11.0));
        assert_eq!(s.federated_mean_client_global_error_pct, Some(15.0));
        assert_eq!(s.alone_mean_client_error_pct, Some(13.0));
        assert_eq!(s.alone_mean_heldback_error_pct, Some(32.0));
        assert_eq!(s.federated_gain_over_alone_pts, Some(2.0));
        assert_eq!(s.federated_gap_to_centralised_pts, Some(2.0));
        assert_eq!((s.final_global_error_pct, s.best_global_error_pct), (Some(9.5), Some(8.0)));
        assert_eq!(s.final_minus_best_global_pts, Some(1.5));
        assert_eq!(s.federated_heldback_gain_over_alone_pts, Some(22.5));
        assert_eq!(s.federated_heldback_gap_to_centralised_pts, Some(2.25));
        let v = &s.verdict;
        for part in [
            "Per-client prequential error: federated (personalised) 11.00 %, alone 13.00 %, centralised 9.00 % \
             (plain global model 15.00 %): federation pays, 2.00 points better than alone, 2.00 points behind \
             centralised.",
            "Held-back rows",
            "final global model 9.50 % (best round 8.00 %), alone (mean of the clients' final models) 32.00 %, \
             centralised 7.25 %: federation pays on the held-back rows, 22.50 points better than alone, 2.25 \
             points behind centralised.",
        ] {
            assert!(v.contains(part), "{part:?} not in {v:?}");
        }
        assert!(v.matches(". ").count() <= 2, "2–3 sentences: {v}");
    }

    #[test]
    fn the_verdict_says_when_federation_does_not_pay_on_either_measure() {
        // Personalised barely ahead of alone (under 0.5 points); the global model worse than alone on held-back rows.
        let clients = [client(12.8, Some(20.0), 13.0, 30.0)];
        let s = summarise(&fleet(&[35.0]), &clients, Some(9.0), Some(7.0));
        assert!(s.verdict.contains("federation does not pay, within 0.5 points of alone (+0.20)"), "{}", s.verdict);
        assert!(
            s.verdict.contains("federation does not pay on the held-back rows, 5.00 points worse than alone"),
            "{}",
            s.verdict
        );
        assert_eq!(s.federated_heldback_gain_over_alone_pts, Some(-5.0));
        assert_eq!(s.final_minus_best_global_pts, Some(0.0));
    }

    #[test]
    fn older_client_reports_and_missing_lines_still_summarise() {
        // No global-model error in the client reports, no centralised line, no rounds.
        let clients = [client(10.0, None, 12.0, 30.0)];
        let s = summarise(&fleet(&[]), &clients, None, None);
        assert_eq!(s.federated_mean_client_global_error_pct, None);
        assert_eq!(s.federated_gap_to_centralised_pts, None);
        assert_eq!(s.final_minus_best_global_pts, None);
        assert_eq!(s.federated_heldback_gain_over_alone_pts, None);
        assert!(s.verdict.contains("plain global model –"), "{}", s.verdict);
        assert!(s.verdict.contains("federation pays, 2.00 points better than alone."), "{}", s.verdict);
        assert!(s.verdict.contains("Held-back rows") && s.verdict.contains("incomplete"), "{}", s.verdict);
    }

    #[test]
    fn the_markdown_has_both_measures_and_the_global_model_column() {
        let clients = vec![client(10.0, Some(14.0), 12.0, 30.0)];
        let summary = summarise(&fleet(&[20.0, 8.0]), &clients, Some(9.0), Some(7.25));
        let report = Report {
            config: serde_json::json!({}),
            summary,
            clients,
            rounds: Vec::new(),
            round_durations_s: Vec::new(),
            events: Vec::new(),
            centralised: None,
            fleet: fleet(&[]),
        };
        let md = markdown(&report);
        assert!(md.contains("| line | mean per-client prequential error | error on the held-back rows |"), "{md}");
        assert!(md.contains("| federated | 10.00 % personalised (global model 14.00 %) | 8.00 % final global"), "{md}");
        assert!(md.contains("| alone | 12.00 % | 30.00 % mean of the clients' final models |"), "{md}");
        assert!(md.contains("| centralised | 9.00 % | 7.25 % final model |"), "{md}");
        assert!(md.contains("| client00 | 50/50 | 100 | 10.00 % | 14.00 % | 12.00 % |"), "{md}");
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "federated_mean_client_global_error_pct",
            "federated_heldback_gain_over_alone_pts",
            "federated_heldback_gap_to_centralised_pts",
            "final_minus_best_global_pts",
        ] {
            assert!(json["summary"][key].is_number(), "{key}: {}", json["summary"]);
        }
        assert_eq!(json["clients"][0]["federated_global_error_pct"], 14.0);
    }
}
