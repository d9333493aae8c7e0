//! One container's life: its task starts a shim (or adopts a running one), waits for the shim to
//! exit (a pidfd: the shim is not our child), reads `exit.json` and asks the restart policy what
//! next; stopping sends the stop signal, waits the grace period, then SIGKILL.

use super::*;

impl Supervisor {
    pub(super) fn spawn_container(&self, c: Arc<ContainerRt>, step: Step) {
        let inner = self.inner.clone();
        let task = tokio::spawn(run_container(inner, c.clone(), step));
        if let Ok(mut t) = c.task.lock() {
            *t = Some(task);
        }
    }
}

impl ContainerRt {
    pub(super) fn new(launch: Launch, obs: Observed, changes: Changes) -> Arc<ContainerRt> {
        let (stop, _) = watch::channel(false);
        Arc::new(ContainerRt {
            launch,
            obs: Mutex::new(obs),
            stop,
            task: Mutex::new(None),
            changes,
        })
    }

    pub(super) fn observed(&self) -> Observed {
        self.obs.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Changes the observed state and persists it.
    pub(super) fn update(&self, f: impl FnOnce(&mut Observed)) {
        let snapshot = match self.obs.lock() {
            Ok(mut o) => {
                f(&mut o);
                o.clone()
            }
            Err(_) => return,
        };
        if let Err(e) = write_json(&self.launch.dir.join(OBSERVED_FILE), &snapshot) {
            log(&format!("{}: {e}", self.launch.id));
        }
        // After the write: a `Watch` answered now reads what was just persisted.
        self.changes.send_modify(|n| *n += 1);
    }

    pub(super) fn running_pid(&self) -> Option<u32> {
        let o = self.observed();
        (o.state == RunState::Running).then_some(o.pid).flatten()
    }

    pub(super) fn status(&self) -> ContainerStatus {
        let o = self.observed();
        ContainerStatus {
            service: self.launch.service.clone(),
            replica: self.launch.replica,
            state: o.state.as_str().to_string(),
            health: o.health.map(|h| h.as_str().to_string()),
            pid: (o.state == RunState::Running).then_some(o.pid).flatten(),
            exit_code: o.exit.map(Exit::code),
            restarts: o.restart.restarts,
            started_at: o.started_at_ms.map(|ms| ms / 1000),
            stopped: o.stopped,
        }
    }
}

/// Where a container's task starts (fresh, or after a daemon restart).
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// Start a shim.
    Start,
    /// A shim runs: wait for it.
    Watch(ShimRecord),
    /// The container exited: apply the policy.
    Exited {
        started_at_ms: u64,
        exit: ExitRecord,
        stopped_by_user: bool,
    },
}

/// A task that ends with its owner.
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One container's life: start, watch, decide, until the policy or a stop ends it.
pub(super) async fn run_container(inner: Arc<Inner>, c: Arc<ContainerRt>, mut step: Step) {
    let mut stop_rx = c.stop.subscribe();
    loop {
        step = match step {
            Step::Start => {
                if *stop_rx.borrow() {
                    return;
                }
                let started = unix_millis();
                match spawn_shim(&inner, &c.launch).await {
                    Ok(rec) => Step::Watch(rec),
                    Err(e) => {
                        log(&format!("{}: {e}", c.launch.id));
                        c.update(|o| o.error = Some(e.to_string()));
                        Step::Exited {
                            started_at_ms: started,
                            // What a shell reports for a command that cannot run.
                            exit: ExitRecord {
                                exit: Exit::Code { code: 127 },
                                finished_at_ms: unix_millis(),
                                oom_killed: false,
                            },
                            stopped_by_user: false,
                        }
                    }
                }
            }
            Step::Watch(rec) => {
                c.update(|o| {
                    o.state = RunState::Running;
                    o.pid = Some(rec.pid);
                    o.started_at_ms = Some(rec.started_at_ms);
                    o.error = None;
                });
                // Aborted when this run ends, and also when this task itself is aborted.
                let health = probe_of(&c).map(|p| {
                    AbortOnDrop(tokio::spawn(run_health(inner.clone(), c.clone(), p, rec)))
                });
                let stopped_by_user = tokio::select! {
                    _ = wait_exit(rec.shim_pid, rec.shim_start) => false,
                    _ = stop_requested(&mut stop_rx) => {
                        stop_container(&inner, &c.launch, rec).await;
                        true
                    }
                };
                drop(health);
                let exit =
                    read_json::<ExitRecord>(&c.launch.dir.join(EXIT_FILE)).unwrap_or(ExitRecord {
                        exit: Exit::Signal { signal: 9 },
                        finished_at_ms: unix_millis(),
                        oom_killed: false,
                    });
                Step::Exited {
                    started_at_ms: rec.started_at_ms,
                    exit,
                    stopped_by_user,
                }
            }
            Step::Exited {
                started_at_ms,
                exit,
                stopped_by_user,
            } => {
                if let Err(e) = inner.cfg.runtime.delete(&c.launch) {
                    log(&format!("{}: deleting: {e}", c.launch.id));
                }
                let ran_for =
                    Duration::from_millis(exit.finished_at_ms.saturating_sub(started_at_ms));
                let stopped = stopped_by_user || *stop_rx.borrow();
                let mut decision = Decision::Stay;
                c.update(|o| {
                    decision =
                        o.restart
                            .on_exit(&c.launch.spec.restart, exit.exit, ran_for, stopped);
                    o.exit = Some(exit.exit);
                    o.oom_killed = exit.oom_killed;
                    o.health = None;
                    o.state = match decision {
                        Decision::Stay if o.error.is_some() => RunState::Failed,
                        Decision::Stay => RunState::Exited,
                        Decision::RestartAfter(_) => RunState::Restarting,
                    };
                });
                match decision {
                    Decision::Stay => return,
                    Decision::RestartAfter(delay) => {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => Step::Start,
                            _ = stop_requested(&mut stop_rx) => {
                                c.update(|o| o.state = RunState::Exited);
                                return;
                            }
                        }
                    }
                }
            }
        };
    }
}

/// Resolves once a stop was requested (holding no borrow of the channel across awaits).
pub(super) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Starts `compose-fleet-agent shim <dir>` and waits for its `started <pid>` line.
pub(super) async fn spawn_shim(inner: &Inner, launch: &Launch) -> io::Result<ShimRecord> {
    let _ = std::fs::remove_file(launch.dir.join(SHIM_FILE));
    let _ = std::fs::remove_file(launch.dir.join(EXIT_FILE));
    inner.cfg.runtime.create(launch)?;
    let mut child = tokio::process::Command::new(&inner.cfg.shim_exe)
        .arg("shim")
        .arg(&launch.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running the shim {}: {e}", inner.cfg.shim_exe.display()),
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the shim has no stdout"))?;
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    // The first process exits right after forking the shim proper.
    let _ = child.wait().await;
    match read {
        Err(_) => return Err(io::Error::other("the shim did not report within 60 s")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    let line = line.trim();
    if let Some(err) = line.strip_prefix("error ") {
        return Err(io::Error::other(err.to_string()));
    }
    if !line.starts_with("started ") {
        return Err(io::Error::other(format!("the shim said {line:?}")));
    }
    read_json::<ShimRecord>(&launch.dir.join(SHIM_FILE))
        .ok_or_else(|| io::Error::other(format!("the shim wrote no readable {SHIM_FILE}")))
}

/// Waits until process `pid` (started at `start`) has exited. It is not our child, so this
/// polls a pidfd.
pub(super) async fn wait_exit(pid: u32, start: u64) {
    let Some(fd) = pidfd_open(pid) else {
        return;
    };
    // The pid may have been reused between reading shim.json and opening the pidfd.
    if !shim::is_same_process(pid, start) {
        return;
    }
    // SAFETY: an `OwnedFd` stays open and refers to the same pidfd until the `AsyncFd` drops it.
    match unsafe { AsyncFd::register(fd) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while shim::is_same_process(pid, start) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub(super) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = nix::libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends the stop signal, waits the grace period, then SIGKILL; returns once the shim exited.
pub(super) async fn stop_container(inner: &Inner, launch: &Launch, rec: ShimRecord) {
    let signal = parse_signal(launch.spec.stop_signal.as_deref()).unwrap_or(Signal::SIGTERM);
    let grace = launch
        .spec
        .stop_grace_period_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_STOP_GRACE);
    if shim::is_same_process(rec.pid, rec.pid_start) {
        if let Err(e) = inner.cfg.runtime.kill(launch, rec.pid, signal) {
            log(&format!("{}: sending {signal}: {e}", launch.id));
        }
    }
    let shim_gone = wait_exit(rec.shim_pid, rec.shim_start);
    tokio::pin!(shim_gone);
    if tokio::time::timeout(grace, &mut shim_gone).await.is_ok() {
        return;
    }
    if let Err(e) = inner.cfg.runtime.kill(launch, rec.pid, Signal::SIGKILL) {
        log(&format!("{}: sending SIGKILL: {e}", launch.id));
    }
    if tokio::time::timeout(Duration::from_secs(10), shim_gone)
        .await
        .is_err()
    {
        log(&format!(
            "{}: its shim did not exit 10 s after SIGKILL",
            launch.id
        ));
    }
}

/// `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: Option<&str>) -> Option<Signal> {
    let s = s?.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}
