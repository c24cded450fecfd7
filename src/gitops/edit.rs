//! The text edit of a revert: in the YAML document that declares Rollout `name`, set each
//! container's image back. Edits the text (not a re-serialised YAML), so the file keeps its
//! comments, order and quoting; only `image:` lines of that document change.
//!
//! Pure: never touches a file or the network.

use crate::engine::git_revert::ImageChange;

/// What an edit found.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    /// The file declares no Rollout `name`.
    NotDeclared,
    /// The Rollout's document already has the images (a revert pushed before): nothing to do.
    AlreadyReverted,
    /// The new text of the file.
    Changed(String),
    /// The document declares the Rollout but none of the images to replace, nor the reverted
    /// ones (someone changed it since): left alone.
    Diverged,
}

/// Splits `text` into YAML documents, keeping every line (separators included).
fn documents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" && offset > start {
            out.push(&text[start..offset]);
            start = offset;
        }
        offset += line.len();
    }
    out.push(&text[start..]);
    out
}

/// Whether a YAML document declares Rollout `name`.
fn declares(document: &str, name: &str) -> bool {
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(document) else {
        return false;
    };
    value["kind"].as_str() == Some("Rollout")
        && value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("argoproj.io/"))
        && value["metadata"]["name"].as_str() == Some(name)
}

/// An `image:` line's value, unquoted.
fn image_of(line: &str) -> Option<&str> {
    let rest = line.trim_start().trim_start_matches("- ").trim_start();
    let value = rest.strip_prefix("image:")?.trim();
    let value = value.split(" #").next().unwrap_or(value).trim();
    Some(value.trim_matches(|c| c == '"' || c == '\''))
}

/// Sets the images of `changes` back in the document of `text` that declares Rollout `name`.
pub fn revert_images(text: &str, name: &str, changes: &[ImageChange]) -> Edit {
    let docs = documents(text);
    let Some(index) = docs.iter().position(|d| declares(d, name)) else {
        return Edit::NotDeclared;
    };
    let mut replaced = 0;
    let mut already = 0;
    let mut document = String::with_capacity(docs[index].len());
    for line in docs[index].split_inclusive('\n') {
        match image_of(line) {
            Some(image) if changes.iter().any(|c| c.from == image) => {
                let change = changes.iter().find(|c| c.from == image);
                let to = change.map(|c| c.to.as_str()).unwrap_or(image);
                document.push_str(&line.replacen(image, to, 1));
                replaced += 1;
            }
            Some(image) => {
                already += usize::from(changes.iter().any(|c| c.to == image));
                document.push_str(line);
            }
            None => document.push_str(line),
        }
    }
    if replaced > 0 {
        let mut out: String = docs[..index].concat();
        out.push_str(&document);
        out.push_str(&docs[index + 1..].concat());
        Edit::Changed(out)
    } else if already > 0 {
        Edit::AlreadyReverted
    } else {
        Edit::Diverged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the app\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\napiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - name: web\n        image: \"registry/web:v2\" # bumped by CI\n      - name: proxy\n        image: proxy:1\n---\napiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: other}\nspec:\n  template: {spec: {containers: [{name: web, image: registry/web:v2}]}}\n";

    fn change() -> Vec<ImageChange> {
        vec![ImageChange {
            container: "web".into(),
            from: "registry/web:v2".into(),
            to: "registry/web:v1".into(),
        }]
    }

    #[test]
    fn only_the_rollouts_image_line_changes() {
        let Edit::Changed(text) = revert_images(FILE, "web", &change()) else {
            panic!("no change");
        };
        assert_eq!(
            text,
            FILE.replacen(
                "image: \"registry/web:v2\" # bumped",
                "image: \"registry/web:v1\" # bumped",
                1
            )
        );
        assert_eq!(
            revert_images(&text, "web", &change()),
            Edit::AlreadyReverted,
            "a second revert changes nothing"
        );
    }

    #[test]
    fn another_file_or_a_diverged_document_is_left_alone() {
        assert_eq!(revert_images(FILE, "missing", &change()), Edit::NotDeclared);
        let diverged = FILE.replace("registry/web:v2\" #", "registry/web:v3\" #");
        assert_eq!(revert_images(&diverged, "web", &change()), Edit::Diverged);
    }
}
