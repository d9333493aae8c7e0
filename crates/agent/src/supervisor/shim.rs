//! The shim: `compose-fleet-agent shim <container dir>`, one per container run, holding the
//! container's process so that the daemon can die, restart or be upgraded without stopping it.
//!
//! Single-threaded and free of any async runtime (its RSS is what every container costs). It
//! 1. forks and lets the first process exit, then `setsid`s: it is nobody's child but init's (or
//!    a subreaper's), so killing the daemon or its process group does not reach it;
//! 2. becomes a child subreaper, starts the container with the runtime named in `launch.json`,
//!    and writes `shim.json` (its own and the container's pid and `/proc` start time) atomically;
//! 3. reports `started <pid>` (or `error <why>`) on the stdout it was given, then detaches stdio;
//! 4. copies the container's stdout/stderr into the rotated JSON-lines log, reaps, and on the main
//!    process's exit writes `exit.json` (code or signal, OOM flag) atomically and exits.
//!
//! The daemon finds a shim again from `shim.json`: a pid alone could have been reused, so a pid
//! only counts when its start time in `/proc/<pid>/stat` matches too.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::logfile::{LineSplitter, LogWriter};
use super::restart::Exit;
use super::seam::{runtime_for, ContainerStdio, Launch};
use super::state::{read_json, unix_millis, write_json};
use crate::proto::Stream;

pub const LAUNCH_FILE: &str = "launch.json";
pub const SHIM_FILE: &str = "shim.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_LOG: &str = "shim.log";

/// Written by the shim once the container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub shim_pid: u32,
    pub shim_start: u64,
    pub pid: u32,
    pub pid_start: u64,
    pub started_at_ms: u64,
}

/// Written by the shim when the container's main process has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit: Exit,
    pub finished_at_ms: u64,
    pub oom_killed: bool,
}

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22), or `None`
/// when the process does not exist.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive (not a zombie) and is the process that had `start` as its start time.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let mut fields = stat[close + 1..].split_whitespace();
    let state = fields.next();
    let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    state != Some("Z") && started == Some(start)
}

/// The shim's entry point (`args` are those after `shim`). Returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let [dir] = args else {
        eprintln!("usage: compose-fleet-agent shim <container dir>");
        return 2;
    };
    let dir = PathBuf::from(dir);
    // SAFETY: the shim mode runs before any thread or async runtime exists in this process, so
    // the child may call anything.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(&format!("error forking the shim: {e}"));
            return 1;
        }
    }
    match run(&dir) {
        Ok(()) => 0,
        Err(e) => {
            report(&format!("error {}: {e}", dir.display()));
            eprintln!("compose-fleet-agent shim {}: {e}", dir.display());
            1
        }
    }
}

/// One line to whoever spawned us (a no-op once stdout is detached).
fn report(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run(dir: &Path) -> io::Result<()> {
    close_inherited_fds();
    nix::unistd::setsid()?;
    nix::sys::prctl::set_child_subreaper(true)?;
    let launch: Launch = read_json(&dir.join(LAUNCH_FILE))
        .ok_or_else(|| io::Error::other(format!("no readable {LAUNCH_FILE}")))?;
    let runtime = runtime_for(&launch)?;
    let mut log = LogWriter::open(dir, launch.log_max_bytes, launch.log_max_files)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let devnull = OwnedFd::from(OpenOptions::new().read(true).open("/dev/null")?);
    let stdio = ContainerStdio {
        stdin: devnull,
        stdout: out_w,
        stderr: err_w,
    };
    let _ = fs::remove_file(dir.join(EXIT_FILE));
    let oom_before = runtime.oom_kills(&launch);
    let pid = runtime.start(&launch, stdio)?;
    let main_pid = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
    let me = std::process::id();
    let record = ShimRecord {
        shim_pid: me,
        shim_start: proc_start_ticks(me).unwrap_or(0),
        pid,
        pid_start: proc_start_ticks(pid).unwrap_or(0),
        started_at_ms: unix_millis(),
    };
    write_json(&dir.join(SHIM_FILE), &record)?;
    report(&format!("started {pid}"));
    detach_stdio(dir)?;

    // Block SIGCHLD only now (the container must not inherit a blocked mask), then reap once in
    // case it already exited.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

    let mut pipes = [
        Some((out_r, Stream::Stdout, LineSplitter::default())),
        Some((err_r, Stream::Stderr, LineSplitter::default())),
    ];
    let mut exit = reap(main_pid);
    loop {
        let open: Vec<usize> = (0..2).filter(|i| pipes[*i].is_some()).collect();
        if open.is_empty() && exit.is_some() {
            break;
        }
        // After the main process exited, only drain what is already buffered: a forked
        // descendant may hold the pipes open forever.
        let timeout = if exit.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        let mut fds: Vec<PollFd> = open
            .iter()
            .filter_map(|i| pipes[*i].as_ref())
            .map(|(fd, _, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if ready == 0 {
            break; // drained after exit
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if readable.last() == Some(&true) {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            if let Some(e) = reap(main_pid) {
                exit = Some(e);
            }
        }
        for (slot, i) in open.iter().enumerate() {
            if !readable[slot] {
                continue;
            }
            let Some((fd, stream, splitter)) = pipes[*i].as_mut() else {
                continue;
            };
            let mut buf = [0u8; 8192];
            match nix::unistd::read(&*fd, &mut buf) {
                Ok(0) => {
                    let stream = *stream;
                    splitter.finish(|l| {
                        let _ = log.write(unix_millis(), stream, l);
                    });
                    pipes[*i] = None;
                }
                Ok(n) => {
                    let stream = *stream;
                    splitter.feed(&buf[..n], |l| {
                        let _ = log.write(unix_millis(), stream, l);
                    });
                }
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => pipes[*i] = None,
            }
        }
    }
    for (_, stream, splitter) in pipes.iter_mut().flatten() {
        let stream = *stream;
        splitter.finish(|l| {
            let _ = log.write(unix_millis(), stream, l);
        });
    }
    let exit = exit.unwrap_or(Exit::Signal { signal: 9 });
    let record = ExitRecord {
        exit,
        finished_at_ms: unix_millis(),
        oom_killed: runtime.oom_kills(&launch) > oom_before,
    };
    write_json(&dir.join(EXIT_FILE), &record)
}

/// Closes every descriptor but stdio: the shim outlives its spawner and must not keep the
/// daemon's sockets, pipes or a build tool's jobserver open for the container's lifetime.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; none above 2 is in use by this process yet
    // (the shim mode runs before opening anything).
    unsafe {
        nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// Reaps every exited child (we are a subreaper: orphans of the container land here) and returns
/// the main process's exit if it was among them.
fn reap(main: Pid) -> Option<Exit> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => found = Some(Exit::Code { code }),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                found = Some(Exit::Signal { signal: sig as i32 })
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

/// Points stdin/stdout at /dev/null and stderr at the shim's own log, so the daemon's pipe closes
/// and nothing the shim says later is lost or blocks.
fn detach_stdio(dir: &Path) -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SHIM_LOG))?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_identify_this_process() {
        let me = std::process::id();
        let start = proc_start_ticks(me).expect("own stat");
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert_eq!(proc_start_ticks(u32::MAX), None);
    }
}
