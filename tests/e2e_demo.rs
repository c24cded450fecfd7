//! The README's demo without a terminal: the scenario of `cargo run --example demo`
//! (`tests/common/demo.rs`) against the real test environment. v2 must be promoted step by
//! step through its analyses, and v3 (20% errors) must fail its analysis and roll back.

mod common;
#[path = "common/demo.rs"]
mod demo;

#[tokio::test]
async fn the_demo_promotes_v2_and_rolls_back_v3_on_its_error_rate() {
    let Some(env) = common::test_env().await else {
        return;
    };
    let Some(gw) = env.gateway_or_skip() else {
        return;
    };
    let outcome = demo::run(&env, gw).await;
    let summary = outcome.summary();
    eprintln!("{summary}");
    assert!(outcome.v2_promoted, "v2 was not promoted\n{summary}");
    assert!(outcome.v3_rolled_back, "v3 was not rolled back\n{summary}");
    let v2 = &outcome.success_rates["v2"];
    assert!(
        !v2.is_empty() && v2.iter().all(|r| *r >= demo::THRESHOLD),
        "v2's analyses measured {v2:?}\n{summary}"
    );
    let v3 = &outcome.success_rates["v3"];
    assert!(
        v3.iter().any(|r| *r < demo::THRESHOLD),
        "v3's analysis never measured a failing success rate: {v3:?}\n{summary}"
    );
}
