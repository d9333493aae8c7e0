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
    Supervisor::for_daemon(paths, Arc::new(runtime)).await
}
