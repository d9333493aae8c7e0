//! Which architectures a service's image is built for, and which ones the builder here can
//! produce: compose's `build.platforms` and `platform:`, else the hosts' architectures as the
//! inventory declares them or the hosts report them (this machine's own for a host of unknown
//! architecture). A builder produces
//! its machine's architecture, and others only through emulation: qemu-user handlers registered
//! in `binfmt_misc` (buildah, podman, docker build), or the platforms `docker buildx inspect`
//! lists; [`ARCHES_ENV`] says it instead where a build needs no emulator. Everything but the
//! probes ([`capability`]) is pure.

use std::collections::BTreeSet;

use super::{oci_arch, Builder};

/// One platform an image is built for, as OCI spells it (`linux`, `arm64`, `v8`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/arm64`, `linux/arm/v7`, `arm64`, `aarch64`: the OS defaults to `linux`, the
    /// architecture is read in either spelling (`uname -m` or OCI).
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
            _ => ("", "", None),
        };
        if os.is_empty() || arch.is_empty() || variant.as_deref() == Some("") {
            return Err(format!(
                "`{text}` is not a platform; write OS/ARCH[/VARIANT], e.g. `linux/arm64`"
            ));
        }
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            arch: oci_arch(&arch.to_ascii_lowercase()).to_string(),
            variant,
        })
    }

    /// This machine's platform.
    pub fn native() -> Platform {
        Platform {
            os: "linux".into(),
            arch: oci_arch(std::env::consts::ARCH).to_string(),
            variant: None,
        }
    }

    /// What `--platform` takes.
    pub fn text(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.arch),
            None => format!("{}/{}", self.os, self.arch),
        }
    }
}

/// The architectures (OCI spelling) a builder can produce here, and how that was found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub arches: BTreeSet<String>,
    /// Said when an architecture is refused: where the list came from.
    pub source: String,
}

impl Capability {
    pub fn can(&self, arch: &str) -> bool {
        self.arches.contains(oci_arch(arch))
    }

    fn list(&self) -> String {
        self.arches.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The architecture a registered `binfmt_misc` handler runs, from its file's name and contents
/// (`qemu-aarch64`, first line `enabled`), or `None` for a disabled or non-qemu one. Pure.
pub fn binfmt_arch(name: &str, contents: &str) -> Option<String> {
    if contents.lines().next().map(str::trim) != Some("enabled") {
        return None;
    }
    // The name is the handler's; the interpreter line says the same for renamed handlers
    // (`interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P`).
    let from_name = name.strip_prefix("qemu-").map(str::to_string);
    let from_interpreter = contents
        .lines()
        .find_map(|l| l.strip_prefix("interpreter "))
        .and_then(|p| p.rsplit('/').next())
        .and_then(|file| {
            let file = file.trim();
            file.strip_prefix("qemu-")
                .map(|r| r.trim_end_matches("-static").to_string())
                .or_else(|| file.strip_suffix("-binfmt-P").map(str::to_string))
        });
    let arch = from_name.or(from_interpreter)?;
    let arch = match arch.as_str() {
        "i386" | "i486" | "i686" => "386".to_string(),
        "armeb" | "aarch64_be" => return None,
        a => oci_arch(a).to_string(),
    };
    Some(arch)
}

/// The platforms `docker buildx inspect` lists (`Platforms: linux/amd64, linux/arm64, …`, one
/// line per node), as architectures. Pure.
pub fn buildx_arches(inspect: &str) -> BTreeSet<String> {
    inspect
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Platforms:"))
        .flat_map(|list| list.split(','))
        .filter_map(|p| Platform::parse(p.trim().trim_end_matches('*')).ok())
        .filter(|p| p.os == "linux")
        .map(|p| p.arch)
        .collect()
}

/// Names the architectures the builder can produce when detection cannot know
/// (`amd64,arm64`): a Dockerfile without `RUN` steps (a binary cross-compiled beforehand, copied
/// into `FROM scratch`) builds for any architecture without an emulator.
pub const ARCHES_ENV: &str = "COMPOSE_FLEET_BUILD_ARCHES";

/// What `builder` can produce on this machine: [`ARCHES_ENV`] when set, else what the builder
/// and this machine's emulators allow.
pub fn capability(builder: Builder) -> Capability {
    let native = Platform::native().arch;
    if let Some(list) = std::env::var(ARCHES_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let mut arches: BTreeSet<String> = list
            .split(',')
            .filter_map(|a| Platform::parse(a).ok().map(|p| p.arch))
            .collect();
        arches.insert(native);
        return Capability {
            arches,
            source: format!("{ARCHES_ENV}={list} says so"),
        };
    }
    if builder == Builder::Buildx {
        let out = std::process::Command::new("docker")
            .args(["buildx", "inspect"])
            .stderr(std::process::Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let arches = buildx_arches(&String::from_utf8_lossy(&out.stdout));
            if !arches.is_empty() {
                return Capability {
                    arches,
                    source: "the platforms `docker buildx inspect` lists".into(),
                };
            }
        }
    }
    let mut arches: BTreeSet<String> = [native.clone()].into();
    let dir = std::path::Path::new("/proc/sys/fs/binfmt_misc");
    let mut emulated = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "register" || name == "status" {
                continue;
            }
            // Small files; a handler we cannot read is one we do not count.
            if let Some(arch) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|c| binfmt_arch(&name, &c))
            {
                emulated.push(arch.clone());
                arches.insert(arch);
            }
        }
    }
    let source = if emulated.is_empty() {
        format!(
            "this machine is {native} and no qemu-user handler is registered in {} \
             (install `qemu-user-static` and `binfmt-support` to build for others)",
            dir.display()
        )
    } else {
        format!(
            "this machine is {native}, with qemu-user handlers registered in {} for {}",
            dir.display(),
            emulated.join(", ")
        )
    };
    Capability { arches, source }
}

/// A host as the platform choice sees it: its name and its architecture (`uname -m` or OCI
/// spelling) as the inventory declares it or, failing that, as the host reports it; `None` when
/// neither is known (this machine's is assumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredHost {
    pub name: String,
    pub arch: Option<String>,
    /// The architecture is what the host reported, not the inventory's.
    pub reported: bool,
    /// Its labels, for the service's placement constraints.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Whether placement constraint `c` lets the service onto host `h`, as the scheduler reads it
/// (an unknown label or architecture never equals anything).
pub fn allows(c: &crate::schedule::units::Constraint, h: &DeclaredHost) -> bool {
    use crate::schedule::units::Attribute;
    let arch = h.arch.as_deref().map(crate::inventory::normalize_arch);
    let actual: Option<&str> = match &c.attribute {
        Attribute::Hostname => Some(&h.name),
        Attribute::Label(k) => h.labels.get(k).map(String::as_str),
        Attribute::Arch => arch.as_deref(),
        Attribute::Os => Some("linux"),
    };
    (actual == Some(c.value.as_str())) == c.equal
}

/// The platforms to build a service for, or why it cannot be built here. Pure.
///
/// - `build.platforms` given: all of them, as docker compose builds them; `platform:` must be
///   one of them.
/// - else `platform:`: that one.
/// - else the hosts' architectures (the inventory's, else what the host reports), with `native`
///   for hosts of unknown architecture. Those the builder cannot produce are left out
///   (placement may keep the service off those hosts; delivery refuses a host whose architecture
///   was not built, naming it); none left is refused here, naming the hosts.
///
/// An explicit platform the builder cannot produce is refused.
pub fn choose(
    service: &str,
    build_platforms: &[String],
    service_platform: Option<&str>,
    hosts: &[DeclaredHost],
    native: &Platform,
    can: &Capability,
    builder: &str,
) -> Result<Vec<Platform>, String> {
    let explicit: Vec<Platform> = if !build_platforms.is_empty() {
        let list = build_platforms
            .iter()
            .map(|p| {
                Platform::parse(p)
                    .map_err(|e| format!("service `{service}`: `build.platforms`: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(p) = service_platform {
            let p =
                Platform::parse(p).map_err(|e| format!("service `{service}`: `platform`: {e}"))?;
            if !list.contains(&p) {
                return Err(format!(
                    "service `{service}`: `platform: {}` is not among its `build.platforms` ({})\nhint: add it to `build.platforms`, as docker compose requires",
                    p.text(),
                    list.iter().map(Platform::text).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        list
    } else if let Some(p) = service_platform {
        vec![Platform::parse(p).map_err(|e| format!("service `{service}`: `platform`: {e}"))?]
    } else {
        Vec::new()
    };
    let mut chosen: Vec<Platform> = Vec::new();
    if !explicit.is_empty() {
        for p in explicit {
            if p.os != "linux" {
                return Err(format!(
                    "service `{service}`: platform `{}` is not a Linux one; compose-fleet's hosts run Linux images",
                    p.text()
                ));
            }
            if !can.can(&p.arch) {
                return Err(format!(
                    "service `{service}` is to be built for {}, but {builder} here cannot build for {}: {}\nhint: build on a machine of that architecture, or register a qemu-user emulator (nothing was built or sent)",
                    p.text(),
                    p.arch,
                    can.source
                ));
            }
            if !chosen.contains(&p) {
                chosen.push(p);
            }
        }
        return Ok(chosen);
    }
    let mut unbuildable: Vec<String> = Vec::new();
    for h in hosts {
        let p = match &h.arch {
            Some(a) => Platform {
                os: "linux".into(),
                arch: oci_arch(a).to_string(),
                variant: None,
            },
            None => native.clone(),
        };
        if !can.can(&p.arch) {
            unbuildable.push(format!(
                "host `{}` is {} ({})",
                h.name,
                h.arch.as_deref().unwrap_or(&p.arch),
                match (&h.arch, h.reported) {
                    (Some(_), false) => "the inventory says so",
                    (Some(_), true) => "it reports so",
                    (None, _) => "this machine's",
                }
            ));
        } else if !chosen.contains(&p) {
            chosen.push(p);
        }
    }
    if chosen.is_empty() && !unbuildable.is_empty() {
        return Err(format!(
            "service `{service}` cannot be built for any host: {}; {builder} here builds only for {} ({})\nhint: build on a machine of the hosts' architecture, or register a qemu-user emulator (nothing was built or sent)",
            unbuildable.join(", "),
            can.list(),
            can.source
        ));
    }
    if chosen.is_empty() {
        chosen.push(native.clone());
    }
    chosen.sort();
    // This machine's own platform first: the image a single-platform build records.
    if let Some(i) = chosen.iter().position(|p| p == native) {
        let p = chosen.remove(i);
        chosen.insert(0, p);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can(arches: &[&str]) -> Capability {
        Capability {
            arches: arches.iter().map(|a| a.to_string()).collect(),
            source: "test".into(),
        }
    }

    fn host(name: &str, arch: Option<&str>) -> DeclaredHost {
        DeclaredHost {
            name: name.into(),
            arch: arch.map(str::to_string),
            reported: false,
            labels: Default::default(),
        }
    }

    fn texts(r: Result<Vec<Platform>, String>) -> Result<Vec<String>, String> {
        r.map(|ps| ps.iter().map(Platform::text).collect())
    }

    #[test]
    fn platforms_are_read_in_either_spelling() {
        assert_eq!(
            Platform::parse("linux/arm64").map(|p| p.text()),
            Ok("linux/arm64".into())
        );
        assert_eq!(
            Platform::parse("aarch64").map(|p| p.text()),
            Ok("linux/arm64".into())
        );
        assert_eq!(
            Platform::parse("linux/x86_64").map(|p| p.text()),
            Ok("linux/amd64".into())
        );
        assert_eq!(
            Platform::parse("linux/arm/v7").map(|p| p.text()),
            Ok("linux/arm/v7".into())
        );
        assert!(Platform::parse("linux/").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());
    }

    #[test]
    fn the_hosts_declared_architectures_are_built_when_nothing_is_explicit() {
        let amd = Platform::parse("linux/amd64").expect("platform");
        let choose = |hosts: &[DeclaredHost], c: &Capability| {
            texts(choose("web", &[], None, hosts, &amd, c, "buildah"))
        };
        // No host declares one: this machine's.
        assert_eq!(
            choose(&[host("a", None)], &can(&["amd64"])),
            Ok(vec!["linux/amd64".into()])
        );
        // A mixed fleet with an emulator: both, this machine's first.
        assert_eq!(
            choose(
                &[host("pi", Some("aarch64")), host("a", None)],
                &can(&["amd64", "arm64"])
            ),
            Ok(vec!["linux/amd64".into(), "linux/arm64".into()])
        );
        // Without one: what can be built; delivery refuses the `pi` host if placed there.
        assert_eq!(
            choose(
                &[host("pi", Some("aarch64")), host("a", None)],
                &can(&["amd64"])
            ),
            Ok(vec!["linux/amd64".into()])
        );
        // Only arm64 hosts and no emulator: refused, naming the host and its architecture.
        let err = choose(&[host("pi", Some("aarch64"))], &can(&["amd64"])).expect_err("refused");
        assert!(
            err.contains("host `pi` is aarch64 (the inventory says so)"),
            "{err}"
        );
        assert!(err.contains("nothing was built or sent"), "{err}");
        // Only arm64 hosts and an emulator: arm64 alone.
        assert_eq!(
            choose(&[host("pi", Some("arm64"))], &can(&["amd64", "arm64"])),
            Ok(vec!["linux/arm64".into()])
        );
    }

    #[test]
    fn explicit_platforms_win_and_must_be_buildable() {
        let amd = Platform::parse("linux/amd64").expect("platform");
        let hosts = [host("a", None)];
        let both = can(&["amd64", "arm64"]);
        let c = |bp: &[&str], sp: Option<&str>, cap: &Capability| {
            let bp: Vec<String> = bp.iter().map(|s| s.to_string()).collect();
            texts(choose("web", &bp, sp, &hosts, &amd, cap, "buildah"))
        };
        assert_eq!(
            c(&["linux/arm64", "linux/amd64"], None, &both),
            Ok(vec!["linux/arm64".into(), "linux/amd64".into()])
        );
        assert_eq!(
            c(&[], Some("linux/arm64"), &both),
            Ok(vec!["linux/arm64".into()])
        );
        let err = c(&["linux/amd64"], Some("linux/arm64"), &both).expect_err("not among");
        assert!(err.contains("not among its `build.platforms`"), "{err}");
        let err = c(&["linux/arm64"], None, &can(&["amd64"])).expect_err("cannot");
        assert!(
            err.contains("buildah here cannot build for arm64: test"),
            "{err}"
        );
        assert!(c(&["windows/amd64"], None, &both).is_err());
    }

    #[test]
    fn emulators_and_buildx_lists_name_architectures() {
        let on = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n";
        assert_eq!(binfmt_arch("qemu-aarch64", on), Some("arm64".into()));
        assert_eq!(binfmt_arch("aarch64", on), Some("arm64".into()));
        assert_eq!(binfmt_arch("qemu-arm", "enabled\n"), Some("arm".into()));
        assert_eq!(binfmt_arch("qemu-i386", "enabled\n"), Some("386".into()));
        assert_eq!(binfmt_arch("qemu-aarch64", "disabled\n"), None);
        assert_eq!(
            binfmt_arch("jar", "enabled\ninterpreter /usr/bin/jexec\n"),
            None
        );
        let inspect = "Name: default\nDriver: docker\n\nNodes:\nName: default\nStatus: running\n\
                       Platforms: linux/amd64, linux/amd64/v2, linux/386, linux/arm64*\n";
        assert_eq!(
            buildx_arches(inspect).into_iter().collect::<Vec<_>>(),
            vec!["386", "amd64", "arm64"]
        );
    }
}
