//! Argo's analysis condition language: decides whether a measured `result` satisfies a metric's
//! `successCondition` / `failureCondition`.
//!
//! Argo Rollouts evaluates those conditions with expr-lang (`github.com/expr-lang/expr`), binding
//! `result` to the measured value: a float for a Prometheus scalar, a list of floats for a vector,
//! a map or list for a web provider's JSON. This module is a hand-written lexer, Pratt parser and
//! evaluator for the subset of expr-lang users write in conditions. It is pure: it never does I/O,
//! never reads a clock and never panics, whatever the condition or the value.
//!
//! Supported:
//! - literals: numbers (`1`, `0.95`, `1e-3`, `1_000`), strings (`'x'`, `"x"`, `` `raw` ``),
//!   `true`, `false`, `nil`, lists `[1, 2]`; the identifier `result` (any other identifier is a
//!   parse error naming it, as in Argo, whose conditions compile against `result` alone);
//! - arithmetic `+ - * / % ** ^` (`^` is exponentiation as in expr-lang), unary `- + ! not`;
//! - comparisons `== != < <= > >=` (numbers with numbers, strings with strings; `==`/`!=` on
//!   anything), IEEE NaN semantics (every ordering comparison with NaN is false);
//! - logic `&& || and or` with short-circuit, `in` / `not in` (element of a list, key of a map),
//!   `contains`, `startsWith`, `endsWith`, the ternary `a ? b : c`, nil coalescing `a ?? b`;
//! - indexing `result[0]`, `result[-1]` (from the end), `result["key"]`, members `result.p99`,
//!   `result.data.rate` (a missing map key is `nil`, as in expr-lang);
//! - functions `len isNaN isInf(x[, sign]) isNil asInt asFloat default abs ceil floor round max
//!   min sum mean` and the predicates `all any none one count filter map` with `#` as the current
//!   element (`all(result, {# > 0.9})` or `all(result, # > 0.9)`, `.field` for `#.field`).
//!
//! Decisions:
//! - an index out of range is an evaluation error (as in Argo), which says which index and the
//!   length, and that the query returned no data when the list is empty;
//! - `default(x, fallback)` returns `fallback` when `x` is `nil` (not NaN). Its first argument is
//!   evaluated normally, so `default(result[0], 0)` on an empty result is still an index error,
//!   exactly as in Argo; write `len(result) == 0 || result[0] >= 0.9` instead;
//! - `max`/`min` propagate NaN; `mean([])` is an error;
//! - not supported: map literals, `matches` (regular expressions), ranges `1..3`, pipes `|`,
//!   optional chaining `?.`, variables `let`, string functions other than the three operators.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A measured value as conditions see it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// Why a condition could not be parsed or evaluated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("cannot parse condition {expr:?} at position {position}: {reason}")]
    Parse {
        expr: String,
        position: usize,
        reason: String,
    },
    #[error("cannot evaluate condition {expr:?}: {reason}")]
    Eval { expr: String, reason: String },
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    source: String,
    root: Node,
}

impl Expr {
    /// Parse a condition.
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        let perr = |(position, reason): (usize, String)| ExprError::Parse {
            expr: source.to_string(),
            position,
            reason,
        };
        let toks = lex(source).map_err(perr)?;
        let mut p = Parser {
            toks,
            i: 0,
            closures: 0,
            depth: 0,
        };
        let root = p.parse_bp(0).map_err(perr)?;
        let t = p.peek();
        if t.tok != Tok::Eof {
            return Err(perr((t.pos, format!("unexpected {}", t.describe()))));
        }
        Ok(Expr {
            source: source.to_string(),
            root,
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the condition calls the function `name` anywhere (`isNaN`, `len`, …): how the
    /// run core tells a condition written to judge NaN or an empty result from one that is not.
    pub fn calls(&self, name: &str) -> bool {
        self.root.calls(name)
    }

    /// Evaluate to any value with `result` bound to the measured value.
    pub fn eval(&self, result: &Value) -> Result<Value, ExprError> {
        let mut ctx = Ctx {
            result,
            hashes: Vec::new(),
        };
        eval(&self.root, &mut ctx).map_err(|reason| ExprError::Eval {
            expr: self.source.clone(),
            reason,
        })
    }

    /// Evaluate to a boolean with `result` bound to the measured value.
    pub fn eval_bool(&self, result: &Value) -> Result<bool, ExprError> {
        match self.eval(result)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExprError::Eval {
                expr: self.source.clone(),
                reason: format!(
                    "condition must evaluate to true or false, got {}",
                    other.display()
                ),
            }),
        }
    }
}

/// Parse `condition` and evaluate it to a boolean against `result`.
pub fn evaluate(condition: &str, result: &Value) -> Result<bool, ExprError> {
    Expr::parse(condition)?.eval_bool(result)
}

impl Value {
    /// Convert a JSON value (a web provider's body, a Prometheus sample) into a condition value.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(a) => Value::List(a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The value as Argo records it in a measurement: `0.97`, `[0.97,0.5]`, `NaN`, `+Inf`,
    /// `{"p99":1.2}`; a top-level string is recorded as is.
    pub fn display(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            other => {
                let mut out = String::new();
                write_value(other, &mut out);
                out
            }
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "nil",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
        }
    }
}

fn fmt_number(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{f}")
    }
}

fn write_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(f) => out.push_str(&fmt_number(*f)),
        Value::String(s) => out.push_str(&quote(s)),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quote(k));
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

// ---------------------------------------------------------------------------------------------
// Lexer

/// Longest condition accepted, in tokens: bounds the syntax tree's depth so evaluation cannot
/// overflow the stack.
const MAX_TOKENS: usize = 512;
/// Deepest nesting of parentheses, unary operators and right-associative operators.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Hash,
    Op(&'static str),
    Eof,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: usize,
    text: String,
}

impl Token {
    fn describe(&self) -> String {
        match self.tok {
            Tok::Eof => "end of condition".into(),
            _ => format!("'{}'", self.text),
        }
    }
}

type PResult<T> = Result<T, (usize, String)>;

const OPS2: [&str; 8] = ["**", "==", "!=", "<=", ">=", "&&", "||", "??"];
const OPS1: [&str; 18] = [
    "(", ")", "[", "]", "{", "}", ",", ".", "?", ":", "+", "-", "*", "/", "%", "^", "<", ">",
];

fn lex(src: &str) -> PResult<Vec<Token>> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if out.len() >= MAX_TOKENS {
            return Err((
                i,
                format!("condition too long: more than {MAX_TOKENS} tokens"),
            ));
        }
        let start = i;
        let tok = if c.is_ascii_digit() {
            let digits = |i: &mut usize| {
                while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b'_') {
                    *i += 1;
                }
            };
            digits(&mut i);
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                digits(&mut i);
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    digits(&mut i);
                } else {
                    return Err((start, format!("invalid number '{}'", &src[start..=i])));
                }
            }
            if i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                return Err((start, format!("invalid number '{}'", &src[start..j])));
            }
            let text: String = src[start..i].chars().filter(|c| *c != '_').collect();
            match text.parse::<f64>() {
                Ok(n) => Tok::Num(n),
                Err(_) => return Err((start, format!("invalid number '{}'", &src[start..i]))),
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            Tok::Ident(src[start..i].to_string())
        } else if c == b'"' || c == b'\'' || c == b'`' {
            let quote = c as char;
            let mut s = String::new();
            let mut chars = src[i + 1..].char_indices();
            let mut end = None;
            while let Some((off, ch)) = chars.next() {
                if ch == quote {
                    end = Some(i + 1 + off + 1);
                    break;
                }
                if ch == '\\' && quote != '`' {
                    let Some((eoff, e)) = chars.next() else { break };
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        '\\' => '\\',
                        '\'' => '\'',
                        '"' => '"',
                        other => {
                            return Err((
                                i + eoff,
                                format!("invalid escape '\\{other}' in string"),
                            ));
                        }
                    });
                } else {
                    s.push(ch);
                }
            }
            match end {
                Some(e) => i = e,
                None => return Err((start, "unterminated string".into())),
            }
            Tok::Str(s)
        } else if c == b'#' {
            i += 1;
            Tok::Hash
        } else if let Some(op) = OPS2.iter().find(|op| b[i..].starts_with(op.as_bytes())) {
            i += 2;
            Tok::Op(op)
        } else if let Some(op) = OPS1.iter().find(|op| b[i..].starts_with(op.as_bytes())) {
            i += 1;
            Tok::Op(op)
        } else if c == b'!' {
            i += 1;
            Tok::Op("!")
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            let hint = match ch {
                '=' => " (use == to compare)",
                '&' => " (use && or and)",
                '|' => " (use || or or)",
                _ => "",
            };
            return Err((start, format!("unexpected character '{ch}'{hint}")));
        };
        out.push(Token {
            tok,
            pos: start,
            text: src[start..i].to_string(),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: src.len(),
        text: String::new(),
    });
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Clone, Copy, Debug, PartialEq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum UnOp {
    Neg,
    Plus,
    Not,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(Value),
    Result,
    Hash,
    List(Vec<Node>),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Coalesce(Box<Node>, Box<Node>),
    Ternary(Box<Node>, Box<Node>, Box<Node>),
    Index(Box<Node>, Box<Node>),
    Member(Box<Node>, String),
    Call(&'static str, Vec<Node>),
}

impl Node {
    fn calls(&self, name: &str) -> bool {
        match self {
            Node::Lit(_) | Node::Result | Node::Hash => false,
            Node::Member(x, _) | Node::Unary(_, x) => x.calls(name),
            Node::List(items) => items.iter().any(|n| n.calls(name)),
            Node::Binary(_, a, b)
            | Node::And(a, b)
            | Node::Or(a, b)
            | Node::Coalesce(a, b)
            | Node::Index(a, b) => a.calls(name) || b.calls(name),
            Node::Ternary(a, b, c) => a.calls(name) || b.calls(name) || c.calls(name),
            Node::Call(f, args) => *f == name || args.iter().any(|n| n.calls(name)),
        }
    }
}

/// Functions whose second argument is a predicate over `#`.
const PREDICATE_FUNCS: [&str; 7] = ["all", "any", "none", "one", "count", "filter", "map"];
/// Other functions with their minimum and maximum argument counts.
const FUNCS: [(&str, usize, usize); 15] = [
    ("len", 1, 1),
    ("isNaN", 1, 1),
    ("isInf", 1, 2),
    ("isNil", 1, 1),
    ("asInt", 1, 1),
    ("asFloat", 1, 1),
    ("default", 2, 2),
    ("abs", 1, 1),
    ("ceil", 1, 1),
    ("floor", 1, 1),
    ("round", 1, 1),
    ("max", 1, usize::MAX),
    ("min", 1, usize::MAX),
    ("sum", 1, 1),
    ("mean", 1, 1),
];

const TERNARY_BP: u8 = 1;

fn infix(tok: &Tok) -> Option<(&'static str, u8, u8)> {
    let (name, lbp, rbp) = match tok {
        Tok::Op("??") => ("??", 5, 6),
        Tok::Op("||") => ("||", 10, 11),
        Tok::Ident(s) if s == "or" => ("||", 10, 11),
        Tok::Op("&&") => ("&&", 15, 16),
        Tok::Ident(s) if s == "and" => ("&&", 15, 16),
        Tok::Op(op @ ("==" | "!=" | "<" | "<=" | ">" | ">=")) => (*op, 20, 21),
        Tok::Ident(s) if s == "in" => ("in", 20, 21),
        Tok::Ident(s) if s == "not" => ("not in", 20, 21),
        Tok::Ident(s) if s == "contains" => ("contains", 20, 21),
        Tok::Ident(s) if s == "startsWith" => ("startsWith", 20, 21),
        Tok::Ident(s) if s == "endsWith" => ("endsWith", 20, 21),
        Tok::Op(op @ ("+" | "-")) => (*op, 30, 31),
        Tok::Op(op @ ("*" | "/" | "%")) => (*op, 60, 61),
        Tok::Op(op @ ("**" | "^")) => (*op, 100, 100),
        _ => return None,
    };
    Some((name, lbp, rbp))
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    closures: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The lexer always ends the list with Eof and the parser never moves past it.
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek().tok, Tok::Op(o) if o == op)
    }

    fn expect(&mut self, op: &str) -> PResult<()> {
        if self.is_op(op) {
            self.bump();
            Ok(())
        } else {
            let t = self.peek();
            Err((t.pos, format!("expected '{op}', found {}", t.describe())))
        }
    }

    fn parse_bp(&mut self, min_bp: u8) -> PResult<Node> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((self.peek().pos, "condition nested too deeply".into()));
        }
        let r = self.parse_bp_inner(min_bp);
        self.depth -= 1;
        r
    }

    fn parse_bp_inner(&mut self, min_bp: u8) -> PResult<Node> {
        let mut lhs = self.parse_prefix()?;
        loop {
            if self.is_op("[") {
                self.bump();
                let idx = self.parse_bp(0)?;
                self.expect("]")?;
                lhs = Node::Index(Box::new(lhs), Box::new(idx));
                continue;
            }
            if self.is_op(".") {
                self.bump();
                let name = self.member_name()?;
                lhs = Node::Member(Box::new(lhs), name);
                continue;
            }
            if self.is_op("?") {
                if min_bp > TERNARY_BP {
                    break;
                }
                self.bump();
                let yes = self.parse_bp(0)?;
                self.expect(":")?;
                let no = self.parse_bp(TERNARY_BP)?;
                lhs = Node::Ternary(Box::new(lhs), Box::new(yes), Box::new(no));
                continue;
            }
            let Some((op, lbp, rbp)) = infix(&self.peek().tok) else {
                break;
            };
            if lbp < min_bp {
                break;
            }
            self.bump();
            if op == "not in" {
                match &self.peek().tok {
                    Tok::Ident(s) if s == "in" => {
                        self.bump();
                    }
                    _ => {
                        let t = self.peek();
                        return Err((
                            t.pos,
                            format!("expected 'in' after 'not', found {}", t.describe()),
                        ));
                    }
                }
            }
            let rhs = self.parse_bp(rbp)?;
            let (l, r) = (Box::new(lhs), Box::new(rhs));
            lhs = match op {
                "||" => Node::Or(l, r),
                "&&" => Node::And(l, r),
                "??" => Node::Coalesce(l, r),
                _ => {
                    let b = match op {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        "/" => BinOp::Div,
                        "%" => BinOp::Mod,
                        "**" | "^" => BinOp::Pow,
                        "==" => BinOp::Eq,
                        "!=" => BinOp::Ne,
                        "<" => BinOp::Lt,
                        "<=" => BinOp::Le,
                        ">" => BinOp::Gt,
                        ">=" => BinOp::Ge,
                        "in" => BinOp::In,
                        "not in" => BinOp::NotIn,
                        "contains" => BinOp::Contains,
                        "startsWith" => BinOp::StartsWith,
                        _ => BinOp::EndsWith,
                    };
                    Node::Binary(b, l, r)
                }
            };
        }
        Ok(lhs)
    }

    fn member_name(&mut self) -> PResult<String> {
        let t = self.bump();
        match t.tok {
            Tok::Ident(name) => Ok(name),
            _ => Err((
                t.pos,
                format!("expected a field name after '.', found {}", t.describe()),
            )),
        }
    }

    fn parse_prefix(&mut self) -> PResult<Node> {
        let t = self.bump();
        match t.tok {
            Tok::Num(n) => Ok(Node::Lit(Value::Number(n))),
            Tok::Str(s) => Ok(Node::Lit(Value::String(s))),
            Tok::Hash => {
                if self.closures == 0 {
                    Err((
                        t.pos,
                        "'#' can only be used inside a predicate such as all(result, {# > 0.9})"
                            .into(),
                    ))
                } else {
                    Ok(Node::Hash)
                }
            }
            Tok::Op("(") => {
                let inner = self.parse_bp(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.is_op("]") {
                    items.push(self.parse_bp(0)?);
                    if !self.is_op(",") {
                        break;
                    }
                    self.bump();
                }
                self.expect("]")?;
                Ok(Node::List(items))
            }
            Tok::Op("-") => Ok(Node::Unary(UnOp::Neg, Box::new(self.parse_bp(90)?))),
            Tok::Op("+") => Ok(Node::Unary(UnOp::Plus, Box::new(self.parse_bp(90)?))),
            Tok::Op("!") => Ok(Node::Unary(UnOp::Not, Box::new(self.parse_bp(50)?))),
            Tok::Op(".") if self.closures > 0 => {
                let name = self.member_name()?;
                Ok(Node::Member(Box::new(Node::Hash), name))
            }
            Tok::Op("{") => Err((
                t.pos,
                "unexpected '{' (map literals are not supported; braces only wrap predicates)"
                    .into(),
            )),
            Tok::Ident(ref name) => match name.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "nil" => Ok(Node::Lit(Value::Null)),
                "not" => Ok(Node::Unary(UnOp::Not, Box::new(self.parse_bp(50)?))),
                "and" | "or" | "in" | "contains" | "startsWith" | "endsWith" => {
                    Err((t.pos, format!("unexpected {}", t.describe())))
                }
                _ if self.is_op("(") => self.parse_call(&t),
                "result" => Ok(Node::Result),
                // As Argo's `expr.Compile(.., expr.Env(env))`: an unknown name is refused before
                // any measurement, so a typo is an InvalidSpec, not an error on every measurement.
                _ => Err((
                    t.pos,
                    format!("unknown name '{name}' (only 'result' is defined)"),
                )),
            },
            _ => Err((t.pos, format!("unexpected {}", t.describe()))),
        }
    }

    fn parse_call(&mut self, name_tok: &Token) -> PResult<Node> {
        let name = name_tok.text.as_str();
        self.expect("(")?;
        if let Some(f) = PREDICATE_FUNCS.iter().find(|f| **f == name) {
            let list = self.parse_bp(0)?;
            self.expect(",")?;
            self.closures += 1;
            let body = if self.is_op("{") {
                self.bump();
                let body = self.parse_bp(0);
                body.and_then(|b| self.expect("}").map(|()| b))
            } else {
                self.parse_bp(0)
            };
            self.closures -= 1;
            let body = body?;
            self.expect(")")?;
            return Ok(Node::Call(f, vec![list, body]));
        }
        let Some(&(f, min, max)) = FUNCS.iter().find(|(f, _, _)| *f == name) else {
            return Err((name_tok.pos, format!("unknown function '{name}'")));
        };
        let mut args = Vec::new();
        while !self.is_op(")") {
            args.push(self.parse_bp(0)?);
            if !self.is_op(",") {
                break;
            }
            self.bump();
        }
        self.expect(")")?;
        if args.len() < min || args.len() > max {
            let want = if min == max {
                format!("{min}")
            } else if max == usize::MAX {
                format!("at least {min}")
            } else {
                format!("{min} or {max}")
            };
            return Err((
                name_tok.pos,
                format!("{f}() takes {want} argument(s), got {}", args.len()),
            ));
        }
        Ok(Node::Call(f, args))
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluator

struct Ctx<'a> {
    result: &'a Value,
    hashes: Vec<Value>,
}

type EResult = Result<Value, String>;

fn eval(node: &Node, ctx: &mut Ctx) -> EResult {
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Result => Ok(ctx.result.clone()),
        Node::Hash => ctx
            .hashes
            .last()
            .cloned()
            .ok_or_else(|| "'#' outside a predicate".into()),
        Node::List(items) => Ok(Value::List(
            items
                .iter()
                .map(|n| eval(n, ctx))
                .collect::<Result<_, _>>()?,
        )),
        Node::Unary(op, inner) => {
            let v = eval(inner, ctx)?;
            match (op, &v) {
                (UnOp::Neg, Value::Number(n)) => Ok(Value::Number(-n)),
                (UnOp::Plus, Value::Number(n)) => Ok(Value::Number(*n)),
                (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                (UnOp::Not, _) => Err(format!("invalid operation: ! {}", v.type_name())),
                _ => Err(format!("invalid operation: - {}", v.type_name())),
            }
        }
        Node::And(l, r) => match eval(l, ctx)? {
            Value::Bool(false) => Ok(Value::Bool(false)),
            Value::Bool(true) => match eval(r, ctx)? {
                Value::Bool(b) => Ok(Value::Bool(b)),
                other => Err(format!("invalid operation: bool && {}", other.type_name())),
            },
            other => Err(format!("invalid operation: {} && ...", other.type_name())),
        },
        Node::Or(l, r) => match eval(l, ctx)? {
            Value::Bool(true) => Ok(Value::Bool(true)),
            Value::Bool(false) => match eval(r, ctx)? {
                Value::Bool(b) => Ok(Value::Bool(b)),
                other => Err(format!("invalid operation: bool || {}", other.type_name())),
            },
            other => Err(format!("invalid operation: {} || ...", other.type_name())),
        },
        Node::Coalesce(l, r) => match eval(l, ctx)? {
            Value::Null => eval(r, ctx),
            v => Ok(v),
        },
        Node::Ternary(c, yes, no) => match eval(c, ctx)? {
            Value::Bool(true) => eval(yes, ctx),
            Value::Bool(false) => eval(no, ctx),
            other => Err(format!(
                "the condition of '?:' must be true or false, got {}",
                other.display()
            )),
        },
        Node::Binary(op, l, r) => {
            let lv = eval(l, ctx)?;
            let rv = eval(r, ctx)?;
            binary(*op, &lv, &rv)
        }
        Node::Index(base, idx) => {
            let b = eval(base, ctx)?;
            let i = eval(idx, ctx)?;
            index(&b, &i, base)
        }
        Node::Member(base, name) => match eval(base, ctx)? {
            Value::Map(m) => Ok(m.get(name).cloned().unwrap_or(Value::Null)),
            other => Err(format!(
                "cannot fetch '{name}' from {} {}",
                other.type_name(),
                describe(base)
            )),
        },
        Node::Call(f, args) => call(f, args, ctx),
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Result => "result".into(),
        Node::Hash => "#".into(),
        Node::Member(_, name) => format!("'{name}'"),
        _ => "value".into(),
    }
}

fn index(base: &Value, idx: &Value, base_node: &Node) -> EResult {
    match (base, idx) {
        (Value::List(items), Value::Number(n)) => {
            let i = list_index(*n, items.len(), base_node)?;
            Ok(items[i].clone())
        }
        (Value::String(s), Value::Number(n)) => {
            let chars: Vec<char> = s.chars().collect();
            let i = list_index(*n, chars.len(), base_node)?;
            Ok(Value::String(chars[i].to_string()))
        }
        (Value::Map(m), Value::String(k)) => Ok(m.get(k).cloned().unwrap_or(Value::Null)),
        (Value::Map(_), other) => Err(format!(
            "cannot index a map with a {}, use a string key",
            other.type_name()
        )),
        (Value::List(_) | Value::String(_), other) => Err(format!(
            "cannot index a list with a {}, use a number",
            other.type_name()
        )),
        (other, _) => Err(format!(
            "cannot index {} {} (only lists, maps and strings can be indexed)",
            other.type_name(),
            describe(base_node)
        )),
    }
}

fn list_index(n: f64, len: usize, base_node: &Node) -> Result<usize, String> {
    if n.fract() != 0.0 || !n.is_finite() {
        return Err(format!("index {} is not an integer", fmt_number(n)));
    }
    let what = describe(base_node);
    let out_of_range = || {
        let empty = if len == 0 {
            " (the query returned no data)"
        } else {
            ""
        };
        format!(
            "index {} out of range: {what} has {len} elements{empty}",
            fmt_number(n)
        )
    };
    let len_f = len as f64;
    let i = if n < 0.0 { n + len_f } else { n };
    if i < 0.0 || i >= len_f {
        return Err(out_of_range());
    }
    Ok(i as usize)
}

fn values_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_eq(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && values_eq(va, vb))
        }
        _ => false,
    }
}

fn op_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Mod => "%",
        BinOp::Pow => "**",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::In => "in",
        BinOp::NotIn => "not in",
        BinOp::Contains => "contains",
        BinOp::StartsWith => "startsWith",
        BinOp::EndsWith => "endsWith",
    }
}

fn binary(op: BinOp, l: &Value, r: &Value) -> EResult {
    use Value::{Bool, List, Map, Number, String as Str};
    let invalid = || {
        format!(
            "invalid operation: {} {} {}",
            l.type_name(),
            op_symbol(op),
            r.type_name()
        )
    };
    Ok(match (op, l, r) {
        (BinOp::Eq, _, _) => Bool(values_eq(l, r)),
        (BinOp::Ne, _, _) => Bool(!values_eq(l, r)),
        (BinOp::Add, Number(a), Number(b)) => Number(a + b),
        (BinOp::Add, Str(a), Str(b)) => Str(format!("{a}{b}")),
        (BinOp::Add, List(a), List(b)) => List(a.iter().chain(b).cloned().collect()),
        (BinOp::Sub, Number(a), Number(b)) => Number(a - b),
        (BinOp::Mul, Number(a), Number(b)) => Number(a * b),
        (BinOp::Div, Number(a), Number(b)) => Number(a / b),
        (BinOp::Mod, Number(a), Number(b)) => {
            if a.fract() != 0.0 || b.fract() != 0.0 || !a.is_finite() || !b.is_finite() {
                return Err(format!(
                    "invalid operation: % needs integers, got {} % {}",
                    fmt_number(*a),
                    fmt_number(*b)
                ));
            }
            if *b == 0.0 {
                return Err("integer divide by zero".into());
            }
            Number(a % b)
        }
        (BinOp::Pow, Number(a), Number(b)) => Number(a.powf(*b)),
        (BinOp::Lt, Number(a), Number(b)) => Bool(a < b),
        (BinOp::Le, Number(a), Number(b)) => Bool(a <= b),
        (BinOp::Gt, Number(a), Number(b)) => Bool(a > b),
        (BinOp::Ge, Number(a), Number(b)) => Bool(a >= b),
        (BinOp::Lt, Str(a), Str(b)) => Bool(a < b),
        (BinOp::Le, Str(a), Str(b)) => Bool(a <= b),
        (BinOp::Gt, Str(a), Str(b)) => Bool(a > b),
        (BinOp::Ge, Str(a), Str(b)) => Bool(a >= b),
        (BinOp::In | BinOp::NotIn, _, List(items)) => {
            Bool(items.iter().any(|x| values_eq(x, l)) == (op == BinOp::In))
        }
        (BinOp::In | BinOp::NotIn, Str(k), Map(m)) => Bool(m.contains_key(k) == (op == BinOp::In)),
        (BinOp::Contains, Str(a), Str(b)) => Bool(a.contains(b.as_str())),
        (BinOp::StartsWith, Str(a), Str(b)) => Bool(a.starts_with(b.as_str())),
        (BinOp::EndsWith, Str(a), Str(b)) => Bool(a.ends_with(b.as_str())),
        _ => return Err(invalid()),
    })
}

fn number_arg(f: &str, v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => Ok(*n),
        other => Err(format!(
            "{f}() needs a number, got {} {}",
            other.type_name(),
            other.display()
        )),
    }
}

fn list_arg(f: &str, v: Value) -> Result<Vec<Value>, String> {
    match v {
        Value::List(items) => Ok(items),
        other => Err(format!(
            "{f}() needs a list, got {} {}",
            other.type_name(),
            other.display()
        )),
    }
}

fn numbers(f: &str, items: &[Value]) -> Result<Vec<f64>, String> {
    items.iter().map(|v| number_arg(f, v)).collect()
}

fn call(f: &str, args: &[Node], ctx: &mut Ctx) -> EResult {
    if PREDICATE_FUNCS.contains(&f) {
        let items = list_arg(f, eval(&args[0], ctx)?)?;
        let body = &args[1];
        let mut matched = 0usize;
        let mut kept = Vec::new();
        for item in items {
            ctx.hashes.push(item.clone());
            let out = eval(body, ctx);
            ctx.hashes.pop();
            let out = out?;
            if f == "map" {
                kept.push(out);
                continue;
            }
            let Value::Bool(ok) = out else {
                return Err(format!(
                    "the predicate of {f}() must return true or false, got {}",
                    out.display()
                ));
            };
            if ok {
                matched += 1;
                if f == "filter" {
                    kept.push(item);
                }
            }
            match (f, ok) {
                ("all", false) => return Ok(Value::Bool(false)),
                ("any", true) => return Ok(Value::Bool(true)),
                ("none", true) => return Ok(Value::Bool(false)),
                _ => {}
            }
        }
        return Ok(match f {
            "all" => Value::Bool(true),
            "any" => Value::Bool(false),
            "none" => Value::Bool(true),
            "one" => Value::Bool(matched == 1),
            "count" => Value::Number(matched as f64),
            _ => Value::List(kept),
        });
    }
    if f == "default" {
        return match eval(&args[0], ctx)? {
            Value::Null => eval(&args[1], ctx),
            v => Ok(v),
        };
    }
    let vals = args
        .iter()
        .map(|a| eval(a, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    let x = &vals[0];
    Ok(match f {
        "len" => match x {
            Value::List(l) => Value::Number(l.len() as f64),
            Value::Map(m) => Value::Number(m.len() as f64),
            Value::String(s) => Value::Number(s.chars().count() as f64),
            other => {
                return Err(format!(
                    "len() needs a list, map or string, got {} {}",
                    other.type_name(),
                    other.display()
                ));
            }
        },
        "isNaN" => Value::Bool(number_arg(f, x)?.is_nan()),
        "isInf" => {
            let n = number_arg(f, x)?;
            let sign = match vals.get(1) {
                Some(s) => number_arg(f, s)?,
                None => 0.0,
            };
            Value::Bool(
                (sign >= 0.0 && n == f64::INFINITY) || (sign <= 0.0 && n == f64::NEG_INFINITY),
            )
        }
        "isNil" => Value::Bool(*x == Value::Null),
        "asInt" => match x {
            Value::Number(n) if n.is_finite() => Value::Number(n.trunc()),
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(i) => Value::Number(i as f64),
                Err(_) => return Err(format!("asInt(): {} is not an integer", quote(s))),
            },
            other => {
                return Err(format!(
                    "asInt() needs a number or a numeric string, got {} {}",
                    other.type_name(),
                    other.display()
                ));
            }
        },
        "asFloat" => match x {
            Value::Number(n) => Value::Number(*n),
            Value::String(s) => match s.trim().parse::<f64>() {
                Ok(n) => Value::Number(n),
                Err(_) => return Err(format!("asFloat(): {} is not a number", quote(s))),
            },
            other => {
                return Err(format!(
                    "asFloat() needs a number or a numeric string, got {} {}",
                    other.type_name(),
                    other.display()
                ));
            }
        },
        "abs" => Value::Number(number_arg(f, x)?.abs()),
        "ceil" => Value::Number(number_arg(f, x)?.ceil()),
        "floor" => Value::Number(number_arg(f, x)?.floor()),
        "round" => Value::Number(number_arg(f, x)?.round()),
        "max" | "min" => {
            let ns = match (&vals[..], x) {
                ([_], Value::List(items)) => numbers(f, items)?,
                _ => numbers(f, &vals)?,
            };
            if ns.is_empty() {
                return Err(format!("{f}() of an empty list"));
            }
            let pick = |a: f64, b: f64| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else if f == "max" {
                    a.max(b)
                } else {
                    a.min(b)
                }
            };
            Value::Number(ns.iter().copied().fold(ns[0], pick))
        }
        "sum" | "mean" => {
            let ns = numbers(f, &list_arg(f, x.clone())?)?;
            if f == "mean" && ns.is_empty() {
                return Err("mean() of an empty list".into());
            }
            let total: f64 = ns.iter().sum();
            Value::Number(if f == "sum" {
                total
            } else {
                total / ns.len() as f64
            })
        }
        _ => return Err(format!("unknown function '{f}'")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn num(n: f64) -> Value {
        Value::Number(n)
    }
    fn list(ns: &[f64]) -> Value {
        Value::List(ns.iter().map(|n| Value::Number(*n)).collect())
    }
    fn json(s: &str) -> Value {
        Value::from_json(&serde_json::from_str(s).expect("test JSON"))
    }

    enum Want {
        T,
        F,
        /// Parse error whose reason contains the text, at the byte position.
        P(usize, &'static str),
        /// Evaluation error whose reason contains the text.
        E(&'static str),
    }
    use Want::{E, F, P, T};

    #[test]
    fn table() {
        let nan = num(f64::NAN);
        let cases: Vec<(&str, Value, Want)> = vec![
            // Conditions from Argo's documentation.
            ("result[0] >= 0.95", list(&[0.97]), T),
            ("result[0] >= 0.95", list(&[0.5]), F),
            (
                "result[0] <= 0.01 || isNaN(result[0])",
                list(&[f64::NAN]),
                T,
            ),
            ("result[0] <= 0.01 || isNaN(result[0])", list(&[0.2]), F),
            ("len(result) == 0 || result[0] < 100", list(&[]), T),
            ("len(result) == 0 || result[0] < 100", list(&[150.0]), F),
            ("result.p99 < 500", json(r#"{"p99": 320}"#), T),
            ("asInt(result) == 200", Value::String("200".into()), T),
            ("asInt(result) == 200", num(200.0), T),
            ("default(result[0], 0) >= 0.9", list(&[0.95]), T),
            (
                "default(result[0], 0) >= 0.9",
                list(&[]),
                E("index 0 out of range"),
            ),
            ("default(result.missing, 0) >= 0.9", json("{}"), F),
            ("all(result, {# > 0.9})", list(&[0.95, 0.99]), T),
            ("all(result, {# > 0.9})", list(&[0.95, 0.5]), F),
            ("all(result, # > 0.9)", list(&[]), T),
            ("result == 0.97 || result > 1", num(0.97), T),
            ("result >= 0.95", num(0.97), T),
            // NaN: exactly IEEE.
            ("result >= 0.95", nan.clone(), F),
            ("result < 0.95", nan.clone(), F),
            ("result == result", nan.clone(), F),
            ("result != result", nan.clone(), T),
            ("isInf(result)", num(f64::NEG_INFINITY), T),
            ("isInf(result, 1)", num(f64::NEG_INFINITY), F),
            // Literals and arithmetic.
            ("1e-3 == 0.001", Value::Null, T),
            ("1_000 + 0.5 == 1000.5", Value::Null, T),
            ("7 / 2 == 3.5 && 7 % 2 == 1", Value::Null, T),
            ("2 ** 3 == 8 && 2 ^ 3 == 8 && -2 ** 2 == -4", Value::Null, T),
            ("2 ** 3 ** 2 == 512", Value::Null, T),
            ("1 + 2 * 3 == 7 && (1 + 2) * 3 == 9", Value::Null, T),
            ("'a' + \"b\" == 'ab' && 'abc' < 'abd'", Value::Null, T),
            ("nil == nil && isNil(result)", Value::Null, T),
            ("[1, 2] == [1, 2] && [1] + [2] == [1, 2]", Value::Null, T),
            // Logic, short-circuit, ternary, in.
            ("not false and !false", Value::Null, T),
            ("false && result[3] > 1", Value::Null, F),
            ("true or result[3] > 1", Value::Null, T),
            ("result > 1 ? result < 10 : false", num(5.0), T),
            ("2 in result && 5 not in result", list(&[1.0, 2.0]), T),
            (
                "'p99' in result and 'p50' not in result",
                json(r#"{"p99": 1}"#),
                T,
            ),
            (
                "result.status contains 'ok'",
                json(r#"{"status": "all ok"}"#),
                T,
            ),
            ("(result.rate ?? 0) < 1", json("{}"), T),
            // Indexing and members.
            ("result[-1] == 3", list(&[1.0, 2.0, 3.0]), T),
            ("result['key'] == 'v'", json(r#"{"key": "v"}"#), T),
            (
                "result.data.rate > 0.5",
                json(r#"{"data": {"rate": 0.7}}"#),
                T,
            ),
            (
                "result.items[1].ok",
                json(r#"{"items": [{"ok": false}, {"ok": true}]}"#),
                T,
            ),
            (
                "result[0]",
                list(&[]),
                E("result has 0 elements (the query returned no data)"),
            ),
            (
                "result[3] > 0",
                list(&[1.0]),
                E("index 3 out of range: result has 1 elements"),
            ),
            ("result[-2] > 0", list(&[1.0]), E("index -2 out of range")),
            ("result[0.5] > 0", list(&[1.0]), E("not an integer")),
            (
                "result.p99 > 1",
                list(&[1.0]),
                E("cannot fetch 'p99' from list result"),
            ),
            ("result[0] > 1", Value::Null, E("cannot index nil result")),
            // Functions.
            (
                "len('héllo') == 5 && len(result) == 1",
                json(r#"{"a": 1}"#),
                T,
            ),
            ("asFloat('0.5') == 0.5 && asInt(2.9) == 2", Value::Null, T),
            (
                "abs(-2) == 2 && max(1, 3, 2) == 3 && min(result) == 1",
                list(&[2.0, 1.0]),
                T,
            ),
            (
                "sum(result) == 3 && mean(result) == 1.5",
                list(&[1.0, 2.0]),
                T,
            ),
            ("any(result, {# < 0})", list(&[1.0, -1.0]), T),
            (
                "count(result, # > 1) == 2 && one(result, # == 1)",
                list(&[1.0, 2.0, 3.0]),
                T,
            ),
            (
                "all(result, {.ok})",
                json(r#"[{"ok": true}, {"ok": true}]"#),
                T,
            ),
            ("len(filter(result, # > 1)) == 1", list(&[1.0, 2.0]), T),
            (
                "any(result, all([1, 2], # < 3)) && none(result, # > 5)",
                list(&[1.0]),
                T,
            ),
            (
                "none(result, # > 'a')",
                list(&[1.0]),
                E("invalid operation: number > string"),
            ),
            ("isNaN(max(result))", list(&[1.0, f64::NAN]), T),
            (
                "asInt(result) == 1",
                Value::String("1.5".into()),
                E("\"1.5\" is not an integer"),
            ),
            (
                "isNaN(result)",
                list(&[1.0]),
                E("isNaN() needs a number, got list [1]"),
            ),
            (
                "all(result, # > 0)",
                Value::Null,
                E("all() needs a list, got nil"),
            ),
            (
                "all(result, # + 1)",
                list(&[1.0]),
                E("must return true or false, got 2"),
            ),
            // Evaluation errors.
            (
                "result",
                num(0.97),
                E("condition must evaluate to true or false, got 0.97"),
            ),
            (
                "'a' < 1",
                Value::Null,
                E("invalid operation: string < number"),
            ),
            (
                "result > 1 && 1",
                num(2.0),
                E("invalid operation: bool && number"),
            ),
            ("5 % 0 == 0", Value::Null, E("integer divide by zero")),
            ("-'a' == 1", Value::Null, E("invalid operation")),
            // Parse errors.
            ("result[0] >= 0.95)", list(&[1.0]), P(17, "unexpected ')'")),
            ("result == 'abc", Value::Null, P(10, "unterminated string")),
            ("result[0 > 1", list(&[1.0]), P(12, "expected ']'")),
            ("(1 + 2", Value::Null, P(6, "expected ')'")),
            ("", Value::Null, P(0, "unexpected end of condition")),
            ("result = 1", Value::Null, P(7, "use == to compare")),
            ("foo > 1", Value::Null, P(0, "unknown name 'foo'")),
            (
                "all(result, # > limit)",
                Value::Null,
                P(16, "unknown name 'limit'"),
            ),
            (
                "# > 1",
                Value::Null,
                P(0, "'#' can only be used inside a predicate"),
            ),
            (
                "frobnicate(result)",
                Value::Null,
                P(0, "unknown function 'frobnicate'"),
            ),
            (
                "len(result, 2)",
                Value::Null,
                P(0, "len() takes 1 argument(s), got 2"),
            ),
            ("1.5.3 > 1", Value::Null, P(4, "expected a field name")),
            ("12abc > 1", Value::Null, P(0, "invalid number '12abc'")),
            ("1e > 1", Value::Null, P(0, "invalid number")),
            ("result > 1 and", Value::Null, P(14, "unexpected end")),
            (
                "{1: 2}",
                Value::Null,
                P(0, "map literals are not supported"),
            ),
            ("'\\q'", Value::Null, P(1, "invalid escape")),
            ("1 not 2", Value::Null, P(6, "expected 'in' after 'not'")),
        ];
        let count = cases.len();
        for (cond, result, want) in cases {
            let got = evaluate(cond, &result);
            match (want, &got) {
                (T, Ok(true)) | (F, Ok(false)) => {}
                (E(text), Err(ExprError::Eval { reason, .. })) if reason.contains(text) => {}
                (
                    P(pos, text),
                    Err(ExprError::Parse {
                        position, reason, ..
                    }),
                ) if *position == pos && reason.contains(text) => {}
                (_, got) => panic!("{cond:?} with result {}: got {got:?}", result.display()),
            }
        }
        assert!(count >= 40);
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(Expr::parse(&deep), Err(ExprError::Parse { .. })));
        let long = format!("1{} == 1", " + 1".repeat(10_000));
        assert!(matches!(Expr::parse(&long), Err(ExprError::Parse { .. })));
        let bangs = format!("{}true", "!".repeat(10_000));
        assert!(matches!(Expr::parse(&bangs), Err(ExprError::Parse { .. })));
        let idx = format!("result{}", "[0]".repeat(100));
        assert!(Expr::parse(&idx).is_ok());
    }

    #[test]
    fn display_like_argo() {
        assert_eq!(num(0.97).display(), "0.97");
        assert_eq!(num(100.0).display(), "100");
        assert_eq!(list(&[0.97, 0.5]).display(), "[0.97,0.5]");
        assert_eq!(num(f64::NAN).display(), "NaN");
        assert_eq!(num(f64::INFINITY).display(), "+Inf");
        assert_eq!(json(r#"{"p99": 1.2}"#).display(), r#"{"p99":1.2}"#);
        assert_eq!(
            json(r#"{"a": [null, true, "x"]}"#).display(),
            r#"{"a":[null,true,"x"]}"#
        );
        assert_eq!(Value::String("ok".into()).display(), "ok");
    }

    #[test]
    fn error_messages_name_the_condition() {
        let err = evaluate("result[0] > 1", &list(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot evaluate condition \"result[0] > 1\": index 0 out of range: result has 0 \
             elements (the query returned no data)"
        );
        let err = evaluate("result >", &num(1.0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot parse condition \"result >\" at position 8: unexpected end of condition"
        );
    }

    #[test]
    fn parse_once_eval_many() {
        let e = Expr::parse("result[0] >= 0.95").unwrap();
        assert_eq!(e.source(), "result[0] >= 0.95");
        assert_eq!(e.eval_bool(&list(&[0.99])), Ok(true));
        assert_eq!(e.eval_bool(&list(&[0.9])), Ok(false));
        assert_eq!(e.eval(&list(&[0.9, 1.0])), Ok(Value::Bool(false)));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(Value::Number),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(-1.0)]
                .prop_map(Value::Number),
            "[a-z0-9]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..5).prop_map(Value::Map),
            ]
        })
    }

    fn arb_condition() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("result"),
            Just("result[0]"),
            Just("result[-1]"),
            Just("result.a"),
            Just("#"),
            Just("len("),
            Just("isNaN("),
            Just("all(result, {"),
            Just("any(result, "),
            Just("default("),
            Just("max("),
            Just("asInt("),
            Just("asFloat("),
            Just("("),
            Just(")"),
            Just("["),
            Just("]"),
            Just("{"),
            Just("}"),
            Just(","),
            Just("."),
            Just(" ? "),
            Just(" : "),
            Just(" ?? "),
            Just(" && "),
            Just(" || "),
            Just(" not "),
            Just(" in "),
            Just("!"),
            Just(" == "),
            Just(" < "),
            Just(" >= "),
            Just(" + "),
            Just(" - "),
            Just(" % "),
            Just(" ** "),
            Just(" / "),
            Just("0"),
            Just("-1"),
            Just("0.95"),
            Just("1e309"),
            Just("'a'"),
            Just("\"é"),
            Just("nil"),
            Just("true"),
        ];
        prop::collection::vec(piece, 0..16).prop_map(|ps| ps.concat())
    }

    proptest! {
        #[test]
        fn random_strings_never_panic(s in "\\PC{0,40}", v in arb_value()) {
            let _ = evaluate(&s, &v);
        }

        #[test]
        fn random_conditions_never_panic(s in arb_condition(), v in arb_value()) {
            if let Ok(e) = Expr::parse(&s) {
                let _ = e.eval_bool(&v);
                let _ = e.eval(&v).map(|x| x.display());
            }
        }

        #[test]
        fn display_never_panics(v in arb_value()) {
            let _ = v.display();
        }
    }
}
