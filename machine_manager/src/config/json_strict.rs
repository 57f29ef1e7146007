//! Parsing JSON into a `serde_json::Value` while refusing duplicate keys.
//!
//! serde_json keeps the last of two equal keys in an object without a
//! word; a configuration file that says `mem_size` twice is almost
//! certainly a mistake, so the parser here reports it, naming the key by
//! its JSON path (`machine-config.mem_size`, `drive[1].path_on_host`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text`, failing on the first duplicate key.
pub(crate) fn from_str(text: &str) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict {
        path: String::new(),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Deserializes the value found at `path`.
struct Strict {
    path: String,
}

impl Strict {
    fn key(&self, key: &str) -> Strict {
        let path = match self.path.is_empty() {
            true => key.to_string(),
            false => format!("{}.{key}", self.path),
        };
        Strict { path }
    }

    fn index(&self, i: usize) -> Strict {
        Strict {
            path: format!("{}[{i}]", self.path),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.index(items.len()))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.key(&key);
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key '{}'", child.path)));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_named_by_their_path() {
        let e = from_str(r#"{"machine-config": {"mem_size": 1, "mem_size": 2}}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("duplicate key 'machine-config.mem_size' at line 1"),
            "{e}"
        );
        let e = from_str(r#"{"drive": [{"a": 1}, {"b": 1, "b": 2}]}"#).unwrap_err();
        assert!(
            e.to_string().starts_with("duplicate key 'drive[1].b'"),
            "{e}"
        );
        let e = from_str(r#"{"x": 1, "x": 1}"#).unwrap_err();
        assert!(e.to_string().starts_with("duplicate key 'x'"), "{e}");
    }

    #[test]
    fn values_are_kept_as_serde_json_would() {
        let text = r#"{"a": [1, -2, 2.5, "s", true, null, {"b": {}}], "c": 18446744073709551615}"#;
        assert_eq!(
            from_str(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert!(from_str("{} x").is_err(), "trailing characters");
    }
}
