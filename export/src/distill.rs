//! Distillation: a small HBP student learns the teacher's soft labels on unlabelled rows.
//!
//! The teacher (the served global model, [`Network`]) labels every row with its mixture's
//! probabilities `p`, softened at temperature `T`: `q ∝ p^(1/T)` (`T = 1` keeps `p`; larger
//! `T` spreads the mass over the runner-up classes). The student, an HBP network of its own
//! shape, reads the rows through the teacher's standardisation and takes its usual HBP steps
//! (cross-entropy of every head, hedge on α) with `q` as the target: HBP's loss and analytic
//! gradient (`p_student − target`) hold for soft targets as for one-hot ones. Rows are
//! visited in a seeded random order, `epochs` times.

use burn::tensor::{Tensor, TensorData};
use flotilla_learner::hbp::{Batch, HbpConfig, HbpModel, ModelError};
use flotilla_learner::network::Network;
use flotilla_protocol::params::ParameterVector;
use rand_mt::Mt64;

/// How a student is trained.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// The student's shape and hyper-parameters (inputs and classes must be the teacher's).
    pub student: HbpConfig,
    /// Softening temperature `T > 0` of the teacher's probabilities.
    pub temperature: f32,
    /// Passes over the rows.
    pub epochs: usize,
    /// Seed of the visiting order.
    pub seed: u64,
}

/// Why distillation could not run.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// The student does not read the teacher's features or predict its classes.
    #[error(
        "the student has {student_inputs} inputs and {student_classes} classes, the teacher {inputs} and {classes}"
    )]
    Shape {
        /// Student inputs.
        student_inputs: usize,
        /// Student classes.
        student_classes: usize,
        /// Teacher inputs.
        inputs: usize,
        /// Teacher classes.
        classes: usize,
    },
    /// The temperature is not a positive number.
    #[error("the temperature must be a positive number, got {0}")]
    Temperature(f32),
    /// No rows to learn from.
    #[error("no rows to distil on")]
    NoRows,
    /// The student could not be built or read back.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// `p^(1/T)` normalised, row by row (`classes` a row).
pub fn soften(probabilities: &[f32], classes: usize, temperature: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(probabilities.len());
    for row in probabilities.chunks_exact(classes.max(1)) {
        let powered: Vec<f32> = row.iter().map(|&p| p.max(0.0).powf(1.0 / temperature)).collect();
        let total: f32 = powered.iter().sum();
        if total > 0.0 && total.is_finite() {
            out.extend(powered.iter().map(|p| p / total));
        } else {
            out.extend_from_slice(row);
        }
    }
    out
}

/// Trains a student on `rows` (`b × inputs`, raw features) labelled by `teacher`, on burn's
/// CPU backend (a small network learns fastest there); calls `progress(epoch, epochs)` after
/// each pass. Returns the student's parameters (its input stage is the teacher's).
pub fn distill(
    teacher: &Network,
    rows: &[f32],
    config: &DistillConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<ParameterVector, DistillError> {
    let device = &burn::tensor::Device::flex();
    let (d, c) = (teacher.inputs, teacher.classes);
    if config.student.inputs != d || config.student.classes != c {
        return Err(DistillError::Shape {
            student_inputs: config.student.inputs,
            student_classes: config.student.classes,
            inputs: d,
            classes: c,
        });
    }
    if !(config.temperature > 0.0 && config.temperature.is_finite()) {
        return Err(DistillError::Temperature(config.temperature));
    }
    let n = rows.len().checked_div(d).unwrap_or(0);
    if n == 0 {
        return Err(DistillError::NoRows);
    }
    let targets = soften(&teacher.forward(rows), c, config.temperature);
    let inputs = teacher.input_stage(rows);
    let mut student = HbpModel::new(config.student.clone(), device)?;
    let mut rng = Mt64::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..config.epochs {
        // Fisher–Yates with the seeded generator.
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        for &row in &order {
            let features = inputs[row * d..(row + 1) * d].to_vec();
            let target = targets[row * c..(row + 1) * c].to_vec();
            let batch = Batch {
                features: Tensor::from_data(TensorData::new(features, [1, d]), device),
                targets: Tensor::from_data(TensorData::new(target, [1, c]), device),
            };
            student.learn_proba(batch, None);
        }
        progress(epoch + 1, config.epochs);
    }
    Ok(student.to_parameters()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softening_keeps_the_order_and_flattens_with_temperature() {
        let p = [0.7, 0.2, 0.1];
        assert_eq!(soften(&p, 3, 1.0), p.to_vec());
        let soft = soften(&p, 3, 4.0);
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(soft[0] > soft[1] && soft[1] > soft[2]);
        assert!(soft[0] < 0.7 && soft[2] > 0.1);
    }
}
