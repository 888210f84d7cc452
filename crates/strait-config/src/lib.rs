//! Strait's configuration: the resource model every other crate shares, read from YAML (or
//! JSON) with errors that name the file, line, column and field, and say what is allowed.
//!
//! Pure: no I/O beyond reading the file it is asked to load. Reading a config takes three
//! passes over the text, each catching what the others cannot:
//!
//! 1. serde builds the typed [`Config`], stopping at the first syntax or type error;
//! 2. a source map of the same text (`source_map.rs`) records where every field is
//!    written, finds keys written twice, and, when serde failed, every unknown key at once
//!    (walking the file against the JSON Schema);
//! 3. `validate.rs` checks what types cannot say (references, uniqueness, ranges, regexes).

mod cidr;
mod duration;
mod error;
mod field_path;
mod model;
mod schema;
mod source_map;
mod suggest;
mod validate;

pub use cidr::{Cidr, ParseCidrError};
pub use duration::{Duration, ParseDurationError};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

use field_path::FieldPath;
use source_map::{Position, SourceMap};
use validate::{At, Problem};

/// Parses and validates a YAML (or JSON, a subset of YAML) config. `origin` names the text in
/// errors, usually the file path. On error, every problem found is returned, in file order.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let map = SourceMap::build(text);
    let de = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Config>(de) {
        Err(e) => {
            let mut more = duplicate_keys(&map);
            more.extend(schema::unknown_names(&map));
            Err(ConfigErrors::from_serde(origin, &map, e, more))
        }
        Ok(config) => {
            let mut problems = duplicate_keys(&map);
            if map.is_empty_document() {
                problems.push(Problem {
                    field: FieldPath::root(),
                    at: At::Position(Position { line: 1, column: 1 }),
                    message: error::EMPTY_CONFIG.to_owned(),
                });
            } else {
                problems.extend(validate::check(&config));
            }
            if problems.is_empty() {
                Ok(config)
            } else {
                Err(ConfigErrors::from_problems(origin, &map, problems))
            }
        }
    }
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(&origin, &e))?;
    parse(&text, &origin)
}

/// The JSON Schema (draft 7) of the config format, pretty-printed, generated from the model's
/// types: what `config/strait.schema.json` holds, for editors to check config files with.
pub fn schema_json() -> String {
    schema::to_json()
}

/// A key written twice in one mapping: serde keeps one of them silently in a header map, so a
/// typo'd copy would go unnoticed.
fn duplicate_keys(map: &SourceMap) -> Vec<Problem> {
    map.duplicate_keys()
        .into_iter()
        .map(|d| Problem {
            message: format!(
                "written twice in one mapping (first at line {}:{}); keep one",
                d.first.line, d.first.column
            ),
            field: d.path,
            at: At::Position(d.at),
        })
        .collect()
}
