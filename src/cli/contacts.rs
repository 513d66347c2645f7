//! `herald contacts import FILE`: contacts from a CSV or JSON-lines file into the project's
//! database (see `contact_import`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{UsageError, dir_or_current};
use crate::contact_import::{self, Format, Options, Target};
use crate::definitions::env::EnvSource;
use crate::definitions::project::{self, EnvMode, Layout, LoadOptions};
use crate::store::campaigns::{Membership, MembershipKind};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Import contacts from a CSV file (with a header row) or a JSON-lines file, one contact
    /// per row: bad rows are reported as `file:line: reason` and the rest go in. Running it
    /// again is safe: rows are matched to contacts by e-mail or phone.
    Import(ImportArgs),
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The file: `.csv`, or `.jsonl` / `.ndjson` (one JSON object per line).
    file: PathBuf,
    /// Where a column goes, as `COLUMN=TARGET`: a field (email, phone, first_name,
    /// last_name, status, timezone), `attributes.NAME`, or `-` to leave it out. Columns not
    /// named go to the field their name spells (`E-mail`, `First Name`, `Mobile`), or else to
    /// an attribute of the same name.
    #[arg(long = "map", value_name = "COLUMN=TARGET")]
    mapping: Vec<String>,
    /// `csv` or `jsonl`, when the file's extension does not say.
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// The project folder (holding herald.yaml): its database and `contacts.default_region`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The database: sqlite://path or postgres://... Overrides herald.yaml.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Put every imported contact on this list (repeat for several): what a campaign's
    /// `audience` selects by.
    #[arg(long = "list", value_name = "NAME")]
    lists: Vec<String>,
    /// Tag every imported contact with this (repeat for several).
    #[arg(long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Rows per transaction.
    #[arg(long, default_value_t = contact_import::DEFAULT_BATCH, value_name = "ROWS")]
    batch: usize,
}

pub fn run(args: Args) -> Result<ExitCode, UsageError> {
    let Command::Import(a) = args.command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(import(a))
}

async fn import(args: ImportArgs) -> Result<ExitCode, UsageError> {
    let format = match args.format.as_deref() {
        Some("csv") => Format::Csv,
        Some("jsonl" | "ndjson") => Format::JsonLines,
        Some(other) => {
            return Err(UsageError(format!(
                "--format {other}: use csv or jsonl"
            )));
        }
        None => Format::of(&args.file).ok_or_else(|| {
            UsageError(format!(
                "{}: cannot tell the format from the name; name it .csv or .jsonl, or give --format csv|jsonl",
                args.file.display()
            ))
        })?,
    };
    let mut mapping = Vec::new();
    for m in &args.mapping {
        let (column, target) = m.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "--map {m}: write COLUMN=TARGET, such as --map Mobile=phone"
            ))
        })?;
        let target = Target::parse(target).map_err(|e| UsageError(format!("--map {m}: {e}")))?;
        mapping.push((column.trim().to_owned(), target));
    }
    if args.batch == 0 {
        return Err(UsageError("--batch must be at least 1".into()));
    }

    let dir = dir_or_current(args.dir);
    let layout = Layout::discover(&dir)?;
    let mut load = LoadOptions::new(EnvMode::Serve);
    load.env = match &args.env_file {
        Some(f) => EnvSource::with_env_file(f)?,
        None => EnvSource::Process,
    };
    let (project, _) = project::load(&layout, &load);
    let config = &project.config.def;
    let store = super::serve::open_project_database(
        args.database_url.as_deref(),
        &config.database,
        &layout.root,
        &load.env,
    )
    .await?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| UsageError(format!("{}: {e}", args.file.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let options = Options {
        format,
        mapping,
        contacts: config.contacts.clone(),
        batch: args.batch,
        memberships: memberships(&args.lists, &args.tags)?,
    };

    let shown = args.file.display().to_string();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{bar:30}] {msg} ({eta} left)",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar
    });
    // Without a terminal: a plain line at every tenth of the file.
    let mut next_tenth = 1;
    let mut progress = |rows: u64, bytes: u64| match &bar {
        Some(bar) => {
            bar.set_position(bytes);
            bar.set_message(format!("{rows} rows"));
        }
        None => {
            if size > 0 && bytes * 10 >= size * next_tenth {
                next_tenth = bytes * 10 / size + 1;
                eprintln!(
                    "{shown}: {rows} rows read ({}%)",
                    (bytes * 100 / size).min(100)
                );
            }
        }
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let started = std::time::Instant::now();
    let result = contact_import::import(
        &store,
        std::io::BufReader::new(file),
        &options,
        now,
        &mut progress,
    )
    .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = result.map_err(|e| UsageError(format!("{shown}: {e}")))?;
    for bad in &summary.bad {
        eprintln!("{shown}:{}: {}", bad.line, bad.reason);
    }
    let imported = summary.created + summary.updated;
    println!(
        "{shown}: {} rows in {:.1} s: {} contacts created, {} updated{}, {} bad",
        summary.rows,
        started.elapsed().as_secs_f64(),
        summary.created,
        summary.updated,
        if summary.duplicates > 0 {
            format!(
                " ({} of them repeated the e-mail or phone of an earlier row and were merged into it)",
                summary.duplicates
            )
        } else {
            String::new()
        },
        summary.bad.len()
    );
    debug_assert_eq!(imported + summary.bad.len() as u64, summary.rows);
    Ok(if summary.bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn memberships(lists: &[String], tags: &[String]) -> Result<Vec<Membership>, UsageError> {
    let mut out = Vec::new();
    for (kind, names, flag) in [
        (MembershipKind::List, lists, "--list"),
        (MembershipKind::Tag, tags, "--tag"),
    ] {
        for name in names {
            let name = name.trim();
            if name.is_empty() {
                return Err(UsageError(format!("{flag} needs a name")));
            }
            out.push(Membership {
                kind,
                name: name.to_owned(),
                member: true,
            });
        }
    }
    Ok(out)
}
