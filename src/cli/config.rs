//! `compose-fleet config`.

use super::{CmdResult, Failure, GlobalArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub fn run(_global: &GlobalArgs, _args: Args) -> CmdResult {
    Err(Failure::Internal(
        "`compose-fleet config` is not yet implemented".into(),
    ))
}
