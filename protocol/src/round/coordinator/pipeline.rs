//! The update pipeline every round mode shares: which updates are accepted and how much
//! they weigh, who is sampled, how each round is clipped, noised and released under
//! differential privacy, and the privacy spent. [`build`] makes it, with the mode's
//! scheduler, from the coordinator's configuration: the one place those come from.

use rand_core::SeedableRng;

use super::scheduler::{AsyncState, Rounds, Scheduler, SecureRounds};
use crate::aggregate::{DpRelease, Folded};
use crate::checkpoint::Checkpoint;
use crate::model::FeatureMoments;
use crate::privacy::{AdaptiveClip, ClipBound, NoiseKey, RdpAccountant};
use crate::round::config::{NoisePlacement, PrivacyConfig};
use crate::round::events::UpdateRefusal;
use crate::round::{ConfigError, ConnectionId, CoordinatorConfig, Hierarchy, Mode, sampling};
use crate::wire::{CohortPrivacy, LocalMetrics, Update};

/// The scheduler of `config.mode` and the pipeline its updates go through, resuming what
/// `checkpoint` holds (spent privacy, the adaptive clip). `config` must be valid.
pub(super) fn build(config: &CoordinatorConfig, checkpoint: &Checkpoint) -> Result<(Scheduler, Pipeline), ConfigError> {
    let mut strategy = config.aggregation.clone();
    // The key of central noise; the round's clip and deviation come with each release.
    strategy.noise_key = config.noise_key.unwrap_or_default();
    let scheduler = match (config.mode, config.secure) {
        (Mode::Async { buffer_size, max_staleness }, _) => {
            let buffer = strategy
                .build_buffered(buffer_size, max_staleness)
                .ok_or(ConfigError::AsyncRobust(config.aggregation.kind))?;
            Scheduler::Async(Box::new(AsyncState::new(buffer)))
        }
        (Mode::Sync, None) => Scheduler::Sync(Rounds::new(strategy.build())),
        (Mode::Sync, Some(secure)) => {
            Scheduler::Secure(Rounds::new(strategy.build()), Box::new(SecureRounds::new(secure)))
        }
    };
    let root = matches!(config.hierarchy, Hierarchy::Root { .. });
    let privacy = match (config.privacy, config.noise_key) {
        (Some(settings), Some(key)) => Some(Privacy::new(settings, key, config.sample_fraction, root, checkpoint)?),
        (Some(_), None) => {
            return Err(ConfigError::Incompatible("differential privacy needs the coordinator's secret noise key"));
        }
        (None, _) => None,
    };
    let edge_privacy = match (config.hierarchy.edge_privacy(), config.noise_key) {
        (Some(settings), Some(key)) => Some(EdgePrivacy { settings, key }),
        (Some(_), None) => {
            return Err(ConfigError::Incompatible("sampling for the root's differential privacy needs a secret key"));
        }
        (None, _) => None,
    };
    // Feature statistics of an HBP model: resumed from the checkpoint (also when this run takes
    // no more of them), added to where clients send them.
    let inputs = checkpoint.spec.hbp().map(|hbp| hbp.inputs);
    let resumed = checkpoint.feature_moments.clone().filter(|m| Some(m.features()) == inputs);
    let takes_moments = config.takes_feature_moments() && inputs.is_some();
    let moments = match inputs {
        Some(inputs) if takes_moments => Some(resumed.unwrap_or_else(|| FeatureMoments::new(inputs))),
        _ => resumed,
    };
    // An edge forwards the statistics of each round's rows with its cohort.
    let round_moments = inputs.filter(|_| takes_moments && config.hierarchy.is_edge()).map(FeatureMoments::new);
    Ok((
        scheduler,
        Pipeline { sample_cap: config.sample_cap(), privacy, edge_privacy, moments, round_moments, takes_moments },
    ))
}

/// What every mode applies to an update and to a round (see the module docs).
#[derive(Debug)]
pub(super) struct Pipeline {
    sample_cap: u64,
    privacy: Option<Privacy>,
    /// At an edge aggregator, the root's differential privacy it samples and clips for.
    edge_privacy: Option<EdgePrivacy>,
    /// The fleet's feature statistics so far.
    moments: Option<FeatureMoments>,
    /// At an edge aggregator: the statistics the running round's updates brought, sent up
    /// with the cohort's aggregate.
    round_moments: Option<FeatureMoments>,
    /// Whether updates may bring more (see `CoordinatorConfig::takes_feature_moments`).
    takes_moments: bool,
}

/// Client-level differential privacy in force.
#[derive(Debug)]
struct Privacy {
    settings: PrivacyConfig,
    key: NoiseKey,
    /// The Poisson sampling rate q, the one the accountant is given.
    sample_rate: f64,
    /// At the root of a tree: the aggregators sample at q and clip (as [`EdgePrivacy`]); the
    /// root asks every aggregator, adds the noise to the sum of their cohorts and divides by
    /// the sum of their expected sizes.
    root: bool,
    accountant: RdpAccountant,
    /// The clip tracking a quantile of the update norms, when adaptive clipping is on.
    adaptive: Option<AdaptiveClip>,
    /// Accepted updates of the running round, and how many of them fit under its clip.
    reported: u64,
    below: u64,
}

impl Privacy {
    fn new(
        settings: PrivacyConfig,
        key: NoiseKey,
        sample_rate: f64,
        root: bool,
        checkpoint: &Checkpoint,
    ) -> Result<Self, ConfigError> {
        // ε only grows: a restarted coordinator goes on from the spent privacy it checkpointed.
        let accountant = checkpoint.accountant.clone().unwrap_or_default();
        let adaptive = match settings.adaptive {
            None => None,
            Some(adaptive) => Some(match &checkpoint.adaptive_clip {
                Some(resumed) => resumed.clone(),
                None => {
                    let initial = ClipBound::new(settings.clip).map_err(|_| ConfigError::Privacy)?;
                    AdaptiveClip::new(initial, adaptive.target_quantile, adaptive.learning_rate, 0.0, 1.0)
                        .map_err(|_| ConfigError::Privacy)?
                }
            }),
        };
        Ok(Self { settings, key, sample_rate, root, accountant, adaptive, reported: 0, below: 0 })
    }

    /// The clip and deltas' noise of a round of `expected` clients. With adaptive clipping
    /// the clip count is noised too (σ_b = max(m/20, z), Andrew et al.'s m/20 kept above z
    /// so that small cohorts stay accountable) and the deltas get the z_Δ that keeps the
    /// accounted multiplier at z.
    fn release(&mut self, expected: f64) -> DpRelease {
        let z = self.settings.noise_multiplier;
        let (clip, z_delta) = match &mut self.adaptive {
            Some(adaptive) => {
                let count_noise = if z == 0.0 { 0.0 } else { (expected / 20.0).max(z) };
                if let Err(error) = adaptive.set_cohort(expected, count_noise) {
                    tracing::warn!(%error, expected, "adaptive clip: cohort not set; the previous one is kept");
                }
                let z_delta = adaptive.update_noise_multiplier(z).unwrap_or(z);
                (f64::from(adaptive.clip().get()), z_delta)
            }
            None => (f64::from(self.settings.clip), z),
        };
        self.reported = 0;
        self.below = 0;
        match self.settings.placement {
            // The aggregators clipped each update; their cohorts bring the denominator.
            NoisePlacement::Central if self.root => {
                DpRelease { denominator: None, clip_norm: None, noise_std: Some(z_delta * clip) }
            }
            NoisePlacement::Central => {
                DpRelease { denominator: Some(expected), clip_norm: Some(clip), noise_std: Some(z_delta * clip) }
            }
            // The clients clipped and noised; the coordinator only takes the public denominator.
            NoisePlacement::Distributed => DpRelease { denominator: Some(expected), clip_norm: None, noise_std: None },
        }
    }

    /// Accounts one release and steps the adaptive clip; ε spent so far at δ.
    fn spend(&mut self, round: u64) -> Option<f64> {
        if let Some(adaptive) = &mut self.adaptive {
            let mut rng = chacha20::ChaCha20Rng::from_seed(self.key.derive(b"adaptive clip count", round));
            match adaptive.update(self.below, self.reported, &mut rng) {
                Ok(clip) => tracing::debug!(round, clip = clip.get(), "adaptive clip stepped"),
                Err(error) => tracing::warn!(round, %error, "adaptive clip not stepped"),
            }
        }
        self.accountant.step(self.settings.noise_multiplier, self.sample_rate).ok()?;
        self.accountant.epsilon(self.settings.delta).ok().map(|(epsilon, _)| epsilon)
    }
}

/// An edge aggregator's share of its root's differential privacy: Poisson sampling at the
/// root's rate on its own secret coins, every update clipped to the root's bound and
/// weighing one, the cohort's expected size sent with its sum. It adds no noise and
/// accounts nothing: the root does both, once, for the whole tree.
#[derive(Debug)]
struct EdgePrivacy {
    settings: CohortPrivacy,
    key: NoiseKey,
}

impl Pipeline {
    /// The one routine every mode accepts an update's claims with: counters consistent and no
    /// more samples than the cap (per client behind it: `participants`, more than 1 for an
    /// edge aggregator's cohort). Returns the weight it folds with: 1 under differential
    /// privacy (every clipped update weighs the same), else its samples.
    pub(super) fn accept(&self, update: &Update, participants: u64) -> Result<u64, UpdateRefusal> {
        let LocalMetrics { samples, prequential_errors: errors } = update.metrics;
        if !update.metrics.is_consistent() {
            return Err(UpdateRefusal::InconsistentMetrics { errors, samples });
        }
        let cap = self.sample_cap.saturating_mul(participants.max(1));
        if samples > cap {
            return Err(UpdateRefusal::SamplesOverCap { claimed: samples, cap });
        }
        if let Some(moments) = &update.moments {
            let Some(total) = self.moments.as_ref().filter(|_| self.takes_moments) else {
                return Err(UpdateRefusal::Moments("this coordinator takes none".into()));
            };
            moments.check(total.features()).map_err(|e| UpdateRefusal::Moments(e.to_string()))?;
            if moments.count > samples {
                let count = moments.count;
                return Err(UpdateRefusal::Moments(format!("{count} rows, more than the {samples} samples claimed")));
            }
        }
        // An edge's cohort of clipped updates weighs one per client behind it.
        Ok(if self.privacy.is_some() || self.edge_privacy.is_some() { participants.max(1) } else { samples })
    }

    /// Notes what folding an accepted update found (for the adaptive clip's count) and adds
    /// its feature statistics (checked by [`Pipeline::accept`]) to the fleet's.
    pub(super) fn folded(&mut self, folded: &Folded, moments: Option<&FeatureMoments>) {
        if let Some(privacy) = &mut self.privacy {
            privacy.reported += 1;
            privacy.below += u64::from(!folded.clipped);
        }
        if let Some(moments) = moments {
            self.add_moments(moments);
        }
    }

    /// Adds checked statistics to the fleet's and, at an edge, to the running round's.
    fn add_moments(&mut self, moments: &FeatureMoments) {
        if let (Some(total), true) = (&mut self.moments, self.takes_moments)
            && let Err(error) = total.merge(moments)
        {
            tracing::warn!(%error, "feature statistics not added");
        }
        // Checked like the total's (by `accept`, or decoded for these features): a merge
        // cannot fail where that one did not.
        if let Some(round) = &mut self.round_moments {
            let _ = round.merge(moments);
        }
    }

    /// Adds the statistics unmasked with a secure round's sum over `survivors` clients (their
    /// words past the delta). A sum that does not decode, or claims more rows than the
    /// survivors may report, is left out with a warning: the round's model still commits.
    pub(super) fn add_secure_moments(&mut self, words: &[u32], survivors: usize) {
        let Some(features) = self.moments.as_ref().filter(|_| self.takes_moments).map(FeatureMoments::features) else {
            return;
        };
        let moments = match FeatureMoments::from_secure_sum(words, features, survivors) {
            Ok(moments) => moments,
            Err(error) => return tracing::warn!(%error, survivors, "secure feature statistics left out"),
        };
        let most = self.sample_cap.saturating_mul(survivors as u64);
        if moments.count > most {
            let count = moments.count;
            return tracing::warn!(count, most, "secure feature statistics claim more rows than the cap; left out");
        }
        self.add_moments(&moments);
    }

    /// At an edge aggregator: the statistics of the round's rows so far (none if no update
    /// brought any), starting the next round's from zero.
    pub(super) fn take_round_moments(&mut self) -> Option<FeatureMoments> {
        let round = self.round_moments.as_mut()?;
        let taken = std::mem::replace(round, FeatureMoments::new(round.features()));
        (taken.count > 0).then_some(taken)
    }

    /// The clients of round `round` among `candidates` (sorted, distinct), and how the
    /// round is released. Under differential privacy: Poisson sampling at exactly q with
    /// secret coins, the mean over the public expected cohort q·N; otherwise `count` of
    /// them drawn reproducibly from the public `seed`.
    pub(super) fn sample(
        &mut self,
        candidates: &[ConnectionId],
        count: usize,
        seed: u64,
        round: u64,
    ) -> (Vec<ConnectionId>, Option<DpRelease>) {
        // A new round: what an abandoned one brought does not go up with this one.
        self.take_round_moments();
        if let Some(edge) = &self.edge_privacy {
            let CohortPrivacy { clip, sample_rate } = edge.settings;
            let expected = sample_rate * candidates.len() as f64;
            let release = DpRelease { denominator: Some(expected), clip_norm: Some(f64::from(clip)), noise_std: None };
            return (sampling::poisson(candidates, sample_rate, &edge.key, round), Some(release));
        }
        match &mut self.privacy {
            // The root asks every aggregator (`candidates`); they sample their clients.
            Some(privacy) if privacy.root => (candidates.to_vec(), Some(privacy.release(1.0))),
            Some(privacy) => {
                let expected = (privacy.sample_rate * candidates.len() as f64).max(1.0);
                let release = privacy.release(expected);
                (sampling::poisson(candidates, privacy.sample_rate, &privacy.key, round), Some(release))
            }
            None => (sampling::sample(candidates, count, seed, round), None),
        }
    }

    /// Round `round` was released: accounts it; ε spent so far, under differential privacy.
    pub(super) fn spend(&mut self, round: u64) -> Option<f64> {
        self.privacy.as_mut()?.spend(round)
    }

    /// What the checkpoint keeps of privacy: the accountant and the adaptive clip.
    pub(super) fn durable(&self) -> (Option<RdpAccountant>, Option<AdaptiveClip>, Option<FeatureMoments>) {
        let moments = self.moments.clone().filter(|m| m.count > 0);
        match &self.privacy {
            Some(privacy) => (Some(privacy.accountant.clone()), privacy.adaptive.clone(), moments),
            None => (None, None, moments),
        }
    }
}
