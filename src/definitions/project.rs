//! A project folder: `herald.yaml`, `workflows/` and `templates/`, loaded and checked as one
//! set. This is the single path from files to a validated set, shared by `herald validate`,
//! `herald serve` and hot reload.

use std::path::{Path, PathBuf};

use super::diagnostics::{Diagnostic, Report};
use super::env::EnvSource;
use super::model::ConfigDef;
use super::schema::{SchemaKind, Schemas};
use super::source::{Parsed, SourceFile};
use super::{Definition, read_definition, semantic};
use crate::templates::{Templates, is_ignored_file};

pub const CONFIG_FILE: &str = "herald.yaml";

/// Where a project's files are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The folder holding `herald.yaml` (or the folder given, if there is none).
    pub root: PathBuf,
    pub config_file: Option<PathBuf>,
    pub workflows_dir: PathBuf,
    pub templates_dir: PathBuf,
}

impl Layout {
    /// Finds the project for `dir`: the nearest folder at or above it holding `herald.yaml`.
    /// Definitions are read from `dir` when it is below that root (`herald validate
    /// workflows/`), else from the configured workflows folder.
    pub fn discover(dir: &Path) -> Result<Layout, String> {
        if !dir.exists() {
            return Err(format!("{} does not exist", dir.display()));
        }
        if !dir.is_dir() {
            return Err(format!("{} is not a folder", dir.display()));
        }
        let root = dir
            .ancestors()
            .find(|a| a.join(CONFIG_FILE).is_file())
            .map(Path::to_path_buf);
        let (root, config_file) = match root {
            Some(r) => {
                let cfg = r.join(CONFIG_FILE);
                (r, Some(cfg))
            }
            None => (dir.to_path_buf(), None),
        };
        let paths = config_file
            .as_ref()
            .and_then(|c| std::fs::read_to_string(c).ok())
            .and_then(|text| {
                let f = SourceFile::new(CONFIG_FILE, text);
                super::source::parse(&f).ok()
            })
            .and_then(|p| serde_json::from_value::<ConfigDef>(p.value).ok())
            .map(|c| c.paths)
            .unwrap_or_default();
        let workflows_dir = if same_dir(dir, &root) {
            root.join(&paths.workflows)
        } else {
            dir.to_path_buf()
        };
        Ok(Layout {
            templates_dir: root.join(&paths.templates),
            workflows_dir,
            root,
            config_file,
        })
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Whether unset `${env:...}` variables are warnings (validating) or errors (serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvMode {
    Validate,
    Serve,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub env_mode: EnvMode,
    pub env: EnvSource,
    /// Paths in diagnostics are shown relative to this folder.
    pub display_base: PathBuf,
}

impl LoadOptions {
    pub fn new(env_mode: EnvMode) -> LoadOptions {
        LoadOptions {
            env_mode,
            env: EnvSource::Process,
            display_base: std::env::current_dir().unwrap_or_default(),
        }
    }
}

/// The config file, parsed, with its source kept for diagnostics.
#[derive(Debug, Clone)]
pub struct Config {
    pub def: ConfigDef,
    pub file: Option<(SourceFile, Parsed)>,
}

/// A loaded project. It is complete even when there were errors (invalid files are left out);
/// callers decide whether errors forbid its use.
#[derive(Debug, Clone)]
pub struct Project {
    pub layout: Layout,
    pub config: Config,
    pub definitions: Vec<Definition>,
    pub templates: Templates,
    /// How many definition files were read, valid or not.
    pub files_read: usize,
}

/// Shows `path` relative to `base` when it is inside it.
pub fn display_path(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_path_buf)
        .or_else(|_| {
            let (p, b) = (path.canonicalize()?, base.canonicalize()?);
            p.strip_prefix(&b)
                .map(Path::to_path_buf)
                .map_err(std::io::Error::other)
        })
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Lists definition files: `*.yaml` and `*.yml`, recursively, skipping hidden folders and
/// editor leftovers. Sorted, so output order never depends on the file system.
pub fn definition_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_ignored_file(&name) {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Loads and checks a whole project.
pub fn load(layout: &Layout, opts: &LoadOptions) -> (Project, Report) {
    let mut report = Report::default();
    let config = load_config(layout, opts, &mut report);

    let templates_display = display_path(&layout.templates_dir, &opts.display_base);
    let (templates, template_diags) = Templates::load(
        &layout.templates_dir,
        &templates_display,
        config.def.templates.fuel,
    );
    report.extend(template_diags);

    let mut definitions = Vec::new();
    let files = if layout.workflows_dir.is_dir() {
        definition_files(&layout.workflows_dir)
    } else {
        report.push(
            Diagnostic::warning(
                "no-definitions",
                format!(
                    "no definitions folder at {}",
                    display_path(&layout.workflows_dir, &opts.display_base).display()
                ),
            )
            .with_hint("create it, or point `paths.workflows` in herald.yaml at yours"),
        );
        Vec::new()
    };
    let files_read = files.len();
    for path in files {
        let display = display_path(&path, &opts.display_base);
        let file = match SourceFile::read(&path, display.clone()) {
            Ok(f) => f,
            Err(e) => {
                report.push(
                    Diagnostic::error("io", format!("cannot read the file: {e}")).in_file(display),
                );
                continue;
            }
        };
        match read_definition(file) {
            Ok(def) => definitions.push(def),
            Err(diags) => report.extend(diags),
        }
    }

    let project = Project {
        layout: layout.clone(),
        config,
        definitions,
        templates,
        files_read,
    };
    report.extend(semantic::check(&project, opts));
    report.sort();
    (project, report)
}

fn load_config(layout: &Layout, opts: &LoadOptions, report: &mut Report) -> Config {
    let Some(path) = &layout.config_file else {
        return Config {
            def: ConfigDef::default(),
            file: None,
        };
    };
    let display = display_path(path, &opts.display_base);
    let file = match SourceFile::read(path, display.clone()) {
        Ok(f) => f,
        Err(e) => {
            report.push(
                Diagnostic::error("io", format!("cannot read the config: {e}")).in_file(display),
            );
            return Config {
                def: ConfigDef::default(),
                file: None,
            };
        }
    };
    let parsed = match super::source::parse(&file) {
        Ok(p) => p,
        Err(diags) => {
            report.extend(diags);
            return Config {
                def: ConfigDef::default(),
                file: None,
            };
        }
    };
    let errors = Schemas::get().validate(SchemaKind::Config, &file, &parsed);
    if !errors.is_empty() {
        report.extend(errors);
        return Config {
            def: ConfigDef::default(),
            file: Some((file, parsed)),
        };
    }
    match super::deserialize::<ConfigDef>(&file, &parsed) {
        Ok(def) => Config {
            def,
            file: Some((file, parsed)),
        },
        Err(diags) => {
            report.extend(diags);
            Config {
                def: ConfigDef::default(),
                file: Some((file, parsed)),
            }
        }
    }
}
