//! Two-proportion tests for event counts (errors over requests): Fisher's exact test when any
//! expected cell of the 2×2 table is below 5, else the pooled two-proportion z-test. Both
//! two-sided. Fisher's p-value is scipy's (`scipy.stats.fisher_exact`): the probability of every
//! table with the same margins no more likely than the observed one (relative tolerance 1e-7);
//! the z-test is `statsmodels`' `proportions_ztest` (pooled variance, no continuity correction).
//!
//! Must never panic, whatever the counts; counts that cannot be counts are an error for the
//! caller to report.

use super::dist::{ln_choose, normal_sf};

/// Below this expected count in any cell, the normal approximation is not trusted.
const MIN_EXPECTED: f64 = 5.0;
/// Fisher's sum has at most this many terms; a larger table goes to the z-test.
const MAX_FISHER_TERMS: u64 = 10_000_000;
/// scipy's relative tolerance when comparing table probabilities.
const RELATIVE_TOLERANCE: f64 = 1e-7;

/// Events out of a total, as whole counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub total: u64,
}

impl Counts {
    /// Counts from measured values (Prometheus' `increase()` gives fractions: rounded), or why
    /// they cannot be used.
    pub fn from_measured(events: f64, total: f64) -> Result<Counts, String> {
        if !events.is_finite() || !total.is_finite() {
            return Err(format!("counts {events} of {total} are not finite"));
        }
        let (events, total) = (events.round(), total.round());
        if total < 1.0 {
            return Err(format!("the total is {total}: nothing was counted"));
        }
        if events < 0.0 || events > total {
            return Err(format!("{events} events of {total} is not a proportion"));
        }
        // Both are whole, non-negative and finite here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Counts {
            events: events as u64,
            total: total as u64,
        })
    }

    /// events / total.
    pub fn proportion(&self) -> f64 {
        to_f64(self.events) / to_f64(self.total)
    }
}

/// Which test gave the p-value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Fisher,
    ZTest,
}

impl Method {
    /// The name recorded in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fisher => "fisher",
            Method::ZTest => "z-test",
        }
    }
}

/// A test's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProportionTest {
    pub p_value: f64,
    pub method: Method,
    /// The z statistic (canary minus baseline), for the z-test.
    pub z: Option<f64>,
}

/// Tests whether `canary`'s proportion differs from `baseline`'s.
pub fn test(canary: Counts, baseline: Counts) -> ProportionTest {
    let events = canary.events + baseline.events;
    let total = canary.total + baseline.total;
    let expected = |row: u64, column: u64| to_f64(row) * to_f64(column) / to_f64(total);
    let smallest = [canary.total, baseline.total]
        .into_iter()
        .flat_map(|row| [expected(row, events), expected(row, total - events)])
        .fold(f64::INFINITY, f64::min);
    if smallest < MIN_EXPECTED
        && let Some(p) = fisher(canary, baseline)
    {
        return ProportionTest {
            p_value: p,
            method: Method::Fisher,
            z: None,
        };
    }
    z_test(canary, baseline)
}

/// Pooled two-proportion z-test.
pub fn z_test(canary: Counts, baseline: Counts) -> ProportionTest {
    let pooled = to_f64(canary.events + baseline.events) / to_f64(canary.total + baseline.total);
    let se =
        (pooled * (1.0 - pooled) * (1.0 / to_f64(canary.total) + 1.0 / to_f64(baseline.total)))
            .sqrt();
    if se <= 0.0 || !se.is_finite() {
        // No events at all, or nothing but events: the proportions are equal.
        return ProportionTest {
            p_value: 1.0,
            method: Method::ZTest,
            z: Some(0.0),
        };
    }
    let z = (canary.proportion() - baseline.proportion()) / se;
    ProportionTest {
        p_value: (2.0 * normal_sf(z.abs())).clamp(0.0, 1.0),
        method: Method::ZTest,
        z: Some(z),
    }
}

/// Fisher's exact test, two-sided; `None` when the sum would be too long.
pub fn fisher(canary: Counts, baseline: Counts) -> Option<f64> {
    let n = canary.total + baseline.total;
    let column = canary.events + baseline.events;
    let low = canary.total.saturating_sub(n - column);
    let high = canary.total.min(column);
    if high - low >= MAX_FISHER_TERMS {
        return None;
    }
    let ln_total = ln_choose(n, canary.total);
    let ln_p = |a: u64| ln_choose(column, a) + ln_choose(n - column, canary.total - a) - ln_total;
    let observed = ln_p(canary.events);
    let bound = observed + RELATIVE_TOLERANCE.ln_1p();
    let p: f64 = (low..=high)
        .map(ln_p)
        .filter(|&lp| lp <= bound)
        .map(f64::exp)
        .sum();
    Some(p.clamp(0.0, 1.0))
}

#[allow(clippy::cast_precision_loss)]
fn to_f64(n: u64) -> f64 {
    n as f64
}
