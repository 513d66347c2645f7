//! The `herald` binary, run as an operator would: exit codes and output of `validate`,
//! `init`, `render` and `schema`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// `herald` with the output settings that matter pinned down, run from `cwd`.
fn herald(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(cwd)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("RUST_LOG")
        .env_remove("HERALD_CLI_TEST_TOKEN");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the herald binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("herald exits with a code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything about a run, for assertion messages.
fn show(out: &Output) -> String {
    format!(
        "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a file has a parent folder"))
        .expect("create the folder");
    std::fs::write(&path, text).expect("write the file");
}

const CONFIG: &str = "\
channels:
  email:
    provider: log
  sms:
    provider: log
";

/// A project with three errors in two files.
fn project_with_errors() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temp folder");
    let root = tmp.path();
    write(root, "herald.yaml", CONFIG);
    write(
        root,
        "workflows/application-nudge.yaml",
        "\
kind: workflow
id: application-nudge

triggers:
  - webhook:
      path: /hooks/applications/abandoned
      method: post

steps:
  - id: pause
    wait: 1 hour
  - id: email_nudge
    send:
      channel: email
      to: \"{{ body.email }}\"
      body: Your application is nearly done.
",
    );
    write(
        root,
        "workflows/missed-call-text-back.yaml",
        "\
kind: workflow
id: missed-call-text-back

triggers:
  - webhook:
      path: /hooks/calls/missed

steps:
  - id: text_back
    send:
      channel: text
      to: \"{{ body.from }}\"
      body: Sorry we missed your call!
",
    );
    tmp
}

/// A project whose only problem is a warning: an event nobody listens for.
fn project_with_a_warning() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(tmp.path(), "herald.yaml", CONFIG);
    write(
        tmp.path(),
        "workflows/application-completed.yaml",
        "\
kind: workflow
id: application-completed

triggers:
  - webhook:
      path: /hooks/applications/completed

steps:
  - id: announce
    emit:
      event: application.completed
      key: \"{{ body.application_id }}\"
",
    );
    tmp
}

#[test]
fn validate_lists_every_error_in_every_file_and_exits_1() {
    let tmp = project_with_errors();
    let out = run(herald(tmp.path()).args(["validate", ".", "--color", "never"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let err = stderr(&out);
    for line in [
        "workflows/application-nudge.yaml:7:15: error: `post` is not a valid value for `method`",
        "workflows/application-nudge.yaml:11:11: error: `1 hour` is not a duration",
        "workflows/missed-call-text-back.yaml:11:16: error: channel `text` is not defined in herald.yaml",
    ] {
        assert!(err.contains(line), "missing `{line}` in:\n{}", show(&out));
    }
    // Compiler style: the source line, a caret under the value, and a hint.
    assert!(err.contains("11 |     wait: 1 hour\n"), "{}", show(&out));
    assert!(err.contains("   |           ^^^^^^\n"), "{}", show(&out));
    assert!(
        err.contains("= hint: did you mean `POST`?"),
        "{}",
        show(&out)
    );
    // Sorted by file, then position.
    let first = err
        .find("application-nudge.yaml:7:15")
        .expect("first error");
    let second = err
        .find("application-nudge.yaml:11:11")
        .expect("second error");
    let third = err
        .find("missed-call-text-back.yaml:11:16")
        .expect("third error");
    assert!(first < second && second < third, "{}", show(&out));
    assert!(
        err.contains("failed: 3 errors, 0 warnings in 2 files (2 definition files read)"),
        "{}",
        show(&out)
    );
    assert!(
        !err.contains("\x1b["),
        "--color never must not colour: {}",
        show(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", show(&out));
}

#[test]
fn validate_json_gives_positions_codes_and_messages() {
    let tmp = project_with_errors();
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", show(&out)));
    assert_eq!(doc["ok"], Value::Bool(false));
    assert_eq!(doc["errors"], 3);
    assert_eq!(doc["warnings"], 0);
    assert_eq!(doc["files"], 2);
    let diagnostics = doc["diagnostics"].as_array().expect("a diagnostics list");
    assert_eq!(diagnostics.len(), 3, "{doc:#}");
    for d in diagnostics {
        for field in ["file", "line", "column", "severity", "code", "message"] {
            assert!(!d[field].is_null(), "`{field}` missing from {d}");
        }
    }
    let first = &diagnostics[0];
    assert_eq!(first["file"], "workflows/application-nudge.yaml");
    assert_eq!(first["line"], 7);
    assert_eq!(first["column"], 15);
    assert_eq!(first["severity"], "error");
    assert_eq!(first["code"], "invalid-value");
    assert_eq!(first["message"], "`post` is not a valid value for `method`");
    let codes: Vec<&str> = diagnostics
        .iter()
        .map(|d| d["code"].as_str().expect("a code"))
        .collect();
    assert_eq!(codes, ["invalid-value", "invalid-value", "unknown-channel"]);
}

#[test]
fn warnings_alone_pass_unless_denied() {
    let tmp = project_with_a_warning();
    let out = run(herald(tmp.path()).args(["validate", ".", "--color", "never"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("workflows/application-completed.yaml:11:14: warning: no workflow listens for event `application.completed`"),
        "{}",
        show(&out)
    );
    assert!(
        err.contains("ok: 0 errors, 1 warning in 1 file"),
        "{}",
        show(&out)
    );

    let out =
        run(herald(tmp.path()).args(["validate", ".", "--color", "never", "--deny-warnings"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains("failed: 0 errors, 1 warning"),
        "{}",
        show(&out)
    );
}

#[test]
fn unset_secrets_are_warnings_when_validating() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(tmp.path(), "herald.yaml", CONFIG);
    write(
        tmp.path(),
        "workflows/missed-call-text-back.yaml",
        "\
kind: workflow
id: missed-call-text-back
triggers:
  - webhook:
      path: /hooks/calls/missed
      auth:
        bearer:
          token: ${env:HERALD_CLI_TEST_TOKEN}
steps:
  - send:
      channel: sms
      to: \"{{ body.from }}\"
      body: Sorry we missed your call!
",
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(doc["diagnostics"][0]["code"], "unset-env", "{doc:#}");
    assert_eq!(doc["diagnostics"][0]["severity"], "warning", "{doc:#}");

    let out = run(herald(tmp.path())
        .args(["validate", ".", "--format", "json"])
        .env("HERALD_CLI_TEST_TOKEN", "s3cret"));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(doc["diagnostics"], Value::Array(Vec::new()), "{doc:#}");
    assert!(
        !stdout(&out).contains("s3cret"),
        "a secret must never be printed"
    );
}

#[test]
fn an_unknown_default_region_is_an_error_at_its_setting() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(
        tmp.path(),
        "herald.yaml",
        &format!("{CONFIG}contacts:\n  default_region: XX\n"),
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let region = doc["diagnostics"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["code"] == "unknown-region"))
        .unwrap_or_else(|| panic!("no unknown-region in {doc:#}"));
    assert_eq!(
        (region["line"].as_u64(), region["column"].as_u64()),
        (Some(7), Some(19))
    );

    write(
        tmp.path(),
        "herald.yaml",
        &format!("{CONFIG}contacts:\n  default_region: GB\n"),
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
}

#[test]
fn a_channel_named_like_a_herald_event_is_an_error_at_its_name() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(
        tmp.path(),
        "herald.yaml",
        &format!("{CONFIG}  delivered:\n    provider: log\n"),
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let reserved = doc["diagnostics"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["code"] == "reserved-channel-name"))
        .unwrap_or_else(|| panic!("no reserved-channel-name in {doc:#}"));
    assert_eq!(
        (reserved["line"].as_u64(), reserved["column"].as_u64()),
        (Some(6), Some(3))
    );
}

#[test]
fn channel_policies_are_checked_at_their_place() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(
        tmp.path(),
        "herald.yaml",
        &format!(
            "{CONFIG}  a:\n    provider: log\n    fallback: b\n  b:\n    provider: log\n    fallback: a\n  c:\n    provider: log\n    fallback: emial\n    quiet_hours: {{ start: \"21:00\", end: \"08:00\", timezone: America/Chicgo }}\n"
        ),
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let found: Vec<(String, u64, u64)> = doc["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap_or_default().to_owned(),
                d["line"].as_u64().unwrap_or(0),
                d["column"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let text = show(&out);
    // The cycle is one error, at the first channel's `fallback`.
    assert!(
        found.contains(&("fallback-cycle".into(), 8, 15)),
        "{found:?}\n{text}"
    );
    assert_eq!(
        found.iter().filter(|f| f.0 == "fallback-cycle").count(),
        1,
        "{text}"
    );
    assert!(text.contains("a → b → a"), "{text}");
    assert!(
        found.contains(&("unknown-channel".into(), 14, 15)),
        "{found:?}\n{text}"
    );
    assert!(text.contains("did you mean `email`?"), "{text}");
    assert!(
        found.iter().any(|f| f.0 == "invalid-timezone" && f.1 == 15),
        "{found:?}\n{text}"
    );
    write(
        tmp.path(),
        "herald.yaml",
        &format!("{CONFIG}  d:\n    provider: log\n    rate: {{ messages: 0, per: 1s }}\n"),
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        show(&out).contains("\"line\": 8") && show(&out).contains("\"column\": 23"),
        "a rate of 0 is refused at its value: {}",
        show(&out)
    );
}

#[test]
fn a_whatsapp_send_outside_any_conversation_is_warned_about_the_24_hour_window() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(
        tmp.path(),
        "herald.yaml",
        &format!(
            "{CONFIG}  wa:\n    provider: whatsapp\n    access_token: EAAtoken\n    phone_number_id: \"106540352242922\"\n"
        ),
    );
    write(
        tmp.path(),
        "workflows/nudge.yaml",
        "kind: workflow\nid: nudge\ntriggers:\n  - webhook: { path: /hooks/nudge }\nsteps:\n  - id: text\n    send: { channel: wa, to: \"{{ body.to }}\", body: \"Still interested?\" }\n",
    );
    write(
        tmp.path(),
        "workflows/answer.yaml",
        "kind: workflow\nid: answer\ntriggers:\n  - message: { channel: wa }\nsteps:\n  - id: text\n    send: { channel: wa, to: \"{{ message.from }}\", body: \"Thanks!\" }\n",
    );
    // An approved template is what reaches a person outside the window: no warning.
    write(
        tmp.path(),
        "workflows/reminder.yaml",
        "kind: workflow\nid: reminder\ntriggers:\n  - webhook: { path: /hooks/reminder }\nsteps:\n  - id: text\n    send:\n      channel: wa\n      to: \"{{ body.to }}\"\n      whatsapp_template: { name: application_reminder, language: en_US, body: [\"{{ body.name }}\"] }\n",
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--format", "json"]));
    assert_eq!(
        code(&out),
        0,
        "a warning does not fail validation: {}",
        show(&out)
    );
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let warnings: Vec<&Value> = doc["diagnostics"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|d| d["code"] == "whatsapp-window")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{doc:#}");
    let file = warnings[0]["file"].as_str().unwrap_or_default();
    assert!(file.ends_with("nudge.yaml"), "{doc:#}");
    assert_eq!(warnings[0]["line"].as_u64(), Some(7), "{doc:#}");
}

#[test]
fn a_whatsapp_template_is_checked_offline_where_it_is_written() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(
        tmp.path(),
        "herald.yaml",
        &format!(
            "{CONFIG}  wa:\n    provider: whatsapp\n    access_token: EAAtoken\n    phone_number_id: \"106540352242922\"\n"
        ),
    );
    write(
        tmp.path(),
        "workflows/reminder.yaml",
        r#"kind: workflow
id: reminder
triggers:
  - webhook: { path: /hooks/reminder }
steps:
  - id: on_sms
    send:
      channel: sms
      to: "{{ body.to }}"
      whatsapp_template: { name: application_reminder, language: en_US }
  - id: misspelt
    send:
      channel: wa
      to: "{{ body.to }}"
      whatsapp_template:
        name: Application Reminder
        language: english
        body: ["{{ bdy.name }}", "{{ contact.first_name }}"]
"#,
    );
    let out = run(herald(tmp.path()).args(["validate", ".", "--color", "never"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let err = stderr(&out);
    for expected in [
        "workflows/reminder.yaml:10:7: error: `whatsapp_template` sends a template approved in WhatsApp Manager, but channel `sms` is a log channel",
        "workflows/reminder.yaml:16:15: error: `Application Reminder` is not a WhatsApp template name",
        "workflows/reminder.yaml:17:19: error: `english` is not a WhatsApp language code",
        "workflows/reminder.yaml:18:20: error: unknown variable `bdy` in template",
    ] {
        assert!(err.contains(expected), "missing {expected}\n{}", show(&out));
    }
}

#[test]
fn validate_of_a_missing_folder_exits_2() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    let out = run(herald(tmp.path()).args(["validate", "no-such-project", "--color", "never"]));
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("error: no-such-project does not exist"),
        "{}",
        show(&out)
    );
}

#[test]
fn init_creates_a_valid_project_and_will_not_overwrite_it() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    let out = run(herald(tmp.path()).args(["init", "loans"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(tmp.path().join("loans/herald.yaml").is_file());
    for schema in ["workflow", "config", "conversation", "test"] {
        assert!(
            tmp.path()
                .join(format!("loans/schemas/{schema}.json"))
                .is_file(),
            "the {schema} schema, for editor completion"
        );
    }

    let out = run(herald(tmp.path()).args(["validate", "loans", "--color", "never"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ok: 2 definitions and 1 template are valid"),
        "{}",
        show(&out)
    );
    assert!(
        !err.contains("warning") && !err.contains("error"),
        "{}",
        show(&out)
    );

    let out = run(herald(tmp.path()).args(["validate", "loans", "--format", "json"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(doc["diagnostics"], Value::Array(Vec::new()), "{doc:#}");
    assert_eq!(doc["ok"], Value::Bool(true));

    let before = std::fs::read_to_string(tmp.path().join("loans/herald.yaml")).expect("config");
    let out = run(herald(tmp.path()).args(["init", "loans"]));
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("will not overwrite"),
        "{}",
        show(&out)
    );
    let after = std::fs::read_to_string(tmp.path().join("loans/herald.yaml")).expect("config");
    assert_eq!(before, after, "a refused init must leave the project alone");
}

/// A project with an HTML and a text template, and one that uses a variable it is not given.
fn project_with_templates() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("a temp folder");
    write(tmp.path(), "herald.yaml", CONFIG);
    write(
        tmp.path(),
        "workflows/welcome.yaml",
        "\
kind: workflow
id: welcome
steps:
  - send:
      channel: email
      to: \"{{ input.email }}\"
      template: emails/welcome.html.j2
",
    );
    write(
        tmp.path(),
        "templates/emails/welcome.html.j2",
        "<p>Hi {{ contact.first_name }},</p>\n<p>Thanks for applying.</p>\n",
    );
    write(
        tmp.path(),
        "templates/sms/welcome.txt.j2",
        "Hi {{ contact.first_name }}, thanks for applying.\n",
    );
    write(
        tmp.path(),
        "templates/emails/offer.html.j2",
        "<p>Hi {{ contact.first_name }},</p>\n\n<p>You are approved for {{ offer.amount }}.</p>\n",
    );
    write(
        tmp.path(),
        "data.json",
        r#"{"contact": {"first_name": "Tom & <Jerry>"}}"#,
    );
    tmp
}

#[test]
fn render_escapes_html_templates_only() {
    let tmp = project_with_templates();
    let out = run(herald(tmp.path()).args([
        "render",
        "emails/welcome.html.j2",
        "--data",
        "data.json",
        "--color",
        "never",
    ]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(
        stdout(&out),
        "<p>Hi Tom &amp; &lt;Jerry&gt;,</p>\n<p>Thanks for applying.</p>\n"
    );

    let out = run(herald(tmp.path()).args([
        "render",
        "sms/welcome.txt.j2",
        "--data",
        "data.json",
        "--color",
        "never",
    ]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert_eq!(stdout(&out), "Hi Tom & <Jerry>, thanks for applying.\n");
}

#[test]
fn render_of_an_undefined_variable_exits_1_at_the_template_line() {
    let tmp = project_with_templates();
    let out = run(herald(tmp.path()).args([
        "render",
        "emails/offer.html.j2",
        "--data",
        "data.json",
        "--color",
        "never",
    ]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("templates/emails/offer.html.j2:3:"),
        "the error should name the template's own line: {}",
        show(&out)
    );
    assert!(err.contains("undefined"), "{}", show(&out));
    assert!(
        err.contains("You are approved for {{ offer.amount }}."),
        "{}",
        show(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", show(&out));
}

#[test]
fn render_of_an_unknown_template_exits_2() {
    let tmp = project_with_templates();
    let out = run(herald(tmp.path()).args(["render", "emails/welcome.txt.j2", "--color", "never"]));
    assert_eq!(code(&out), 2, "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no template `emails/welcome.txt.j2`"),
        "{}",
        show(&out)
    );
    assert!(
        err.contains("did you mean `emails/welcome.html.j2`?"),
        "{}",
        show(&out)
    );
}

#[test]
fn schema_prints_json_schemas_that_compile() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    for kind in ["workflow", "config"] {
        let out = run(herald(tmp.path()).args(["schema", kind]));
        assert_eq!(code(&out), 0, "{}", show(&out));
        let schema: Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("`herald schema {kind}` is not JSON ({e})"));
        let validator = jsonschema::draft202012::options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("`herald schema {kind}` does not compile: {e}"));
        if kind == "workflow" {
            let valid = serde_json::json!({
                "kind": "workflow",
                "id": "daily-summary",
                "triggers": [{"cron": {"schedule": "0 7 * * MON-FRI"}}],
                "steps": [{"http": {"url": "https://crm.example.com/api/reports/daily"}}]
            });
            assert!(validator.is_valid(&valid));
            let invalid =
                serde_json::json!({"kind": "workflow", "id": "daily-summary", "steps": []});
            assert!(!validator.is_valid(&invalid));
        }
    }

    let out = run(herald(tmp.path()).args(["schema", "nope"]));
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(
        stderr(&out).contains("unknown kind `nope`; available: workflow, config"),
        "{}",
        show(&out)
    );
}

#[test]
fn help_works_for_every_subcommand() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    let out = run(herald(tmp.path()).arg("--help"));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let top = stdout(&out);
    for sub in ["validate", "schema", "render", "init"] {
        assert!(
            top.contains(sub),
            "`herald --help` should list `{sub}`: {top}"
        );
        let out = run(herald(tmp.path()).args([sub, "--help"]));
        assert_eq!(code(&out), 0, "{}", show(&out));
        assert!(
            stdout(&out).contains(&format!("Usage: herald {sub}")),
            "{}",
            show(&out)
        );
        let out = run(herald(tmp.path()).args(["help", sub]));
        assert_eq!(code(&out), 0, "{}", show(&out));
    }
}

#[test]
fn validate_takes_the_folder_as_dir_too() {
    let tmp = project_with_errors();
    let positional = run(herald(tmp.path().parent().unwrap())
        .args(["validate", "--color", "never"])
        .arg(tmp.path()));
    let flag = run(herald(tmp.path().parent().unwrap())
        .args(["validate", "--color", "never", "--dir"])
        .arg(tmp.path()));
    assert_eq!(code(&positional), 1, "{}", show(&positional));
    assert_eq!(code(&flag), 1, "{}", show(&flag));
    assert_eq!(stdout(&positional), stdout(&flag));
    assert_eq!(stderr(&positional), stderr(&flag));
    let both = run(herald(tmp.path()).args(["validate", ".", "--dir", "."]));
    assert_eq!(code(&both), 2, "{}", show(&both));
}

/// A server whose log goes to a file (not a terminal) writes no colour codes into it.
#[test]
fn serve_logs_without_colour_codes_when_not_on_a_terminal() {
    use std::io::Read as _;
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "herald.yaml", CONFIG);
    write(
        tmp.path(),
        "workflows/a.yaml",
        "kind: workflow\nid: a\nsteps:\n  - set: { x: 1 }\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = herald(tmp.path())
        .args(["serve", "--no-watch", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--database-url", "sqlite://herald.db"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read its log as it comes (a port it was given may have been taken meanwhile by another
    // test's server, so answering on it proves nothing), until it has logged its start.
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            log.extend_from_slice(&chunk[..n]);
            let _ = tx.send(String::from_utf8_lossy(&log).into_owned());
        }
        String::from_utf8_lossy(&log).into_owned()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(so_far) if so_far.contains("INFO") => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "herald serve logged nothing at INFO in 30 s"
            ),
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let log = reader.join().unwrap();
    assert!(log.contains("INFO"), "the server logged: {log}");
    assert!(!log.contains('\u{1b}'), "no escape codes: {log:?}");
}

/// A schema error in one step does not hide independent mistakes elsewhere in the file.
#[test]
fn a_schema_error_does_not_hide_the_files_other_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "herald.yaml", CONFIG);
    write(
        tmp.path(),
        "workflows/reminder.yaml",
        r#"kind: workflow
id: reminder
triggers:
  - cron:
      schedule: "0 9 * * *"
      timezone: America/Denvr
steps:
  - id: pause
    wait: 1 hour
  - id: text
    send:
      channel: sms-twilio
      to: "+13035550123"
      body: "See you at {{ steps.pause.output.waited_until }}"
"#,
    );
    let out = run(herald(tmp.path()).args(["validate", "--color", "never"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    let text = stdout(&out) + &stderr(&out);
    for expected in [
        "reminder.yaml:6:17: error: unknown time zone `America/Denvr`",
        "reminder.yaml:9:11: error: `1 hour` is not a duration",
        "reminder.yaml:12:16: error: channel `sms-twilio` is not defined in herald.yaml",
    ] {
        assert!(text.contains(expected), "missing `{expected}`:\n{text}");
    }
    // The step that broke the schema is still known by its id: no "no step `pause`".
    assert!(!text.contains("no step `pause`"), "{text}");
}

/// A channel that cannot be built stops `serve` with an error at its setting in herald.yaml.
#[test]
fn a_channel_that_cannot_be_built_is_reported_at_its_setting() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "herald.yaml",
        "channels:\n  hook:\n    provider: webhook\n    url: ftp://example.com/hook\n",
    );
    write(
        tmp.path(),
        "workflows/a.yaml",
        "kind: workflow\nid: a\nsteps:\n  - send: { channel: hook, to: x, body: hi }\n",
    );
    let out = run(herald(tmp.path())
        .args(["serve", "--no-watch", "--listen", "127.0.0.1:0"])
        .args(["--database-url", "sqlite://herald.db"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains(
            "herald.yaml:4:10: error: channel `hook`: url: `ftp://example.com/hook` must start with https:// or http://"
        ),
        "{}",
        show(&out)
    );
}

#[test]
fn campaign_commands_pause_resume_and_explain_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "herald.yaml",
        &format!("{CONFIG}database: sqlite://herald.db\n"),
    );
    write(
        root,
        "workflows/promo.yaml",
        "kind: campaign\nid: promo\nschedule:\n  send_at: \"2030-01-01T10:00:00Z\"\nsteps:\n  - id: offer\n    send: { channel: email, to: \"{{ contact.email }}\", body: Offer }\n",
    );
    let out = run(herald(root).args(["campaign", "list"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(list[0]["id"], "promo");
    assert_eq!(list[0]["state"], "scheduled");
    assert_eq!(list[0]["kind"], "broadcast");

    let out = run(herald(root).args(["campaign", "resume", "promo"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains("campaign `promo` is scheduled, not paused"),
        "{}",
        show(&out)
    );

    let out = run(herald(root).args(["campaign", "pause", "promo"]));
    assert_eq!(code(&out), 0, "{}", show(&out));
    let out = run(herald(root).args(["campaign", "show", "promo"]));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(
        shown["state"], "paused",
        "the state is kept in the database"
    );

    let out = run(herald(root).args(["campaign", "cancel", "nope"]));
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stderr(&out).contains("no campaign `nope` is loaded"),
        "{}",
        show(&out)
    );
}
