//! `compose-fleet plan`: where every replica would go, and why some cannot go anywhere.
//!
//! Reads the project and the inventory, places every replica (`plan::plan_offline`, or
//! `plan::plan_with_facts` once host facts are gathered), prints the report (text or the JSON
//! contract) to stdout, and exits 1 when anything is unschedulable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use super::project::{load_project, print_diagnostics};
use super::{output, CmdResult, Failure, GlobalArgs};
use crate::compose::{options, Environment, RealFs};
use crate::inventory;
use crate::plan::{self, PlanError};

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
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let loaded = load_project(global)?;
    let fleet_path = inventory_path(global);
    let fleet = inventory::load(&fleet_path).map_err(|e| {
        for d in &e.diagnostics.0 {
            output::diagnostic(&e.sources.render(d));
        }
        Failure::Reported(1)
    })?;
    let declared_everywhere = fleet.hosts.iter().all(|h| h.capacity.is_some());
    if !args.offline && !declared_everywhere {
        let missing: Vec<&str> = fleet
            .hosts
            .iter()
            .filter(|h| h.capacity.is_none())
            .map(|h| h.name.as_str())
            .collect();
        return Err(Failure::User(format!(
            "hosts without a declared capacity ({}) need their facts, and facts-based planning \
             needs the `hosts` transport, which this build does not have yet; declare \
             `capacity: {{ cpus: N, memory: SIZE }}` for them in {}",
            missing.join(", "),
            fleet_path.display()
        )));
    }
    // Without `--offline` the plan will use facts and observed state from the hosts (wired with
    // the `hosts` transport: `plan::plan_with_facts`); until then, declared capacities on empty
    // hosts are all there is, which is exactly the offline plan.
    let placement = match plan::plan_offline(&loaded.project, &fleet) {
        Ok(p) => p,
        Err(PlanError::Fleet(msg)) => return Err(Failure::User(msg)),
        Err(PlanError::Project(diags)) => {
            print_diagnostics(&diags, &loaded.sources);
            return Err(Failure::Reported(1));
        }
    };
    match args.format {
        Format::Text => {
            let demands = plan::demands(&loaded.project);
            output::data(&plan::render_text(&placement, &demands));
        }
        Format::Json => {
            let text = serde_json::to_string_pretty(&plan::to_json(&placement))
                .map_err(|e| Failure::Internal(format!("cannot print the plan as JSON: {e}")))?;
            output::data(&text);
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

/// `-i`/`COMPOSE_FLEET_INVENTORY`, else `inventory.yaml` beside the first compose file.
fn inventory_path(global: &GlobalArgs) -> PathBuf {
    let env: Environment = std::env::vars().collect();
    let first = std::env::current_dir()
        .ok()
        .and_then(|cwd| options::resolve(global, &env, &cwd, &RealFs).ok())
        .and_then(|o| o.files.first().cloned());
    inventory::default_path(global.inventory.as_deref(), first.as_deref())
}
