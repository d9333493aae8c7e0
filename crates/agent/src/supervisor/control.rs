//! `Control` (stop, start, restart containers in place: `compose-fleet stop/start/restart`) and
//! `Pull` (images fetched ahead of the `ApplyPods` that needs them: `compose-fleet pull`, and
//! `up` at the start of its flow so that pulls overlap dependencies' waits).

use super::*;
use crate::proto::{ControlAction, ControlRequest, PullReport, PullRequest};

impl Supervisor {
    /// Stops, starts or restarts the selected containers of a project on this host. Pods and
    /// specs are kept: a stopped container stays in `Status` as exited until started again.
    pub(super) async fn control(&self, req: ControlRequest) -> Result<Response, Failure> {
        let selected: Vec<Arc<ContainerRt>> = {
            let projects = self.inner.projects.lock().await;
            let Some(project) = projects.get(&req.project) else {
                return Ok(Response::Controlled {
                    containers: Vec::new(),
                });
            };
            project
                .pods
                .values()
                .flat_map(|p| &p.containers)
                .filter(|c| req.services.is_empty() || req.services.contains(&c.launch.service))
                .cloned()
                .collect()
        };
        let stop = matches!(req.action, ControlAction::Stop | ControlAction::Restart);
        let start = matches!(req.action, ControlAction::Start | ControlAction::Restart);
        let mut changed = Vec::new();
        if stop {
            // All at once: a stop waits up to each container's grace period.
            let tasks: Vec<(Arc<ContainerRt>, JoinHandle<()>)> = selected
                .iter()
                .filter_map(|c| {
                    c.stop.send_replace(true);
                    let task = c.task.lock().ok().and_then(|mut t| t.take())?;
                    Some((c.clone(), task))
                })
                .collect();
            for (c, task) in tasks {
                let was_running = c.observed().state == RunState::Running;
                let _ = task.await;
                if !start {
                    c.update(|o| o.stopped = true);
                }
                if was_running && !start {
                    changed.push(name(&c));
                }
            }
        }
        if start {
            for c in &selected {
                let running = c
                    .task
                    .lock()
                    .map(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
                    .unwrap_or(false);
                if running {
                    continue;
                }
                c.stop.send_replace(false);
                // A fresh start: no backoff carried over from the runs before the stop.
                c.update(|o| {
                    o.restart = RestartState::default();
                    o.exit = None;
                    o.health = None;
                    o.stopped = false;
                });
                self.spawn_container(c.clone(), Step::Start);
                changed.push(name(c));
            }
        }
        Ok(Response::Controlled {
            containers: changed,
        })
    }

    /// Pulls each image in turn (the store skips the layers it has), saying each as it is done
    /// (a streamed `Pulled` of one image: the deploy starts a pod once its own images are in),
    /// then everything in the last frame. A failure of one does not stop the others.
    pub(super) async fn pull(
        &self,
        id: u64,
        req: PullRequest,
        tx: &mpsc::Sender<ResponseFrame>,
    ) -> Result<Response, Failure> {
        let mut report = PullReport::default();
        for image in &req.images {
            let mut one = PullReport::default();
            match self
                .inner
                .cfg
                .images
                .pull(image, &req.registry_auth, &req.insecure_registries)
                .await
            {
                Ok(_) => one.pulled.push(image.clone()),
                Err(e) => {
                    one.failed.insert(image.clone(), e.to_string());
                }
            }
            report.pulled.extend(one.pulled.iter().cloned());
            report.failed.extend(one.failed.clone());
            // The client going away does not stop the pulls: the images are wanted anyway.
            let _ = tx.send(more(id, Response::Pulled(one))).await;
        }
        Ok(Response::Pulled(report))
    }
}

fn name(c: &ContainerRt) -> String {
    format!("{}/{}-{}", c.launch.pod, c.launch.service, c.launch.replica)
}
