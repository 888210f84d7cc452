//! `strait`: one binary, several roles. `proxy` runs the data plane from a config file,
//! `validate` checks a config, `demo` runs a gateway with sample apps and live traffic.

mod allocator;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "strait",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STRAIT_COMMIT"), ")"),
    about = "Service-mesh sidecar, API gateway and ingress in one binary"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `strait_proxy=debug`). Default: the
    /// `RUST_LOG` environment variable, else `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy from a YAML config file (reloaded on SIGHUP and when the file changes).
    Proxy {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads (default: the file's `workers`, else one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// How often to check the config file for changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        watch_interval_ms: u64,
    },
    /// Check config files; print every error with file:line:column and field. Exit 1 on error.
    Validate {
        /// Check the configs alone, without loading the certificates, keys and JWKS files they
        /// name (for a config checked away from the machine that has them).
        #[arg(long)]
        no_files: bool,
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a gateway with sample upstream apps and live traffic on loopback.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Port of the demo gateway's listener on 127.0.0.1.
        #[arg(long, default_value_t = 18080)]
        port: u16,
        /// Port of the demo gateway's admin server on 127.0.0.1.
        #[arg(long, default_value_t = 19901)]
        admin_port: u16,
    },
}

/// mimalloc rather than glibc's allocator: a proxied request makes and frees a few dozen small
/// blocks, and glibc's paths (its per-thread cache holds seven blocks a size; beyond, and for
/// the 128-byte-aligned tokio task of every HTTP/2 stream, `_int_malloc` and `_int_free`)
/// cost several times mimalloc's. Called through [`allocator::Allocator`], which skips
/// mimalloc's aligned entry points when they are not needed.
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    match cli.command {
        Command::Proxy {
            config,
            workers,
            watch_interval_ms,
        } => {
            let mut options = strait_proxy::ProxyOptions::new(config);
            options.workers = workers;
            options.watch_interval = Duration::from_millis(watch_interval_ms.max(10));
            options.release_memory = Some(allocator::release_memory);
            match strait_proxy::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { no_files, files } => validate(&files, !no_files),
        Command::Demo {
            duration,
            port,
            admin_port,
        } => demo::run(duration.map(Duration::from_secs), port, admin_port),
    }
}

fn validate(files: &[PathBuf], load_files: bool) -> ExitCode {
    let mut failed = false;
    for file in files {
        match strait_config::load(file) {
            Ok(config) => {
                // The files the config names, loaded as the proxy loads them at start.
                let unloadable = if load_files {
                    strait_proxy::check::files(&config)
                } else {
                    Vec::new()
                };
                if !unloadable.is_empty() {
                    failed = true;
                    for e in &unloadable {
                        eprintln!("{}: {e}", file.display());
                    }
                    eprintln!("{}: {} error(s)", file.display(), unloadable.len());
                    continue;
                }
                let routes: usize = config.listeners.iter().map(|l| l.routes.len()).sum();
                println!(
                    "{}: ok ({} listeners, {routes} routes, {} clusters)",
                    file.display(),
                    config.listeners.len(),
                    config.clusters.len()
                );
            }
            Err(errors) => {
                failed = true;
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", file.display(), errors.errors.len());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
