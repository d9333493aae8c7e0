//! The parent ⇄ init conversation over a socketpair (fd 3 in the init), in the spirit of runc's
//! `libcontainer/sync.go`: a failure inside the container's setup comes back with its cause.
//!
//! ```text
//!  parent (daemon/shim)                     init (pid 1 of the new pid namespace)
//!   │  clone(NEWPID|NEWNS) → execve(agent init)
//!   │  puts the pid into the cgroup
//!   │ ── Request::Start(config) ──────────────▶ │  (the request is also the "go")
//!   │                                           │  namespaces, rootfs, pivot_root, creds,
//!   │                                           │  seccomp …
//!   │ ◀────────────────────────── Reply::Exec ─ │  about to execve the process
//!   │ ◀─────────── EOF (fd 3 is close-on-exec) ─│  execve succeeded
//!   │ ◀──────────────────── Reply::Error(e) ── │  …or any step failed (then it exits)
//! ```
//! Frames: a 4-byte little-endian length, then JSON.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::config::ContainerConfig;
use super::error::Error;

/// Largest frame accepted: configs are small; anything bigger is a bug.
const MAX_FRAME: usize = 16 << 20;

/// What the parent asks of an init.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Become the container's first process.
    Start(Box<ContainerConfig>),
    /// Run a process inside the running container whose pid 1 has host pid `pid`.
    Exec {
        config: Box<ContainerConfig>,
        pid: i32,
        process: super::ExecProcess,
    },
}

/// What an init answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Setup is done; `execve` comes next.
    Exec,
    Error(Error),
}

pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)
}

/// Reads one frame; `None` at a clean end of stream.
pub fn recv<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("sync frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(io::Error::other)
}
