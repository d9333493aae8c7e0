//! `compose-fleet lab`: bring the lab fleet up or down, show its status, run a command in a host.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{CmdResult, Failure, GlobalArgs};
use crate::lab::{self, Lab};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Create (or repair) the lab: hosts with sshd in network namespaces, and a registry
    Up(UpArgs),
    /// Remove the lab: processes, namespaces, links, routes, mounts and the lab directory
    Down(DirArg),
    /// Show the lab's hosts and whether each sshd and the registry answer
    Status(DirArg),
    /// Run a command inside a lab host's namespaces: `lab exec lab-1 -- hostname`
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The lab directory (inventory, keys, per-host state)
    #[arg(long, value_name = "DIR", default_value = lab::DEFAULT_DIR)]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of hosts (lab-1..lab-N at 10.250.0.11…)
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    #[command(flatten)]
    pub dir: DirArg,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The host, e.g. lab-1
    pub host: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub dir: DirArg,
}

pub fn run(_global: &GlobalArgs, args: Args) -> CmdResult {
    match args.command {
        LabCommand::Up(a) => {
            let started = std::time::Instant::now();
            Lab::at(&a.dir.dir).up(a.hosts).map_err(failure)?;
            output::status(&format!(
                "lab: ready in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down(a) => {
            Lab::at(&a.dir).down().map_err(failure)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status(a) => status(&Lab::at(&a.dir)),
        LabCommand::Exec(a) => {
            lab::require_root().map_err(failure)?;
            let mut cmd = Lab::at(&a.dir.dir)
                .exec(&a.host, &a.command)
                .map_err(failure)?;
            let status = cmd
                .status()
                .map_err(|e| Failure::Internal(format!("cannot run nsenter: {e}")))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(2).clamp(0, 255) as u8
            ))
        }
    }
}

fn status(lab: &Lab) -> CmdResult {
    // Reading the namespaces of root's processes needs root too.
    lab::require_root().map_err(failure)?;
    let status = lab.status().map_err(failure)?;
    if status.hosts.is_empty() {
        output::status(&format!("lab: no lab at {}", lab.dir().display()));
        return Ok(ExitCode::from(1));
    }
    let yes_no = |b: bool| if b { "up" } else { "down" };
    let mut text = format!(
        "{:<10} {:<14} {:<6} {:<8}\n",
        "HOST", "ADDRESS", "NETNS", "SSHD"
    );
    let mut all_up = status.registry_answers;
    for h in &status.hosts {
        let up = h.sshd_pid.is_some() && h.sshd_answers;
        all_up &= up && h.netns;
        text.push_str(&format!(
            "{:<10} {:<16} {:<6} {}\n",
            h.name,
            h.address,
            if h.netns { "yes" } else { "no" },
            yes_no(up)
        ));
    }
    text.push_str(&format!(
        "{:<10} {:<16} {:<6} {}\n",
        "registry",
        lab::REGISTRY,
        "-",
        yes_no(status.registry_answers && status.registry_pid.is_some())
    ));
    output::data(&text);
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn failure(e: lab::Error) -> Failure {
    match e {
        lab::Error::User(m) => Failure::User(m),
        lab::Error::Env(m) | lab::Error::Internal(m) => Failure::Internal(m),
    }
}
