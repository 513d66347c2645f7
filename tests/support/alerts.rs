//! What the alert tests share: validating definitions written into a throw-away project, and
//! an outbox message to measure.

use herald::definitions::project::{EnvMode, Layout, LoadOptions, load};
use herald::store::NewOutbox;
use serde_json::json;

/// Validates `files` (names under workflows/) as `herald validate` does; every diagnostic,
/// rendered without colour.
pub fn validate(files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("workflows").join(name), text).unwrap();
    }
    let layout = Layout::discover(dir.path()).unwrap();
    let (_, report) = load(&layout, &LoadOptions::new(EnvMode::Validate));
    report.diagnostics.iter().map(|d| d.render(false)).collect()
}

/// A transactional message on `channel`, queued at `at` and due at `due`.
pub fn queued(id: &str, channel: &str, at: i64, due: i64) -> NewOutbox {
    NewOutbox {
        id: id.into(),
        run_id: None,
        workflow_id: None,
        step_id: None,
        channel: channel.into(),
        recipient: "someone@example.com".into(),
        sender: None,
        subject: None,
        body: "hello".into(),
        html: false,
        headers: json!({}),
        idempotency_key: id.into(),
        max_attempts: 3,
        category: herald::definitions::model::step::MessageCategory::Transactional,
        retry: None,
        approved_template: None,
        created_at: at,
        due_at: due,
    }
}
