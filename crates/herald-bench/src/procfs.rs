//! CPU time and memory of a process, from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux only; elsewhere the readings are `None`).

use serde::Serialize;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`: the
/// kernel's `USER_HZ`, which is 100 on every Linux architecture Rust targets.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_secs: f64,
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: parse_cpu_secs(&stat)?,
        rss_kib: parse_status_kib(&status, "VmRSS:")?,
        peak_rss_kib: parse_status_kib(&status, "VmHWM:")?,
    })
}

/// `utime + stime` (fields 14 and 15) in seconds. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after the
/// last `)`.
pub fn parse_cpu_secs(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU seconds the whole machine spent busy (all but idle and iowait), from
/// the first line of `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

/// CPU seconds each core spent busy, in core order (`cpu0`, `cpu1`, …).
pub fn core_busy_secs() -> Option<Vec<f64>> {
    parse_core_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `cpuN` lines of `/proc/stat` (after the total) → busy seconds each.
pub fn parse_core_busy(stat: &str) -> Option<Vec<f64>> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(parse_busy)
        .collect()
}

/// `cpu  user nice system idle iowait irq softirq steal …` → busy seconds.
pub fn parse_machine_busy(line: &str) -> Option<f64> {
    line.starts_with("cpu ").then(|| parse_busy(line))?
}

/// `cpuN user nice system idle iowait irq softirq steal …` (or the total
/// line, `cpu`) → busy seconds.
fn parse_busy(line: &str) -> Option<f64> {
    let mut it = line.split_whitespace();
    it.next()?.strip_prefix("cpu")?;
    let ticks: Vec<u64> = it.take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq + steal) as f64 / USER_HZ)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_tricky_command_name() {
        let stat = "4242 (herald (x) y) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 130 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_secs(stat), Some(3.8));
        assert_eq!(parse_cpu_secs("garbage"), None);
    }

    #[test]
    fn parses_machine_busy_time() {
        let line = "cpu  1000 50 300 9000 200 10 40 0 0 0";
        assert_eq!(parse_machine_busy(line), Some(14.0));
        assert_eq!(parse_machine_busy("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_machine_busy("cpu 1 2"), None);
    }

    #[test]
    fn parses_each_cores_busy_time() {
        let stat = "cpu  2000 0 600 18000 0 0 0 0 0 0\ncpu0 1000 0 300 9000 0 0 0 0 0 0\ncpu1 1000 0 300 9000 0 0 40 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_core_busy(stat), Some(vec![13.0, 13.4]));
        assert_eq!(parse_core_busy("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2\n"), None);
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\therald\nVmHWM:\t   20480 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(12288));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            let s = sample(std::process::id()).expect("own /proc entry");
            assert!(s.rss_kib > 0 && s.peak_rss_kib >= s.rss_kib, "{s:?}");
        }
    }
}
