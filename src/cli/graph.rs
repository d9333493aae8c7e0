//! `compose-fleet graph`: load the project, build its dependency graph, print it as text, DOT or
//! JSON (the formats are [`crate::graph::ServiceGraph`]'s). Graph errors are rendered against the
//! files read, like load errors, and exit 1.

use std::process::ExitCode;

use super::project::{load_project, print_diagnostics};
use super::{output, CmdResult, Failure, GlobalArgs};
use crate::graph;

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
    let loaded = load_project(global)?;
    let graph = match graph::build(&loaded.project) {
        Ok(graph) => graph,
        Err(problems) => {
            print_diagnostics(&problems, &loaded.sources);
            let n = problems.errors().count();
            output::error(&format!(
                "the dependency graph of project `{}` has {n} error{}",
                loaded.project.name,
                if n == 1 { "" } else { "s" }
            ));
            return Err(Failure::Reported(1));
        }
    };
    print_diagnostics(graph.warnings(), &loaded.sources);
    let text = match args.format {
        Format::Text => graph.to_text(),
        Format::Dot => graph.to_dot(&loaded.project.name),
        Format::Json => serde_json::to_string_pretty(&graph.to_json())
            .map_err(|e| Failure::Internal(format!("cannot serialize the graph: {e}")))?,
    };
    output::data(&text);
    Ok(ExitCode::SUCCESS)
}
