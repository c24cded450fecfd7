//! Command-line verbs. Thin: they read input, call `api` / `engine` (or the cluster's API), and
//! print. `sluice` also runs as the kubectl plugin `kubectl sluice` (a binary or link named
//! `kubectl-sluice` on the PATH).

pub mod flagger_flags;
pub mod lint;
pub mod rollouts;
pub mod simulate;
