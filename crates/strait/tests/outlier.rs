//! Outlier detection: an endpoint that keeps failing is ejected (traffic goes to the others)
//! and comes back after its ejection time; connect failures count as gateway errors; success
//! rates eject the odd one out; `max_ejection_percent` holds; ejections survive a reload.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(10);

/// Sends `n` GETs one after the other on one connection; counts answers by
/// (`x-upstream`, or `proxy` for the proxy's own, and status).
async fn hit(proxy: &Proxy, n: usize) -> BTreeMap<(String, u16), usize> {
    let mut conn = proxy.connect(Proto::H1).await;
    let mut out = BTreeMap::new();
    for i in 0..n {
        let resp = conn
            .fetch(simple("GET", "o.example", "/"))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let from = resp
            .header("x-upstream")
            .unwrap_or_else(|| "proxy".to_owned());
        *out.entry((from, resp.status.as_u16())).or_default() += 1;
    }
    out
}

async fn wait_ejected(proxy: &Proxy, addr: SocketAddr, ejected: bool) -> serde_json::Value {
    let what = if ejected { "ejected" } else { "back in" };
    proxy
        .wait_endpoint("pool", addr, what, LIMIT, |e| {
            e["outlier"]["ejected"] == ejected
        })
        .await;
    proxy.endpoint_state("pool", addr).await
}

/// `strait_upstream_ejections_total` of `addr` for `reason`.
async fn ejections(proxy: &Proxy, addr: SocketAddr, reason: &str) -> Option<f64> {
    let endpoint = addr.to_string();
    let labels = [("endpoint", endpoint.as_str()), ("reason", reason)];
    proxy
        .metric("strait_upstream_ejections_total", &labels)
        .await
}

/// Answers from `from` with `status` among `seen`.
fn answers(seen: &BTreeMap<(String, u16), usize>, from: &str, status: u16) -> usize {
    seen.get(&(from.to_owned(), status)).copied().unwrap_or(0)
}

async fn ejected_count(proxy: &Proxy) -> usize {
    let clusters = proxy.admin_get("/clusters").await.json();
    clusters[0]["endpoints"].as_array().map_or(0, |eps| {
        eps.iter()
            .filter(|e| e["outlier"]["ejected"] == true)
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_until_its_time_is_up() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    a.set_status(Some(500));
    let proxy = Proxy::start(&pool(
        &[a.addr, b.addr],
        "outlier_detection:\n  consecutive_5xx: 3\n  base_ejection_time: 400ms\n  max_ejection_percent: 50",
    ))
    .await;
    let seen = hit(&proxy, 12).await;
    assert!(answers(&seen, "a", 500) >= 3, "{seen:?}");
    let state = wait_ejected(&proxy, a.addr, true).await;
    assert_eq!(state["healthy"], false, "{state}");
    assert_eq!(state["outlier"]["times_ejected"], 1, "{state}");
    let remaining = state["outlier"]["ejection_remaining_ms"].as_u64();
    assert!(remaining.is_some_and(|ms| ms <= 400), "{state}");

    // While it is out, everything goes to b.
    let seen = hit(&proxy, 10).await;
    assert_eq!(answers(&seen, "b", 200), 10, "{seen:?}");
    let a_label = a.addr.to_string();
    assert_eq!(
        ejections(&proxy, a.addr, "consecutive_5xx").await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric(
                "strait_upstream_endpoint_ejected",
                &[("endpoint", &a_label)]
            )
            .await,
        Some(1.0)
    );

    // It comes back on its own, with a clean slate, and serves again.
    a.set_status(None);
    wait_ejected(&proxy, a.addr, false).await;
    let seen = hit(&proxy, 10).await;
    assert!(answers(&seen, "a", 200) > 0, "{seen:?}");

    // Failing again, it goes again, for twice as long.
    a.set_status(Some(503));
    hit(&proxy, 12).await;
    let state = wait_ejected(&proxy, a.addr, true).await;
    assert_eq!(state["outlier"]["times_ejected"], 2, "{state}");
    let remaining = state["outlier"]["ejection_remaining_ms"].as_u64();
    assert!(remaining.is_some_and(|ms| ms <= 800), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_gateway_errors() {
    let a = Upstream::echo("a").await;
    let nobody = free_addr();
    let proxy = Proxy::start(&pool(
        &[a.addr, nobody],
        "outlier_detection:\n  consecutive_5xx: 0\n  consecutive_gateway_errors: 2\n  base_ejection_time: 30s",
    ))
    .await;
    let seen = hit(&proxy, 8).await;
    assert!(answers(&seen, "proxy", 503) >= 2, "{seen:?}");
    wait_ejected(&proxy, nobody, true).await;
    let seen = hit(&proxy, 20).await;
    assert_eq!(answers(&seen, "a", 200), 20, "{seen:?}");
    assert_eq!(
        ejections(&proxy, nobody, "consecutive_gateway_errors").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_success_rate_ejects_the_odd_one_out() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    let c = Upstream::echo("c").await;
    c.set_status(Some(500));
    let proxy = Proxy::start(&pool(
        &[a.addr, b.addr, c.addr],
        "outlier_detection:\n  consecutive_5xx: 0\n  consecutive_gateway_errors: 0\n  interval: 300ms\n  \
         success_rate_stdev_factor: 1\n  success_rate_minimum_hosts: 3\n  success_rate_request_volume: 5\n  \
         max_ejection_percent: 50",
    ))
    .await;
    // Consecutive failures are off: only the comparison of rates can eject c.
    let traffic = async {
        for _ in 0..10 {
            hit(&proxy, 30).await;
            if ejected_count(&proxy).await > 0 {
                break;
            }
        }
    };
    within(LIMIT, "traffic until an ejection", traffic).await;
    wait_ejected(&proxy, c.addr, true).await;
    assert_eq!(ejected_count(&proxy).await, 1);
    assert_eq!(ejections(&proxy, c.addr, "success_rate").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_holds_when_everything_fails() {
    let ups = [
        Upstream::echo("a").await,
        Upstream::echo("b").await,
        Upstream::echo("c").await,
        Upstream::echo("d").await,
    ];
    for u in &ups {
        u.set_status(Some(502));
    }
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let proxy = Proxy::start(&pool(
        &addrs,
        "outlier_detection:\n  consecutive_5xx: 2\n  consecutive_gateway_errors: 2\n  base_ejection_time: 30s\n  \
         max_ejection_percent: 25",
    ))
    .await;
    for _ in 0..4 {
        hit(&proxy, 20).await;
        assert!(ejected_count(&proxy).await <= 1, "25 % of 4 is one");
    }
    assert_eq!(ejected_count(&proxy).await, 1);
    let refused = proxy
        .metric(
            "strait_upstream_ejections_overflow_total",
            &[("cluster", "pool")],
        )
        .await
        .unwrap_or_default();
    assert!(refused > 0.0, "refused ejections are counted: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejections_survive_a_reload_and_end_when_detection_is_removed() {
    let a = Upstream::echo("a").await;
    let b = Upstream::echo("b").await;
    a.set_status(Some(500));
    let detection = "outlier_detection: { consecutive_5xx: 2, base_ejection_time: 1m, max_ejection_percent: 50 }";
    let proxy = Proxy::start(&pool(&[a.addr, b.addr], detection)).await;
    hit(&proxy, 8).await;
    wait_ejected(&proxy, a.addr, true).await;

    // A change to the cluster recompiles it; the ejection stays.
    let version = proxy.config_version().await;
    proxy.write_config(&pool(
        &[a.addr, b.addr],
        &format!("{detection}\nconnect_timeout: 2s"),
    ));
    let version = proxy
        .wait_version_above(version, LIMIT)
        .await
        .expect("reload applied");
    let state = proxy.endpoint_state("pool", a.addr).await;
    assert_eq!(state["outlier"]["ejected"], true, "{state}");
    let seen = hit(&proxy, 10).await;
    assert_eq!(answers(&seen, "b", 200), 10, "{seen:?}");

    // Without outlier detection nothing stays ejected.
    proxy.write_config(&pool(&[a.addr, b.addr], "connect_timeout: 2s"));
    proxy
        .wait_version_above(version, LIMIT)
        .await
        .expect("reload applied");
    proxy
        .wait_endpoint("pool", a.addr, "usable", LIMIT, |e| e["healthy"] == true)
        .await;
    let seen = hit(&proxy, 10).await;
    assert!(answers(&seen, "a", 500) > 0, "{seen:?}");
}
