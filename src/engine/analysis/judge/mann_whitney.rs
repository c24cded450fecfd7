//! The Mann-Whitney U test, two-sided, as `scipy.stats.mannwhitneyu(x, y)` computes it with its
//! defaults: average ranks for ties; the exact null distribution when one sample has at most 8
//! values and there are no ties; otherwise the normal approximation with the tie correction and a
//! continuity correction of 0.5. The p-value is capped at 1.
//!
//! Must never: see NaN (the caller removes or replaces it first) or panic on any input.

/// Samples at or below this size (in the smaller sample) use the exact distribution when there are
/// no ties (scipy's `method="auto"`).
const EXACT_MAX_SIZE: usize = 8;

/// How the p-value was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Exact,
    Asymptotic,
}

impl Method {
    /// The name recorded in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Exact => "exact",
            Method::Asymptotic => "asymptotic",
        }
    }
}

/// The result of a test of `x` (canary) against `y` (baseline).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: how many (x, y) pairs have x above y, ties counting one half.
    pub u: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    pub method: Method,
}

impl MannWhitney {
    /// U / (n_x n_y): the chance a canary value exceeds a baseline value (ties count half). 0.5
    /// means neither tends higher.
    pub fn common_language_effect(&self, nx: usize, ny: usize) -> f64 {
        self.u / product(nx, ny)
    }
}

/// Tests `x` against `y`; `None` when either is empty.
pub fn test(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (rank_sum_x, ties) = rank_sum(x, y);
    let n1f = count(n1);
    let u1 = rank_sum_x - n1f * (n1f + 1.0) / 2.0;
    let u2 = product(n1, n2) - u1;
    let u = u1.max(u2);
    let has_ties = ties.iter().any(|&t| t > 1);
    let (p, method) = if n1.min(n2) <= EXACT_MAX_SIZE && !has_ties {
        match exact_sf(u, n1, n2) {
            Some(sf) => (sf, Method::Exact),
            None => (asymptotic_sf(u, n1, n2, &ties), Method::Asymptotic),
        }
    } else {
        (asymptotic_sf(u, n1, n2, &ties), Method::Asymptotic)
    };
    Some(MannWhitney {
        u: u1,
        p_value: (2.0 * p).clamp(0.0, 1.0),
        method,
    })
}

/// The sum of `x`'s ranks in the pooled sample (ties get their average rank), and the size of
/// every group of equal values.
fn rank_sum(x: &[f64], y: &[f64]) -> (f64, Vec<usize>) {
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut sum = 0.0;
    let mut ties = Vec::new();
    let mut start = 0;
    while start < pooled.len() {
        let mut end = start + 1;
        while end < pooled.len() && pooled[end].0 == pooled[start].0 {
            end += 1;
        }
        // Ranks start+1 ..= end share their average.
        let average = (count(start) + 1.0 + count(end)) / 2.0;
        let from_x = pooled[start..end].iter().filter(|(_, is_x)| *is_x).count();
        sum += average * count(from_x);
        ties.push(end - start);
        start = end;
    }
    (sum, ties)
}

/// P(U >= u) under the null hypothesis, by the normal approximation with tie and continuity
/// corrections (scipy's `_get_mwu_z`).
fn asymptotic_sf(u: f64, n1: usize, n2: usize, ties: &[usize]) -> f64 {
    let n = count(n1 + n2);
    let mu = product(n1, n2) / 2.0;
    let tie_term: f64 = ties.iter().map(|&t| count(t).powi(3) - count(t)).sum();
    let variance = product(n1, n2) / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Every value equal: no evidence of any difference.
        return 1.0;
    }
    let z = (u - mu - 0.5) / variance.sqrt();
    super::dist::normal_sf(z)
}

/// P(U >= u) under the null hypothesis, exactly: the number of arrangements with each U is the
/// coefficient of the Gaussian binomial `[n1 + n2 choose n1]_q`, built one factor
/// `(1 - q^(big+i)) / (1 - q^i)` at a time. `None` if the counts overflow u128.
fn exact_sf(u: f64, n1: usize, n2: usize) -> Option<f64> {
    let (small, big) = (n1.min(n2), n1.max(n2));
    let max_u = small.checked_mul(big)?;
    let mut coefficients = vec![0u128; max_u + 1];
    coefficients[0] = 1;
    for i in 1..=small {
        // Divide by (1 - q^i) first (a series of non-negative terms), then multiply by
        // (1 - q^(big + i)): the result is the next Gaussian binomial, whose coefficients are
        // counts, so the subtraction never goes below zero.
        for j in i..=max_u {
            coefficients[j] = coefficients[j].checked_add(coefficients[j - i])?;
        }
        let shift = big + i;
        for j in (shift..=max_u).rev() {
            coefficients[j] = coefficients[j].checked_sub(coefficients[j - shift])?;
        }
    }
    let total: u128 = coefficients
        .iter()
        .try_fold(0u128, |acc, &c| acc.checked_add(c))?;
    // U takes whole values when there are no ties; `u` is one of them.
    let from = u.ceil().max(0.0);
    let tail: u128 = coefficients
        .iter()
        .enumerate()
        .filter(|(k, _)| count(*k) >= from)
        .map(|(_, &c)| c)
        .sum();
    Some(ratio(tail, total))
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u128, b: u128) -> f64 {
    a as f64 / b as f64
}

#[allow(clippy::cast_precision_loss)]
fn count(n: usize) -> f64 {
    n as f64
}

fn product(a: usize, b: usize) -> f64 {
    count(a) * count(b)
}
