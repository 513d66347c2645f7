//! A project folder: `herald.yaml`, `workflows/` and `templates/`, loaded and checked as one
//! set. This is the single path from files to a validated set, shared by `herald validate`,
//! `herald serve` and hot reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diagnostics::{Diagnostic, Report};
use super::env::EnvSource;
use super::model::ConfigDef;
use super::schema::{SchemaKind, Schemas};
use super::semantic::CompiledTexts;
use super::source::{Parsed, SourceFile};
use super::{Definition, semantic};
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
    /// Where `herald test` finds its `kind: test` files.
    pub tests_dir: PathBuf,
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
            tests_dir: root.join(&paths.tests),
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
    pub definitions: Vec<Arc<Definition>>,
    pub templates: Templates,
    /// How many definition files were read, valid or not.
    pub files_read: usize,
}

/// Shows `path` relative to `base` when it is inside it.
pub(crate) fn display_path(path: &Path, base: &Path) -> PathBuf {
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
pub(crate) fn definition_files(dir: &Path) -> Vec<PathBuf> {
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
            // The entry's type comes with the listing; only a symbolic link needs a look at
            // what it points to.
            let is_dir = match entry.file_type() {
                Ok(t) if !t.is_symlink() => t.is_dir(),
                _ => path.is_dir(),
            };
            if is_dir {
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

/// What one load of a project keeps for the next load of the same project, so that a reload
/// only does again the work a change calls for. Every file is still read and the semantic pass
/// still runs over the whole set; what is reused is a function of a file's text alone:
///
/// - each definition file's parse, schema check and deserialization, by path, display path and
///   text (an unchanged file gives the same definition, or the same diagnostics);
/// - each template and expression the semantic pass compiled, by its text.
///
/// A load with a cache gives exactly what [`load`] gives.
#[derive(Debug, Default)]
pub struct LoadCache {
    files: HashMap<PathBuf, CachedFile>,
    texts: CompiledTexts,
}

#[derive(Debug)]
struct CachedFile {
    display: PathBuf,
    text: Arc<str>,
    result: FileResult,
}

impl LoadCache {
    /// Reads every definition file (path, display path) and returns, in the same order, each
    /// one's display path and what it holds. Only files whose text is not the one cached are
    /// parsed, on several threads when there are many. The cache is left holding exactly these
    /// files.
    fn read_all(
        &mut self,
        files: Vec<(PathBuf, PathBuf)>,
    ) -> Vec<(PathBuf, std::io::Result<FileResult>)> {
        let mut read = Vec::with_capacity(files.len());
        let mut to_parse = Vec::new();
        for (path, display) in files {
            let entry = std::fs::read(&path).map(|bytes| {
                let text = match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(e) => {
                        let (text, d) = not_utf8(&display, e);
                        return (text, Some(Err((vec![d], None))));
                    }
                };
                let text: Arc<str> = text.into();
                let cached = self
                    .files
                    .remove(&path)
                    .filter(|c| c.display == display && c.text == text)
                    .map(|c| c.result);
                if cached.is_none() {
                    to_parse.push(SourceFile::new(display.clone(), text.clone()));
                }
                (text, cached)
            });
            read.push((path, display, entry));
        }
        // What is left is files that are gone.
        self.files.clear();
        let mut parsed = parse_all(to_parse).into_iter();
        read.into_iter()
            .map(|(path, display, entry)| {
                let (text, cached) = match entry {
                    Ok(e) => e,
                    Err(e) => return (display, Err(e)),
                };
                let result = cached
                    .or_else(|| parsed.next())
                    .expect("every file read is cached or parsed");
                let kept = CachedFile {
                    display: display.clone(),
                    text,
                    result: result.clone(),
                };
                self.files.insert(path, kept);
                (display, Ok(result))
            })
            .collect()
    }
}

/// A file's definition, or its errors with what could be salvaged of it for checking.
type FileResult = Result<Arc<Definition>, (Vec<Diagnostic>, Option<Arc<Definition>>)>;

/// A file that is not UTF-8, reported at its first bad byte (with the text shown lossily).
fn not_utf8(display: &Path, e: std::string::FromUtf8Error) -> (Arc<str>, Diagnostic) {
    let bytes = e.as_bytes();
    let at = e.utf8_error().valid_up_to();
    let before = String::from_utf8_lossy(&bytes[..at]);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let text: Arc<str> = String::from_utf8_lossy(bytes).into_owned().into();
    let file = SourceFile::new(display.to_path_buf(), text.clone());
    let d = Diagnostic::error(
        "not-utf8",
        format!(
            "the file is not UTF-8: byte 0x{:02X} here is not valid UTF-8",
            bytes[at]
        ),
    )
    .with_hint("save the file as UTF-8; text from older Windows tools is often Windows-1252");
    (
        text,
        file.locate(
            d,
            crate::definitions::diagnostics::Span::new(line, column, 1),
        ),
    )
}

/// Below this many files to parse, one thread does it all.
const PARALLEL_FROM: usize = 32;

/// Parses, schema-checks and deserializes files, in order; spread over the machine's cores when
/// there are enough of them to be worth a thread.
fn parse_all(files: Vec<SourceFile>) -> Vec<FileResult> {
    let read = |file: SourceFile| {
        crate::definitions::read_definition_salvaging(file)
            .map(Arc::new)
            .map_err(|s| (s.diagnostics, s.partial.map(Arc::new)))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || files.len() < PARALLEL_FROM {
        return files.into_iter().map(read).collect();
    }
    let per_thread = files.len().div_ceil(threads);
    let mut files = files.into_iter();
    let chunks: Vec<Vec<SourceFile>> = (0..threads)
        .map(|_| files.by_ref().take(per_thread).collect())
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(read).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Loads and checks a whole project.
pub fn load(layout: &Layout, opts: &LoadOptions) -> (Project, Report) {
    load_with(layout, opts, &mut LoadCache::default())
}

/// [`load`], reusing what an earlier load of the same project kept in `cache`, and leaving in
/// it what this one found.
pub(crate) fn load_with(
    layout: &Layout,
    opts: &LoadOptions,
    cache: &mut LoadCache,
) -> (Project, Report) {
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
    let files: Vec<(PathBuf, PathBuf)> = files
        .into_iter()
        .map(|path| {
            let display = display_path(&path, &opts.display_base);
            (path, display)
        })
        .collect();
    for (display, result) in cache.read_all(files) {
        match result {
            Ok(Ok(def)) => definitions.push(def),
            // The salvaged rest of a file with errors is checked too, so its other mistakes
            // are reported in the same run; the errors keep it from ever being run.
            Ok(Err((diags, partial))) => {
                report.extend(diags);
                definitions.extend(partial);
            }
            Err(e) => {
                report.push(
                    Diagnostic::error("io", format!("cannot read the file: {e}")).in_file(display),
                );
            }
        }
    }

    let project = Project {
        layout: layout.clone(),
        config,
        definitions,
        templates,
        files_read,
    };
    report.extend(semantic::check_with(&project, opts, &mut cache.texts));
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "kind: workflow\nid: ID\ntriggers:\n  - webhook: { path: /hooks/ID }\nsteps:\n  - id: greet\n    set: { greeting: \"Hi {{ body.name }}\" }\n";

    fn good(id: &str) -> String {
        GOOD.replace("ID", id)
    }

    fn rendered(report: &Report) -> Vec<String> {
        report.diagnostics.iter().map(|d| d.render(false)).collect()
    }

    /// A load that reuses an earlier load's cache finds exactly what a fresh load finds.
    #[test]
    fn a_cached_load_gives_what_a_fresh_load_gives() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("workflows")).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), "channels: {}\n").unwrap();
        let wf = |name: &str| dir.join("workflows").join(name);
        std::fs::write(wf("a.yaml"), good("a")).unwrap();
        std::fs::write(wf("b.yaml"), good("b").replace("set:", "sett:")).unwrap();
        std::fs::write(wf("c.yaml"), good("c").replace("body.name", "bdy.name")).unwrap();
        std::fs::write(wf("d.yaml"), good("d")).unwrap();
        let layout = Layout::discover(dir).unwrap();
        let opts = LoadOptions {
            env_mode: EnvMode::Validate,
            env: EnvSource::Map(Default::default()),
            display_base: dir.to_path_buf(),
        };
        let mut cache = LoadCache::default();

        let check = |cache: &mut LoadCache| {
            let (cached, cached_report) = load_with(&layout, &opts, cache);
            let (fresh, fresh_report) = load(&layout, &opts);
            assert_eq!(rendered(&cached_report), rendered(&fresh_report));
            let ids = |p: &Project| {
                p.definitions
                    .iter()
                    .map(|d| (d.id.clone(), d.hash.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&cached), ids(&fresh));
            (cached, cached_report)
        };
        let (first, report) = check(&mut cache);
        assert_eq!(report.errors(), 2, "{:#?}", rendered(&report));

        // Unchanged files are not parsed again; changed, new and removed ones are seen.
        std::fs::write(wf("a.yaml"), good("a").replace("greet", "greet_2")).unwrap();
        std::fs::write(wf("b.yaml"), good("b")).unwrap();
        std::fs::remove_file(wf("c.yaml")).unwrap();
        std::fs::write(wf("e.yaml"), good("d")).unwrap();
        let (second, report) = check(&mut cache);
        assert_eq!(report.errors(), 2, "{:#?}", rendered(&report)); // d and e share id and path
        let d = |p: &Project| p.definitions.iter().find(|d| d.id == "d").cloned().unwrap();
        assert!(Arc::ptr_eq(&d(&first), &d(&second)));
        let a = |p: &Project| p.definitions.iter().find(|d| d.id == "a").cloned().unwrap();
        assert!(!Arc::ptr_eq(&a(&first), &a(&second)));

        // Back to the first state.
        std::fs::write(wf("a.yaml"), good("a")).unwrap();
        std::fs::write(wf("b.yaml"), good("b").replace("set:", "sett:")).unwrap();
        std::fs::write(wf("c.yaml"), good("c").replace("body.name", "bdy.name")).unwrap();
        std::fs::remove_file(wf("e.yaml")).unwrap();
        let (_, again) = check(&mut cache);
        let (_, fresh) = load(&layout, &opts);
        assert_eq!(rendered(&again), rendered(&fresh));
        assert_eq!(cache.files.len(), 4);
    }
}
