//! Flagger's `-include-label-prefix`: which of the target's labels the generated `-primary`
//! Deployment carries (upstream `includeLabelsByPrefix`, `pkg/canary/util.go`).
//!
//! A label is kept when its key starts with one of the prefixes, or every label with `*`;
//! Flux's own labels (keys containing `toolkit.fluxcd.io`) never are, so Flux does not take the
//! primary for one of its objects. Pure: decides nothing else and never panics.

use std::collections::BTreeMap;

/// Flux's label marker (upstream `toolkitMarker`).
const TOOLKIT_MARKER: &str = "toolkit.fluxcd.io";

/// The prefixes of a comma-separated `--include-label-prefix` value (empty entries dropped).
pub fn parse(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The labels whose key starts with one of `prefixes` (`*`: all), Flux's excepted.
pub fn include(labels: &BTreeMap<String, String>, prefixes: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(key, _)| !key.contains(TOOLKIT_MARKER))
        .filter(|(key, _)| {
            prefixes
                .iter()
                .any(|p| p == "*" || key.starts_with(p.as_str()))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn labels() -> BTreeMap<String, String> {
        [
            ("app", "web"),
            ("team.example.com/owner", "a"),
            ("kustomize.toolkit.fluxcd.io/name", "apps"),
            ("version", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn keys(prefixes: &str) -> Vec<String> {
        include(&labels(), &parse(prefixes)).into_keys().collect()
    }

    #[test]
    fn prefixes_select_labels_as_flagger_does() {
        assert_eq!(keys(""), Vec::<String>::new(), "none by default");
        assert_eq!(keys("team.,app"), vec!["app", "team.example.com/owner"]);
        assert_eq!(
            keys("*"),
            vec!["app", "team.example.com/owner", "version"],
            "all but Flux's"
        );
        assert_eq!(keys("kustomize"), Vec::<String>::new(), "Flux's never");
        assert_eq!(keys(" , version ,"), vec!["version"]);
    }
}
