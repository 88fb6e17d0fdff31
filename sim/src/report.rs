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
    /// Its prequential error in the fleet, percent.
    pub federated_error_pct: Option<f64>,
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
    /// Mean over clients of their prequential error in the fleet, percent.
    pub federated_mean_client_error_pct: Option<f64>,
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
    /// Alone minus federated, points (positive: federation helps).
    pub federated_gain_over_alone_pts: Option<f64>,
    /// Federated minus centralised, points (the price of not pooling the data).
    pub federated_gap_to_centralised_pts: Option<f64>,
    /// Mean round duration, seconds.
    pub mean_round_duration_s: Option<f64>,
    /// Wall time of the federated run, seconds.
    pub fleet_wall_s: f64,
    /// One sentence.
    pub verdict: String,
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

/// Mean of the present values.
pub fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().filter(|v| v.is_finite()).collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
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
    let alone = mean(clients.iter().map(|c| c.alone_error_pct)).map(round2);
    let globals: Vec<f64> = fleet.rounds.iter().filter_map(|r| r["global_error_pct"].as_f64()).collect();
    let gain = federated.zip(alone).map(|(f, a)| round2(a - f));
    let gap = federated.zip(centralised).map(|(f, c)| round2(f - c));
    let verdict = match (federated, alone, centralised) {
        (Some(f), Some(a), Some(c)) => {
            let pays = if a - f >= 0.5 {
                format!("federation pays: {:.2} points better than learning alone", a - f)
            } else if f - a >= 0.5 {
                format!("federation does not pay: {:.2} points worse than learning alone", f - a)
            } else {
                "federation neither helps nor hurts against learning alone (within 0.5 points)".to_string()
            };
            format!(
                "Mean per-client prequential error: federated {f:.2} %, alone {a:.2} %, centralised {c:.2} %: \
                 {pays}, and {:.2} points {} centralised.",
                (f - c).abs(),
                if f >= c { "behind" } else { "ahead of" }
            )
        }
        _ => "Incomplete: some lines have no numbers (see the report).".to_string(),
    };
    let verdict = match (globals.last().copied(), alone_heldback, centralised_heldback) {
        (Some(g), Some(a), Some(c)) => format!(
            "{verdict} On the held-back rows (the whole population's distribution): federated global model \
             {g:.2} %, alone (mean of the clients' models) {a:.2} %, centralised {c:.2} %: federated is {:.2} \
             points {} alone and {:.2} points {} centralised.",
            (a - g).abs(),
            if g <= a { "better than" } else { "worse than" },
            (g - c).abs(),
            if g >= c { "behind" } else { "ahead of" }
        ),
        _ => verdict,
    };
    Summary {
        rounds_committed: fleet.rounds.len(),
        stop_reason: fleet.stop_reason.clone(),
        federated_mean_client_error_pct: federated,
        alone_mean_client_error_pct: alone,
        centralised_error_pct: centralised,
        alone_mean_heldback_error_pct: alone_heldback,
        centralised_heldback_error_pct: centralised_heldback,
        final_global_error_pct: globals.last().copied(),
        best_global_error_pct: globals.iter().copied().reduce(f64::min),
        federated_gain_over_alone_pts: gain,
        federated_gap_to_centralised_pts: gap,
        mean_round_duration_s: mean(fleet.rounds.iter().map(|r| r["duration_s"].as_f64()))
            .map(|v| (v * 1000.0).round() / 1000.0),
        fleet_wall_s: round2(fleet.wall_s),
        verdict,
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2} %"))
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
    let _ = writeln!(md, "| line | mean per-client prequential error | notes |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| federated | {} | each client's own stream, adopting the global model each round |",
        pct(s.federated_mean_client_error_pct)
    );
    let _ = writeln!(
        md,
        "| alone | {} | each client's stream, no federation (`flotilla-client learn`) |",
        pct(s.alone_mean_client_error_pct)
    );
    let _ = writeln!(
        md,
        "| centralised | {} | one learner on all streams interleaved round-robin |",
        pct(s.centralised_error_pct)
    );
    let _ = writeln!(
        md,
        "\nFederated gain over alone: **{}** points; gap to centralised: **{}** points. Global model on the \
         held-back rows: {} after the last round (best {}). Mean round duration {} s; fleet wall time {:.1} s.\n",
        s.federated_gain_over_alone_pts.map_or("–".into(), |v| format!("{v:+.2}")),
        s.federated_gap_to_centralised_pts.map_or("–".into(), |v| format!("{v:+.2}")),
        pct(s.final_global_error_pct),
        pct(s.best_global_error_pct),
        s.mean_round_duration_s.map_or("–".into(), |v| format!("{v:.3}")),
        s.fleet_wall_s,
    );
    let _ = writeln!(
        md,
        "| error on the held-back rows | federated (global model) | alone (mean of the clients' models) | centralised |\n|---|---|---|---|\n| | {} | {} | {} |\n",
        pct(s.final_global_error_pct),
        pct(s.alone_mean_heldback_error_pct),
        pct(s.centralised_heldback_error_pct)
    );
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
        "## Clients\n\n| client | labels in stream | samples | federated error | alone error | updates | sent | sent per update | received | processes |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for line in &report.clients {
        let labels: Vec<String> = line.label_counts.iter().map(usize::to_string).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            line.name,
            labels.join("/"),
            line.federated_samples,
            pct(line.federated_error_pct),
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
        "Prequential errors are test-then-train over each client's own stream; `alone` runs on the same \
         prefix the federated client consumed. The global error is the coordinator's evaluation on the \
         held-back rows (standardised with their own statistics). Files: `report.json` (all numbers), \
         `shards/`, `fleet/logs/`, `baselines/`."
    );
    md
}
