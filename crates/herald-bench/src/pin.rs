//! `--pin`: Herald (or the no-op server) on one CPU, the simulator and the
//! bench on the other, through util-linux's `taskset`, so that each side's
//! figures are its own core's and neither takes CPU time from the other.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::BenchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pinning {
    /// Herald's CPU, and the no-op server's.
    pub herald_cpu: usize,
    /// The simulator's and the bench's.
    pub others_cpu: usize,
}

impl Pinning {
    /// CPU 0 for Herald, CPU 1 for the rest: refused without two CPUs or
    /// without `taskset`.
    pub fn choose() -> Result<Self, BenchError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return Err(BenchError::Pin(format!(
                "--pin needs two CPUs; this process may use {cores}"
            )));
        }
        let found = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(BenchError::Pin(
                "--pin needs `taskset` (Debian's util-linux package)".into(),
            ));
        }
        Ok(Self {
            herald_cpu: 0,
            others_cpu: 1,
        })
    }

    /// Every thread of this process (and those it starts later) on the
    /// others' CPU.
    pub fn pin_this_process(self) -> Result<(), BenchError> {
        let status = Command::new("taskset")
            .args(["--all-tasks", "--cpu-list", "--pid"])
            .arg(self.others_cpu.to_string())
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .status()
            .map_err(|source| BenchError::Io {
                what: "running taskset".into(),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(BenchError::Pin(format!(
                "taskset could not pin the bench to CPU {}: {status}",
                self.others_cpu
            )))
        }
    }
}

/// `program`, on `cpu` when pinning: `taskset` execs it, so the child's pid
/// is the program's own.
pub fn command(pin: Option<Pinning>, cpu: impl Fn(Pinning) -> usize, program: &OsStr) -> Command {
    match pin {
        Some(p) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("--cpu-list").arg(cpu(p).to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}
