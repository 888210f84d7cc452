//! Errors a user can act on: where (file:line:column, field path), what was wrong, what is
//! allowed. Parse errors come from serde with serde's wording, which is reworded here for people
//! who write YAML rather than Rust; validation problems come with a field path, which the
//! [`SourceMap`] turns into a line and column.

use std::fmt;

use crate::field_path::{FieldPath, Segment};
use crate::schema;
use crate::source_map::{Position, SourceMap};
use crate::validate::{At, Problem};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or other origin) the text came from.
    pub origin: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Field path, like `listeners[0].routes[2].backends[0].cluster`; empty for the document.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// `FILE:LINE:COLUMN: FIELD: MESSAGE`, leaving out the parts that are unknown or empty.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems, at least one.
    pub errors: Vec<ConfigError>,
}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub(crate) fn io(origin: &str, err: &std::io::Error) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                origin: origin.to_owned(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read: {err}"),
            }],
        }
    }

    /// The error serde stopped at, plus `more` found without serde (unknown keys elsewhere,
    /// keys written twice). When one of `more` is about the same place as serde's error, it
    /// replaces it: it knows more (the key that came first, the keys allowed in this form).
    pub(crate) fn from_serde(
        origin: &str,
        map: &SourceMap,
        err: serde_path_to_error::Error<serde_yaml::Error>,
        more: Vec<Problem>,
    ) -> Self {
        let first = serde_error(origin, map, err);
        let mut errors: Vec<ConfigError> = locate(origin, map, more).collect();
        let same_place = |e: &ConfigError| {
            e.field == first.field
                || (first.line > 0 && (e.line, e.column) == (first.line, first.column))
        };
        if !errors.iter().any(same_place) {
            errors.push(first);
        }
        ConfigErrors::in_file_order(errors)
    }

    /// Validation problems, each given the line and column of its field.
    pub(crate) fn from_problems(origin: &str, map: &SourceMap, problems: Vec<Problem>) -> Self {
        ConfigErrors::in_file_order(locate(origin, map, problems).collect())
    }

    /// Sorted by position; errors without one go last, in the order they were found.
    fn in_file_order(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        ConfigErrors { errors }
    }
}

fn locate<'a>(
    origin: &'a str,
    map: &'a SourceMap,
    problems: Vec<Problem>,
) -> impl Iterator<Item = ConfigError> + 'a {
    problems.into_iter().map(move |p| {
        let position = match &p.at {
            At::Position(position) => Some(*position),
            At::Value => map.find(p.field.segments()).map(|f| f.value),
            At::Key => map.find(p.field.segments()).map(|f| match f.key {
                Some(key) if f.exact => key,
                _ => f.value,
            }),
            At::Field(other) => map.find(other.segments()).map(|f| f.value),
        };
        let Position { line, column } = position
            .map(|p| map.within(p))
            .unwrap_or(Position { line: 0, column: 0 });
        ConfigError {
            origin: origin.to_owned(),
            line,
            column,
            field: p.field.to_string(),
            message: p.message,
        }
    })
}

fn serde_error(
    origin: &str,
    map: &SourceMap,
    err: serde_path_to_error::Error<serde_yaml::Error>,
) -> ConfigError {
    let mut field = FieldPath::root();
    for segment in err.path() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => field.push(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => field.push(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => {
                field.push(Segment::Key(variant.clone()))
            }
            serde_path_to_error::Segment::Unknown => break,
        }
    }
    let serde_path = err.path().to_string();
    let inner = err.into_inner();
    let serde_position = inner.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    let text = strip_positions(&inner.to_string());
    // serde_yaml prefixes its own idea of the path, which stops short of the field for errors
    // raised by a type's own Deserialize (a bad duration); the field is reported separately.
    let text = match text.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && serde_path.starts_with(prefix) => {
            rest.to_owned()
        }
        _ => text,
    };

    let found = map.find(field.segments()).filter(|f| f.exact);
    let value_position = found.map(|f| f.value);
    let key_position = found.map(|f| f.key.unwrap_or(f.value));
    // The source map knows where the field itself is; serde_yaml sometimes points at the
    // enclosing mapping instead. serde_yaml's position is the fallback.
    let (message, position) = if let Some(name) = quoted_after(&text, "unknown field `") {
        let mut allowed = expected_names(&text);
        // Sorted like the unknown keys found by walking the schema.
        allowed.sort_unstable();
        (
            schema::unknown("field", name, &allowed),
            key_position.or(serde_position),
        )
    } else if let Some(name) = quoted_after(&text, "unknown variant `") {
        let allowed = expected_names(&text);
        // `hash_on: { fo: x }` names the variant as a key (the path ends in it), and
        // `load_balancer: fastest` as a value (the path ends at the field holding it).
        let is_key = field.segments().last() == Some(&Segment::Key(name.to_owned()))
            && map.scalar(field.segments()) != Some(name);
        let what = if is_key { "field" } else { "value" };
        let position = if is_key { key_position } else { value_position };
        (
            schema::unknown(what, name, &allowed),
            position.or(serde_position),
        )
    } else if let Some(name) = quoted_after(&text, "missing field `") {
        let enclosing = map.find(field.segments()).map(|f| f.value);
        let message = format!("missing required field `{name}`");
        field.push(Segment::Key(name.to_owned()));
        (message, enclosing.or(serde_position))
    } else if let Some(name) = quoted_after(&text, "duplicate field `") {
        field.push(Segment::Key(name.to_owned()));
        let duplicate = map
            .duplicate_keys()
            .into_iter()
            .find(|d| d.path == field)
            .map(|d| d.at);
        (
            format!("`{name}` is given twice; keep one"),
            duplicate.or(serde_position),
        )
    } else if text.contains("more than one document") {
        (
            "a config file holds one YAML document; remove the `---` line and what follows it, \
             or put it in its own file"
                .to_owned(),
            map.second_document().or(serde_position),
        )
    } else if text == "invalid type: unit value, expected struct Config" {
        (
            EMPTY_CONFIG.to_owned(),
            Some(Position { line: 1, column: 1 }),
        )
    } else if text.ends_with("expected map with a single key") {
        let choices = match field.segments().last() {
            Some(Segment::Key(k)) if k == "path" => "`exact`, `prefix` or `regex`",
            Some(Segment::Key(k)) if k == "hash_on" => "`header`, `cookie` or `client_ip`",
            _ => "the allowed keys",
        };
        (
            format!("give exactly one of {choices}"),
            value_position.or(serde_position),
        )
    } else if text.contains("invalid socket address syntax") {
        (
            "invalid address: expected `ip:port`, like `127.0.0.1:8080` or `[::1]:8080` (host \
             names are not resolved)"
                .to_owned(),
            value_position.or(serde_position),
        )
    } else if text.contains("while parsing") || text.contains("while scanning") {
        // A YAML syntax error: only the parser knows where.
        (format!("invalid YAML: {text}"), serde_position)
    } else {
        (plain_types(&text), value_position.or(serde_position))
    };
    let Position { line, column } = position
        .map(|p| map.within(p))
        .unwrap_or(Position { line: 0, column: 0 });
    ConfigError {
        origin: origin.to_owned(),
        line,
        column,
        field: field.to_string(),
        message,
    }
}

/// What an empty file is told.
pub(crate) const EMPTY_CONFIG: &str = "the file holds no configuration: give at least \
                                       `listeners` and `clusters` (see config/minimal.yaml)";

/// Removes every " at line L column C" serde_yaml puts in its messages (a syntax error can
/// have two); the position is reported in front of the message instead.
fn strip_positions(text: &str) -> String {
    const AT_LINE: &str = " at line ";
    let digits = |s: &str| s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(AT_LINE) {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let after_line = from.trim_start_matches(AT_LINE);
        let after_number = after_line.trim_start_matches(|c: char| c.is_ascii_digit());
        match after_number.strip_prefix(" column ") {
            Some(column) if digits(after_line) < after_line.len() => {
                rest = column.trim_start_matches(|c: char| c.is_ascii_digit());
            }
            _ => {
                out.push_str(AT_LINE);
                rest = after_line;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The name in `` prefix`name` `` when `text` starts with `prefix`.
fn quoted_after<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let rest = text.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// The names serde lists after "expected one of" (or "expected").
fn expected_names(text: &str) -> Vec<&str> {
    let Some((_, list)) = text.split_once(", expected ") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).collect()
}

/// Rust type names in serde's "expected ..." replaced by what to write in YAML.
fn plain_types(text: &str) -> String {
    const PLAIN: [(&str, &str); 10] = [
        (
            "expected socket address",
            "expected an address `ip:port`, like `127.0.0.1:8080`",
        ),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected `true` or `false`"),
        (
            "expected a sequence",
            "expected a list (`[a, b]`, or one `- item` per line)",
        ),
        (
            "expected a map",
            "expected a mapping (`key: value` lines, or `{ key: value }`)",
        ),
        ("unit value", "an empty value"),
    ];
    let mut text = text.to_owned();
    for (rust, yaml) in PLAIN {
        if let Some(start) = text.rfind(rust) {
            let end = start + rust.len();
            let at_word_end = text
                .get(end..)
                .and_then(|tail| tail.chars().next())
                .is_none_or(|c| !c.is_alphanumeric());
            if at_word_end {
                text.replace_range(start..end, yaml);
            }
        }
    }
    if let Some(start) = text.find("expected struct ") {
        text.replace_range(
            start..,
            "expected a mapping (`key: value` lines, or `{ key: value }`)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_position() {
        assert_eq!(
            strip_positions(
                "found a tab character at line 2 column 1, while scanning a plain scalar at \
                 line 1 column 10"
            ),
            "found a tab character, while scanning a plain scalar"
        );
        assert_eq!(strip_positions("at line 3"), "at line 3");
        assert_eq!(strip_positions("x at line 3 y"), "x at line 3 y");
    }

    #[test]
    fn reads_serde_name_lists() {
        assert_eq!(
            expected_names("unknown field `a`, expected one of `b`, `c`"),
            ["b", "c"]
        );
        assert_eq!(expected_names("unknown field `a`, expected `b`"), ["b"]);
        assert!(expected_names("unknown field `a`, there are no fields").is_empty());
    }

    #[test]
    fn speaks_yaml_not_rust() {
        assert_eq!(
            plain_types("invalid type: integer `-1`, expected usize"),
            "invalid type: integer `-1`, expected a whole number, 0 or more"
        );
        assert_eq!(
            plain_types("invalid type: string \"x\", expected struct Listener"),
            "invalid type: string \"x\", expected a mapping (`key: value` lines, or `{ key: \
             value }`)"
        );
    }
}
