//! An email's template data as a step builds it.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

/// The trigger's part of an email's template data. The emails one event
/// schedules mostly carry the same data (a first order's confirmation,
/// welcome and win-backs all carry the order): a clone shares it, and the
/// store turns it into JSON text once for all of them.
#[derive(Clone)]
pub struct Data(Arc<Shared>);

struct Shared {
    value: Value,
    json: OnceLock<String>,
}

impl Data {
    pub fn new(value: Value) -> Data {
        Data(Arc::new(Shared {
            value,
            json: OnceLock::new(),
        }))
    }

    /// The data as JSON text, serialized on first use.
    pub fn json(&self) -> &str {
        self.0.json.get_or_init(|| {
            serde_json::to_string(&self.0.value).expect("a JSON value always serializes")
        })
    }

    /// Whether `other` is this very data (a clone of it), not merely equal.
    pub fn is_shared_with(&self, other: &Data) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A copy of its own with `change` made to it (shared with no one).
    pub fn with(&self, change: impl FnOnce(&mut Value)) -> Data {
        let mut value = self.0.value.clone();
        change(&mut value);
        Data::new(value)
    }
}

impl Deref for Data {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0.value
    }
}

impl From<Value> for Data {
    fn from(value: Value) -> Data {
        Data::new(value)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.value.fmt(f)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        self.0.value == other.0.value
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn clones_share_one_serialization_and_a_change_makes_a_copy() {
        let data = Data::new(json!({"order": {"id": "o-1", "total": "9.90"}}));
        let clone = data.clone();
        assert_eq!(data.json(), r#"{"order":{"id":"o-1","total":"9.90"}}"#);
        assert!(std::ptr::eq(data.json(), clone.json()), "serialized once");
        assert!(data.is_shared_with(&clone));
        assert!(
            !data.is_shared_with(&Data::new(data.0.value.clone())),
            "equal, not shared"
        );
        let changed = data.with(|d| d["tier"] = json!({"id": "gold"}));
        assert_eq!(changed["tier"]["id"], "gold");
        assert_eq!(data.get("tier"), None, "the shared data is unchanged");
        assert_eq!(
            changed.json(),
            r#"{"order":{"id":"o-1","total":"9.90"},"tier":{"id":"gold"}}"#
        );
    }
}
