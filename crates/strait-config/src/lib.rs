//! Strait's configuration: the resource model every other crate shares, read from YAML (or
//! JSON) with errors that name the file, line, column and field, and say what is allowed.
//!
//! Pure: no I/O beyond reading the file it is asked to load.

mod duration;
mod error;
mod model;
mod validate;

pub use duration::{Duration, ParseDurationError};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Parses and validates a YAML (or JSON, a subset of YAML) config. `origin` names the text in
/// errors, usually the file path.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de)
        .map_err(|e| ConfigErrors::from_serde(origin, text, e))?;
    let problems = validate::check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::from_problems(origin, text, problems))
    }
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(&origin, &e))?;
    parse(&text, &origin)
}
