//! Templates written for Python's Jinja2 render the same in Herald: every template under
//! `tests/jinja2/` is rendered by both, with `tests/jinja2/data.json`, and the outputs must
//! match. The README lists the known differences, which the corpus leaves out.
//!
//! Needs `python3` with `jinja2` (`.ci/run` installs it). Without them the test says it was
//! skipped, unless `HERALD_REQUIRE_JINJA2` is set, when it fails.

use std::path::Path;
use std::process::Command;

const RENDER: &str = r#"
import json, sys, jinja2
data = json.load(open(sys.argv[1]))
env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                         extensions=["jinja2.ext.loopcontrols"])
out = {}
for name in sys.argv[2:]:
    src = open(name).read()
    out[name] = env.from_string(src).render(**data)
print(json.dumps(out))
"#;

#[test]
fn templates_render_as_jinja2_renders_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jinja2");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "j2"))
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    assert!(names.len() >= 15, "{} templates", names.len());
    let data_path = dir.join("data.json");
    let python = Command::new("python3")
        .arg("-c")
        .arg(RENDER)
        .arg(&data_path)
        .args(&names)
        .output();
    let expected: serde_json::Map<String, serde_json::Value> = match python {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).unwrap(),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("HERALD_REQUIRE_JINJA2").is_none(),
                "Python's jinja2 is required here but did not run: {why}"
            );
            eprintln!("skipped: python3 with jinja2 is not available ({why})");
            return;
        }
    };
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    let ctx = herald::templates::context(&data);
    let templates = herald::templates::Templates::empty(1_000_000);
    let mut differ = Vec::new();
    for name in &names {
        let source = std::fs::read_to_string(name).unwrap();
        let ours = templates
            .render_str(&source, &ctx)
            .unwrap_or_else(|e| format!("<error: {e}>"));
        let theirs = expected[name.as_str()].as_str().unwrap();
        if ours != theirs {
            differ.push(format!(
                "{}:\n  herald: {ours:?}\n  jinja2: {theirs:?}",
                Path::new(name).file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(differ.is_empty(), "outputs differ:\n{}", differ.join("\n"));
}
