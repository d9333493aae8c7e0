//! `compose-fleet push [SERVICE…] [--registry HOST[:PORT]/prefix]`: push the services' built
//! images (building those never built) to a registry (`crate::build::push`); prints
//! `service<TAB>HOST/name@sha256:…` per image on stdout, what a host pulls.

use std::process::ExitCode;

use super::build::{declared_hosts, insecure_registries, inventory_registries, store};
use super::project;
use super::{CmdResult, Failure, GlobalArgs};
use crate::build::{self, Builder};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry and path to push under, e.g. `registry.example.org/team` (default: the
    /// inventory's `build.registry`, else each service's `image:`, which must then name a
    /// registry). Plain http only for registries the inventory marks insecure
    #[arg(long, value_name = "HOST[:PORT]/prefix")]
    pub registry: Option<String>,
    /// The builder for services never built (default: the first that works)
    #[arg(long, value_enum)]
    pub builder: Option<Builder>,
    /// Push only these services
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
}

pub fn run(global: &GlobalArgs, args: Args) -> CmdResult {
    let workspace = project::resolve(global)?;
    let checked = workspace.project()?;
    let project = &checked.loaded.project;
    super::build::known_services(project, &args.services)?;
    let insecure = insecure_registries(global);
    let hosts = declared_hosts(global);
    let registries = inventory_registries(global);
    let registry = args
        .registry
        .clone()
        .or_else(|| super::build::inventory_build(global).registry);
    let store = store()?;
    // Every target is known before anything is built or sent.
    let mut jobs = Vec::new();
    for (name, service) in &project.services {
        if !args.services.is_empty() && !args.services.contains(name) {
            continue;
        }
        let Some(mut job) = build::job(
            &project.name,
            service,
            !insecure.is_empty(),
            &project.secrets,
        )
        .map_err(Failure::User)?
        else {
            continue;
        };
        job.hosts = hosts.clone();
        let targets = build::push::targets(
            registry.as_deref(),
            &project.name,
            name,
            service.image.as_deref(),
            &job.tags,
        )
        .map_err(Failure::User)?;
        jobs.push((name.clone(), job, targets));
    }
    if jobs.is_empty() {
        output::status("no service to push (none has `build:`)");
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Internal(format!("cannot start the async runtime: {e}")))?;
    let mut builder = None;
    for (name, job, targets) in jobs {
        let built = match store.built(&project.name, &name) {
            Some(b) => b,
            None => {
                let b = match builder {
                    Some(b) => b,
                    None => *builder.insert(build::detect(args.builder).map_err(Failure::User)?),
                };
                output::status(&format!("building service `{name}` with {}", b.name()));
                build::build(b, &project.name, &job, &store).map_err(Failure::User)?
            }
        };
        for target in &targets {
            let host = target.split('/').next().unwrap_or_default();
            let is_insecure = insecure.iter().any(|r| r == host);
            let client = build::push::client(host, is_insecure);
            // The inventory's credentials for this registry, else the docker config's (an
            // identity token is exchanged for a push token).
            let (target_name, _) = build::name_and_tag(target);
            let repository = target_name[host.len()..].trim_start_matches('/');
            let (auth, warnings) = rt
                .block_on(build::push::auth_for(
                    host,
                    repository,
                    is_insecure,
                    &registries,
                    false,
                ))
                .map_err(Failure::User)?;
            for w in warnings {
                output::warning(&w);
            }
            output::status(&format!("pushing service `{name}` to {target}"));
            let pushed = rt
                .block_on(build::push::push(
                    &client,
                    &store,
                    &built.manifest,
                    target,
                    &auth,
                ))
                .map_err(|e| {
                    Failure::User(format!(
                        "{e}\nhint: check that the registry is reachable; a plain-http registry must \
                         be marked `insecure` in the inventory's `registries:`, and one that asks for \
                         credentials gets them from there (`username`, `password_env`) or from `docker login`"
                    ))
                })?;
            output::status(&format!(
                "pushed {} ({} blobs, {} bytes; {} blobs were there already)",
                pushed.reference, pushed.blobs_pushed, pushed.bytes_pushed, pushed.blobs_present
            ));
            // The first name is the service's; a tag's line is for the logs.
            if target == &targets[0] {
                output::data(&format!("{name}\t{}", pushed.reference));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
