//! Starting, feeding and ending rounds.

use std::time::{Duration, Instant};

use super::scheduler::{ActiveRound, Answer, Scheduler};
use super::{Coordinator, Outgoing, Peer};
use crate::params::ParameterVector;
use crate::round::events::{CoordinatorEvent, RoundFailure, UpdateRefusal};
use crate::round::{ConnectionId, StalenessPolicy};
use crate::wire::{Cohort, Contribution, CoordinatorMessage, LocalMetrics, Update};

impl Coordinator {
    /// Starts a round if none runs, a quorum is joined and the pause before the round is over
    /// (the pause starts when both of the former first hold). An edge aggregator starts none
    /// of its own (see [`Coordinator::handle_parent_request`]).
    pub(super) fn maybe_start_round(&mut self, now: Instant) {
        if self.config.hierarchy.is_edge() {
            return;
        }
        let candidates = self.joined_connections();
        let count = self.config.sample_size(candidates.len());
        let shutting_down = self.shutting_down;
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        if rounds.active.is_some() || shutting_down {
            return;
        }
        if count == 0 {
            rounds.next_round_at = None;
            return;
        }
        let start_at = *rounds.next_round_at.get_or_insert(now + self.config.round_interval);
        if now < start_at {
            return;
        }
        rounds.next_round_at = None;
        let round = self.round.saturating_add(1);
        self.start_round(round, &candidates, count, self.config.round_deadline, now);
    }

    fn joined_connections(&self) -> Vec<ConnectionId> {
        self.peers.iter().filter(|(_, peer)| matches!(peer, Peer::Joined { .. })).map(|(conn, _)| *conn).collect()
    }

    /// Starts round `round` over `count` of `candidates` (at least one), waiting `deadline`.
    fn start_round(&mut self, round: u64, candidates: &[ConnectionId], count: usize, deadline: Duration, now: Instant) {
        self.round = round;
        let (sampled, release) = self.pipeline.sample(candidates, count, self.config.seed, self.round);
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        rounds.aggregator.set_release(release);
        rounds.aggregator.begin(&self.params);
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        for conn in &sampled {
            let request =
                CoordinatorMessage::UpdateRequest { round: self.round, model_version: self.model_version, deadline_ms };
            self.transmits.push_back(Outgoing::Message(*conn, request));
        }
        rounds.active = Some(ActiveRound {
            number: self.round,
            deadline: now + deadline,
            answers: sampled.iter().map(|conn| (*conn, Answer::Pending)).collect(),
            metrics: LocalMetrics::default(),
        });
        self.events.push_back(CoordinatorEvent::RoundStarted {
            round: self.round,
            model_version: self.model_version,
            sampled: sampled.clone(),
        });
        self.open_secure_round(&sampled, now);
    }

    /// An edge aggregator's parent asks for its update in `round` on `model_version`, to arrive
    /// within `deadline`: the aggregator runs that round over its own clients (sampled as its
    /// configuration says), ending it by 80 % of `deadline` at the latest, with a
    /// [`CoordinatorEvent::CohortReady`] or a `RoundFailed` (at once when its quorum is not
    /// joined: the parent's round goes on without this cohort instead of waiting for it). A
    /// round still running is abandoned first (the parent moved on).
    pub fn handle_parent_request(&mut self, round: u64, model_version: u64, deadline: Duration, now: Instant) {
        if !self.config.hierarchy.is_edge() || self.shutting_down {
            return;
        }
        self.fail_round(RoundFailure::Superseded, now);
        if model_version != self.model_version {
            let reason = RoundFailure::ParentModel { asked: model_version, held: self.model_version };
            return self.events.push_back(CoordinatorEvent::RoundFailed { round, reason });
        }
        let candidates = self.joined_connections();
        let count = self.config.sample_size(candidates.len());
        if count == 0 {
            let reason = RoundFailure::QuorumMissed { accepted: 0, needed: self.config.min_clients };
            return self.events.push_back(CoordinatorEvent::RoundFailed { round, reason });
        }
        let deadline = deadline.mul_f64(EDGE_DEADLINE_SHARE).min(self.config.round_deadline);
        self.start_round(round, &candidates, count, deadline, now);
    }

    /// An edge aggregator adopts its parent's model `params` (version `model_version`, sent
    /// in round `round`) and passes it on to its clients. A round still running is
    /// abandoned (its base is gone). Refused when the layout is not the one this aggregator
    /// serves.
    pub fn adopt_model(
        &mut self,
        model_version: u64,
        round: u64,
        params: ParameterVector,
        now: Instant,
    ) -> Result<(), crate::params::ParameterError> {
        params.check_shape(self.params.fingerprint, self.params.values.len())?;
        self.fail_round(RoundFailure::Superseded, now);
        self.params = params;
        self.served = None;
        self.model_version = model_version;
        self.round = round;
        let joined = self.joined_connections();
        self.transmits.extend(joined.into_iter().map(Outgoing::LatestModel));
        Ok(())
    }

    /// Validates a synchronous round's update and folds it into the round's aggregate.
    /// `cohort`: the update is an edge aggregator's, standing for that many clients.
    pub(super) fn handle_round_update(
        &mut self,
        conn: ConnectionId,
        update: Update,
        cohort: Option<Cohort>,
        now: Instant,
    ) {
        if let Err(refusal) = self.route_update(conn, &update) {
            return self.refuse_update(conn, refusal);
        }
        let weight = self.pipeline.accept(&update, cohort.map_or(1, |c| c.participants));
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        let folded = weight.and_then(|weight| {
            match cohort {
                Some(cohort) => rounds.aggregator.fold_cohort(&update.delta, weight, cohort),
                None => rounds.aggregator.fold(&update.delta, weight),
            }
            .map_err(UpdateRefusal::from)
        });
        match folded {
            Ok(folded) => {
                self.pipeline.folded(&folded, update.moments.as_ref());
                if folded.outlier {
                    let bound = self.config.aggregation.outlier_norm;
                    tracing::warn!(%conn, norm = folded.norm, ?bound, clipped = folded.clipped,
                        "outlier update: its norm exceeds the outlier bound (folded in nonetheless)");
                } else if folded.clipped {
                    tracing::debug!(%conn, norm = folded.norm, "update clipped");
                }
                if let Some(active) = &mut rounds.active {
                    let metrics = update.metrics;
                    active.metrics.samples = active.metrics.samples.saturating_add(metrics.samples);
                    let errors = &mut active.metrics.prequential_errors;
                    *errors = errors.saturating_add(metrics.prequential_errors);
                }
                let (round, samples) = (update.round, update.samples());
                self.events.push_back(CoordinatorEvent::UpdateAccepted { conn, round, samples });
                self.record_answer(conn, Answer::Accepted, now);
            }
            Err(refusal) => {
                self.refuse_update(conn, refusal);
                self.record_answer(conn, Answer::Refused, now);
            }
        }
    }

    /// Checks that the update answers a pending request of the current round and model.
    fn route_update(&self, conn: ConnectionId, update: &Update) -> Result<(), UpdateRefusal> {
        let active = self.scheduler.rounds().and_then(|rounds| rounds.active.as_ref());
        let active = active.ok_or(UpdateRefusal::NoRoundInProgress)?;
        match self.config.staleness {
            StalenessPolicy::CurrentOnly => {
                if update.round != active.number {
                    return Err(UpdateRefusal::WrongRound { current: active.number, found: update.round });
                }
                if update.base_version != self.model_version {
                    return Err(UpdateRefusal::StaleBase { current: self.model_version, found: update.base_version });
                }
            }
        }
        match active.answers.get(&conn) {
            None => Err(UpdateRefusal::NotSampled),
            Some(Answer::Pending) => Ok(()),
            Some(_) => Err(UpdateRefusal::Duplicate),
        }
    }

    pub(super) fn refuse_update(&mut self, conn: ConnectionId, reason: UpdateRefusal) {
        let error = CoordinatorMessage::Error { code: reason.code(), message: reason.to_string() };
        self.transmits.push_back(Outgoing::Message(conn, error));
        self.events.push_back(CoordinatorEvent::UpdateRefused { conn, reason });
    }

    /// Makes `params` the new global model version and queues it for every joined client.
    /// α is a constrained parameter: it is put back on the floored simplex after any step.
    pub(super) fn publish_model(&mut self, mut params: ParameterVector) {
        if self.config.keep_pruned {
            self.spec.layout().keep_pruned(&self.params.values, &mut params.values);
        }
        self.spec.project(&mut params);
        let rho = self.config.aggregation.serve_average;
        self.served = match self.served.take() {
            _ if rho <= 0.0 => None,
            Some(mut served)
                if served.fingerprint == params.fingerprint && served.values.len() == params.values.len() =>
            {
                for (s, p) in served.values.iter_mut().zip(&params.values) {
                    *s = (rho * f64::from(*s) + (1.0 - rho) * f64::from(*p)) as f32;
                }
                self.spec.project(&mut served);
                Some(served)
            }
            _ => Some(params.clone()),
        };
        self.params = params;
        self.model_version += 1;
        if matches!(self.scheduler, Scheduler::Async(_)) {
            // Sent with each client's next request (`Coordinator::ask`).
            return;
        }
        let joined: Vec<ConnectionId> =
            self.peers.iter().filter(|(_, peer)| matches!(peer, Peer::Joined { .. })).map(|(conn, _)| *conn).collect();
        self.transmits.extend(joined.into_iter().map(Outgoing::LatestModel));
    }

    /// Commits the round if it reached the quorum, fails it otherwise; then tries the next.
    /// An edge aggregator's round ends with its cohort's aggregate for the parent instead.
    pub(super) fn end_round(&mut self, now: Instant) {
        if self.config.hierarchy.is_edge() {
            return self.end_cohort_round();
        }
        let Some(active) = self.scheduler.take_active() else { return };
        // Aggregators that let the request lapse are passed over by redirects until they
        // answer. A round ended early (every answer in, or the quorum out of reach) leaves
        // nobody silent: those still pending had time left.
        if now >= active.deadline {
            for (conn, _) in active.answers.iter().filter(|(_, answer)| **answer == Answer::Pending) {
                if let Some(announced) = self.announced.get_mut(conn) {
                    announced.silent = true;
                }
            }
        }
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        let accepted = active.answers.values().filter(|a| **a == Answer::Accepted).count();
        let round = active.number;
        let samples_folded = rounds.aggregator.samples();
        let participants = rounds.aggregator.participants();
        let outcome = if accepted < self.config.min_clients {
            Err(RoundFailure::QuorumMissed { accepted, needed: self.config.min_clients })
        } else {
            rounds.aggregator.finish(&self.params).map_err(RoundFailure::Aggregation)
        };
        // After a failed round, a pause of at least a second: rounds whose clients all decline
        // (none has learnt anything yet) must not follow each other back to back.
        let pause = if outcome.is_ok() {
            self.config.round_interval
        } else {
            self.config.round_interval.max(FAILED_ROUND_PAUSE)
        };
        rounds.next_round_at = Some(now + pause);
        match outcome {
            Ok(params) => {
                self.publish_model(params);
                let LocalMetrics { samples, prequential_errors } = active.metrics;
                let mean_local_error = (samples > 0).then(|| prequential_errors as f64 / samples as f64);
                let epsilon = self.pipeline.spend(round);
                self.events.push_back(CoordinatorEvent::RoundCommitted {
                    round,
                    model_version: self.model_version,
                    participants,
                    samples: samples_folded,
                    mean_local_error,
                    epsilon,
                });
            }
            Err(reason) => {
                self.events.push_back(CoordinatorEvent::RoundFailed { round, reason });
            }
        }
        self.maybe_start_round(now);
    }

    /// An edge aggregator's round end: the cohort's aggregate and counters, for the parent.
    fn end_cohort_round(&mut self) {
        let Some(active) = self.scheduler.take_active() else { return };
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        let accepted = active.answers.values().filter(|a| **a == Answer::Accepted).count();
        let round = active.number;
        // The cohort weighs what it was folded with: its samples, or under secure aggregation
        // (whose clients reveal no count) one per surviving client, as at a flat coordinator.
        let weight = rounds.aggregator.samples();
        // Under the root's differential privacy the cohort goes up whenever anyone answered:
        // the root's denominator counts this cohort's expected size only if it arrives, which
        // must not hang on how many of its sampled clients answered.
        let quorum = if self.config.hierarchy.edge_privacy().is_some() { 1 } else { self.config.min_clients };
        let outcome = if accepted < quorum {
            Err(RoundFailure::QuorumMissed { accepted, needed: quorum })
        } else {
            rounds.aggregator.finish_cohort().map_err(RoundFailure::Aggregation)
        };
        match outcome {
            Ok((values, cohort)) => {
                let delta = ParameterVector {
                    format_version: self.params.format_version,
                    fingerprint: self.params.fingerprint,
                    values,
                };
                let metrics = if self.config.hierarchy.edge_privacy().is_some() {
                    // The root weighs a DP cohort by its clients (one each), so the counters
                    // stay theirs: the root's mean local error is the flat fleet's.
                    active.metrics
                } else {
                    let errors = active.metrics.prequential_errors.min(weight);
                    LocalMetrics { samples: weight, prequential_errors: errors }
                };
                let moments = self.pipeline.take_round_moments();
                let contribution = Contribution { delta, metrics, moments, cohort: Some(cohort) };
                self.events.push_back(CoordinatorEvent::CohortReady { round, contribution });
            }
            Err(reason) => self.events.push_back(CoordinatorEvent::RoundFailed { round, reason }),
        }
    }
}

/// Shortest pause after a failed round before the next one starts.
pub(super) const FAILED_ROUND_PAUSE: Duration = Duration::from_secs(1);

/// Share of the parent's deadline an edge aggregator's round may take: the rest is left for
/// the cohort's aggregate to reach the parent.
pub(super) const EDGE_DEADLINE_SHARE: f64 = 0.8;
