//! Reconciling: `Apply` (pull images first, diff the desired pods against the running ones,
//! stop and remove what goes, prepare and start what comes) and `Remove`.

use super::*;

/// What an `ApplyPods` asks beyond the pods: which replacements go start-first, and which
/// outgoing generations to retire.
#[derive(Debug, Default)]
struct Handover {
    start_first: std::collections::BTreeSet<String>,
    retire: std::collections::BTreeSet<String>,
}

impl Supervisor {
    /// Changes only the pods `req` names: the stored desired set with `req.pods` put in (by name)
    /// and `req.remove` taken out, applied as a whole. Kept pods keep their hash, so nothing else
    /// is touched.
    pub async fn apply_pods(&self, req: ApplyPodsRequest) -> Result<ApplyReport, Failure> {
        if !files::valid_name(&req.project) {
            return Err(Failure::bad(format!(
                "{:?} is not a valid project name",
                req.project
            )));
        }
        let _one = self.inner.apply_pods.lock().await;
        let stored: DesiredProject =
            read_json(&self.inner.state.desired(&req.project)).unwrap_or_default();
        let named: std::collections::BTreeSet<&str> = req
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .chain(req.remove.iter().map(String::as_str))
            .collect();
        let mut pods: Vec<PodSpec> = stored
            .pods
            .into_iter()
            .filter(|p| !named.contains(p.name.as_str()))
            .collect();
        pods.extend(req.pods);
        let handover = Handover {
            start_first: req.start_first.into_iter().collect(),
            retire: req.retire.into_iter().collect(),
        };
        self.apply_with(
            ApplyRequest {
                project: req.project,
                pods,
                registry_auth: req.registry_auth,
                insecure_registries: req.insecure_registries,
                network: req.network,
            },
            handover,
        )
        .await
    }

    /// Reconciles a project to exactly `req.pods` (replacing stop-first).
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyReport, Failure> {
        self.apply_with(req, Handover::default()).await
    }

    /// Reconciles a project to exactly `req.pods`, replacing the pods `handover` names
    /// start-first and retiring the outgoing generations it names.
    async fn apply_with(
        &self,
        req: ApplyRequest,
        handover: Handover,
    ) -> Result<ApplyReport, Failure> {
        let inner = &self.inner;
        validate(&req)?;
        let warnings = match (&inner.cfg.network, &req.network) {
            (Some(network), Some(host)) => network
                .configure(host)
                .map_err(|e| Failure::host("configuring the pod network", e))?,
            _ => Vec::new(),
        };
        // Images first, and before taking the lock: a pull can take minutes and Status must stay
        // answerable meanwhile; a pull that fails must not have stopped anything.
        let present: BTreeMap<String, String> = {
            let projects = inner.projects.lock().await;
            projects
                .get(&req.project)
                .map(|p| {
                    p.pods
                        .iter()
                        .map(|(n, pod)| (n.clone(), pod.spec_hash.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut images = BTreeMap::new();
        let changed = req
            .pods
            .iter()
            .filter(|p| present.get(&p.name) != Some(&p.spec_hash));
        self.pull_missing(&req, changed, &mut images).await?;

        let mut projects = inner.projects.lock().await;
        let project = projects.entry(req.project.clone()).or_default();
        let d = diff::diff_pods(
            req.pods
                .iter()
                .map(|p| (p.name.as_str(), p.spec_hash.as_str())),
            project
                .pods
                .iter()
                .map(|(n, p)| (n.as_str(), p.spec_hash.as_str())),
        );
        let starting: Vec<&PodSpec> = req
            .pods
            .iter()
            .filter(|p| d.create.contains(&p.name) || d.replace.contains(&p.name))
            .collect();

        // Another Apply may have changed the project since the pulls: pull what is still missing.
        self.pull_missing(&req, starting.iter().copied(), &mut images)
            .await?;

        // What stops: removed pods (every generation), pods replaced stop-first (every
        // generation), outgoing generations retired or superseded, and the generation a revert
        // gives up. A start-first replacement keeps the running generation as the new one's
        // outgoing: it keeps serving.
        let mut stopping: Vec<PodRt> = Vec::new();
        let mut instances: BTreeMap<String, String> = BTreeMap::new();
        let mut handing_over: BTreeMap<String, PodRt> = BTreeMap::new();
        let mut reverted: std::collections::BTreeSet<String> = Default::default();
        for name in &d.remove {
            if let Some(mut pod) = project.pods.remove(name) {
                stopping.extend(pod.outgoing.take().map(|o| *o));
                stopping.push(pod);
            }
        }
        for spec in req.pods.iter().filter(|p| d.replace.contains(&p.name)) {
            let Some(mut old) = project.pods.remove(&spec.name) else {
                continue;
            };
            let outgoing_hash = old.outgoing.as_ref().map(|o| o.spec_hash.clone());
            let how = generations::replacement(
                outgoing_hash.as_deref(),
                spec,
                handover.start_first.contains(&spec.name),
            );
            match (how, old.outgoing.take()) {
                (generations::Replacement::Revert, Some(back)) => {
                    stopping.push(old);
                    project.pods.insert(spec.name.clone(), *back);
                    reverted.insert(spec.name.clone());
                }
                (generations::Replacement::StartFirst, outgoing) => {
                    stopping.extend(outgoing.map(|o| *o));
                    instances.insert(
                        spec.name.clone(),
                        generations::twin(&spec.name, &old.instance),
                    );
                    handing_over.insert(spec.name.clone(), old);
                }
                (_, outgoing) => {
                    stopping.extend(outgoing.map(|o| *o));
                    instances.insert(spec.name.clone(), old.instance.clone());
                    stopping.push(old);
                }
            }
        }
        for name in &handover.retire {
            if let Some(o) = project.pods.get_mut(name).and_then(|p| p.outgoing.take()) {
                stopping.push(*o);
            }
        }
        // Out of the VIP sets and DNS answers first, then stopped (each container with its
        // stop signal and grace period), all at once.
        let going: Vec<String> = stopping.iter().map(|p| p.instance.clone()).collect();
        leave_service_sets(inner, &req.project, &going);
        stop_pods(stopping.iter()).await;
        for instance in &going {
            remove_pod(inner, &req.project, instance);
        }
        // A start-first generation's instance may hold what a daemon killed mid-replacement left.
        for (name, instance) in &instances {
            if handing_over.contains_key(name) && inner.state.pod(&req.project, instance).exists() {
                remove_pod(inner, &req.project, instance);
            }
        }
        let starting: Vec<&PodSpec> = starting
            .into_iter()
            .filter(|p| !reverted.contains(&p.name))
            .collect();

        let desired = DesiredProject {
            pods: req
                .pods
                .iter()
                .map(|p| PodSpec {
                    containers: p.containers.iter().map(files::strip_secrets).collect(),
                    ..p.clone()
                })
                .collect(),
        };
        write_json(&inner.state.desired(&req.project), &desired).map_err(|e| {
            Failure::host(
                format!("saving the desired state of project {}", req.project),
                e,
            )
        })?;

        let mut prepared = Ok(());
        for pod in starting {
            let instance = instances
                .get(&pod.name)
                .cloned()
                .unwrap_or_else(|| pod.name.clone());
            let outgoing = handing_over.remove(&pod.name).map(Box::new);
            match self.prepare_pod(&req.project, pod, &instance, &images) {
                Ok(mut rt) => {
                    for c in &rt.containers {
                        self.spawn_container(c.clone(), Step::Start);
                    }
                    rt.outgoing = outgoing;
                    project.pods.insert(pod.name.clone(), rt);
                }
                Err(e) => {
                    // The generation that was to be replaced start-first still serves: keep it.
                    if let Some(old) = outgoing {
                        project.pods.insert(pod.name.clone(), *old);
                    }
                    prepared = Err(Failure::host(
                        format!("preparing pod {} of project {}", pod.name, req.project),
                        e,
                    ));
                    break;
                }
            }
        }
        // Pods not reached after a failure keep their running generation too.
        for (name, old) in handing_over {
            project.pods.insert(name, old);
        }
        if let Err(e) = generations::save(&inner.state, &req.project, project) {
            log(&format!(
                "saving the generations of project {}: {e}",
                req.project
            ));
        }
        prepared?;
        // Numbered under the lock, after the pods changed: a `Watch` that reads this number or
        // a later one reads the status after this apply.
        inner.changes.send_modify(|n| *n += 1);
        let changes = *inner.changes.borrow();
        drop(projects);
        Ok(ApplyReport {
            created: d.create,
            replaced: d.replace,
            removed: d.remove,
            unchanged: d.unchanged,
            warnings,
            changes,
        })
    }

    /// Pulls the images of `pods` not yet in `images`.
    pub(super) async fn pull_missing<'a>(
        &self,
        req: &ApplyRequest,
        pods: impl Iterator<Item = &'a PodSpec>,
        images: &mut BTreeMap<String, seam::PulledImage>,
    ) -> Result<(), Failure> {
        for c in pods.flat_map(|p| &p.containers) {
            if images.contains_key(&c.image) {
                continue;
            }
            let image = self
                .inner
                .cfg
                .images
                .pull(&c.image, &req.registry_auth, &req.insecure_registries)
                .await
                .map_err(|e| {
                    Failure::host(
                        format!("pulling image {} for service {}", c.image, c.service),
                        e,
                    )
                })?;
            images.insert(c.image.clone(), image);
        }
        Ok(())
    }

    /// Writes a pod's files and launch configs under its instance name `instance`; does not
    /// start anything.
    pub(super) fn prepare_pod(
        &self,
        project: &str,
        pod: &PodSpec,
        instance: &str,
        images: &BTreeMap<String, seam::PulledImage>,
    ) -> io::Result<PodRt> {
        let inner = &self.inner;
        let pod_dir = inner.state.pod(project, instance);
        std::fs::create_dir_all(&pod_dir)?;
        let runtime = &inner.cfg.runtime;
        if pod.network.mode == crate::proto::NetworkMode::Host {
            runtime.create_host_network_pod(project, instance, &pod.hostname)?;
        } else {
            runtime.create_pod(project, instance, &pod.hostname)?;
        }
        let dns_files = attach_network(inner, project, pod, instance, &pod_dir)?;
        files::mount_secrets_tmpfs(&pod_dir, pod)?;
        let mut containers = Vec::new();
        for spec in &pod.containers {
            let image = images.get(&spec.image).cloned().unwrap_or_default();
            let dir = inner
                .state
                .container(project, instance, &spec.service, spec.replica);
            std::fs::create_dir_all(&dir)?;
            let mut mounts = files::resolve_mounts(&inner.state, project, spec)?;
            mounts.extend(files::write_files(
                &pod_dir,
                &format!("{}-{}", spec.service, spec.replica),
                &spec.files,
            )?);
            // The pod's resolv.conf and hosts, unless the compose file mounts its own.
            for m in &dns_files {
                if let seam::ResolvedMount::Bind { target, .. } = m {
                    if !mounts.iter().any(
                        |x| matches!(x, seam::ResolvedMount::Bind { target: t, .. } if t == target),
                    ) {
                        mounts.push(m.clone());
                    }
                }
            }
            let mut stored = files::strip_secrets(spec);
            // The image's STOPSIGNAL and HEALTHCHECK apply when the compose file sets none.
            stored.stop_signal = stored.stop_signal.or(image.config.stop_signal.clone());
            stored.healthcheck = stored.healthcheck.or(image.config.healthcheck.clone());
            let launch = Launch {
                id: format!("{project}.{instance}.{}-{}", spec.service, spec.replica),
                project: project.to_string(),
                pod: instance.to_string(),
                service: spec.service.clone(),
                replica: spec.replica,
                dir: dir.clone(),
                argv: seam::resolve_argv(spec, &image.config),
                env: seam::resolve_env(spec, &image.config),
                user: spec.user.clone().or(image.config.user.clone()),
                working_dir: spec
                    .working_dir
                    .clone()
                    .or(image.config.working_dir.clone()),
                hostname: pod.hostname.clone(),
                layers: image.layers.clone(),
                mounts,
                spec: stored,
                runtime: inner.cfg.runtime.name().to_string(),
                state_root: inner.state.root().to_path_buf(),
                log_max_bytes: inner.cfg.log_max_bytes,
                log_max_files: inner.cfg.log_max_files,
            };
            write_json(&dir.join(LAUNCH_FILE), &launch)?;
            let _ = std::fs::remove_file(dir.join(OBSERVED_FILE));
            containers.push(ContainerRt::new(
                launch,
                Observed::default(),
                inner.changes.clone(),
            ));
        }
        Ok(PodRt {
            spec_hash: pod.spec_hash.clone(),
            instance: instance.to_string(),
            containers,
            outgoing: None,
        })
    }

    /// Stops and deletes a project's pods (and its named volumes with `volumes`).
    pub async fn remove(&self, project: &str, volumes: bool) -> Result<Vec<String>, Failure> {
        if !files::valid_name(project) {
            return Err(Failure::bad(format!(
                "{project:?} is not a valid project name"
            )));
        }
        let inner = &self.inner;
        let mut projects = inner.projects.lock().await;
        let rt = projects.remove(project).unwrap_or_default();
        let names: Vec<String> = rt.pods.keys().cloned().collect();
        let instances: Vec<String> = rt.pods.values().flat_map(PodRt::instances).collect();
        leave_service_sets(inner, project, &instances);
        stop_pods(rt.pods.values()).await;
        let pods_dir = inner.state.project(project).join("pods");
        for name in state::list_dirs(&pods_dir) {
            remove_pod(inner, project, &name);
        }
        let _ = std::fs::remove_dir_all(&pods_dir);
        let _ = std::fs::remove_file(inner.state.desired(project));
        let _ = std::fs::remove_file(inner.state.generations(project));
        if volumes {
            let _ = std::fs::remove_dir_all(inner.state.project(project));
        }
        Ok(names)
    }
}

/// Stops every container of `pods` (of every generation) at once and waits for all of them.
pub(super) async fn stop_pods<'a>(pods: impl Iterator<Item = &'a PodRt>) {
    let tasks: Vec<JoinHandle<()>> = pods
        .flat_map(|p| p.all_containers())
        .filter_map(|c| {
            c.stop.send_replace(true);
            c.task.lock().ok().and_then(|mut t| t.take())
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Gives the pod its fleet address and veth (when the host has a pod network and the runtime a
/// network namespace); the pod's containers join that namespace.
/// Returns the mounts of the pod's `/etc/resolv.conf` and `/etc/hosts` (the agent's DNS on the
/// bridge) when it got an address.
fn attach_network(
    inner: &Inner,
    project: &str,
    pod: &PodSpec,
    instance: &str,
    pod_dir: &std::path::Path,
) -> io::Result<Vec<seam::ResolvedMount>> {
    let (Some(network), Some(netns)) = (
        &inner.cfg.network,
        inner.cfg.runtime.pod_netns(project, instance),
    ) else {
        return Ok(Vec::new());
    };
    match pod.network.mode {
        crate::proto::NetworkMode::Fleet => {}
        crate::proto::NetworkMode::None => return Ok(Vec::new()),
        // The host's own resolver and hosts file, as docker gives a host-network container.
        crate::proto::NetworkMode::Host => {
            return Ok(["/etc/resolv.conf", "/etc/hosts"]
                .into_iter()
                .filter(|f| std::path::Path::new(f).exists())
                .map(|f| seam::ResolvedMount::Bind {
                    source: f.into(),
                    target: f.to_string(),
                    read_only: true,
                })
                .collect())
        }
    }
    let addr = network
        .attach_to(project, instance, &netns, &pod.ports, &pod.network)
        .map_err(|e| io::Error::other(format!("attaching the pod to the network: {e}")))?;
    let (Some(addr), Some(gateway)) = (addr, network.subnet().and_then(|s| s.gateway())) else {
        return Ok(Vec::new());
    };
    crate::network::dns::write_pod_files(pod_dir, addr, gateway, &pod.hostname).map(|files| {
        files
            .into_iter()
            .map(|(source, target)| seam::ResolvedMount::Bind {
                source,
                target: target.to_string(),
                read_only: true,
            })
            .collect()
    })
}

/// Takes pods out of the VIP sets and DNS answers before they stop.
fn leave_service_sets(inner: &Inner, project: &str, pods: &[String]) {
    if let (Some(network), false) = (&inner.cfg.network, pods.is_empty()) {
        if let Err(e) = network.leaving(project, pods) {
            log(&format!(
                "taking pods {pods:?} of project {project} out of the service sets: {e}"
            ));
        }
    }
}

/// Removes a stopped pod: its sandbox, its secrets tmpfs, its directory (not its volumes).
pub(super) fn remove_pod(inner: &Inner, project: &str, pod: &str) {
    if let Some(network) = &inner.cfg.network {
        if let Err(e) = network.detach(project, pod) {
            log(&format!(
                "removing the network of pod {pod} of project {project}: {e}"
            ));
        }
    }
    if let Err(e) = inner.cfg.runtime.remove_pod(project, pod) {
        log(&format!(
            "removing the sandbox of pod {pod} of project {project}: {e}"
        ));
    }
    let dir = &inner.state.pod(project, pod);
    files::unmount_secrets_tmpfs(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            log(&format!("removing {}: {e}", dir.display()));
        }
    }
}

pub(super) fn validate(req: &ApplyRequest) -> Result<(), Failure> {
    if !files::valid_name(&req.project) {
        return Err(Failure::bad(format!(
            "{:?} is not a valid project name",
            req.project
        )));
    }
    for pod in &req.pods {
        if !files::valid_name(&pod.name) {
            return Err(Failure::bad(format!(
                "{:?} is not a valid pod name",
                pod.name
            )));
        }
        for c in &pod.containers {
            if !files::valid_name(&c.service) {
                return Err(Failure::bad(format!(
                    "{:?} is not a valid service name",
                    c.service
                )));
            }
        }
    }
    Ok(())
}
