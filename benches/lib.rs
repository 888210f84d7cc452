//! Benchmarks live in `benches/`; the harness's helper binaries in `harness/`. What those
//! binaries share is here.

use std::net::SocketAddr;

/// The two addresses of a proxy binary's command line, `LISTEN_ADDR UPSTREAM_ADDR`, besides
/// the `flags` it also accepts (the caller reads those); on anything else, prints the usage
/// (or what is wrong) and exits with status 2.
pub fn listen_and_upstream(program: &str, flags: &[&str]) -> (SocketAddr, SocketAddr) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !flags.contains(&a.as_str()))
        .collect();
    let [listen, upstream] = args.as_slice() else {
        let flags: String = flags.iter().map(|f| format!(" [{f}]")).collect();
        eprintln!("usage: {program} LISTEN_ADDR UPSTREAM_ADDR{flags}");
        std::process::exit(2);
    };
    match (listen.parse(), upstream.parse()) {
        (Ok(listen), Ok(upstream)) => (listen, upstream),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{program}: bad address: {e}");
            std::process::exit(2);
        }
    }
}
