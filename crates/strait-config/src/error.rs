//! Errors a user can act on: where (file:line:column, field path), what was wrong, what to do.

use std::fmt;

use crate::validate::Problem;

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

    pub(crate) fn from_serde(
        origin: &str,
        _text: &str,
        err: serde_path_to_error::Error<serde_yaml::Error>,
    ) -> Self {
        let field = err.path().to_string();
        let inner = err.into_inner();
        let (line, column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C"; the location is already in front.
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        // serde_yaml also prefixes the path, which is reported as `field`.
        if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
            message = rest.to_owned();
        }
        ConfigErrors {
            errors: vec![ConfigError {
                origin: origin.to_owned(),
                line,
                column,
                field: if field == "." { String::new() } else { field },
                message,
            }],
        }
    }

    pub(crate) fn from_problems(origin: &str, _text: &str, problems: Vec<Problem>) -> Self {
        let errors = problems
            .into_iter()
            .map(|p| ConfigError {
                origin: origin.to_owned(),
                line: 0,
                column: 0,
                field: p.field,
                message: p.message,
            })
            .collect();
        ConfigErrors { errors }
    }
}
