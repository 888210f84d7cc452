//! Where the repository is, for the tests that read its files (docs, examples, the schema, the
//! benchmark harness). Shared by both crates' tests (`#[path]`): each package lies two levels
//! below the root.

use std::path::PathBuf;

/// The repository, from the package's directory as `cargo test` gives it to the running test.
/// `env!` would give the one the test was compiled in: a persistent target directory shared by
/// clones at other paths keeps a test built in one of them (and perhaps since deleted) while it
/// is fresh.
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR");
    PathBuf::from(package.unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("../..")
}
