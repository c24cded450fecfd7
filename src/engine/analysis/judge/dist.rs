//! The two distribution functions the tests need: the standard normal's upper tail and the
//! logarithm of a binomial coefficient. Both come from `libm` (musl's `erfc` and `lgamma`, accurate
//! to a few ulps), so p-values far out in the tail keep their precision.

use std::f64::consts::SQRT_2;

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / SQRT_2)
}

/// ln(n choose k); `k <= n`.
pub fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n.saturating_sub(k))
}

fn ln_factorial(n: u64) -> f64 {
    // u64 → f64 rounds above 2^53: counts that large are far beyond any window of samples.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    libm::lgamma(n + 1.0)
}
