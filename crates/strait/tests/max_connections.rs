//! `max_connections` (and `max_connections_per_client`): beyond the limit a new connection is
//! closed at once (and counted), while the open ones keep working; when one closes, a new one
//! is served again.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_cleanly_and_counted() {
    let up = Upstream::echo("limited").await;
    let proxy = Proxy::start(&one_route(up.addr, "max_connections: 3", "", "")).await;
    let mut open = served_connections(&proxy, 3).await;
    let mut extra = Conn::open(proxy.listen, Proto::H1)
        .await
        .expect("the kernel accepts the TCP connection");
    let refused = match tokio::time::timeout(
        Duration::from_secs(5),
        extra.fetch(simple("GET", "l.example", "/")),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => {
            // Seen once in CI and never since: say what the proxy counted, for next time.
            let metrics = proxy.admin_get("/metrics").await.text();
            let counts: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("strait_tcp_connections") || l.contains("overflow"))
                .collect();
            panic!("the fourth connection was neither refused nor served within 5 s: {counts:#?}");
        }
    };
    assert!(
        refused.is_err(),
        "the fourth connection was served: {:?}",
        refused.map(|r| r.status)
    );
    for conn in open.iter_mut() {
        let resp = within(
            Duration::from_secs(5),
            "again",
            conn.fetch(simple("GET", "l.example", "/")),
        )
        .await
        .expect("open connections keep working");
        assert_eq!(resp.status, 200);
    }
    drop(open.pop());
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(mut conn) = Conn::open(proxy.listen, Proto::H1).await else {
            continue;
        };
        if let Ok(resp) = within(
            Duration::from_secs(5),
            "after",
            conn.fetch(simple("GET", "l.example", "/")),
        )
        .await
        {
            assert_eq!(resp.status, 200);
            served = true;
            break;
        }
    }
    assert!(served, "a slot freed by a closed connection is used again");
    let metrics = proxy.admin_get("/metrics").await.text();
    let overflow = metrics
        .lines()
        .find(|l| l.starts_with("strait_listener_connections_overflow_total{listener=\"main\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("overflow counter present");
    assert!(overflow >= 1, "overflow {overflow}");
}

/// `connection_rate_limit`: new connections beyond the rate are closed at accept and counted;
/// over a couple of seconds the listener serves the burst plus the rate, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_over_the_rate_are_refused_and_the_rate_holds() {
    let up = Upstream::echo("rated").await;
    let proxy = Proxy::start(&one_route(
        up.addr,
        "connection_rate_limit: { connections_per_second: 10, burst: 5 }",
        "",
        "",
    ))
    .await;
    let started = std::time::Instant::now();
    let window = Duration::from_secs(2);
    let (mut served, mut refused) = (0u32, 0u32);
    while started.elapsed() < window {
        // Paced like a busy client rather than a SYN flood.
        tokio::time::sleep(Duration::from_millis(10)).await;
        match one_request(proxy.listen).await {
            Some(true) => served += 1,
            Some(false) => refused += 1,
            None => panic!("a connection got neither an answer nor a close within 3 s"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, then 10 per second.
    let expected = 5.0 + 10.0 * elapsed;
    assert!(
        (f64::from(served) - expected).abs() <= 3.0,
        "{served} served in {elapsed:.2} s, expected about {expected:.0}"
    );
    assert!(refused > 0, "nothing was refused");
    let metrics = proxy.admin_get("/metrics").await.text();
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("strait_listener_connections_rate_limited_total{listener=\"main\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        .expect("rate-limited counter present");
    assert!(
        counted >= refused.saturating_sub(1),
        "{counted} counted, {refused} refused"
    );
}

/// `max_connections_per_client`: a client address with its share open has a new connection
/// closed at accept (and counted), while another address is served; a closed connection gives
/// its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_beyond_its_share_is_refused_while_others_are_served() {
    let up = Upstream::echo("shared").await;
    let proxy = Proxy::start(&one_route(up.addr, "max_connections_per_client: 2", "", "")).await;
    let mut open = served_connections(&proxy, 2).await;
    let local = std::net::Ipv4Addr::LOCALHOST.into();
    let other = std::net::Ipv4Addr::new(127, 0, 0, 2).into();
    assert_eq!(one_request_from(proxy.listen, local).await, Some(false));
    assert_eq!(one_request_from(proxy.listen, other).await, Some(true));
    drop(open.pop());
    assert!(
        eventually(Duration::from_secs(3), || async {
            one_request_from(proxy.listen, local).await == Some(true)
        })
        .await,
        "a closed connection did not give its share back"
    );
    let overflow = proxy
        .metric(
            "strait_listener_connections_per_client_overflow_total",
            &[("listener", "main")],
        )
        .await;
    assert!(overflow >= Some(1.0), "{overflow:?}");
}

/// `n` HTTP/1 connections to `proxy`, each served a request and kept open.
async fn served_connections(proxy: &Proxy, n: usize) -> Vec<Conn> {
    let mut open = Vec::new();
    for _ in 0..n {
        let mut conn = Conn::open(proxy.listen, Proto::H1).await.expect("connect");
        let resp = within(
            Duration::from_secs(5),
            "request",
            conn.fetch(simple("GET", "l.example", "/")),
        )
        .await
        .expect("served within the limit");
        assert_eq!(resp.status, 200);
        open.push(conn);
    }
    open
}

/// One `Connection: close` request on a new connection: `Some(true)` when answered 200,
/// `Some(false)` when closed without an answer, `None` when nothing happened within 3 s.
async fn one_request(addr: std::net::SocketAddr) -> Option<bool> {
    one_request_from(addr, std::net::Ipv4Addr::UNSPECIFIED.into()).await
}

/// [`one_request`] from the address `from` (any: the system's choice).
async fn one_request_from(addr: std::net::SocketAddr, from: std::net::IpAddr) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            return false;
        };
        if socket.bind((from, 0).into()).is_err() {
            return false;
        }
        let Ok(mut tcp) = socket.connect(addr).await else {
            return false;
        };
        let request = b"GET / HTTP/1.1\r\nhost: r.example\r\nconnection: close\r\n\r\n";
        if tcp.write_all(request).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer.starts_with(b"HTTP/1.1 200")
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
}
