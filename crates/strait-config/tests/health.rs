//! `health_check`, `outlier_detection` and `fail_open` on a cluster: defaults filled in, both
//! status forms read, and each mistake named at its field with what is allowed.

use strait_config::{parse, StatusRange};

const BASE: &str = "listeners:\n  - name: l\n    address: 127.0.0.1:8080\n    routes:\n      - backends: [{ cluster: c }]\nclusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:9000 }]\n";

fn with_cluster_extra(extra: &str) -> String {
    let indented: String = extra.lines().map(|l| format!("    {l}\n")).collect();
    format!("{BASE}{indented}")
}

/// Fails unless `e` contains each of `parts`.
#[track_caller]
fn says(e: &str, parts: &[&str]) {
    for part in parts {
        assert!(e.contains(part), "no {part:?} in:\n{e}");
    }
}

fn errors(yaml: &str) -> String {
    match parse(yaml, "t.yaml") {
        Ok(_) => panic!("accepted, expected errors:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_filled_in() {
    let config = parse(
        &with_cluster_extra("health_check: { http: { path: /healthz } }\noutlier_detection: {}"),
        "t.yaml",
    )
    .expect("valid");
    let cluster = &config.clusters[0];
    assert!(cluster.fail_open, "fail_open defaults to true");
    let check = cluster.health_check.as_ref().expect("health_check");
    assert_eq!(check.interval.to_string(), "5s");
    assert_eq!(check.timeout.to_string(), "1s");
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
    let http = check.http.as_ref().expect("http");
    assert_eq!(
        http.expected_statuses,
        vec![StatusRange {
            start: 200,
            end: 399
        }]
    );
    let outlier = cluster
        .outlier_detection
        .as_ref()
        .expect("outlier_detection");
    assert_eq!(
        (outlier.consecutive_5xx, outlier.consecutive_gateway_errors),
        (5, 5)
    );
    assert_eq!(outlier.interval.to_string(), "10s");
    assert_eq!(outlier.base_ejection_time.to_string(), "30s");
    assert_eq!(outlier.max_ejection_time.to_string(), "5m");
    assert_eq!(outlier.max_ejection_percent, 10);
    assert!((outlier.success_rate_stdev_factor - 1.9).abs() < 1e-9);
    assert_eq!(
        (
            outlier.success_rate_minimum_hosts,
            outlier.success_rate_request_volume
        ),
        (5, 100)
    );
}

#[test]
fn statuses_are_written_one_by_one_or_as_ranges() {
    let config = parse(
        &with_cluster_extra(
            "health_check:\n  http: { path: /ready, expected_statuses: [200, \"204-206\", 301] }",
        ),
        "t.yaml",
    )
    .expect("valid");
    let http = config.clusters[0]
        .health_check
        .as_ref()
        .and_then(|c| c.http.as_ref())
        .expect("http check");
    let ranges: Vec<String> = http
        .expected_statuses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["200", "204-206", "301"]);
    assert!(http.expected_statuses[1].contains(205));
    assert!(!http.expected_statuses[1].contains(207));
    // Written back (as `/config_dump` does), each keeps its form.
    let yaml = serde_yaml::to_string(&config).expect("serializes");
    assert!(
        yaml.contains("- 200") && yaml.contains("- 204-206"),
        "{yaml}"
    );

    let e = errors(&with_cluster_extra(
        "health_check: { http: { path: /x, expected_statuses: [\"2xx\"] } }",
    ));
    says(&e, &["\"2xx\" is not a status"]);
}

#[test]
fn a_health_check_is_exactly_one_kind_with_sane_values() {
    let e = errors(&with_cluster_extra(
        "health_check: { interval: 0s, timeout: 0s, healthy_threshold: 0 }",
    ));
    says(
        &e,
        &[
            "clusters[0].health_check: say how to check",
            "health_check.interval: 0s: give a time above 0",
            "health_check.timeout: 0s",
            "health_check.healthy_threshold: 0: give 1 or more",
        ],
    );

    let e = errors(&with_cluster_extra(
        "health_check: { tcp: {}, http: { path: healthz, expected_statuses: [700, \"300-200\"], host: \"a b\" } }",
    ));
    says(
        &e,
        &[
            "health_check.tcp: a health check is exactly one",
            "http.path: \"healthz\" is not a request path",
            "expected_statuses[0]: 700: HTTP statuses are 100 to 599",
            "expected_statuses[1]: 300-200: a range goes from low to high",
            "http.host: \"a b\" is not a host",
        ],
    );
}

#[test]
fn grpc_checks_need_http2() {
    let e = errors(&with_cluster_extra("health_check: { grpc: {} }"));
    says(&e, &["health_check.grpc: gRPC health checks speak HTTP/2"]);
    let ok = with_cluster_extra("protocol: http2\nhealth_check: { grpc: { service: echo.Echo } }");
    parse(&ok, "t.yaml").expect("valid");
}

#[test]
fn outlier_detection_refuses_what_could_never_eject() {
    let e = errors(&with_cluster_extra(
        "outlier_detection: { base_ejection_time: 1m, max_ejection_time: 30s, max_ejection_percent: 101 }",
    ));
    says(
        &e,
        &[
            "max_ejection_time: 30s is shorter than `base_ejection_time` (1m)",
            "max_ejection_percent: 101: allowed 0 to 100",
        ],
    );

    let e = errors(&with_cluster_extra(
        "outlier_detection: { consecutive_5xx: 0, consecutive_gateway_errors: 0, success_rate_stdev_factor: 0 }",
    ));
    says(&e, &["can never eject an endpoint"]);
    let e = errors(&with_cluster_extra(
        "outlier_detection: { interval: 0s, success_rate_stdev_factor: -1 }",
    ));
    says(
        &e,
        &[
            "outlier_detection.interval: 0s",
            "success_rate_stdev_factor: -1: give a number",
        ],
    );
}
