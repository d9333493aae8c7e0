//! What a command works on, resolved once: [`resolve`] turns the global flags, the process
//! environment and the working directory into the compose load options and the inventory path;
//! [`Workspace::project`] loads the project and checks its dependency graph, and
//! [`Workspace::fleet`] loads the inventory. Every command goes through here, so every command
//! finds the same files (`-f`, `COMPOSE_FILE`, discovery) and rejects a broken graph with the same
//! words.

use std::path::{Path, PathBuf};

use crate::compose::{self, options, Environment, LoadOptions, Loaded, RealFs};
use crate::diag::{Diagnostics, SourceMap};
use crate::graph::{self, ServiceGraph};
use crate::inventory::{self, Fleet};
use crate::limits::Limits;
use crate::output;

use super::{Failure, GlobalArgs};

/// The files a command works on.
#[derive(Debug)]
pub struct Workspace {
    env: Environment,
    /// The compose files and settings, or why none were found (only an error for a command that
    /// loads the project: `hosts` needs just the inventory).
    options: Result<LoadOptions, String>,
    /// `-i`/`COMPOSE_FLEET_INVENTORY`, else `inventory.yaml` beside the first compose file (as
    /// `-f`, `COMPOSE_FILE` or discovery found it), else in the working directory.
    inventory: PathBuf,
    /// The input bounds in force (defaults, `COMPOSE_FLEET_MAX_*`, `--limit`).
    limits: Limits,
}

/// A loaded project whose dependency graph holds.
#[derive(Debug)]
pub struct Checked {
    pub loaded: Loaded,
    pub graph: ServiceGraph,
}

/// The one place the project and inventory are found, for every command.
pub fn resolve(global: &GlobalArgs) -> Result<Workspace, Failure> {
    let env: Environment = std::env::vars().collect();
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::Internal(format!("cannot read the working directory: {e}")))?;
    let options = options::resolve(&global.compose_flags(), &env, &cwd, &RealFs);
    let first = options.as_ref().ok().and_then(|o| o.files.first());
    let inventory =
        inventory::default_path(global.inventory.as_deref(), first.map(PathBuf::as_path));
    let limits = global.limits()?;
    Ok(Workspace {
        env,
        options,
        inventory,
        limits,
    })
}

impl Workspace {
    /// The input bounds in force for this command.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The inventory file this command uses.
    pub fn inventory_path(&self) -> &Path {
        &self.inventory
    }

    /// Loads the project and checks its graph, printing the warnings of both. On errors prints
    /// them all and fails with exit code 1.
    pub fn project(&self) -> Result<Checked, Failure> {
        let checked = self.project_quiet()?;
        print_diagnostics(&checked.loaded.warnings, &checked.loaded.sources);
        Ok(checked)
    }

    /// As [`Workspace::project`], but leaves printing the warnings (the graph's are appended to
    /// the loader's) to the caller.
    pub fn project_quiet(&self) -> Result<Checked, Failure> {
        let opts = self
            .options
            .as_ref()
            .map_err(|e| Failure::User(e.clone()))?;
        let mut loaded = match compose::load(opts, &self.env, &RealFs) {
            Ok(loaded) => loaded,
            Err(failure) => {
                print_diagnostics(&failure.diagnostics, &failure.sources);
                let n = failure.diagnostics.errors().count();
                output::error(&format!(
                    "could not load the project: {n} error{}",
                    plural(n)
                ));
                return Err(Failure::Reported(1));
            }
        };
        let graph = check_graph(&loaded)?;
        loaded.warnings.0.extend(graph.warnings().0.iter().cloned());
        Ok(Checked { loaded, graph })
    }

    /// Loads the inventory and prints its warnings (to stderr, once: every command that loads
    /// a fleet comes through here once); its problems are printed and fail with exit code 1.
    pub fn fleet(&self) -> Result<Fleet, Failure> {
        let fleet = inventory::load_with(&self.inventory, &self.limits).map_err(|e| {
            print_diagnostics(&e.diagnostics, &e.sources);
            Failure::Reported(1)
        })?;
        for w in &fleet.warnings {
            output::diagnostic(&format!("{w}\n"));
        }
        Ok(fleet)
    }
}

/// The dependency graph, or its errors printed (the same words for every command) and exit 1.
fn check_graph(loaded: &Loaded) -> Result<ServiceGraph, Failure> {
    graph::build(&loaded.project).map_err(|problems| {
        print_diagnostics(&problems, &loaded.sources);
        let n = problems.errors().count();
        output::error(&format!(
            "the dependency graph of project `{}` has {n} error{}",
            loaded.project.name,
            plural(n)
        ));
        Failure::Reported(1)
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Renders diagnostics rustc style to stderr.
pub fn print_diagnostics(diags: &Diagnostics, sources: &SourceMap) {
    for d in &diags.0 {
        output::located(d, &sources.render(d));
    }
}
