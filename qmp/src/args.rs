//! Validation of command arguments with QEMU's error wording.
//!
//! [`Args`] walks a JSON object member by member, the way QEMU's QAPI input
//! visitor does: each getter marks its member as used and reports a missing
//! or mistyped member by its full name (`file.filename`, `enable[0]`);
//! [`Args::finish`] then reports the first member nobody asked for. JSON
//! `null` is a type error like any other wrong type.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::QmpError;

/// A cursor over one JSON object of arguments.
#[derive(Debug)]
pub(crate) struct Args<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    used: Vec<&'a str>,
}

impl<'a> Args<'a> {
    /// Arguments at the top level of a command.
    pub(crate) fn new(map: &'a Map<String, Value>) -> Self {
        Self::nested(map, String::new())
    }

    fn nested(map: &'a Map<String, Value>, prefix: String) -> Self {
        Args {
            map,
            prefix,
            used: Vec::new(),
        }
    }

    /// Full name of member `key`, as used in error messages.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// The raw value of `key`, marking it used.
    pub(crate) fn get(&mut self, key: &str) -> Option<&'a Value> {
        let (k, v) = self.map.get_key_value(key)?;
        self.used.push(k.as_str());
        Some(v)
    }

    fn required(&mut self, key: &str) -> Result<&'a Value, QmpError> {
        self.get(key)
            .ok_or_else(|| QmpError::missing_parameter(&self.path(key)))
    }

    /// A required string member.
    pub(crate) fn req_str(&mut self, key: &str) -> Result<String, QmpError> {
        let v = self.required(key)?;
        self.as_str(key, v)
    }

    /// A required integer member (QAPI `int`, 64-bit signed): a JSON
    /// number without fraction; one beyond the int64 range is refused as
    /// QEMU refuses it.
    pub(crate) fn req_int(&mut self, key: &str) -> Result<i64, QmpError> {
        let v = self.required(key)?;
        match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => n
                .as_i64()
                .ok_or_else(|| QmpError::invalid_parameter_value(&self.path(key), "integer")),
            _ => Err(QmpError::invalid_parameter_type(&self.path(key), "integer")),
        }
    }

    /// An optional string member.
    pub(crate) fn opt_str(&mut self, key: &str) -> Result<Option<String>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => self.as_str(key, v).map(Some),
        }
    }

    fn as_str(&self, key: &str, v: &Value) -> Result<String, QmpError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| QmpError::invalid_parameter_type(&self.path(key), "string"))
    }

    /// An optional boolean member (JSON `true`/`false` only).
    pub(crate) fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(QmpError::invalid_parameter_type(&self.path(key), "boolean")),
        }
    }

    /// An optional switch: a JSON boolean, or one of the strings `on`/`off`
    /// (also `yes`/`no`, `true`/`false`), as QEMU's property parser accepts.
    pub(crate) fn opt_switch(&mut self, key: &str) -> Result<Option<bool>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.as_str() {
                "on" | "yes" | "true" => Ok(Some(true)),
                "off" | "no" | "false" => Ok(Some(false)),
                _ => Err(QmpError::invalid_parameter_value(
                    &self.path(key),
                    "'on' or 'off'",
                )),
            },
            Some(_) => Err(QmpError::invalid_parameter_type(&self.path(key), "boolean")),
        }
    }

    /// An optional unsigned integer no larger than `max`. A string of decimal
    /// digits is accepted too when `lenient` (device properties).
    pub(crate) fn opt_uint(
        &mut self,
        key: &str,
        max: u64,
        lenient: bool,
    ) -> Result<Option<u64>, QmpError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::Number(n) if n.is_u64() => n.as_u64(),
            Value::Number(n) if n.is_i64() => None,
            Value::String(s) if lenient => {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QmpError::invalid_parameter_value(
                        &self.path(key),
                        "an integer",
                    ));
                }
                s.parse::<u64>().ok()
            }
            _ => return Err(QmpError::invalid_parameter_type(&self.path(key), "integer")),
        };
        match n {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(QmpError::invalid_parameter_value(
                &self.path(key),
                &format!("an integer between 0 and {max}"),
            )),
        }
    }

    /// A required member whose string value must be one of `values`.
    pub(crate) fn req_enum<T: Copy>(
        &mut self,
        key: &str,
        values: &[(&str, T)],
    ) -> Result<T, QmpError> {
        let s = self.req_str(key)?;
        self.lookup(key, &s, values)
    }

    /// An optional member whose string value must be one of `values`.
    pub(crate) fn opt_enum<T: Copy>(
        &mut self,
        key: &str,
        values: &[(&str, T)],
    ) -> Result<Option<T>, QmpError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(s) => self.lookup(key, &s, values).map(Some),
        }
    }

    fn lookup<T: Copy>(&self, key: &str, s: &str, values: &[(&str, T)]) -> Result<T, QmpError> {
        values
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
            .ok_or_else(|| QmpError::invalid_enum_value(&self.path(key), s))
    }

    /// An optional nested object, as an [`Args`] whose errors carry the
    /// `key.` prefix.
    pub(crate) fn opt_object(&mut self, key: &str) -> Result<Option<Args<'a>>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Args::nested(m, self.path(key)))),
            Some(_) => Err(QmpError::invalid_parameter_type(&self.path(key), "object")),
        }
    }

    /// An optional array of strings; element errors are named `key[i]`.
    pub(crate) fn opt_str_list(&mut self, key: &str) -> Result<Option<Vec<String>>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        QmpError::invalid_parameter_type(
                            &format!("{}[{i}]", self.path(key)),
                            "string",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(QmpError::invalid_parameter_type(&self.path(key), "array")),
        }
    }

    /// Fails with "Parameter 'x' is unexpected" for the first member that no
    /// getter asked for.
    pub(crate) fn finish(self) -> Result<(), QmpError> {
        match self.map.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(k) => Err(QmpError::unexpected_parameter(&self.path(k))),
            None => Ok(()),
        }
    }

    /// The members no getter asked for (for commands that take free-form
    /// properties, like `device_add`).
    pub(crate) fn rest(self) -> BTreeMap<String, Value> {
        self.map
            .iter()
            .filter(|(k, _)| !self.used.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn strings_bools_and_unexpected() {
        let m = obj(json!({"a": "x", "b": true, "c": 1}));
        let mut a = Args::new(&m);
        assert_eq!(a.req_str("a").unwrap(), "x");
        assert_eq!(a.opt_bool("b").unwrap(), Some(true));
        assert_eq!(a.opt_str("zz").unwrap(), None);
        assert_eq!(a.finish().unwrap_err().desc, "Parameter 'c' is unexpected");
    }

    #[test]
    fn missing_and_wrong_types_name_the_parameter() {
        let m = obj(json!({"n": null, "s": 3, "o": {"deep": 5}}));
        let mut a = Args::new(&m);
        assert_eq!(
            a.req_str("id").unwrap_err().desc,
            "Parameter 'id' is missing"
        );
        assert_eq!(
            a.opt_str("n").unwrap_err().desc,
            "Invalid parameter type for 'n', expected: string"
        );
        assert_eq!(
            a.opt_bool("s").unwrap_err().desc,
            "Invalid parameter type for 's', expected: boolean"
        );
        let mut o = a.opt_object("o").unwrap().unwrap();
        assert_eq!(
            o.req_str("deep").unwrap_err().desc,
            "Invalid parameter type for 'o.deep', expected: string"
        );
        assert_eq!(
            a.opt_object("s").unwrap_err().desc,
            "Invalid parameter type for 's', expected: object"
        );
    }

    #[test]
    fn switches_accept_bool_and_on_off() {
        let m = obj(json!({"a": "on", "b": "off", "c": false, "d": "maybe", "e": 1}));
        let mut a = Args::new(&m);
        assert_eq!(a.opt_switch("a").unwrap(), Some(true));
        assert_eq!(a.opt_switch("b").unwrap(), Some(false));
        assert_eq!(a.opt_switch("c").unwrap(), Some(false));
        assert_eq!(
            a.opt_switch("d").unwrap_err().desc,
            "Parameter 'd' expects 'on' or 'off'"
        );
        assert_eq!(
            a.opt_switch("e").unwrap_err().desc,
            "Invalid parameter type for 'e', expected: boolean"
        );
    }

    #[test]
    fn unsigned_integers_with_range() {
        let m = obj(json!({"a": 512, "b": -1, "c": "4096", "d": 1.5, "e": 70000}));
        let mut a = Args::new(&m);
        assert_eq!(a.opt_uint("a", 65535, false).unwrap(), Some(512));
        assert!(a.opt_uint("b", 65535, false).is_err());
        assert_eq!(a.opt_uint("c", 65535, true).unwrap(), Some(4096));
        assert_eq!(
            a.opt_uint("d", 65535, false).unwrap_err().desc,
            "Invalid parameter type for 'd', expected: integer"
        );
        assert_eq!(
            a.opt_uint("e", 65535, false).unwrap_err().desc,
            "Parameter 'e' expects an integer between 0 and 65535"
        );
        let m = obj(json!({"c": "4096"}));
        let mut a = Args::new(&m);
        assert!(a.opt_uint("c", 65535, false).is_err());
    }

    #[test]
    fn enums_and_lists() {
        let m = obj(json!({"aio": "native", "bad": "x", "l": ["a", 1], "nl": 3}));
        let mut a = Args::new(&m);
        let table = [("threads", 0), ("native", 1)];
        assert_eq!(a.req_enum("aio", &table).unwrap(), 1);
        assert_eq!(
            a.opt_enum("bad", &table).unwrap_err().desc,
            "Parameter 'bad' does not accept value 'x'"
        );
        assert_eq!(
            a.opt_str_list("l").unwrap_err().desc,
            "Invalid parameter type for 'l[1]', expected: string"
        );
        assert_eq!(
            a.opt_str_list("nl").unwrap_err().desc,
            "Invalid parameter type for 'nl', expected: array"
        );
    }

    #[test]
    fn rest_keeps_unknown_members() {
        let m = obj(json!({"driver": "d", "x-prop": 1, "y": "z"}));
        let mut a = Args::new(&m);
        a.req_str("driver").unwrap();
        let rest = a.rest();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest["x-prop"], json!(1));
    }
}
