//! Loading the project for any command: options from the global flags and the process
//! environment, the loader, and rendering its diagnostics. Every command that needs the compose
//! project calls [`load_project`].

use crate::compose::{self, options, Environment, Loaded, RealFs};
use crate::diag::{Diagnostics, SourceMap};

use super::{output, Failure, GlobalArgs};

/// Loads the project the global flags describe, prints its warnings, and on errors prints them
/// all and fails with exit code 1.
pub fn load_project(global: &GlobalArgs) -> Result<Loaded, Failure> {
    let loaded = load_project_quiet(global)?;
    print_diagnostics(&loaded.warnings, &loaded.sources);
    Ok(loaded)
}

/// As [`load_project`], but leaves printing the warnings to the caller.
pub fn load_project_quiet(global: &GlobalArgs) -> Result<Loaded, Failure> {
    let env: Environment = std::env::vars().collect();
    let cwd = std::env::current_dir()
        .map_err(|e| Failure::Internal(format!("cannot read the working directory: {e}")))?;
    let opts = options::resolve(global, &env, &cwd, &RealFs).map_err(Failure::User)?;
    match compose::load(&opts, &env, &RealFs) {
        Ok(loaded) => Ok(loaded),
        Err(failure) => {
            print_diagnostics(&failure.diagnostics, &failure.sources);
            let n = failure.diagnostics.errors().count();
            output::error(&format!(
                "could not load the project: {n} error{}",
                if n == 1 { "" } else { "s" }
            ));
            Err(Failure::Reported(1))
        }
    }
}

/// Renders diagnostics rustc style to stderr.
pub fn print_diagnostics(diags: &Diagnostics, sources: &SourceMap) {
    for d in &diags.0 {
        output::diagnostic(&sources.render(d));
    }
}
