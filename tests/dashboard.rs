//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, started here on loopback), against `herald serve` with
//! keys required and the provider simulator, traffic flowing throughout.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test.sh`
//! installs them). It runs on SQLite only: what the page shows comes from
//! the API, whose store behaviour the store contract covers on both engines.

#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Locator, wd::Capabilities};
use herald::domain::Channel;
use serde_json::{Value, json};
use support::{Backend, Client, Herald, Sim, TestStore, create_key};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_health_and_replays_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let ops = create_key(&store.url, &["--name", "ops", "--scopes", "admin"]);
    let app_key = create_key(&store.url, &["--name", "app", "--scopes", "send,read"]);
    let mut sim = Sim::start(0.05, Duration::from_millis(15)).await;
    // One round per notification, so one whose providers are all down
    // dies at once.
    let config = sim
        .herald_config(&store.url, "")
        .replace("max_rounds = 40", "max_rounds = 1")
        + "[auth]\nrequired = true\nrefresh_ms = 100\n";
    let mut herald = Herald::start(dir.path(), &config);
    let addr = herald.addr;
    let api = Client::with_key(addr, &app_key);
    let traffic = Traffic::start(addr, &app_key);

    let browser = Browser::start(dir.path()).await;
    let page = &browser.client;
    page.goto(&format!("http://{addr}/")).await.unwrap();
    // No key yet: the page asks for one.
    until("the key form", || async {
        js(page, "return !document.getElementById('key-form').hidden").await == json!(true)
    })
    .await;
    assert!(page.current_url().await.unwrap().path() == "/dashboard");
    page.find(Locator::Id("key-input"))
        .await
        .unwrap()
        .send_keys(&ops)
        .await
        .unwrap();
    click(page, "#key-form button[type=submit]").await;
    let contract = [
        "sms-provider1",
        "sms-provider2",
        "sms-provider3",
        "email-provider1",
        "email-provider2",
        "email-provider3",
    ];
    until("six closed providers", || async {
        let states = cards(page).await;
        states.len() == 6 && contract.iter().all(|n| is(&states, n, "closed"))
    })
    .await;
    assert_eq!(
        js(page, "return sessionStorage.getItem('herald.key')").await,
        json!(ops),
        "the key is kept for the tab"
    );

    // Every email provider down: an email dies, and the list shows it.
    for n in 1..=3 {
        sim.sim.stop_provider(Channel::Email, n).await;
    }
    let dead = api.email("doomed").await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    until("the email to die", || async {
        api.get(&format!("/v1/notifications/{dead}")).await.body["status"] == "dead"
    })
    .await;
    let row = format!("#dead li[data-id='{dead}']");
    until("the dead letter on the page", || async {
        js(page, &format!("return !!document.querySelector(\"{row}\")")).await == json!(true)
    })
    .await;
    let error = js(
        page,
        &format!("return document.querySelector(\"{row} .error\").textContent"),
    )
    .await;
    assert!(error.as_str().unwrap().contains("gave up"), "{error}");
    for n in 1..=3 {
        sim.sim.start_provider(Channel::Email, n).await.unwrap();
    }
    until("the email providers to close again", || async {
        let states = cards(page).await;
        contract[3..].iter().all(|n| is(&states, n, "closed"))
    })
    .await;

    // One SMS provider stopped under traffic: its card turns open.
    sim.sim.stop_provider(Channel::Sms, 1).await;
    until("sms-provider1 open", || async {
        is(&cards(page).await, "sms-provider1", "open")
    })
    .await;

    // The dead one's attempts, as a timeline.
    let lookup = page.find(Locator::Id("lookup-id")).await.unwrap();
    lookup.send_keys(&dead).await.unwrap();
    click(page, "#lookup-form button[type=submit]").await;
    until("the dead one's three attempts", || async {
        attempts(page).await == json!(["dead", 3])
    })
    .await;
    // Enough history for the charts to show something, then a picture.
    until("15 s of samples", || async {
        let held = js(
            page,
            "return document.getElementById('throughput').dataset.samples",
        )
        .await;
        held.as_str().and_then(|n| n.parse::<u32>().ok()) >= Some(15)
    })
    .await;
    js(page, "window.scrollTo(0, 0)").await;
    screenshot(page).await;

    sim.sim.start_provider(Channel::Sms, 1).await.unwrap();
    until("sms-provider1 closed again", || async {
        is(&cards(page).await, "sms-provider1", "closed")
    })
    .await;

    // Taken out of rotation from its card, and back: the API and the card
    // agree, and the other SMS providers carry the traffic meanwhile.
    let toggle = ".card[data-provider=\"sms-provider2\"] button.toggle";
    click(page, toggle).await;
    until("sms-provider2 disabled", || async {
        is(&cards(page).await, "sms-provider2", "disabled")
    })
    .await;
    let listed = api.get("/v1/providers").await.body;
    let second = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sms-provider2")
        .unwrap();
    assert_eq!(second["enabled"], false, "{second}");
    click(page, toggle).await;
    until("sms-provider2 back in rotation", || async {
        is(&cards(page).await, "sms-provider2", "closed")
    })
    .await;

    // Replayed from the page, it is sent; the lookup shows how.
    click(page, &format!("{row} input[type=checkbox]")).await;
    click(page, "#replay").await;
    until("the replayed email sent", || async {
        api.get(&format!("/v1/notifications/{dead}")).await.body["status"] == "sent"
    })
    .await;
    click(page, "#lookup-form button[type=submit]").await;
    until("the delivery in the timeline", || async {
        let shown = attempts(page).await;
        shown[0] == "sent" && shown[1].as_u64() >= Some(4)
    })
    .await;

    // Herald restarts: the page reconnects by itself.
    herald.sigterm();
    let exit = herald.wait_exit(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| s.success()), "{}", herald.logs());
    until("the page to notice", || async {
        js(
            page,
            "return document.getElementById('status').dataset.state",
        )
        .await
            != "live"
    })
    .await;
    let herald = Herald::start_on(dir.path(), &config, addr);
    until("live again on a new connection", || async {
        let state = js(
            page,
            "return [document.getElementById('status').dataset.state, document.body.dataset.connections]",
        )
        .await;
        state == json!(["live", "2"]) && cards(page).await.len() == 6
    })
    .await;

    // A phone's width: nothing sticks out sideways.
    page.set_window_size(390, 844).await.unwrap();
    until("a phone-width layout without overflow", || async {
        let fits = js(
            page,
            "return [window.innerWidth, document.documentElement.scrollWidth, document.body.scrollWidth]",
        )
        .await;
        let [inner, doc, body] = [0, 1, 2].map(|i| fits[i].as_u64().unwrap());
        inner <= 400 && doc <= inner && body <= inner
    })
    .await;

    traffic.stop().await;
    browser.stop().await;
    drop(herald);
}

/// With keys off (the loopback default), a page of another site that the
/// operator opens submits a form to Herald that would take a provider out
/// of rotation: it changes nothing. The dashboard, same origin, still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_another_sites_form_changes_nothing_and_the_dashboard_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let store = TestStore::new(Backend::Sqlite).await.unwrap();
    let sim = Sim::start(0.0, Duration::ZERO).await;
    let herald = Herald::start(dir.path(), &sim.herald_config(&store.url, ""));
    let addr = herald.addr;
    let api = Client::new(addr);
    let enabled = || async {
        api.get("/v1/providers")
            .await
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sms-provider2")
            .unwrap()["enabled"]
            .clone()
    };
    let evil = support::fixture::Fixture::start(move |_, _| {
        support::fixture::page(format!(
            "<form id=f method=post action=\"http://{addr}/v1/providers/sms-provider2/disable\">\
             <input name=x value=1></form><script>document.getElementById('f').submit()</script>"
        ))
    })
    .await;

    let browser = Browser::start(dir.path()).await;
    let page = &browser.client;
    // Another origin (another port is another site's origin to a browser).
    page.goto(&format!("http://{}/", evil.addr)).await.unwrap();
    until("the form posted to Herald", || async {
        page.current_url()
            .await
            .is_ok_and(|u| u.port() == Some(addr.port()))
    })
    .await;
    let answer = js(page, "return document.body.innerText").await;
    assert!(
        answer
            .as_str()
            .unwrap_or_default()
            .contains("/problems/cross-site"),
        "{answer}"
    );
    assert_eq!(enabled().await, true, "the form changed nothing");

    page.goto(&format!("http://{addr}/dashboard"))
        .await
        .unwrap();
    until("the provider cards", || async {
        is(&cards(page).await, "sms-provider2", "closed")
    })
    .await;
    click(page, ".card[data-provider=\"sms-provider2\"] button.toggle").await;
    until("sms-provider2 disabled from its card", || async {
        is(&cards(page).await, "sms-provider2", "disabled")
    })
    .await;
    assert_eq!(enabled().await, false);
    browser.stop().await;
}

#[test]
fn demo_prints_the_dashboard_address() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("demo.db").display());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--listen", "127.0.0.1:0", "--store", &store])
        .args(["--sms-ports", "0,0,0", "--email-ports", "0,0,0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = demo.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = line.trim();
            if line.starts_with("http://") && line.ends_with("/dashboard") {
                let _ = tx.send(line.to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(20));
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(url.is_ok(), "demo printed no dashboard address");
}

/// Polls `check` until it holds; panics after 20 s.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js(page: &fantoccini::Client, script: &str) -> Value {
    page.execute(script, Vec::new()).await.unwrap()
}

async fn click(page: &fantoccini::Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Each provider card's state, by name.
async fn cards(page: &fantoccini::Client) -> HashMap<String, String> {
    let states = js(
        page,
        "const out = {};
         for (const c of document.querySelectorAll('.card')) out[c.dataset.provider] = c.dataset.state;
         return out;",
    )
    .await;
    serde_json::from_value(states).unwrap()
}

fn is(states: &HashMap<String, String>, name: &str, state: &str) -> bool {
    states.get(name).is_some_and(|s| s == state)
}

/// The looked-up notification's status and how many attempts it shows.
async fn attempts(page: &fantoccini::Client) -> Value {
    js(
        page,
        "const r = document.querySelector('#lookup .record');
         return r ? [r.dataset.status, r.querySelectorAll('.attempt').length] : null;",
    )
    .await
}

/// The page as it is, written under the target directory;
/// `HERALD_DASHBOARD_SCREENSHOT=PATH` writes a copy there too (how
/// docs/dashboard.png is made).
async fn screenshot(page: &fantoccini::Client) {
    let png = page.screenshot().await.unwrap();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
    if let Ok(copy) = std::env::var("HERALD_DASHBOARD_SCREENSHOT") {
        std::fs::write(&copy, &png).unwrap();
        eprintln!("dashboard screenshot copied to {copy}");
    }
}

/// SMS and email sent without pause until stopped, as an application
/// would; refused sends (while Herald restarts) are let go.
struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr, key: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = Client::with_key(addr, key);
        let stopping = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            for i in 0..20_000 {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                client.sms(&format!("load-{i}")).await;
                client.email(&format!("load-{i}")).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// chromedriver on a loopback port and a headless Chromium session.
struct Browser {
    driver: Child,
    client: fantoccini::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(dir: &Path) -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: scripts/test.sh installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log: PathBuf = dir.join("chromedriver.log");
        // A process group of its own, with the browser it starts: one
        // signal stops them all, even if a failed test left a session open.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let status = reqwest::Client::new();
        let ready = || async {
            status
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                == Some(true)
        };
        until("chromedriver", ready).await;

        let profile = tempfile::tempdir().unwrap();
        let mut caps = Capabilities::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1200,1300",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no browser session: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Self {
            driver,
            client,
            _profile: profile,
        }
    }

    /// Ends the session (the browser exits), then chromedriver.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
