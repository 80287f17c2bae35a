//! What an operator deploys, checked on this machine: the container image
//! built from `Containerfile` (its binary serving and delivering from the
//! image's own filesystem), the systemd unit `deploy/herald.service`, and
//! `compose.yaml` with its settings.
//!
//! No container registry is reachable here, so the image is built by
//! `podman build` with `BINARY_FROM=prebuilt` (this test build's binary
//! instead of the Rust image's build stage) on a base made here from the
//! host's C libraries (instead of distroless/cc, which holds the same ones).
//! The image is not run as a container (that may not work on these
//! machines); its filesystem is exported and the binary run in it by
//! `chroot`, as the image's user. A step the machine cannot do (not root, no
//! podman, no systemd-analyze) is skipped with a notice, never faked.

#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald::config::{Config, Overrides, ProvidersConfig};
use serde_json::Value;
use support::{Client, Sim};

const BIN: &str = env!("CARGO_BIN_EXE_herald");
/// distroless's `nonroot`, which the Containerfile runs as.
const IMAGE_UID: u32 = 65532;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command to its end; its stdout, or a panic with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// podman with a store of its own in `dir`: what the test builds (the
/// image, and the intermediate stage images podman keeps as its cache) is
/// never in the machine's store and goes with the temporary directory. The
/// vfs driver needs no mounts, so that deleting the directory is all there
/// is to clean up.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--storage-driver=vfs");
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first, then images (the store's files go with the
        // directory anyway).
        let _ = self.cmd().args(["rm", "--all", "--force"]).output();
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
    }
}

/// The shared libraries `binary` loads, as absolute paths (`ldd`).
fn linked_libraries(binary: &str) -> Vec<PathBuf> {
    let out = run(Command::new("ldd").arg(binary));
    out.lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vDSO has no file.
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A root filesystem with what distroless/cc gives a binary: the C
/// libraries (here: the ones this binary links, from the host) and /tmp.
fn make_base(root: &Path) {
    for lib in linked_libraries(BIN) {
        let into = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(into.parent().unwrap()).unwrap();
        // The file behind any symlink, at the path the loader looks for.
        std::fs::copy(&lib, &into).unwrap();
    }
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_its_binary_serves_and_delivers() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root: rootful podman and chroot need root");
    }
    if !found("podman") {
        return skip("no podman (scripts/test.sh installs Debian's)");
    }
    let work = tempfile::tempdir().unwrap();
    let podman = Podman::new(&work.path().join("podman"));
    let tag = format!("{}-{}", std::process::id(), fastrand::u32(..));

    // The base, imported as an image of its own.
    let base_root = work.path().join("base");
    make_base(&base_root);
    let base_tar = work.path().join("base.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&base_root)
        .arg("-cf")
        .arg(&base_tar)
        .arg("."));
    let base = format!("localhost/herald-test-base:{tag}");
    run(podman.cmd().arg("import").arg(&base_tar).arg(&base));

    // The image, from the repository's Containerfile. The context holds
    // only what the prebuilt stage copies.
    let context = work.path().join("context");
    std::fs::create_dir_all(context.join("data")).unwrap();
    std::fs::copy(BIN, context.join("herald")).unwrap();
    let image = format!("localhost/herald-test:{tag}");
    run(podman
        .cmd()
        .args(["build", "--quiet", "--pull=never", "-f"])
        .arg(repo("Containerfile"))
        .args(["--build-arg", "BINARY_FROM=prebuilt"])
        .args(["--build-arg", &format!("RUNTIME_BASE={base}")])
        .args(["-t", &image])
        .arg(&context));

    // What the image declares.
    let inspected: Value =
        serde_json::from_str(&run(podman.cmd().args(["image", "inspect", &image]))).unwrap();
    let config = &inspected[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    assert!(config["Volumes"].get("/data").is_some(), "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/herald"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"HERALD_LISTEN=0.0.0.0:8080"), "{env:?}");
    assert!(
        env.contains(&"HERALD_STORE=sqlite:///data/herald.db"),
        "{env:?}"
    );

    // Its filesystem, as a container would see it.
    let container = run(podman.cmd().args(["create", &image])).trim().to_owned();
    let exported = work.path().join("image.tar");
    run(podman
        .cmd()
        .args(["export", "-o"])
        .arg(&exported)
        .arg(&container));
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(&exported));
    let data = std::fs::metadata(root.join("data")).unwrap();
    assert!(data.is_dir());
    assert_eq!(data.uid(), IMAGE_UID, "/data is the image user's");

    let in_image = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(format!("--userspec={IMAGE_UID}:{IMAGE_UID}"))
            .arg(&root)
            .arg("/usr/local/bin/herald")
            .args(args)
            // The image's environment but for HERALD_* (flags say those
            // here), not the test's.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("RUST_LOG", "info");
        cmd
    };
    let version = run(&mut in_image(&["--version"]));
    assert_eq!(
        version.trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );

    // serve on loopback against the image's /data, with providers outside.
    let sim = Sim::start(0.0, Duration::ZERO).await;
    std::fs::write(
        root.join("data/herald.toml"),
        sim.herald_config("sqlite:///data/herald.db", ""),
    )
    .unwrap();
    let mut serve = in_image(&[
        "serve",
        "--config",
        "/data/herald.toml",
        "--listen",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let addr = listening_addr(&mut serve);
    let stop = Stop(serve);
    let client = Client::new(addr);
    let accepted = client.sms("from the image").await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client.get(&format!("/v1/notifications/{id}")).await;
        assert_eq!(got.status, 200, "{:?}", got.body);
        if got.body["status"] == "sent" {
            break;
        }
        assert!(Instant::now() < until, "not delivered: {}", got.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.delivered_count(), 1);
    let db = std::fs::metadata(root.join("data/herald.db")).unwrap();
    assert_eq!(
        db.uid(),
        IMAGE_UID,
        "the store is written as the image user"
    );
    let status = stop.sigterm();
    assert!(status.success(), "serve exited {status:?}");
}

/// The address serve announces on stdout, waited for up to 20 s.
fn listening_addr(child: &mut std::process::Child) -> SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("herald listening on http://") {
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let out = child.wait_with_output_stderr();
            panic!("serve in the image did not start: {out}");
        }
    }
}

trait StderrOf {
    fn wait_with_output_stderr(&mut self) -> String;
}

impl StderrOf for std::process::Child {
    fn wait_with_output_stderr(&mut self) -> String {
        let _ = self.wait();
        let mut text = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        text
    }
}

/// The chrooted serve, ended with SIGTERM (and killed if the test fails).
struct Stop(std::process::Child);

impl Stop {
    fn sigterm(mut self) -> std::process::ExitStatus {
        run(Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string()));
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "serve did not drain and exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_unit_file_verifies_and_is_hardened() {
    if !found("systemd-analyze") {
        return skip("no systemd-analyze");
    }
    // verify checks that ExecStart's program exists: point it at this
    // build's binary instead of /usr/local/bin/herald; nothing else changes.
    let unit = std::fs::read_to_string(repo("deploy/herald.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/herald serve"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/herald", BIN)).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys too, with a warning: none is allowed.
    assert!(out.status.success() && said.is_empty(), "{said}");

    // The unit's exposure score (0 to 10, lower is better) as systemd rates
    // it offline: 1.4 when written; --threshold fails above 2.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_points_herald_at_its_services() {
    // The settings compose.yaml mounts: the simulator's six endpoints on
    // the mock-providers service, on the ports it listens on by default.
    let config = Config::load(Some(&repo("deploy/compose.toml")), &Overrides::default()).unwrap();
    assert_eq!(
        config.providers,
        ProvidersConfig::contract_defaults("mock-providers")
    );
    assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());

    let compose = std::fs::read_to_string(repo("compose.yaml")).unwrap();
    for needle in [
        "./deploy/compose.toml:/etc/herald/herald.toml:ro",
        r#"command: ["serve", "--config", "/etc/herald/herald.toml"]"#,
        r#"command: ["mock-providers", "--host", "0.0.0.0"]"#,
        "HERALD_STORE: postgres://herald:herald@postgres:5432/herald?sslmode=disable",
        "  mock-providers:\n",
        "  postgres:\n",
        "127.0.0.1:8080:8080",
    ] {
        assert!(compose.contains(needle), "compose.yaml has no {needle:?}");
    }
}
