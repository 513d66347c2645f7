//! `herald render TEMPLATE --data data.json`: preview a message.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::{ColorChoice, UsageError};
use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::project::{EnvMode, Layout, LoadOptions, display_path, load};
use crate::definitions::source::{SourceFile, parse};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The template: its name under templates/ (emails/nudge.html.j2) or a path to it.
    template: String,
    /// The data to render with: a JSON (or YAML) file, or `-` for JSON on stdin.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// The project folder.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    color: ColorChoice,
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let dir = super::dir_or_current(args.dir);
    let layout = Layout::discover(&dir)?;
    let opts = LoadOptions::new(EnvMode::Validate);
    let (project, report) = load(&layout, &opts);
    let color = args.color.enabled();

    let name = template_name(&args.template, &layout.templates_dir);
    if !project.templates.contains(&name) {
        // A template that does not compile is missing from the set: show why.
        let own: Vec<_> = report
            .diagnostics
            .iter()
            .filter(|d| {
                d.code == "template-syntax" && d.file.as_ref().is_some_and(|f| f.ends_with(&name))
            })
            .collect();
        if !own.is_empty() {
            for d in own {
                eprintln!("{}", d.render(color));
            }
            return Ok(ExitCode::from(1));
        }
        let mut msg = format!(
            "no template `{name}` in {}",
            display_path(&layout.templates_dir, &opts.display_base).display()
        );
        if let Some(s) = crate::definitions::suggest::did_you_mean(
            &name,
            project.templates.names().iter().map(String::as_str),
        ) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        }
        return Err(UsageError(msg));
    }

    let data = match &args.data {
        None => Value::Object(Default::default()),
        Some(p) => read_data(p)?,
    };
    match project.templates.render(&name, &data) {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let file = display_path(&layout.templates_dir.join(&name), &opts.display_base);
            let mut d = Diagnostic::error("render", e.message.clone()).in_file(file.clone());
            if let Some(line) = e.line {
                let text =
                    std::fs::read_to_string(layout.templates_dir.join(&name)).unwrap_or_default();
                let src = SourceFile::new(file, text);
                d = src.locate(
                    d,
                    crate::definitions::diagnostics::Span::new(
                        line,
                        1,
                        src.line(line).map(|l| l.chars().count()).unwrap_or(1),
                    ),
                );
            }
            eprintln!("{}", d.render(color));
            Ok(ExitCode::from(1))
        }
    }
}

/// Accepts a template's name or a path to it inside templates/.
fn template_name(arg: &str, templates_dir: &Path) -> String {
    let p = Path::new(arg);
    if p.is_file()
        && let (Ok(abs), Ok(dir)) = (p.canonicalize(), templates_dir.canonicalize())
        && let Ok(rel) = abs.strip_prefix(&dir)
    {
        return rel.to_string_lossy().replace('\\', "/");
    }
    arg.trim_start_matches("templates/").to_owned()
}

pub(crate) fn read_data(path: &Path) -> Result<Value, UsageError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?
    };
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if is_yaml {
        let file = SourceFile::new(path, text);
        return parse(&file).map(|p| p.value).map_err(|ds| {
            UsageError(
                ds.iter()
                    .map(|d| d.render(false))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        });
    }
    serde_json::from_str(&text)
        .map_err(|e| UsageError(format!("{} is not valid JSON: {e}", path.display())))
}
