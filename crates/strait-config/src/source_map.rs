//! Where each field of a config file is written. serde hands over a `Config` with no positions
//! in it; this reads the same text a second time as YAML events with markers and keeps a light
//! tree of positions, so an error found on the parsed `Config` (an undefined cluster, a bad
//! regex) can point at `FILE:LINE:COLUMN`. It also sees what serde lets through silently: a
//! key written twice in a header map, an empty file.
//!
//! It never fails: text it cannot read gives an empty map, and lookups fall back to the nearest
//! enclosing node that was found (or to no position at all).

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::field_path::{FieldPath, Segment};

/// Nesting deeper than this is refused (serde_yaml stops at 128 too), so that walking the tree,
/// and dropping it, cannot exhaust the stack on hostile input.
const MAX_DEPTH: usize = 128;

/// Where `text` ends, its lines counted as YAML parsers count them: a line ends at a line feed,
/// a carriage return, both together (one break), or (for serde_yaml's libyaml) a next-line,
/// line-separator or paragraph-separator character.
fn end_of(text: &str) -> Position {
    let mut end = Position { line: 1, column: 1 };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue; // the line feed after it ends the line
        }
        if matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            end = Position {
                line: end.line + 1,
                column: 1,
            };
        } else {
            end.column += 1;
        }
    }
    end
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(mark: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// One YAML node: where it starts and what it holds.
#[derive(Debug)]
pub(crate) struct Node {
    pub at: Position,
    pub value: Value,
}

#[derive(Debug)]
pub(crate) enum Value {
    /// A scalar's text; `plain_null` when it is an unquoted `~`, `null` or nothing at all.
    Scalar {
        text: String,
        plain_null: bool,
    },
    Sequence(Vec<Node>),
    Mapping(Vec<Entry>),
    /// `*name`: serde follows it, the map does not (lookups stop at the alias).
    Alias,
}

/// A mapping entry. Keys that are not scalars (`? [a, b]: c`) get an empty `key`.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_at: Position,
    pub value: Node,
}

/// Where a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The key's position when the node is a mapping value.
    pub key: Option<Position>,
    /// The node's own position.
    pub value: Position,
    /// False when the full path was not there and this is the nearest enclosing node.
    pub exact: bool,
}

/// A key written a second time in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    /// The path of the key (its first occurrence is what lookups find).
    pub path: FieldPath,
    /// Where the second occurrence is.
    pub at: Position,
    /// Where the first one is.
    pub first: Position,
}

/// The positions of one YAML document.
#[derive(Debug)]
pub(crate) struct SourceMap {
    root: Option<Node>,
    second_document: Option<Position>,
    /// Just after the text's last character.
    end: Position,
}

impl SourceMap {
    /// Reads `text`. Only the first document is kept (serde refuses more than one).
    pub(crate) fn build(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // `multi` so that a second document is seen (and reported) rather than stopping at it.
        let root = match parser.load(&mut builder, true) {
            Ok(()) if !builder.too_deep => builder.root,
            _ => None,
        };
        SourceMap {
            root,
            second_document: builder.second_document,
            end: end_of(text),
        }
    }

    /// `position`, or the text's end when it is past it: a YAML parser that runs out of text
    /// in the middle of something reports the line after the last, when the text does not
    /// end in a line break, and an editor sent there finds nothing.
    pub(crate) fn within(&self, position: Position) -> Position {
        position.min(self.end)
    }

    /// Where a second YAML document starts, if the text has one.
    pub(crate) fn second_document(&self) -> Option<Position> {
        self.second_document
    }

    /// The document's top node, if there is one.
    pub(crate) fn root(&self) -> Option<&Node> {
        self.root.as_ref()
    }

    /// True when the document holds nothing: no node, or a lone null.
    pub(crate) fn is_empty_document(&self) -> bool {
        match &self.root {
            None => true,
            Some(node) => matches!(
                node.value,
                Value::Scalar {
                    plain_null: true,
                    ..
                }
            ),
        }
    }

    /// The node at `path`, or the nearest enclosing node when the path goes further than the
    /// file does (a missing field points at the mapping it is missing from). `None` when the
    /// text could not be read at all.
    pub(crate) fn find(&self, path: &[Segment]) -> Option<Found> {
        self.walk(path).map(|(found, _)| found)
    }

    /// The text of the scalar exactly at `path`, if that is what is there.
    pub(crate) fn scalar(&self, path: &[Segment]) -> Option<&str> {
        match self.walk(path)? {
            (Found { exact: true, .. }, node) => match &node.value {
                Value::Scalar { text, .. } => Some(text),
                _ => None,
            },
            _ => None,
        }
    }

    fn walk(&self, path: &[Segment]) -> Option<(Found, &Node)> {
        let mut node = self.root.as_ref()?;
        let mut found = Found {
            key: None,
            value: node.at,
            exact: true,
        };
        for segment in path {
            let next = match (&node.value, segment) {
                (Value::Mapping(entries), Segment::Key(key)) => entries
                    .iter()
                    .find(|e| &e.key == key)
                    .map(|e| (Some(e.key_at), &e.value)),
                (Value::Sequence(items), Segment::Index(i)) => items.get(*i).map(|n| (None, n)),
                _ => None,
            };
            match next {
                Some((key, child)) => {
                    node = child;
                    found = Found {
                        key,
                        value: child.at,
                        exact: true,
                    };
                }
                None => {
                    found.exact = false;
                    return Some((found, node));
                }
            }
        }
        Some((found, node))
    }

    /// Every key written twice in one mapping, in file order.
    pub(crate) fn duplicate_keys(&self) -> Vec<DuplicateKey> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            collect_duplicates(root, &mut FieldPath::root(), &mut out);
        }
        out.sort_by_key(|d| d.at);
        out
    }
}

fn collect_duplicates(node: &Node, path: &mut FieldPath, out: &mut Vec<DuplicateKey>) {
    match &node.value {
        Value::Mapping(entries) => {
            for (i, entry) in entries.iter().enumerate() {
                let earlier = entries
                    .get(..i)
                    .and_then(|before| before.iter().find(|e| e.key == entry.key));
                if let Some(first) = earlier {
                    out.push(DuplicateKey {
                        path: path.key(&entry.key),
                        at: entry.key_at,
                        first: first.key_at,
                    });
                } else {
                    let mut child = path.key(&entry.key);
                    collect_duplicates(&entry.value, &mut child, out);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut child = path.index(i);
                collect_duplicates(item, &mut child, out);
            }
        }
        Value::Scalar { .. } | Value::Alias => {}
    }
}

/// A container being filled while its events arrive.
#[derive(Debug)]
enum Open {
    Sequence {
        at: Position,
        items: Vec<Node>,
    },
    Mapping {
        at: Position,
        entries: Vec<Entry>,
        /// A key waiting for its value.
        key: Option<(String, Position)>,
    },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    documents: usize,
    second_document: Option<Position>,
    too_deep: bool,
}

impl Builder {
    fn add(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Sequence { items, .. }) => items.push(node),
            Some(Open::Mapping { entries, key, .. }) => match key.take() {
                None => {
                    let text = match node.value {
                        Value::Scalar { text, .. } => text,
                        _ => String::new(),
                    };
                    *key = Some((text, node.at));
                }
                Some((text, key_at)) => entries.push(Entry {
                    key: text,
                    key_at,
                    value: node,
                }),
            },
        }
    }

    fn open(&mut self, container: Open) {
        if self.stack.len() >= MAX_DEPTH {
            self.too_deep = true;
        }
        self.stack.push(container);
    }

    fn close(&mut self) {
        let node = match self.stack.pop() {
            Some(Open::Sequence { at, items }) => Node {
                at,
                value: Value::Sequence(items),
            },
            // yaml-rust2 marks a block mapping where its first `:` is; the first key is where a
            // reader sees it start (and where serde_yaml points).
            Some(Open::Mapping { at, entries, .. }) => Node {
                at: entries.first().map_or(at, |e| e.key_at.min(at)),
                value: Value::Mapping(entries),
            },
            None => return,
        };
        self.add(node);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if let Event::DocumentStart = event {
            self.documents += 1;
            if self.documents == 2 {
                self.second_document = Some(Position::from(mark));
            }
        }
        // Later documents are an error serde reports; their nodes are not kept.
        if self.documents > 1 || self.too_deep {
            return;
        }
        let at = Position::from(mark);
        match event {
            Event::Scalar(text, style, _, tag) => {
                let plain_null = style == TScalarStyle::Plain
                    && tag.is_none()
                    && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                self.add(Node {
                    at,
                    value: Value::Scalar { text, plain_null },
                });
            }
            Event::Alias(_) => self.add(Node {
                at,
                value: Value::Alias,
            }),
            Event::SequenceStart(..) => self.open(Open::Sequence {
                at,
                items: Vec::new(),
            }),
            Event::MappingStart(..) => self.open(Open::Mapping {
                at,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(map: &SourceMap, path: &FieldPath) -> (usize, usize, bool) {
        let found = map.find(path.segments()).expect("the text is YAML");
        (found.value.line, found.value.column, found.exact)
    }

    #[test]
    fn the_end_is_found_with_every_line_break_yaml_knows() {
        let end = |text| {
            let Position { line, column } = end_of(text);
            (line, column)
        };
        assert_eq!(end(""), (1, 1));
        assert_eq!(end("ab"), (1, 3));
        assert_eq!(end("a\nbc"), (2, 3));
        assert_eq!(end("a\n"), (2, 1));
        assert_eq!(end("a\r\nb"), (2, 2));
        assert_eq!(end("a\rb\r"), (3, 1));
        assert_eq!(end("a\u{85}b\u{2028}c\u{2029}é"), (4, 2));
    }

    #[test]
    fn finds_values_in_block_and_flow_style() {
        let text = "\
listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - backends: [{ cluster: api }, { cluster: web, weight: 2 }]
";
        let map = SourceMap::build(text);
        let listener = FieldPath::root().key("listeners").index(0);
        assert_eq!(at(&map, &listener.key("address")), (3, 14, true));
        assert_eq!(at(&map, &listener), (2, 5, true));
        let backend = listener.key("routes").index(0).key("backends").index(1);
        assert_eq!(at(&map, &backend.key("cluster")), (5, 49, true));
        let key = map
            .find(backend.key("weight").segments())
            .and_then(|f| f.key)
            .expect("a mapping value has a key");
        assert_eq!((key.line, key.column), (5, 54));
    }

    #[test]
    fn a_missing_field_falls_back_to_its_mapping() {
        let map = SourceMap::build("clusters:\n  - name: a\n    endpoints: []\n");
        let cluster = FieldPath::root().key("clusters").index(0);
        assert_eq!(at(&map, &cluster.key("hash_on")), (2, 5, false));
        assert_eq!(
            at(&map, &cluster.key("hash_on").key("header")),
            (2, 5, false)
        );
        assert!(!at(&map, &FieldPath::root().key("clusters").index(3)).2);
    }

    #[test]
    fn reports_keys_written_twice() {
        let map = SourceMap::build("a:\n  set: {x: 1, y: 2, x: 3}\nb: 1\nb: 2\n");
        let dups = map.duplicate_keys();
        let found: Vec<_> = dups
            .iter()
            .map(|d| (d.path.to_string(), d.at.line, d.at.column, d.first.column))
            .collect();
        assert_eq!(
            found,
            vec![("a.set.x".to_owned(), 2, 21, 9), ("b".to_owned(), 4, 1, 1)]
        );
    }

    #[test]
    fn knows_an_empty_document() {
        for text in ["", "# only a comment\n", "---\n", "~\n", "null"] {
            assert!(SourceMap::build(text).is_empty_document(), "{text:?}");
        }
        for text in ["admin: {}\n", "'~'\n", "[]\n"] {
            assert!(!SourceMap::build(text).is_empty_document(), "{text:?}");
        }
    }

    #[test]
    fn unreadable_or_too_deep_text_gives_an_empty_map() {
        assert!(SourceMap::build("a: [\n").root().is_none());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(SourceMap::build(&deep).root().is_none());
    }
}
