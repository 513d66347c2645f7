//! Hot-reload latency of `herald serve`: the time from writing a changed workflow file to the
//! first request that the new version answers.
//!
//! Run: `cargo bench --bench reload` (release build).
//!
//! For 10 and for 1,000 definitions it generates a project in a temporary folder (each workflow
//! has a sync webhook on its own path and a realistic set of steps, in the shape
//! `benches/validate.rs` generates), starts the release `herald serve` on SQLite, and then, many
//! times over, rewrites one workflow so that its sync reply carries a new version marker. Half
//! the writes are in place (truncate and write), half write a hidden temporary file and rename
//! it over the old one, as editors and `git checkout` do. Right after each write a keep-alive
//! HTTP client calls that workflow's webhook every 2 ms until the reply carries the new marker.
//!
//! It prints p50, p99 and max of that latency, and of the reload itself as the server logs it
//! (`reloaded ... ms=`: load, validate, compile and install, without the file watcher's
//! debounce), and checks through `GET /health` that each write led to exactly one reload.
//!
//! Knobs: `HERALD_BENCH_ITERS` (measured writes per size, default 100), `HERALD_BENCH_WARMUP`
//! (unmeasured writes first, default 5), `HERALD_BENCH_SIZES` (default `10,1000`), and
//! `HERALD_BENCH_BASELINE`: the path of another `herald` binary (a build of an earlier commit,
//! say) to measure first at each size, so a before/after comparison shares one run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "bench-token";
const POLL_EVERY: Duration = Duration::from_millis(2);
const GIVE_UP: Duration = Duration::from_secs(20);

/// One workflow: a sync webhook answering with `marker`, then (for real leads, which carry an
/// e-mail) a contact upsert, a wait, an e-mail through a template, a wait for a reply, a branch
/// and a loop of API calls. The benchmark's requests carry no e-mail, so their runs end after
/// the reply and do not pile up as waiting runs.
fn workflow(i: usize, marker: &str) -> String {
    format!(
        r#"# yaml-language-server: $schema=../schemas/workflow.json
kind: workflow
id: generated-{i}
description: Generated workflow number {i}.
triggers:
  - webhook:
      path: /hooks/leads/{i}
      respond: sync
      timeout: 10s
      auth:
        bearer: {{ token: "${{env:BENCH_TOKEN}}" }}
steps:
  - id: greet
    set:
      greeting: "Hi {{{{ body.first_name | default('there') | first_name }}}}"
      count: "{{{{ (vars.count | default(0)) + 1 }}}}"
  - id: reply
    respond:
      body:
        version: "{marker}"
        greeting: "{{{{ vars.greeting }}}}"
  - id: lead
    if: body.email is defined
    then:
      - id: remember
        upsert_contact:
          email: "{{{{ body.email }}}}"
          first_name: "{{{{ body.first_name | default('') }}}}"
          status: new
      - id: pause
        wait: 30m
      - id: nudge
        send:
          channel: email
          to: "{{{{ contact.email }}}}"
          subject: "{{{{ vars.greeting }}}}, your pre-approval is waiting"
          template: emails/nudge.html.j2
      - id: await_reply
        wait_for:
          event: lead.replied
          key: "{{{{ contact.email }}}}"
          timeout: 2d
      - id: check
        if: steps.await_reply.output.timed_out and contact.status == "new"
        then:
          - id: sms
            send:
              channel: sms
              to: "{{{{ contact.phone }}}}"
              body: "{{{{ vars.greeting }}}}! Reply STOP to opt out."
        else:
          - id: done
            upsert_contact:
              email: "{{{{ contact.email }}}}"
              status: contacted
      - id: each
        for_each:
          items: body.items | default([])
          as: item
          steps:
            - id: post_item
              http:
                method: POST
                url: "https://crm.example/items/{{{{ item.id }}}}"
                json: {{ name: "{{{{ item.name }}}}" }}
"#
    )
}

fn workflow_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("workflows/wf-{i:04}.yaml"))
}

fn make_project(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("workflows")).unwrap();
    std::fs::create_dir_all(dir.join("templates/emails")).unwrap();
    std::fs::write(
        dir.join("herald.yaml"),
        "channels:\n  email: { provider: log }\n  sms: { provider: log }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("templates/emails/nudge.html.j2"),
        "<p>{{ vars.greeting }},</p><p>your pre-approval is waiting.</p>\n",
    )
    .unwrap();
    for i in 0..n {
        std::fs::write(workflow_path(dir, i), workflow(i, "v0")).unwrap();
    }
}

/// A minimal HTTP/1.1 client on one keep-alive connection: no pool, no async runtime, so the
/// time it adds to a poll is a loopback round trip.
struct Http {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    fn connect(addr: &str) -> Http {
        let stream = TcpStream::connect(addr).expect("connect to herald serve");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Http {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            host: addr.to_owned(),
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).expect("send request");
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).expect("status");
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body).expect("body");
        } else if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).expect("chunk size");
                let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).expect("chunk");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// What the server logged about reloads, from its JSON log lines.
#[derive(Default)]
struct ServerLog {
    /// (generation, ms) of every successful reload.
    reloads: Vec<(u64, u64)>,
    failures: Vec<String>,
}

struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<ServerLog>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &Path, dir: &Path) -> (Server, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("herald.db").display()))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--log-format")
        .arg("json")
        .env("BENCH_TOKEN", TOKEN)
        .env("RUST_LOG", "info,sqlx=warn,hyper=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herald serve");
    let log = Arc::new(Mutex::new(ServerLog::default()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                eprintln!("server: {line}");
                continue;
            };
            let message = v["message"].as_str().unwrap_or_default();
            let mut log = sink.lock().unwrap();
            if message == "reloaded" {
                log.reloads
                    .push((v["generation"].as_u64().unwrap(), v["ms"].as_u64().unwrap()));
            } else if v["level"] == "ERROR" || v["level"] == "WARN" {
                log.failures.push(line.clone());
                eprintln!("server: {line}");
            }
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(a) = line.trim().strip_prefix("listening on http://") {
            addr = Some(a.to_owned());
            break;
        }
        line.clear();
    }
    let addr = addr.expect("herald serve did not report its address");
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (Server { child, addr, log }, started.elapsed())
}

fn generation(http: &mut Http) -> u64 {
    let (status, body) = http.request("GET", "/health", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["reload"]["generation"]
        .as_u64()
        .or_else(|| v["generation"].as_u64())
        .unwrap()
}

fn version(http: &mut Http, i: usize) -> String {
    let (status, body) = http.request("POST", &format!("/hooks/leads/{i}"), "{}");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("reply {body}"));
    v["version"].as_str().unwrap_or_default().to_owned()
}

struct Sample {
    latency: Duration,
    reload_ms: u64,
    polls: usize,
}

/// Writes workflow `i` with `marker` and waits for its webhook to answer with it.
fn one_write(
    dir: &Path,
    i: usize,
    marker: &str,
    rename: bool,
    http: &mut Http,
    server: &Server,
) -> Sample {
    let before = generation(http);
    let reloads_before = server.log.lock().unwrap().reloads.len();
    let text = workflow(i, marker);
    let path = workflow_path(dir, i);
    let t0 = Instant::now();
    if rename {
        let tmp = dir.join(format!("workflows/.wf-{i:04}.yaml.tmp"));
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    } else {
        std::fs::write(&path, &text).unwrap();
    }
    let mut polls = 0;
    let latency = loop {
        polls += 1;
        if version(http, i) == marker {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < GIVE_UP,
            "workflow {i} still answers the old version after {GIVE_UP:?}"
        );
        std::thread::sleep(POLL_EVERY);
    };
    // Let the reload's log line arrive, and make sure no second reload follows (a write must
    // lead to exactly one reload, not one per file event).
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.log.lock().unwrap().reloads.len() == reloads_before {
        assert!(Instant::now() < deadline, "no `reloaded` log line");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(150));
    let after = generation(http);
    assert_eq!(
        after,
        before + 1,
        "one write led to {} reloads",
        after - before
    );
    let reload_ms = server
        .log
        .lock()
        .unwrap()
        .reloads
        .iter()
        .find(|(g, _)| *g == after)
        .map(|(_, ms)| *ms)
        .expect("the reload's log line");
    Sample {
        latency,
        reload_ms,
        polls,
    }
}

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A process's resident memory, where `/proc` tells it.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(label: &str, bin: &Path, n: usize, iters: usize, warmup: usize) {
    let tmp = tempfile::Builder::new()
        .prefix("herald-bench-reload-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    make_project(dir, n);
    let (server, startup) = start_server(bin, dir);
    let mut http = Http::connect(&server.addr);
    assert_eq!(version(&mut http, 0), "v0");

    let mut samples = Vec::new();
    for k in 0..warmup + iters {
        // Spread the writes over the set; alternate in-place writes and renames.
        let i = (k * 7919) % n;
        let rename = k % 2 == 1;
        let s = one_write(dir, i, &format!("v{}", k + 1), rename, &mut http, &server);
        if k >= warmup {
            samples.push((s, rename));
        }
    }
    let rss = rss_kib(server.child.id());
    drop(http);
    drop(server);

    let mut lat: Vec<Duration> = samples.iter().map(|(s, _)| s.latency).collect();
    let mut reload: Vec<u64> = samples.iter().map(|(s, _)| s.reload_ms).collect();
    lat.sort();
    reload.sort();
    let by = |rename: bool| {
        let mut v: Vec<Duration> = samples
            .iter()
            .filter(|(_, r)| *r == rename)
            .map(|(s, _)| s.latency)
            .collect();
        v.sort();
        v
    };
    let (inplace, renamed) = (by(false), by(true));
    let polls: usize = samples.iter().map(|(s, _)| s.polls).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}{n:>5} definitions: write → new version serving  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} writes)",
        ms(pct(&lat, 50.0)),
        ms(pct(&lat, 99.0)),
        ms(*lat.last().unwrap()),
        lat.len()
    );
    println!(
        "       in place: p50 {:>6.1} ms  p99 {:>6.1} ms;  temp file + rename: p50 {:>6.1} ms  p99 {:>6.1} ms",
        ms(pct(&inplace, 50.0)),
        ms(pct(&inplace, 99.0)),
        ms(pct(&renamed, 50.0)),
        ms(pct(&renamed, 99.0)),
    );
    println!(
        "       the reload itself (server `reloaded ms=`): p50 {:>4} ms  p99 {:>4} ms  max {:>4} ms",
        pct(&reload, 50.0),
        pct(&reload, 99.0),
        reload.last().unwrap(),
    );
    println!(
        "       startup to listening {:.0} ms;  {:.1} polls per write;  server RSS at the end {}",
        ms(startup),
        polls as f64 / samples.len() as f64,
        rss.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "unknown".into())
    );
}

fn main() {
    let iters = env_usize("HERALD_BENCH_ITERS", 100);
    let warmup = env_usize("HERALD_BENCH_WARMUP", 5);
    let sizes: Vec<usize> = std::env::var("HERALD_BENCH_SIZES")
        .unwrap_or_else(|_| "10,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "reload latency: herald serve (release, SQLite), one workflow rewritten per write, polled every {} ms",
        POLL_EVERY.as_millis()
    );
    println!("reproduce: cargo bench --bench reload");
    let this = PathBuf::from(env!("CARGO_BIN_EXE_herald"));
    let baseline = std::env::var_os("HERALD_BENCH_BASELINE").map(PathBuf::from);
    for n in sizes {
        if let Some(b) = &baseline {
            println!("baseline: {}", b.display());
            run("baseline ", b, n, iters, warmup);
            run("this     ", &this, n, iters, warmup);
        } else {
            run("", &this, n, iters, warmup);
        }
    }
}
