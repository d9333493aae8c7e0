//! Pod sandboxes: one network, uts and ipc namespace per pod, held without any process by bind
//! mounts of the namespace files onto files under the agent's state dir (as `ip netns add` does).
//!
//! The namespaces are made on a short-lived thread (`unshare` of net/uts/ipc is per-thread and
//! allowed in a multi-threaded process), so the calling thread — maybe a tokio worker — never
//! changes namespace.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::config::PodNamespaces;
use super::error::{Context, Error, Result};

/// The namespace files of the pod whose directory is `dir`.
pub fn namespaces_in(dir: &Path) -> PodNamespaces {
    PodNamespaces {
        net: dir.join("net"),
        uts: dir.join("uts"),
        ipc: dir.join("ipc"),
    }
}

/// Creates the pod's namespaces in `dir`, sets its hostname and brings `lo` up.
pub fn create(dir: &Path, hostname: &str) -> Result<PodNamespaces> {
    create_with(dir, hostname, false)
}

/// [`create`], or with `host_network` a pod whose network namespace is the caller's own (compose
/// `network_mode: host`): its `net` file binds the host's namespace, its uts and ipc are its own.
pub fn create_with(dir: &Path, hostname: &str, host_network: bool) -> Result<PodNamespaces> {
    let ns = namespaces_in(dir);
    if ns.net.exists() {
        return Err(Error::new(format!(
            "pod sandbox {} already exists; remove the pod first",
            dir.display()
        )));
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ns2, hostname) = (ns.clone(), hostname.to_string());
    let result = std::thread::Builder::new()
        .name("pod-sandbox".into())
        .spawn(move || make_namespaces(&ns2, &hostname, host_network))
        .context("starting the pod sandbox thread")?
        .join()
        .unwrap_or_else(|_| Err(Error::new("the pod sandbox thread panicked")));
    if let Err(e) = result {
        let _ = remove(dir);
        return Err(e.context(format!("creating pod sandbox {}", dir.display())));
    }
    Ok(ns)
}

fn make_namespaces(ns: &PodNamespaces, hostname: &str, host_network: bool) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if !host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).context("unshare(net, uts, ipc)")?;
    nix::unistd::sethostname(hostname).with_context(|| format!("setting hostname {hostname:?}"))?;
    if !host_network {
        link_up("lo").context("bringing lo up")?;
    }
    for (name, file) in [("net", &ns.net), ("uts", &ns.uts), ("ipc", &ns.ipc)] {
        fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
        let src = PathBuf::from(format!("/proc/thread-self/ns/{name}"));
        nix::mount::mount(
            Some(&src),
            file,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("binding the {name} namespace onto {}", file.display()))?;
    }
    Ok(())
}

/// Sets `IFF_UP` on an interface of the current network namespace.
fn link_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unmounts and deletes the pod's namespace files and directory. Missing pieces are fine, so a
/// half-created pod can be removed too.
pub fn remove(dir: &Path) -> Result<()> {
    let ns = namespaces_in(dir);
    for file in [&ns.net, &ns.uts, &ns.ipc] {
        if !file.exists() {
            continue;
        }
        match nix::mount::umount2(file, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) => {} // EINVAL: not mounted (creation failed).
            Err(e) => return Err(e).with_context(|| format!("unmounting {}", file.display())),
        }
        fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
