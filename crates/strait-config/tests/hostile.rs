//! A config file is input like any other: truncated, corrupted or hostile text must give errors,
//! never a panic (a panic in a reload would take the proxy down).

use strait_config::parse;

const GATEWAY: &str = include_str!("../../../config/gateway.yaml");

/// Parses `text`, which may be anything; an error must say something and, when it has a
/// position, one inside the text.
fn parse_any(text: &str) -> bool {
    match parse(text, "fuzz.yaml") {
        Ok(_) => true,
        Err(e) => {
            assert!(!e.errors.is_empty(), "an Err with no errors for {text:?}");
            let lines = text.lines().count().max(1) + 1;
            for error in &e.errors {
                assert!(!error.message.is_empty(), "empty message for {text:?}");
                assert!(
                    error.line <= lines,
                    "line {} beyond the text ({lines} lines): {error}",
                    error.line
                );
            }
            false
        }
    }
}

#[test]
fn garbage_is_refused() {
    let deep_flow = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_block: String = (0..300)
        .map(|i| format!("{}- \n", " ".repeat(i * 2)))
        .collect();
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    let cases: Vec<String> = vec![
        "\0".into(),
        "[[[[".into(),
        "{".into(),
        "}".into(),
        "- - -".into(),
        "listeners: [".into(),
        "listeners:\n  - name: \"unterminated\n".into(),
        "\u{feff}\u{feff}".into(),
        "\t\tlisteners:\n".into(),
        ": :".into(),
        "? [a, b]\n: c\n".into(),
        "listeners: *nowhere\n".into(),
        "!!binary listeners: x\n".into(),
        "%YAML 9.9\n---\na: b\n".into(),
        "listeners:\n  - &x { name: a, address: 127.0.0.1:1, routes: [*x] }\n".into(),
        "clusters: [{ name: a, endpoints: [{ address: \"[::1\" }] }]\n".into(),
        "drain_timeout: 1e400s\n".into(),
        format!("drain_timeout: {}s\n", "9".repeat(400)),
        "workers: 18446744073709551616\n".into(),
        "listeners:\n  - name: a\n    address: 127.0.0.1:65536\n".into(),
        deep_flow,
        deep_block,
        laughs.into(),
        "\u{1F600}: \u{1F600}\n".into(),
        format!("{}: 1\n", "k".repeat(100_000)),
    ];
    for text in &cases {
        assert!(!parse_any(text), "accepted: {text:?}");
    }
}

#[test]
fn every_truncation_of_a_real_config_is_handled() {
    let cut_points: Vec<usize> = GATEWAY
        .char_indices()
        .map(|(i, _)| i)
        .filter(|i| i % 7 == 0 || GATEWAY.get(*i..).is_some_and(|rest| rest.starts_with('\n')))
        .collect();
    for &end in &cut_points {
        if let Some(prefix) = GATEWAY.get(..end) {
            parse_any(prefix);
        }
    }
}

#[test]
fn random_yaml_like_noise_is_handled() {
    const ALPHABET: &[&str] = &[
        "listeners",
        "clusters",
        "routes",
        "match",
        "backends",
        "name",
        ":",
        " ",
        "  ",
        "\n",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "\"",
        "'",
        "&a",
        "*a",
        "!",
        "#",
        "|",
        ">",
        "?",
        "%",
        "\t",
        "127.0.0.1:80",
        "1s",
        "-1",
        "~",
        "null",
        "path",
        "prefix",
        "/",
        "\\",
        "é",
        "\u{0}",
        "---",
        "...",
        "@",
        "`",
    ];
    // A fixed xorshift so a failure reproduces.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3_000 {
        let len = next() % 40;
        let text: String = (0..len)
            .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
            .collect();
        parse_any(&text);
    }
}

#[test]
fn mutations_of_a_valid_config_are_handled() {
    let base = include_str!("../../../config/minimal.yaml");
    let chars: Vec<char> = base.chars().collect();
    for (i, _) in chars.iter().enumerate() {
        for replacement in [
            ':', '[', '{', '-', '"', '*', '&', '!', '\t', '\n', '#', '|', ' ', 'x',
        ] {
            let mut mutated = chars.clone();
            mutated[i] = replacement;
            let text: String = mutated.into_iter().collect();
            parse_any(&text);
        }
    }
}
