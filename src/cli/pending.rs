//! Commands whose issue has not landed yet: they say so and exit 2.

use super::{CmdResult, Failure, GlobalArgs};

/// Arguments are accepted but not yet interpreted.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub fn run(name: &str, _global: &GlobalArgs, _args: Args) -> CmdResult {
    Err(Failure::Internal(format!(
        "`compose-fleet {name}` is not yet implemented"
    )))
}
