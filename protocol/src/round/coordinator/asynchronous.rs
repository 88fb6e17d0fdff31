//! Asynchronous buffered aggregation (FedBuff): no round barrier, one standing request per
//! client, updates folded by staleness, the buffer applied as a new model after K of them.
//!
//! A joined client is asked (`UpdateRequest` with [`ANY_MODEL_VERSION`]: "on whatever model you
//! hold") as soon as it joins, and again as soon as its answer was folded or refused, or its
//! request's deadline (`round_deadline`) passed. Its update names the version it rests on
//! (`base_version`); it is weighted by `1/√(1 + current − base)` and refused past
//! `max_staleness`. After `buffer_size` updates the buffer is applied: the model version and the
//! round (which counts buffer applications) advance and `RoundCommitted` is emitted as in
//! synchronous mode. A client is sent the newest model with each request when it does not hold
//! it yet, never while it works on one (as FedBuff's server hands out the model with the task):
//! pushing every version to every joined client would cost a model per client per version
//! however few answer, and a standing request rests on the version held when it was asked.

use std::time::Instant;

use super::scheduler::Scheduler;
use super::{Coordinator, Outgoing, Peer};
use crate::round::ConnectionId;
use crate::round::client::ANY_MODEL_VERSION;
use crate::round::events::{CoordinatorEvent, RoundFailure, UpdateRefusal};
use crate::wire::{CoordinatorMessage, LocalMetrics, Update};

impl Coordinator {
    /// Asks `conn` for an update on the model it holds (replacing any outstanding request),
    /// in asynchronous mode.
    pub(super) fn ask(&mut self, conn: ConnectionId, now: Instant) {
        if self.shutting_down || !matches!(self.peers.get(&conn), Some(Peer::Joined { .. })) {
            return;
        }
        let Scheduler::Async(state) = &mut self.scheduler else { return };
        if state.contributed.contains(&conn) {
            // Asked again when this version's buffer is applied.
            return;
        }
        state.asks.insert(conn, now + self.config.round_deadline);
        if state.holds.insert(conn, self.model_version) != Some(self.model_version) {
            self.transmits.push_back(Outgoing::LatestModel(conn));
        }
        let round = self.round.saturating_add(1);
        if !state.started {
            state.started = true;
            let start =
                CoordinatorEvent::RoundStarted { round, model_version: self.model_version, sampled: Vec::new() };
            self.events.push_back(start);
        }
        let deadline_ms = u64::try_from(self.config.round_deadline.as_millis()).unwrap_or(u64::MAX);
        let request = CoordinatorMessage::UpdateRequest { round, model_version: ANY_MODEL_VERSION, deadline_ms };
        self.transmits.push_back(Outgoing::Message(conn, request));
    }

    /// Asks again every client whose request lapsed unanswered.
    pub(super) fn reask_lapsed(&mut self, now: Instant) {
        let Scheduler::Async(state) = &self.scheduler else { return };
        let lapsed: Vec<ConnectionId> =
            state.asks.iter().filter(|(_, deadline)| **deadline <= now).map(|(conn, _)| *conn).collect();
        for conn in lapsed {
            tracing::debug!(%conn, "update request lapsed; asking again");
            self.ask(conn, now);
        }
    }

    /// Folds an update by its staleness (or refuses it), applies a full buffer, then asks the
    /// client again.
    pub(super) fn handle_async_update(&mut self, conn: ConnectionId, update: Update, now: Instant) {
        let claims = self.pipeline.accept(&update, 1);
        let (current, version, round) = (&self.params, self.model_version, self.round.saturating_add(1));
        let Scheduler::Async(state) = &mut self.scheduler else { return };
        if state.asks.remove(&conn).is_none() {
            return self.refuse_update(conn, UpdateRefusal::NotSampled);
        }
        let folded = claims.and_then(|_| {
            state.buffer.fold(current, version, &update.delta, update.base_version).map_err(UpdateRefusal::from)
        });
        match folded {
            Ok(folded) => {
                self.pipeline.folded(&folded, update.moments.as_ref());
                let claimed = update.metrics;
                let metrics = &mut state.metrics;
                metrics.samples = metrics.samples.saturating_add(claimed.samples);
                metrics.prequential_errors = metrics.prequential_errors.saturating_add(claimed.prequential_errors);
                state.contributed.insert(conn);
                // Full, or every joined client has given its one update for this version.
                let everyone = self
                    .peers
                    .iter()
                    .filter(|(_, peer)| matches!(peer, Peer::Joined { .. }))
                    .all(|(conn, _)| state.contributed.contains(conn));
                let ready = state.buffer.ready() || everyone;
                if folded.outlier {
                    let bound = self.config.aggregation.outlier_norm;
                    tracing::warn!(%conn, norm = folded.norm, ?bound, clipped = folded.clipped,
                        "outlier update: its norm exceeds the outlier bound (folded in nonetheless)");
                }
                let staleness = version.saturating_sub(update.base_version);
                tracing::debug!(%conn, staleness, base_version = update.base_version, "update buffered");
                self.events.push_back(CoordinatorEvent::UpdateAccepted { conn, round, samples: update.samples() });
                if ready {
                    // Asks every contributor again, this one included.
                    return self.apply_buffer(now);
                }
            }
            Err(refusal) => self.refuse_update(conn, refusal),
        }
        // Refused: asked again at once; buffered: asked again when its version is applied.
        self.ask(conn, now);
    }

    /// Turns the full buffer into the next model version and sends it to every joined client.
    /// Everyone who contributed to it is asked again (on the new version).
    fn apply_buffer(&mut self, now: Instant) {
        let Scheduler::Async(state) = &mut self.scheduler else { return };
        let contributed = std::mem::take(&mut state.contributed);
        let round = self.round.saturating_add(1);
        let participants = state.buffer.buffered();
        let LocalMetrics { samples, prequential_errors } = std::mem::take(&mut state.metrics);
        state.started = false;
        match state.buffer.apply_early(&self.params) {
            Ok(params) => {
                self.publish_model(params);
                self.round = round;
                let mean_local_error = (samples > 0).then(|| prequential_errors as f64 / samples as f64);
                // Differential privacy is refused in this mode (`CoordinatorConfig::validate`).
                let epsilon = self.pipeline.spend(round);
                self.events.push_back(CoordinatorEvent::RoundCommitted {
                    round,
                    model_version: self.model_version,
                    participants,
                    samples,
                    mean_local_error,
                    epsilon,
                });
            }
            Err(error) => {
                state.buffer.clear();
                self.events
                    .push_back(CoordinatorEvent::RoundFailed { round, reason: RoundFailure::Aggregation(error) });
            }
        }
        for conn in contributed {
            self.ask(conn, now);
        }
    }
}

#[cfg(test)]
mod tests;
