//! YAML read the way `kubectl` reads it, so offline checks judge what the apiserver will be sent.
//!
//! `kubectl apply -f` turns YAML into JSON with `sigs.k8s.io/yaml`, which resolves plain
//! (unquoted) scalars by YAML 1.1 rules (go-yaml v2): `y`, `yes`, `on` are `true` and `n`, `no`,
//! `off` are `false`; `0x1F`, `017`, `0b101` and `1_000` are integers; `1.0` is sent as `1`;
//! timestamps stay strings. `serde_yaml` reads YAML 1.2, where `on` is a string — so a manifest
//! it accepts can be refused by the apiserver, and the other way round. Quoted and block scalars
//! are always strings; `!!str` forces a string.
//!
//! Decides only how a document becomes JSON. It never judges the JSON (that is
//! [`crate::api::validate`]) and never panics: nesting and alias expansion are bounded, so a
//! hostile file (a "billion laughs" of aliases, a thousand nested lists) is an error, not a hang.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting of lists and maps accepted.
const MAX_DEPTH: usize = 200;
/// Most nodes one stream may expand to (aliases count again each time they are used).
const MAX_NODES: usize = 1_000_000;

/// Why a YAML stream could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("document {index}: not valid YAML: {reason} (line {line}, column {column})")]
    Syntax {
        index: usize,
        reason: String,
        line: usize,
        column: usize,
    },
    #[error("document {index}: {reason} (line {line}, column {column})")]
    Unsupported {
        index: usize,
        reason: String,
        line: usize,
        column: usize,
    },
}

/// Every document of a stream as JSON, empty documents (`---` alone, comments) left out. An
/// error stops the stream: the parser cannot resynchronise after one.
pub fn documents(text: &str) -> Result<Vec<Value>, Error> {
    let mut reader = Reader {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        index: 0,
    };
    let mut out = Vec::new();
    loop {
        let (event, mark) = reader.next()?;
        match event {
            Event::StreamEnd => return Ok(out),
            Event::DocumentStart => {
                let (first, mark) = reader.next()?;
                let doc = reader.node(first, mark, 0)?;
                let (end, mark) = reader.next()?;
                if end != Event::DocumentEnd {
                    return Err(reader.unsupported("more than one node in a document", mark));
                }
                reader.anchors.clear();
                reader.index += 1;
                if !doc.is_null() {
                    out.push(doc);
                }
            }
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            _ => return Err(reader.unsupported("a node outside a document", mark)),
        }
    }
}

struct Reader<'a> {
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, Value>,
    nodes: usize,
    index: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> Result<(Event, Marker), Error> {
        self.parser.next_token().map_err(|e| {
            let mark = e.marker();
            Error::Syntax {
                index: self.index,
                reason: e.info().to_string(),
                line: mark.line(),
                column: mark.col() + 1,
            }
        })
    }

    fn unsupported(&self, reason: impl Into<String>, mark: Marker) -> Error {
        Error::Unsupported {
            index: self.index,
            reason: reason.into(),
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    fn count(&mut self, mark: Marker) -> Result<(), Error> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(self.unsupported(
                format!("expands to more than {MAX_NODES} nodes (aliases?)"),
                mark,
            ));
        }
        Ok(())
    }

    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Value, Error> {
        self.count(mark)?;
        if depth > MAX_DEPTH {
            return Err(self.unsupported(format!("nested deeper than {MAX_DEPTH} levels"), mark));
        }
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                (self.scalar(&text, style, tag.as_ref(), mark)?, anchor)
            }
            Event::SequenceStart(anchor, _) => (self.sequence(depth)?, anchor),
            Event::MappingStart(anchor, _) => (self.mapping(depth)?, anchor),
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| self.unsupported("an alias to an unknown anchor", mark))?;
                self.nodes += nodes_in(&value);
                self.count(mark)?;
                return Ok(value);
            }
            other => return Err(self.unsupported(format!("unexpected {other:?}"), mark)),
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn sequence(&mut self, depth: usize) -> Result<Value, Error> {
        let mut items = Vec::new();
        loop {
            let (event, mark) = self.next()?;
            if event == Event::SequenceEnd {
                return Ok(Value::Array(items));
            }
            items.push(self.node(event, mark, depth + 1)?);
        }
    }

    fn mapping(&mut self, depth: usize) -> Result<Value, Error> {
        let mut map = Map::new();
        let mut merged = Map::new();
        loop {
            let (event, mark) = self.next()?;
            if event == Event::MappingEnd {
                // Keys written in the map win over merged ones (`<<: *base`).
                for (key, value) in merged {
                    map.entry(key).or_insert(value);
                }
                return Ok(Value::Object(map));
            }
            let is_merge =
                matches!(&event, Event::Scalar(k, TScalarStyle::Plain, _, None) if k == "<<");
            let key = self.node(event, mark, depth + 1)?;
            let (event, value_mark) = self.next()?;
            let value = self.node(event, value_mark, depth + 1)?;
            if is_merge {
                self.merge(&mut merged, value, value_mark)?;
                continue;
            }
            map.insert(key_string(&key, mark, self)?, value);
        }
    }

    /// `<<: *base` or `<<: [*a, *b]` (earlier maps win, as in go-yaml).
    fn merge(
        &self,
        into: &mut Map<String, Value>,
        value: Value,
        mark: Marker,
    ) -> Result<(), Error> {
        let maps = match value {
            Value::Object(map) => vec![map],
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::Object(map) => Ok(map),
                    _ => Err(self.unsupported("a merge key (<<) whose list holds a non-map", mark)),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(self.unsupported("a merge key (<<) whose value is not a map", mark)),
        };
        for map in maps {
            for (key, value) in map {
                into.entry(key).or_insert(value);
            }
        }
        Ok(())
    }

    fn scalar(
        &self,
        text: &str,
        style: TScalarStyle,
        tag: Option<&Tag>,
        mark: Marker,
    ) -> Result<Value, Error> {
        let tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
        let forced_string = tag
            .as_deref()
            .is_some_and(|t| t == "!!str" || t == "tag:yaml.org,2002:str");
        if style != TScalarStyle::Plain || forced_string {
            return Ok(Value::String(text.to_string()));
        }
        resolve_plain(text).map_err(|reason| self.unsupported(reason, mark))
    }
}

fn nodes_in(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(nodes_in).sum::<usize>() + 1,
        Value::Object(map) => map.values().map(nodes_in).sum::<usize>() + map.len() + 1,
        _ => 1,
    }
}

/// A map key as `sigs.k8s.io/yaml` writes it: JSON keys are strings, so `true: x` is `"true"`.
fn key_string(key: &Value, mark: Marker, reader: &Reader<'_>) -> Result<String, Error> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok("null".to_string()),
        Value::Array(_) | Value::Object(_) => {
            Err(reader.unsupported("a list or map used as a map key", mark))
        }
    }
}

/// Resolves a plain scalar by go-yaml v2's rules (`resolve.go`).
fn resolve_plain(text: &str) -> Result<Value, String> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false));
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF"
        | "-.inf" | "-.Inf" | "-.INF" => {
            return Err(format!(
                "{text} is not a JSON number: kubectl cannot send it (quote it for a string)"
            ));
        }
        _ => {}
    }
    if !text.starts_with([
        '+', '-', '.', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
    ]) {
        return Ok(Value::String(text.to_string()));
    }
    let plain = text.replace('_', "");
    if let Some(n) = parse_int(&plain) {
        return Ok(Value::Number(n));
    }
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
        && f.is_finite()
    {
        return Ok(json_float(f));
    }
    Ok(Value::String(text.to_string()))
}

/// Go's `strconv.ParseInt(s, 0, 64)` then `ParseUint`: decimal, `0x`, `0o`, `0b` and a leading-`0`
/// octal, with an optional sign.
fn parse_int(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = lower.strip_prefix("0o") {
        (8, octal)
    } else if let Some(binary) = lower.strip_prefix("0b") {
        (2, binary)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(body, radix).ok()?;
    if negative {
        let value = 0i64.checked_sub_unsigned(magnitude)?;
        Some(Number::from(value))
    } else {
        Some(Number::from(magnitude))
    }
}

/// go-yaml v2's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => digits(fraction),
        Some((whole, fraction)) => digits(whole) && (fraction.is_empty() || digits(fraction)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// A float as Go's `encoding/json` writes it: `1.0` is `1` (and so an integer to the apiserver).
fn json_float(f: f64) -> Value {
    // 2^53: beyond it an f64 no longer holds every integer, and Go writes an exponent.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        return Value::Number(Number::from(f as i64));
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let mut docs = documents(text).unwrap();
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0)
    }

    #[test]
    fn plain_scalars_resolve_as_kubectl_does() {
        let doc = one(
            "a: on\nb: Off\nc: y\nd: N\ne: yes\nf: 'on'\ng: \"no\"\nh: ~\ni: 0x1F\nj: 017\nk: 0b101\n\
             l: 1_000\nm: 1.0\nnn: 2.5\no: -3\np: 1e3\nq: 2026-01-02\nr: !!str 12\ns: .5\nt: 1.2.3\n\
             u: +7\nv: 0o17\nw: |\n  on\n",
        );
        assert_eq!(
            doc,
            json!({"a": true, "b": false, "c": true, "d": false, "e": true, "f": "on", "g": "no",
                   "h": null, "i": 31, "j": 15, "k": 5, "l": 1000, "m": 1, "nn": 2.5, "o": -3,
                   "p": 1000, "q": "2026-01-02", "r": "12", "s": 0.5, "t": "1.2.3", "u": 7,
                   "v": 15, "w": "on\n"})
        );
    }

    #[test]
    fn keys_become_strings_and_merges_and_aliases_expand() {
        let doc = one(
            "base: &b {x: 1, z: 2}\nmerged:\n  <<: *b\n  z: 3\nalias: *b\non: 1\nn: 0\n5: five\n",
        );
        assert_eq!(
            doc,
            // `n:` as a key is `false` to kubectl too: the YAML 1.1 trap this module exists for.
            json!({"base": {"x": 1, "z": 2}, "merged": {"x": 1, "z": 3},
                   "alias": {"x": 1, "z": 2}, "true": 1, "false": 0, "5": "five"})
        );
    }

    #[test]
    fn streams_skip_empty_documents_and_report_positions() {
        let docs = documents("---\n# nothing\n---\na: 1\n---\nb: 2\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
        let err = documents("a: 1\n---\nb: [1, 2\n").unwrap_err();
        assert!(matches!(err, Error::Syntax { index: 1, .. }), "{err}");
        assert!(
            documents("a: .nan\n")
                .unwrap_err()
                .to_string()
                .contains("not a JSON number")
        );
    }

    #[test]
    fn hostile_streams_are_errors_not_hangs() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            bomb.push_str(&format!(
                "{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                n = (b'a' + i) as char,
                p = (b'a' + i - 1) as char
            ));
        }
        let err = documents(&bomb).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        // The parser's own recursion limit may answer first; either way it is an error.
        assert!(documents(&deep).is_err());
        let nested = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH + 5),
            "]".repeat(MAX_DEPTH + 5)
        );
        assert!(documents(&nested).is_err());
    }
}
