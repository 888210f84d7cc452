//! `config/strait.schema.json` is what editors check config files against; it must say what the
//! Rust types say.

use std::path::PathBuf;

#[path = "../../strait/tests/support/repo.rs"]
mod repo;

fn committed_path() -> PathBuf {
    repo::repo_root().join("config/strait.schema.json")
}

#[test]
fn committed_schema_matches_the_types() {
    let generated = strait_config::schema_json();
    let path = committed_path();
    if std::env::var_os("STRAIT_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write config/strait.schema.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the types in crates/strait-config/src/model.rs; regenerate it \
         with `STRAIT_BLESS=1 cargo test -p strait-config --test schema` and commit the result",
        path.display()
    );
}

#[test]
fn schema_is_json_schema_that_forbids_unknown_fields() {
    let schema: serde_json::Value =
        serde_json::from_str(&strait_config::schema_json()).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-07/schema#",
        "draft 7, which editors' YAML plugins understand"
    );
    assert_eq!(schema["additionalProperties"], false);
    for name in [
        "Listener",
        "Route",
        "Cluster",
        "Endpoint",
        "Backend",
        "RouteMatch",
    ] {
        assert_eq!(
            schema["definitions"][name]["additionalProperties"], false,
            "{name} must refuse unknown fields, as serde does"
        );
    }
    assert_eq!(
        schema["definitions"]["Endpoint"]["properties"]["weight"]["maximum"], 1000.0,
        "ranges the validator enforces are in the schema too"
    );
}

/// Every field's path in the schema (`listeners.routes.retry.backoff.base`: lists add no step),
/// with `$ref`, `allOf`, `anyOf` and `oneOf` followed.
fn field_paths(
    schema: &serde_json::Value,
    node: &serde_json::Value,
    path: &[String],
    depth: usize,
    out: &mut std::collections::BTreeSet<Vec<String>>,
) {
    // The model's `$ref` chains are short; a cycle would end here.
    let Some(map) = node.as_object().filter(|_| depth < 32) else {
        return;
    };
    if let Some(target) = map.get("$ref").and_then(|r| r.as_str()) {
        let name = target.trim_start_matches("#/definitions/");
        field_paths(schema, &schema["definitions"][name], path, depth + 1, out);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        let branches = map.get(key).and_then(|b| b.as_array());
        for branch in branches.into_iter().flatten() {
            field_paths(schema, branch, path, depth + 1, out);
        }
    }
    if let Some(items) = map.get("items") {
        field_paths(schema, items, path, depth + 1, out);
    }
    let fields = map.get("properties").and_then(|p| p.as_object());
    for (name, field) in fields.into_iter().flatten() {
        let mut inner = path.to_vec();
        inner.push(name.clone());
        field_paths(schema, field, &inner, depth + 1, out);
        out.insert(inner);
    }
}

/// Every field of the format has a row in `docs/configuration.md`'s reference: a table row whose
/// first cell names it (`backoff.base`, `rules[].action`; a row of `abort.status` counts for
/// `abort`), or a `{ cert, key, ocsp }` shape that lists it. Documentation that lags the types
/// is a field users cannot find.
#[test]
fn configuration_reference_has_a_row_for_every_field() {
    let docs_path = repo::repo_root().join("docs/configuration.md");
    let docs = std::fs::read_to_string(&docs_path).expect("docs/configuration.md");
    let docs = docs.replace("[]", "");
    // The first cell of each table row, and each `{ a, b }` shape anywhere in the text.
    let rows: Vec<&str> = docs
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .collect();
    let shapes: Vec<&str> = docs
        .lines()
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter_map(|span| span.strip_prefix('{')?.strip_suffix('}'))
        .flat_map(|inner| inner.split(','))
        .filter_map(|part| part.split(':').next())
        .map(str::trim)
        .collect();
    assert!(rows.len() > 100, "the reference's tables were not found");

    let schema: serde_json::Value =
        serde_json::from_str(&strait_config::schema_json()).expect("the schema is JSON");
    let mut paths = std::collections::BTreeSet::new();
    field_paths(&schema, &schema, &[], 0, &mut paths);
    assert!(paths.len() > 100, "the schema's fields were not found");

    let documented = |path: &[String]| {
        let named = (0..path.len()).any(|from| {
            let suffix = path[from..].join(".");
            rows.iter().any(|row| {
                row.strip_prefix(suffix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        });
        let leaf = path.last().map_or("", String::as_str);
        named || shapes.contains(&leaf)
    };
    let missing: Vec<String> = paths
        .iter()
        .filter(|path| !documented(path))
        .map(|path| path.join("."))
        .collect();
    assert!(
        missing.is_empty(),
        "fields with no row in {}: {missing:?}",
        docs_path.display()
    );
}
