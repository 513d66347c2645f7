//! `herald init DIR`: a small project that validates and runs as written.

use std::path::PathBuf;
use std::process::ExitCode;

use super::UsageError;
use crate::definitions::schema::{SchemaKind, generate_text};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The folder to create (it may exist, but must not hold a herald.yaml).
    dir: PathBuf,
}

const CONFIG: &str = r#"# yaml-language-server: $schema=schemas/config.json
# Herald's configuration. Secrets are ${env:NAME} references, resolved at start.
database: sqlite://herald.db
listen: 127.0.0.1:8080

# Channels print messages to the log until you give them a real provider, for example:
#   email:
#     provider: smtp
#     host: smtp.example.com
#     username: herald
#     password: ${env:SMTP_PASSWORD}
#     from: "Example <hello@example.com>"
channels:
  email:
    provider: log
  sms:
    provider: log
"#;

const WELCOME: &str = r#"# yaml-language-server: $schema=../schemas/workflow.json
kind: workflow
id: welcome
description: Welcomes a new lead by e-mail, then checks in a day later unless they replied.

triggers:
  - webhook:
      path: /hooks/leads
      # The same e-mail posted twice starts one run, not two.
      idempotency_key: "{{ body.email }}"

steps:
  - id: remember
    upsert_contact:
      email: "{{ body.email }}"
      first_name: "{{ body.first_name }}"
      status: new

  - id: welcome
    send:
      channel: email
      to: "{{ contact.email }}"
      subject: "Welcome, {{ contact.first_name | first_name }}"
      template: emails/welcome.txt.j2

  - id: await_reply
    wait_for:
      event: lead.replied
      key: "{{ contact.email }}"
      timeout: 1d

  - id: check_in
    if: steps.await_reply.output.timed_out
    then:
      - send:
          channel: email
          to: "{{ contact.email }}"
          subject: "Any questions, {{ contact.first_name | first_name }}?"
          body: "Just checking in. Reply to this e-mail and a person will answer."
"#;

const REPLIED: &str = r#"# yaml-language-server: $schema=../schemas/workflow.json
kind: workflow
id: lead-replied
description: Records a reply, which ends the welcome workflow's wait.

triggers:
  - webhook:
      path: /hooks/replies

steps:
  - emit:
      event: lead.replied
      key: "{{ body.email }}"
"#;

const WELCOME_TEST: &str = r#"# yaml-language-server: $schema=../schemas/test.json
# `herald test` runs these cases offline, on a virtual clock: a day passes in no time.
kind: test
target: welcome

cases:
  - name: a lead who does not reply gets a check-in a day later
    trigger:
      webhook:
        body: { email: ada@example.com, first_name: ada }
    timeline:
      - expect:
          sent:
            - channel: email
              to: ada@example.com
              subject: Welcome, Ada
              body: { contains: "Thanks for your interest" }
      - after: 1d
    expect:
      status: completed
      sent:
        - { channel: email, subject: "Any questions, Ada?" }
      contacts:
        - { email: ada@example.com, first_name: ada, status: new }
"#;

const TEMPLATE: &str = "Hi {{ contact.first_name | first_name(fallback=\"there\") }},\n\nThanks for your interest. We will be in touch shortly.\n";

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let dir = args.dir;
    if dir.join("herald.yaml").exists() {
        return Err(UsageError(format!(
            "{} already holds a herald.yaml; init will not overwrite a project",
            dir.display()
        )));
    }
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("herald.yaml"), CONFIG.to_owned()),
        (dir.join("workflows/welcome.yaml"), WELCOME.to_owned()),
        (dir.join("workflows/lead-replied.yaml"), REPLIED.to_owned()),
        (dir.join("tests/welcome.yaml"), WELCOME_TEST.to_owned()),
        (
            dir.join("templates/emails/welcome.txt.j2"),
            TEMPLATE.to_owned(),
        ),
    ];
    // Every kind's schema, so an editor completes whatever kind of file is written next.
    for kind in SchemaKind::ALL {
        files.push((
            dir.join("schemas").join(kind.file_name()),
            generate_text(kind),
        ));
    }
    for (path, _) in &files {
        if path.exists() {
            return Err(UsageError(format!(
                "{} already exists; init will not overwrite it",
                path.display()
            )));
        }
    }
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| UsageError(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?;
    }
    eprintln!("created a Herald project in {}", dir.display());
    eprintln!(
        "next: herald validate {0} && herald test {0} && herald serve --dir {0}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
