//! The passes a round makes over every model and update (finiteness, norm, the weighted sum,
//! secure aggregation's fixed-point encoding and masks, the benchmark workload's noise), written once as plain loops that [`pulp`] compiles for
//! the widest instruction set the machine has (AVX-512, AVX2, or the x86-64 baseline) and
//! picks at run time, so one portable binary vectorises them fully (64-bit multiplies, f32 →
//! f64 conversions and wide compares need AVX2 or AVX-512). What that buys depends on the
//! pass: the workload's noise (compute-bound) runs 4× faster on AVX-512 than on the
//! baseline; the other passes gain only while their vectors are in cache (at 1M values they
//! wait on memory either way).
//!
//! Results are the same bits on every instruction set: each loop's operations are the scalar
//! ones, element by element (no fused multiply-add, which Rust never contracts), and sums run
//! in a fixed number of lanes whatever the vector width.

use pulp::{Arch, Simd, WithSimd};

/// Lanes of the f64 sum of squares: fixed, so the result does not depend on the vector width.
const SUM_LANES: usize = 8;

/// Values whose finiteness is tested together (without branching, which vectorises).
const FINITE_BLOCK: usize = 64;

/// The bits of an f32 less its sign, and those of +∞: NaNs and infinities are the magnitudes
/// at or above it.
const MAGNITUDE: u32 = 0x7fff_ffff;
const INFINITY_BITS: u32 = 0x7f80_0000;

/// Values a conversion ([`map`]) writes to the stack before they are appended to its output
/// in one copy, so the output is written once and never zeroed first.
const MAP_BLOCK: usize = 64;

/// The index of the first value that is NaN or infinite, if any.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    Arch::new().dispatch(FirstNonFinite(values))
}

/// `Σ values²` in f64, summed in [`SUM_LANES`] independent lanes (one running sum would be a
/// chain of dependent additions).
pub fn sum_of_squares(values: &[f32]) -> f64 {
    Arch::new().dispatch(SumOfSquares(values))
}

/// The L2 norm of `values`, accumulated in f64.
pub fn l2_norm(values: &[f32]) -> f64 {
    sum_of_squares(values).sqrt()
}

/// `sum[i] += weight · values[i]` in f64 (over the shorter of the two).
pub fn add_weighted(sum: &mut [f64], values: &[f32], weight: f64) {
    combine(sum, values, move |sum: f64, value: f32| sum + weight * f64::from(value));
}

/// `[f(start), f(start + 1), …]`, `len` values (wrapping): the benchmark workload's noise,
/// whose `f` is a splitmix64 round ([`crate::workload`]). Written once, not zeroed first.
pub(crate) fn from_counter(len: usize, start: u64, f: impl Fn(u64) -> f32 + Copy) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    Arch::new().dispatch(FromCounter { out: &mut out, len, start, f });
    out
}

/// `[f(v) for v in values]`, for element-wise conversions whose arithmetic the x86-64
/// baseline cannot vectorise well (secure aggregation's fixed-point encoding: f64 products,
/// clipping and rounding, 2 lanes on the baseline, 8 on AVX-512). Converted [`MAP_BLOCK`]
/// values at a time into a stack array, appended with one copy: `Vec::extend` from a mapped
/// slice was not inlined into the dispatched function (it ran on the baseline), and zeroing
/// the output before writing it cost a pass over fresh memory.
pub(crate) fn map<T: Copy, U: Copy + Default>(values: &[T], f: impl Fn(T) -> U + Copy) -> Vec<U> {
    let mut out = Vec::new();
    Arch::new().dispatch(Map { out: &mut out, values, f });
    out
}

/// `acc[i] = f(acc[i], other[i])` (over the shorter of the two), for element-wise folds
/// whose words the x86-64 baseline adds 4 at a time and AVX-512 16: the aggregators'
/// weighted sum ([`add_weighted`]) and secure aggregation's masks, added to an input by each
/// client and to the running sum by the server.
pub(crate) fn combine<A: Copy, B: Copy>(acc: &mut [A], other: &[B], f: impl Fn(A, B) -> A + Copy) {
    Arch::new().dispatch(Combine { acc, other, f });
}

struct FirstNonFinite<'a>(&'a [f32]);

impl WithSimd for FirstNonFinite<'_> {
    type Output = Option<usize>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> Option<usize> {
        let values = self.0;
        let (blocks, tail) = values.as_chunks::<FINITE_BLOCK>();
        // A value is finite when its magnitude bits are below the exponent's all-ones: one
        // unsigned maximum per block (which vectorises fully; a fold of `is_finite` over bools
        // took a cycle per value).
        let all_finite =
            |block: &[f32]| block.iter().fold(0u32, |max, v| max.max(v.to_bits() & MAGNITUDE)) < INFINITY_BITS;
        let scan = |start: usize, block: &[f32]| block.iter().position(|v| !v.is_finite()).map(|at| start + at);
        blocks
            .iter()
            .position(|block| !all_finite(block.as_slice()))
            .and_then(|index| scan(index * FINITE_BLOCK, &blocks[index]))
            .or_else(|| scan(blocks.len() * FINITE_BLOCK, tail))
    }
}

struct SumOfSquares<'a>(&'a [f32]);

impl WithSimd for SumOfSquares<'_> {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) -> f64 {
        let (chunks, rest) = self.0.as_chunks::<SUM_LANES>();
        let mut lanes = [0.0f64; SUM_LANES];
        for chunk in chunks {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane += f64::from(*v) * f64::from(*v);
            }
        }
        let tail: f64 = rest.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
        lanes.iter().sum::<f64>() + tail
    }
}

struct FromCounter<'a, F> {
    out: &'a mut Vec<f32>,
    len: usize,
    start: u64,
    f: F,
}

impl<F: Fn(u64) -> f32 + Copy> WithSimd for FromCounter<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let FromCounter { out, len, start, f } = self;
        out.extend((0..len as u64).map(|j| f(start.wrapping_add(j))));
    }
}

struct Map<'a, T, U, F> {
    out: &'a mut Vec<U>,
    values: &'a [T],
    f: F,
}

impl<T: Copy, U: Copy + Default, F: Fn(T) -> U + Copy> WithSimd for Map<'_, T, U, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Map { out, values, f } = self;
        out.reserve_exact(values.len());
        let (blocks, tail) = values.as_chunks::<MAP_BLOCK>();
        for block in blocks {
            let mut converted = [U::default(); MAP_BLOCK];
            for (slot, &value) in converted.iter_mut().zip(block) {
                *slot = f(value);
            }
            out.extend_from_slice(&converted);
        }
        for &value in tail {
            out.push(f(value));
        }
    }
}

struct Combine<'a, A, B, F> {
    acc: &'a mut [A],
    other: &'a [B],
    f: F,
}

impl<A: Copy, B: Copy, F: Fn(A, B) -> A + Copy> WithSimd for Combine<'_, A, B, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Combine { acc, other, f } = self;
        for (a, &b) in acc.iter_mut().zip(other) {
            *a = f(*a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0).collect()
    }

    /// Each kernel on every instruction set this machine has gives the scalar loop's bits.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let mut archs = vec![Arch::new(), Arch::Scalar];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        archs.extend(pulp::x86::V3::try_new().map(Arch::V3));
        for len in [0, 1, 7, 8, 63, 64, 65, 1000, 4099] {
            let v = values(len);
            let mut expected_sum = vec![0.25; len];
            v.iter().zip(&mut expected_sum).for_each(|(v, s)| *s += 3.0 * f64::from(*v));
            for arch in &archs {
                assert_eq!(arch.dispatch(FirstNonFinite(&v)), None, "{arch:?} {len}");
                for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [len / 2, len.saturating_sub(1)].into_iter().filter(|&at| at < len) {
                        let mut w = v.clone();
                        w[at] = bad;
                        // The largest finite magnitude right before: finite, one step below ∞.
                        if at > 0 {
                            w[at - 1] = -f32::MAX;
                        }
                        assert_eq!(arch.dispatch(FirstNonFinite(&w)), Some(at), "{arch:?} {len} {bad}");
                    }
                }
                let squares = arch.dispatch(SumOfSquares(&v));
                assert_eq!(squares.to_bits(), sum_of_squares(&v).to_bits(), "{arch:?} {len}");
                let mut sum = vec![0.25; len];
                let weighted = |sum: f64, value: f32| sum + 3.0 * f64::from(value);
                arch.dispatch(Combine { acc: &mut sum, other: &v, f: weighted });
                assert_eq!(sum, expected_sum, "{arch:?} {len}");
                let mut filled = Vec::new();
                let f = |x: u64| (x >> 60) as f32;
                arch.dispatch(FromCounter { out: &mut filled, len, start: u64::MAX - 3, f });
                let expected: Vec<f32> =
                    (0..len as u64).map(|j| ((u64::MAX - 3).wrapping_add(j) >> 60) as f32).collect();
                assert_eq!(filled, expected, "{arch:?} {len}");
                let g = |x: f32| (f64::from(x) * 1.7).clamp(-6.0, 6.0).to_bits();
                let mut out = Vec::new();
                arch.dispatch(Map { out: &mut out, values: &v, f: g });
                assert_eq!(out, v.iter().map(|&x| g(x)).collect::<Vec<_>>(), "{arch:?} {len}");
                let words: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
                let bytes: Vec<[u8; 4]> = v.iter().rev().map(|x| x.to_bits().to_le_bytes()).collect();
                let add = |a: u32, b: [u8; 4]| a.wrapping_add(u32::from_le_bytes(b));
                let mut combined = words.clone();
                arch.dispatch(Combine { acc: &mut combined, other: &bytes, f: add });
                let expected: Vec<u32> = words.iter().zip(&bytes).map(|(&a, &b)| add(a, b)).collect();
                assert_eq!(combined, expected, "{arch:?} {len}");
            }
        }
    }

    #[test]
    fn the_sum_of_squares_is_exact_on_small_integers() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(sum_of_squares(&v), 338_350.0);
        assert_eq!(l2_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(sum_of_squares(&[]), 0.0);
    }
}
