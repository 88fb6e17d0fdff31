//! Starting, feeding and ending rounds.

use std::time::Instant;

use super::{ActiveRound, Answer, Coordinator, Outgoing, Peer};
use crate::params::ParameterVector;
use crate::protocol::{CoordinatorMessage, LocalMetrics, Update};
use crate::round::events::{CoordinatorEvent, RoundFailure, UpdateRefusal};
use crate::round::{ConnectionId, StalenessPolicy, sampling};

impl Coordinator {
    /// Starts a round if none runs, a quorum is joined and the pause before the round is over
    /// (the pause starts when both of the former first hold).
    pub(super) fn maybe_start_round(&mut self, now: Instant) {
        if self.active.is_some() || self.shutting_down || self.buffered.is_some() {
            return;
        }
        let candidates: Vec<ConnectionId> =
            self.peers.iter().filter(|(_, peer)| matches!(peer, Peer::Joined { .. })).map(|(conn, _)| *conn).collect();
        let count = self.config.sample_size(candidates.len());
        if count == 0 {
            self.next_round_at = None;
            return;
        }
        let start_at = *self.next_round_at.get_or_insert(now + self.config.round_interval);
        if now < start_at {
            return;
        }
        self.next_round_at = None;
        self.round = self.round.saturating_add(1);
        // Under DP: Poisson sampling at exactly --sample-fraction with secret coins, and the
        // mean taken over the public expected cohort q·N, not over the updates that arrived.
        let sampled = match (&self.config.privacy, &self.config.noise_key) {
            (Some(_), Some(key)) => {
                let q = self.config.sample_fraction;
                self.aggregator.set_fixed_denominator(Some((q * candidates.len() as f64).max(1.0)));
                sampling::poisson(&candidates, q, key, self.round)
            }
            _ => sampling::sample(&candidates, count, self.config.seed, self.round),
        };
        self.aggregator.begin(&self.params);
        let deadline_ms = u64::try_from(self.config.round_deadline.as_millis()).unwrap_or(u64::MAX);
        for conn in &sampled {
            let request =
                CoordinatorMessage::UpdateRequest { round: self.round, model_version: self.model_version, deadline_ms };
            self.transmits.push_back(Outgoing::Message(*conn, request));
        }
        self.active = Some(ActiveRound {
            number: self.round,
            deadline: now + self.config.round_deadline,
            answers: sampled.iter().map(|conn| (*conn, Answer::Pending)).collect(),
            metrics: LocalMetrics::default(),
            secure: None,
        });
        self.events.push_back(CoordinatorEvent::RoundStarted {
            round: self.round,
            model_version: self.model_version,
            sampled: sampled.clone(),
        });
        if self.config.secure.is_some() {
            self.open_secure_round(&sampled, now);
        }
    }

    /// Validates an update and folds it into the round's aggregate.
    pub(super) fn handle_update(&mut self, conn: ConnectionId, update: Update, now: Instant) {
        if let Err(refusal) = self.route_update(conn, &update) {
            return self.refuse_update(conn, refusal);
        }
        let folded = self
            .check_claims(&update)
            .and_then(|weight| self.aggregator.fold(&update.delta, weight).map_err(UpdateRefusal::from));
        match folded {
            Ok(folded) => {
                if folded.outlier {
                    let bound = self.config.aggregation.outlier_norm;
                    tracing::warn!(%conn, norm = folded.norm, ?bound, clipped = folded.clipped,
                        "outlier update: its norm exceeds the outlier bound (folded in nonetheless)");
                } else if folded.clipped {
                    tracing::debug!(%conn, norm = folded.norm, "update clipped");
                }
                if let Some(active) = &mut self.active {
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
        if self.config.secure.is_some() {
            return Err(UpdateRefusal::MaskedExpected);
        }
        let active = self.active.as_ref().ok_or(UpdateRefusal::NoRoundInProgress)?;
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

    /// Accounts one more round of the DP mechanism; ε spent so far at the configured δ.
    fn spend_privacy(&mut self) -> Option<f64> {
        let (privacy, accountant) = (self.config.privacy?, self.accountant.as_mut()?);
        accountant.step(privacy.noise_multiplier, self.config.sample_fraction).ok()?;
        let (epsilon, _) = accountant.epsilon(privacy.delta).ok()?;
        Some(epsilon)
    }

    /// Commits the round if it reached the quorum, fails it otherwise; then tries the next.
    pub(super) fn end_round(&mut self, now: Instant) {
        let Some(active) = self.active.take() else { return };
        let accepted = active.answers.values().filter(|a| **a == Answer::Accepted).count();
        let round = active.number;
        let samples_folded = self.aggregator.samples();
        let outcome = if accepted < self.config.min_clients {
            Err(RoundFailure::QuorumMissed { accepted, needed: self.config.min_clients })
        } else {
            self.aggregator.finish(&self.params).map_err(RoundFailure::Aggregation)
        };
        match outcome {
            Ok(params) => {
                self.publish_model(params);
                let LocalMetrics { samples, prequential_errors } = active.metrics;
                let mean_local_error = (samples > 0).then(|| prequential_errors as f64 / samples as f64);
                let epsilon = self.spend_privacy();
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
        self.next_round_at = Some(now + self.config.round_interval);
        self.maybe_start_round(now);
    }
}
