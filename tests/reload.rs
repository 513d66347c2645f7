//! Hot reload end to end: a real `herald serve` child process, its project in a temporary
//! folder of its own (with its own SQLite file beside `herald.yaml`, as a real project keeps
//! it), edited on disk the ways people and tools edit files, while real HTTP clients talk to
//! it and a real HTTP server on loopback ([`HttpSink`]) receives what it sends.
//!
//! What must hold: an edit is in force within a second of the write, whether the file is
//! rewritten in place or replaced by a rename (with an editor's swap and backup files beside
//! it), added in a new folder, moved in or out as a folder, or the whole `workflows/` or
//! `templates/` folder is created or replaced after the server started; without watching,
//! SIGHUP and `POST /api/reload` do it. A broken edit changes nothing and says where it is
//! broken. Runs already waiting finish (on their own version, or on the new one when the
//! workflow asks for `on_update: latest`) and pick up edited templates. Webhook auth, event
//! subscriptions, channels in `herald.yaml` and cron schedules change with the reload; a cron
//! edit switches schedules at the reload with no slot lost or fired twice. Under continuous
//! load, a hundred reloads neither refuse nor lose a single request.
//!
//! Every test starts its own server on a free port, so the tests run in parallel. The server
//! is killed when its guard is dropped, also when the test panics; its log is printed then.

#![cfg(unix)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::HttpSink;

/// The promise: a change on disk is in force within this long of the write.
const RELOAD_LIMIT: Duration = Duration::from_secs(1);
const ADMIN_KEY: &str = "reload-test-admin-key";
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);
/// How many lines of the server's log are kept, to show when a test fails.
const LOG_LINES: usize = 400;
const SIGHUP: i32 = 1;

// ---------------------------------------------------------------------------------------------
// The project on disk
// ---------------------------------------------------------------------------------------------

/// A project folder: `herald.yaml`, `workflows/`, `templates/` and the SQLite file.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A project whose `hook` channel posts every message to `sink`.
    fn new(sink: &HttpSink) -> Project {
        Project::with_channel_url(&sink.url("/messages"))
    }

    fn with_channel_url(url: &str) -> Project {
        let dir = tempfile::tempdir().expect("a temporary project folder");
        let project = Project { dir };
        project.write("herald.yaml", &config(url));
        std::fs::create_dir_all(project.path("workflows")).expect("workflows/");
        std::fs::create_dir_all(project.path("templates")).expect("templates/");
        project
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.path("herald.db").display())
    }

    /// Rewrites a file in place, as `echo text > file` or most editors' plain save do: the
    /// file is truncated, then written, keeping its inode.
    fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir for {rel}: {e}"));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    /// Replaces a file the way vim and many tools save: a swap file beside it, a backup copy
    /// (`name~`, which is itself a valid definition with the same id), vim's `4913` probe,
    /// then the new text written to a temporary file and renamed over the original. The swap
    /// file and the backup are left behind, as while the editor is still open.
    fn replace_by_rename(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        let dir = path.parent().expect("a file in a folder").to_path_buf();
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        std::fs::write(
            dir.join(format!(".{name}.swp")),
            b"b0VIM 9.1\0\0\0\x01garbage: [ this is not yaml",
        )
        .expect("swap file");
        if let Ok(old) = std::fs::read(&path) {
            std::fs::write(dir.join(format!("{name}~")), old).expect("backup file");
        }
        let probe = dir.join("4913");
        std::fs::write(&probe, b"").expect("vim's probe file");
        std::fs::remove_file(&probe).expect("remove vim's probe file");
        let temp = dir.join(format!("{name}.tmp"));
        std::fs::write(&temp, text).expect("temporary file");
        std::fs::rename(&temp, &path).unwrap_or_else(|e| panic!("rename over {rel}: {e}"));
    }

    /// Removes what [`Project::replace_by_rename`] left behind, as the editor does on exit.
    fn editor_exits(&self, rel: &str) {
        let path = self.path(rel);
        let dir = path.parent().expect("a file in a folder");
        let name = path.file_name().expect("a file name").to_string_lossy();
        let _ = std::fs::remove_file(dir.join(format!(".{name}.swp")));
        let _ = std::fs::remove_file(dir.join(format!("{name}~")));
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
    }
}

fn config(channel_url: &str) -> String {
    format!(
        r#"database: sqlite://herald.db
admin:
  api_keys: ["{ADMIN_KEY}"]
channels:
  hook: {{ provider: webhook, url: "{channel_url}", timeout: 5s }}
"#
    )
}

/// A sync webhook workflow answering `text`.
fn greeter(id: &str, path: &str, text: &str) -> String {
    format!(
        r#"kind: workflow
id: {id}
triggers:
  - webhook: {{ path: {path}, respond: sync }}
steps:
  - id: reply
    respond: {{ body: "{text}" }}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// A `herald serve` child process, killed when dropped.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Server {
    /// Starts `herald serve` on the project, watching its files, and returns once it listens.
    fn start(project: &Project) -> Server {
        Server::start_with(project, &[], &[])
    }

    fn start_with(project: &Project, args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("serve")
            .arg("--dir")
            .arg(project.root())
            .arg("--database-url")
            .arg(project.database_url())
            .args(["--listen", "127.0.0.1:0", "--color", "never"])
            .args(args)
            // Diagnostics name files relative to the working folder: `workflows/x.yaml:7:5`.
            .current_dir(project.root())
            .env("RUST_LOG", "warn,herald::reload=info")
            .env("NO_COLOR", "1")
            .env_remove("DATABASE_URL")
            .env_remove("HERALD_TEST_CLOCK")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("herald serve starts");

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = kept.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() == LOG_LINES {
                    log.remove(0);
                }
                log.push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });

        herald::tls::init();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client");
        let mut server = Server {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            http,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.addr = addr.parse().expect("a socket address"),
            Err(_) => panic!(
                "herald serve did not say it is listening within 60 s; its log:\n{}",
                server.log()
            ),
        }
        server
    }

    fn signal(&self, signal: i32) {
        unsafe extern "C" {
            fn kill(pid: i32, signal: i32) -> i32;
        }
        let child = self.child.as_ref().expect("still running");
        let pid = i32::try_from(child.id()).expect("a pid fits an i32");
        // SAFETY: `kill` only sends a signal, to our own child, whose pid stays reserved until
        // it is waited for.
        let rc = unsafe { kill(pid, signal) };
        assert_eq!(rc, 0, "signal {signal} to herald serve");
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs JSON to a webhook; returns the status and the body text.
    async fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// POSTs to an async webhook that must accept; returns the run id.
    async fn start_run(&self, path: &str, body: &Value) -> String {
        let (status, text) = self.post(path, body).await;
        assert_eq!(status, 202, "POST {path} {body} was not accepted: {text}");
        let v: Value = serde_json::from_str(&text).expect("a JSON answer");
        v["run_id"].as_str().expect("a run id").to_owned()
    }

    async fn health(&self) -> Value {
        self.http
            .get(self.url("/health"))
            .send()
            .await
            .expect("GET /health")
            .json()
            .await
            .expect("/health is JSON")
    }

    /// `GET /health`'s `reload` part: `{ok, at, generation, errors}`.
    async fn reload_status(&self) -> Value {
        self.health().await["reload"].clone()
    }

    async fn generation(&self) -> u64 {
        self.health().await["generation"]
            .as_u64()
            .expect("a generation")
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.clone(), self.url(path))
            .header("x-api-key", ADMIN_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn run(&self, id: &str) -> Value {
        let (status, body) = self
            .admin(reqwest::Method::GET, &format!("/api/runs/{id}"), None)
            .await;
        assert_eq!(status, 200, "GET /api/runs/{id}: {body}");
        body["run"].clone()
    }

    /// The current version hash of each definition, from the admin API.
    async fn versions(&self) -> BTreeMap<String, String> {
        let (status, body) = self
            .admin(reqwest::Method::GET, "/api/definitions", None)
            .await;
        assert_eq!(status, 200, "GET /api/definitions: {body}");
        body["definitions"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    d["version"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits until `/health` reports a generation above `above`; returns the whole health
    /// document and how long after `since` it was seen. Panics after `limit`.
    ///
    /// The top-level `generation` is the one in force. (`reload.generation` is written just
    /// after the swap, so a `/health` read between the two shows the new generation with the
    /// previous attempt's `reload`.)
    async fn wait_for_generation(
        &self,
        above: u64,
        since: Instant,
        limit: Duration,
        what: &str,
    ) -> (Value, Duration) {
        poll(since, limit, async || {
            let health = self.health().await;
            let generation = health["generation"].as_u64().unwrap_or(0);
            if generation > above {
                Ok(health)
            } else {
                Err(format!(
                    "generation still {generation}, reload {}",
                    health["reload"]
                ))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: no reload was installed: {e}\n{}", self.log()))
    }

    /// Polls a webhook until `want` accepts its answer; returns when that was, after `since`.
    async fn wait_for_answer(
        &self,
        path: &str,
        since: Instant,
        limit: Duration,
        what: &str,
        want: impl Fn(u16, &str) -> bool,
    ) -> Duration {
        poll(since, limit, async || {
            let (status, text) = self.post(path, &json!({})).await;
            if want(status, &text) {
                Ok(())
            } else {
                Err(format!("POST {path} answered {status} {text}"))
            }
        })
        .await
        .map(|((), at)| at)
        .unwrap_or_else(|e| panic!("{what}: {e}\n--- server log ---\n{}", self.log()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of herald serve ---\n{}", self.log());
        }
    }
}

/// Calls `probe` every [`POLL`] until it returns `Ok`, and returns its value with the time
/// since `since` at which the probe that succeeded had finished, so a caller that compares it
/// with a limit does not count in its favour the time the probe itself took. Gives up, with
/// the last probe's error, once a probe finishes after `limit`.
async fn poll<T>(
    since: Instant,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    loop {
        let result = probe().await;
        let at = since.elapsed();
        match result {
            Ok(v) => return Ok((v, at)),
            Err(last) if at > limit => return Err(format!("still not so after {at:?}: {last}")),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Asserts that something seen `at` after the change (a write, a signal) is within
/// [`RELOAD_LIMIT`], and reports how long it took.
fn assert_in_time(at: Duration, what: &str) {
    assert!(
        at <= RELOAD_LIMIT,
        "{what}: seen {at:?} after the change, the limit is {RELOAD_LIMIT:?}"
    );
    eprintln!("{what}: in force {} ms after the change", at.as_millis());
}

/// The bodies the sink received for recipient `to`, in order.
fn bodies_for(sink: &HttpSink, to: &str) -> Vec<String> {
    sink.requests()
        .iter()
        .filter(|r| r.field("to") == Some(to))
        .map(|r| r.field("body").unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the sink holds a message for each recipient; panics after `timeout`.
async fn wait_for_recipients(sink: &HttpSink, to: &[&str], timeout: Duration, server: &Server) {
    let since = Instant::now();
    let missing = poll(since, timeout, async || {
        let missing: Vec<&&str> = to
            .iter()
            .filter(|t| bodies_for(sink, t).is_empty())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no message yet for {missing:?}"))
        }
    })
    .await;
    if let Err(e) = missing {
        panic!(
            "{e}; the sink has {:?}\n--- server log ---\n{}",
            sink.requests()
                .iter()
                .map(|r| (
                    r.field("to").map(str::to_owned),
                    r.field("body").map(str::to_owned)
                ))
                .collect::<Vec<_>>(),
            server.log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_edit_is_in_force_within_a_second() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 1"),
    );
    let server = Server::start(&project);
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 1".to_owned())
    );
    let generation = server.generation().await;

    // The answer changes.
    let written = Instant::now();
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 2"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/greet",
            written,
            RELOAD_LIMIT,
            "the new reply",
            |s, t| s == 200 && t == "hello from version 2",
        )
        .await;
    assert_in_time(at, "in-place edit of a reply");
    // And stays changed: no request goes back to the old version.
    for _ in 0..20 {
        assert_eq!(
            server.post("/hooks/greet", &json!({})).await,
            (200, "hello from version 2".to_owned()),
            "a request after the reload was answered by the old version"
        );
    }
    let reload = server.reload_status().await;
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(
        reload["generation"].as_u64().unwrap() > generation,
        "the reload did not count: {reload}"
    );

    // The path changes: the old one is gone, the new one answers.
    let written = Instant::now();
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/welcome", "hello from version 3"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/welcome",
            written,
            RELOAD_LIMIT,
            "the new path",
            |s, t| s == 200 && t == "hello from version 3",
        )
        .await;
    assert_in_time(at, "in-place edit of a webhook path");
    let (status, text) = server.post("/hooks/greet", &json!({})).await;
    assert_eq!(status, 404, "the old path still answers: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_over_the_file_is_in_force_and_editor_files_are_ignored() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 1"),
    );
    let server = Server::start(&project);
    let generation = server.generation().await;

    // Every answer while the editor saves must come from one version or the other: the file
    // is never missing, and neither the backup nor the swap file is read.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let watcher = {
        let (stop, seen, http, url) = (
            stop.clone(),
            seen.clone(),
            server.http.clone(),
            server.url("/hooks/greet"),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let answer = match http.post(&url).json(&json!({})).send().await {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                seen.lock().unwrap().push(answer);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let written = Instant::now();
    project.replace_by_rename(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 2"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/greet",
            written,
            RELOAD_LIMIT,
            "the renamed-in version",
            |s, t| s == 200 && t == "hello from version 2",
        )
        .await;
    assert_in_time(at, "write-to-temp-then-rename");
    // The swap file and the backup stay while the editor is open: they must not be read
    // (the backup would be a second definition with the same id, the swap file is not YAML).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reload = server.reload_status().await;
    assert_eq!(
        reload["ok"], true,
        "editor files beside the definition broke the reload: {reload}"
    );
    assert!(reload["generation"].as_u64().unwrap() > generation);

    // The editor exits and removes them; nothing changes.
    project.editor_exits("workflows/greet.yaml");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let reload = server.reload_status().await;
    assert_eq!(reload["ok"], true, "{reload}");
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 2".to_owned())
    );

    let seen = seen.lock().unwrap().clone();
    let first_new = seen
        .iter()
        .position(|(_, t)| t == "hello from version 2")
        .expect("the watcher saw the new version");
    for (i, (status, text)) in seen.iter().enumerate() {
        let want = if i < first_new {
            "hello from version 1"
        } else {
            "hello from version 2"
        };
        assert!(
            *status == 200 && text == want,
            "answer {i} of {} while saving was {status} {text:?}, expected {want:?}",
            seen.len()
        );
    }
    eprintln!("{} answers while saving, none wrong", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_watching_an_edit_waits_for_sighup_or_the_api() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 1"),
    );
    let server = Server::start_with(&project, &["--no-watch"], &[]);
    let generation = server.generation().await;

    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 2"),
    );
    // Proving that nothing happens takes waiting: several times the usual reload time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 1".to_owned()),
        "--no-watch still reloaded on a file change"
    );
    assert_eq!(server.generation().await, generation);

    let signalled = Instant::now();
    server.signal(SIGHUP);
    let at = server
        .wait_for_answer("/hooks/greet", signalled, RELOAD_LIMIT, "SIGHUP", |s, t| {
            s == 200 && t == "hello from version 2"
        })
        .await;
    assert_in_time(at, "SIGHUP reload");

    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 3"),
    );
    let (status, body) = server
        .admin(reqwest::Method::POST, "/api/reload", None)
        .await;
    assert_eq!(status, 200, "POST /api/reload: {body}");
    assert_eq!(body["reload"]["ok"], true, "{body}");
    assert_eq!(
        body["reload"]["generation"].as_u64(),
        Some(generation + 2),
        "{body}"
    );
    // The reload is in force when the API answers.
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 3".to_owned())
    );

    // A refused reload through the API says why, with 422, and changes nothing.
    project.write(
        "workflows/greet.yaml",
        "kind: workflow\nid: greet\nsteps: []\n",
    );
    let (status, body) = server
        .admin(reqwest::Method::POST, "/api/reload", None)
        .await;
    assert_eq!(status, 422, "POST /api/reload of a broken project: {body}");
    assert_eq!(body["reload"]["ok"], false, "{body}");
    assert!(
        body["reload"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.starts_with("workflows/greet.yaml:3:")),
        "the error does not name the file and line: {body}"
    );
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 3".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_keeps_the_old_version_and_says_where_it_is_broken() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 1"),
    );
    let server = Server::start(&project);
    let generation = server.generation().await;

    // A misspelt key on line 7, column 5.
    let broken = greeter("greet", "/hooks/greet", "hello from version 2")
        .replace("    respond:", "    respnd:");
    let (line, col) = broken
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("respnd").map(|c| (i + 1, c + 1)))
        .unwrap();
    assert_eq!((line, col), (7, 5));
    let written = Instant::now();
    project.write("workflows/greet.yaml", &broken);
    let (reload, at) = poll(written, RELOAD_LIMIT, async || {
        let reload = server.reload_status().await;
        if reload["ok"] == false {
            Ok(reload)
        } else {
            Err(format!("reload still {reload}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the broken edit was not reported: {e}\n{}", server.log()));
    assert_in_time(at, "a broken edit reported in /health");
    let errors: Vec<&str> = reload["errors"]
        .as_array()
        .expect("a list of errors")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let place = format!("workflows/greet.yaml:{line}:{col}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{place}: error:")) && e.contains("respnd")),
        "no error names {place}: {errors:?}"
    );
    assert_eq!(
        reload["generation"].as_u64(),
        Some(generation),
        "a refused reload must not count as a generation: {reload}"
    );
    assert_eq!(server.generation().await, generation);
    // The old version is still in force.
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 1".to_owned()),
        "the broken edit replaced the working version"
    );

    // Fixed: in force, and the errors are gone.
    let written = Instant::now();
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 2"),
    );
    let (_, at) = server
        .wait_for_generation(generation, written, RELOAD_LIMIT, "the fixed file")
        .await;
    assert_in_time(at, "the fix reloaded");
    let reload = server.reload_status().await;
    assert_eq!(reload["ok"], true, "{reload}");
    assert_eq!(reload["errors"], json!([]), "{reload}");
    assert_eq!(
        server.post("/hooks/greet", &json!({})).await,
        (200, "hello from version 2".to_owned())
    );
}

const DRIP: &str = r#"kind: workflow
id: drip
triggers:
  - webhook: { path: /hooks/drip }
steps:
  - id: note
    set: { n: "{{ body.n }}" }
  - id: pause
    wait: 3s
  - id: nudge
    send: { channel: hook, to: "lead-{{ vars.n }}@example.com", body: "message {{ vars.n }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_workflow_stops_answering_but_its_waiting_runs_finish() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write("workflows/drip.yaml", DRIP);
    let server = Server::start(&project);

    let mut runs = Vec::new();
    for n in 0..3 {
        runs.push(server.start_run("/hooks/drip", &json!({"n": n})).await);
    }
    for id in &runs {
        assert_eq!(server.run(id).await["status"], "waiting", "run {id}");
    }

    let written = Instant::now();
    project.remove("workflows/drip.yaml");
    let at = server
        .wait_for_answer(
            "/hooks/drip",
            written,
            RELOAD_LIMIT,
            "the deleted webhook",
            |s, _| s == 404,
        )
        .await;
    assert_in_time(at, "a deleted workflow's webhook answers 404");
    assert!(
        sink.requests().is_empty(),
        "the runs did not wait long enough for this test to mean anything"
    );
    assert!(
        server.versions().await.is_empty(),
        "the deleted workflow is still listed"
    );

    // The runs that were waiting finish on the version they started on.
    let recipients: Vec<String> = (0..3).map(|n| format!("lead-{n}@example.com")).collect();
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    wait_for_recipients(&sink, &recipients, Duration::from_secs(20), &server).await;
    for (n, id) in runs.iter().enumerate() {
        assert_eq!(
            bodies_for(&sink, &format!("lead-{n}@example.com")),
            vec![format!("message {n}")]
        );
        let deliveries: Vec<_> = sink
            .requests()
            .into_iter()
            .filter(|r| r.idempotency_key() == Some(&format!("{id}:nudge")))
            .collect();
        assert_eq!(deliveries.len(), 1, "run {id}'s message");
    }
    let since = Instant::now();
    for id in &runs {
        poll(since, Duration::from_secs(10), async || {
            let run = server.run(id).await;
            if run["status"] == "completed" {
                Ok(())
            } else {
                Err(format!("run {id} is {}", run["status"]))
            }
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_new_subfolder_is_picked_up_and_watched() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello"),
    );
    let server = Server::start(&project);

    // Two levels of folders that did not exist when the server started.
    let written = Instant::now();
    project.write(
        "workflows/teams/emea/welcome.yaml",
        &greeter("welcome", "/hooks/welcome", "welcome v1"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/welcome",
            written,
            RELOAD_LIMIT,
            "the new folder's file",
            |s, t| s == 200 && t == "welcome v1",
        )
        .await;
    assert_in_time(at, "a file in a new subfolder");

    // The new folder is watched from now on: an edit there, and a second file there.
    let written = Instant::now();
    project.write(
        "workflows/teams/emea/welcome.yaml",
        &greeter("welcome", "/hooks/welcome", "welcome v2"),
    );
    project.write(
        "workflows/teams/emea/goodbye.yaml",
        &greeter("goodbye", "/hooks/goodbye", "goodbye"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/welcome",
            written,
            RELOAD_LIMIT,
            "an edit in the new folder",
            |s, t| s == 200 && t == "welcome v2",
        )
        .await;
    assert_in_time(at, "an edit in the new subfolder");
    let at = server
        .wait_for_answer(
            "/hooks/goodbye",
            written,
            RELOAD_LIMIT,
            "a second file in the new folder",
            |s, t| s == 200 && t == "goodbye",
        )
        .await;
    assert_in_time(at, "a second file in the new subfolder");
    assert_eq!(server.reload_status().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_moved_in_and_out_of_workflows_is_picked_up() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello"),
    );
    // A release prepared beside the project, in a folder whose name has a dot, as release
    // and date folders do.
    project.write(
        "staging/release-2.1/quote.yaml",
        &greeter("quote", "/hooks/quote", "quote v2.1"),
    );
    let server = Server::start(&project);

    let written = Instant::now();
    std::fs::rename(
        project.path("staging/release-2.1"),
        project.path("workflows/release-2.1"),
    )
    .unwrap();
    let at = server
        .wait_for_answer(
            "/hooks/quote",
            written,
            RELOAD_LIMIT,
            "a folder moved into workflows/",
            |s, t| s == 200 && t == "quote v2.1",
        )
        .await;
    assert_in_time(at, "a folder moved into workflows/");

    // The moved-in folder is watched: an edit inside it is in force too.
    let written = Instant::now();
    project.write(
        "workflows/release-2.1/quote.yaml",
        &greeter("quote", "/hooks/quote", "quote v2.1.1"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/quote",
            written,
            RELOAD_LIMIT,
            "an edit in the moved-in folder",
            |s, t| s == 200 && t == "quote v2.1.1",
        )
        .await;
    assert_in_time(at, "an edit in a moved-in folder");

    // Moved out again: its workflow is gone.
    let written = Instant::now();
    std::fs::rename(
        project.path("workflows/release-2.1"),
        project.path("staging/release-2.1"),
    )
    .unwrap();
    let at = server
        .wait_for_answer(
            "/hooks/quote",
            written,
            RELOAD_LIMIT,
            "a folder moved out of workflows/",
            |s, _| s == 404,
        )
        .await;
    assert_in_time(at, "a folder moved out of workflows/");
    assert_eq!(server.reload_status().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflows_folder_deleted_and_created_again_is_still_watched() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 1"),
    );
    let server = Server::start(&project);

    // As a branch switch or a deploy that replaces the folder does.
    let written = Instant::now();
    std::fs::remove_dir_all(project.path("workflows")).unwrap();
    let at = server
        .wait_for_answer(
            "/hooks/greet",
            written,
            RELOAD_LIMIT,
            "the folder removed",
            |s, _| s == 404,
        )
        .await;
    assert_in_time(at, "the workflows folder removed");

    let written = Instant::now();
    project.write(
        "workflows/greet.yaml",
        &greeter("greet", "/hooks/greet", "hello from version 2"),
    );
    let at = server
        .wait_for_answer(
            "/hooks/greet",
            written,
            RELOAD_LIMIT,
            "the folder created again",
            |s, t| s == 200 && t == "hello from version 2",
        )
        .await;
    assert_in_time(at, "the workflows folder created again");

    // The new folder is watched like the old one was.
    for version in 3..=4 {
        let written = Instant::now();
        let text = format!("hello from version {version}");
        project.write(
            "workflows/greet.yaml",
            &greeter("greet", "/hooks/greet", &text),
        );
        let at = server
            .wait_for_answer(
                "/hooks/greet",
                written,
                RELOAD_LIMIT,
                "an edit in the new folder",
                |s, t| s == 200 && t == text,
            )
            .await;
        assert_in_time(at, "an edit in the created-again workflows folder");
    }
}

/// Starts a run of an async webhook workflow that sends one message at once, and returns the
/// body of that message.
async fn message_of(server: &Server, sink: &HttpSink, path: &str) -> String {
    let run = server.start_run(path, &json!({})).await;
    let since = Instant::now();
    poll(since, Duration::from_secs(10), async || {
        sink.requests()
            .iter()
            .find(|r| r.idempotency_key().is_some_and(|k| k.starts_with(&run)))
            .map(|r| r.field("body").unwrap_or_default().to_owned())
            .ok_or_else(|| format!("no message from run {run}"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()))
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_folder_created_after_start_is_watched() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    std::fs::remove_dir(project.path("templates")).unwrap();
    let note = |send: &str| {
        format!(
            r#"kind: workflow
id: note
triggers:
  - webhook: {{ path: /hooks/note }}
steps:
  - id: tell
    send: {{ channel: hook, to: ops@example.com, {send} }}
"#
        )
    };
    project.write("workflows/note.yaml", &note(r#"body: "inline note""#));
    let server = Server::start(&project);
    assert_eq!(
        message_of(&server, &sink, "/hooks/note").await,
        "inline note"
    );

    // The project gets templates: the folder, a template, then the workflow that uses it.
    let written = Instant::now();
    project.write("templates/note.txt.j2", "note from template one");
    project.write("workflows/note.yaml", &note("template: note.txt.j2"));
    let (_, at) = poll(written, RELOAD_LIMIT, async || {
        let body = message_of(&server, &sink, "/hooks/note").await;
        if body == "note from template one" {
            Ok(())
        } else {
            Err(format!("message {body:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the new template was not used: {e}\n{}", server.log()));
    assert_in_time(at, "a new templates folder and a workflow using it");

    // Edits in the new folder are seen like edits in a folder that was there from the start.
    for version in ["two", "three"] {
        let written = Instant::now();
        let text = format!("note from template {version}");
        project.write("templates/note.txt.j2", &text);
        let (_, at) = poll(written, RELOAD_LIMIT, async || {
            let body = message_of(&server, &sink, "/hooks/note").await;
            if body == text {
                Ok(())
            } else {
                Err(format!("message {body:?}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("the template edit was not seen: {e}\n{}", server.log()));
        assert_in_time(
            at,
            "a template edit in a templates folder created after start",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_edit_reaches_a_run_that_is_already_waiting() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/mailer.yaml",
        r#"kind: workflow
id: mailer
triggers:
  - webhook: { path: /hooks/mailer }
steps:
  - id: pause
    wait: 2s
  - id: nudge
    send: { channel: hook, to: "{{ body.email }}", template: emails/nudge.txt.j2 }
"#,
    );
    project.write(
        "templates/emails/nudge.txt.j2",
        "Old copy for {{ body.email }}",
    );
    let server = Server::start(&project);
    let generation = server.generation().await;

    let run = server
        .start_run("/hooks/mailer", &json!({"email": "ada@example.com"}))
        .await;
    let written = Instant::now();
    project.write(
        "templates/emails/nudge.txt.j2",
        "New copy for {{ body.email }}",
    );
    let (_, at) = server
        .wait_for_generation(generation, written, RELOAD_LIMIT, "the template edit")
        .await;
    assert_in_time(at, "a template edit reloaded");
    let reload = server.reload_status().await;
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(
        sink.requests().is_empty(),
        "the message went out before the edit was in force; the test proves nothing"
    );
    assert_eq!(server.run(&run).await["status"], "waiting");

    wait_for_recipients(
        &sink,
        &["ada@example.com"],
        Duration::from_secs(15),
        &server,
    )
    .await;
    assert_eq!(
        bodies_for(&sink, "ada@example.com"),
        vec!["New copy for ada@example.com"],
        "the waiting run sent the old template"
    );
}

/// A workflow that waits, then sends a body naming its version.
fn versioned(id: &str, on_update: &str, pause_id: &str, version: &str) -> String {
    format!(
        r#"kind: workflow
id: {id}
on_update: {on_update}
triggers:
  - webhook: {{ path: /hooks/{id} }}
steps:
  - id: {pause_id}
    wait: 2s
  - id: nudge
    send: {{ channel: hook, to: "{id}@example.com", body: "{id}: version {version}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runs_follow_on_update_latest_or_stay_pinned() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "workflows/follow.yaml",
        &versioned("follow", "latest", "pause", "one"),
    );
    project.write(
        "workflows/pinned.yaml",
        &versioned("pinned", "pinned", "pause", "one"),
    );
    // `latest`, but the new version renames the step the run waits in.
    project.write(
        "workflows/renamed.yaml",
        &versioned("renamed", "latest", "pause", "one"),
    );
    let server = Server::start(&project);
    let generation = server.generation().await;
    let v1 = server.versions().await;

    let mut runs = BTreeMap::new();
    for id in ["follow", "pinned", "renamed"] {
        runs.insert(
            id,
            server.start_run(&format!("/hooks/{id}"), &json!({})).await,
        );
    }

    let written = Instant::now();
    project.write(
        "workflows/follow.yaml",
        &versioned("follow", "latest", "pause", "two"),
    );
    project.write(
        "workflows/pinned.yaml",
        &versioned("pinned", "pinned", "pause", "two"),
    );
    project.write(
        "workflows/renamed.yaml",
        &versioned("renamed", "latest", "hold", "two"),
    );
    let (_, at) = poll(written, RELOAD_LIMIT, async || {
        let now = server.versions().await;
        if ["follow", "pinned", "renamed"]
            .iter()
            .all(|id| now.get(*id) != v1.get(*id))
        {
            Ok(())
        } else {
            Err(format!("versions still {now:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the new versions were not installed: {e}\n{}", server.log()));
    assert_in_time(at, "three edited workflows reloaded");
    assert!(server.generation().await > generation);
    assert!(
        sink.requests().is_empty(),
        "a message went out before the edit was in force; the test proves nothing"
    );
    let v2 = server.versions().await;

    wait_for_recipients(
        &sink,
        &[
            "follow@example.com",
            "pinned@example.com",
            "renamed@example.com",
        ],
        Duration::from_secs(15),
        &server,
    )
    .await;
    assert_eq!(
        bodies_for(&sink, "follow@example.com"),
        vec!["follow: version two"],
        "an on_update: latest run must move to the new version at its next step"
    );
    assert_eq!(
        bodies_for(&sink, "pinned@example.com"),
        vec!["pinned: version one"],
        "a pinned run must finish on its own version"
    );
    assert_eq!(
        bodies_for(&sink, "renamed@example.com"),
        vec!["renamed: version one"],
        "a latest run whose step is gone from the new version must stay on its own"
    );
    assert_eq!(server.run(&runs["follow"]).await["version"], v2["follow"]);
    assert_eq!(server.run(&runs["pinned"]).await["version"], v1["pinned"]);
    assert_eq!(server.run(&runs["renamed"]).await["version"], v1["renamed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_webhook_auth_applies_to_the_next_request() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write(
        "secrets.env",
        "OLD_TOKEN=old-token-value\nNEW_TOKEN=new-token-value\n",
    );
    let guarded = |var: &str| {
        format!(
            r#"kind: workflow
id: guarded
triggers:
  - webhook:
      path: /hooks/guarded
      auth: {{ bearer: {{ token: "${{env:{var}}}" }} }}
steps:
  - id: note
    set: {{ ok: "yes" }}
"#
        )
    };
    project.write("workflows/guarded.yaml", &guarded("OLD_TOKEN"));
    let env_file = project.path("secrets.env");
    let server = Server::start_with(&project, &["--env-file", env_file.to_str().unwrap()], &[]);
    let call = async |token: &str| {
        server
            .http
            .post(server.url("/hooks/guarded"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("POST /hooks/guarded")
            .status()
            .as_u16()
    };
    assert_eq!(call("old-token-value").await, 202);
    assert_eq!(call("new-token-value").await, 401);

    let written = Instant::now();
    project.write("workflows/guarded.yaml", &guarded("NEW_TOKEN"));
    let (_, at) = poll(written, RELOAD_LIMIT, async || {
        match call("new-token-value").await {
            202 => Ok(()),
            other => Err(format!("the new token got {other}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_in_time(at, "a changed webhook token");
    assert_eq!(
        call("old-token-value").await,
        401,
        "the old token still works after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_event_subscription_starts_nothing_more() {
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    let listener = |event: &str| {
        format!(
            r#"kind: workflow
id: welcome
triggers:
  - event: {{ name: {event} }}
steps:
  - id: hello
    send: {{ channel: hook, to: "{{{{ event.key }}}}", body: "welcome ({event})" }}
"#
        )
    };
    project.write("workflows/welcome.yaml", &listener("lead.created"));
    let server = Server::start(&project);
    let generation = server.generation().await;
    let emit = async |name: &str, key: &str| {
        let (status, body) = server
            .admin(
                reqwest::Method::POST,
                "/api/events",
                Some(json!({"name": name, "key": key, "data": {}})),
            )
            .await;
        assert_eq!(status, 202, "POST /api/events: {body}");
    };
    let runs_of_welcome = async || {
        let (status, body) = server
            .admin(
                reqwest::Method::GET,
                "/api/runs?workflow=welcome&limit=500",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["runs"].as_array().unwrap().len()
    };
    emit("lead.created", "first@example.com").await;
    wait_for_recipients(
        &sink,
        &["first@example.com"],
        Duration::from_secs(10),
        &server,
    )
    .await;
    assert_eq!(runs_of_welcome().await, 1);

    let written = Instant::now();
    project.write("workflows/welcome.yaml", &listener("lead.qualified"));
    let (_, at) = server
        .wait_for_generation(generation, written, RELOAD_LIMIT, "the new subscription")
        .await;
    assert_in_time(at, "an event subscription changed");

    // Subscribers are found when the event is recorded, so the runs exist when the emit
    // returns: no waiting is needed to see that nothing started.
    emit("lead.created", "second@example.com").await;
    assert_eq!(
        runs_of_welcome().await,
        1,
        "the removed subscription still started a run"
    );
    emit("lead.qualified", "third@example.com").await;
    wait_for_recipients(
        &sink,
        &["third@example.com"],
        Duration::from_secs(10),
        &server,
    )
    .await;
    assert_eq!(runs_of_welcome().await, 2);
    assert!(bodies_for(&sink, "second@example.com").is_empty());
    assert_eq!(
        bodies_for(&sink, "third@example.com"),
        vec!["welcome (lead.qualified)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_edit_moves_a_channel_to_a_new_url() {
    let old_sink = HttpSink::start().await;
    let new_sink = HttpSink::start().await;
    let project = Project::new(&old_sink);
    project.write(
        "workflows/ping.yaml",
        r#"kind: workflow
id: ping
triggers:
  - webhook: { path: /hooks/ping }
steps:
  - id: tell
    send: { channel: hook, to: "{{ body.to }}", body: "ping" }
"#,
    );
    let server = Server::start(&project);
    let generation = server.generation().await;
    server
        .start_run("/hooks/ping", &json!({"to": "before@example.com"}))
        .await;
    wait_for_recipients(
        &old_sink,
        &["before@example.com"],
        Duration::from_secs(10),
        &server,
    )
    .await;

    let written = Instant::now();
    project.replace_by_rename("herald.yaml", &config(&new_sink.url("/messages")));
    let (_, at) = server
        .wait_for_generation(generation, written, RELOAD_LIMIT, "the config edit")
        .await;
    assert_in_time(at, "herald.yaml edited");
    let reload = server.reload_status().await;
    assert_eq!(reload["ok"], true, "{reload}");
    server
        .start_run("/hooks/ping", &json!({"to": "after@example.com"}))
        .await;
    wait_for_recipients(
        &new_sink,
        &["after@example.com"],
        Duration::from_secs(10),
        &server,
    )
    .await;
    assert!(
        bodies_for(&old_sink, "after@example.com").is_empty(),
        "a message went to the old URL after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_edit_switches_at_the_reload_without_gaps_or_repeats() {
    const MINUTE: i64 = 60_000;
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    let ticker = |schedule: &str, word: &str| {
        format!(
            r#"kind: workflow
id: ticker
triggers:
  - cron: {{ schedule: "{schedule}", catch_up: all, overlap: allow }}
steps:
  - id: tell
    send: {{ channel: hook, to: ops@example.com, body: "{word} {{{{ trigger.slot }}}}" }}
"#
        )
    };
    project.write("workflows/ticker.yaml", &ticker("* * * * *", "every"));
    // Sixty times real time: a per-minute schedule fires every real second.
    let origin = jiff::Timestamp::now().as_millisecond();
    let clock = format!("speed=60,origin={origin},start=2026-11-02T15:00:30Z");
    let server = Server::start_with(&project, &[], &[("HERALD_TEST_CLOCK", &clock)]);
    let generation = server.generation().await;
    let fires = async || -> Vec<(String, i64, String)> {
        let (status, body) = server
            .admin(reqwest::Method::GET, "/api/cron/ticker", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let mut fires: Vec<(String, i64, String)> = body["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["trigger_key"].as_str().unwrap().to_owned(),
                    f["slot"].as_i64().unwrap(),
                    f["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        fires.sort_by_key(|f| f.1);
        fires
    };

    // A few slots on the first schedule.
    poll(Instant::now(), Duration::from_secs(20), async || {
        let n = fires().await.len();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} slots"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the first schedule did not fire: {e}\n{}", server.log()));

    let written = Instant::now();
    project.write("workflows/ticker.yaml", &ticker("*/2 * * * *", "even"));
    let (_, at) = server
        .wait_for_generation(generation, written, RELOAD_LIMIT, "the schedule edit")
        .await;
    assert_in_time(at, "a cron schedule edit");
    let new_key = "*/2 * * * * @ UTC";
    poll(Instant::now(), Duration::from_secs(20), async || {
        let n = fires().await.iter().filter(|f| f.0 == new_key).count();
        if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} slots on the new schedule"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the new schedule did not fire: {e}\n{}", server.log()));

    let fires = fires().await;
    let old: Vec<i64> = fires
        .iter()
        .filter(|f| f.0 != new_key)
        .map(|f| f.1)
        .collect();
    let new: Vec<i64> = fires
        .iter()
        .filter(|f| f.0 == new_key)
        .map(|f| f.1)
        .collect();
    assert!(
        fires.iter().all(|f| f.2 == "fired"),
        "every slot should have fired (catch_up: all, overlap: allow): {fires:?}"
    );
    let distinct: BTreeSet<i64> = fires.iter().map(|f| f.1).collect();
    assert_eq!(distinct.len(), fires.len(), "a slot fired twice: {fires:?}");
    assert!(
        old.windows(2).all(|w| w[1] - w[0] == MINUTE),
        "the old schedule skipped a minute: {old:?}"
    );
    assert!(
        new.windows(2).all(|w| w[1] - w[0] == 2 * MINUTE),
        "the new schedule skipped a slot: {new:?}"
    );
    assert!(
        new.iter().all(|s| s % (2 * MINUTE) == 0),
        "a slot on the new schedule is not an even minute: {new:?}"
    );
    let (last_old, first_new) = (*old.last().unwrap(), new[0]);
    assert!(
        first_new > last_old && first_new - last_old <= 2 * MINUTE,
        "the switch left a gap or an overlap: old schedule up to {last_old}, new from {first_new}"
    );

    // Every fired slot sent its message once, with the body of its own version.
    let since = Instant::now();
    poll(since, Duration::from_secs(10), async || {
        let n = bodies_for(&sink, "ops@example.com").len();
        if n >= fires.len() {
            Ok(())
        } else {
            Err(format!("{n} of {} messages", fires.len()))
        }
    })
    .await
    .unwrap();
    let bodies: BTreeSet<String> = bodies_for(&sink, "ops@example.com").into_iter().collect();
    let slot_text = |ms: i64| {
        let ts = jiff::Timestamp::from_millisecond(ms).unwrap();
        ts.strftime("%Y-%m-%dT%H:%M:%S").to_string()
    };
    for s in &old {
        assert!(
            bodies
                .iter()
                .any(|b| b.starts_with(&format!("every {}", slot_text(*s)))),
            "no `every` message for slot {}: {bodies:?}",
            slot_text(*s)
        );
    }
    for s in &new {
        assert!(
            bodies
                .iter()
                .any(|b| b.starts_with(&format!("even {}", slot_text(*s)))),
            "no `even` message for slot {}: {bodies:?}",
            slot_text(*s)
        );
    }
}

/// Two valid versions of the loaded workflow, told apart by their description and by what
/// their runs record.
fn load_version(letter: &str) -> String {
    format!(
        r#"kind: workflow
id: load
description: version {letter}
triggers:
  - webhook: {{ path: /hooks/load }}
steps:
  - id: mark
    set: {{ version: "{letter}", n: "{{{{ body.n }}}}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_reloads_under_load_refuse_and_lose_nothing() {
    const REWRITES: usize = 100;
    const CLIENTS: usize = 4;
    let sink = HttpSink::start().await;
    let project = Project::new(&sink);
    project.write("workflows/load.yaml", &load_version("a"));
    let server = Server::start(&project);

    // The load: a few clients posting continuously, each answer recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (stop, accepted, failures) = (stop.clone(), accepted.clone(), failures.clone());
        let (http, url) = (server.http.clone(), server.url("/hooks/load"));
        clients.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let tag = format!("{c}-{n}");
                match http.post(&url).json(&json!({"n": tag})).send().await {
                    Ok(r) if r.status().as_u16() == 202 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        match v["run_id"].as_str() {
                            Some(id) => accepted.lock().unwrap().push(id.to_owned()),
                            None => failures
                                .lock()
                                .unwrap()
                                .push(format!("{tag}: 202 without a run id: {v}")),
                        }
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{tag}: {status} {text}"));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{tag}: {e}")),
                }
            }
        });
    }

    // The rewrites: alternately version b and a, in place or by rename, each followed by
    // waiting for /health's generation or by POST /api/reload; after each, the version on
    // disk must be the one in force.
    let mut latencies = Vec::new();
    let started = Instant::now();
    for i in 0..REWRITES {
        let letter = if i % 2 == 0 { "b" } else { "a" };
        let text = load_version(letter);
        let before = server.generation().await;
        let written = Instant::now();
        if i % 4 < 2 {
            project.write("workflows/load.yaml", &text);
        } else {
            project.replace_by_rename("workflows/load.yaml", &text);
        }
        if i % 2 == 0 {
            let (_, at) = server
                .wait_for_generation(
                    before,
                    written,
                    Duration::from_secs(5),
                    &format!("rewrite {i}"),
                )
                .await;
            latencies.push(at);
        } else {
            let (status, body) = server
                .admin(reqwest::Method::POST, "/api/reload", None)
                .await;
            assert_eq!(status, 200, "POST /api/reload after rewrite {i}: {body}");
            assert_eq!(body["reload"]["ok"], true, "{body}");
            assert!(
                body["reload"]["generation"].as_u64().unwrap() > before,
                "POST /api/reload after rewrite {i} did not install a new generation: {body}"
            );
        }
        // Whichever reload got there, the file's version is the one in force (a reload that
        // read the file while it was being truncated may have been refused meanwhile).
        let want = format!("version {letter}");
        poll(written, Duration::from_secs(5), async || {
            let (_, defs) = server
                .admin(reqwest::Method::GET, "/api/definitions", None)
                .await;
            let description = defs["definitions"][0]["description"].clone();
            if description == want.as_str() {
                Ok(())
            } else {
                Err(format!("description {description}"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("rewrite {i} to {want} not in force: {e}\n{}", server.log()));
    }
    let rewriting = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    while let Some(r) = clients.join_next().await {
        r.expect("a client panicked");
    }
    project.editor_exits("workflows/load.yaml");

    let failures = failures.lock().unwrap().clone();
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the reloads, first ones: {:?}",
        failures.len(),
        failures.len() + accepted.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        accepted.len() >= REWRITES,
        "only {} requests in {rewriting:?}: the load was too light to mean anything",
        accepted.len()
    );

    // Every accepted run exists, finished, and recorded the version it ran as.
    let ids: Vec<String> = accepted.clone();
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let by_version = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let queue = Arc::new(Mutex::new(ids));
    let mut checkers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (queue, problems, by_version) = (queue.clone(), problems.clone(), by_version.clone());
        let (http, base) = (server.http.clone(), server.url("/api/runs/"));
        checkers.spawn(async move {
            loop {
                let Some(id) = queue.lock().unwrap().pop() else {
                    return;
                };
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let r = http
                        .get(format!("{base}{id}"))
                        .header("x-api-key", ADMIN_KEY)
                        .send()
                        .await;
                    let (status, body) = match r {
                        Ok(r) => (
                            r.status().as_u16(),
                            r.json::<Value>().await.unwrap_or(Value::Null),
                        ),
                        Err(e) => (0, json!(e.to_string())),
                    };
                    let run = &body["run"];
                    if status == 200 && run["status"] == "completed" {
                        let version = run["context"]["vars"]["version"].as_str().unwrap_or("?");
                        *by_version
                            .lock()
                            .unwrap()
                            .entry(version.to_owned())
                            .or_default() += 1;
                        break;
                    }
                    if status != 200 || Instant::now() > deadline {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("run {id}: {status} {body}"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
    while let Some(r) = checkers.join_next().await {
        r.expect("a checker panicked");
    }
    let problems = problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "{} accepted runs are missing or unfinished, first ones: {:?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    let by_version = by_version.lock().unwrap().clone();
    assert!(
        by_version.keys().all(|v| v == "a" || v == "b"),
        "runs recorded versions {by_version:?}"
    );
    assert!(
        by_version.contains_key("a") && by_version.contains_key("b"),
        "runs ran on one version only: {by_version:?}"
    );

    // And the admin API's list has no failed run either.
    let (status, body) = server
        .admin(
            reqwest::Method::GET,
            "/api/runs?workflow=load&status=failed&limit=500",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["runs"], json!([]), "failed runs: {body}");

    latencies.sort();
    eprintln!(
        "{} requests accepted during {REWRITES} rewrites in {:.1} s, none failed; runs by version {by_version:?}; reload seen in /health after median {} ms, max {} ms",
        accepted.len(),
        rewriting.as_secs_f64(),
        latencies[latencies.len() / 2].as_millis(),
        latencies.last().unwrap().as_millis()
    );
}

// ---------------------------------------------------------------------------------------------
// Channel checks in /health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_lists_each_channels_check_and_stays_ok_when_one_is_down() {
    let sink = HttpSink::start().await;
    let down_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    let project = Project::with_channel_url(&sink.url("/messages"));
    project.write(
        "herald.yaml",
        &format!(
            "{}  crm: {{ provider: webhook, url: \"http://127.0.0.1:{down_port}/crm\", timeout: 2s }}\n",
            config(&sink.url("/messages"))
        ),
    );
    let server = Server::start(&project);

    let (health, _) = poll(Instant::now(), Duration::from_secs(10), async || {
        let health = server.health().await;
        if health["channels"]["crm"].is_object() {
            Ok(health)
        } else {
            Err(health.to_string())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));

    assert_eq!(health["status"], "ok", "{health}");
    let channels = &health["channels"];
    assert_eq!(channels["hook"]["ok"], true, "{health}");
    assert_eq!(channels["hook"]["provider"], "webhook", "{health}");
    assert_eq!(channels["log"]["ok"], true, "{health}");
    assert_eq!(channels["crm"]["ok"], false, "{health}");
    let error = channels["crm"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{down_port}")),
        "{health}"
    );
    assert!(
        sink.requests().is_empty(),
        "a check sent a request: {:?}",
        sink.requests()
    );
    let (_, _) = poll(Instant::now(), Duration::from_secs(5), async || {
        let log = server.log();
        if log.contains("channel cannot reach its provider") && log.contains("crm") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("the failing channel was not logged: {e}"));
}
