//! The SMTP server of `tests/fixtures/smtp_server.py` (Python's aiosmtpd)
//! as a child process on 127.0.0.1, and what it received.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::tls::TestCa;

pub struct SmtpFixture {
    child: Child,
    pub port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpFixture {
    /// `None` (with a notice) when aiosmtpd is missing; under `CI=true` a
    /// missing aiosmtpd fails the test (`scripts/test.sh` installs it).
    pub fn start(starttls: Option<&TestCa>) -> Option<Self> {
        if !super::python_has("aiosmtpd") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("received.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_server.py");
        let mut command = Command::new("python3");
        command.arg(script).arg("--record").arg(&record);
        if let Some(ca) = starttls {
            command
                .arg("--cert")
                .arg(&ca.cert_file)
                .arg("--key")
                .arg(&ca.key_file);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the SMTP fixture did not start");
        Some(Self {
            child,
            port,
            record: record.clone(),
            _dir: dir,
        })
    }

    /// Every message accepted so far, oldest first.
    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SmtpFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
