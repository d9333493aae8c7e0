//! Re-adoption after a daemon restart: every container described under the state dir is watched
//! again if its shim still runs (same pid, same start time), or handed to its restart policy.

use super::*;

impl Supervisor {
    /// Rebuilds the in-memory view from disk and re-attaches to every container.
    pub(super) async fn readopt(&self) {
        let inner = &self.inner;
        let mut projects = inner.projects.lock().await;
        for pname in inner.state.project_names() {
            let Some(desired) = read_json::<DesiredProject>(&inner.state.desired(&pname)) else {
                continue;
            };
            let mut rt = ProjectRt::default();
            let mut records = generations::load(&inner.state, &pname);
            for pod in desired.pods {
                let record = records.remove(&pod.name).unwrap_or_default();
                let instance = if record.instance.is_empty() {
                    pod.name.clone()
                } else {
                    record.instance
                };
                let mut containers = Vec::new();
                for spec in &pod.containers {
                    let dir = inner
                        .state
                        .container(&pname, &instance, &spec.service, spec.replica);
                    let Some(launch) = read_json::<Launch>(&dir.join(LAUNCH_FILE)) else {
                        log(&format!(
                            "project {pname} pod {}: {} is missing; the pod will be recreated on the next apply",
                            pod.name,
                            dir.join(LAUNCH_FILE).display()
                        ));
                        continue;
                    };
                    let mut obs: Observed = read_json(&dir.join(OBSERVED_FILE)).unwrap_or_default();
                    let step = self.adopt_step(&launch, &obs);
                    if let Some(Step::Watch(rec)) = &step {
                        // Known at once, so that a Status right after start is already right.
                        obs.state = RunState::Running;
                        obs.pid = Some(rec.pid);
                        obs.started_at_ms = Some(rec.started_at_ms);
                    }
                    containers.push((
                        ContainerRt::new(launch, obs, self.inner.changes.clone()),
                        step,
                    ));
                }
                // A pod whose containers could not all be read, or whose secrets tmpfs is gone
                // (a reboot) with nothing running, cannot be restarted as it is: it keeps only
                // what still runs, and an empty spec hash so that the next Apply replaces it.
                let pod_dir = inner.state.pod(&pname, &instance);
                let secrets_lost = pod
                    .containers
                    .iter()
                    .flat_map(|c| &c.files)
                    .any(|f| f.secret)
                    && !files::secrets_mounted(&pod_dir)
                    && !containers
                        .iter()
                        .any(|(_, step)| matches!(step, Some(Step::Watch(_))));
                let broken = secrets_lost || containers.len() != pod.containers.len();
                if broken {
                    log(&format!(
                        "project {pname} pod {}: {}; the next apply recreates it",
                        pod.name,
                        if secrets_lost {
                            "its secrets tmpfs is gone"
                        } else {
                            "some of its containers' state is unreadable"
                        }
                    ));
                }
                for (c, step) in &containers {
                    match step {
                        Some(step @ Step::Watch(_)) => self.spawn_container(c.clone(), *step),
                        Some(step) if !broken => self.spawn_container(c.clone(), *step),
                        _ => {}
                    }
                }
                // The generation a start-first replacement left serving: watched again as it
                // is, to be retired (or gone back to) by the next request.
                let outgoing = record
                    .outgoing
                    .map(|o| Box::new(self.readopt_outgoing(&pname, o)));
                rt.pods.insert(
                    pod.name.clone(),
                    PodRt {
                        spec_hash: if broken {
                            String::new()
                        } else {
                            pod.spec_hash.clone()
                        },
                        instance,
                        containers: containers.into_iter().map(|(c, _)| c).collect(),
                        outgoing,
                    },
                );
            }
            projects.insert(pname, rt);
        }
    }

    /// Re-adopts an outgoing generation from its containers' launch files (those unreadable
    /// are left out: its directory goes when it is retired).
    fn readopt_outgoing(&self, project: &str, o: generations::Outgoing) -> PodRt {
        let mut containers = Vec::new();
        for (service, replica) in &o.containers {
            let dir = self
                .inner
                .state
                .container(project, &o.instance, service, *replica);
            let Some(launch) = read_json::<Launch>(&dir.join(LAUNCH_FILE)) else {
                continue;
            };
            let mut obs: Observed = read_json(&dir.join(OBSERVED_FILE)).unwrap_or_default();
            let step = self.adopt_step(&launch, &obs);
            if let Some(Step::Watch(rec)) = &step {
                obs.state = RunState::Running;
                obs.pid = Some(rec.pid);
                obs.started_at_ms = Some(rec.started_at_ms);
            }
            let c = ContainerRt::new(launch, obs, self.inner.changes.clone());
            if let Some(step) = step {
                self.spawn_container(c.clone(), step);
            }
            containers.push(c);
        }
        PodRt {
            spec_hash: o.spec_hash,
            instance: o.instance,
            containers,
            outgoing: None,
        }
    }

    /// What a container's task does after a daemon restart; `None`: nothing (it stays exited).
    pub(super) fn adopt_step(&self, launch: &Launch, obs: &Observed) -> Option<Step> {
        let shim_rec: Option<ShimRecord> = read_json(&launch.dir.join(SHIM_FILE));
        let exit_rec: Option<ExitRecord> = read_json(&launch.dir.join(EXIT_FILE));
        if let Some(rec) = shim_rec {
            if shim::is_same_process(rec.shim_pid, rec.shim_start) {
                log(&format!("re-adopted {} (pid {})", launch.id, rec.pid));
                return Some(Step::Watch(rec));
            }
        }
        match obs.state {
            RunState::Exited | RunState::Failed => None,
            RunState::Running => match (shim_rec, exit_rec) {
                (Some(rec), Some(exit)) => Some(Step::Exited {
                    started_at_ms: rec.started_at_ms,
                    exit,
                    stopped_by_user: false,
                }),
                (rec, _) => {
                    // The shim died without recording the exit (killed): the container cannot
                    // be supervised any more, so end it and let the policy decide.
                    if let Some(rec) = rec {
                        if shim::is_same_process(rec.pid, rec.pid_start) {
                            let _ = self
                                .inner
                                .cfg
                                .runtime
                                .kill(launch, rec.pid, Signal::SIGKILL);
                        }
                    }
                    log(&format!(
                        "{}: its shim is gone without an exit status",
                        launch.id
                    ));
                    Some(Step::Exited {
                        started_at_ms: rec.map(|r| r.started_at_ms).unwrap_or(0),
                        exit: ExitRecord {
                            exit: Exit::Signal { signal: 9 },
                            finished_at_ms: unix_millis(),
                            oom_killed: false,
                        },
                        stopped_by_user: false,
                    })
                }
            },
            RunState::Created | RunState::Restarting => Some(Step::Start),
        }
    }
}
