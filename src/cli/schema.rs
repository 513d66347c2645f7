//! `herald schema [KIND]`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::UsageError;
use crate::definitions::schema::{SchemaKind, generate_text};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The kind: workflow, config or test.
    kind: Option<String>,
    /// Write every schema into this folder instead of printing one.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    if let Some(dir) = args.write {
        std::fs::create_dir_all(&dir)
            .map_err(|e| UsageError(format!("cannot create {}: {e}", dir.display())))?;
        for kind in SchemaKind::ALL {
            let path = dir.join(kind.file_name());
            std::fs::write(&path, generate_text(kind))
                .map_err(|e| UsageError(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.kind.as_deref().unwrap_or("workflow");
    let kind = SchemaKind::from_name(name).ok_or_else(|| {
        let names: Vec<_> = SchemaKind::ALL.iter().map(|k| k.name()).collect();
        UsageError(format!(
            "unknown kind `{name}`; available: {}",
            names.join(", ")
        ))
    })?;
    print!("{}", generate_text(kind));
    Ok(ExitCode::SUCCESS)
}
