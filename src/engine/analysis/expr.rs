//! Argo's condition language (an expr-lang subset) over a measured `result` (being written).

use std::collections::BTreeMap;

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
    Parse { expr: String, position: usize, reason: String },
    #[error("cannot evaluate condition {expr:?}: {reason}")]
    Eval { expr: String, reason: String },
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    source: String,
}

impl Expr {
    /// Parse a condition.
    pub fn parse(source: &str) -> Result<Self, ExprError> {
        Err(ExprError::Parse { expr: source.into(), position: 0, reason: "not implemented yet".into() })
    }

    /// Evaluate to a boolean with `result` bound to the measured value.
    pub fn eval_bool(&self, _result: &Value) -> Result<bool, ExprError> {
        Err(ExprError::Eval { expr: self.source.clone(), reason: "not implemented yet".into() })
    }
}
