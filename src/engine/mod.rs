//! The pure rollout engine (being written).
