//! The bench's findings, as text for people or JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::args::ChannelMix;
use super::histogram::Percentiles;
use super::procfs::ProcSample;
use super::stats::StatsSample;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RFC 3339, when the load started.
    pub started_at: String,
    pub target: String,
    pub spawned: bool,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub concurrency: u32,
    pub rate: Option<u32>,
    pub channel: ChannelMix,
    pub machine: Machine,
    /// How long requests were being sent, in seconds.
    pub load_secs: f64,
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_sec: f64,
    /// Answers other than 202, by HTTP status.
    pub other_statuses: BTreeMap<u16, u64>,
    /// Connection and protocol errors.
    pub errors: u64,
    pub first_error: Option<String>,
    /// From writing the request to reading the whole answer.
    pub accept_latency: Percentiles,
    /// Open loop only: from when the request was due.
    pub accept_latency_from_due: Option<Percentiles>,
    pub delivery: Delivery,
    pub backlog: Backlog,
    /// Only when the bench started Herald itself.
    pub herald_process: Option<ProcessReport>,
    pub simulator_process: Option<ProcessReport>,
    /// This process, during the load: what the load itself cost.
    pub bench_process: ProcessReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// 1, 5, 15 minute load averages just before the run.
    pub load_average_before: Option<[f64; 3]>,
    /// CPU the whole machine used while the load ran, in % of one core
    /// (at most 100 × cores).
    pub busy_percent_during_load: Option<f64>,
    /// Of that, what processes other than the bench and the processes it
    /// spawned used: other work on the machine that skews the figures. With
    /// `--target`, this includes the Herald under test.
    pub others_percent_during_load: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// Where the numbers come from: `simulator` (delivery lines matched to
    /// the requests sent) or `stats` (Herald's delivered count).
    pub source: &'static str,
    /// Delivered while the load ran, per second of load.
    pub delivered_per_sec_during_load: Option<f64>,
    /// Accepted notifications of this run delivered by the end.
    pub delivered: u64,
    /// Deliveries of a notification already delivered (at-least-once).
    pub duplicates: u64,
    /// Accepted but not seen delivered by the end of the drain.
    pub undelivered: u64,
    /// From the first request to the backlog being empty again, in seconds
    /// (`None`: it did not drain within the drain timeout).
    pub drained_after_secs: Option<f64>,
    /// From the 202 to the simulator's delivery line (simulator only).
    pub accept_to_delivered: Option<Percentiles>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    /// queued + sending + retrying, over time.
    pub samples: Vec<StatsSample>,
    pub max: u64,
    /// Least-squares slope over the load, notifications per second
    /// (near 0: flat).
    pub slope_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// RSS after start-up, before any load.
    pub idle_rss_kib: Option<u64>,
    /// VmHWM at the end: the peak over the whole run.
    pub peak_rss_kib: Option<u64>,
    pub end_rss_kib: Option<u64>,
    /// CPU seconds used from the start of the load to the end of the drain.
    pub cpu_secs: Option<f64>,
    /// `cpu_secs` over the same wall time, in % of one core.
    pub cpu_percent_of_one_core: Option<f64>,
    /// CPU seconds used while the load ran (without the drain).
    pub cpu_secs_during_load: Option<f64>,
    /// `cpu_secs_during_load` over the load's wall time, in % of one core.
    pub cpu_percent_during_load: Option<f64>,
}

/// Readings of one process at the points of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcReadings {
    /// After start-up, before any load.
    pub idle: Option<ProcSample>,
    pub load_start: Option<ProcSample>,
    pub load_end: Option<ProcSample>,
    /// After the drain.
    pub end: Option<ProcSample>,
}

impl ProcessReport {
    /// `load_secs`: wall time of the load; `wall_secs`: of load and drain.
    pub fn new(pid: u32, r: ProcReadings, load_secs: f64, wall_secs: f64) -> Self {
        let cpu = |from: Option<ProcSample>, to: Option<ProcSample>| {
            from.zip(to).map(|(a, b)| b.cpu_secs - a.cpu_secs)
        };
        let percent =
            |cpu: Option<f64>, wall: f64| cpu.filter(|_| wall > 0.0).map(|c| 100.0 * c / wall);
        let total = cpu(r.load_start, r.end);
        let during_load = cpu(r.load_start, r.load_end);
        Self {
            pid,
            idle_rss_kib: r.idle.map(|s| s.rss_kib),
            peak_rss_kib: r.end.map(|s| s.peak_rss_kib),
            end_rss_kib: r.end.map(|s| s.rss_kib),
            cpu_secs: total,
            cpu_percent_of_one_core: percent(total, wall_secs),
            cpu_secs_during_load: during_load,
            cpu_percent_during_load: percent(during_load, load_secs),
        }
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("?".into(), |v| format!("{v:.1}{unit}"))
}

impl Report {
    /// The text report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "herald bench: {} loop, {} against {}{}",
            self.mode,
            match self.rate {
                Some(r) => format!("{r}/s with up to {} connections", self.concurrency),
                None => format!("{} connections", self.concurrency),
            },
            self.target,
            if self.spawned { " (spawned)" } else { "" }
        );
        let _ = writeln!(
            s,
            "  started {}, channel {}, {} cores, load average before {}",
            self.started_at,
            self.channel.as_str(),
            self.machine.cores,
            self.machine
                .load_average_before
                .map_or("?".into(), |l| format!(
                    "{:.2} {:.2} {:.2}",
                    l[0], l[1], l[2]
                ))
        );
        if let Some(busy) = self.machine.busy_percent_during_load {
            let _ = writeln!(
                s,
                "  machine busy during the load: {busy:.0}% of one core, of which other processes{} {}",
                if self.spawned {
                    ""
                } else {
                    " (the target among them)"
                },
                opt(self.machine.others_percent_during_load, "%")
            );
        }
        let _ = writeln!(s, "\naccept");
        let _ = writeln!(
            s,
            "  {} sent, {} accepted in {:.2}s: {:.0} accepted/s",
            self.sent, self.accepted, self.load_secs, self.accepted_per_sec
        );
        if !self.other_statuses.is_empty() || self.errors > 0 {
            let _ = writeln!(
                s,
                "  other answers {:?}, errors {}{}",
                self.other_statuses,
                self.errors,
                self.first_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            );
        }
        let _ = writeln!(s, "  latency          {}", self.accept_latency.line());
        if let Some(due) = &self.accept_latency_from_due {
            let _ = writeln!(s, "  latency from due {}", due.line());
        }
        let d = &self.delivery;
        let _ = writeln!(s, "\ndelivery (from {})", d.source);
        let _ = writeln!(
            s,
            "  {} delivered/s during the load; {} delivered, {} duplicates, {} undelivered; {}",
            opt(d.delivered_per_sec_during_load, ""),
            d.delivered,
            d.duplicates,
            d.undelivered,
            d.drained_after_secs
                .map_or("backlog not drained".into(), |t| format!(
                    "backlog drained {t:.2}s after the start"
                ))
        );
        if let Some(p) = &d.accept_to_delivered {
            let _ = writeln!(s, "  accept→delivered {}", p.line());
        }
        let b = &self.backlog;
        let _ = writeln!(
            s,
            "\nbacklog (queued+sending+retrying): max {}, slope during load {}",
            b.max,
            b.slope_per_sec.map_or("?".into(), |v| format!("{v:+.0}/s"))
        );
        if !b.samples.is_empty() {
            let line: Vec<String> = thin(&b.samples, 20)
                .iter()
                .map(|x| format!("{:.0}s:{}", x.t_ms as f64 / 1e3, x.backlog()))
                .collect();
            let _ = writeln!(s, "  {}", line.join(" "));
        }
        for (name, p) in [
            ("herald", self.herald_process.as_ref()),
            ("simulator", self.simulator_process.as_ref()),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    s,
                    "\n{name} (pid {}): idle RSS {}, peak RSS {}, end RSS {}\n  CPU during the load {} ({} of one core), load and drain {} ({})",
                    p.pid,
                    mib(p.idle_rss_kib),
                    mib(p.peak_rss_kib),
                    mib(p.end_rss_kib),
                    opt(p.cpu_secs_during_load, "s"),
                    opt(p.cpu_percent_during_load, "%"),
                    opt(p.cpu_secs, "s"),
                    opt(p.cpu_percent_of_one_core, "%"),
                );
            }
        }
        let b = &self.bench_process;
        let _ = writeln!(
            s,
            "\nbench (pid {}): CPU during the load {} ({} of one core)",
            b.pid,
            opt(b.cpu_secs_during_load, "s"),
            opt(b.cpu_percent_during_load, "%"),
        );
        s
    }
}

/// At most `n` samples, evenly picked, always with the last.
fn thin(samples: &[StatsSample], n: usize) -> Vec<StatsSample> {
    if samples.len() <= n {
        return samples.to_vec();
    }
    let step = samples.len().div_ceil(n);
    let mut out: Vec<StatsSample> = samples.iter().step_by(step).copied().collect();
    if let (Some(last), Some(kept)) = (samples.last(), out.last())
        && last != kept
    {
        out.push(*last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        Report {
            started_at: "2026-11-22T21:00:00Z".into(),
            target: "http://127.0.0.1:8080".into(),
            spawned: true,
            mode: "closed",
            concurrency: 64,
            rate: None,
            channel: ChannelMix::Sms,
            machine: Machine {
                cores: 2,
                load_average_before: Some([0.5, 0.4, 0.3]),
                busy_percent_during_load: Some(150.0),
                others_percent_during_load: Some(10.0),
            },
            load_secs: 10.0,
            sent: 1000,
            accepted: 990,
            accepted_per_sec: 99.0,
            other_statuses: BTreeMap::from([(503, 10)]),
            errors: 0,
            first_error: None,
            accept_latency: Percentiles {
                count: 990,
                mean_us: 900,
                p50_us: 800,
                p90_us: 1_500,
                p99_us: 3_000,
                p999_us: 9_000,
                max_us: 12_000,
            },
            accept_latency_from_due: None,
            delivery: Delivery {
                source: "simulator",
                delivered_per_sec_during_load: Some(98.5),
                delivered: 990,
                drained_after_secs: Some(11.5),
                ..Delivery::default()
            },
            backlog: Backlog {
                samples: (0..50)
                    .map(|i| StatsSample {
                        t_ms: i * 1000,
                        queued: 7,
                        ..StatsSample::default()
                    })
                    .collect(),
                max: 7,
                slope_per_sec: Some(0.0),
            },
            herald_process: Some(ProcessReport::new(
                42,
                ProcReadings {
                    idle: Some(ProcSample {
                        cpu_secs: 0.1,
                        rss_kib: 10_240,
                        peak_rss_kib: 10_240,
                    }),
                    load_start: Some(ProcSample {
                        cpu_secs: 0.2,
                        rss_kib: 10_240,
                        peak_rss_kib: 10_240,
                    }),
                    load_end: Some(ProcSample {
                        cpu_secs: 4.2,
                        rss_kib: 45_000,
                        peak_rss_kib: 51_200,
                    }),
                    end: Some(ProcSample {
                        cpu_secs: 5.2,
                        rss_kib: 40_960,
                        peak_rss_kib: 51_200,
                    }),
                },
                8.0,
                10.0,
            )),
            simulator_process: None,
            bench_process: ProcessReport::new(7, ProcReadings::default(), 10.0, 10.0),
        }
    }

    #[test]
    fn text_report_shows_the_headline_figures() {
        let text = sample_report().render();
        for want in [
            "closed loop, 64 connections against http://127.0.0.1:8080 (spawned)",
            "1000 sent, 990 accepted in 10.00s: 99 accepted/s",
            "machine busy during the load: 150% of one core, of which other processes 10.0%",
            "other answers {503: 10}",
            "p50 800µs  p90 1.50ms  p99 3.00ms  p99.9 9.00ms  max 12.00ms",
            "98.5 delivered/s during the load",
            "backlog drained 11.50s after the start",
            "max 7, slope during load +0/s",
            "idle RSS 10.0 MiB, peak RSS 50.0 MiB, end RSS 40.0 MiB",
            "CPU during the load 4.0s (50.0% of one core), load and drain 5.0s (50.0%)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn json_report_has_stable_field_names() {
        let v = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(v["accept_latency"]["p99_us"], 3_000);
        assert_eq!(v["delivery"]["delivered_per_sec_during_load"], 98.5);
        assert_eq!(v["herald_process"]["peak_rss_kib"], 51_200);
        assert_eq!(v["channel"], "sms");
        assert_eq!(v["backlog"]["samples"][1]["t_ms"], 1000);
    }

    #[test]
    fn thinning_keeps_the_last_sample() {
        let samples: Vec<_> = (0..45)
            .map(|i| StatsSample {
                t_ms: i,
                ..StatsSample::default()
            })
            .collect();
        let thinned = thin(&samples, 20);
        assert!(thinned.len() <= 21);
        assert_eq!(thinned.last().unwrap().t_ms, 44);
    }
}
