//! `herald validate [DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::{ColorChoice, Format, UsageError, dir_or_current};
use crate::definitions::env::EnvSource;
use crate::definitions::project::{EnvMode, Layout, LoadOptions, load};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The project folder (holding herald.yaml), or a folder of definitions inside it.
    #[arg(value_name = "DIR", conflicts_with = "dir_flag")]
    dir: Option<PathBuf>,
    /// The same, as every other command takes it.
    #[arg(long = "dir", id = "dir_flag", value_name = "DIR")]
    dir_flag: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Exit 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let dir = dir_or_current(args.dir.or(args.dir_flag));
    let layout = Layout::discover(&dir)?;
    let mut opts = LoadOptions::new(EnvMode::Validate);
    if let Some(f) = &args.env_file {
        opts.env = EnvSource::with_env_file(f)?;
    }
    let (project, mut report) = load(&layout, &opts);
    // Test files are checked against the project as loaded, so a test that names a step the
    // workflow no longer has is reported with the workflow's own errors.
    let (_, test_diags) =
        crate::definitions::test_files::load_tests(&project, &opts.display_base, None);
    report.extend(test_diags);
    report.sort();
    let errors = report.errors();
    let warnings = report.warnings();
    let failed = errors > 0 || (args.deny_warnings && warnings > 0);
    match args.format {
        Format::Json => {
            let doc = json!({
                "ok": !failed,
                "errors": errors,
                "warnings": warnings,
                "files": project.files_read,
                "definitions": project.definitions.len(),
                "templates": project.templates.names().len(),
                "diagnostics": report.diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Human => {
            let color = args.color.enabled();
            for d in &report.diagnostics {
                eprintln!("{}", d.render(color));
            }
            let files = project.files_read;
            if errors == 0 && warnings == 0 {
                eprintln!(
                    "ok: {} definition{} and {} template{} are valid",
                    project.definitions.len(),
                    plural(project.definitions.len()),
                    project.templates.names().len(),
                    plural(project.templates.names().len())
                );
            } else {
                let files_with: std::collections::HashSet<_> = report
                    .diagnostics
                    .iter()
                    .filter_map(|d| d.file.clone())
                    .collect();
                eprintln!(
                    "{}: {errors} error{}, {warnings} warning{} in {} file{} ({files} definition file{} read)",
                    if failed { "failed" } else { "ok" },
                    plural(errors),
                    plural(warnings),
                    files_with.len(),
                    plural(files_with.len()),
                    plural(files)
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
