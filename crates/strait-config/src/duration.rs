//! Human durations in config files: `50us`, `250ms`, `1s`, `1.5s`, `5m`, `1h`, `0s`.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written with a unit: `us`, `ms`, `s`, `m` or `h` (`0` alone is
/// allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    /// A duration of whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Zero, which config files use to say "disabled".
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// `None` for zero, which config files use to say "disabled".
    pub fn non_zero(self) -> Option<std::time::Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseDurationError {
    input: String,
    /// Well formed, but longer than a year.
    too_long: bool,
}

impl fmt::Display for ParseDurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.too_long {
            write!(
                f,
                "duration {:?} is too long: at most a year (8760h)",
                self.input
            )
        } else {
            write!(
                f,
                "invalid duration {:?}: expected a number with a unit, like 50us, 250ms, 1s, \
                 1.5s, 5m or 1h (or 0)",
                self.input
            )
        }
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: s.to_owned(),
            too_long: false,
        };
        // Exactly the schema's pattern, `0|[0-9]+(\.[0-9]+)?(us|ms|s|m|h)`, so that an editor
        // checking against the JSON Schema and the proxy agree on what is a duration.
        if s == "0" {
            return Ok(Duration::default());
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(err)?;
        let (num, unit) = s.split_at(split);
        let well_formed = match num.split_once('.') {
            None => !num.is_empty(),
            Some((whole, fraction)) => {
                !whole.is_empty() && !fraction.is_empty() && !fraction.contains('.')
            }
        };
        if !well_formed {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        let secs = match unit {
            "us" => value / 1_000_000.0,
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(err()),
        };
        // A year is far beyond any sensible timeout; refusing more keeps the conversion exact.
        if secs > 365.0 * 24.0 * 3600.0 {
            return Err(ParseDurationError {
                too_long: true,
                ..err()
            });
        }
        Ok(Duration(std::time::Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let us = self.0.as_micros();
        if us == 0 {
            write!(f, "0s")
        } else if !us.is_multiple_of(1000) {
            write!(f, "{us}us")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> String {
        "Duration".to_owned()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            ..Default::default()
        };
        schema.string().pattern = Some(r"^(0|[0-9]+(\.[0-9]+)?(us|ms|s|m|h))$".to_owned());
        schema.metadata().description =
            Some("A duration with a unit: 50us, 250ms, 1s, 1.5s, 5m, 1h; 0s disables.".to_owned());
        schema.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_round_trips() {
        for (text, us) in [
            ("50us", 50),
            ("2.5us", 2),
            ("1500us", 1500),
            ("250ms", 250_000),
            ("1s", 1_000_000),
            ("1.5s", 1_500_000),
            ("5m", 300_000_000),
            ("1h", 3_600_000_000),
            ("0", 0),
            ("0s", 0),
        ] {
            let d: Duration = text.parse().expect("valid duration");
            assert_eq!(d.get().as_micros(), us, "{text}");
            let again: Duration = d.to_string().parse().expect("display parses back");
            assert_eq!(again.get().as_micros(), us, "{text} shown as {d}");
        }
    }

    #[test]
    fn refuses_missing_or_unknown_units_and_negatives() {
        for text in [
            "1", "s", "1d", "1µs", "1u", "us", "-1s", "1 sec", "", "NaNs", "1e300s", "1e3s", " 1s",
            "1s ", "1 s", ".5s", "1.s", "1..5s", "1.2.3s", "9999999h", "1sm",
        ] {
            assert!(
                text.parse::<Duration>().is_err(),
                "{text} should be refused"
            );
        }
    }
}
