//! HTML text: escaping and the page shell (embedded stylesheet and script, no inline code, so
//! the Content-Security-Policy can forbid everything but the dashboard's own assets).

/// Escapes text for an element or a quoted attribute. Carriage returns become entities too, so a
/// rendered fragment can be sent as Server-Sent Event data.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes one path segment of a link (names are DNS labels, but never trust that).
pub fn seg(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32 & 0xff)
            }
        })
        .collect()
}

/// A whole page: `main` is replaced live by the script from `/sse?page=<live>`; `csrf` is the
/// viewer's token (also in every action form), for scripts and API clients that post.
pub fn page(title: &str, live: &str, csrf: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\"><title>{title} · Sluice</title>\
         <link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\
         <script src=\"/assets/dashboard.js\" defer></script></head>\
         <body><header><a href=\"/\">Sluice</a></header>\
         <main data-live=\"{live}\">{main}</main></body></html>\n",
        title = esc(title),
        live = esc(live),
        csrf = esc(csrf),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_carriage_returns_are_escaped() {
        assert_eq!(
            esc("<img src=x onerror=\"a\">&'\r"),
            "&lt;img src=x onerror=&quot;a&quot;&gt;&amp;&#39;&#13;"
        );
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
