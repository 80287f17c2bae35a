//! The OpenAPI document: the checked-in copy is what the code generates,
//! the routes served are the routes documented, and schemathesis, run
//! against a live `herald serve` from the document it serves, finds no
//! server error and no answer that contradicts the document.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Herald, Sim, TestStore, create_key};

/// What `herald openapi` prints.
fn generated() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success(), "herald openapi failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = generated();
    let doc: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    if checked_in != generated {
        let line = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "its end".to_owned(), |n| format!("line {}", n + 1));
        panic!(
            "docs/openapi.json differs from the document the code generates (first at {line}); \
             refresh it with: cargo run -- openapi > docs/openapi.json"
        );
    }
}

/// Every method on every path of the document.
fn documented(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// The provider simulator (failing half the time, as the contract's
/// providers do) and a SQLite store.
async fn sim_and_store() -> (Sim, TestStore) {
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    (Sim::start(0.5, Duration::ZERO).await, store)
}

/// The router answers a method it does not serve on a path it does with
/// 405 and an `Allow` header naming every method it serves there, so one
/// request per documented path shows that the path is routed and that its
/// methods are exactly the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_served_are_the_routes_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, store) = sim_and_store().await;
    let herald = Herald::start(dir.path(), &sim.herald_config(&store.url, ""));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = herald.client().base;

    let served = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.text().await.unwrap();
    assert!(
        served == generated(),
        "GET /openapi.json and `herald openapi` differ"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();

    let paths = documented(&doc);
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, methods) in paths {
        assert!(!methods.is_empty(), "{path} documents no method");
        let other = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            .into_iter()
            .find(|m| !methods.contains(*m))
            .unwrap();
        let url = format!(
            "{base}{}",
            path.replace("{id}", "ntf_0190c3f5a1b27c3d8e4f5a6b7c8d9e0f")
                .replace("{name}", "sms-provider1")
        );
        let answer = http
            .request(other.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            405,
            "{other} {path}: a documented path the router does not serve"
        );
        let allow: BTreeSet<String> = answer.headers()["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(
            allow, methods,
            "{path}: the methods served (Allow) and the methods documented differ"
        );
    }
}

/// `python3 -m schemathesis.cli`, when installed (see
/// [`support::python_has`]).
fn schemathesis() -> Option<Command> {
    support::python_has("schemathesis").then(|| {
        let mut command = Command::new("python3");
        command.args(["-m", "schemathesis.cli"]);
        command
    })
}

/// The most schemathesis may take; it needs about 20 s of CPU, and a
/// minute on a machine busy with other work.
const SCHEMATHESIS_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_contradicts_the_document() {
    let Some(mut schemathesis) = schemathesis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (sim, store) = sim_and_store().await;
    let key = create_key(
        &store.url,
        &["--name", "schemathesis", "--scopes", "send,read,admin"],
    );
    let config = format!(
        "{}\n[auth]\nrequired = true\n",
        sim.herald_config(&store.url, "")
    );
    let herald = Herald::start(dir.path(), &config);
    let settings = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemathesis.toml");
    let output = dir.path().join("schemathesis.log");
    let mut child = schemathesis
        .arg("--config-file")
        .arg(&settings)
        .arg("run")
        .arg(format!("{}/openapi.json", herald.client().base))
        // Every phase (examples, coverage, fuzzing, stateful), each bounded.
        // One worker: hypothesis parses lambdas' source with `ast`, which
        // CPython 3.11 cannot do from two threads at once ("AST constructor
        // recursion depth mismatch").
        .args(["--max-examples", "10", "--workers", "1"])
        .args(["--request-timeout", "10", "--generation-database", "none"])
        .arg("--no-color")
        .env("HERALD_TEST_KEY", &key)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::fs::File::create(dir.path().join("schemathesis.err")).unwrap())
        .spawn()
        .expect("python3 starts");
    let until = Instant::now() + SCHEMATHESIS_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = format!(
        "{}{}",
        std::fs::read_to_string(&output).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("schemathesis.err")).unwrap_or_default()
    );
    println!("{report}");
    let Some(status) = status else {
        panic!("schemathesis ran past {SCHEMATHESIS_LIMIT:?}:\n{report}");
    };
    assert!(
        status.success(),
        "schemathesis found answers that contradict the document:\n{report}\nHerald's log:\n{}",
        herald.logs()
    );
    // It tested every operation but `GET /openapi.json`, the document
    // itself, which schemathesis leaves out.
    let operations: usize = documented(&serde_json::from_str(&generated()).unwrap())
        .iter()
        .map(|(_, methods)| methods.len())
        .sum::<usize>()
        - 1;
    assert!(
        report.contains(&format!("Tested: {operations}\n")),
        "schemathesis did not test all {operations} operations:\n{report}"
    );
}
