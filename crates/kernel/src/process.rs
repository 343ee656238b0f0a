//! This process's own resource figures, as every Prometheus exporter reports them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, …): read from
//! `/proc/self/stat`, `/proc/self/fd`, `/proc/stat` and getrlimit.
//!
//! Written here rather than taken from the `procfs` crate: six numbers from two stable
//! kernel files do not need its dependency tree. The one trap, a command name holding
//! spaces or `)`, is handled by reading the fields after the *last* `)`.

use std::io;

/// What `read` finds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_unix: f64,
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: u64,
}

/// The fields of `/proc/self/stat` we use, before unit conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Reads the figures of the calling process.
pub fn read() -> io::Result<ProcessStats> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat")?)
        .ok_or_else(|| invalid("/proc/self/stat: unexpected format"))?;
    let boot = parse_btime(&std::fs::read_to_string("/proc/stat")?)
        .ok_or_else(|| invalid("/proc/stat: no btime line"))?;
    use nix::unistd::{sysconf, SysconfVar};
    let ticks = match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    };
    let page = match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u64,
        _ => 4096,
    };
    // Counting entries opens one more descriptor (the directory) while it counts.
    let open_fds = std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1) as u64;
    let (max_fds, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(io::Error::from)?;
    Ok(ProcessStats {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks,
        resident_bytes: stat.rss_pages * page,
        virtual_bytes: stat.vsize_bytes,
        start_time_unix: boot as f64 + stat.start_ticks as f64 / ticks,
        open_fds,
        max_fds,
    })
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// proc(5): after `pid (comm) `, state is field 3; utime 14, stime 15, starttime 22,
/// vsize 23, rss 24 (1-based over the whole line).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time, in seconds since the epoch, from `/proc/stat`'s `btime` line.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let line = "4242 (sym route) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 123456 10485760 512 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks: 123456,
                vsize_bytes: 10485760,
                rss_pages: 512,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn btime_is_read_from_its_line() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1796000000\nprocesses 9\n"),
            Some(1_796_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_sensibly() {
        let s = read().expect("read /proc/self");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(s.start_time_unix > now - 86400.0 * 365.0 && s.start_time_unix <= now + 1.0);
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        // stdin, stdout, stderr at least
        assert!(s.open_fds >= 3 && s.open_fds <= s.max_fds, "{s:?}");
        assert!(s.cpu_seconds >= 0.0);
    }
}
