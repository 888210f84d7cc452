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
