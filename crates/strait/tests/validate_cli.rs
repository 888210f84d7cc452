//! `strait validate FILE`: what a user sees when checking a config before deploying it, and
//! `strait proxy` refusing to start on a bad one.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion, killing it (and failing) after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strait");
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn validate(file: &TempFile) -> Run {
    run_bounded(
        strait().arg("validate").arg(&file.path),
        Duration::from_secs(10),
    )
}

/// 1-based line and column where `needle` starts in `text` (its `occurrence`-th match).
fn locate(text: &str, needle: &str, occurrence: usize) -> (usize, usize) {
    let at = text
        .match_indices(needle)
        .nth(occurrence)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("{needle:?} not in the test config"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// The stderr line reporting `field`; checks its `FILE:LINE:COLUMN: FIELD: message` shape and
/// returns (line, column, message).
fn error_line<'a>(run: &'a Run, file: &TempFile, field: &str) -> (usize, usize, &'a str) {
    let path = file.path.display().to_string();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(&format!(": {field}: ")))
        .unwrap_or_else(|| panic!("no error line for `{field}` on stderr:\n{}", run.stderr));
    let rest = line
        .strip_prefix(&format!("{path}:"))
        .unwrap_or_else(|| panic!("error line does not start with the file path {path}:\n{line}"));
    let mut parts = rest.splitn(3, ':');
    let l = parts.next().and_then(|s| s.parse::<usize>().ok());
    let c = parts.next().and_then(|s| s.parse::<usize>().ok());
    let (Some(l), Some(c)) = (l, c) else {
        panic!("expected `{path}:LINE:COLUMN: {field}: ...`, got:\n{line}");
    };
    let after = parts.next().unwrap_or_default();
    let message = after
        .strip_prefix(&format!(" {field}: "))
        .unwrap_or_else(|| panic!("expected the field path right after LINE:COLUMN:\n{line}"));
    (l, c, message)
}

const VALID: &str = r#"admin:
  address: 127.0.0.1:9901
listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - match: { path: { prefix: /api } }
        backends: [{ cluster: api }]
      - redirect: { scheme: https }
clusters:
  - name: api
    endpoints: [{ address: "127.0.0.1:9001" }]
"#;

/// `strait --version` names the commit it was built from: a benchmark report or a bug report
/// names the build that ran, not the checkout beside it.
#[test]
fn the_version_names_the_commit_built() {
    let run = run_bounded(strait().arg("--version"), Duration::from_secs(10));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=9",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let commit = head.as_deref().unwrap_or("unknown");
    let expected = format!("strait {} ({commit})", env!("CARGO_PKG_VERSION"));
    assert_eq!(run.stdout.trim(), expected);
}

#[test]
fn valid_config_exits_0_and_says_ok() {
    let file = TempFile::new(VALID);
    let run = validate(&file);
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let said = format!("{}{}", run.stdout, run.stderr).to_ascii_lowercase();
    assert!(
        said.contains("ok"),
        "no ok message: stdout {:?} stderr {:?}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn unknown_field_is_reported_with_file_line_column_and_path() {
    let text = VALID.replace("    address: 127.0.0.1:8080", "    adress: 127.0.0.1:8080");
    let file = TempFile::new(&text);
    let run = validate(&file);
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let (line, column, message) = error_line(&run, &file, "listeners[0].adress");
    assert_eq!(
        (line, column),
        locate(&text, "adress", 0),
        "position of the typo"
    );
    assert!(
        message.contains("adress"),
        "message names the unknown field: {message}"
    );
    assert!(
        message.contains("address"),
        "message lists the allowed fields: {message}"
    );
}

#[test]
fn undeclared_cluster_is_reported_with_file_line_column_and_path() {
    let text = VALID.replace(
        "backends: [{ cluster: api }]",
        "backends: [{ cluster: nope }]",
    );
    let file = TempFile::new(&text);
    let run = validate(&file);
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let (line, column, message) =
        error_line(&run, &file, "listeners[0].routes[0].backends[0].cluster");
    let (want_line, key_col) = locate(&text, "cluster: nope", 0);
    assert_eq!(line, want_line, "line of `cluster: nope`");
    assert!(
        column == key_col || column == key_col + "cluster: ".len(),
        "column {column} points at neither the key ({key_col}) nor the value"
    );
    assert!(
        message.contains("nope"),
        "message names the missing cluster: {message}"
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = r#"listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - backends: [{ cluster: ghost }]
      - backends: [{ cluster: api }]
      - backends: [{ cluster: phantom }]
clusters:
  - name: api
    endpoints: [{ address: "127.0.0.1:9001" }]
"#;
    let file = TempFile::new(text);
    let run = validate(&file);
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    let first = error_line(&run, &file, "listeners[0].routes[0].backends[0].cluster");
    let second = error_line(&run, &file, "listeners[0].routes[2].backends[0].cluster");
    assert_eq!(
        first.0,
        locate(text, "ghost", 0).0,
        "line of the first error"
    );
    assert_eq!(
        second.0,
        locate(text, "phantom", 0).0,
        "line of the second error"
    );
    let order: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("ghost") || l.contains("phantom"))
        .collect();
    assert_eq!(order.len(), 2, "one line per error:\n{}", run.stderr);
    assert!(
        order[0].contains("ghost"),
        "errors in file order:\n{}",
        run.stderr
    );
}

#[test]
fn bad_values_and_bad_yaml_are_located() {
    let text = VALID.replace(
        "      - redirect: { scheme: https }",
        "      - redirect: { scheme: https }\n        timeout: 5x",
    );
    let file = TempFile::new(&text);
    let run = validate(&file);
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    let (line, _, message) = error_line(&run, &file, "listeners[0].routes[1].timeout");
    assert_eq!(line, locate(&text, "5x", 0).0, "line of the bad duration");
    assert!(
        message.contains("5x"),
        "message quotes the bad value: {message}"
    );

    let broken = "listeners:\n  - name: main\n    address: [127.0.0.1:8080\n";
    let file = TempFile::new(broken);
    let run = validate(&file);
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    let path = file.path.display().to_string();
    let located = run.stderr.lines().any(|l| {
        l.strip_prefix(&format!("{path}:"))
            .and_then(|r| r.split(':').next())
            .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= 3))
    });
    assert!(
        located,
        "a YAML syntax error must carry {path}:LINE:COLUMN:\n{}",
        run.stderr
    );
}

#[test]
fn missing_file_exits_1_and_names_it() {
    let path =
        std::env::temp_dir().join(format!("strait-itest-missing-{}.yaml", std::process::id()));
    let run = run_bounded(strait().arg("validate").arg(&path), Duration::from_secs(10));
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains(&path.display().to_string()),
        "the error names the file:\n{}",
        run.stderr
    );
}

#[test]
fn proxy_refuses_to_start_on_an_invalid_config() {
    let listen = free_addr();
    let admin = free_addr();
    let text = format!(
        "admin:\n  address: {admin}\nlisteners:\n  - name: main\n    address: {listen}\n    \
         routes:\n      - backends: [{{ cluster: nope }}]\n"
    );
    let file = TempFile::new(&text);
    let run = run_bounded(
        strait().arg("proxy").arg("--config").arg(&file.path),
        Duration::from_secs(10),
    );
    assert_ne!(run.code, Some(0), "the proxy started on an invalid config");
    assert!(run.code.is_some(), "the proxy was killed by a signal");
    // Log formatting is free, but the error must say where and what, as `validate` does.
    let path = file.path.display().to_string();
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.lines().any(|l| l.contains(&format!("{path}:"))
            && l.contains("listeners[0].routes[0].backends[0].cluster")
            && l.contains("nope")),
        "no error naming the file, the field and the missing cluster:\n{said}"
    );
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "the listener is bound although the config was refused"
    );
}

/// `validate` loads the files a config names as the proxy does at start: a config the proxy
/// would refuse for a missing certificate, key or JWKS file is refused here too, the field and
/// the file named.
#[test]
fn files_the_proxy_could_not_load_fail_validation() {
    let dir = std::env::temp_dir().join(format!("strait-itest-files-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let cert = dir.join("nope.pem");
    let ca = dir.join("no-ca.pem");
    let jwks = dir.join("garbage.json");
    std::fs::write(&jwks, "not a key set").expect("write");
    let text = format!(
        "listeners:\n  - name: main\n    address: 127.0.0.1:18443\n    tls:\n      certificates: \
         [{{ cert: \"{}\", key: \"{}\" }}]\n    jwt:\n      issuer: https://i.example\n      \
         jwks: {{ file: \"{}\" }}\n    routes:\n      - backends: [{{ cluster: up }}]\n\
         clusters:\n  - name: up\n    endpoints: [{{ address: 127.0.0.1:8080 }}]\n    tls: \
         {{ ca: \"{}\" }}\n",
        cert.display(),
        cert.display(),
        jwks.display(),
        ca.display()
    );
    let file = TempFile::new(&text);
    let run = validate(&file);
    assert_eq!(run.code, Some(1), "stdout:\n{}", run.stdout);
    for (field, named) in [
        ("listeners[0].tls", &cert),
        ("listeners[0].jwt.jwks.file", &jwks),
        ("clusters[0].tls", &ca),
    ] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(field) && l.contains(&named.display().to_string())),
            "{field} naming {}:\n{}",
            named.display(),
            run.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
