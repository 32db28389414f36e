//! The process's own figures (`process_*`, the names every Prometheus client library uses),
//! read from `/proc/self` at scrape time. Off Linux, or when `/proc` is not mounted, they are
//! left out.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// `/proc` reports CPU times in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) resident_bytes: u64,
    pub(crate) virtual_bytes: u64,
    pub(crate) cpu_seconds: f64,
    pub(crate) open_fds: u64,
    pub(crate) max_fds: Option<u64>,
    pub(crate) threads: u64,
    /// Unix time the process started.
    pub(crate) start_time: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` when it cannot be read.
    pub(crate) fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let mut stats = parse_stat(&stat)?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        stats.resident_bytes = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        stats.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| max_open_files(&l));
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
        stats.start_time = boot.zip(stats.start_time).map(|(boot, ticks)| boot + ticks);
        Some(stats)
    }
}

/// Fields of `/proc/self/stat` after the `(comm)`, which may hold spaces: utime (14), stime
/// (15), num_threads (20), starttime (22, in ticks since boot; kept in `start_time` as
/// seconds since boot until the boot time is added), vsize (23).
fn parse_stat(stat: &str) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / USER_HZ,
        threads: field(20)?,
        start_time: field(22).map(|t| t as f64 / USER_HZ),
        virtual_bytes: field(23)?,
        ..ProcessStats::default()
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn boot_time(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}

#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(p) = ProcessStats::read() else { return Ok(()) };
        let e = &mut encoder;
        super::counter_f64(
            e,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            p.cpu_seconds,
        )?;
        super::gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes as f64,
        )?;
        super::gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes as f64,
        )?;
        super::gauge(e, "process_open_fds", "Open file descriptors", p.open_fds as f64)?;
        if let Some(max) = p.max_fds {
            super::gauge(e, "process_max_fds", "Limit of open file descriptors", max as f64)?;
        }
        super::gauge(e, "process_threads", "OS threads of the process", p.threads as f64)?;
        if let Some(start) = p.start_time {
            super::gauge(e, "process_start_time_seconds", "Unix time the process started", start)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat =
            "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 2000 \
                    18446744073709551615";
        let p = parse_stat(stat).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time, Some(10.0));
        assert_eq!(p.virtual_bytes, 123456789);
        assert_eq!(status_kib("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS:"), Some(2048));
        assert_eq!(
            max_open_files("Max open files            1024                 4096                 files\n"),
            Some(1024)
        );
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000.0));
    }

    #[test]
    fn this_process_can_be_read() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(p.resident_bytes > 0 && p.open_fds > 0 && p.threads > 0, "{p:?}");
    }
}
