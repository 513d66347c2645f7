//! The committed schemas are the generated ones, and they agree with the serde model.

use std::path::Path;

use herald::definitions::schema::{SchemaKind, generate_text};

#[test]
fn committed_schemas_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut stale = Vec::new();
    for kind in SchemaKind::ALL {
        let path = dir.join(kind.file_name());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generate_text(kind) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas: {stale:?}; regenerate with `cargo run -- schema --write schemas`"
    );
}

#[test]
fn schemas_are_valid_draft_2020_12() {
    for kind in SchemaKind::ALL {
        let text = generate_text(kind);
        let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        jsonschema::meta::validate(&schema)
            .unwrap_or_else(|e| panic!("{} schema: {e}", kind.name()));
        jsonschema::draft202012::options()
            .build(&schema)
            .unwrap_or_else(|e| panic!("{} schema does not compile: {e}", kind.name()));
    }
}

/// Every example definition starts with the editor's schema line, pointing at a schema that
/// exists, so editors validate as you type.
#[test]
fn examples_declare_their_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("workflows"))
        .expect("workflows/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("herald.yaml"));
    assert!(files.len() > 5);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{} does not start with the schema line", f.display()));
        let schema = f.parent().unwrap().join(target);
        assert!(
            schema.is_file(),
            "{} points at {}, which does not exist",
            f.display(),
            schema.display()
        );
    }
}
