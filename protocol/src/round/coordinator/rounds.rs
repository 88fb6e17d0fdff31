//! Starting, feeding and ending rounds.

use std::time::Instant;

use super::scheduler::{ActiveRound, Answer};
use super::{Coordinator, Outgoing, Peer};
use crate::params::ParameterVector;
use crate::round::events::{CoordinatorEvent, RoundFailure, UpdateRefusal};
use crate::round::{ConnectionId, StalenessPolicy};
use crate::wire::{CoordinatorMessage, LocalMetrics, Update};

impl Coordinator {
    /// Starts a round if none runs, a quorum is joined and the pause before the round is over
    /// (the pause starts when both of the former first hold).
    pub(super) fn maybe_start_round(&mut self, now: Instant) {
        let candidates: Vec<ConnectionId> =
            self.peers.iter().filter(|(_, peer)| matches!(peer, Peer::Joined { .. })).map(|(conn, _)| *conn).collect();
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
        self.round = self.round.saturating_add(1);
        let (sampled, release) = self.pipeline.sample(&candidates, count, self.config.seed, self.round);
        rounds.aggregator.set_release(release);
        rounds.aggregator.begin(&self.params);
        let deadline_ms = u64::try_from(self.config.round_deadline.as_millis()).unwrap_or(u64::MAX);
        for conn in &sampled {
            let request =
                CoordinatorMessage::UpdateRequest { round: self.round, model_version: self.model_version, deadline_ms };
            self.transmits.push_back(Outgoing::Message(*conn, request));
        }
        rounds.active = Some(ActiveRound {
            number: self.round,
            deadline: now + self.config.round_deadline,
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

    /// Validates a synchronous round's update and folds it into the round's aggregate.
    pub(super) fn handle_round_update(&mut self, conn: ConnectionId, update: Update, now: Instant) {
        if let Err(refusal) = self.route_update(conn, &update) {
            return self.refuse_update(conn, refusal);
        }
        let weight = self.pipeline.accept(&update);
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        let folded =
            weight.and_then(|weight| rounds.aggregator.fold(&update.delta, weight).map_err(UpdateRefusal::from));
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
        let joined: Vec<ConnectionId> =
            self.peers.iter().filter(|(_, peer)| matches!(peer, Peer::Joined { .. })).map(|(conn, _)| *conn).collect();
        self.transmits.extend(joined.into_iter().map(Outgoing::LatestModel));
    }

    /// Commits the round if it reached the quorum, fails it otherwise; then tries the next.
    pub(super) fn end_round(&mut self, now: Instant) {
        let Some(active) = self.scheduler.take_active() else { return };
        let Some(rounds) = self.scheduler.rounds_mut() else { return };
        let accepted = active.answers.values().filter(|a| **a == Answer::Accepted).count();
        let round = active.number;
        let samples_folded = rounds.aggregator.samples();
        let outcome = if accepted < self.config.min_clients {
            Err(RoundFailure::QuorumMissed { accepted, needed: self.config.min_clients })
        } else {
            rounds.aggregator.finish(&self.params).map_err(RoundFailure::Aggregation)
        };
        rounds.next_round_at = Some(now + self.config.round_interval);
        match outcome {
            Ok(params) => {
                self.publish_model(params);
                let LocalMetrics { samples, prequential_errors } = active.metrics;
                let mean_local_error = (samples > 0).then(|| prequential_errors as f64 / samples as f64);
                let epsilon = self.pipeline.spend(round);
                self.events.push_back(CoordinatorEvent::RoundCommitted {
                    round,
                    model_version: self.model_version,
                    participants: accepted,
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
}
