//! Rounds under secure aggregation: the round's sampled clients form a SecAgg+ cohort and
//! the coordinator relays the protocol's messages; it only ever holds masked vectors and,
//! at the end, their sum, whose mean is folded into the aggregator as one update.

use std::collections::BTreeMap;
use std::time::Instant;

use super::scheduler::{Answer, Rounds, Scheduler, SecureRound, SecureRounds};
use super::{Coordinator, Outgoing, Peer};
use crate::params::ParameterVector;
use crate::round::ConnectionId;
use crate::round::events::{CoordinatorEvent, RoundFailure};
use crate::secagg::{self, SecAggServer, ServerPhase, SessionSetup};
use crate::wire::CoordinatorMessage;

impl Coordinator {
    /// Opens the round's secure session over `sampled` when rounds are secure (called right
    /// after the round started).
    pub(super) fn open_secure_round(&mut self, sampled: &[ConnectionId], now: Instant) {
        let Scheduler::Secure(_, secure) = &self.scheduler else { return };
        let config = secure.config;
        let connections: BTreeMap<u64, ConnectionId> = sampled
            .iter()
            .filter_map(|conn| match self.peers.get(conn) {
                Some(Peer::Joined { client_id, .. }) => Some((*client_id, *conn)),
                _ => None,
            })
            .collect();
        let cohort: Vec<u64> = connections.keys().copied().collect();
        // The session id seeds the neighbour graph: derived from the coordinator's secret key, so
        // nobody can predict it (and who will mask with whom) from the public seed and round.
        // `CoordinatorConfig::validate` refuses secure aggregation without a key.
        let Some(key) = self.config.noise_key else {
            let reason = "secure aggregation needs the coordinator's secret key (CoordinatorConfig::noise_key)";
            return self.fail_round(RoundFailure::Secure(reason.into()), now);
        };
        // The delta, then (where clients send them) their rows' feature statistics.
        let setup = SessionSetup {
            session_id: key.secagg_session_id(self.round),
            params: config.params(cohort.len()),
            vector_len: self.params.values.len() + self.config.masked_statistics_words(&self.spec),
            cohort,
        };
        let min_survivors = self.config.min_clients.clamp(2, connections.len().max(2));
        match SecAggServer::new(setup, min_survivors) {
            Ok(mut server) => {
                self.queue_setups_first(&mut server, &connections);
                let phase = server.phase();
                let deadline = now + config.phase_timeout;
                if let Scheduler::Secure(_, secure) = &mut self.scheduler {
                    secure.session = Some(SecureRound { server, connections, phase, phase_deadline: deadline });
                }
                self.pump_secure(now);
            }
            Err(error) => {
                tracing::warn!(round = self.round, %error, "secure aggregation could not start");
                self.fail_round(RoundFailure::Secure(error.to_string()), now);
            }
        }
    }

    /// Queues the session's `Setup` messages, each ahead of the model queued for its client
    /// (by the commit that ended the last round): the key phases need no model, so key
    /// agreement overlaps the model's broadcast instead of following it. A client with no
    /// model queued gets its `Setup` last, as any message.
    fn queue_setups_first(&mut self, server: &mut SecAggServer, connections: &BTreeMap<u64, ConnectionId>) {
        let round = self.round;
        let mut setups: BTreeMap<ConnectionId, Outgoing> = BTreeMap::new();
        while let Some((client_id, message)) = server.poll_message() {
            if let Some(conn) = connections.get(&client_id) {
                setups.insert(*conn, Outgoing::Message(*conn, CoordinatorMessage::SecAgg { round, message }));
            }
        }
        let queued = std::mem::take(&mut self.transmits);
        for outgoing in queued {
            if let Outgoing::LatestModel(conn) = &outgoing
                && let Some(setup) = setups.remove(conn)
            {
                self.transmits.push_back(setup);
            }
            self.transmits.push_back(outgoing);
        }
        self.transmits.extend(setups.into_values());
    }

    /// A secure-aggregation message from `conn` (client `client_id`).
    pub(super) fn handle_secure_message(
        &mut self,
        conn: ConnectionId,
        client_id: u64,
        round: u64,
        message: secagg::ClientMessage,
        now: Instant,
    ) {
        let Scheduler::Secure(rounds, secure) = &mut self.scheduler else {
            return self.violation(conn, crate::wire::ErrorCode::UnexpectedMessage, "no secure round".into(), now);
        };
        let (Some(secure), Some(_)) = (secure.session.as_mut(), rounds.active.as_ref().filter(|a| a.number == round))
        else {
            return tracing::debug!(%conn, round, "secure message for no running session; ignored");
        };
        if secure.connections.get(&client_id) != Some(&conn) {
            return tracing::warn!(%conn, client_id, "secure message from outside the cohort; ignored");
        }
        let kind = message.kind();
        if let Err(error) = secure.server.handle(client_id, message) {
            tracing::warn!(%conn, client_id, kind, %error, "secure-aggregation message refused");
        }
        self.pump_secure(now);
    }

    /// The phase deadline passed: proceed with the clients that answered.
    pub(super) fn secure_deadline(&mut self, now: Instant) {
        let Scheduler::Secure(_, secure) = &mut self.scheduler else { return };
        let Some(secure) = secure.session.as_mut() else { return };
        if secure.phase_deadline > now {
            return;
        }
        tracing::info!(round = self.round, phase = secure.phase.name(), "secure-aggregation phase deadline");
        if let Err(error) = secure.server.handle_deadline() {
            tracing::warn!(round = self.round, %error, "secure-aggregation deadline");
        }
        self.pump_secure(now);
    }

    /// Relays the session's outgoing messages, follows its phase and ends the round once
    /// the sum is known or the session failed.
    fn pump_secure(&mut self, now: Instant) {
        let Scheduler::Secure(Rounds { active: Some(active), .. }, secure) = &mut self.scheduler else { return };
        let SecureRounds { config, session: Some(secure) } = secure.as_mut() else { return };
        let (round, round_deadline, phase_timeout) = (active.number, active.deadline, config.phase_timeout);
        while let Some((client_id, message)) = secure.server.poll_message() {
            if let Some(conn) = secure.connections.get(&client_id) {
                self.transmits.push_back(Outgoing::Message(*conn, CoordinatorMessage::SecAgg { round, message }));
            }
        }
        let phase = secure.server.phase();
        if phase != secure.phase {
            tracing::debug!(round, from = secure.phase.name(), to = phase.name(), "secure-aggregation phase");
            secure.phase = phase;
            // Learners need the round's time to produce the update that is masked.
            secure.phase_deadline =
                if phase == ServerPhase::MaskedInput { round_deadline } else { now + phase_timeout };
        }
        match phase {
            ServerPhase::Done => self.finish_secure(now),
            ServerPhase::Failed => {
                let reason = secure.server.failure().map_or_else(|| "unknown".into(), ToString::to_string);
                self.fail_round(RoundFailure::Secure(reason), now);
            }
            _ => {}
        }
    }

    /// Folds the mean of the survivors' updates (uniform weights) and commits the round.
    fn finish_secure(&mut self, now: Instant) {
        let Scheduler::Secure(Rounds { aggregator, active: Some(active), .. }, secure) = &mut self.scheduler else {
            return;
        };
        let Some(mut secure) = secure.session.take() else { return };
        let Some(output) = secure.server.take_output() else { return };
        let excluded: Vec<u64> = secure.server.excluded().collect();
        let flagged: Vec<u64> = secure.server.flagged().collect();
        if !excluded.is_empty() || !flagged.is_empty() {
            tracing::warn!(
                round = self.round,
                ?excluded,
                ?flagged,
                "secure aggregation: clients dropped for bad keys or caught revealing wrong shares"
            );
        }
        let survivors: Vec<ConnectionId> =
            output.survivors.iter().filter_map(|id| secure.connections.get(id).copied()).collect();
        let (sum, moments) = match output.decode(secure.server.setup(), self.params.values.len()) {
            Ok(decoded) => decoded,
            Err(error) => return self.fail_round(RoundFailure::Secure(error.to_string()), now),
        };
        if !moments.is_empty() {
            self.pipeline.add_secure_moments(moments, output.survivors.len());
        }
        let n = survivors.len().max(1) as f32;
        let mean = ParameterVector {
            format_version: self.params.format_version,
            fingerprint: self.params.fingerprint,
            values: sum.into_iter().map(|v| v / n).collect(),
        };
        if let Err(error) = aggregator.fold_mean(&mean, survivors.len() as u64, survivors.len()) {
            return self.fail_round(RoundFailure::Aggregation(error), now);
        }
        tracing::info!(round = self.round, survivors = survivors.len(), "secure sum unmasked");
        for answer in active.answers.values_mut() {
            *answer = Answer::Gone;
        }
        for conn in &survivors {
            active.answers.insert(*conn, Answer::Accepted);
        }
        self.end_round(now);
    }

    /// Ends the running round without a model; the next starts after the usual pause (at
    /// least a second, so that a session failing at once does not spin).
    pub(super) fn fail_round(&mut self, reason: RoundFailure, now: Instant) {
        let Some(active) = self.scheduler.take_active() else { return };
        self.events.push_back(CoordinatorEvent::RoundFailed { round: active.number, reason });
        if let Some(rounds) = self.scheduler.rounds_mut() {
            rounds.next_round_at = Some(now + self.config.round_interval.max(super::rounds::FAILED_ROUND_PAUSE));
        }
    }
}
