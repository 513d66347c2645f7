//! `herald test`, as an operator runs it: the binary on a project with test files. Every kind
//! of expectation has a case that passes and one that fails, and a failing one must fail with
//! the right message at the right `file:line:col`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

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

const CONFIG: &str = "channels:\n  email: { provider: log }\n  sms: { provider: log }\n";

/// A webhook that answers synchronously, calls an API, branches, sends, waits a day and sends
/// again: something for every expectation to look at.
const ORDER: &str = r#"
kind: workflow
id: order
triggers:
  - webhook: { path: /orders, respond: sync }
steps:
  - id: customer
    upsert_contact:
      email: "{{ body.email }}"
      first_name: "{{ body.name }}"
      attributes: { plan: "{{ body.plan }}" }
  - id: price
    http: { method: GET, url: "https://prices.example.com/plans/{{ body.plan }}" }
  - id: total
    set: { amount: "{{ steps.price.output.body.amount }}" }
  - id: vip
    if: vars.amount > 100
    then:
      - id: vip_note
        send: { channel: email, to: "{{ contact.email }}", subject: "Welcome, VIP", body: "Thanks {{ contact.first_name }}" }
    else:
      - id: plain_note
        send: { channel: email, to: "{{ contact.email }}", subject: "Welcome", body: "Thanks {{ contact.first_name }}" }
  - id: answer
    respond: { status: 201, body: { amount: "{{ vars.amount }}" } }
  - id: later
    wait: 1d
  - id: follow
    send: { channel: sms, to: "+13035550100", body: "Day two for {{ contact.first_name }}" }
"#;

/// Each case's name says whether it must pass; a failing one marks the line its failure is
/// reported at with `# at` and the text the message must hold.
const TESTS: &str = r#"kind: test
target: order
given:
  http:
    - { method: GET, url: "https://prices.example.com/plans/gold", json: { amount: 250 } }
    - { method: GET, url: "https://prices.example.com/plans/*", json: { amount: 20 } }
cases:
  - name: pass sent
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      sent:
        - { channel: email, to: ada@example.com, subject: "Welcome, VIP", body: "Thanks Ada" }
        - { channel: sms, body: { matches: "^Day two" } }
  - name: fail sent
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      sent:
        - { channel: email, subject: "Welcome, Ada" }   # at: expected a message like this one
  - name: pass not sent
    trigger: { webhook: { body: { email: bo@example.com, name: Bo, plan: basic } } }
    expect:
      not_sent: [{ subject: { contains: VIP } }]
  - name: fail not sent
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      not_sent: [{ subject: { contains: VIP } }]   # at: must not be sent was sent
  - name: pass timeline
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    timeline:
      - after: 23h
      - expect: { sent_count: 1, not_sent: [{ channel: sms }], status: waiting }
      - after: 1h
      - expect: { sent_count: 2 }
  - name: fail timeline
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    timeline:
      - after: 23h
      - expect: { sent_count: 2 }   # at: expected 2 messages sent, found 1
  - name: pass status
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { status: completed }
  - name: fail status
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { status: failed }   # at: expected the run to be failed, but it is completed
  - name: pass vars
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { vars: { amount: 250 } }
  - name: fail vars
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: basic } } }
    expect: { vars: { amount: 250 } }   # at: `vars.amount` is 20, expected 250
  - name: pass outputs
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { outputs: { price: { status: 200, body: { amount: 250 } } } }
  - name: fail outputs
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      outputs:
        price: { status: 404 }   # at: `steps.price.output.status` is 200, expected 404
  - name: pass taken and skipped
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { taken: [vip_note, follow], skipped: [plain_note] }
  - name: fail taken
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      taken: [plain_note]   # at: step `plain_note` was not taken
  - name: fail skipped
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      skipped: [vip_note]   # at: step `vip_note` was taken, but it should have been skipped
  - name: pass contacts
    given:
      contacts: [{ email: ada@example.com, last_name: Lovelace, attributes: { since: 2020 } }]
    trigger: { webhook: { body: { email: Ada@Example.com, name: Ada, plan: gold } } }
    expect:
      contacts:
        - { email: ada@example.com, first_name: Ada, last_name: Lovelace, attributes: { plan: gold, since: 2020 } }
  - name: fail contacts
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      contacts:
        - { email: ada@example.com, attributes: { plan: silver } }   # at: `contact.attributes.plan` is "gold", expected "silver"
  - name: pass response
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { response: { status: 201, body: { amount: 250 } } }
  - name: fail response
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect:
      response: { status: 200 }   # at: expected status 200, the webhook was answered 201
  - name: pass golden
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: gold } } }
    expect: { golden: golden/ada.txt }
  - name: fail golden
    trigger: { webhook: { body: { email: ada@example.com, name: Ada, plan: basic } } }
    expect: { golden: golden/ada.txt }   # at: the messages differ from the golden file
"#;

/// Where a case's failure must be reported, and what its message must hold, from the `# at:`
/// comments in [`TESTS`].
fn marked(name: &str) -> (String, String) {
    let lines: Vec<&str> = TESTS.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no case {name}"));
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        if l.trim_start().starts_with("- name:") {
            break;
        }
        if let Some((_, text)) = l.split_once("# at: ") {
            return (
                format!("tests/order.yaml:{}:", i + 1),
                text.trim().to_owned(),
            );
        }
    }
    panic!("case {name} has no `# at:` mark")
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(dir.path(), "workflows/order.yaml", ORDER);
    write(dir.path(), "tests/order.yaml", TESTS);
    dir
}

fn json_run(dir: &Path, extra: &[&str]) -> (Output, Value) {
    let out = herald(dir)
        .args(["test", "--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(&out)));
    (out, doc)
}

#[test]
fn every_expectation_passes_and_fails_where_it_should() {
    let dir = project();
    // The golden file is written first, from the passing case, as an operator would.
    let out = herald(dir.path())
        .args(["test", "--update", "--filter", "pass golden"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let golden = std::fs::read_to_string(dir.path().join("tests/golden/ada.txt")).unwrap();
    assert!(
        golden.contains("--- email to ada@example.com at +0s (step vip_note)"),
        "{golden}"
    );
    assert!(
        golden.contains("--- sms to +13035550100 at +1d (step follow)"),
        "{golden}"
    );

    let (out, doc) = json_run(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), TESTS.matches("- name: ").count());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let failures = case["failures"].as_array().unwrap();
        if name.starts_with("pass") {
            assert!(failures.is_empty(), "{name} should pass: {failures:#?}");
            continue;
        }
        let (at, text) = marked(name);
        assert_eq!(failures.len(), 1, "{name}: {failures:#?}");
        let f = &failures[0];
        assert!(
            f["at"].as_str().unwrap().starts_with(&at),
            "{name}: reported at {}, expected {at}",
            f["at"]
        );
        assert!(
            f["message"].as_str().unwrap().contains(&text),
            "{name}: {} does not say {text:?}",
            f["message"]
        );
    }
    assert_eq!(
        doc["failed"].as_u64().unwrap() as usize,
        cases
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("fail"))
            .count()
    );
}

#[test]
fn pretty_output_has_a_line_per_case_a_diff_and_a_count() {
    let dir = project();
    let out = herald(dir.path())
        .args(["test", "--filter", "sent"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stdout.contains("test tests/order.yaml::pass sent ... ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("test tests/order.yaml::fail sent ... FAILED"),
        "{stdout}"
    );
    // The expected message against the closest one sent, field by field.
    assert!(stdout.contains("  - subject: Welcome, Ada"), "{stdout}");
    assert!(stdout.contains("  + subject: Welcome, VIP"), "{stdout}");
    assert!(
        !stdout.contains("\x1b["),
        "no colour off a terminal: {stdout}"
    );
    assert!(
        stdout.contains("test result: FAILED. 2 passed, 2 failed"),
        "{stdout}"
    );
}

/// An `http` step with no canned answer fails the case, says which call and what to add, and
/// the network is never reached: the URL points at a listener that counts connections.
#[test]
fn an_http_call_without_a_canned_answer_fails_and_never_reaches_the_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(
        dir.path(),
        "workflows/ping.yaml",
        &format!(
            "kind: workflow\nid: ping\nsteps:\n  - id: call\n    http: {{ method: POST, url: \"http://127.0.0.1:{port}/hook\" }}\n"
        ),
    );
    write(
        dir.path(),
        "tests/ping.yaml",
        "kind: test\ntarget: ping\ncases:\n  - name: calls out\n    trigger: { call: {} }\n",
    );
    let (out, doc) = json_run(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let f = &doc["cases"][0]["failures"][0];
    assert_eq!(f["at"], "tests/ping.yaml:4:11");
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("POST http://127.0.0.1:{port}/hook"))
            && message.contains("no canned answer")
            && message.contains("given.http"),
        "{message}"
    );
    let mut conn = listener.accept();
    if let Ok((s, _)) = &mut conn {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    assert!(conn.is_err(), "the listener was connected to");
}

#[test]
fn a_webhook_with_auth_is_signed_for_the_test_and_checked_as_serve_checks_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "herald.yaml", CONFIG);
    write(
        dir.path(),
        "workflows/signed.yaml",
        "kind: workflow\nid: signed\ntriggers:\n  - webhook:\n      path: /hooks/signed\n      auth: { hmac_sha256: { header: X-Signature, secret: \"${env:HOOK_SECRET}\", prefix: \"sha256=\" } }\nsteps:\n  - id: ok\n    set: { ok: true }\n",
    );
    write(
        dir.path(),
        "tests/signed.yaml",
        "kind: test\ntarget: signed\ncases:\n  - name: signed by the runner\n    trigger: { webhook: { body: { n: 1 } } }\n    expect: { status: completed }\n  - name: a forged signature is refused\n    trigger: { webhook: { body: { n: 2 }, headers: { X-Signature: \"sha256=00ff\" } } }\n    expect: { status: completed }\n",
    );
    let (out, doc) = json_run(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let cases = doc["cases"].as_array().unwrap();
    let by_name = |n: &str| cases.iter().find(|c| c["name"] == n).unwrap().clone();
    assert_eq!(
        by_name("signed by the runner")["failures"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "{doc:#}"
    );
    let refused = by_name("a forged signature is refused");
    let message = refused["failures"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("`hmac_sha256` auth refused the request"),
        "{doc:#}"
    );
}

#[test]
fn junit_output_is_well_formed() {
    use quick_xml::events::Event;
    let dir = project();
    let out = herald(dir.path())
        .args(["test", "--format", "junit", "--filter", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let xml = String::from_utf8(out.stdout).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let mut stack: Vec<String> = Vec::new();
    let (mut suites, mut cases, mut failures) = (0, 0, Vec::new());
    loop {
        match reader.read_event().unwrap_or_else(|e| panic!("{e}: {xml}")) {
            Event::Start(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                match name.as_str() {
                    "testsuite" => {
                        assert_eq!(stack.last().map(String::as_str), Some("testsuites"));
                        suites += 1;
                    }
                    "testcase" => {
                        assert_eq!(stack.last().map(String::as_str), Some("testsuite"));
                        cases += 1;
                    }
                    "failure" => {
                        assert_eq!(stack.last().map(String::as_str), Some("testcase"));
                        let message = e
                            .try_get_attribute("message")
                            .unwrap()
                            .unwrap()
                            .normalized_value(quick_xml::XmlVersion::Explicit1_0)
                            .unwrap()
                            .into_owned();
                        failures.push(message);
                    }
                    _ => {}
                }
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                if name == "testcase" {
                    assert_eq!(stack.last().map(String::as_str), Some("testsuite"));
                    cases += 1;
                }
            }
            Event::End(e) => {
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                assert_eq!(stack.pop(), Some(name));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty());
    assert_eq!((suites, cases), (1, 2), "{xml}");
    assert_eq!(failures.len(), 1, "{xml}");
    assert!(
        failures[0].starts_with("tests/order.yaml:")
            && failures[0].contains("expected the run to be failed"),
        "{failures:?}"
    );
}

/// A test file is checked like a definition: a wrong step id is reported at its position by
/// `herald validate` and `herald test`, with a suggestion, and nothing runs.
#[test]
fn test_files_are_validated_with_positions() {
    let dir = project();
    write(
        dir.path(),
        "tests/broken.yaml",
        "kind: test\ntarget: order\ncases:\n  - name: typo\n    trigger: { webhook: {} }\n    expect: { taken: [vip_nte] }\n    timeline: [{ aftr: 1d }]\n",
    );
    let out = herald(dir.path()).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/broken.yaml:7:18: error: unknown field `aftr`"),
        "{stderr}"
    );
    let out = herald(dir.path()).arg("test").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no test was run"), "{stderr}");

    write(
        dir.path(),
        "tests/broken.yaml",
        "kind: test\ntarget: order\ncases:\n  - name: typo\n    trigger: { webhook: {} }\n    expect: { taken: [vip_nte] }\n",
    );
    let out = herald(dir.path()).arg("validate").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tests/broken.yaml:6:23: error: workflow `order` has no step `vip_nte`")
            && stderr.contains("did you mean `vip_note`?"),
        "{stderr}"
    );
}

#[test]
fn an_alert_case_takes_no_trigger_and_a_workflow_case_needs_one() {
    let dir = project();
    write(
        dir.path(),
        "workflows/logins.yaml",
        "kind: alert\nid: logins\nsource:\n  events: { name: admin.login, window: 15m, aggregate: count }\ncondition: \"> 1\"\n",
    );
    write(
        dir.path(),
        "tests/broken.yaml",
        "kind: test\ncases:\n  - name: alert with a trigger\n    target: logins\n    trigger: { call: {} }\n  - name: workflow without one\n    target: order\n    expect: { alerts: [] }\n  - name: alert with a run's expectation\n    target: logins\n    expect: { status: completed }\n",
    );
    let out = herald(dir.path()).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "tests/broken.yaml:5:14: error: alert `logins` has no trigger: it reads events",
        "tests/broken.yaml:6:11: error: this case has no `trigger`",
        "tests/broken.yaml:8:23: error: `alerts` is for a case whose target is an alert",
        "tests/broken.yaml:11:13: error: alert `logins` starts no run",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }

    // A case that expects the wrong thing fails with the instances it found.
    write(
        dir.path(),
        "tests/broken.yaml",
        "kind: test\ntarget: logins\ncases:\n  - name: two logins fire\n    timeline:\n      - event: { name: admin.login }\n      - event: { name: admin.login }\n      - after: 30s\n    expect:\n      alerts: [{ labels: { alertname: logins }, value: 3 }]\n",
    );
    let out = herald(dir.path())
        .args(["test", "--filter", "broken"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("alert `logins` does not have the instances expected")
            && stdout.contains("-   value: 3")
            && stdout.contains("+   value: 2"),
        "{stdout}"
    );
}

/// The shipped examples' tests pass, and so does the one `herald init` writes.
#[test]
fn shipped_and_init_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = herald(root).arg("test").output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let tmp = tempfile::tempdir().unwrap();
    let out = herald(tmp.path()).args(["init", "p"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let out = herald(tmp.path()).args(["test", "p"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed, 0 failed"),
        "{}",
        show(&out)
    );
}

/// `herald test` answers an `ai_reply` with a canned answer from `given.http`, so a transcript
/// test can script the model: a reply that says "bad credit" never reaches the person.
#[test]
fn an_ai_reply_is_answered_from_given_http_and_its_guardrails_hold() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "herald.yaml",
        &format!(
            "{CONFIG}ai:\n  llm: {{ base_url: \"https://llm.example.com/v1\", model: small }}\n"
        ),
    );
    write(
        dir.path(),
        "workflows/cathy.yaml",
        r#"
kind: conversation
id: cathy
channels: [sms]
start:
  - any_message: true
steps:
  - id: answer
    ai_reply:
      provider: llm
      system: "You are Cathy. Be kind about credit."
      never_say: ["bad credit"]
      fallback: "Whatever your credit history, we can look at options together."
"#,
    );
    write(
        dir.path(),
        "tests/cathy.yaml",
        r#"
kind: test
target: cathy
cases:
  - name: the model says "bad credit" twice and the person sees the fallback
    given:
      http:
        - method: POST
          url: "https://llm.example.com/v1/chat/completions"
          json: { choices: [ { message: { role: assistant, content: "Don't worry about your BAD   credit!" } } ] }
    trigger:
      message: { channel: sms, from: "+13035550131", text: "My credit is a mess" }
    expect:
      status: completed
      sent:
        - body: "Whatever your credit history, we can look at options together."
      not_sent:
        - body: { matches: "(?i)bad\\s+credit" }
  - name: a kind answer is sent as it is
    given:
      http:
        - method: POST
          url: "https://llm.example.com/v1/chat/completions"
          json: { choices: [ { message: { role: assistant, content: "We work with every kind of history." } } ] }
    trigger:
      message: { channel: sms, from: "+13035550132", text: "Can you help?" }
    expect:
      sent_count: 1
      sent:
        - body: "We work with every kind of history."
  - name: a provider error says the fallback
    given:
      http:
        - { method: POST, url: "https://llm.example.com/v1/chat/completions", status: 500, json: { error: { message: down } } }
    trigger:
      message: { channel: sms, from: "+13035550133", text: "Hello?" }
    expect:
      sent:
        - body: { contains: "Whatever your credit history" }
"#,
    );
    let out = herald(dir.path()).arg("test").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("3 passed, 0 failed"),
        "{}",
        show(&out)
    );
}
