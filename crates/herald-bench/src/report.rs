//! The bench's findings, as text for people or JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::args::ChannelMix;
use super::floor::Floor;
use super::histogram::{Percentiles, human_micros};
use super::pin::Pinning;
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
    /// Provider requests Herald made over the load and the drain (its
    /// `herald_attempts_total`), when its `/metrics` could be read.
    pub provider_attempts: Option<u64>,
    /// Rounds that sent a hedge over the same span (`herald_hedges_total`).
    pub hedged_rounds: Option<u64>,
    pub backlog: Backlog,
    /// Only when the bench started Herald itself.
    pub herald_process: Option<ProcessReport>,
    pub simulator_process: Option<ProcessReport>,
    /// This process, during the load: what the load itself cost.
    pub bench_process: ProcessReport,
    /// `--pin`: which CPU ran what.
    pub pinning: Option<Pinning>,
    /// `--floor`: the no-op floors, and Herald's figures against them.
    pub floor: Option<Floor>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// 1, 5, 15 minute load averages just before the run.
    pub load_average_before: Option<[f64; 3]>,
    /// CPU the whole machine used while the load ran, in % of one core
    /// (at most 100 × cores).
    pub busy_percent_during_load: Option<f64>,
    /// The same for each core, in core order, in % of that core.
    pub per_core_busy_percent_during_load: Option<Vec<f64>>,
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
        if let Some(cores) = &self.machine.per_core_busy_percent_during_load {
            let each: Vec<String> = cores
                .iter()
                .enumerate()
                .map(|(i, p)| format!("cpu{i} {p:.0}%"))
                .collect();
            let _ = writeln!(s, "  per core: {}{}", each.join(", "), self.pinned());
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
        if let Some(n) = self.provider_attempts {
            let _ = writeln!(
                s,
                "  {n} provider requests{}{}",
                if d.delivered > 0 {
                    format!(" ({:.2} per delivered)", n as f64 / d.delivered as f64)
                } else {
                    String::new()
                },
                match self.hedged_rounds {
                    Some(h) if h > 0 => format!("; {h} rounds hedged"),
                    _ => String::new(),
                }
            );
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
        if let Some(f) = &self.floor {
            render_floor(&mut s, f);
        }
        s
    }

    fn pinned(&self) -> String {
        self.pinning.map_or(String::new(), |p| {
            format!(
                " (pinned: herald on cpu{}, simulator and bench on cpu{})",
                p.herald_cpu, p.others_cpu
            )
        })
    }
}

fn render_floor(s: &mut String, f: &Floor) {
    let us = |v: Option<f64>| v.map_or("?".into(), |v| human_micros(v.round() as u64));
    let times = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1}×"));
    let _ = writeln!(
        s,
        "\nfloor (herald noop-server: Herald's HTTP stack, every body read, none parsed)"
    );
    for (name, run, whose) in [
        ("inbound ", &f.inbound, "the server"),
        ("outbound", &f.outbound, "hyper's pooled client"),
    ] {
        let _ = writeln!(
            s,
            "  {name} {:.0} requests/s, {} CPU per request ({whose}){}; latency {}",
            run.requests_per_sec,
            us(run.cpu_us_per_request),
            if run.errors > 0 {
                format!(", {} errors", run.errors)
            } else {
                String::new()
            },
            run.latency.line()
        );
    }
    if let Some(h) = &f.herald {
        let _ = writeln!(
            s,
            "  herald   {} CPU per accepted: {} a no-op request",
            us(Some(h.cpu_us_per_accepted)),
            times(h.accepted_vs_floor)
        );
        // Nothing delivered (`--role api`): nothing to say about delivery.
        if h.cpu_us_per_delivered.is_some() {
            let _ = writeln!(
                s,
                "           {} CPU per delivered ({} provider requests each): {} its floor of {}",
                us(h.cpu_us_per_delivered),
                h.attempts_per_delivered
                    .map_or("?".into(), |a| format!("{a:.2}")),
                times(h.delivered_vs_floor),
                us(h.floor_us_per_delivered)
            );
            let _ = writeln!(
                s,
                "           delivered/s {} the no-op requests/s",
                h.delivered_rate_vs_floor_rate
                    .map_or("?".into(), |v| format!("{v:.2}×"))
            );
        }
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
    use crate::floor::FloorRun;

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
                per_core_busy_percent_during_load: Some(vec![98.0, 52.0]),
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
            provider_attempts: Some(1980),
            hedged_rounds: Some(12),
            pinning: Some(Pinning {
                herald_cpu: 0,
                others_cpu: 1,
            }),
            floor: None,
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
    fn herald_is_stated_against_the_floor() {
        let mut report = sample_report();
        let run = |requests, cpu_secs: f64| {
            let mut run = FloorRun {
                requests,
                secs: 10.0,
                requests_per_sec: requests as f64 / 10.0,
                cpu_secs: Some(cpu_secs),
                ..FloorRun::default()
            };
            run.cpu_us_per_request = Some(cpu_secs * 1e6 / requests as f64);
            run
        };
        let floor = Floor {
            // 20 µs a no-op request in, 10 µs a request out.
            inbound: run(1_000, 0.02),
            outbound: run(2_000, 0.02),
            herald: None,
        };
        report.floor = Some(floor.with_herald(&report));
        let h = report.floor.as_ref().unwrap().herald.as_ref().unwrap();
        // 4.0 s of CPU during the load for 990 accepted; 5.0 s in all for
        // 990 delivered through 1,980 provider requests.
        assert!((h.cpu_us_per_accepted - 4_040.4).abs() < 0.1, "{h:?}");
        assert!(
            (h.accepted_vs_floor.unwrap() - 202.02).abs() < 0.01,
            "{h:?}"
        );
        assert_eq!(h.attempts_per_delivered, Some(2.0));
        assert_eq!(h.floor_us_per_delivered, Some(40.0));
        assert!(
            (h.delivered_vs_floor.unwrap() - 126.26).abs() < 0.01,
            "{h:?}"
        );
        assert!((h.delivered_rate_vs_floor_rate.unwrap() - 0.985).abs() < 1e-9);
        let text = report.render();
        for want in [
            "inbound  100 requests/s, 20µs CPU per request (the server)",
            "outbound 200 requests/s, 10µs CPU per request (hyper's pooled client)",
            "4.04ms CPU per accepted: 202.0× a no-op request",
            "5.05ms CPU per delivered (2.00 provider requests each): 126.3× its floor of 40µs",
            "delivered/s 0.98× the no-op requests/s",
            "per core: cpu0 98%, cpu1 52% (pinned: herald on cpu0, simulator and bench on cpu1)",
            "1980 provider requests (2.00 per delivered); 12 rounds hedged",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["floor"]["herald"]["attempts_per_delivered"], 2.0);
        assert_eq!(v["floor"]["inbound"]["requests"], 1_000);
        assert_eq!(v["pinning"]["herald_cpu"], 0);
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
