//! Every config shipped with the project parses and validates, found at test time so a new
//! example is covered without touching this file; and `config/gateway.yaml` keeps showing every
//! field of the format.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[path = "../../strait/tests/support/repo.rs"]
mod repo;
use repo::repo_root;

/// YAML files under `dir`, recursively when `deep`; nothing when `dir` does not exist.
fn yaml_files(dir: &Path, deep: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if deep {
                yaml_files(&path, deep, out);
            }
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_config_validates() {
    let root = repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("config"), false, &mut files);
    yaml_files(&root.join("examples"), true, &mut files);
    for required in ["config/gateway.yaml", "config/minimal.yaml"] {
        assert!(
            files.contains(&root.join(required)),
            "{required} is missing"
        );
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| strait_config::load(f).err().map(|e| e.to_string()))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every key and every scalar in a YAML document.
fn words(value: &serde_yaml::Value, out: &mut BTreeSet<String>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                words(k, out);
                words(v, out);
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| words(v, out)),
        serde_yaml::Value::String(s) => {
            out.insert(s.clone());
        }
        _ => {}
    }
}

/// Every field name and every enumerated value in the schema.
fn schema_names(schema: &serde_json::Value, out: &mut BTreeSet<String>) {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            if let Some(serde_json::Value::Array(values)) = map.get("enum") {
                out.extend(values.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
            map.values().for_each(|v| schema_names(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| schema_names(v, out)),
        _ => {}
    }
}

#[test]
fn gateway_example_shows_every_field_and_choice() {
    let path = repo_root().join("config/gateway.yaml");
    let text = std::fs::read_to_string(&path).expect("config/gateway.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("config/gateway.yaml is YAML");
    let mut used = BTreeSet::new();
    words(&doc, &mut used);
    let schema: serde_json::Value =
        serde_json::from_str(&strait_config::schema_json()).expect("the schema is JSON");
    let mut names = BTreeSet::new();
    schema_names(&schema, &mut names);
    let missing: Vec<&String> = names.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "config/gateway.yaml should show every field and choice of the format; missing: {missing:?}"
    );
}
