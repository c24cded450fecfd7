//! Flagger's single-dash flag spellings (`-slack-url=…`, `-mesh-provider istio`): Go's `flag`
//! package takes one dash, clap takes two. The controller's flags that Flagger also has are
//! rewritten to `--name` before parsing, so a Flagger Deployment's arguments work unchanged.
//!
//! Only the names listed here are touched: any other single-dash word reaches clap as written.

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

/// `args` with every `-<flagger flag>[=value]` spelled `--<flagger flag>[=value]`.
pub fn double_dashed(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| {
            let rewritten = arg.to_str().and_then(|text| {
                let rest = text.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
                let name = rest.split_once('=').map_or(rest, |(name, _)| name);
                FLAGGER_FLAGS
                    .contains(&name)
                    .then(|| OsString::from(format!("-{text}")))
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
}
