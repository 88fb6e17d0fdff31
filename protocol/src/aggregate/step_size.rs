//! How large the server's step is each round: `x ← x + η_s · g · d`, where `g` is the factor
//! chosen here and `d` the server optimiser's step.
//!
//! - [`StepSize::Fixed`]: `g = 1` (plain FedAvg with `--server-lr`).
//! - [`StepSize::Participants`]: `g = n`, the number of client updates in the step: the
//!   sample-weighted mean times `n` moves the model as far as all the clients' local steps
//!   together, which is what one learner on all their samples would have done. An online
//!   fleet whose devices each see a trickle of samples needs it to learn as fast as one
//!   centralised learner; without it the global model moves `n` times slower.
//! - [`StepSize::FedExp`]: `g = max(1, Σ pᵢ‖Δᵢ‖² / (2(‖Δ̄‖² + ε)))` (FedExP, Jhunjhunwala et
//!   al., ICLR 2023, with sample weights `pᵢ`): large when the clients' updates point in
//!   different directions (their mean is short against them), 1 when they agree. It needs
//!   each update's norm, which the coordinator computes when it sees the updates; under
//!   secure aggregation it sees only the sum, so the combination is refused there.

use serde::{Deserialize, Serialize};

/// ε of FedExP's denominator: keeps the factor finite when the mean update is zero.
pub const FEDEXP_EPSILON: f64 = 1e-12;

/// How the server's step size is set each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepSize {
    /// `η_s` as given.
    Fixed,
    /// `η_s` times the number of updates in the step.
    #[default]
    Participants,
    /// `η_s` times FedExP's adaptive extrapolation factor.
    #[serde(rename = "fedexp")]
    FedExp,
}

impl StepSize {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Participants => "participants",
            Self::FedExp => "fedexp",
        }
    }

    /// The factor `g` for a step over `participants` updates whose weighted mean of squared
    /// norms is `mean_sq_norm` (`Σ pᵢ‖Δᵢ‖²`, `Σ pᵢ = 1`) and whose weighted mean is `mean`.
    pub fn factor(self, participants: usize, mean_sq_norm: f64, mean: &[f64]) -> f64 {
        match self {
            Self::Fixed => 1.0,
            Self::Participants => participants.max(1) as f64,
            Self::FedExp => fedexp(mean_sq_norm, mean),
        }
    }
}

impl std::str::FromStr for StepSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Self::Fixed, Self::Participants, Self::FedExp]
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| format!("unknown server step {text:?} (one of fixed, participants, fedexp)"))
    }
}

impl std::fmt::Display for StepSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// FedExP's factor `max(1, mean_sq_norm / (2(‖mean‖² + ε)))`; 1 when it is not finite.
pub fn fedexp(mean_sq_norm: f64, mean: &[f64]) -> f64 {
    let norm: f64 = mean.iter().map(|v| v * v).sum();
    let factor = mean_sq_norm / (2.0 * (norm + FEDEXP_EPSILON));
    if factor.is_finite() { factor.max(1.0) } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedexp_on_hand_worked_numbers() {
        // Two clients, equal weights: Δ₁ = (1, 0), Δ₂ = (0, 1). Σ pᵢ‖Δᵢ‖² = 1, Δ̄ = (½, ½),
        // ‖Δ̄‖² = ½: factor 1 / (2·½) = 1 (up to ε).
        let factor = fedexp(1.0, &[0.5, 0.5]);
        assert!((factor - 1.0).abs() < 1e-9, "{factor}");
        // Four orthogonal unit updates: ‖Δ̄‖² = 4·(¼)² = ¼: factor 1 / (2·¼) = 2.
        assert!((fedexp(1.0, &[0.25; 4]) - 2.0).abs() < 1e-9);
        // Δ₁ = (3, 0), Δ₂ = (−1, 0) with weights ½: Σ pᵢ‖Δᵢ‖² = (9 + 1)/2 = 5, Δ̄ = (1, 0):
        // factor 5 / 2 = 2.5.
        assert!((fedexp(5.0, &[1.0, 0.0]) - 2.5).abs() < 1e-9);
        // Identical updates: factor ½, floored at 1; a zero mean stays finite.
        assert_eq!(fedexp(1.0, &[1.0]), 1.0);
        assert!(fedexp(1.0, &[0.0, 0.0]).is_finite());
        assert_eq!(fedexp(f64::NAN, &[1.0]), 1.0);
    }

    #[test]
    fn participants_and_fixed() {
        assert_eq!(StepSize::Participants.factor(20, 0.0, &[]), 20.0);
        assert_eq!(StepSize::Participants.factor(0, 0.0, &[]), 1.0);
        assert_eq!(StepSize::Fixed.factor(20, 5.0, &[1.0]), 1.0);
        assert!((StepSize::FedExp.factor(20, 5.0, &[1.0, 0.0]) - 2.5).abs() < 1e-9);
    }
}
