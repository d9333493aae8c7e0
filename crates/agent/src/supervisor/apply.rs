//! Reconciling: `Apply` (pull images first, diff the desired pods against the running ones,
//! stop and remove what goes, prepare and start what comes) and `Remove`.

use super::*;

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
        self.apply(ApplyRequest {
            project: req.project,
            pods,
            registry_auth: req.registry_auth,
            insecure_registries: req.insecure_registries,
            network: req.network,
        })
        .await
    }

    /// Reconciles a project to exactly `req.pods`.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyReport, Failure> {
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

        // Stop what goes away or is replaced, all at once.
        let mut stopping = Vec::new();
        for name in d.remove.iter().chain(&d.replace) {
            if let Some(pod) = project.pods.remove(name) {
                stopping.push(pod);
            }
        }
        let going: Vec<String> = d.remove.iter().chain(&d.replace).cloned().collect();
        leave_service_sets(inner, &req.project, &going);
        stop_pods(stopping.iter()).await;
        for name in d.remove.iter().chain(&d.replace) {
            remove_pod(inner, &req.project, name);
        }

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

        for pod in starting {
            let rt = self.prepare_pod(&req.project, pod, &images).map_err(|e| {
                Failure::host(
                    format!("preparing pod {} of project {}", pod.name, req.project),
                    e,
                )
            })?;
            for c in &rt.containers {
                self.spawn_container(c.clone(), Step::Start);
            }
            project.pods.insert(pod.name.clone(), rt);
        }
        Ok(ApplyReport {
            created: d.create,
            replaced: d.replace,
            removed: d.remove,
            unchanged: d.unchanged,
            warnings,
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

    /// Writes a pod's files and launch configs; does not start anything.
    pub(super) fn prepare_pod(
        &self,
        project: &str,
        pod: &PodSpec,
        images: &BTreeMap<String, seam::PulledImage>,
    ) -> io::Result<PodRt> {
        let inner = &self.inner;
        let pod_dir = inner.state.pod(project, &pod.name);
        std::fs::create_dir_all(&pod_dir)?;
        let runtime = &inner.cfg.runtime;
        if pod.network.mode == crate::proto::NetworkMode::Host {
            runtime.create_host_network_pod(project, &pod.name, &pod.hostname)?;
        } else {
            runtime.create_pod(project, &pod.name, &pod.hostname)?;
        }
        let dns_files = attach_network(inner, project, pod, &pod_dir)?;
        files::mount_secrets_tmpfs(&pod_dir, pod)?;
        let mut containers = Vec::new();
        for spec in &pod.containers {
            let image = images.get(&spec.image).cloned().unwrap_or_default();
            let dir = inner
                .state
                .container(project, &pod.name, &spec.service, spec.replica);
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
                id: format!("{project}.{}.{}-{}", pod.name, spec.service, spec.replica),
                project: project.to_string(),
                pod: pod.name.clone(),
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
            containers.push(ContainerRt::new(launch, Observed::default()));
        }
        Ok(PodRt {
            spec_hash: pod.spec_hash.clone(),
            containers,
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
        leave_service_sets(inner, project, &names);
        stop_pods(rt.pods.values()).await;
        let pods_dir = inner.state.project(project).join("pods");
        for name in state::list_dirs(&pods_dir) {
            remove_pod(inner, project, &name);
        }
        let _ = std::fs::remove_dir_all(&pods_dir);
        let _ = std::fs::remove_file(inner.state.desired(project));
        if volumes {
            let _ = std::fs::remove_dir_all(inner.state.project(project));
        }
        Ok(names)
    }
}

/// Stops every container of `pods` at once and waits for all of them.
pub(super) async fn stop_pods<'a>(pods: impl Iterator<Item = &'a PodRt>) {
    let tasks: Vec<JoinHandle<()>> = pods
        .flat_map(|p| &p.containers)
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
    pod_dir: &std::path::Path,
) -> io::Result<Vec<seam::ResolvedMount>> {
    let (Some(network), Some(netns)) = (
        &inner.cfg.network,
        inner.cfg.runtime.pod_netns(project, &pod.name),
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
        .attach_to(project, &pod.name, &netns, &pod.ports, &pod.network)
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
