//! `compose-fleet build [SERVICE…]`: build the services that have `build:` with the builder this
//! machine has, into the local image store (`crate::build`); prints `service<TAB>digest` per
//! image on stdout. `up` delivers them to the hosts.

use std::process::ExitCode;

use super::project;
use super::{CmdResult, Failure, GlobalArgs};
use crate::build::{self, Builder, LocalStore};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The builder to use instead of the first that works (docker buildx, docker, podman, buildah)
    #[arg(long, value_enum)]
    pub builder: Option<Builder>,
    /// Build only these services
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// The store `build` and `up` use, or why it cannot be opened (exit 2: the environment).
pub fn store() -> Result<LocalStore, Failure> {
    LocalStore::open(LocalStore::default_root()).map_err(|e| {
        Failure::Internal(format!(
            "cannot open the local image store: {e}\nhint: set COMPOSE_FLEET_IMAGE_DIR to a writable directory"
        ))
    })
}

/// Whether builds may pull `FROM` images over plain http: when the inventory marks any registry
/// insecure (the lab's registry is).
pub fn insecure(global: &GlobalArgs) -> bool {
    !insecure_registries(global).is_empty()
}

/// The registries (`HOST[:PORT]`) the inventory marks insecure (plain http).
pub fn insecure_registries(global: &GlobalArgs) -> Vec<String> {
    project::resolve(global)
        .ok()
        .and_then(|w| w.fleet().ok())
        .map(|f| {
            f.registries
                .iter()
                .filter(|(_, r)| r.insecure)
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The inventory's registries (none without an inventory).
pub fn inventory_registries(
    global: &GlobalArgs,
) -> std::collections::BTreeMap<String, crate::inventory::Registry> {
    project::resolve(global)
        .ok()
        .and_then(|w| w.fleet().ok())
        .map(|f| f.registries)
        .unwrap_or_default()
}

/// The inventory's `build:` (the defaults without an inventory).
pub fn inventory_build(global: &GlobalArgs) -> crate::inventory::BuildSettings {
    project::resolve(global)
        .ok()
        .and_then(|w| w.fleet().ok())
        .map(|f| f.build)
        .unwrap_or_default()
}

/// The inventory's hosts and the architectures it declares (none without an inventory: a build
/// for this machine).
pub fn declared_hosts(global: &GlobalArgs) -> Vec<build::DeclaredHost> {
    project::resolve(global)
        .ok()
        .and_then(|w| w.fleet().ok())
        .map(|f| build::declared_hosts(&f))
        .unwrap_or_default()
}

/// Refuses a service name the project does not define.
pub fn known_services(
    project: &crate::compose::model::Project,
    services: &[String],
) -> Result<(), Failure> {
    match services.iter().find(|s| !project.services.contains_key(*s)) {
        Some(s) => Err(Failure::User(format!(
            "no service `{s}` in the project\nhint: `compose-fleet config --services` lists them"
        ))),
        None => Ok(()),
    }
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let project = &checked.loaded.project;
    known_services(project, &args.services)?;
    let insecure = insecure(global);
    let hosts = declared_hosts(global);
    let store = store()?;
    let mut builder = None;
    let mut built_any = false;
    for (name, service) in &project.services {
        if !args.services.is_empty() && !args.services.contains(name) {
            continue;
        }
        let Some(mut job) = build::job(&project.name, service, insecure, &project.secrets)
            .map_err(Failure::User)?
        else {
            continue;
        };
        job.hosts = hosts.clone();
        let b = match builder {
            Some(b) => b,
            None => *builder.insert(build::detect(args.builder).map_err(Failure::User)?),
        };
        output::status(&format!("building service `{name}` with {}", b.name()));
        let built = build::build(b, &project.name, &job, &store).map_err(Failure::User)?;
        if !built.variants.is_empty() {
            output::status(&format!(
                "service `{name}`: one image for each of {} under an OCI index",
                built.architectures().join(", ")
            ));
        }
        output::data(&format!("{name}\t{}", built.manifest));
        built_any = true;
    }
    if !built_any {
        output::status("no service to build (none has `build:`)");
    }
    Ok(ExitCode::SUCCESS)
}
