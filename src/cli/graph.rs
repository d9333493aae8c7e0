//! `compose-fleet graph`: load the project, build its dependency graph, print it as text, DOT or
//! JSON (the formats are [`crate::graph::ServiceGraph`]'s). Graph errors are rendered against the
//! files read, like load errors, and exit 1 (as for every command that loads a project:
//! [`super::project::Workspace::project`]).

use std::process::ExitCode;

use super::project;
use super::{CmdResult, Failure, GlobalArgs};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Services in start order with what each waits for
    Text,
    /// Graphviz: `compose-fleet graph --format dot | dot -Tsvg > graph.svg`
    Dot,
    /// The stable JSON structure documented in the README
    Json,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let project::Checked { loaded, graph } = project::resolve(global)?.project()?;
    let text = match args.format {
        Format::Text => graph.to_text(),
        Format::Dot => graph.to_dot(&loaded.project.name),
        Format::Json => serde_json::to_string_pretty(&graph.to_json())
            .map_err(|e| Failure::Internal(format!("cannot serialize the graph: {e}")))?,
    };
    output::data(&text);
    Ok(ExitCode::SUCCESS)
}
