//! `flotilla-bench-serving`: a load generator for two servers of the same prediction API (the
//! coordinator's `--http` and the Flask + NumPy server of `scripts/serving/flask_hbp.py`),
//! driven identically over keep-alive HTTP/1.1 connections; prints one JSON line.
//!
//! For each server: single-row `POST /v1/predict` latency (p50, p99) and requests/s with one
//! connection, requests/s with `--concurrency` connections, and rows/s of
//! `POST /v1/predict/batch` with `--batch-rows` rows per request. Every answer is checked
//! (status 200, a class per row), and the two servers' classes are compared on the rows.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

/// Measures the prediction API of two servers side by side.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The coordinator's HTTP API, HOST:PORT.
    #[arg(long)]
    flotilla: SocketAddr,
    /// The comparison server (same routes), HOST:PORT.
    #[arg(long)]
    baseline: Option<SocketAddr>,
    /// CSV of feature rows to send (a header line; a label in the last column is dropped
    /// with --drop-last).
    #[arg(long)]
    rows: PathBuf,
    /// Drop each row's last column (the label of a labelled CSV).
    #[arg(long)]
    drop_last: bool,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Connections of the concurrent measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rows per batch request.
    #[arg(long, default_value_t = 1000)]
    batch_rows: usize,
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None }
    }

    /// POSTs `body` (JSON) to `path`; the status and the response body.
    fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr).with_context(|| format!("connecting to {}", self.addr))?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                self.stream = Some(BufReader::new(stream));
            }
            match self.exchange(path, body) {
                Ok(answer) => return Ok(answer),
                // The server closed an idle keep-alive connection: reconnect once.
                Err(_) if attempt == 0 => self.stream = None,
                Err(error) => return Err(error),
            }
        }
        bail!("unreachable")
    }

    fn exchange(&mut self, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let reader = self.stream.as_mut().context("no connection")?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut status_line = String::new();
        if reader.read_line(&mut status_line)? == 0 {
            bail!("connection closed");
        }
        let status: u16 = status_line.split_whitespace().nth(1).context("no status")?.parse()?;
        let (mut length, mut close) = (None, status_line.starts_with("HTTP/1.0"));
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = Some(value.trim().parse::<usize>()?);
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut content = vec![0; length.context("no Content-Length")?];
        reader.read_exact(&mut content)?;
        if close {
            self.stream = None;
        }
        Ok((status, content))
    }
}

/// The classes in an answer (one or many).
fn classes(body: &[u8]) -> anyhow::Result<Vec<u64>> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    if let Some(class) = value["class"].as_u64() {
        return Ok(vec![class]);
    }
    value["classes"].as_array().context("no classes")?.iter().map(|c| c.as_u64().context("class")).collect()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Single-row requests on one connection for `seconds`: (p50 s, p99 s, requests/s).
fn sequential(addr: SocketAddr, bodies: &[Vec<u8>], seconds: f64) -> anyhow::Result<(f64, f64, f64)> {
    let mut connection = Connection::new(addr);
    connection.post("/v1/predict", &bodies[0])?; // warm-up
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed().as_secs_f64() < seconds {
        let sent = Instant::now();
        let (status, body) = connection.post("/v1/predict", &bodies[i % bodies.len()])?;
        latencies.push(sent.elapsed().as_secs_f64());
        if status != 200 {
            bail!("status {status}: {}", String::from_utf8_lossy(&body));
        }
        i += 1;
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99), rate))
}

/// `connections` connections sending `path` bodies for `seconds`: requests/s.
fn concurrent(
    addr: SocketAddr,
    path: &str,
    bodies: &[Vec<u8>],
    connections: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let counts: Vec<anyhow::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut connection = Connection::new(addr);
                    let mut done = 0u64;
                    let mut i = c;
                    while started.elapsed().as_secs_f64() < seconds {
                        let (status, body) = connection.post(path, &bodies[i % bodies.len()])?;
                        if status != 200 {
                            bail!("status {status}: {}", String::from_utf8_lossy(&body));
                        }
                        done += 1;
                        i += connections;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("load thread panicked")))).collect()
    });
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn measure(addr: SocketAddr, args: &Args, one: &[Vec<u8>], batch: &[Vec<u8>]) -> anyhow::Result<serde_json::Value> {
    let (p50, p99, rps1) = sequential(addr, one, args.seconds)?;
    let rps_many = concurrent(addr, "/v1/predict", one, args.concurrency, args.seconds)?;
    let batches = concurrent(addr, "/v1/predict/batch", batch, 2, args.seconds)?;
    Ok(serde_json::json!({
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "rps_c1": rps1,
        format!("rps_c{}", args.concurrency): rps_many,
        "batch_rows_per_s": batches * args.batch_rows as f64,
    }))
}

fn read_rows(args: &Args) -> anyhow::Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(&args.rows).with_context(|| format!("reading {}", args.rows.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mut row: Vec<f64> = line.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>()?;
        if args.drop_last {
            row.pop();
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("no rows in {}", args.rows.display());
    }
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rows = read_rows(&args)?;
    let one: Vec<Vec<u8>> =
        rows.iter().map(|row| serde_json::to_vec(&serde_json::json!({ "features": row }))).collect::<Result<_, _>>()?;
    let batch_of =
        |start: usize| -> Vec<&Vec<f64>> { (0..args.batch_rows).map(|i| &rows[(start + i) % rows.len()]).collect() };
    let batch: Vec<Vec<u8>> = (0..4)
        .map(|k| serde_json::to_vec(&serde_json::json!({ "rows": batch_of(k * 997) })))
        .collect::<Result<_, _>>()?;
    // The two servers predict the same classes on the rows (checked before measuring).
    let check: Vec<Vec<f64>> = rows.iter().take(1000).cloned().collect();
    let check_body = serde_json::to_vec(&serde_json::json!({ "rows": check }))?;
    let (status, ours) = Connection::new(args.flotilla).post("/v1/predict/batch", &check_body)?;
    if status != 200 {
        bail!("flotilla answered {status}: {}", String::from_utf8_lossy(&ours));
    }
    let ours = classes(&ours)?;
    let flotilla = measure(args.flotilla, &args, &one, &batch)?;
    let mut line = serde_json::json!({
        "rows": rows.len(),
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "batch_rows": args.batch_rows,
        "flotilla": flotilla,
    });
    if let Some(baseline) = args.baseline {
        let (status, theirs) = Connection::new(baseline).post("/v1/predict/batch", &check_body)?;
        if status != 200 {
            bail!("the baseline answered {status}: {}", String::from_utf8_lossy(&theirs));
        }
        let theirs = classes(&theirs)?;
        let agree = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count() as f64 / ours.len().max(1) as f64;
        let measured = measure(baseline, &args, &one, &batch)?;
        let ratio = |key: &str| flotilla[key].as_f64().unwrap_or(f64::NAN) / measured[key].as_f64().unwrap_or(f64::NAN);
        let many = format!("rps_c{}", args.concurrency);
        line["baseline"] = measured.clone();
        line["class_agreement"] = serde_json::json!(agree);
        line["ratio_rps_c1"] = serde_json::json!(ratio("rps_c1"));
        line[format!("ratio_{many}")] = serde_json::json!(ratio(&many));
        line["ratio_batch_rows_per_s"] = serde_json::json!(ratio("batch_rows_per_s"));
        line["targets"] = serde_json::json!({
            "p99_c1_le_1ms": flotilla["p99_ms"].as_f64().is_some_and(|v| v <= 1.0),
            "rps_ge_10x_baseline": ratio(&many) >= 10.0,
            "batch_ge_200k_rows_per_s": flotilla["batch_rows_per_s"].as_f64().is_some_and(|v| v >= 200_000.0),
        });
    }
    println!("{line}");
    Ok(())
}
