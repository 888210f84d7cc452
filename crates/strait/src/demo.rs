//! `strait demo`: a gateway in front of sample apps, all on loopback, with live traffic and a
//! line of figures per second. Everything a user needs to see Strait route, split, rewrite,
//! redirect and answer, without writing a config.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// The sample apps: name and how many instances.
const APPS: &[(&str, usize)] = &[("users-v1", 2), ("users-v2", 1), ("orders", 2)];

/// The gateway config the demo runs; `{port}`, `{admin}` and `{<app>-<i>}` are filled in.
const DEMO_CONFIG: &str = r#"# The config `strait demo` runs. Copy it to start your own gateway.
admin:
  address: 127.0.0.1:{admin}
workers: 1
listeners:
  - name: demo
    address: 127.0.0.1:{port}
    proxy_headers:
      via: strait
    routes:
      - name: health
        match: { path: { exact: /healthz } }
        direct_response: { status: 200, body: "ok\n" }
      - name: old-users
        match: { path: { prefix: /old/users } }
        redirect: { path: /users, status: 308 }
      - name: users
        match: { path: { prefix: /users } }
        backends:               # a canary: 90 % to v1, 10 % to v2
          - { cluster: users-v1, weight: 90 }
          - { cluster: users-v2, weight: 10 }
        response_headers:
          set: { x-demo: users }
      - name: orders
        match: { path: { prefix: /api/orders } }
        rewrite: { path_prefix: /orders }
        backends: [{ cluster: orders }]
        timeout: 2s
clusters:
  - name: users-v1
    load_balancer: round_robin
    endpoints: [{ address: "{users-v1-0}" }, { address: "{users-v1-1}" }]
  - name: users-v2
    endpoints: [{ address: "{users-v2-0}" }]
  - name: orders
    load_balancer: least_request
    endpoints: [{ address: "{orders-0}" }, { address: "{orders-1}" }]
"#;

/// The requests the traffic generator sends, round and round.
const PATHS: &[&str] = &[
    "/users/42",
    "/users/7",
    "/api/orders/1",
    "/healthz",
    "/old/users/3",
    "/nowhere",
];

/// Runs the demo until Ctrl-C, SIGTERM or `duration`.
pub fn run(duration: Option<Duration>, port: u16, admin_port: u16) -> ExitCode {
    let apps = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(apps) = apps else {
        eprintln!("strait demo: cannot start a runtime");
        return ExitCode::FAILURE;
    };
    let mut config = DEMO_CONFIG
        .replace("{port}", &port.to_string())
        .replace("{admin}", &admin_port.to_string());
    for (app, instances) in APPS {
        for i in 0..*instances {
            let addr = match apps.block_on(start_app(app)) {
                Ok(addr) => addr,
                Err(e) => {
                    eprintln!("strait demo: cannot start sample app {app}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            config = config.replace(&format!("{{{app}-{i}}}"), &addr.to_string());
        }
    }
    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    let path = dir.join("gateway.yaml");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &config)) {
        eprintln!("strait demo: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }

    let mut options = strait_proxy::ProxyOptions::new(&path);
    options.release_memory = Some(crate::allocator::release_memory);
    let proxy = std::thread::spawn(move || strait_proxy::run(options));
    let gateway = SocketAddr::from(([127, 0, 0, 1], port));
    println!(
        "Strait demo: a gateway on http://{gateway} in front of {} sample apps",
        APPS.len()
    );
    println!(
        "  config:  {} (edit it: the gateway reloads on change)",
        path.display()
    );
    println!("  admin:   http://127.0.0.1:{admin_port}/clusters  /config_dump  /ready");
    println!("  try:     curl -i http://{gateway}/users/1   (90/10 canary v1/v2)");
    println!("           curl -i http://{gateway}/old/users/1   (308 redirect)");
    println!("           curl -i http://{gateway}/api/orders/9  (prefix rewrite to /orders/9)");
    println!(
        "Traffic: {} client loops over {:?}; Ctrl-C stops.\n",
        CLIENTS, PATHS
    );

    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let outcome = apps.block_on(async {
        if !wait_ready(admin_port, &proxy).await {
            return Err("the gateway did not become ready");
        }
        for client in 0..CLIENTS {
            tokio::spawn(client_loop(gateway, client, Arc::clone(&stats)));
        }
        // SIGINT (Ctrl-C) and SIGTERM (a supervisor, `timeout`) stop the traffic. Otherwise the
        // gateway alone would stop on them (it drains on both) while the clients went on and
        // counted its closed port as unexpected answers. Streams made once: a `ctrl_c()` made
        // anew each second would miss a signal that came between two of them.
        let mut interrupt =
            signal(SignalKind::interrupt()).map_err(|_| "cannot watch for SIGINT")?;
        let mut terminate =
            signal(SignalKind::terminate()).map_err(|_| "cannot watch for SIGTERM")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => stats.print_second(started.elapsed()),
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
            }
            if duration.is_some_and(|d| started.elapsed() >= d) {
                return Ok(());
            }
            if proxy.is_finished() {
                return Err("the gateway stopped");
            }
        }
    });
    stats.print_total(started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(()) if stats.ok() => ExitCode::SUCCESS,
        Ok(()) => {
            eprintln!("strait demo: some requests got an unexpected answer");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strait demo: {e}");
            // A gateway that stopped says why (a port in use, most often: see --port).
            if proxy.is_finished() {
                if let Ok(Err(why)) = proxy.join() {
                    eprintln!(
                        "strait demo: {why} (choose other ports with --port and --admin-port)"
                    );
                }
            }
            ExitCode::FAILURE
        }
    }
}

const CLIENTS: usize = 4;

async fn wait_ready(
    admin_port: u16,
    proxy: &std::thread::JoinHandle<Result<(), strait_proxy::StartError>>,
) -> bool {
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    for _ in 0..100 {
        if proxy.is_finished() {
            return false;
        }
        if let Ok(Ok((status, _))) =
            tokio::time::timeout(Duration::from_secs(1), get(admin, "/ready")).await
        {
            if status == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A sample app: answers every request with its name and what it saw.
async fn start_app(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let body =
                        format!("{{\"app\":\"{name}\",\"path\":\"{}\"}}\n", req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert("x-upstream", hyper::header::HeaderValue::from_static(name));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// One keep-alive client sending the demo's requests in turn.
async fn client_loop(gateway: SocketAddr, client: usize, stats: Arc<Stats>) {
    let mut i = client;
    loop {
        let Ok(stream) = TcpStream::connect(gateway).await else {
            stats.record(None, "connect-error", Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        loop {
            let path = PATHS[i % PATHS.len()];
            i += 1;
            let Ok(req) = Request::get(path)
                .header("host", "demo.local")
                .body(Empty::<Bytes>::new())
            else {
                return;
            };
            if sender.ready().await.is_err() {
                break;
            }
            let started = Instant::now();
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let upstream = resp
                        .headers()
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(match status {
                            200 => "direct-response",
                            308 => "redirect",
                            404 => "no-route",
                            _ => "error",
                        })
                        .to_owned();
                    let _ = resp.into_body().collect().await;
                    stats.record(Some(status), &upstream, started.elapsed());
                }
                Err(_) => {
                    stats.record(None, "send-error", started.elapsed());
                    break;
                }
            }
            // A steady, modest load: the point is to watch, not to benchmark.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn get(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// What the traffic generator saw, per second and in total.
#[derive(Debug, Default)]
struct Stats {
    total: AtomicU64,
    unexpected: AtomicU64,
    window: Mutex<Window>,
    overall: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug, Default)]
struct Window {
    by_target: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

impl Stats {
    fn record(&self, status: Option<u16>, target: &str, latency: Duration) {
        self.total.fetch_add(1, Ordering::Relaxed);
        // The demo's routes answer 200, 308 or (for /nowhere) 404; anything else is a fault.
        if !matches!(status, Some(200 | 308 | 404)) {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut w) = self.window.lock() {
            *w.by_target.entry(target.to_owned()).or_default() += 1;
            w.latencies_us.push(latency.as_micros() as u64);
        }
        if let Ok(mut o) = self.overall.lock() {
            *o.entry(target.to_owned()).or_default() += 1;
        }
    }

    fn print_second(&self, elapsed: Duration) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let window = std::mem::take(&mut *w);
        drop(w);
        let mut lat = window.latencies_us;
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let spread: Vec<String> = window
            .by_target
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "[{:>4}s] {:>5} req/s  p50 {:>5}µs  p99 {:>6}µs  {}",
            elapsed.as_secs(),
            lat.len(),
            pct(0.50),
            pct(0.99),
            spread.join(" ")
        );
    }

    fn print_total(&self, elapsed: Duration) {
        let total = self.total.load(Ordering::Relaxed);
        println!(
            "\n{total} requests in {:.1}s, {} unexpected answers",
            elapsed.as_secs_f64(),
            self.unexpected.load(Ordering::Relaxed)
        );
        if let Ok(o) = self.overall.lock() {
            for (target, n) in o.iter() {
                println!("  {target:<16} {n}");
            }
        }
    }

    fn ok(&self) -> bool {
        self.total.load(Ordering::Relaxed) > 0 && self.unexpected.load(Ordering::Relaxed) == 0
    }
}
