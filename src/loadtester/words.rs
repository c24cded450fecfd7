//! Splits a webhook's `cmd` into words the way `sh` would, for the one case the load tester runs
//! itself (`hey ...`). Anything that needs a shell — pipes, redirects, expansions, globs,
//! several commands — is reported as such, so the caller hands the whole line to `sh -c` instead
//! of half-understanding it.

/// The words of `line`, or `None` when `sh` would do more than split and unquote it.
pub fn split(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word was started (so `''` is an empty word, not nothing).
    let mut started = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        other => word.push(other),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' => return None,
                        '\\' => match chars.next()? {
                            escaped @ ('"' | '\\' | '$' | '`') => word.push(escaped),
                            '\n' => {}
                            other => {
                                word.push('\\');
                                word.push(other);
                            }
                        },
                        other => word.push(other),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next()? {
                    '\n' => {}
                    other => word.push(other),
                }
            }
            '#' | '~' if !started => return None,
            // Glob characters (`?` in a URL) stay literal: `sh` keeps a pattern that matches no
            // file as written, and a URL matches none.
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '\n' => {
                return None;
            }
            other => {
                started = true;
                word.push(other);
            }
        }
    }
    if started {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|| panic!("{line:?} should need no shell"))
    }

    #[test]
    fn quotes_are_removed_as_sh_removes_them() {
        assert_eq!(
            words("hey -z 1m -H 'X-Canary: insider'  http://a/"),
            ["hey", "-z", "1m", "-H", "X-Canary: insider", "http://a/"]
        );
        assert_eq!(words(r#"a "b \"c\" d" e\ f"#), ["a", r#"b "c" d"#, "e f"]);
        assert_eq!(words("a '' b"), ["a", "", "b"]);
        assert_eq!(words(r#"-d "{\"k\": 1}""#), ["-d", r#"{"k": 1}"#]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn shell_syntax_is_left_to_the_shell() {
        for line in [
            "curl -s http://a/ | grep token",
            "hey http://a/ > /tmp/out",
            "hey http://a/ && echo done",
            "hey http://a/; echo done",
            "hey http://$HOST/",
            "hey \"http://$HOST/\"",
            "hey `cat url`",
            "hey http://a/ &",
            "hey ~/x",
            "hey 'unterminated",
            "hey \"unterminated",
            "hey http://a/ # comment",
            "a\nb",
        ] {
            assert_eq!(split(line), None, "{line:?}");
        }
        // Inside quotes these are plain characters.
        assert_eq!(words("echo 'a | b; $c'"), ["echo", "a | b; $c"]);
        // Mid-word `#` and `~` are literal in sh too; so is a glob that matches no file.
        assert_eq!(words("hey http://a/#x a~b"), ["hey", "http://a/#x", "a~b"]);
        assert_eq!(words("hey http://a/?q=1"), ["hey", "http://a/?q=1"]);
    }
}
