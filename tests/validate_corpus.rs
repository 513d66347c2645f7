//! The validation corpus: `tests/corpus/invalid/<NN-name>/` holds one case per class of error,
//! each with an `expected.txt` listing every diagnostic it must produce, and
//! `tests/corpus/valid/` holds realistic definitions that must validate with no diagnostics.
//!
//! Cases without a `herald.yaml` of their own are checked against the shared
//! `tests/corpus/herald.yaml` and `tests/corpus/templates/`; a case that needs its own config
//! or templates is a small project (`herald.yaml`, `workflows/`, `templates/`) in its folder.
//!
//! `expected.txt` lines are `<path>:<line>:<col>: <severity>: <message>`, paths relative to the
//! case folder, in the order `herald validate` prints them. Lines starting with `#` are
//! comments; one of them must be `# class: <code>` or `# class: <code>/<variant>`, naming the
//! diagnostic code the case is about (every diagnostic of the case must have it). A variant is
//! needed when several cases share a code, and tells them apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald::definitions::diagnostics::{Diagnostic, Severity};
use herald::definitions::env::EnvSource;
use herald::definitions::model::step::{ACTION_KEYS, Action, WaitForStep, WaitStep};
use herald::definitions::project::{EnvMode, Layout, LoadOptions, Project, load};

/// The requirement: at least this many invalid cases, one per class.
const MIN_INVALID_CASES: usize = 30;

/// Every trigger kind, which the valid corpus must use between its files.
const TRIGGER_KINDS: [&str; 4] = ["cron", "webhook", "message", "event"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("corpus")
}

/// The environment every case sees: fixed, so no result depends on the machine's environment.
/// The valid corpus's secrets are set; the unset-env case uses a name that is not here.
fn fixed_env() -> EnvSource {
    let vars = [
        ("APPLICATION_HOOK_SECRET", "test-application-secret"),
        ("CRM_API_TOKEN", "test-crm-token"),
        ("PHONE_SYSTEM_TOKEN", "test-phone-token"),
        (
            "LOAN_SYSTEM_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
    ];
    EnvSource::Map(Arc::new(
        vars.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<HashMap<_, _>>(),
    ))
}

/// Validates `dir` exactly as `herald validate DIR` would, run from inside `dir`.
fn validate(dir: &Path) -> Result<(Layout, Project, Vec<Diagnostic>), String> {
    let layout = Layout::discover(dir).map_err(|e| format!("cannot open the case: {e}"))?;
    let opts = LoadOptions {
        env_mode: EnvMode::Validate,
        env: fixed_env(),
        display_base: dir.to_path_buf(),
    };
    let (project, report) = load(&layout, &opts);
    Ok((layout, project, report.diagnostics))
}

fn severity_label(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn render_line(d: &Diagnostic) -> String {
    format!(
        "{}: {}: {}",
        d.location(),
        severity_label(d.severity),
        d.message
    )
}

/// A case's `expected.txt`.
struct Expected {
    class: Option<String>,
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Expected {
    fn code(&self) -> Option<&str> {
        self.class
            .as_deref()
            .map(|c| c.split('/').next().unwrap_or(c))
    }
}

fn read_expected(case: &Path) -> Expected {
    let mut out = Expected {
        class: None,
        lines: Vec::new(),
        problems: Vec::new(),
    };
    let path = case.join("expected.txt");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            out.problems.push(format!("cannot read expected.txt: {e}"));
            return out;
        }
    };
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(class) = comment.trim().strip_prefix("class:") {
                let class = class.trim().to_owned();
                if out.class.replace(class).is_some() {
                    out.problems
                        .push("expected.txt has more than one `# class:` line".to_owned());
                }
            }
        } else if !line.is_empty() {
            out.lines.push(line.to_owned());
        }
    }
    if out.lines.is_empty() {
        out.problems.push(
            "expected.txt lists no diagnostics: every invalid case must expect at least one"
                .to_owned(),
        );
    }
    match &out.class {
        None => out
            .problems
            .push("expected.txt has no `# class: <code>` line".to_owned()),
        Some(c) if c.is_empty() || c.contains(char::is_whitespace) => out.problems.push(format!(
            "`# class: {c}` is not `<code>` or `<code>/<variant>`"
        )),
        Some(_) => {}
    }
    out
}

/// A line diff (longest common subsequence): `  ` both, `- ` expected only, `+ ` actual only.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "      {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "    - {}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "    + {}", actual[j]);
            j += 1;
        }
    }
    out
}

fn case_dirs() -> Vec<PathBuf> {
    let invalid = corpus_dir().join("invalid");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&invalid)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", invalid.display()))
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn case_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `NN-short-name`: two digits, a dash, lower case words joined by dashes.
fn case_number(name: &str) -> Option<&str> {
    let (number, rest) = name.split_once('-')?;
    let ok = number.len() == 2
        && number.chars().all(|c| c.is_ascii_digit())
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then_some(number)
}

/// Checks one case; returns what is wrong with it, if anything.
fn check_case(dir: &Path, expected: &Expected) -> Option<String> {
    let name = case_name(dir);
    let mut report = String::new();
    for p in &expected.problems {
        let _ = writeln!(report, "    {p}");
    }
    if case_number(&name).is_none() {
        let _ = writeln!(report, "    the folder name is not `NN-short-name`");
    }
    let (layout, project, diagnostics) = match validate(dir) {
        Ok(v) => v,
        Err(e) => return Some(format!("  {name}:\n    {e}\n")),
    };

    // A case is checked against the shared config unless it has its own.
    let own_project = dir.join("herald.yaml").is_file();
    let expected_root = if own_project {
        dir.to_path_buf()
    } else {
        corpus_dir()
    };
    if layout.root.canonicalize().ok() != expected_root.canonicalize().ok() {
        let _ = writeln!(
            report,
            "    the case resolved to the project at {}, expected {}",
            layout.root.display(),
            expected_root.display()
        );
    }
    if project.files_read == 0 {
        let _ = writeln!(
            report,
            "    the case has no definition files (expected .yaml files in {})",
            if own_project {
                "its workflows/ folder"
            } else {
                "its folder"
            }
        );
    }

    let actual: Vec<String> = diagnostics.iter().map(render_line).collect();
    if actual != expected.lines {
        let _ = writeln!(
            report,
            "    diagnostics differ (- expected.txt, + actual):\n{}",
            diff(&expected.lines, &actual)
        );
        if !diagnostics.is_empty() {
            let _ = writeln!(report, "    actual, in full:");
            for d in &diagnostics {
                for line in d.render(false).lines() {
                    let _ = writeln!(report, "      {line}");
                }
            }
        }
    }
    if let Some(code) = expected.code() {
        let others: BTreeSet<&str> = diagnostics
            .iter()
            .map(|d| d.code)
            .filter(|c| *c != code)
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                report,
                "    the case is about `{code}`, but also produces: {}",
                others.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if !diagnostics.is_empty() && !diagnostics.iter().any(|d| d.code == code) {
            let _ = writeln!(
                report,
                "    no diagnostic has the code `{code}` named by `# class:`"
            );
        }
    }
    (!report.is_empty()).then(|| format!("  {name}:\n{report}"))
}

#[test]
fn every_invalid_case_produces_exactly_its_expected_diagnostics() {
    let dirs = case_dirs();
    let mut failures = Vec::new();
    let mut numbers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut classes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut codes: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();

    for dir in &dirs {
        let name = case_name(dir);
        let expected = read_expected(dir);
        if let Some(n) = case_number(&name) {
            numbers.entry(n.to_owned()).or_default().push(name.clone());
        }
        if let (Some(class), Some(code)) = (&expected.class, expected.code()) {
            classes.entry(class.clone()).or_default().push(name.clone());
            codes
                .entry(code.to_owned())
                .or_default()
                .push((name.clone(), class.contains('/')));
        }
        if let Some(f) = check_case(dir, &expected) {
            failures.push(f);
        }
    }

    // One case per class: numbers and classes are unique, and cases that share a code must
    // each say, with a variant, what distinguishes them.
    for (n, names) in &numbers {
        if names.len() > 1 {
            failures.push(format!("  cases numbered {n}: {}\n", names.join(", ")));
        }
    }
    for (class, names) in &classes {
        if names.len() > 1 {
            failures.push(format!(
                "  class `{class}` is covered twice: {}\n",
                names.join(", ")
            ));
        }
    }
    for (code, cases) in &codes {
        if cases.len() > 1 && cases.iter().any(|(_, has_variant)| !has_variant) {
            let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
            failures.push(format!(
                "  cases {} share the code `{code}`: give each a `# class: {code}/<variant>` saying how they differ\n",
                names.join(", ")
            ));
        }
    }
    if dirs.len() < MIN_INVALID_CASES {
        failures.push(format!(
            "  the corpus has {} invalid cases; at least {MIN_INVALID_CASES} are required\n",
            dirs.len()
        ));
    }

    assert!(
        failures.is_empty(),
        "{} problem(s) in tests/corpus/invalid ({} cases checked):\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn the_valid_corpus_has_no_diagnostics_and_uses_every_trigger_and_step_kind() {
    let dir = corpus_dir().join("valid");
    let (_, project, diagnostics) = validate(&dir).expect("the valid corpus opens");
    let rendered: Vec<String> = diagnostics.iter().map(|d| d.render(false)).collect();
    assert!(
        diagnostics.is_empty(),
        "the valid corpus must validate with no diagnostics, not even warnings:\n{}",
        rendered.join("\n")
    );
    assert!(
        project.files_read >= 5,
        "the valid corpus should hold several definitions, found {}",
        project.files_read
    );
    assert_eq!(project.definitions.len(), project.files_read);

    let mut triggers = BTreeSet::new();
    let mut actions = BTreeSet::new();
    let mut forms = BTreeSet::new();
    for def in &project.definitions {
        let wf = def.as_workflow().expect("the valid corpus holds workflows");
        triggers.extend(wf.triggers.iter().map(|t| t.key()));
        for step in wf.all_steps() {
            actions.insert(step.action.key());
            match &step.action {
                Action::Wait(WaitStep::For(_)) => forms.insert("wait: <duration>"),
                Action::Wait(WaitStep::Until(_)) => forms.insert("wait: {until}"),
                Action::WaitFor(WaitForStep { event: Some(_), .. }) => {
                    forms.insert("wait_for: {event}")
                }
                Action::WaitFor(WaitForStep { reply: Some(_), .. }) => {
                    forms.insert("wait_for: {reply}")
                }
                _ => false,
            };
        }
    }
    let missing_triggers: Vec<&str> = TRIGGER_KINDS
        .iter()
        .copied()
        .filter(|k| !triggers.contains(k))
        .collect();
    let missing_actions: Vec<&str> = ACTION_KEYS
        .iter()
        .copied()
        .filter(|k| !actions.contains(k))
        .collect();
    let missing_forms: Vec<&str> = [
        "wait: <duration>",
        "wait: {until}",
        "wait_for: {event}",
        "wait_for: {reply}",
    ]
    .into_iter()
    .filter(|f| !forms.contains(f))
    .collect();
    assert!(
        missing_triggers.is_empty() && missing_actions.is_empty() && missing_forms.is_empty(),
        "the valid corpus should use every trigger and step kind; missing triggers: {missing_triggers:?}, steps: {missing_actions:?}, forms: {missing_forms:?}"
    );
}

#[test]
fn the_diff_shows_expected_and_actual_lines() {
    let expected = vec![
        "a.yaml:1:1: error: one".to_owned(),
        "a.yaml:2:1: error: two".to_owned(),
    ];
    let actual = vec![
        "a.yaml:2:1: error: two".to_owned(),
        "a.yaml:3:1: warning: three".to_owned(),
    ];
    assert_eq!(
        diff(&expected, &actual),
        "    - a.yaml:1:1: error: one\n      a.yaml:2:1: error: two\n    + a.yaml:3:1: warning: three\n"
    );
}

#[test]
fn a_case_without_files_or_expectations_fails() {
    let tmp = tempfile::tempdir().expect("a temp folder");
    let case = tmp.path().join("01-nothing-here");
    std::fs::create_dir_all(&case).expect("create the case folder");
    std::fs::write(case.join("herald.yaml"), "channels: {}\n").expect("write the config");
    std::fs::write(
        case.join("expected.txt"),
        "# A case someone forgot to fill in.\n",
    )
    .expect("write expected.txt");
    let expected = read_expected(&case);
    let report = check_case(&case, &expected).expect("an empty case must be reported");
    assert!(report.contains("lists no diagnostics"), "{report}");
    assert!(report.contains("no `# class: <code>` line"), "{report}");
    assert!(report.contains("no definition files"), "{report}");
}
