//! The JSON Schema of the config format, generated from the model's types, and its second use:
//! finding every unknown key in a file at once. serde stops at the first error, so a file with
//! three typos would need three runs of `strait validate`; walking the file against the schema
//! reports all of them.

use std::sync::OnceLock;

use schemars::schema::{
    InstanceType, ObjectValidation, RootSchema, Schema, SchemaObject, SingleOrVec,
};

use crate::field_path::FieldPath;
use crate::model::Config;
use crate::source_map::{Node, SourceMap, Value};
use crate::suggest;
use crate::validate::{At, Problem};

/// `$ref` chains longer than this are not followed (the model's are one step).
const MAX_REF_DEPTH: usize = 16;

/// Generated once: it is needed for every file that fails to parse.
fn root_schema() -> &'static RootSchema {
    static SCHEMA: OnceLock<RootSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(Config))
}

/// The pretty-printed JSON Schema, ending in a newline.
pub(crate) fn to_json() -> String {
    // Invariant: a schemars schema is plain JSON data (string keys, no non-finite floats), which
    // always serializes.
    let mut json = serde_json::to_string_pretty(root_schema()).expect("a JSON Schema serializes");
    json.push('\n');
    json
}

/// Every key the schema does not allow, and every scalar outside an enumeration, in `map`.
pub(crate) fn unknown_names(map: &SourceMap) -> Vec<Problem> {
    let schema = root_schema();
    let top = Schema::Object(schema.schema.clone());
    let mut walker = Walker {
        schema,
        problems: Vec::new(),
    };
    if let Some(root) = map.root() {
        walker.node(root, &top, &FieldPath::root());
    }
    walker.problems
}

struct Walker<'s> {
    schema: &'s RootSchema,
    problems: Vec<Problem>,
}

impl<'s> Walker<'s> {
    /// The alternatives `schema` stands for, with `$ref`, `allOf`, `anyOf` and `oneOf` expanded.
    fn branches(&self, schema: &'s Schema, depth: usize, out: &mut Vec<&'s SchemaObject>) {
        let Schema::Object(object) = schema else {
            return;
        };
        if depth > MAX_REF_DEPTH {
            return;
        }
        if let Some(reference) = &object.reference {
            let name = reference.trim_start_matches("#/definitions/");
            if let Some(target) = self.schema.definitions.get(name) {
                self.branches(target, depth + 1, out);
            }
            return;
        }
        out.push(object);
        if let Some(sub) = &object.subschemas {
            for list in [&sub.all_of, &sub.any_of, &sub.one_of]
                .into_iter()
                .flatten()
            {
                for s in list {
                    self.branches(s, depth + 1, out);
                }
            }
        }
    }

    fn node(&mut self, node: &Node, schema: &'s Schema, path: &FieldPath) {
        let mut branches = Vec::new();
        self.branches(schema, 0, &mut branches);
        match &node.value {
            Value::Mapping(entries) => {
                let objects: Vec<&ObjectValidation> = branches
                    .iter()
                    .filter_map(|b| b.object.as_deref())
                    .collect();
                if objects.is_empty() {
                    return; // a type error, which serde reports
                }
                static ANYTHING: Schema = Schema::Bool(true);
                let open = objects
                    .iter()
                    .find_map(|o| match o.additional_properties.as_deref() {
                        Some(Schema::Bool(false)) => None,
                        Some(other) => Some(other),
                        None => Some(&ANYTHING),
                    });
                for entry in entries {
                    let child = path.key(&entry.key);
                    let known = objects.iter().find_map(|o| o.properties.get(&entry.key));
                    match known.or(open) {
                        Some(schema) => self.node(&entry.value, schema, &child),
                        None => {
                            let mut allowed: Vec<&str> = objects
                                .iter()
                                .flat_map(|o| o.properties.keys().map(String::as_str))
                                .collect();
                            allowed.dedup();
                            self.problems.push(Problem {
                                field: child,
                                at: At::Key,
                                message: unknown("field", &entry.key, &allowed),
                            });
                        }
                    }
                }
            }
            Value::Sequence(items) => {
                let item_schema = branches.iter().find_map(|b| match b.array.as_deref() {
                    Some(array) => match &array.items {
                        Some(SingleOrVec::Single(s)) => Some(&**s),
                        _ => None,
                    },
                    None => None,
                });
                if let Some(item_schema) = item_schema {
                    for (i, item) in items.iter().enumerate() {
                        self.node(item, item_schema, &path.index(i));
                    }
                }
            }
            Value::Scalar {
                text,
                plain_null: false,
            } => {
                let mut allowed: Vec<&str> = Vec::new();
                let mut free_scalar = false;
                for b in &branches {
                    match &b.enum_values {
                        Some(values) => allowed.extend(values.iter().filter_map(|v| v.as_str())),
                        None => free_scalar |= accepts_scalar(b),
                    }
                }
                if !allowed.is_empty() && !free_scalar && !allowed.contains(&text.as_str()) {
                    self.problems.push(Problem {
                        field: path.clone(),
                        at: At::Value,
                        message: unknown("value", text, &allowed),
                    });
                }
            }
            Value::Scalar {
                plain_null: true, ..
            }
            | Value::Alias => {}
        }
    }
}

/// True when the branch takes some scalar without listing the values.
fn accepts_scalar(b: &SchemaObject) -> bool {
    let scalar = |t: &InstanceType| {
        matches!(
            t,
            InstanceType::String
                | InstanceType::Integer
                | InstanceType::Number
                | InstanceType::Boolean
        )
    };
    match &b.instance_type {
        Some(SingleOrVec::Single(t)) => scalar(t),
        Some(SingleOrVec::Vec(ts)) => ts.iter().any(scalar),
        None => false,
    }
}

/// `unknown field `adress`; did you mean `address`? Allowed: `name`, `address`, ...`
pub(crate) fn unknown(what: &str, given: &str, allowed: &[&str]) -> String {
    let mut message = format!("unknown {what} `{given}`");
    if let Some(close) = suggest::closest(given, allowed.iter().copied()) {
        message.push_str(&format!("; did you mean `{close}`?"));
    }
    if allowed.is_empty() {
        message.push_str("; nothing is allowed here");
    } else {
        message.push_str(&format!(" (allowed: {})", suggest::list(allowed)));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(String, String)> {
        unknown_names(&SourceMap::build(text))
            .into_iter()
            .map(|p| (p.field.to_string(), p.message))
            .collect()
    }

    #[test]
    fn finds_every_unknown_key_and_value() {
        let text = "\
workerz: 2
listeners:
  - name: a
    adress: 127.0.0.1:80
    routes:
      - match: { path: { prefx: / } }
        request_headers: { set: { x-a: b }, sett: {} }
clusters:
  - name: c
    load_balancer: fastest
    hash_on: client_ip
    endpoints: [{ address: 127.0.0.1:1, wieght: 2 }]
";
        let fields: Vec<String> = found(text).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "workerz",
                "listeners[0].adress",
                "listeners[0].routes[0].match.path.prefx",
                "listeners[0].routes[0].request_headers.sett",
                "clusters[0].load_balancer",
                "clusters[0].endpoints[0].wieght",
            ]
        );
    }

    #[test]
    fn a_valid_file_has_no_unknown_names() {
        let text = "\
listeners:
  - name: a
    address: 127.0.0.1:80
    proxy_headers: { x_forwarded_for: replace, via: strait }
    routes:
      - match: { hosts: [a.com], path: { regex: '/x.*' }, headers: [{ name: a, present: true }] }
        backends: [{ cluster: c, weight: 1 }]
        response_headers: { add: { x-any-name: v } }
clusters:
  - name: c
    protocol: http2
    load_balancer: maglev
    hash_on: { header: x-user }
    endpoints: [{ address: 127.0.0.1:1 }]
";
        assert_eq!(found(text), []);
    }

    #[test]
    fn messages_suggest_and_list() {
        let found = found("listeners: [{ name: a, adress: 127.0.0.1:80 }]\n");
        let message = &found.first().expect("one problem").1;
        assert!(
            message.starts_with("unknown field `adress`; did you mean `address`?"),
            "{message}"
        );
        assert!(message.contains("`idle_timeout`"), "{message}");
    }
}
