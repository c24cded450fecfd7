//! Property tests of the judge's error rates. The samples come from a seeded generator
//! (SplitMix64 with Box-Muller), so every case is reproducible from its seed.
//!
//! - identical distributions: over many independent trials, a metric with `direction: either` at
//!   confidence 0.95 is failed (High or Low) in no more than 5% of them, plus binomial slack;
//! - a shift of one standard deviation with 30 samples a side is caught (High) with about the
//!   power the test has (Mann-Whitney ≈ 0.95 of the t-test's 0.97): at least 90% of trials.

use proptest::prelude::*;

use super::classify::{Class, Samples, classify};
use super::config::configure;
use crate::api::argo::judge::JudgeProvider;

/// Trials per case.
const TRIALS: usize = 400;

struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let u = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        u
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn sample(&mut self, n: usize, mean: f64, sd: f64, round: bool) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = self.normal(mean, sd);
                if round { v.round() } else { v }
            })
            .collect()
    }
}

fn metric(direction: &str) -> super::MetricConfig {
    let spec: JudgeProvider = serde_yaml::from_str(&format!(
        "metrics: [{{name: m, canaryQuery: c, baselineQuery: b, direction: {direction}}}]"
    ))
    .unwrap();
    configure(&spec).unwrap().metrics.remove(0)
}

fn fails(rng: &mut SplitMix, n: usize, shift: f64, round: bool, direction: &str) -> usize {
    let m = metric(direction);
    (0..TRIALS)
        .filter(|_| {
            let samples = Samples::Series {
                canary: rng.sample(n, 100.0 + shift, 10.0, round),
                baseline: rng.sample(n, 100.0, 10.0, round),
            };
            classify(&m, &samples, 0.95).class != Class::Pass
        })
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn identical_distributions_fail_at_most_at_the_confidence_level(
        seed in any::<u64>(),
        n in 5usize..60,
        round in any::<bool>(),
    ) {
        let mut rng = SplitMix(seed);
        let failed = fails(&mut rng, n, 0.0, round, "either");
        // 5% of 400 is 20; the binomial sd is ~4.4: allow 3.5 sd.
        prop_assert!(failed <= 35, "{failed} of {TRIALS} failed at n={n}");
    }

    #[test]
    fn a_shift_of_one_sd_is_caught_with_the_expected_power(seed in any::<u64>()) {
        let mut rng = SplitMix(seed);
        let caught = fails(&mut rng, 30, 10.0, false, "increase");
        prop_assert!(caught >= 360, "caught only {caught} of {TRIALS}");
        // The other direction never calls it bad.
        let wrong_way = fails(&mut rng, 30, 10.0, false, "decrease");
        prop_assert_eq!(wrong_way, 0);
    }
}
