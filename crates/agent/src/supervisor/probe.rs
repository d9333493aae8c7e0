//! Health checks: a container's probe (from its launch config) run through the runtime's `exec`
//! until the container stops, keeping its observed health current.

use super::*;

pub(super) struct ProbeGuard(Option<u32>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_exec(pid);
            if let Ok(raw) = i32::try_from(pid) {
                // Reaping blocks until the kill lands; not on the async runtime's threads.
                std::thread::spawn(move || {
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(raw), None);
                });
            }
        }
    }
}

pub(super) fn probe_of(c: &ContainerRt) -> Option<Probe> {
    let hc = c.launch.spec.healthcheck.as_ref()?;
    match Probe::from_spec(hc) {
        Ok(p) => p,
        Err(e) => {
            log(&format!("{}: {e}; no health checks run", c.launch.id));
            None
        }
    }
}

/// Probes a running container until aborted, keeping its observed health current.
pub(super) async fn run_health(
    inner: Arc<Inner>,
    c: Arc<ContainerRt>,
    probe: Probe,
    rec: ShimRecord,
) {
    let mut health = Health {
        status: c.observed().health.unwrap_or(HealthStatus::Starting),
        failing_streak: 0,
    };
    c.update(|o| o.health = Some(health.status));
    let since_start = || Duration::from_millis(unix_millis().saturating_sub(rec.started_at_ms));
    loop {
        tokio::time::sleep(health.next_delay(&probe, since_start())).await;
        let passed = run_probe(&inner, &c.launch, rec.pid, &probe).await;
        let before = health.status;
        health.on_probe(&probe, passed, since_start());
        if health.status != before {
            c.update(|o| o.health = Some(health.status));
        }
    }
}

pub(super) async fn run_probe(inner: &Inner, launch: &Launch, pid: u32, probe: &Probe) -> bool {
    let Ok(child) = start_exec(
        inner,
        launch,
        pid,
        &probe.argv,
        &BTreeMap::new(),
        false,
        None,
    ) else {
        return false;
    };
    // Killed and reaped if this probe is abandoned (timeout, or the health task aborted when the
    // container stops): a probe never outlives its check.
    let mut guard = ProbeGuard(Some(child.pid));
    let result = tokio::time::timeout(probe.timeout, wait_child(child.pid)).await;
    if result.is_ok() {
        guard.0 = None; // exited and reaped: its pid is no longer ours to signal
    }
    matches!(result, Ok(Ok(0)))
}
