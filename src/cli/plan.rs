//! `compose-fleet plan`: where every replica would go, and why some cannot go anywhere.
//!
//! Reads the project and the inventory, places every replica (`plan::plan_offline` with
//! `--offline` or when every host declares its capacity; otherwise `plan::plan_with_facts` with
//! every host's facts gathered over SSH), prints the report (text or the JSON
//! contract) to stdout, and exits 1 when anything is unschedulable.

use std::io::Write as _;
use std::process::ExitCode;

use clap::ValueEnum;

use super::project::{self, print_diagnostics};
use super::{CmdResult, Failure, GlobalArgs};
use crate::inventory;
use crate::output;
use crate::plan::{self, HostFacts, PlanError};
use crate::ssh;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Plan from the capacities declared in the inventory onto empty hosts, contacting no host
    #[arg(long)]
    pub offline: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Ask every host what runs and print the changes `up` would make; exit 0 when there are
    /// none, 2 when there are some, 1 on an error (for CI)
    #[arg(long, conflicts_with = "offline")]
    pub detailed_exitcode: bool,
    #[command(flatten)]
    pub conn: super::up::ConnArgs,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    if args.detailed_exitcode {
        return super::up::changes(global, &args.conn, args.format == Format::Json);
    }
    let workspace = project::resolve(global)?;
    // A project whose graph is broken is refused here, before any host is asked anything.
    let loaded = workspace.project()?.loaded;
    let fleet = workspace.fleet()?;
    let declared_everywhere = fleet.hosts.iter().all(|h| h.capacity.is_some());
    let placement = if args.offline || declared_everywhere {
        plan::plan_offline(&loaded.project, &fleet)
    } else {
        // Hosts without a declared capacity are asked for theirs; every host is asked, so that
        // one that cannot be reached gets nothing new.
        let facts = gather_facts(&fleet)?;
        plan::plan_with_facts(&loaded.project, &fleet, &facts, &[])
    };
    let placement = match placement {
        Ok(p) => p,
        Err(PlanError::Fleet(msg)) => return Err(Failure::User(msg)),
        Err(PlanError::Project(diags)) => {
            print_diagnostics(&diags, &loaded.sources);
            return Err(Failure::Reported(1));
        }
    };
    match args.format {
        Format::Text => {
            // Where built images go (stderr: the report on stdout is the placement).
            for route in crate::build::routes(&loaded.project, &fleet.build) {
                output::status(&route);
            }
            let demands = plan::demands(&loaded.project);
            output::data(&plan::render_text(&placement, &demands));
        }
        Format::Json => {
            // Written as it is serialized: the contract lists every replica, and holding a
            // million of them as JSON values would cost hundreds of bytes each.
            // A closed pipe (`| head`) is not an error, as for every other output.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let _ = plan::write_json(&placement, &mut out);
            let _ = writeln!(out);
            let _ = out.flush();
        }
    }
    if placement.unschedulable.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        output::error(&format!(
            "{} of the project cannot be placed on this fleet (see UNSCHEDULABLE above)",
            match placement.unschedulable.len() {
                1 => "1 replica".to_string(),
                n => format!("{n} replicas"),
            }
        ));
        Ok(ExitCode::from(1))
    }
}

/// Every host's cpus, memory and arch over SSH (the `hosts` transport, all hosts in parallel);
/// a host that cannot be reached is named on stderr and left out (placement treats it as
/// unreachable).
fn gather_facts(fleet: &inventory::Fleet) -> Result<plan::Facts, Failure> {
    let reports =
        ssh::facts_blocking(fleet, &ssh::Options::default()).map_err(|e| match e.class {
            ssh::ErrorClass::Local => Failure::Internal(e.to_string()),
            _ => Failure::User(e.to_string()),
        })?;
    let mut facts = plan::Facts::new();
    for (name, report) in reports {
        match report {
            Ok(r) => {
                facts.insert(
                    name,
                    HostFacts {
                        cpus: f64::from(r.facts.cpus),
                        memory: r.facts.memory,
                        arch: r.facts.arch,
                    },
                );
            }
            Err(e) => output::error(&format!("planning without host {name}: {e}")),
        }
    }
    Ok(facts)
}
