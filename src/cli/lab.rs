//! `compose-fleet lab`: bring a lab fleet up or down, list the labs, show one's status, run a
//! command in a host.

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
    /// Create (or repair) a lab: hosts with sshd in network namespaces, and a registry
    Up(UpArgs),
    /// Remove a lab: processes, namespaces, links, mounts and its directory (other labs stay)
    Down(Which),
    /// Show a lab's hosts and whether each sshd and the registry answer
    Status(Which),
    /// Run a command inside a lab host's namespaces: `lab exec lab-1 -- hostname` (the host's
    /// name finds its lab)
    Exec(ExecArgs),
    /// List the labs on this machine: name, directory, subnets, hosts, and whether each is up
    List,
}

/// Which lab: by name (default `lab`), or by its directory.
#[derive(Debug, clap::Args)]
pub struct Which {
    /// The lab's name; labs of different names live side by side [default: lab]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The lab directory (inventory, keys, per-host state) [default: the recorded one, else
    /// /var/lib/compose-fleet-lab for `lab` and /var/lib/compose-fleet-lab-NAME for others]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl Which {
    fn find(&self) -> Result<Lab, Failure> {
        Lab::find(self.name.as_deref(), self.dir.as_deref()).map_err(failure)
    }
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of hosts (NAME-1..NAME-N, at .11… of the lab's subnet)
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Spread the hosts over this many L2 segments, each its own bridge and /24, that reach each
    /// other only through the root namespace [default: as before, else 1]
    #[arg(long, value_name = "N")]
    pub sites: Option<usize>,
    #[command(flatten)]
    pub which: Which,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The host, e.g. lab-1
    pub host: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub which: Which,
}

pub fn run(_global: &GlobalArgs, args: Args) -> CmdResult {
    // Say what is missing before looking any lab up (`list` only reads the index).
    if !matches!(args.command, LabCommand::List) {
        lab::require_root().map_err(failure)?;
    }
    match args.command {
        LabCommand::Up(a) => {
            let started = std::time::Instant::now();
            a.which.find()?.up(a.hosts, a.sites).map_err(failure)?;
            output::status(&format!(
                "lab: ready in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down(a) => {
            a.find()?.down().map_err(failure)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status(a) => status(&a.find()?),
        LabCommand::Exec(a) => {
            // Without --name or --dir, the host's name says which lab it is in.
            let named = a.which.name.is_some() || a.which.dir.is_some();
            let lab = match (!named).then(|| lab::lab_of_host(&a.host)).flatten() {
                Some(lab) => lab,
                None => a.which.find()?,
            };
            let mut cmd = lab.exec(&a.host, &a.command).map_err(failure)?;
            let status = cmd
                .status()
                .map_err(|e| Failure::Internal(format!("cannot run nsenter: {e}")))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(2).clamp(0, 255) as u8
            ))
        }
        LabCommand::List => list(),
    }
}

fn list() -> CmdResult {
    let labs = lab::list();
    if labs.is_empty() {
        output::status("lab: no labs on this machine; start one with `compose-fleet lab up`");
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!(
        "{:<16} {:<5} {:<6} {:<32} {}\n",
        "NAME", "UP", "HOSTS", "SUBNETS", "DIR"
    );
    for l in &labs {
        text.push_str(&format!(
            "{:<16} {:<5} {:<6} {:<32} {}\n",
            l.name,
            if l.up { "yes" } else { "no" },
            l.hosts,
            l.subnets.join(","),
            l.dir.display()
        ));
    }
    output::data(&text);
    Ok(ExitCode::SUCCESS)
}

fn status(lab: &Lab) -> CmdResult {
    let status = lab.status().map_err(failure)?;
    let yes_no = |b: bool| if b { "up" } else { "down" };
    let mut text = format!(
        "{:<16} {:<16} {:<6} {:<8}\n",
        "HOST", "ADDRESS", "NETNS", "SSHD"
    );
    let mut all_up = status.registry_answers;
    for h in &status.hosts {
        let up = h.sshd_pid.is_some() && h.sshd_answers;
        all_up &= up && h.netns;
        text.push_str(&format!(
            "{:<16} {:<16} {:<6} {}\n",
            h.name,
            h.address,
            if h.netns { "yes" } else { "no" },
            yes_no(up)
        ));
    }
    text.push_str(&format!(
        "{:<16} {:<16} {:<6} {}\n",
        "registry",
        status.registry,
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
