//! `herald test [PATH]`: runs the project's `kind: test` cases offline and reports them as
//! `cargo test` does: a line per case, the failures with their `file:line:col` and a diff,
//! and a closing count. Exit 1 when a case fails or a test file has errors.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::ValueEnum;
use serde_json::json;

use super::{ColorChoice, UsageError};
use crate::definitions::env::EnvSource;
use crate::definitions::project::{
    CONFIG_FILE, EnvMode, Layout, LoadOptions, definition_files, load,
};
use crate::definitions::test_files::load_tests;
use crate::engine::registry::Registry;
use crate::testing::{self, CaseResult, Options, line_diff};

#[derive(Debug, Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
pub enum TestFormat {
    /// A line per case, then the failures with diffs, as `cargo test` prints.
    #[default]
    Pretty,
    /// One JSON document.
    Json,
    /// JUnit XML, for CI systems.
    Junit,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A test file or a folder of them (default: the project's tests folder).
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
    /// The project folder (default: the one holding PATH, or the current one).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Only cases whose `file::name` contains this text.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: TestFormat,
    /// Write golden files from what the cases send, instead of comparing with them.
    #[arg(long)]
    update: bool,
    /// List the steps no case reached.
    #[arg(long)]
    coverage: bool,
    /// How many cases run at once (default: twice the cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    /// Names set nowhere get a stand-in value: nothing a test runs reaches a provider.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
}

/// The project a path belongs to: the nearest folder at or above it holding herald.yaml.
fn project_root(path: &Path) -> PathBuf {
    let start = if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    };
    let start = if start.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        start
    };
    start
        .ancestors()
        .find(|a| a.join(CONFIG_FILE).is_file())
        .map(Path::to_path_buf)
        .unwrap_or(start)
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    if let Some(p) = &args.path
        && !p.exists()
    {
        return Err(UsageError(format!("{} does not exist", p.display())));
    }
    let root = match (&args.dir, &args.path) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => project_root(p),
        (None, None) => PathBuf::from("."),
    };
    let layout = Layout::discover(&root)?;
    let base = match &args.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let mut texts = Vec::new();
    if let Some(c) = &layout.config_file {
        texts.push(std::fs::read_to_string(c).unwrap_or_default());
    }
    for f in definition_files(&layout.workflows_dir) {
        texts.push(std::fs::read_to_string(f).unwrap_or_default());
    }
    let env = testing::test_env(base, testing::env_names(texts.iter().map(String::as_str)));
    let mut opts = LoadOptions::new(EnvMode::Serve);
    opts.env = env.clone();
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
        }
    };
    let diag_color = args.color.enabled();
    let (project, report) = load(&layout, &opts);
    // A project folder as PATH means its tests folder, as `herald validate DIR` means its
    // definitions.
    let only = args
        .path
        .as_deref()
        .filter(|p| !(p.is_dir() && p.join(CONFIG_FILE).is_file()));
    let (tests, test_diags) = load_tests(&project, &opts.display_base, only);
    let mut errors = false;
    for d in report.diagnostics.iter().chain(&test_diags) {
        errors |= d.is_error();
        eprintln!("{}", d.render(diag_color));
    }
    if errors {
        eprintln!("error: fix the problems above; no test was run");
        return Ok(ExitCode::from(1));
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let registry = match Registry::build(&project, &env, 1, now) {
        Ok(r) => Arc::new(r),
        Err(diags) => {
            for d in &diags {
                eprintln!("{}", d.render(diag_color));
            }
            return Ok(ExitCode::from(1));
        }
    };
    let tests: Vec<Arc<_>> = tests.into_iter().map(Arc::new).collect();
    let options = Options {
        filter: args.filter.clone(),
        update: args.update,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() * 2)),
    };
    let selected = testing::select(&tests, &options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    let started = Instant::now();
    let results = runtime.block_on(testing::run_cases(
        registry.clone(),
        env,
        selected,
        &options,
    ));
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| !r.passed()).count();
    let reached: BTreeSet<(String, String)> = results
        .iter()
        .flat_map(|r| r.reached.iter().cloned())
        .collect();
    let coverage = args.coverage.then(|| Coverage::new(&registry, &reached));
    let text = match args.format {
        TestFormat::Pretty => pretty(&results, elapsed, tests.len(), coverage.as_ref(), color),
        TestFormat::Json => json_report(&results, elapsed, coverage.as_ref()),
        TestFormat::Junit => junit(&results, elapsed),
    };
    print!("{text}");
    if args.format == TestFormat::Junit
        && let Some(c) = &coverage
    {
        eprint!("{}", c.text());
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

struct Coverage {
    total: usize,
    missing: Vec<(String, Vec<(String, String)>)>,
}

impl Coverage {
    fn new(registry: &Registry, reached: &BTreeSet<(String, String)>) -> Coverage {
        Coverage {
            total: testing::step_count(registry),
            missing: testing::uncovered(registry, reached),
        }
    }

    fn missing_count(&self) -> usize {
        self.missing.iter().map(|(_, s)| s.len()).sum()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let reached = self.total - self.missing_count();
        let _ = writeln!(
            out,
            "\ncoverage: {reached} of {} steps reached by a test",
            self.total
        );
        for (wf, steps) in &self.missing {
            let _ = writeln!(out, "  {wf}: not reached:");
            for (id, at) in steps {
                let _ = writeln!(out, "    {id:<24} {at}");
            }
        }
        out
    }
}

fn ms(d: std::time::Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn pretty(
    results: &[CaseResult],
    elapsed: std::time::Duration,
    files: usize,
    coverage: Option<&Coverage>,
    color: bool,
) -> String {
    let (red, green, bold, reset) = if color {
        ("\x1b[31m", "\x1b[32m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrunning {} test case{} from {files} file{}",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        if files == 1 { "" } else { "s" }
    );
    for r in results {
        let status = if r.passed() {
            format!("{green}ok{reset}")
        } else {
            format!("{red}FAILED{reset}")
        };
        let _ = writeln!(
            out,
            "test {}::{} ... {status} ({})",
            r.file,
            r.name,
            ms(r.duration)
        );
        for u in &r.updated {
            let _ = writeln!(out, "    wrote {u}");
        }
    }
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\nfailures:");
        for r in &failed {
            let _ = writeln!(out, "\n---- {}::{} ({}) ----", r.file, r.name, r.at);
            for f in &r.failures {
                let _ = writeln!(out, "{bold}{}{reset}: {}", f.at, f.message);
                if let (Some(e), Some(a)) = (&f.expected, &f.actual) {
                    let _ = writeln!(out, "  {red}- expected{reset}");
                    let _ = writeln!(out, "  {green}+ actual{reset}");
                    for (sign, line) in line_diff(e, a) {
                        let c = match sign {
                            '-' => red,
                            '+' => green,
                            _ => "",
                        };
                        let r = if c.is_empty() { "" } else { reset };
                        let _ = writeln!(out, "  {c}{sign} {line}{r}");
                    }
                }
            }
        }
        let _ = writeln!(out, "\nfailures:");
        for r in &failed {
            let _ = writeln!(out, "    {}::{}", r.file, r.name);
        }
    }
    if let Some(c) = coverage {
        out.push_str(&c.text());
    }
    let passed = results.len() - failed.len();
    let _ = writeln!(
        out,
        "\ntest result: {}. {passed} passed, {} failed; finished in {:.2}s",
        if failed.is_empty() {
            format!("{green}ok{reset}")
        } else {
            format!("{red}FAILED{reset}")
        },
        failed.len(),
        elapsed.as_secs_f64()
    );
    out
}

fn json_report(
    results: &[CaseResult],
    elapsed: std::time::Duration,
    coverage: Option<&Coverage>,
) -> String {
    let failed = results.iter().filter(|r| !r.passed()).count();
    let cases: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "file": r.file,
                "name": r.name,
                "target": r.target,
                "at": r.at,
                "passed": r.passed(),
                "duration_ms": r.duration.as_secs_f64() * 1000.0,
                "failures": r.failures.iter().map(|f| json!({
                    "at": f.at,
                    "message": f.message,
                    "expected": f.expected,
                    "actual": f.actual,
                })).collect::<Vec<_>>(),
                "updated": r.updated,
            })
        })
        .collect();
    let mut doc = json!({
        "ok": failed == 0,
        "passed": results.len() - failed,
        "failed": failed,
        "duration_ms": elapsed.as_secs_f64() * 1000.0,
        "cases": cases,
    });
    if let Some(c) = coverage {
        doc["coverage"] = json!({
            "steps": c.total,
            "reached": c.total - c.missing_count(),
            "not_reached": c.missing.iter().map(|(wf, steps)| json!({
                "workflow": wf,
                "steps": steps.iter().map(|(id, at)| json!({"id": id, "at": at})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
    }
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// Text as XML 1.0 character data or an attribute value: the five special characters
/// escaped, and the control characters XML cannot hold at all dropped.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

fn junit(results: &[CaseResult], elapsed: std::time::Duration) -> String {
    let failed = results.iter().filter(|r| !r.passed()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"herald test\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{:.3}\">",
        results.len(),
        elapsed.as_secs_f64()
    );
    // One suite per file, in the order the files were run.
    let mut files: Vec<&str> = Vec::new();
    for r in results {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    for file in files {
        let cases: Vec<&CaseResult> = results.iter().filter(|r| r.file == file).collect();
        let time: f64 = cases.iter().map(|r| r.duration.as_secs_f64()).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{time:.3}\">",
            xml(file),
            cases.len(),
            cases.iter().filter(|r| !r.passed()).count()
        );
        for r in cases {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
                xml(file),
                xml(&r.name),
                xml(file),
                r.duration.as_secs_f64()
            );
            if r.passed() {
                out.push_str("/>\n");
                continue;
            }
            out.push_str(">\n");
            for f in &r.failures {
                let mut body = format!("{}: {}\n", f.at, f.message);
                if let (Some(e), Some(a)) = (&f.expected, &f.actual) {
                    for (sign, line) in line_diff(e, a) {
                        let _ = writeln!(body, "{sign} {line}");
                    }
                }
                let first = f.message.lines().next().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "      <failure type=\"expectation\" message=\"{}\">{}</failure>",
                    xml(&format!("{}: {first}", f.at)),
                    xml(&body)
                );
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
