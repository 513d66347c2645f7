//! Validates a generated project of 1,000 workflow files, the way `herald validate` does (parse
//! with positions, schema pass, deserialize, semantic pass over the whole set).
//!
//! Run: `cargo bench --bench validate` (release build). Prints the best and median of several
//! rounds for 10 and for 1,000 files, and the ratio per file between them.

use std::path::Path;
use std::time::{Duration, Instant};

use herald::definitions::env::EnvSource;
use herald::definitions::project::{EnvMode, Layout, LoadOptions, load};

fn workflow(i: usize) -> String {
    // Alternate shapes so the set resembles a real project: webhooks with auth and an
    // idempotency key, cron jobs, branches, loops, waits and sends through templates.
    let trigger = if i.is_multiple_of(2) {
        format!(
            "  - webhook:\n      path: /hooks/leads/{i}\n      auth:\n        hmac_sha256: {{ header: X-Signature, secret: \"${{env:SECRET}}\" }}\n      idempotency_key: \"{{{{ body.id }}}}\"\n"
        )
    } else {
        format!(
            "  - cron:\n      schedule: \"{} 7 * * MON-FRI\"\n      timezone: America/Denver\n      catch_up: latest\n",
            i % 60
        )
    };
    format!(
        r#"# yaml-language-server: $schema=../schemas/workflow.json
kind: workflow
id: generated-{i}
description: Generated workflow number {i}.
triggers:
{trigger}steps:
  - id: remember
    upsert_contact:
      email: "{{{{ body.email | default('x@example.com') }}}}"
      first_name: "{{{{ body.first_name | default('') }}}}"
      status: new
  - id: greet
    set:
      greeting: "Hi {{{{ contact.first_name | first_name(fallback='there') }}}}"
      count: "{{{{ (vars.count | default(0)) + 1 }}}}"
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
    // One listener, so the generated `wait_for` events are not "unused".
    for i in 0..n {
        std::fs::write(dir.join(format!("workflows/wf-{i:04}.yaml")), workflow(i)).unwrap();
    }
}

fn measure(dir: &Path, rounds: usize) -> (Duration, Duration, usize) {
    let layout = Layout::discover(dir).unwrap();
    let env = EnvSource::Map(std::sync::Arc::new(
        [("SECRET".to_owned(), "s".to_owned())].into(),
    ));
    let opts = LoadOptions {
        env_mode: EnvMode::Validate,
        env,
        display_base: dir.to_path_buf(),
    };
    let mut times = Vec::new();
    let mut defs = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let (project, report) = load(&layout, &opts);
        times.push(start.elapsed());
        assert_eq!(report.errors(), 0, "{:#?}", report.diagnostics.first());
        defs = project.definitions.len();
    }
    times.sort();
    (times[0], times[times.len() / 2], defs)
}

fn main() {
    let tmp = std::env::temp_dir().join(format!("herald-bench-validate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let small = tmp.join("small");
    let large = tmp.join("large");
    make_project(&small, 10);
    make_project(&large, 1000);

    let (s_best, s_med, s_n) = measure(&small, 20);
    let (l_best, l_med, l_n) = measure(&large, 7);
    println!("validate {s_n:>5} files: best {s_best:>10.2?}  median {s_med:>10.2?}");
    println!("validate {l_n:>5} files: best {l_best:>10.2?}  median {l_med:>10.2?}");
    let per_small = s_med.as_secs_f64() / s_n as f64;
    let per_large = l_med.as_secs_f64() / l_n as f64;
    println!(
        "per file: {:.0} µs (10 files) vs {:.0} µs (1,000 files); ratio {:.2}",
        per_small * 1e6,
        per_large * 1e6,
        per_large / per_small
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
