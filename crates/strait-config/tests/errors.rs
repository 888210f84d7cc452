//! What a user sees for a bad config: every problem, each at `FILE:LINE:COLUMN`, with the field
//! path and what is allowed.

use strait_config::{parse, ConfigError};

const ORIGIN: &str = "gateway.yaml";

const VALID: &str = "\
listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - match: { path: { prefix: /api } }
        backends: [{ cluster: api }]
clusters:
  - name: api
    endpoints: [{ address: 127.0.0.1:9001 }]
";

/// The errors for `text`, which must be refused.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, ORIGIN) {
        Ok(_) => panic!("config accepted, expected errors:\n{text}"),
        Err(e) => e.errors,
    }
}

/// The one error about `field`.
fn error_about(text: &str, field: &str) -> ConfigError {
    let all = errors(text);
    let mut about = all.iter().filter(|e| e.field == field);
    match (about.next(), about.next()) {
        (Some(e), None) => e.clone(),
        _ => panic!(
            "expected exactly one error about `{field}`, got:\n{}",
            all.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// 1-based line and column where the `occurrence`-th `needle` starts.
fn locate(text: &str, needle: &str, occurrence: usize) -> (usize, usize) {
    let at = text
        .match_indices(needle)
        .nth(occurrence)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("{needle:?} is not in the test config"));
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    (line, column)
}

#[track_caller]
fn assert_at(e: &ConfigError, text: &str, needle: &str, occurrence: usize) {
    assert_eq!(
        (e.line, e.column),
        locate(text, needle, occurrence),
        "position of {needle:?} for: {e}"
    );
}

#[track_caller]
fn assert_says(e: &ConfigError, words: &[&str]) {
    for word in words {
        assert!(e.message.contains(word), "message lacks {word:?}: {e}");
    }
}

#[test]
fn the_valid_base_config_parses() {
    let config = parse(VALID, ORIGIN).expect("valid");
    assert_eq!(config.listeners.len(), 1);
}

#[test]
fn unknown_field_typo_is_located_and_suggests_the_field() {
    let text = VALID.replace("    address: 127.0.0.1:8080", "    adress: 127.0.0.1:8080");
    let e = error_about(&text, "listeners[0].adress");
    assert_at(&e, &text, "adress", 0);
    assert_eq!((e.line, e.column), (3, 5));
    assert_says(
        &e,
        &[
            "unknown field `adress`",
            "did you mean `address`?",
            "`routes`",
        ],
    );
    assert!(
        e.to_string()
            .starts_with("gateway.yaml:3:5: listeners[0].adress: unknown field `adress`"),
        "{e}"
    );
}

#[test]
fn every_unknown_field_is_reported_at_once() {
    let text = VALID
        .replace("    address: 127.0.0.1:8080", "    adress: 127.0.0.1:8080")
        .replace(
            "backends: [{ cluster: api }]",
            "backend: [{ cluster: api }]",
        )
        .replace(
            "{ address: 127.0.0.1:9001 }",
            "{ address: 127.0.0.1:9001, wieght: 2 }",
        );
    let found: Vec<(String, usize)> = errors(&text)
        .into_iter()
        .map(|e| (e.field, e.line))
        .collect();
    assert_eq!(
        found,
        [
            ("listeners[0].adress".to_owned(), 3),
            ("listeners[0].routes[0].backend".to_owned(), 6),
            ("clusters[0].endpoints[0].wieght".to_owned(), 9),
        ]
    );
}

#[test]
fn unknown_enum_value_lists_the_choices() {
    let text = VALID.replace(
        "  - name: api\n",
        "  - name: api\n    load_balancer: round-robin\n",
    );
    let e = error_about(&text, "clusters[0].load_balancer");
    assert_at(&e, &text, "round-robin", 0);
    assert_says(
        &e,
        &["`round-robin`", "did you mean `round_robin`?", "`maglev`"],
    );
}

#[test]
fn undefined_cluster_points_at_the_reference() {
    let text = VALID.replace("{ cluster: api }", "{ cluster: apx }");
    let e = error_about(&text, "listeners[0].routes[0].backends[0].cluster");
    assert_at(&e, &text, "apx", 0);
    assert_says(&e, &["`apx`", "did you mean `api`?", "clusters"]);
}

#[test]
fn undefined_mirror_cluster_is_an_error() {
    let text = VALID.replace(
        "        backends: [{ cluster: api }]\n",
        "        backends: [{ cluster: api }]\n        mirror: { cluster: shadow, percent: 10 }\n",
    );
    let e = error_about(&text, "listeners[0].routes[0].mirror.cluster");
    assert_at(&e, &text, "shadow", 0);
    assert_says(&e, &["`shadow`"]);
}

#[test]
fn bad_regex_points_at_the_pattern() {
    let text = VALID.replace("{ prefix: /api }", "{ regex: \"/api/(v1\" }");
    let e = error_about(&text, "listeners[0].routes[0].match.path.regex");
    assert_at(&e, &text, "\"/api/(v1\"", 0);
    assert_says(&e, &["invalid regular expression", "unclosed group"]);
    assert!(!e.message.contains('\n'), "one line: {e}");
}

#[test]
fn bad_duration_points_at_the_value() {
    let text = VALID.replace(
        "        backends: [{ cluster: api }]\n",
        "        backends: [{ cluster: api }]\n        timeout: 5x\n",
    );
    let e = error_about(&text, "listeners[0].routes[0].timeout");
    assert_at(&e, &text, "5x", 0);
    assert_says(&e, &["\"5x\"", "250ms", "1s"]);
    assert!(
        !e.message.contains("listeners[0]"),
        "no path inside the message: {e}"
    );
}

#[test]
fn two_actions_on_a_route_point_at_the_second() {
    let text = VALID.replace(
        "        backends: [{ cluster: api }]\n",
        "        backends: [{ cluster: api }]\n        redirect: { scheme: https }\n",
    );
    let e = error_about(&text, "listeners[0].routes[0].redirect");
    assert_at(&e, &text, "redirect", 0);
    assert_says(
        &e,
        &["exactly one of `backends`, `redirect` and `direct_response`"],
    );
}

#[test]
fn a_route_without_action_is_an_error() {
    let text = VALID.replace("        backends: [{ cluster: api }]\n", "");
    let e = error_about(&text, "listeners[0].routes[0]");
    assert_at(&e, &text, "match:", 0);
    assert_says(&e, &["`backends`", "`redirect`", "`direct_response`"]);
}

#[test]
fn missing_required_field_points_at_its_mapping() {
    let text = VALID.replace("    address: 127.0.0.1:8080\n", "");
    let e = error_about(&text, "listeners[0].address");
    assert_at(&e, &text, "name: main", 0);
    assert_says(&e, &["missing required field `address`"]);
}

#[test]
fn yaml_syntax_error_is_located() {
    let text = "listeners:\n  - name: main\n    address: \"127.0.0.1:8080\n";
    let all = errors(text);
    let e = all.first().expect("one error");
    assert!(e.line >= 3, "{e}");
    assert_says(e, &["invalid YAML"]);
}

/// A text cut short, without a last line break: the YAML parser runs out of text on a line
/// after the last and says so there. The error points at the end of the text instead (found by
/// `fuzz/fuzz_targets/config_parse.rs`).
#[test]
fn an_error_at_the_end_of_the_text_points_inside_it() {
    let text = "listeners:\n  - name: main\n    max rail_";
    let e = errors(text).into_iter().next().expect("one error");
    assert_says(&e, &["invalid YAML"]);
    assert_eq!((e.line, e.column), (3, 14), "{e}");
    // With the line break, the line after the last exists: it is where the text ends.
    let text = format!("{text}\n");
    let e = errors(&text).into_iter().next().expect("one error");
    assert_eq!((e.line, e.column), (4, 1), "{e}");
    // A value the source map found past the end (here after control characters, which the
    // YAML reader refuses) is kept inside the text too.
    let text = format!("&Q{}'\u{fffd}y\u{fffd}", "\0".repeat(76));
    let e = errors(&text).into_iter().next().expect("one error");
    assert_eq!(e.line, 1, "{e}");
    assert!(e.column <= text.chars().count() + 1, "{e}");
    // Lines ended by carriage returns alone are lines too (old Mac files): not cut short.
    let unix = VALID.replace("127.0.0.1:9001", "127.0.0.1");
    let e = error_about(
        &unix.replace('\n', "\r"),
        "clusters[0].endpoints[0].address",
    );
    assert_at(&e, &unix, "127.0.0.1 }", 0);
}

#[test]
fn wrong_types_say_what_to_write() {
    let text = VALID.replace("listeners:\n", "workers: -1\nlisteners:\n");
    let e = error_about(&text, "workers");
    assert_at(&e, &text, "-1", 0);
    assert_says(&e, &["whole number"]);

    let text = VALID.replace("127.0.0.1:8080", "localhost:8080");
    let e = error_about(&text, "listeners[0].address");
    assert_at(&e, &text, "localhost", 0);
    assert_says(&e, &["`ip:port`"]);
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    // Clusters first: file order is not the order the validator walks the model in.
    let text = "\
clusters:
  - name: api
    endpoints: []
listeners:
  - name: main
    address: 127.0.0.1:8080
    routes:
      - backends: [{ cluster: ghost }]
      - match: { path: { regex: \"(\" } }
        backends: [{ cluster: api }]
      - backends: [{ cluster: phantom }]
";
    let found: Vec<(usize, String)> = errors(text)
        .into_iter()
        .map(|e| (e.line, e.field))
        .collect();
    assert_eq!(
        found,
        [
            (3, "clusters[0].endpoints".to_owned()),
            (8, "listeners[0].routes[0].backends[0].cluster".to_owned()),
            (9, "listeners[0].routes[1].match.path.regex".to_owned()),
            (11, "listeners[0].routes[2].backends[0].cluster".to_owned()),
        ]
    );
}

#[test]
fn names_and_addresses_are_unique() {
    let text = "\
listeners:
  - { name: main, address: 127.0.0.1:8080 }
  - { name: main, address: 127.0.0.1:8081 }
  - { name: other, address: 127.0.0.1:8080 }
  - { name: wild, address: 0.0.0.0:8081 }
  - { name: admin, address: 127.0.0.1:9901 }
clusters:
  - { name: api, endpoints: [{ address: 127.0.0.1:9001 }] }
  - { name: api, endpoints: [{ address: 127.0.0.1:9002 }] }
";
    let e = error_about(text, "listeners[1].name");
    assert_at(&e, text, "main", 1);
    let e = error_about(text, "listeners[2].address");
    assert_at(&e, text, "127.0.0.1:8080", 1);
    assert_says(&e, &["listeners[0]"]);
    let e = error_about(text, "listeners[3].address");
    assert_says(&e, &["overlaps"]);
    let e = error_about(text, "listeners[4].address");
    assert_says(&e, &["admin"]);
    let e = error_about(text, "clusters[1].name");
    assert_at(&e, text, "api", 1);
    assert_says(&e, &["clusters[0]", "unique"]);
}

#[test]
fn a_key_written_twice_is_an_error() {
    let text = VALID.replace(
        "        backends: [{ cluster: api }]\n",
        "        backends: [{ cluster: api }]\n        request_headers:\n          set: { x-a: \"1\", x-a: \"2\" }\n",
    );
    let e = error_about(&text, "listeners[0].routes[0].request_headers.set.x-a");
    assert_at(&e, &text, "x-a", 1);
    assert_says(&e, &["twice"]);

    let text = format!("{VALID}listeners: []\n");
    let e = error_about(&text, "listeners");
    assert_at(&e, &text, "listeners", 1);
}

#[test]
fn an_empty_file_is_refused() {
    for text in ["", "# nothing yet\n", "---\n", "~\n"] {
        let all = errors(text);
        assert_eq!(all.len(), 1, "{text:?}");
        assert_says(&all[0], &["no configuration"]);
    }
}

#[test]
fn a_config_without_listeners_is_refused() {
    // What a file cut off while being written often is: taken, it would close every listener.
    for text in [
        "admin: { address: 127.0.0.1:9901 }\nworkers: 2\n",
        "admin: { address: 127.0.0.1:9901 }\nlisteners:\n",
        "listeners: []\nclusters: []\n",
    ] {
        let all = errors(text);
        assert_eq!(all.len(), 1, "{text:?}: {all:?}");
        assert_says(&all[0], &["no listeners"]);
    }
}

#[test]
fn a_second_document_is_refused() {
    let text = format!("{VALID}---\nlisteners: []\n");
    let all = errors(&text);
    let e = all.first().expect("one error");
    assert_at(e, &text, "---", 0);
    assert_says(e, &["one YAML document"]);
}

/// One route field changed at a time: (replacement for the route's `backends` line, field,
/// text the error points at, words the message must have).
const ROUTE_CASES: &[(&str, &str, &str, &[&str])] = &[
    (
        "backends: [{ cluster: api }]\n        match: { hosts: [\"api.example.com:80\"] }",
        "match.hosts[0]",
        "\"api.example.com:80\"",
        &["port"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { hosts: [\"a.*.com\"] }",
        "match.hosts[0]",
        "\"a.*.com\"",
        &["*.example.com"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { path: { exact: \"api\" } }",
        "match.path.exact",
        "\"api\"",
        &["start with `/`"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { methods: [get] }",
        "match.methods[0]",
        "get",
        &["`GET`"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { methods: [\"G T\"] }",
        "match.methods[0]",
        "\"G T\"",
        &["not an HTTP method"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { headers: [{ name: \"x y\" }] }",
        "match.headers[0].name",
        "\"x y\"",
        &["header name"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { headers: [{ name: x, exact: a, present: true }] }",
        "match.headers[0].present",
        "present",
        &["at most one of"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { headers: [{ name: x, regex: \"[\" }] }",
        "match.headers[0].regex",
        "\"[\"",
        &["invalid regular expression"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { query: [{ name: q, regex: \"a{2,1}\" }] }",
        "match.query[0].regex",
        "\"a{2,1}\"",
        &["invalid regular expression"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { query: [{ name: \"\" }] }",
        "match.query[0].name",
        "\"\"",
        &["empty"],
    ),
    (
        "backends: [{ cluster: api, weight: 0 }]",
        "backends",
        "[{ cluster: api, weight: 0 }]",
        &["weight above 0"],
    ),
    (
        "backends: [{ cluster: api, weight: 10001 }]",
        "backends[0].weight",
        "10001",
        &["0 to 10000"],
    ),
    (
        "redirect: { scheme: ftp }",
        "redirect.scheme",
        "ftp",
        &["`http` or `https`"],
    ),
    (
        "redirect: { path: /x, status: 200 }",
        "redirect.status",
        "200",
        &["301, 302, 303, 307 or 308"],
    ),
    (
        "redirect: { host: \"a.com:8443\" }",
        "redirect.host",
        "\"a.com:8443\"",
        &["redirect.port"],
    ),
    (
        "redirect: { status: 302 }",
        "redirect",
        "{ status: 302 }",
        &["loop"],
    ),
    (
        "direct_response: { status: 99 }",
        "direct_response.status",
        "99",
        &["200 to 599"],
    ),
    (
        "backends: [{ cluster: api }]\n        rewrite: { path_prefix: /v2, path: /v3 }",
        "rewrite.path_prefix",
        "path_prefix",
        &["not both"],
    ),
    (
        "backends: [{ cluster: api }]\n        match: { path: { exact: /api } }\n        rewrite: { path_prefix: /v2 }",
        "rewrite.path_prefix",
        "path_prefix",
        &["`prefix`", "`exact`"],
    ),
    (
        "backends: [{ cluster: api }]\n        rewrite: { path: v2 }",
        "rewrite.path",
        "v2",
        &["start with `/`"],
    ),
    (
        "direct_response: { status: 200 }\n        rewrite: { path: /v2 }",
        "rewrite",
        "rewrite",
        &["`backends`"],
    ),
    (
        "backends: [{ cluster: api }]\n        request_headers: { set: { \"x y\": a } }",
        "request_headers.set.x y",
        "\"x y\"",
        &["header name"],
    ),
    (
        "backends: [{ cluster: api }]\n        response_headers: { add: { x-a: \"a\\nb\" } }",
        "response_headers.add.x-a",
        "\"a\\nb\"",
        &["header value"],
    ),
    (
        "backends: [{ cluster: api }]\n        response_headers: { remove: [\"(x)\"] }",
        "response_headers.remove[0]",
        "\"(x)\"",
        &["header name"],
    ),
    (
        "backends: [{ cluster: api }]\n        mirror: { cluster: api, percent: 100.5 }",
        "mirror.percent",
        "100.5",
        &["0 to 100"],
    ),
];

#[test]
fn each_route_rule_is_reported_at_its_field() {
    for (replacement, field, needle, words) in ROUTE_CASES {
        let text = VALID
            .replace("match: { path: { prefix: /api } }\n        ", "")
            .replace("backends: [{ cluster: api }]", replacement);
        let field = format!("listeners[0].routes[0].{field}");
        let e = error_about(&text, &field);
        // The needle is searched after the route starts.
        let route_start = text.find("routes:").unwrap_or(0);
        let (line, column) = locate(text.get(route_start..).unwrap_or_default(), needle, 0);
        let route_line = text
            .get(..route_start)
            .unwrap_or_default()
            .matches('\n')
            .count();
        assert_eq!(
            (e.line, e.column),
            (line + route_line, column),
            "position of {needle:?} for {e}\n{text}"
        );
        assert_says(&e, words);
    }
}

/// One cluster field changed at a time, as for routes.
const CLUSTER_CASES: &[(&str, &str, &str, &[&str])] = &[
    ("endpoints: []", "endpoints", "[]", &["at least one endpoint"]),
    (
        "endpoints: [{ address: 127.0.0.1:9001, weight: 0 }]",
        "endpoints[0].weight",
        "0 }",
        &["1 to 1000"],
    ),
    (
        "endpoints: [{ address: 127.0.0.1:9001, weight: 1001 }]",
        "endpoints[0].weight",
        "1001",
        &["1 to 1000"],
    ),
    (
        "endpoints: [{ address: 127.0.0.1:9001 }, { address: \"127.0.0.1:9001\" }]",
        "endpoints[1].address",
        "\"127.0.0.1:9001\"",
        &["endpoints[0]", "weight"],
    ),
    (
        "endpoints: [{ address: 127.0.0.1:0 }]",
        "endpoints[0].address",
        "127.0.0.1:0",
        &["port"],
    ),
    (
        "load_balancer: maglev\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "hash_on",
        "maglev",
        &["needs `hash_on`"],
    ),
    (
        "hash_on: client_ip\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "hash_on",
        "hash_on",
        &["only for `ring_hash` and `maglev`"],
    ),
    (
        "load_balancer: ring_hash\n    hash_on: { header: \"x y\" }\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "hash_on.header",
        "\"x y\"",
        &["header name"],
    ),
    (
        "load_balancer: ring_hash\n    hash_on: { cookie: \"a=b\" }\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "hash_on.cookie",
        "\"a=b\"",
        &["cookie name"],
    ),
    (
        "connect_timeout: 0s\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "connect_timeout",
        "0s",
        &["above 0"],
    ),
    (
        "max_idle_per_endpoint: 1000000\n    endpoints: [{ address: 127.0.0.1:9001 }]",
        "max_idle_per_endpoint",
        "1000000",
        &["10000"],
    ),
];

#[test]
fn each_cluster_rule_is_reported_at_its_field() {
    for (replacement, field, needle, words) in CLUSTER_CASES {
        let text = VALID.replace("endpoints: [{ address: 127.0.0.1:9001 }]", replacement);
        let field = format!("clusters[0].{field}");
        let e = error_about(&text, &field);
        let start = text.find("clusters:").unwrap_or(0);
        let (line, column) = locate(text.get(start..).unwrap_or_default(), needle, 0);
        let before = text.get(..start).unwrap_or_default().matches('\n').count();
        assert_eq!(
            (e.line, e.column),
            (line + before, column),
            "position of {needle:?} for {e}\n{text}"
        );
        assert_says(&e, words);
    }
}

#[test]
fn workers_must_be_at_least_one() {
    let text = format!("workers: 0\n{VALID}");
    let e = error_about(&text, "workers");
    assert_eq!((e.line, e.column), (1, 10));
    assert_says(&e, &["1 to 1024"]);
}

#[test]
fn connection_limits_of_zero_are_refused_at_their_field() {
    for field in ["max_connections", "max_connections_per_client"] {
        let text = VALID.replace("    routes:", &format!("    {field}: 0\n    routes:"));
        let e = error_about(&text, &format!("listeners[0].{field}"));
        // At the value.
        let (line, column) = locate(&text, &format!("{field}: 0"), 0);
        assert_eq!((e.line, e.column), (line, column + field.len() + 2));
        assert_says(&e, &["refuse every connection", "1 or more"]);
    }
}

#[test]
fn max_request_body_bytes_belongs_to_forwarding_routes_and_a_routes_replaces_the_listeners() {
    let text = VALID.replace(
        "        backends: [{ cluster: api }]\n",
        "        direct_response: { status: 200 }\n        max_request_body_bytes: 10\n",
    );
    let e = error_about(&text, "listeners[0].routes[0].max_request_body_bytes");
    assert_says(&e, &["bounds the body sent upstream", "direct_response"]);

    let text = VALID
        .replace(
            "    routes:",
            "    max_request_body_bytes: 1000\n    routes:",
        )
        .replace(
            "        backends: [{ cluster: api }]\n",
            "        backends: [{ cluster: api }]\n      - backends: [{ cluster: api }]\n        \
             max_request_body_bytes: 0\n",
        );
    let config = parse(&text, ORIGIN).expect("valid");
    let listener = &config.listeners[0];
    assert_eq!(listener.max_request_body_bytes, Some(1000));
    assert_eq!(listener.routes[0].max_request_body_bytes, None);
    assert_eq!(listener.routes[1].max_request_body_bytes, Some(0));
}

#[test]
fn cors_origins_methods_and_headers_are_checked_at_their_items() {
    let with = |cors: &str| {
        VALID.replace(
            "        backends: [{ cluster: api }]\n",
            &format!("        backends: [{{ cluster: api }}]\n        cors: {cors}\n"),
        )
    };
    let at = "listeners[0].routes[0].cors";
    let e = error_about(
        &with("{ allow_origins: [] }"),
        &format!("{at}.allow_origins"),
    );
    assert_says(&e, &["refuse every one", "`*`"]);
    for bad in ["app.example.com", "https://app.example.com/", "https://"] {
        let text = with(&format!("{{ allow_origins: [\"*\", \"{bad}\"] }}"));
        let e = error_about(&text, &format!("{at}.allow_origins[1]"));
        assert_says(&e, &[bad, "https://app.example.com"]);
    }
    let text = with("{ allow_origins: [\"*\"], allow_methods: [GET, \"P T\"] }");
    let e = error_about(&text, &format!("{at}.allow_methods[1]"));
    assert_says(&e, &["not a method name"]);
    let text = with("{ allow_origins: [\"*\"], allow_headers: [\"x y\"] }");
    error_about(&text, &format!("{at}.allow_headers[0]"));
    let text = with("{ allow_origins: [\"*\"], expose_headers: [\"*\"], allow_credentials: true }");
    let e = error_about(&text, &format!("{at}.expose_headers[0]"));
    assert_says(&e, &["allow_credentials", "list the headers"]);

    let text = with("{ allow_origins: [\"https://*.example.com:8443\", \"http://[::1]:3000\"] }");
    let config = parse(&text, ORIGIN).expect("valid");
    let cors = config.listeners[0].routes[0].cors.clone().expect("cors");
    assert_eq!(cors.allow_methods, ["GET", "HEAD", "POST"]);
    assert_eq!(cors.allow_headers, ["*"]);
    assert!(!cors.allow_credentials && cors.max_age.is_none() && cors.expose_headers.is_empty());
}

#[test]
fn compression_level_and_media_types_are_checked() {
    let with = |compression: &str| {
        VALID.replace(
            "        backends: [{ cluster: api }]\n",
            &format!(
                "        backends: [{{ cluster: api }}]\n        compression: {compression}\n"
            ),
        )
    };
    let at = "listeners[0].routes[0].compression";
    let e = error_about(&with("{ level: 10 }"), &format!("{at}.level"));
    assert_says(&e, &["10", "1 (fastest) to 9"]);
    for bad in ["json", "text/", "/json", "text/ html"] {
        let text = with(&format!("{{ content_types: [text/html, \"{bad}\"] }}"));
        let e = error_about(&text, &format!("{at}.content_types[1]"));
        assert_says(&e, &[bad, "type/subtype"]);
    }
    let config = parse(&with("{}"), ORIGIN).expect("valid");
    let c = config.listeners[0].routes[0]
        .compression
        .clone()
        .expect("compression");
    assert_eq!((c.min_bytes, c.level), (1024, 1));
    assert!(c.content_types.iter().any(|t| t == "application/json"));
}

#[test]
fn busy_poll_is_bounded_and_accepts_microseconds() {
    let text = format!("busy_poll: 200ms\n{VALID}");
    let e = error_about(&text, "busy_poll");
    assert_eq!((e.line, e.column), (1, 12));
    assert_says(&e, &["200ms", "0s (off) to 100ms"]);

    let text = format!("busy_poll: 50us\n{VALID}");
    let config = strait_config::parse(&text, "t.yaml").expect("50us is allowed");
    assert_eq!(config.busy_poll.get(), std::time::Duration::from_micros(50));
}

#[test]
fn load_names_the_missing_file() {
    let path =
        std::env::temp_dir().join(format!("strait-config-missing-{}.yaml", std::process::id()));
    let errors = strait_config::load(&path).expect_err("no such file").errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].origin, path.display().to_string());
    assert!(
        errors[0].to_string().contains("cannot read"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_wrong_variant_key_lists_the_keys_of_that_form() {
    let text = VALID.replace(
        "  - name: api\n",
        "  - name: api\n    load_balancer: ring_hash\n    hash_on: { heder: x-user }\n",
    );
    let e = error_about(&text, "clusters[0].hash_on.heder");
    assert_at(&e, &text, "heder", 0);
    assert_says(&e, &["did you mean `header`?", "`cookie`"]);
}

#[test]
fn a_value_equal_to_its_field_name_is_still_a_value() {
    let text = VALID.replace("  - name: api\n", "  - name: api\n    protocol: protocol\n");
    let e = error_about(&text, "clusters[0].protocol");
    assert_at(&e, &text, "protocol", 1);
    assert_says(&e, &["unknown value `protocol`", "`http2`"]);
}

#[test]
fn a_struct_field_written_twice_names_the_first() {
    let text = format!("drain_timeout: 5s\n{VALID}drain_timeout: 10s\n");
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_at(&all[0], &text, "drain_timeout", 1);
    assert_eq!(all[0].field, "drain_timeout");
    assert_says(&all[0], &["first at line 1:1"]);
}
