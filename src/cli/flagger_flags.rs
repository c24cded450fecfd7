//! Flagger's single-dash flag spellings (`-slack-url=…`, `-mesh-provider istio`, the load
//! tester's `-port=8080`): Go's `flag` package takes one dash, clap takes two. They are rewritten
//! to `--name` before parsing, so a Flagger Deployment's arguments work unchanged.
//!
//! Only the controller flags listed here, and every flag of the `loadtester` subcommand (all of
//! its flags are Flagger's), are touched: any other single-dash word reaches clap as written.

use std::ffi::OsString;

/// The controller flags that have a Flagger counterpart of the same name.
const FLAGGER_FLAGS: &[&str] = &[
    "mesh-provider",
    "slack-url",
    "slack-token",
    "slack-proxy-url",
    "slack-user",
    "slack-channel",
    "msteams-url",
    "msteams-proxy-url",
    "event-webhook",
    "include-label-prefix",
];

/// `args` with every `-<flagger flag>[=value]` spelled `--<flagger flag>[=value]`; after the
/// subcommand `loadtester`, every `-<word>` of two letters or more.
pub fn double_dashed(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    let loadtester = args.get(1).is_some_and(|a| a == "loadtester");
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            let rewritten = arg.to_str().and_then(|text| {
                let rest = text.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
                let name = rest.split_once('=').map_or(rest, |(name, _)| name);
                let go_flag = if loadtester && i > 1 {
                    name.len() > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic())
                } else {
                    FLAGGER_FLAGS.contains(&name)
                };
                go_flag.then(|| OsString::from(format!("-{text}")))
            });
            rewritten.unwrap_or(arg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Vec<String> {
        double_dashed(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn flaggers_spellings_become_long_flags_and_nothing_else_changes() {
        assert_eq!(
            run(&[
                "sluice",
                "controller",
                "-slack-url=https://hooks.example/x",
                "-slack-channel",
                "-general",
                "--event-webhook",
                "http://e",
                "-mesh-provider",
                "istio",
                "-f",
                "-slackurl",
            ]),
            vec![
                "sluice",
                "controller",
                "--slack-url=https://hooks.example/x",
                "--slack-channel",
                "-general",
                "--event-webhook",
                "http://e",
                "--mesh-provider",
                "istio",
                "-f",
                "-slackurl",
            ]
        );
    }

    #[test]
    fn every_loadtester_flag_becomes_a_long_flag_after_the_subcommand() {
        assert_eq!(
            run(&[
                "sluice",
                "loadtester",
                "-port=8080",
                "-timeout",
                "1h",
                "--log-level=info",
                "-h"
            ]),
            vec![
                "sluice",
                "loadtester",
                "--port=8080",
                "--timeout",
                "1h",
                "--log-level=info",
                "-h"
            ]
        );
        let other = ["sluice", "lint", "-f", "loadtester", "-filename"];
        assert_eq!(run(&other), other);
    }
}
