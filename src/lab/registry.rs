//! A lab's OCI registry: Debian's `docker-registry` (distribution v2) with filesystem storage
//! under the lab directory, serving plain http on the lab's first gateway address (each lab its
//! own address, so every registry can use port 5000).

use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::host::{mkdir, write};
use super::index::Record;
use super::sys;
use super::Error;

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    dir: PathBuf,
    addr: SocketAddrV4,
}

impl Registry {
    pub fn new(lab: &Record) -> Registry {
        Registry {
            dir: lab.dir.clone(),
            addr: SocketAddrV4::new(lab.gateway(0).into(), 5000),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(self.addr)
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("registry.pid")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.join("registry.yml")
    }

    /// The running registry's pid, when its pid file names a live registry process.
    pub fn pid(&self) -> Option<i32> {
        let pid = sys::read_pid(&self.pid_file())?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        (sys::alive(pid) && cmdline.starts_with(BINARY.as_bytes())).then_some(pid)
    }

    /// Whether it accepts connections.
    pub fn answers(&self) -> bool {
        sys::port_open(self.addr())
    }

    /// Starts the registry detached unless it is already running. Does not wait for it.
    pub fn ensure_started(&self) -> Result<(), Error> {
        if self.pid().is_some() {
            return Ok(());
        }
        // Only this lab's registry listens on the lab's gateway address; one not ours is stale.
        sys::terminate(&sys::listeners(self.addr));
        if !Path::new(BINARY).exists() {
            return Err(Error::Env(format!(
                "{BINARY} is missing; run scripts/setup.sh (Debian package docker-registry)"
            )));
        }
        let storage = self.dir.join("registry");
        mkdir(&storage, 0o755)?;
        let config = format!(
            "# written by `compose-fleet lab up`\n\
             version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage = storage.display(),
            addr = self.addr
        );
        write(&self.config_file(), &config, 0o644)?;
        let log = self.dir.join("registry.log");
        let stderr = fs::File::create(&log)
            .map_err(|e| Error::Env(format!("cannot create {}: {e}", log.display())))?;
        // `sh` records its own pid, then becomes the registry: the pid file names the registry.
        let script = "echo $$ > \"$1\"; exec \"$2\" serve \"$3\"";
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", script, "sh"])
            .arg(self.pid_file())
            .arg(BINARY)
            .arg(self.config_file())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(|e| Error::Env(e.to_string()))?)
            .stderr(stderr)
            .status()
            .map_err(|e| Error::Env(format!("cannot run setsid: {e}")))?;
        if !status.success() {
            return Err(Error::Env(format!(
                "starting the registry failed ({status}); see {}",
                log.display()
            )));
        }
        Ok(())
    }

    /// Stops the registry: the one the pid file names, and whatever else listens on the lab
    /// registry's address (a registry whose lab directory was deleted: it would keep the port).
    pub fn stop(&self) {
        let mut pids = sys::listeners(self.addr);
        pids.extend(self.pid());
        sys::terminate(&pids);
        let _ = fs::remove_file(self.pid_file());
    }
}
