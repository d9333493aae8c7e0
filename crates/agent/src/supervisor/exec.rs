//! `Exec`: a command run in a container through the runtime, its output streamed back as frames,
//! killed with its process group when the client goes away. With `stdin`, the first frame names a
//! session, and `ExecInput` requests for it write the command's stdin (the client sends one at a
//! time: the daemon serves requests concurrently, so two in flight could be written out of order).

use super::*;
use tokio::io::AsyncWriteExt;

impl Supervisor {
    /// Runs a command in a running container, streaming its output, then its exit code.
    pub(super) async fn exec(
        &self,
        id: u64,
        req: ExecRequest,
        tx: &mpsc::Sender<ResponseFrame>,
    ) -> Result<Response, Failure> {
        let c = {
            let projects = self.inner.projects.lock().await;
            let pod = projects
                .get(&req.project)
                .and_then(|p| p.pods.get(&req.pod))
                .ok_or_else(|| {
                    Failure::bad(format!(
                        "project {} has no pod {} on this host",
                        req.project, req.pod
                    ))
                })?;
            pod.containers
                .iter()
                .find(|c| c.launch.service == req.service)
                .cloned()
                .ok_or_else(|| {
                    Failure::bad(format!("pod {} has no service {}", req.pod, req.service))
                })?
        };
        let pid = c.running_pid().ok_or_else(|| {
            Failure::bad(format!(
                "service {} of pod {} is not running; see `ps` for its state",
                req.service, req.pod
            ))
        })?;
        if req.command.is_empty() {
            return Err(Failure::bad("exec needs a command"));
        }
        let started = match req.tty {
            Some(size) => start_on_pty(&self.inner, &c.launch, pid, &req, size)
                .map(|(child, (input, output))| (child, input, Some(output))),
            None => {
                let (stdin_r, stdin_w) = if req.stdin {
                    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                        .map_err(|e| Failure::host("creating the exec's stdin pipe", e))?;
                    (Some(r), Some(w))
                } else {
                    (None, None)
                };
                start_exec(
                    &self.inner,
                    &c.launch,
                    pid,
                    &req.command,
                    &req.env,
                    true,
                    stdin_r,
                )
                .map(|child| (child, stdin_w, None))
            }
        };
        let (child, stdin_w, pty_out) = started.map_err(|e| {
            Failure::bad(format!(
                "running {:?} in service {} of pod {}: {e}",
                req.command[0], req.service, req.pod
            ))
        })?;
        // The session is registered before the client hears of it, and removed when the command
        // is done (which closes the pipe if the client never sent `eof`).
        let session = match stdin_w {
            Some(w) => {
                // A pipe or a terminal: written through the blocking pool either way.
                let sender = tokio::fs::File::from_std(std::fs::File::from(w));
                let session = self
                    .inner
                    .next_session
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut inputs) = self.inner.exec_inputs.lock() {
                    inputs.insert(session, Arc::new(tokio::sync::Mutex::new(Some(sender))));
                }
                let _ = tx.send(more(id, Response::ExecStarted { session })).await;
                Some(session)
            }
            None => None,
        };
        let out = match pty_out {
            // A terminal is no pipe: read it through the blocking pool (EIO once the command and
            // everything it started have closed the terminal).
            Some(master) => Some(pump_file(id, master, tx.clone())),
            None => child
                .stdout
                .map(|o| pump(id, Stream::Stdout, o, tx.clone())),
        };
        let err = child
            .stderr
            .map(|e| pump(id, Stream::Stderr, e, tx.clone()));
        let code = wait_child(child.pid).await.map_err(|e| {
            Failure::host(format!("waiting for exec in service {}", req.service), e)
        })?;
        if let Some(o) = out {
            let _ = o.await;
        }
        if let Some(e) = err {
            let _ = e.await;
        }
        if let Some(session) = session {
            if let Ok(mut inputs) = self.inner.exec_inputs.lock() {
                inputs.remove(&session);
            }
        }
        Ok(Response::ExecExit { code })
    }

    /// Writes an `ExecInput` to its session's stdin (and closes it on `eof`).
    pub(super) async fn exec_input(&self, input: ExecInput) -> Result<Response, Failure> {
        let data = hex::decode(&input.data_hex)
            .map_err(|e| Failure::bad(format!("exec input is not hex: {e}")))?;
        let stdin = self
            .inner
            .exec_inputs
            .lock()
            .ok()
            .and_then(|inputs| inputs.get(&input.session).cloned())
            .ok_or_else(|| {
                Failure::bad(format!(
                    "no running exec with session {} (it has exited)",
                    input.session
                ))
            })?;
        let mut guard = stdin.lock().await;
        if let Some(pipe) = guard.as_mut() {
            // A command that exits without reading its stdin breaks the pipe: not the client's
            // error, its exit code says what happened.
            let _ = pipe.write_all(&data).await;
            let _ = pipe.flush().await;
        }
        if input.eof {
            *guard = None;
        }
        Ok(Response::End)
    }
}

/// Starts an exec on a new pseudo-terminal of `[rows, cols]`: the terminal's slave side is the
/// command's stdin, stdout and stderr. Returns the child and two handles on the master side: the
/// one to write input to (`None` without `stdin`) and the one to read the output from.
fn start_on_pty(
    inner: &Inner,
    launch: &Launch,
    pid: u32,
    req: &ExecRequest,
    [rows, cols]: [u16; 2],
) -> io::Result<(ExecChild, (Option<OwnedFd>, OwnedFd))> {
    let size = nix::pty::Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None::<&nix::sys::termios::Termios>)
        .map_err(io::Error::from)?;
    let cloexec = |fd: &OwnedFd| {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    };
    cloexec(&pty.master)?;
    cloexec(&pty.slave)?;
    let stdio = seam::ContainerStdio {
        stdin: pty.slave.try_clone()?,
        stdout: pty.slave.try_clone()?,
        stderr: pty.slave,
    };
    let mut env = req.env.clone();
    env.entry("TERM".into()).or_insert_with(|| "xterm".into());
    let child_pid = inner
        .cfg
        .runtime
        .exec(launch, pid, &req.command, &env, stdio)?;
    let input = if req.stdin {
        Some(pty.master.try_clone()?)
    } else {
        None
    };
    Ok((
        ExecChild {
            pid: child_pid,
            stdout: None,
            stderr: None,
        },
        (input, pty.master),
    ))
}

/// An exec's stdin: `None` once closed.
pub(super) type Stdin = Arc<tokio::sync::Mutex<Option<tokio::fs::File>>>;

/// A process started by [`ContainerRuntime::exec`]: our child, with its output pipes.
pub(super) struct ExecChild {
    pub(super) pid: u32,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

pub(super) fn start_exec(
    inner: &Inner,
    launch: &Launch,
    pid: u32,
    argv: &[String],
    env: &BTreeMap<String, String>,
    capture: bool,
    stdin: Option<OwnedFd>,
) -> io::Result<ExecChild> {
    let null = |write: bool| -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null")?,
        ))
    };
    let (out_r, out_w, err_r, err_w) = if capture {
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        (Some(out_r), out_w, Some(err_r), err_w)
    } else {
        (None, null(true)?, None, null(true)?)
    };
    let stdio = seam::ContainerStdio {
        stdin: match stdin {
            Some(fd) => fd,
            None => null(false)?,
        },
        stdout: out_w,
        stderr: err_w,
    };
    // `stdio` (our copies of the write ends) is dropped by the call, so the pipes see EOF when
    // the command exits.
    let pid = inner.cfg.runtime.exec(launch, pid, argv, env, stdio)?;
    Ok(ExecChild {
        pid,
        stdout: out_r,
        stderr: err_r,
    })
}

/// Waits for our child `pid` to exit and reaps it: its exit code, 128 + signal when killed.
pub(super) async fn wait_child(pid: u32) -> io::Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    let raw = nix::unistd::Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
    let reap = move || loop {
        match waitpid(raw, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::other(format!("waiting for exec pid {pid}: {e}"))),
        }
    };
    if let Some(fd) = pidfd_open(pid) {
        // SAFETY: an `OwnedFd` stays open and refers to the same pidfd until the `AsyncFd` drops it.
        if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
            let _ = afd.readable().await;
            // It has exited: this waitpid returns at once.
            return reap();
        }
    }
    // No pidfd: wait where blocking is allowed.
    tokio::task::spawn_blocking(reap)
        .await
        .map_err(io::Error::other)?
}

/// Kills an exec'ed command (and its process group, when it leads one).
pub(super) fn kill_exec(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-raw), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// [`pump`] for a terminal's master side, as `stdout`.
fn pump_file(id: u64, fd: OwnedFd, tx: mpsc::Sender<ResponseFrame>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = tokio::fs::File::from_std(std::fs::File::from(fd));
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let frame = more(
                        id,
                        Response::ExecOutput {
                            stream: Stream::Stdout,
                            data,
                        },
                    );
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

pub(super) fn pump(
    id: u64,
    stream: Stream,
    fd: OwnedFd,
    tx: mpsc::Sender<ResponseFrame>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx
                        .send(more(id, Response::ExecOutput { stream, data }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
}
