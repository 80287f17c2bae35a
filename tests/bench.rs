//! `herald bench` through the binary: what each run reports, never how fast
//! anything was.

#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Runs `herald bench ARGS --json --quiet` (with `env`, which the Herald it
/// spawns inherits), killed if it has not finished within `limit`; answers
/// its report.
fn bench(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .args(["--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald bench starts");
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald bench {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "herald bench {args:?}: {status}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{out}"))
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn the_floor_and_pinning_are_reported_beside_heralds_figures() {
    let report = bench(
        &[
            "--spawn",
            "--floor",
            "--pin",
            "--duration",
            "1s",
            "--concurrency",
            "8",
            "--drain-timeout",
            "20s",
        ],
        &[],
        Duration::from_secs(120),
    );
    let accepted = report["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{report}");
    let floor = &report["floor"];
    for side in ["inbound", "outbound"] {
        assert!(floor[side]["requests"].as_u64().unwrap() > 0, "{floor}");
        assert_eq!(floor[side]["errors"], 0, "{floor}");
        assert!(number(&floor[side]["cpu_us_per_request"]) > 0.0, "{floor}");
    }
    let herald = &floor["herald"];
    assert!(number(&herald["cpu_us_per_accepted"]) > 0.0, "{herald}");
    assert!(number(&herald["accepted_vs_floor"]) > 0.0, "{herald}");
    // Through providers failing half the time: at least one request each.
    assert!(number(&herald["attempts_per_delivered"]) >= 1.0, "{herald}");
    assert!(number(&herald["delivered_vs_floor"]) > 0.0, "{herald}");
    assert_eq!(report["pinning"]["herald_cpu"], 0);
    assert_eq!(report["pinning"]["others_cpu"], 1);
    let cores = report["machine"]["per_core_busy_percent_during_load"]
        .as_array()
        .unwrap();
    assert_eq!(
        cores.len(),
        report["machine"]["cores"].as_u64().unwrap() as usize
    );
}

#[test]
fn hedged_loads_reach_heralds_hedging_past_a_slow_provider() {
    let report = bench(
        &[
            "--spawn",
            "--slow",
            "sms:1=1000",
            "--hedge",
            "--failure-rate",
            "0",
            "--duration",
            "1s",
            "--concurrency",
            "4",
            "--drain-timeout",
            "20s",
        ],
        &[("HERALD_HEDGE__SMS_AFTER_MS", "100")],
        Duration::from_secs(120),
    );
    assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["delivery"]["undelivered"], 0, "{report}");
    // A third of the rounds start at the slow provider and are hedged.
    assert!(report["hedged_rounds"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["delivery"]["accept_to_delivered"]["p99_us"]
            .as_u64()
            .unwrap()
            > 0
    );
}
