//! The binary's own command line, run as a process: the completion scripts
//! and man pages it generates, and start-up refusing a bad `RUST_LOG`.

use std::process::{Command, Output};

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("herald runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

#[test]
fn completions_name_every_visible_subcommand_and_no_hidden_one() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&herald(&["completions", shell]));
        for sub in [
            "serve",
            "migrate",
            "keys",
            "providers",
            "openapi",
            "mock-providers",
            "demo",
            "bench",
            "completions",
            "man",
        ] {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
        // A flag of a subcommand, so the scripts go below the top level.
        assert!(script.contains("insecure-no-auth"), "{shell}");
        // Named only in the help of `bench --floor`, which runs it.
        let offered = script
            .lines()
            .filter(|l| l.contains("noop-server") && !l.contains("floor"))
            .collect::<Vec<_>>();
        assert!(
            offered.is_empty(),
            "{shell} offers a hidden command: {offered:?}"
        );
    }
    let bash = stdout(&herald(&["completions", "bash"]));
    assert!(bash.contains("complete -F _herald"), "{bash}");
    assert!(!herald(&["completions", "tcsh"]).status.success());
}

#[test]
fn the_man_page_is_roff_and_lists_the_subcommands() {
    let page = stdout(&herald(&["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH herald 1"),
        "{page}"
    );
    assert!(page.contains(".TH herald 1"), "{page}");
    assert!(page.contains("serve"), "{page}");
    assert!(!page.contains("noop\\-server"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = herald(&["man", "--dir", dir.path().to_str().unwrap()]);
    stdout(&out);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for want in [
        "herald.1",
        "herald-serve.1",
        "herald-keys.1",
        "herald-keys-create.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("noop")), "{pages:?}");
    let serve = std::fs::read_to_string(dir.path().join("herald-serve.1")).unwrap();
    assert!(serve.contains("insecure\\-no\\-auth"), "{serve}");
}

#[test]
fn an_invalid_rust_log_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("h.db").display());
    for args in [
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.as_str(),
        ],
        vec!["migrate", "--store", store.as_str()],
        vec!["mock-providers", "--sms-ports", "0", "--email-ports", "0"],
    ] {
        // Bounded: a refused start-up exits at once; one that went on
        // serving would be killed by the timeout and fail the assertion.
        let out = Command::new("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env("RUST_LOG", "herald=loud")
            .output()
            .expect("herald runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid RUST_LOG"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} started: {stderr}");
    }
    // The store was never opened: start-up stopped before it.
    assert!(!dir.path().join("h.db").exists());
}
