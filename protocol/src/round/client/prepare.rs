//! Turning a learner's delta into what goes on the wire, as the coordinator's
//! [`UpdateRules`] say: clip, add noise (distributed DP), then compress, or mask it in the
//! round's secure-aggregation session.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;

use super::SubmitError;
use crate::compress::{Compression, Compressor};
use crate::model::FeatureMoments;
use crate::privacy::{ClipBound, add_gaussian, clip_l2};
use crate::secagg::{self, ClientPhase, SecAggClient, SessionSetup};
use crate::wire::{ClientMessage, UpdateRules};

/// The client's state for preparing updates: rules, compressor (with its error-feedback
/// residual), the randomness of noise and rounding, and the current secure session.
#[derive(Debug)]
pub(super) struct Preparer {
    pub(super) rules: UpdateRules,
    compressor: Option<Compressor>,
    rng: ChaCha20Rng,
    secure: Option<SecureRound>,
    /// A delta prepared for a round whose session has not been opened yet (the learner
    /// answered before the coordinator's `Setup` arrived).
    early: Option<(u64, Masked)>,
}

/// What a client masks: its delta, and the feature statistics of its rows where the session
/// takes them.
#[derive(Debug)]
pub(super) struct Masked {
    pub(super) values: Vec<f32>,
    pub(super) moments: Option<FeatureMoments>,
}

/// One round's secure-aggregation session on the client side.
#[derive(Debug)]
struct SecureRound {
    round: u64,
    client: SecAggClient,
    /// The prepared delta, waiting for the session to reach its masked-input phase.
    pending: Option<Masked>,
}

impl Preparer {
    /// Default rules (plain updates), randomness from `seed`.
    pub(super) fn new(seed: [u8; 32]) -> Self {
        Self {
            rules: UpdateRules::default(),
            compressor: None,
            rng: ChaCha20Rng::from_seed(seed),
            secure: None,
            early: None,
        }
    }

    /// Adopts new rules (a compressor's residual restarts).
    pub(super) fn set_rules(&mut self, rules: UpdateRules) {
        self.compressor = match rules.compression {
            Compression::None => None,
            other => Some(Compressor::new(other)),
        };
        self.rules = rules;
    }

    /// Clips and noises `values` in place, as the rules say.
    pub(super) fn privatise(&mut self, values: &mut [f32]) -> Result<(), SubmitError> {
        if let Some(clip) = self.rules.clip_norm {
            clip_l2(values, ClipBound::new(clip)?);
        }
        if let Some(std) = self.rules.noise_std {
            add_gaussian(values, f64::from(std), &mut self.rng)?;
        }
        Ok(())
    }

    /// The compressor, when the rules ask for one.
    pub(super) fn compress(&mut self, values: &[f32]) -> Option<Result<crate::compress::CompressedDelta, SubmitError>> {
        let compressor = self.compressor.as_mut()?;
        Some(compressor.compress(values, &mut self.rng).map_err(SubmitError::from))
    }

    /// Opens `round`'s secure session as client `id`; returns the keys to advertise.
    pub(super) fn open_session(
        &mut self,
        round: u64,
        id: u64,
        setup: SessionSetup,
    ) -> Result<ClientMessage, secagg::SecAggError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand_core::Rng::fill_bytes(&mut self.rng, seed.as_mut_slice());
        let mut client = SecAggClient::new(id, setup, *seed)?;
        let keys = client.advertise_keys()?;
        let pending = self.early.take().filter(|(r, _)| *r == round).map(|(_, masked)| masked);
        self.secure = Some(SecureRound { round, client, pending });
        Ok(ClientMessage::SecAgg { round, message: secagg::ClientMessage::AdvertiseKeys(keys) })
    }

    /// Handles a server message of the open session; returns what to send (if anything).
    pub(super) fn handle_session(
        &mut self,
        round: u64,
        message: &secagg::ServerMessage,
    ) -> Result<Vec<ClientMessage>, secagg::SecAggError> {
        let Some(session) = self.secure.as_mut().filter(|s| s.round == round) else {
            return Ok(Vec::new()); // A session this client is not (or no longer) part of.
        };
        let mut out = Vec::new();
        if let Some(reply) = session.client.handle(message)? {
            out.push(ClientMessage::SecAgg { round, message: reply });
        }
        out.extend(self.flush_masked()?);
        Ok(out)
    }

    /// Hands the prepared delta to `round`'s session; returns the masked input once the
    /// session is ready for it. Before the session opens, the delta waits for it.
    pub(super) fn submit_secure(
        &mut self,
        round: u64,
        masked: Masked,
    ) -> Result<Vec<ClientMessage>, secagg::SecAggError> {
        let Some(session) = self.secure.as_mut().filter(|s| s.round == round) else {
            self.early = Some((round, masked));
            return Ok(Vec::new());
        };
        session.pending = Some(masked);
        Ok(self.flush_masked()?.into_iter().collect())
    }

    /// The masked input, when a delta is pending and the session has reached that phase.
    fn flush_masked(&mut self) -> Result<Option<ClientMessage>, secagg::SecAggError> {
        let Some(session) = self.secure.as_mut() else { return Ok(None) };
        if session.client.phase() != ClientPhase::ReadyForInput {
            return Ok(None);
        }
        let Some(Masked { values, moments }) = session.pending.take() else { return Ok(None) };
        // Words past the delta: the session takes the statistics of the client's rows, in
        // their masked encoding; a client with none (or none that fit) masks zeros there.
        let extra = session.client.setup().vector_len.saturating_sub(values.len());
        let trailing = match moments.map(|m| m.to_secure_words()) {
            Some(Ok(words)) if words.len() == extra => words,
            Some(Err(error)) => {
                tracing::warn!(%error, "feature statistics left out of the masked input");
                vec![0; extra]
            }
            _ => vec![0; extra],
        };
        let masked = session.client.masked_update(&values, 1.0, &trailing)?;
        Ok(Some(ClientMessage::SecAgg { round: session.round, message: secagg::ClientMessage::MaskedInput(masked) }))
    }
}
