//! Parsing of QEMU-style option strings: `value,key=value,key2=value2`.
//!
//! Items are separated by `,`; a doubled comma `,,` stands for a literal
//! comma inside a value. Only the first item may omit its key, in which case
//! it is given the flag's implied key (for example `-smp 4` means
//! `-smp cpus=4`).

use super::error::ConfigError;

/// The parsed items of one option string, in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OptionList {
    pairs: Vec<(String, String)>,
}

impl OptionList {
    /// Parse `input` for flag `flag`.
    ///
    /// `implied` is the key given to a first item without `=`; when it is
    /// `None` every item needs a key. Keys not in `allowed` are rejected, as
    /// are empty items, empty keys and repeated keys.
    pub(crate) fn parse(
        flag: &str,
        input: &str,
        implied: Option<&str>,
        allowed: &[&str],
    ) -> Result<Self, ConfigError> {
        if input.is_empty() {
            return Err(ConfigError::EmptyValue { at: flag.into() });
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (index, item) in split_items(input).into_iter().enumerate() {
            if item.is_empty() {
                return Err(ConfigError::EmptyItem {
                    at: flag.into(),
                    input: input.into(),
                });
            }
            let (key, value) = match item.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => match implied {
                    Some(key) if index == 0 => (key.to_string(), item),
                    _ => {
                        return Err(ConfigError::MissingKey {
                            at: flag.into(),
                            item,
                        })
                    }
                },
            };
            if key.is_empty() {
                return Err(ConfigError::MissingKey {
                    at: flag.into(),
                    item: format!("={value}"),
                });
            }
            if !allowed.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    at: flag.into(),
                    key,
                });
            }
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(ConfigError::DuplicateKey {
                    at: flag.into(),
                    key,
                });
            }
            pairs.push((key, value));
        }
        Ok(OptionList { pairs })
    }

    /// The value of `key`, if it was given.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Split on single commas, turning `,,` into a literal comma.
fn split_items(input: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                current.push(',');
            } else {
                items.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    items.push(current);
    items
}

/// Parse an on/off switch the way QEMU does: `on`/`off`, `true`/`false`,
/// `yes`/`no`.
pub(crate) fn parse_bool(at: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(ConfigError::InvalidBool {
            at: at.into(),
            value: value.into(),
        }),
    }
}

/// Parse a plain decimal integer (digits only, no sign) and check it lies in
/// `min..=max`.
pub(crate) fn parse_ranged(at: &str, value: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::InvalidNumber {
            at: at.into(),
            value: value.into(),
        });
    }
    let out_of_range = || ConfigError::OutOfRange {
        at: at.into(),
        value: value.into(),
        min,
        max,
    };
    // Only digits are left, so the sole possible failure is overflow.
    let number: u64 = value.parse().map_err(|_| out_of_range())?;
    if number < min || number > max {
        return Err(out_of_range());
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMP: &[&str] = &["cpus", "maxcpus"];

    #[test]
    fn implied_key_and_pairs() {
        let list = OptionList::parse("-smp", "4,maxcpus=8", Some("cpus"), SMP).unwrap();
        assert_eq!(list.get("cpus"), Some("4"));
        assert_eq!(list.get("maxcpus"), Some("8"));
        assert_eq!(list.get("sockets"), None);
    }

    #[test]
    fn explicit_key_for_first_item() {
        let list = OptionList::parse("-smp", "cpus=2", Some("cpus"), SMP).unwrap();
        assert_eq!(list.get("cpus"), Some("2"));
    }

    #[test]
    fn value_may_contain_equals() {
        let list = OptionList::parse("-x", "k=a=b", None, &["k"]).unwrap();
        assert_eq!(list.get("k"), Some("a=b"));
    }

    #[test]
    fn double_comma_is_literal() {
        let list = OptionList::parse(
            "-name",
            "a,,b,guest2=c",
            Some("guest"),
            &["guest", "guest2"],
        )
        .unwrap();
        assert_eq!(list.get("guest"), Some("a,b"));
        assert_eq!(list.get("guest2"), Some("c"));
    }

    #[test]
    fn empty_input_is_rejected() {
        let err = OptionList::parse("-smp", "", Some("cpus"), SMP).unwrap_err();
        assert_eq!(err.to_string(), "-smp: value must not be empty");
    }

    #[test]
    fn empty_item_is_rejected() {
        let err = OptionList::parse("-smp", "cpus=1,", Some("cpus"), SMP).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-smp: empty item in option string 'cpus=1,'"
        );
        let err = OptionList::parse("-smp", ",cpus=1", Some("cpus"), SMP).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-smp: empty item in option string ',cpus=1'"
        );
    }

    #[test]
    fn positional_only_first() {
        let err = OptionList::parse("-smp", "cpus=1,4", Some("cpus"), SMP).unwrap_err();
        assert_eq!(err.to_string(), "-smp: '4' needs a key (key=value)");
    }

    #[test]
    fn positional_needs_implied_key() {
        let err = OptionList::parse("-x", "value", None, &["k"]).unwrap_err();
        assert_eq!(err.to_string(), "-x: 'value' needs a key (key=value)");
    }

    #[test]
    fn empty_key_is_rejected() {
        let err = OptionList::parse("-smp", "=3", Some("cpus"), SMP).unwrap_err();
        assert_eq!(err.to_string(), "-smp: '=3' needs a key (key=value)");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = OptionList::parse("-smp", "1,bogus=2", Some("cpus"), SMP).unwrap_err();
        assert_eq!(err.to_string(), "-smp: unknown key 'bogus'");
    }

    #[test]
    fn duplicate_key_is_rejected() {
        let err = OptionList::parse("-smp", "2,cpus=3", Some("cpus"), SMP).unwrap_err();
        assert_eq!(err.to_string(), "-smp: key 'cpus' given more than once");
    }

    #[test]
    fn bool_spellings() {
        for v in ["on", "true", "yes"] {
            assert_eq!(parse_bool("-m k", v), Ok(true));
        }
        for v in ["off", "false", "no"] {
            assert_eq!(parse_bool("-m k", v), Ok(false));
        }
        let err = parse_bool("-machine mem-share", "maybe").unwrap_err();
        assert_eq!(
            err.to_string(),
            "-machine mem-share: invalid on/off value 'maybe' (expected on, off, true, false, yes or no)"
        );
    }

    #[test]
    fn ranged_numbers() {
        assert_eq!(parse_ranged("-smp cpus", "7", 1, 254), Ok(7));
        assert_eq!(parse_ranged("-smp cpus", "254", 1, 254), Ok(254));
        let err = parse_ranged("-smp cpus", "0", 1, 254).unwrap_err();
        assert_eq!(err.to_string(), "-smp cpus: 0 is out of range 1..=254");
        let err = parse_ranged("-smp cpus", "99999999999999999999999", 1, 254).unwrap_err();
        assert_eq!(
            err.to_string(),
            "-smp cpus: 99999999999999999999999 is out of range 1..=254"
        );
        for bad in ["", "x", "+3", "-1", "1.5", " 2"] {
            let err = parse_ranged("-smp cpus", bad, 1, 254).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("-smp cpus: invalid number '{bad}'")
            );
        }
    }
}
