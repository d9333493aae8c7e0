//! The kernel behind a trait: every mount, namespace, credential and cgroup-file call the runtime
//! makes goes through [`Kernel`], so the plan (which mounts, in which order, which capabilities,
//! which cgroup files) is unit-tested with [`Recording`] without root. [`Linux`] is the real one.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::error::{Context, Error, Result};

/// Where a mount goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host path, used as is (the rootfs mount point, paths after `pivot_root`).
    Host(PathBuf),
    /// A path inside a root directory, resolved without ever leaving it (symlinks included,
    /// the runc CVE-2024-21626 class); created as a directory or an empty file when missing.
    InRoot {
        root: PathBuf,
        path: String,
        file: bool,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Host(p) => write!(f, "{}", p.display()),
            Target::InRoot { root, path, .. } => write!(f, "{}{}", root.display(), path),
        }
    }
}

/// Capability sets to apply to the current process (inheritable and ambient are cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
}

/// The kernel calls of the runtime. Paths are host paths unless a [`Target`] says otherwise.
pub trait Kernel {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Target,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<()>;
    /// Creates a symlink `link` (inside `root`) pointing at `to`, unless something exists there.
    fn symlink(&mut self, root: &Path, link: &str, to: &str) -> Result<()>;
    /// Creates a directory (and parents) inside `root`, without leaving it.
    fn mkdir_in_root(&mut self, root: &Path, path: &str) -> Result<()>;
    /// `pivot_root` into `new_root` and detach the old root.
    fn pivot_root(&mut self, new_root: &Path) -> Result<()>;
    fn setns(&mut self, path: &Path, kind: CloneFlags) -> Result<()>;
    fn sethostname(&mut self, name: &str) -> Result<()>;
    fn write_file(&mut self, path: &Path, data: &str) -> io::Result<()>;
    fn read_file(&mut self, path: &Path) -> io::Result<String>;
    fn exists(&mut self, path: &Path) -> bool;
    fn is_dir(&mut self, path: &Path) -> bool;
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()>;
    fn rmdir(&mut self, path: &Path) -> io::Result<()>;
    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> Result<()>;
    /// `setgroups`, `setgid`, `setuid`, keeping capabilities across the uid change.
    fn set_identity(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<()>;
    /// Drops every capability not in `keep` from the bounding set (needs `CAP_SETPCAP`, so it
    /// comes before the uid change).
    fn drop_bounding(&mut self, keep: u64) -> Result<()>;
    /// `capset`, then clears the ambient set.
    fn set_capabilities(&mut self, caps: CapSets) -> Result<()>;
    fn set_no_new_privs(&mut self) -> Result<()>;
    fn seccomp(&mut self, filters: &[seccompiler::BpfProgram]) -> Result<()>;
    fn chdir(&mut self, path: &Path) -> Result<()>;
}

/// The real kernel. Keeps the last rootfs handle open: a container's mounts all resolve in it.
#[derive(Debug, Default)]
pub struct Linux {
    root: Option<(PathBuf, pathrs::Root)>,
}

impl Linux {
    /// Resolves `path` inside `root` (creating it) and returns an `O_PATH` handle whose
    /// `/proc/self/fd` link is the mount target: the kernel never walks the path again.
    fn open_root(&mut self, root: &Path) -> Result<&pathrs::Root> {
        if self.root.as_ref().map(|(p, _)| p.as_path()) != Some(root) {
            let r = pathrs::Root::open(root)
                .with_context(|| format!("opening rootfs {}", root.display()))?;
            self.root = Some((root.to_path_buf(), r));
        }
        match &self.root {
            Some((_, r)) => Ok(r),
            None => Err(Error::new("rootfs handle vanished")),
        }
    }

    fn resolve_in_root(&mut self, root: &Path, path: &str, file: bool) -> Result<OwnedFd> {
        let r = self.open_root(root)?;
        Self::resolve_in_root_depth(r, root, path, file, 0)
    }

    fn resolve_in_root_depth(
        r: &pathrs::Root,
        root: &Path,
        path: &str,
        file: bool,
        depth: u32,
    ) -> Result<OwnedFd> {
        let perm = fs::Permissions::from_mode(0o755);
        let handle = if file {
            match r.resolve(path) {
                Ok(h) => h,
                Err(_) => {
                    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
                    r.mkdir_all(parent, &perm).with_context(|| {
                        format!("creating {} inside {}", parent.display(), root.display())
                    })?;
                    // Racing creators are fine: whoever wins, the path is resolved again below.
                    let _ = r.create_file(
                        path,
                        pathrs::flags::OpenFlags::O_WRONLY,
                        &fs::Permissions::from_mode(0o644),
                    );
                    r.resolve(path)
                        .with_context(|| format!("resolving {path} inside {}", root.display()))?
                }
            }
        } else {
            match r.mkdir_all(path, &perm) {
                Ok(h) => h,
                Err(e) => {
                    // A dangling symlink (`/evil -> /somewhere/missing`): create its target,
                    // which is again resolved inside the root, as Docker would.
                    if let (Ok(to), true) = (r.readlink(path), depth < 40) {
                        let next = if to.is_absolute() {
                            to
                        } else {
                            Path::new(path).parent().unwrap_or(Path::new("/")).join(to)
                        };
                        return Self::resolve_in_root_depth(
                            r,
                            root,
                            &next.to_string_lossy(),
                            file,
                            depth + 1,
                        );
                    }
                    return Err(e)
                        .with_context(|| format!("creating {path} inside {}", root.display()));
                }
            }
        };
        Ok(handle.into())
    }
}

impl Kernel for Linux {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Target,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let what = || {
            format!(
                "mounting {} ({}) on {target}",
                source.unwrap_or("-"),
                fstype.unwrap_or("bind/remount")
            )
        };
        match target {
            Target::Host(p) => {
                nix::mount::mount(source, p.as_path(), fstype, flags, data).with_context(what)
            }
            Target::InRoot { root, path, file } => {
                let fd = self
                    .resolve_in_root(root, path, *file)
                    .map_err(|e| e.context(what()))?;
                let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                nix::mount::mount(source, &proc_path, fstype, flags, data).with_context(what)
            }
        }
    }

    fn umount(&mut self, target: &Path, flags: MntFlags) -> Result<()> {
        nix::mount::umount2(target, flags)
            .with_context(|| format!("unmounting {}", target.display()))
    }

    fn symlink(&mut self, root: &Path, link: &str, to: &str) -> Result<()> {
        let r = self.open_root(root)?;
        if r.resolve_nofollow(link).is_ok() {
            return Ok(());
        }
        r.create(link, &pathrs::InodeType::Symlink(PathBuf::from(to)))
            .with_context(|| format!("creating symlink {link} -> {to} in {}", root.display()))
    }

    fn mkdir_in_root(&mut self, root: &Path, path: &str) -> Result<()> {
        self.resolve_in_root(root, path, false).map(drop)
    }

    fn pivot_root(&mut self, new_root: &Path) -> Result<()> {
        self.root = None;
        // runc's trick: pivot onto itself, then detach the old root stacked underneath, so no
        // directory for the old root is needed inside the (maybe read-only) rootfs.
        nix::unistd::chdir(new_root)
            .with_context(|| format!("entering rootfs {}", new_root.display()))?;
        nix::unistd::pivot_root(".", ".").context("pivot_root")?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
        nix::unistd::chdir("/").context("chdir /")
    }

    fn setns(&mut self, path: &Path, kind: CloneFlags) -> Result<()> {
        let f = fs::File::open(path)
            .with_context(|| format!("opening namespace {}", path.display()))?;
        nix::sched::setns(f, kind).with_context(|| format!("joining namespace {}", path.display()))
    }

    fn sethostname(&mut self, name: &str) -> Result<()> {
        nix::unistd::sethostname(name).with_context(|| format!("setting hostname {name:?}"))
    }

    fn write_file(&mut self, path: &Path, data: &str) -> io::Result<()> {
        // No truncation or creation: these are kernel files (cgroup, sysctl).
        use std::io::Write;
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data.as_bytes())
    }

    fn read_file(&mut self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn is_dir(&mut self, path: &Path) -> bool {
        path.is_dir()
    }

    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> Result<()> {
        let res = super::config::rlimit_resource(name)
            .ok_or_else(|| Error::user(format!("unknown ulimit {name:?}")))?;
        nix::sys::resource::setrlimit(res, soft, hard)
            .with_context(|| format!("setting ulimit {name}={soft}:{hard}"))
    }

    fn set_identity(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
        use nix::unistd::{Gid, Uid};
        nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
        let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).context("setgroups")?;
        nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
            .with_context(|| format!("setgid {gid}"))?;
        nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
            .with_context(|| format!("setuid {uid}"))
    }

    fn drop_bounding(&mut self, keep: u64) -> Result<()> {
        let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40);
        for cap in 0..=last {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r != 0 {
                    return Err(io::Error::last_os_error()).with_context(|| {
                        format!("dropping capability {cap} from the bounding set")
                    });
                }
            }
        }
        Ok(())
    }

    fn set_capabilities(&mut self, caps: CapSets) -> Result<()> {
        capset(caps.effective, caps.permitted, 0).context("capset")?;
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("clearing ambient capabilities");
        }
        Ok(())
    }

    fn set_no_new_privs(&mut self) -> Result<()> {
        nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")
    }

    fn seccomp(&mut self, filters: &[seccompiler::BpfProgram]) -> Result<()> {
        for f in filters {
            seccompiler::apply_filter(f).context("installing the seccomp filter")?;
        }
        Ok(())
    }

    fn chdir(&mut self, path: &Path) -> Result<()> {
        nix::unistd::chdir(path).with_context(|| format!("chdir {}", path.display()))
    }
}

/// `capset(2)` with 64-bit sets (version 3 header).
fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data are valid for the kernel's reads, laid out as capability.h says.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A fake kernel that records every call as a line, for unit tests of the plan. Files it is
/// asked to read come from `files`; everything else succeeds.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<String>,
    pub files: std::collections::BTreeMap<PathBuf, String>,
    /// Paths reported as existing (besides `files`).
    pub existing: std::collections::BTreeSet<PathBuf>,
}

impl Recording {
    fn log(&mut self, s: String) {
        self.calls.push(s);
    }
}

impl Kernel for Recording {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Target,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        let t = match target {
            Target::Host(p) => p.display().to_string(),
            Target::InRoot { path, file, .. } => {
                format!("<root>{path}{}", if *file { " (file)" } else { "" })
            }
        };
        self.log(format!(
            "mount {} {t} {} {} {}",
            source.unwrap_or("-"),
            fstype.unwrap_or("-"),
            flags_str(flags),
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn umount(&mut self, target: &Path, _flags: MntFlags) -> Result<()> {
        self.log(format!("umount {}", target.display()));
        Ok(())
    }
    fn symlink(&mut self, _root: &Path, link: &str, to: &str) -> Result<()> {
        self.log(format!("symlink <root>{link} -> {to}"));
        Ok(())
    }
    fn mkdir_in_root(&mut self, _root: &Path, path: &str) -> Result<()> {
        self.log(format!("mkdir <root>{path}"));
        Ok(())
    }
    fn pivot_root(&mut self, new_root: &Path) -> Result<()> {
        self.log(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
    fn setns(&mut self, path: &Path, kind: CloneFlags) -> Result<()> {
        self.log(format!("setns {} {kind:?}", path.display()));
        Ok(())
    }
    fn sethostname(&mut self, name: &str) -> Result<()> {
        self.log(format!("sethostname {name}"));
        Ok(())
    }
    fn write_file(&mut self, path: &Path, data: &str) -> io::Result<()> {
        self.log(format!("write {} {data}", path.display()));
        Ok(())
    }
    fn read_file(&mut self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.files.contains_key(path) || self.existing.contains(path)
    }
    fn is_dir(&mut self, path: &Path) -> bool {
        self.existing.contains(path)
    }
    fn mkdir_all(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn rmdir(&mut self, path: &Path) -> io::Result<()> {
        self.log(format!("rmdir {}", path.display()));
        Ok(())
    }
    fn setrlimit(&mut self, name: &str, soft: u64, hard: u64) -> Result<()> {
        self.log(format!("setrlimit {name} {soft} {hard}"));
        Ok(())
    }
    fn set_identity(&mut self, uid: u32, gid: u32, groups: &[u32]) -> Result<()> {
        self.log(format!("identity {uid}:{gid} groups {groups:?}"));
        Ok(())
    }
    fn drop_bounding(&mut self, keep: u64) -> Result<()> {
        self.log(format!("bounding keep={keep:#x}"));
        Ok(())
    }
    fn set_capabilities(&mut self, caps: CapSets) -> Result<()> {
        self.log(format!(
            "caps effective={:#x} permitted={:#x}",
            caps.effective, caps.permitted
        ));
        Ok(())
    }
    fn set_no_new_privs(&mut self) -> Result<()> {
        self.log("no_new_privs".into());
        Ok(())
    }
    fn seccomp(&mut self, filters: &[seccompiler::BpfProgram]) -> Result<()> {
        self.log(format!("seccomp {} filters", filters.len()));
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> Result<()> {
        self.log(format!("chdir {}", path.display()));
        Ok(())
    }
}

/// Short flag names for recorded calls.
fn flags_str(flags: MsFlags) -> String {
    let table = [
        (MsFlags::MS_RDONLY, "ro"),
        (MsFlags::MS_NOSUID, "nosuid"),
        (MsFlags::MS_NODEV, "nodev"),
        (MsFlags::MS_NOEXEC, "noexec"),
        (MsFlags::MS_REMOUNT, "remount"),
        (MsFlags::MS_BIND, "bind"),
        (MsFlags::MS_REC, "rec"),
        (MsFlags::MS_PRIVATE, "private"),
        (MsFlags::MS_STRICTATIME, "strictatime"),
    ];
    let v: Vec<&str> = table
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}
