//! Upstream's `{{tag}}` substitution (valyala/fasttemplate as Argo Rollouts calls it): decides
//! where the tags of a text are and splices in what the caller says each one stands for.
//!
//! One pass: a replacement is never scanned again; the text between the braces is trimmed before
//! the lookup. This module must never decide what a tag means (that is the caller's), nor panic on
//! any input.

/// Why a text could not be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillError<E> {
    /// A `{{` is never closed by `}}`.
    Unterminated,
    /// The caller could not give a tag's value.
    Tag(E),
}

/// `text` with every `{{ tag }}` replaced by `value(tag)` (the tag trimmed).
pub fn fill<E>(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, FillError<E>> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(FillError::Unterminated);
        };
        out.push_str(&value(after[..end].trim()).map_err(FillError::Tag)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(tag: &str) -> Result<String, String> {
        match tag {
            "a" => Ok("{{b}}".into()),
            "b" => Ok("B".into()),
            other => Err(other.to_owned()),
        }
    }

    #[test]
    fn tags_are_trimmed_and_replacements_not_rescanned() {
        assert_eq!(fill("x{{ a }}y{{b}}", upper), Ok("x{{b}}yB".into()));
        assert_eq!(fill("no tags", upper), Ok("no tags".into()));
    }

    #[test]
    fn unknown_and_unterminated_tags_are_errors() {
        assert_eq!(fill("{{ c }}", upper), Err(FillError::Tag("c".into())));
        assert_eq!(fill("x{{a", upper), Err(FillError::Unterminated));
    }
}
