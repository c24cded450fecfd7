//! The settings of providers whose Argo configuration the API keeps as a free object (`graphite`,
//! `influxdb`, …): typed reads of its keys, each error naming the field as written
//! (`provider.graphite.address`).
//!
//! Decides which JSON types a key accepts (text keys take a string, flags a boolean) and that a
//! wrong type is an error rather than the default. Must never put a value into an error message:
//! any key may hold a substituted secret argument.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use super::http::{Auth, header_map};
use crate::api::argo::analysis::{Authentication, WebMetricHeader};

/// One provider's configuration object.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    provider: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The object of `provider` (its wire name), or an error when the metric has none.
    pub fn of(provider: &'static str, map: Option<&'a Map<String, Value>>) -> Result<Self, String> {
        map.map(|map| Fields { provider, map })
            .ok_or_else(|| format!("the metric has no {provider} provider"))
    }

    fn path(&self, key: &str) -> String {
        format!("provider.{}.{key}", self.provider)
    }

    /// A text key: `None` when absent, empty or only whitespace.
    pub fn text(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
            Some(_) => Err(format!("{} must be a string", self.path(key))),
        }
    }

    /// A text key that must be set.
    pub fn required(&self, key: &str) -> Result<&'a str, String> {
        self.text(key)?
            .ok_or_else(|| format!("{} is not set", self.path(key)))
    }

    /// A boolean key, default false.
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{} must be true or false", self.path(key))),
        }
    }

    /// `authentication` (the block Argo's prometheus and web providers take).
    pub fn auth(&self) -> Result<Auth, String> {
        let spec: Option<Authentication> = self.decode("authentication")?;
        Auth::from_spec(spec.as_ref()).map_err(|e| format!("{}: {e}", self.path("authentication")))
    }

    /// `headers` (`[{key, value}]`, as Argo's prometheus and web providers take them).
    pub fn headers(&self) -> Result<HeaderMap, String> {
        let headers: Option<Vec<WebMetricHeader>> = self.decode("headers")?;
        header_map(&headers.unwrap_or_default())
            .map_err(|e| format!("{}: {e}", self.path("headers")))
    }

    /// A key of any shape, decoded (`None` when absent); the error names the field, not the value.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            // serde's message may quote the value; say only where and what shape was expected.
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|_| format!("{} has the wrong shape", self.path(key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn keys_are_typed_and_errors_name_the_field_not_the_value() {
        let m = map(
            json!({"address": " http://g ", "query": "", "insecure": "yes",
            "headers": [{"key": "X-A", "value": "secret-v"}], "authentication": {"basicAuth": {"username": "u", "password": "p"}}}),
        );
        let f = Fields::of("graphite", Some(&m)).unwrap();
        assert_eq!(f.text("address").unwrap(), Some("http://g"));
        assert_eq!(f.text("query").unwrap(), None);
        assert_eq!(
            f.required("query").unwrap_err(),
            "provider.graphite.query is not set"
        );
        assert_eq!(
            f.flag("insecure").unwrap_err(),
            "provider.graphite.insecure must be true or false"
        );
        assert_eq!(f.headers().unwrap()["x-a"], "secret-v");
        assert!(matches!(f.auth().unwrap(), Auth::Basic { .. }));
        let bad = map(json!({"headers": "secret-v", "address": 3}));
        let f = Fields::of("influxdb", Some(&bad)).unwrap();
        let e = f.headers().unwrap_err();
        assert!(
            e.contains("provider.influxdb.headers") && !e.contains("secret-v"),
            "{e}"
        );
        assert!(f.text("address").is_err());
        assert!(Fields::of("influxdb", None).is_err());
    }
}
