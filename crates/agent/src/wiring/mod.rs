//! Wiring: what the daemon builds from the agent's parts — the supervisor over the isolating
//! runtime (`crate::runtime`, behind the seam in `supervisor::isolated`) and the image store
//! (`crate::image`).
//!
//! Owns only the choice of parts and where their state lives; each part keeps its own logic.

use std::io;
use std::sync::Arc;

use crate::store::Paths;
use crate::supervisor::isolated::IsolatedRuntime;
use crate::supervisor::Supervisor;

/// Opens the supervisor of a host: containers through the isolating runtime, images from the
/// store under `<state>/images`, this very binary as shim and container init. Re-adopts the
/// shims still running (containers that kept running while no daemon did).
pub async fn open_supervisor(paths: &Paths) -> io::Result<Supervisor> {
    let exe = std::env::current_exe()
        .map_err(|e| io::Error::new(e.kind(), format!("finding the agent's executable: {e}")))?;
    let runtime = IsolatedRuntime::new(&paths.state, &exe)?;
    let supervisor = Supervisor::for_daemon(paths, Arc::new(runtime)).await?;
    if let Some(network) = supervisor.network() {
        tokio::spawn(crate::network::dns::serve(network.clone()));
        tokio::spawn(watch_replicas(supervisor.clone(), network));
    }
    Ok(supervisor)
}

/// How often local replicas' state is looked at for the VIP sets and DNS answers.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps the network's view of this host's replicas current: a pod takes traffic while all its
/// containers run and none is unhealthy or still starting its healthcheck. (Pods being stopped
/// leave before they stop: `Network::leaving`, called by `Apply`.)
async fn watch_replicas(supervisor: Supervisor, network: Arc<crate::network::Network>) {
    loop {
        let generation = network.services_generation();
        let status = supervisor.status(None).await;
        // Keyed by instance: a start-first replacement's outgoing generation serves beside it.
        let up = status
            .pods
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p.outgoing.as_deref()))
            .filter(|p| {
                p.containers.iter().all(|c| {
                    c.state == "running"
                        && !matches!(c.health.as_deref(), Some("unhealthy" | "starting"))
                })
            })
            .map(|p| format!("{}/{}", p.project, p.instance()))
            .collect();
        if let Err(e) = network.observed(up, generation) {
            crate::supervisor::state::log(&format!("updating the service sets: {e}"));
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
