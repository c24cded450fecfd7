//! The demo: a Rollout through Gateway API (real Traefik) with a Prometheus success-rate
//! analysis over Traefik's own request metrics. v1 → v2 promotes step by step; v2 → v3, whose
//! pods answer 20% errors, fails its analysis and rolls back automatically.
//!
//! Run `./demo` (brings up the test environment, builds `sluice`, runs this), or, with the
//! environment up and `cargo build --bin sluice` done, `cargo run --example demo`.
//! The scenario lives in `tests/common/demo.rs`; `tests/e2e_demo.rs` runs it as a test.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/demo.rs"]
mod demo;

#[tokio::main]
async fn main() {
    let bin = common::controller::sluice_bin();
    if !bin.exists() {
        eprintln!(
            "demo: {} is missing: run `cargo build --bin sluice` first (./demo does)",
            bin.display()
        );
        std::process::exit(2);
    }
    let Some(env) = common::test_env().await else {
        eprintln!("demo: no test environment: run tests/env/up first (./demo does)");
        std::process::exit(2);
    };
    let Some(gw) = env.gateway_or_skip() else {
        eprintln!("demo: the Gateway API data plane needs root (tests/env/up as root)");
        std::process::exit(2);
    };
    let outcome = demo::run(&env, gw).await;
    println!("\n{}", outcome.summary());
    let ok = outcome.v2_promoted && outcome.v3_rolled_back;
    println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
    std::process::exit(if ok { 0 } else { 1 });
}
