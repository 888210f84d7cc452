//! Release builds for x86-64 Linux place the functions listed in `symbol-order.txt` (those
//! `strait proxy` runs from start-up through its first requests) together at the start of
//! `.text`. Start-up otherwise touches code spread over the whole binary, and the kernel maps
//! 64 KiB around every page it faults in: 6.3 MiB of the binary stayed resident in an idle
//! proxy, 3.9 MiB with the order. The list is made by `benches/symbol-order/run.sh`. A stale
//! one breaks nothing, but no longer keeps that code together: make it again when the
//! harness's report shows the binary matching little of it.
//!
//! The option is rust-lld's, the toolchain's own linker on this target since Rust 1.90. It is
//! left out with an older compiler, with a linker chosen in the environment, or when
//! `STRAIT_NO_SYMBOL_ORDER` is set. `STRAIT_SYMBOL_ORDER_FILE` names another list: the
//! profile-guided build links with one made from its own binary, whose symbol names differ
//! from a plain release build's.

fn main() {
    commit();
    println!("cargo:rerun-if-env-changed=STRAIT_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=STRAIT_SYMBOL_ORDER_FILE");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let own_linker = !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("linker");
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || std::env::var_os("STRAIT_NO_SYMBOL_ORDER").is_some()
        || own_linker
        || !rustc_links_with_lld(&var("RUSTC"))
    {
        return;
    }
    let list = match var("STRAIT_SYMBOL_ORDER_FILE") {
        given if !given.is_empty() => given,
        _ => format!("{}/symbol-order.txt", var("CARGO_MANIFEST_DIR")),
    };
    println!("cargo:rerun-if-changed={list}");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={list}");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The commit the binary is built from, for `strait --version` (`STRAIT_COMMIT`): a benchmark
/// report or a bug names the build that ran, not the checkout beside it. `unknown` outside a
/// git checkout. Built again when `HEAD` moves (a commit, a checkout), not for edits in between.
fn commit() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=9", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=STRAIT_COMMIT={commit}");
    // `HEAD`, the branch it names, and the packed refs, wherever this checkout keeps them.
    for (path, args) in [
        ("HEAD", &["rev-parse", "--git-path", "HEAD"][..]),
        ("branch", &["rev-parse", "--symbolic-full-name", "HEAD"][..]),
        ("packed", &["rev-parse", "--git-path", "packed-refs"][..]),
    ] {
        let Some(found) = git(args) else { continue };
        let found = match path {
            // `refs/heads/main`, or `HEAD` itself when detached.
            "branch" => match git(&["rev-parse", "--git-path", &found]) {
                Some(file) => file,
                None => continue,
            },
            _ => found,
        };
        let file = std::path::Path::new(&dir).join(found);
        if file.exists() {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
}

/// True for rustc 1.90 and later, which link this target with rust-lld by default.
fn rustc_links_with_lld(rustc: &str) -> bool {
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // `rustc 1.95.0 (59807616e 2026-04-14)`
    let mut parts = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}
