//! `herald run`, as an operator runs it: the binary on a project folder, with `http` steps
//! calling a real HTTP server on loopback.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{HttpSink, Reply};

fn herald(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(cwd)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    cmd
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
}

fn show(out: &Output) -> String {
    format!(
        "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `herald` off the async runtime's threads: the sink answers on its own thread.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("herald runs"))
        .await
        .unwrap()
}

const CONFIG: &str = "channels:\n  email: { provider: log }\n  sms: { provider: log }\n";

/// Each `http` step is made once, and a slow call does not move the clock by a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_http_step_is_called_once() {
    let sink = HttpSink::start().await;
    sink.respond_by_default(Reply::ok().after(Duration::from_millis(50)));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(
        dir.path(),
        "workflows/sync.yaml",
        &format!(
            r#"
kind: workflow
id: sync
steps:
  - id: first
    http: {{ method: POST, url: "{url}/one", json: {{ n: 1 }} }}
  - id: second
    http: {{ method: POST, url: "{url}/two", json: {{ n: 2 }} }}
"#,
            url = sink.url("")
        ),
    );
    let mut cmd = herald(dir.path());
    cmd.args(["run", "sync", "--color", "never"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let paths: Vec<String> = sink.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two"], "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| l.contains(" http ")) {
        assert!(
            line.trim_start().starts_with("+0s"),
            "no clock jump while a call is in flight: {line}\n{}",
            show(&out)
        );
    }
}

/// Webhook headers, query and path parameters, seeded contacts, and the runs the workflow
/// starts (a `call` child and an event subscriber), printed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_takes_request_parts_and_contacts_and_shows_its_child_runs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(
        dir.path(),
        "workflows/intake.yaml",
        r#"
kind: workflow
id: intake
triggers:
  - webhook: { path: "/hooks/{client}/lead" }
steps:
  - id: facts
    set:
      client: "{{ params.client }}"
      source: "{{ query.source }}"
      key: "{{ headers['x-forwarder-key'] }}"
  - id: welcome
    call: { workflow: welcome, input: { email: "{{ body.email }}" } }
  - id: announce
    emit: { event: lead.created, data: { email: "{{ body.email }}" } }
"#,
    );
    write(
        dir.path(),
        "workflows/welcome.yaml",
        r#"
kind: workflow
id: welcome
steps:
  - id: hello
    send: { channel: email, to: "{{ input.email }}", subject: Welcome, body: "Hello!" }
"#,
    );
    write(
        dir.path(),
        "workflows/crm.yaml",
        r#"
kind: workflow
id: crm
triggers:
  - event: { name: lead.created }
steps:
  - id: record
    set: { email: "{{ event.data.email }}" }
"#,
    );
    write(dir.path(), "lead.json", r#"{"email": "ada@example.com"}"#);
    write(
        dir.path(),
        "contacts.yaml",
        "- { email: ada@example.com, first_name: Ada, status: unsubscribed }\n",
    );
    let mut cmd = herald(dir.path());
    cmd.args([
        "run",
        "intake",
        "--input",
        "lead.json",
        "--param",
        "client=acme",
        "--query",
        "source=ads",
        "--header",
        "X-Forwarder-Key: k3y",
        "--contacts",
        "contacts.yaml",
        "--color",
        "never",
    ]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r#"{"client":"acme","key":"k3y","source":"ads"}"#)
            || stdout.contains(r#""client":"acme""#) && stdout.contains(r#""key":"k3y""#),
        "{}",
        show(&out)
    );
    assert!(stdout.contains("called run"), "{}", show(&out));
    assert!(
        stdout.contains("event-started run"),
        "the subscriber is shown: {}",
        show(&out)
    );
    // The seeded contact unsubscribed, so the welcome (marketing) is suppressed.
    assert!(stdout.contains("suppressed"), "{}", show(&out));
    assert!(!stdout.contains("message via email"), "{}", show(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_parts_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(
        dir.path(),
        "workflows/a.yaml",
        "kind: workflow\nid: a\nsteps:\n  - set: { x: 1 }\n",
    );
    let mut cmd = herald(dir.path());
    cmd.args(["run", "a", "--query", "nonsense"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name=value"),
        "{}",
        show(&out)
    );
    write(dir.path(), "contacts.json", r#"[{"name": "Ada"}]"#);
    let mut cmd = herald(dir.path());
    cmd.args(["run", "a", "--contacts", "contacts.json"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("contact 1: unknown contact field `name`"),
        "{}",
        show(&out)
    );
}
