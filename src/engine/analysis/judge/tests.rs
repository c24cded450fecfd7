//! Known values: every expected p-value below was computed with SciPy 1.17.1
//! (`scipy.stats.mannwhitneyu(x, y)` with its defaults, `scipy.stats.fisher_exact(table)`, and
//! for the z-test `2 * scipy.stats.norm.sf(abs(z))` with the pooled standard error, which is what
//! `statsmodels.stats.proportion.proportions_ztest` computes). The script:
//! `python3 -c 'from scipy import stats; print(stats.mannwhitneyu(x, y))'` per case.

use super::classify::{Class, Samples};
use super::config::configure;
use super::mann_whitney::{self, Method};
use super::proportion::{self, Counts};
use super::*;
use crate::api::argo::analysis::AnalysisPhase;
use crate::api::argo::judge::JudgeProvider;

fn close(got: f64, want: f64) {
    let tolerance = 1e-9_f64.max(want.abs() * 1e-7);
    assert!(
        (got - want).abs() <= tolerance,
        "got {got}, want {want} (SciPy)"
    );
}

/// x, y, SciPy's U and p-value, and the method SciPy's `auto` picks.
type Case<'a> = (&'a [f64], &'a [f64], f64, f64, Method);

#[test]
fn mann_whitney_matches_scipy() {
    let cases: &[Case] = &[
        (
            &[1.1, 2.2, 3.3, 4.4],
            &[5.5, 6.6, 7.7, 8.8, 9.9],
            0.0,
            0.015873015873015872,
            Method::Exact,
        ),
        (
            &[3.0, 1.0, 7.0, 5.0, 9.0, 11.0],
            &[2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0],
            15.0,
            0.4452214452214452,
            Method::Exact,
        ),
        (
            &[10.5, 11.2, 12.9, 13.1, 9.8, 14.4, 15.0, 12.2],
            &[
                7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0,
                14.5, 15.0, 15.5, 16.0, 16.5, 17.0,
            ],
            82.0,
            0.939178016022102,
            // Ties (10.5, 15.0): scipy's "auto" goes asymptotic.
            Method::Asymptotic,
        ),
        (
            &[1., 2., 2., 3., 3., 3., 4., 5., 5., 6., 7.],
            &[3., 4., 4., 5., 5., 6., 6., 7., 8., 8., 9., 9.],
            25.0,
            0.011986421394876092,
            Method::Asymptotic,
        ),
        (
            &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.],
            &[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.],
            50.0,
            1.0,
            Method::Asymptotic,
        ),
    ];
    for (x, y, u, p, method) in cases {
        let r = mann_whitney::test(x, y).expect("non-empty samples");
        close(r.u, *u);
        close(r.p_value, *p);
        assert_eq!(r.method, *method, "{x:?} vs {y:?}");
    }
}

#[test]
fn mann_whitney_large_samples_match_scipy() {
    let x: Vec<f64> = (0..30).map(|i| f64::from(100 + (i * 37 % 23))).collect();
    let y: Vec<f64> = (0..40).map(|i| f64::from(104 + (i * 41 % 29))).collect();
    let r = mann_whitney::test(&x, &y).unwrap();
    close(r.u, 328.5);
    close(r.p_value, 0.001291346589038335);
    assert_eq!(mann_whitney::test(&[], &y), None);
}

#[test]
fn fisher_matches_scipy() {
    let cases = [
        ((1, 10), (5, 10), 0.14086687306501544),
        ((0, 20), (6, 20), 0.0201960201960202),
        ((3, 100), (2, 120), 0.6611491065552613),
        ((12, 40), (2, 38), 0.006589751329298815),
    ];
    for ((a, n1), (c, n2), p) in cases {
        let got = proportion::fisher(
            Counts {
                events: a,
                total: n1,
            },
            Counts {
                events: c,
                total: n2,
            },
        )
        .unwrap();
        close(got, p);
        // Expected event counts below 5 choose Fisher (12/40 against 2/38 expects 7.2 and 6.8).
        let chosen = proportion::test(
            Counts {
                events: a,
                total: n1,
            },
            Counts {
                events: c,
                total: n2,
            },
        );
        if a + c < 10 {
            assert_eq!(
                chosen.method,
                proportion::Method::Fisher,
                "{a}/{n1} {c}/{n2}"
            );
        }
    }
}

#[test]
fn z_test_matches_scipy() {
    let cases = [
        (
            (50, 1000),
            (30, 1000),
            2.2821773229381925,
            0.022478873366125248,
        ),
        (
            (120, 2000),
            (100, 2100),
            1.7585042553399057,
            0.07866174816510696,
        ),
        (
            (5, 400),
            (25, 410),
            -3.652412205046445,
            0.00025978842853827306,
        ),
    ];
    for ((a, n1), (c, n2), z, p) in cases {
        let r = proportion::test(
            Counts {
                events: a,
                total: n1,
            },
            Counts {
                events: c,
                total: n2,
            },
        );
        assert_eq!(r.method, proportion::Method::ZTest);
        close(r.z.unwrap(), z);
        close(r.p_value, p);
    }
    let none = proportion::z_test(
        Counts {
            events: 0,
            total: 10,
        },
        Counts {
            events: 0,
            total: 10,
        },
    );
    assert_eq!(none.p_value, 1.0);
}

#[test]
fn counts_that_are_not_counts_are_refused() {
    assert!(Counts::from_measured(3.0, 0.0).is_err());
    assert!(Counts::from_measured(11.0, 10.0).is_err());
    assert!(Counts::from_measured(f64::NAN, 10.0).is_err());
    assert_eq!(
        Counts::from_measured(2.6, 99.7),
        Ok(Counts {
            events: 3,
            total: 100
        })
    );
}

fn config(yaml: &str) -> Config {
    let spec: JudgeProvider = serde_yaml::from_str(yaml).expect("judge spec");
    configure(&spec).expect("valid judge spec")
}

const TWO_METRICS: &str = "
metrics:
- {name: latency, canaryQuery: c, baselineQuery: b, direction: increase, allowedIncrease: 1.1}
- {name: errors, test: proportion, canaryQuery: c, baselineQuery: b,
   canaryTotalQuery: ct, baselineTotalQuery: bt, weight: 3}
";

fn spread(center: f64) -> Vec<f64> {
    (0..40).map(|i| center + f64::from(i % 10)).collect()
}

#[test]
fn equal_samples_pass_and_score_100() {
    let c = config(TWO_METRICS);
    let j = judge(
        &c,
        &[
            Samples::Series {
                canary: spread(100.0),
                baseline: spread(100.0),
            },
            Samples::Counts {
                canary: (10.0, 1000.0),
                baseline: (11.0, 1000.0),
            },
        ],
    );
    assert_eq!(j.phase, AnalysisPhase::Successful, "{}", j.summary);
    assert_eq!(j.score, Some(100.0));
    assert!(j.metrics.iter().all(|(_, m)| m.class == Class::Pass));
}

#[test]
fn a_higher_canary_fails_its_metric_by_weight() {
    let c = config(TWO_METRICS);
    let j = judge(
        &c,
        &[
            Samples::Series {
                canary: spread(150.0),
                baseline: spread(100.0),
            },
            Samples::Counts {
                canary: (10.0, 1000.0),
                baseline: (10.0, 1000.0),
            },
        ],
    );
    // latency (weight 1) is High, errors (weight 3) passes: 75, at the marginal threshold.
    assert_eq!(j.score, Some(75.0));
    assert_eq!(j.phase, AnalysisPhase::Failed, "{}", j.summary);
    let latency = &j.metrics[0].1;
    assert_eq!(latency.class, Class::High);
    assert!(latency.p_value.unwrap() < 0.05);
    assert!(latency.effect_size.unwrap() > 1.4);
    assert!(j.summary.contains("latency High"), "{}", j.summary);
}

#[test]
fn direction_and_tolerance_decide_what_counts() {
    let c = config(TWO_METRICS);
    // Lower latency is not bad when only increases are.
    let lower = judge(
        &c,
        &[
            Samples::Series {
                canary: spread(50.0),
                baseline: spread(100.0),
            },
            Samples::Counts {
                canary: (10.0, 1000.0),
                baseline: (10.0, 1000.0),
            },
        ],
    );
    assert_eq!(lower.metrics[0].1.class, Class::Pass);
    // 5% higher is significant but within allowedIncrease 1.1.
    let a_bit: Vec<f64> = spread(100.0).iter().map(|v| v * 1.05).collect();
    let within = judge(
        &c,
        &[
            Samples::Series {
                canary: a_bit,
                baseline: spread(100.0),
            },
            Samples::Counts {
                canary: (10.0, 1000.0),
                baseline: (10.0, 1000.0),
            },
        ],
    );
    assert_eq!(
        within.metrics[0].1.class,
        Class::Pass,
        "{:?}",
        within.metrics[0]
    );
    assert!(within.metrics[0].1.p_value.unwrap() < 0.05);
}

#[test]
fn critical_metrics_and_missing_data() {
    let c = config(
        "
metrics:
- {name: a, canaryQuery: c, baselineQuery: b, critical: true}
- {name: b, canaryQuery: c, baselineQuery: b, weight: 9}
",
    );
    let j = judge(
        &c,
        &[
            Samples::Series {
                canary: spread(200.0),
                baseline: spread(100.0),
            },
            Samples::Series {
                canary: spread(100.0),
                baseline: spread(100.0),
            },
        ],
    );
    assert_eq!((j.score, j.phase), (Some(0.0), AnalysisPhase::Failed));
    // NaN-only canary: no data; the rest passes, but the verdict is at best Inconclusive.
    let j = judge(
        &c,
        &[
            Samples::Series {
                canary: vec![f64::NAN; 5],
                baseline: spread(100.0),
            },
            Samples::Series {
                canary: spread(100.0),
                baseline: spread(100.0),
            },
        ],
    );
    assert_eq!(j.metrics[0].1.class, Class::NoData);
    assert_eq!(
        (j.score, j.phase),
        (Some(100.0), AnalysisPhase::Inconclusive)
    );
    assert!(j.summary.contains("no data: a"), "{}", j.summary);
    let none = judge(
        &c,
        &[
            Samples::Series {
                canary: vec![],
                baseline: vec![],
            },
            Samples::Series {
                canary: vec![],
                baseline: vec![1.0],
            },
        ],
    );
    assert_eq!(
        (none.score, none.phase),
        (None, AnalysisPhase::Inconclusive)
    );
}

#[test]
fn nan_strategy_replace_counts_nan_as_zero() {
    let c = config(
        "
metrics:
- {name: a, canaryQuery: c, baselineQuery: b, nanStrategy: replace, direction: decrease}
",
    );
    let mut canary = spread(100.0);
    canary.extend([f64::NAN; 30]);
    let j = judge(
        &c,
        &[Samples::Series {
            canary,
            baseline: spread(100.0),
        }],
    );
    assert_eq!(j.metrics[0].1.canary.n, 70);
    assert_eq!(j.metrics[0].1.class, Class::Low, "{:?}", j.metrics[0]);
}

#[test]
fn bad_specs_name_their_fields() {
    let spec: JudgeProvider = serde_yaml::from_str(
        "
lookback: 5x
confidence: 0.3
threshold: {pass: 50, marginal: 80}
prometheus: {query: up}
metrics:
- {name: a, baselineQuery: b}
- {name: a, test: proportion, canaryQuery: c, baselineQuery: b, allowedDecrease: 2, weight: 0}
- {name: c, canaryQuery: c, baselineQuery: b, canaryTotalQuery: t, allowedIncrease: 0.5}
",
    )
    .unwrap();
    let errors: Vec<String> = configure(&spec)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    let expected = [
        "provider.judge.lookback:",
        "provider.judge.prometheus:",
        "provider.judge.confidence:",
        "provider.judge.threshold.marginal: 80 is above threshold.pass 50",
        "provider.judge.metrics[0].canaryQuery: is required",
        "provider.judge.metrics[1].name: duplicate",
        "provider.judge.metrics[1].canaryTotalQuery: is required",
        "provider.judge.metrics[1].baselineTotalQuery: is required",
        "provider.judge.metrics[1].allowedDecrease:",
        "provider.judge.metrics[1].weight:",
        "provider.judge.metrics[2].canaryTotalQuery: is used only with test: proportion",
        "provider.judge.metrics[2].allowedIncrease:",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want} missing from {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    let empty: JudgeProvider = serde_yaml::from_str("{}").unwrap();
    assert_eq!(
        configure(&empty).unwrap_err()[0].to_string(),
        "provider.judge.metrics: at least one metric is required"
    );
}

#[test]
fn defaults_are_applied() {
    let c = config("metrics: [{name: a, canaryQuery: c, baselineQuery: b}]");
    assert_eq!(
        (
            c.lookback.as_secs(),
            c.step.as_str(),
            c.confidence,
            c.pass,
            c.marginal
        ),
        (300, "30s", 0.95, 90.0, 75.0)
    );
}

#[test]
fn a_score_of_nothing_passing_reads_zero() {
    let c = config("metrics: [{name: a, canaryQuery: c, baselineQuery: b}]");
    let j = judge(
        &c,
        &[Samples::Series {
            canary: spread(300.0),
            baseline: spread(100.0),
        }],
    );
    let score = j.score.expect("a score");
    assert!(score == 0.0 && score.is_sign_positive(), "{score}");
    assert_eq!(super::classify::short(score), "0");
}
