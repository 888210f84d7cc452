//! The standard `process_*` metrics, read from `/proc/self` at scrape time (Linux).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// `/proc` reports CPU times in USER_HZ ticks, fixed at 100 by the kernel ABI on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self` says, or `None` for what it did not.
#[derive(Debug, Default, PartialEq)]
struct ProcessFacts {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    threads: Option<i64>,
    start_time: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
}

fn read_facts() -> ProcessFacts {
    let mut facts = ProcessFacts::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state), so field N is f[N - 3].
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (field(14), field(15)) {
            facts.cpu_seconds = Some((u + s) as f64 / TICKS_PER_SECOND);
        }
        facts.threads = field(20).map(|v| v as i64);
        facts.virtual_bytes = field(23).map(|v| v as i64);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        });
        if let (Some(boot), Some(start)) = (boot, field(22)) {
            facts.start_time = Some((boot as f64 + start as f64 / TICKS_PER_SECOND) as i64);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        facts.resident_bytes = status.lines().find_map(|l| {
            let kb = l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim();
            kb.parse::<i64>().ok().map(|kb| kb * 1024)
        });
    }
    facts.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as i64);
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        facts.max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok());
    }
    facts
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let facts = read_facts();
        if let Some(v) = facts.cpu_seconds {
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                facts.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                facts.virtual_bytes,
            ),
            ("process_threads", "Number of OS threads.", facts.threads),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch.",
                facts.start_time,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                facts.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                facts.max_fds,
            ),
        ] {
            if let Some(v) = value {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let f = read_facts();
        assert!(f.resident_bytes.is_some_and(|b| b > 0));
        assert!(f.threads.is_some_and(|t| t >= 1));
        assert!(f.open_fds.is_some_and(|n| n >= 3));
        assert!(f.max_fds.is_some_and(|n| n >= 64));
        assert!(f.start_time.is_some_and(|t| t > 1_600_000_000));
        assert!(f.cpu_seconds.is_some());
    }
}
