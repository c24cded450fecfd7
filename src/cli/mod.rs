//! Command-line verbs. Thin: they read input, call `api` / `engine`, and print.

pub mod simulate;
