//! Field paths such as `listeners[0].routes[2].backends[0].cluster`: how an error names the
//! field it is about, and the key the [`SourceMap`](crate::source_map::SourceMap) looks the
//! field's position up by.

use std::fmt;

/// One step from a node to one of its children.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Segment {
    /// A mapping key, as written in the file (`routes`, `match`, a header name under `set`).
    Key(String),
    /// A sequence index, 0-based.
    Index(usize),
}

/// A path from the document root to a field. Empty for the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The document itself.
    pub(crate) fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// The child under mapping key `key`.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        FieldPath(segments)
    }

    /// The item at `index` of this sequence.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        FieldPath(segments)
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub(crate) fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }
}

/// `a.b[0].c`, the notation serde_path_to_error uses too, so parse errors and validation
/// errors name fields the same way.
impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_serde_path_to_error() {
        let path = FieldPath::root()
            .key("listeners")
            .index(0)
            .key("routes")
            .index(2)
            .key("backends")
            .index(0)
            .key("cluster");
        assert_eq!(
            path.to_string(),
            "listeners[0].routes[2].backends[0].cluster"
        );
        assert_eq!(FieldPath::root().to_string(), "");
    }
}
