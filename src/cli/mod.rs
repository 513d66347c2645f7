//! The `herald` command line. Each subcommand lives in its own module; this one parses
//! arguments and maps outcomes to exit codes: 0 success, 1 a definition problem (or a failed
//! run), 2 a usage or IO problem.

mod campaign;
mod contacts;
mod init;
mod render;
mod run;
mod schema;
pub mod serve;
mod silence;
mod test;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "A declarative workflow engine: YAML definitions, validated, run durably, reloaded live."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every definition, template and the config; report all problems with positions.
    Validate(validate::Args),
    /// Print the JSON Schema of a definition kind (or write all of them).
    Schema(schema::Args),
    /// Render a template with data, to preview a message.
    Render(render::Args),
    /// Create a small working project in a new folder.
    Init(init::Args),
    /// Serve webhooks, run schedules and workflows, deliver messages; reload on file changes.
    Serve(serve::Args),
    /// Run one workflow in-process, fast-forwarding its waits, and print its step log.
    Run(run::Args),
    /// Run the project's tests (`kind: test` files) offline, on a virtual clock.
    Test(test::Args),
    /// Manage contacts in the project's database: import them from a file.
    Contacts(contacts::Args),
    /// List, show, pause, resume or cancel campaigns, on the project's database.
    Campaign(campaign::Args),
    /// Silence alerts' notifications for a while: add, list or expire silences, on the
    /// project's database.
    Silence(silence::Args),
}

/// Where a command that works on the project's database finds it: shared by `herald
/// campaign` and `herald silence`.
#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    /// The project folder (holding herald.yaml).
    #[arg(long, value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// The database: sqlite://path or postgres://... Overrides herald.yaml.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", global = true)]
    pub database_url: Option<String>,
    /// Read `NAME=value` lines from this file before the environment, for `${env:NAME}`.
    #[arg(long, value_name = "FILE", global = true)]
    pub env_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum Format {
    /// Compiler-style text with the source line and a caret.
    #[default]
    Human,
    /// One JSON document, for editors and CI.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub(crate) fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
            }
        }
    }
}

/// A failure that is the user's invocation or environment, not their definitions: exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl<E: std::fmt::Display> From<E> for UsageError {
    fn from(e: E) -> Self {
        UsageError(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(a) => validate::run(a),
        Command::Schema(a) => schema::run(a),
        Command::Render(a) => render::run(a),
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Run(a) => run::run(a),
        Command::Test(a) => test::run(a),
        Command::Contacts(a) => contacts::run(a),
        Command::Campaign(a) => campaign::run(a),
        Command::Silence(a) => silence::run(a),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// The folder a command works on, defaulting to the current one.
pub(crate) fn dir_or_current(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from("."))
}
