//! The learner thread: learns from every row as it arrives, answers the session's requests
//! between rows, and keeps its state on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::tensor::Device;
use flotilla_learner::local::{ClientState, Counts, LocalLearner};
use flotilla_learner::personal::PersonalConfig;
use flotilla_net::LearnerRequest;
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::model::Prediction;
use flotilla_protocol::wire::Contribution;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::options::{Attack, RunConfig};
use super::source::{self, Row};

/// File name of the client's state inside `--state-dir`.
pub const STATE_FILE: &str = "client-state.bin";
/// Longest wait for a row before the session's requests are looked at again.
const POLL: Duration = Duration::from_millis(10);
/// With `--rows-per-round`, a deferred request is answered this long before its deadline at
/// the latest, with the rows learnt so far.
const DEFERRAL_MARGIN: Duration = Duration::from_millis(300);

/// What the learner did, for the exit report.
/// A prediction request from the device's HTTP API, answered between two rows.
pub struct PredictJob {
    /// Raw feature rows.
    pub rows: Vec<Vec<f32>>,
    /// Where the answer goes: the predictions and the version of the global model last
    /// adopted (0 before any).
    pub reply: tokio::sync::oneshot::Sender<Result<(Vec<Prediction>, u64), PredictRefusal>>,
}

/// Why the learner did not predict.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictRefusal {
    /// No model yet (the coordinator has not said which to learn).
    NotReady(String),
    /// A row does not fit the model.
    BadRow(String),
}

pub struct WorkerSummary {
    /// Samples learnt since the daemon first started (over restarts), scored on the
    /// predictions it emitted (personalised when personalisation is on).
    pub total: Counts,
    /// The same samples scored on the shared (global) model's own predictions.
    pub global_total: Counts,
    /// `total` every `flotilla_learner::local::MARK_EVERY` samples.
    pub marks: Vec<Counts>,
    /// Samples learnt by this process.
    pub samples_this_run: u64,
    /// Version of the global model last adopted.
    pub base_version: Option<u64>,
    /// Updates handed to the session.
    pub contributions: u64,
}

/// The learner thread's state.
struct Worker {
    config: RunConfig,
    device: Device,
    stop: CancellationToken,
    learner: Option<LocalLearner>,
    rows: Option<(Receiver<Row>, JoinHandle<()>)>,
    ended: bool,
    learnt: u64,
    contributions: u64,
    started: Instant,
    /// With `--rows-per-round`: rows still to learn on the current global model (0 before
    /// the first one arrives).
    rows_left: u64,
    /// With `--rows-per-round`: the round's request, held until those rows are learnt.
    deferred: Option<LearnerRequest>,
    /// With `--rows-per-round`: the last contribution and the model it rests on, offered
    /// again when a later round asks on the same model (the round it went to failed).
    sent: Option<(u64, Contribution)>,
    /// Where each row's prediction goes (`--predictions`).
    predictions: Option<Box<dyn Write + Send>>,
    /// The device's HTTP API's requests, when it serves one.
    jobs: Option<Receiver<PredictJob>>,
}

/// Runs until `stop` is cancelled or the session goes away; saves the state on the way out.
pub fn run(
    config: RunConfig,
    device: Device,
    mut requests: tokio::sync::mpsc::Receiver<LearnerRequest>,
    jobs: Option<Receiver<PredictJob>>,
    stop: CancellationToken,
) -> anyhow::Result<WorkerSummary> {
    let learner = load_state(&config, &device)?;
    let predictions = config.predictions.as_deref().map(open_predictions).transpose()?;
    let mut worker = Worker {
        config,
        device,
        stop,
        learner,
        rows: None,
        ended: false,
        learnt: 0,
        contributions: 0,
        started: Instant::now(),
        rows_left: 0,
        deferred: None,
        sent: None,
        predictions,
        jobs,
    };
    let result = worker.run_loop(&mut requests);
    worker.stop.cancel();
    worker.save().context("saving the client state on exit")?;
    if let Some((_, handle)) = worker.rows.take() {
        // The reader may be blocked on stdin; it ends with the process.
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    result?;
    let (total, global_total, marks) = match worker.learner.as_mut() {
        Some(learner) => (learner.total()?, learner.global_total()?, learner.marks()?.to_vec()),
        None => (Counts::default(), Counts::default(), Vec::new()),
    };
    Ok(WorkerSummary {
        total,
        global_total,
        marks,
        samples_this_run: worker.learnt,
        base_version: worker.learner.as_ref().and_then(LocalLearner::base_version),
        contributions: worker.contributions,
    })
}

impl Worker {
    fn run_loop(&mut self, requests: &mut tokio::sync::mpsc::Receiver<LearnerRequest>) -> anyhow::Result<()> {
        loop {
            loop {
                match requests.try_recv() {
                    Ok(request) => self.handle(request)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.answer_jobs();
            if self.deferral_due()
                && let Some(request) = self.deferred.take()
            {
                // Its rows are learnt, or it is answered early (the stream ended, the deadline
                // is near): either way no more rows on this model.
                self.rows_left = 0;
                self.answer_lockstep(request)?;
            }
            if self.stop.is_cancelled() {
                return Ok(());
            }
            if self.learner.is_none() || self.ended || self.over_rate() || self.out_of_rows() {
                // Idle: wait for a prediction request rather than sleep through it.
                match self.jobs.as_ref().map(|jobs| jobs.recv_timeout(POLL)) {
                    Some(Ok(job)) => self.answer_job(job),
                    Some(Err(_)) => {}
                    None => std::thread::sleep(POLL),
                }
                continue;
            }
            self.next_row()?;
        }
    }

    /// Answers every prediction request waiting.
    fn answer_jobs(&mut self) {
        while let Some(job) = self.jobs.as_ref().and_then(|jobs| jobs.try_recv().ok()) {
            self.answer_job(job);
        }
    }

    fn answer_job(&mut self, job: PredictJob) {
        let answer = match self.learner.as_ref() {
            None => Err(PredictRefusal::NotReady(
                "no model yet: the coordinator has not told this device which model to learn".into(),
            )),
            Some(learner) => predict_rows(learner, &job.rows),
        };
        let _ = job.reply.send(answer);
    }

    /// `--rows-per-round`'s rows on the current model are all learnt.
    fn out_of_rows(&self) -> bool {
        self.config.rows_per_round.is_some() && self.rows_left == 0
    }

    /// Whether the deferred request should be answered now: its rows are learnt, the stream
    /// ended, or its deadline is near.
    fn deferral_due(&self) -> bool {
        let Some(LearnerRequest::Update { deadline, .. }) = &self.deferred else { return false };
        self.rows_left == 0
            || self.ended
            || deadline.is_some_and(|deadline| Instant::now() + DEFERRAL_MARGIN >= deadline)
    }

    fn over_rate(&self) -> bool {
        self.config.rate.is_some_and(|rate| self.learnt as f64 > rate * self.started.elapsed().as_secs_f64())
    }

    fn next_row(&mut self) -> anyhow::Result<()> {
        if self.rows.is_none() {
            let skip = self.learner.as_ref().map_or(0, LocalLearner::rows_consumed);
            if skip > 0 {
                tracing::info!(skip, "resuming the stream after the rows already learnt from");
            }
            self.rows = Some(source::spawn(&self.config.data, self.config.follow, skip, self.stop.clone())?);
        }
        let Some((rows, _)) = &self.rows else { return Ok(()) };
        match rows.recv_timeout(POLL) {
            Ok(Row::Sample(sample)) => {
                let Some(learner) = self.learner.as_mut() else { return Ok(()) };
                learner.emit_predictions(self.predictions.is_some());
                learner.learn(&sample).with_context(|| format!("learning from {}", self.config.data.display()))?;
                if let Some(out) = self.predictions.as_mut() {
                    for prediction in learner.take_predictions()? {
                        serde_json::to_writer(&mut *out, &prediction)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush().context("writing --predictions")?;
                }
                self.learnt += 1;
                self.rows_left = self.rows_left.saturating_sub(1);
                if self.learnt.is_multiple_of(self.config.checkpoint_every) {
                    self.save()?;
                }
            }
            Ok(Row::End) | Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                tracing::info!(samples = self.learnt, "the stream ended; still answering the coordinator");
                self.save()?;
            }
            Ok(Row::Failed(error)) => {
                return Err(error).with_context(|| format!("reading {}", self.config.data.display()));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        Ok(())
    }

    fn handle(&mut self, request: LearnerRequest) -> anyhow::Result<()> {
        if self.config.rows_per_round.is_none() {
            return self.answer_now(request);
        }
        if matches!(request, LearnerRequest::Update { .. }) && self.rows_left > 0 && !self.ended {
            // Answered once this model's rows are learnt; a newer request replaces an older one
            // (whose reply, dropped, tells the session there is nothing for it).
            self.deferred = Some(request);
            return Ok(());
        }
        self.answer_lockstep(request)
    }

    /// With `--rows-per-round`, an update request whose rows are learnt: the contribution is
    /// kept, and a later request on the same model (its round failed; nothing was learnt
    /// since) gets it again, so a failed round costs no client its rows.
    fn answer_lockstep(&mut self, request: LearnerRequest) -> anyhow::Result<()> {
        let LearnerRequest::Update { round, model_version, reply, keep_pruned, deadline } = request else {
            return self.answer_now(request);
        };
        if let Some((_, contribution)) = self.sent.as_ref().filter(|(version, _)| *version == model_version) {
            tracing::debug!(round, model_version, "the same model again: the last update offered again");
            let _ = reply.send(contribution.clone());
            return Ok(());
        }
        let (mine, mut answer) = tokio::sync::oneshot::channel();
        self.answer_now(LearnerRequest::Update { round, model_version, reply: mine, keep_pruned, deadline })?;
        if let Ok(contribution) = answer.try_recv() {
            self.sent = Some((model_version, contribution.clone()));
            let _ = reply.send(contribution);
        }
        Ok(())
    }

    fn answer_now(&mut self, request: LearnerRequest) -> anyhow::Result<()> {
        match answer(&mut self.learner, &self.device, request, self.config.attack, self.config.personal)? {
            Answer::NewLearner => {
                self.rows = None;
                self.rows_left = 0;
            }
            Answer::Adopted => {
                let version = self.learner.as_ref().and_then(LocalLearner::base_version);
                tracing::info!(model_version = version, "global model adopted");
                self.rows_left = self.config.rows_per_round.unwrap_or(0);
                // A model adopted again (even the same version, after a reconnection) starts
                // a new batch of rows: the next update is made afresh, not offered again.
                self.sent = None;
                self.save()?;
            }
            Answer::Contributed => {
                self.contributions += 1;
                tracing::info!(updates = self.contributions, "update sent");
            }
            Answer::Nothing => {}
        }
        Ok(())
    }

    fn state_path(&self) -> Option<PathBuf> {
        self.config.state_dir.as_ref().map(|dir| dir.join(STATE_FILE))
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let (Some(path), Some(learner)) = (self.state_path(), self.learner.as_mut()) else { return Ok(()) };
        let bytes = learner.state()?.encode()?;
        flotilla_net::persist::write_atomically(&path, &bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// The `--predictions` sink: `-` is stdout, anything else a file appended to (a restarted
/// daemon goes on after the rows it already predicted).
fn open_predictions(path: &Path) -> anyhow::Result<Box<dyn Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening --predictions {}", path.display()))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

/// What answering a session request did.
pub enum Answer {
    /// A learner of a new shape was made (any local state was discarded).
    NewLearner,
    /// A global model was adopted.
    Adopted,
    /// An update was handed back.
    Contributed,
    /// Nothing changed.
    Nothing,
}

/// Answers one request of the session: make the learner on Welcome, adopt on Adopt, and
/// contribute on Update. Shared by the daemon and the virtual fleet.
pub fn answer(
    learner: &mut Option<LocalLearner>,
    device: &Device,
    request: LearnerRequest,
    attack: Option<Attack>,
    personal: PersonalConfig,
) -> anyhow::Result<Answer> {
    match request {
        LearnerRequest::Welcome { spec, fingerprint } => {
            if spec.validate().is_err() || spec.layout().fingerprint() != fingerprint {
                bail!("the coordinator's model layout ({fingerprint}) does not match its spec in this build");
            }
            let ModelSpec::Hbp(spec) = spec else {
                bail!("the coordinator trains a {spec}; flotilla-client learns HBP models only");
            };
            if learner.as_ref().is_some_and(|l| *l.spec() == spec) {
                return Ok(Answer::Nothing);
            }
            if learner.is_some() {
                tracing::warn!("the coordinator's model has another shape: local state discarded");
            }
            tracing::debug!(
                inputs = spec.inputs,
                classes = spec.classes,
                layers = spec.hidden_layers,
                "model spec received"
            );
            let mut fresh = LocalLearner::new(spec, device)?;
            fresh.set_personal(personal)?;
            *learner = Some(fresh);
            Ok(Answer::NewLearner)
        }
        LearnerRequest::Adopt { model_version, round, params, keep_pruned, .. } => {
            let Some(learner) = learner.as_mut() else { return Ok(Answer::Nothing) };
            learner.set_keep_pruned(keep_pruned);
            learner.adopt(model_version, params)?;
            tracing::debug!(model_version, round, "global model adopted");
            Ok(Answer::Adopted)
        }
        LearnerRequest::Update { round, model_version, reply, keep_pruned, .. } => {
            let Some(learner) = learner.as_mut() else { return Ok(Answer::Nothing) };
            learner.set_keep_pruned(keep_pruned);
            match learner.contribute(model_version)? {
                Some(mut c) => {
                    if let Some(attack) = attack {
                        attack.apply(&mut c.delta.values);
                    }
                    tracing::debug!(
                        round,
                        samples = c.metrics.samples,
                        errors = c.metrics.prequential_errors,
                        "update sent"
                    );
                    let _ = reply.send(c);
                    Ok(Answer::Contributed)
                }
                None => {
                    tracing::debug!(round, model_version, "nothing to contribute (no new samples or another model)");
                    Ok(Answer::Nothing)
                }
            }
        }
    }
}

/// `rows` checked against the learner's model, then predicted as the next stream row would be.
fn predict_rows(learner: &LocalLearner, rows: &[Vec<f32>]) -> Result<(Vec<Prediction>, u64), PredictRefusal> {
    flotilla_learner::infer::check_rows(learner.spec().inputs, rows)
        .map_err(|error| PredictRefusal::BadRow(error.to_string()))?;
    let predictions = learner.predict(rows).map_err(|e| PredictRefusal::NotReady(format!("prediction failed: {e}")))?;
    Ok((predictions, learner.base_version().unwrap_or(0)))
}

/// The learner saved in `--state-dir`, if any; a corrupt file is an error, never ignored.
fn load_state(config: &RunConfig, device: &Device) -> anyhow::Result<Option<LocalLearner>> {
    let Some(dir) = &config.state_dir else { return Ok(None) };
    std::fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state = ClientState::decode(&bytes)
        .with_context(|| format!("{} is not a valid client state; move it away to start afresh", path.display()))?;
    tracing::info!(path = %path.display(), rows = state.rows_consumed, "resuming from the saved client state");
    let mut learner = LocalLearner::from_state(state, device)?;
    learner.set_personal(config.personal)?;
    Ok(Some(learner))
}
