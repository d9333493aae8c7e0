//! Wiring: the adapters that plug the isolating runtime (`crate::runtime`) and the image store
//! (`crate::image`) into the supervisor's seams (`crate::supervisor::seam`), and what the daemon
//! builds from them.
//!
//! Owns only the translation between those parts; each part keeps its own logic.

pub mod images;
pub mod runtime;

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::supervisor::{Supervisor, SupervisorConfig};

/// Opens the supervisor of a host whose state lives in `state` (`/var/lib/compose-fleet`):
/// the isolating runtime under `state/runtime`, the image store under `state/images`, this very
/// binary as shim and enter helper. Re-adopts the shims still running.
pub async fn open_supervisor(state: &Path) -> io::Result<Supervisor> {
    let exe = std::env::current_exe()
        .map_err(|e| io::Error::new(e.kind(), format!("finding the agent's executable: {e}")))?;
    let runtime = runtime::IsolatedRuntime::open(state.join("runtime"), exe.clone())?;
    let images = images::StoreImages::open(state.join("images"))?;
    Supervisor::open(SupervisorConfig::new(
        state,
        exe,
        Arc::new(runtime),
        Arc::new(images),
    ))
    .await
}
