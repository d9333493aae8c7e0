//! The fleet inventory: compose-fleet's own hosts file and Ansible inventories (YAML and INI),
//! turned into a [`Fleet`] of hosts with addresses, SSH options, labels and capacity.
//!
//! Reading a file is the only I/O here ([`load`]); [`parse`] is pure, so tests feed it strings.
//! Every problem is a [`Diagnostic`] with `file:line:column`; all of them are reported at once.
//!
//! # compose-fleet's own format
//!
//! ```yaml
//! defaults: { user: deploy, port: 22, identity_file: ~/.ssh/id_ed25519, known_hosts: /path/known_hosts }
//! registries: { "10.250.0.1:5000": { insecure: true },
//!               "registry.example.com": { username: deploy, password_env: REGISTRY_PASSWORD } }
//! network: { cidr: 10.213.0.0/16, mode: auto, port: 51820 }   # mode: auto | host-gw | wireguard
//! build: { push: registry, registry: registry.example.com/team }   # push: direct (default) | registry
//! hosts:
//!   web-1: { address: 203.0.113.10, labels: { zone: a, disk: ssd } }
//!   db-1:  { address: db1.example.com, user: root, port: 2222,
//!            capacity: { cpus: 8, memory: 32GiB }, reserved: { memory: 1GiB }, arch: x86_64 }
//! ```
//!
//! A host may override any default (`user`, `port`, `identity_file`, `known_hosts`); `drain: true`
//! keeps new replicas off it. `capacity` needs both `cpus` and `memory`; without it, capacity comes
//! from the host's facts. `reserved` (either or both) is kept free for the system. Sizes are binary
//! (`512m` = 512 MiB), as in compose. Unknown keys are errors.
//!
//! A registry's credentials are `username` with one of `password_env` (an environment variable's
//! name), `password_file` (a file holding it; a relative path is beside the inventory) or `password` (the text itself: readable by anyone
//! who reads the inventory, so it is warned about). They are read only when an image needs them,
//! win over the user's docker config for that registry, and travel only inside the agent protocol.
//!
//! A host may also say `connection: local` (compose-fleet runs on this machine, no SSH) and
//! `become: true` / `become_user: NAME` (commands run through privilege escalation).
//!
//! # Ansible inventories
//!
//! Read exactly as `ansible-inventory` (ansible-core 2.19) reads them: the INI and YAML
//! formats (see [`ansible`]), a directory of inventory files, and the `group_vars/` and
//! `host_vars/` directories beside the inventory. Per host: `ansible_host` → address (default:
//! the inventory name), `ansible_user` → user, `ansible_port` → port,
//! `ansible_ssh_private_key_file` → identity file (the older `ansible_ssh_*` spellings win when
//! both are set, as in Ansible), `ansible_connection: local` → run here without SSH,
//! `ansible_become`/`ansible_become_user` → privilege escalation. Every group a host belongs to
//! (directly or through `children`, except `all` and `ungrouped`) becomes the label
//! `group.<name>` = `"true"`. Other variables whose value is a scalar become labels spelled as
//! `ansible-inventory --list` prints them (`true`, `1.0`, `web`); null, lists and mappings are
//! not labels; variables starting with `ansible_` are not labels; `compose_fleet_cpus`,
//! `compose_fleet_memory`, `compose_fleet_reserved_cpus`, `compose_fleet_reserved_memory`,
//! `compose_fleet_arch`, `compose_fleet_drain` set capacity, reserved, arch and drain, and
//! `compose_fleet_known_hosts` the host keys to check against. `compose_fleet_network_cidr`,
//! `compose_fleet_network_mode` and `compose_fleet_network_port` (usually in `group_vars/all`) are
//! the fleet's `network:`; hosts that disagree are an error. `compose_fleet_registries` (a
//! mapping, usually in `group_vars/all`) is the fleet's `registries:`, with the same keys;
//! `compose_fleet_build_push` and `compose_fleet_build_registry` are the fleet's `build:`.
//! Dynamic inventories (scripts, plugin configurations, TOML) are refused with the command
//! that exports them to a static file.
//!
//! # Strictness and bounds
//!
//! Addresses must be host names, IPv4 or IPv6 addresses; users and identity files are checked;
//! nothing that starts with `-` is accepted where it would reach `ssh`. File sizes, the number
//! of hosts (after ranges are expanded) and name lengths are bounded by [`Limits`].

pub mod ansible;
mod own;
pub mod pin;
pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compose::model::Location;
use crate::diag::{Diagnostic, Diagnostics, SourceMap};
use crate::limits::{Limit, Limits};

/// All the hosts a project can be placed on, in inventory order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fleet {
    pub hosts: Vec<Host>,
    /// Registries by `host[:port]`, with how to talk to them.
    pub registries: BTreeMap<String, Registry>,
    /// The file (or directory) the fleet was read from (for messages).
    pub source: Option<PathBuf>,
    /// Warnings found while reading (rendered), e.g. keys Ansible skips too.
    pub warnings: Vec<String>,
    /// The pod network: the inventory's `network:`.
    pub network: NetworkSettings,
    /// Where `up` sends built images: the inventory's `build:`.
    pub build: BuildSettings,
}

/// How built images reach the hosts: the inventory's `build: { push, registry }` (Ansible:
/// `compose_fleet_build_push`, `compose_fleet_build_registry`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildSettings {
    pub push: PushMode,
    /// `registry: HOST[:PORT]/prefix`: where `push: registry` pushes (the image's own name, or
    /// `<project>-<service>`, under it); `None`: each service's `image:`, which must name a
    /// registry.
    pub registry: Option<String>,
}

/// `build.push`: how `up` gets a built image to the hosts that run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushMode {
    /// `direct` (the default): blob by blob over each host's SSH channel, no registry.
    #[default]
    Direct,
    /// `registry`: pushed to a registry, which the hosts pull it from.
    Registry,
}

impl PushMode {
    pub fn parse(text: &str) -> Option<PushMode> {
        match text {
            "direct" => Some(PushMode::Direct),
            "registry" => Some(PushMode::Registry),
            _ => None,
        }
    }
}

/// Checks `build.registry`'s text (`HOST[:PORT]` or `HOST[:PORT]/prefix`, no scheme); returns
/// it without a trailing `/`.
pub fn parse_push_registry(text: &str) -> Result<String, String> {
    let t = text.trim().trim_end_matches('/');
    if t.contains("://") {
        return Err(format!(
            "`{text}` has a scheme; write HOST[:PORT]/prefix (plain http is the `insecure` of the registry in `registries:`)"
        ));
    }
    let host = t.split('/').next().unwrap_or("");
    let ok = !host.is_empty()
        && !t.starts_with('-')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
        && !t.contains("//");
    if !ok {
        return Err(format!(
            "`{text}` is not a registry; write HOST[:PORT] or HOST[:PORT]/prefix, e.g. registry.example.org/team"
        ));
    }
    Ok(t.to_string())
}

/// The fleet's pod network as the inventory sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkSettings {
    /// The fleet CIDR; `None`: [`crate::proto::net::DEFAULT_FLEET_CIDR`].
    pub cidr: Option<crate::proto::net::Ipv4Net>,
    /// How hosts reach each other's pods.
    pub mode: crate::proto::mesh::Mode,
    /// The WireGuard mesh's UDP port on every host; `None`: [`crate::proto::mesh::DEFAULT_PORT`].
    pub port: Option<u16>,
}

impl NetworkSettings {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(crate::proto::mesh::DEFAULT_PORT)
    }

    pub fn cidr(&self) -> crate::proto::net::Ipv4Net {
        self.cidr.unwrap_or(crate::proto::net::DEFAULT_FLEET_CIDR)
    }
}

/// How compose-fleet reaches a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connection {
    /// Over SSH (the default).
    #[default]
    Ssh,
    /// The host is this machine: commands run here, without SSH (`ansible_connection: local`).
    Local,
}

impl Connection {
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Ssh => "ssh",
            Connection::Local => "local",
        }
    }
}

/// One machine: how to reach it over SSH and what it offers to placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The inventory name: what placements, constraints (`node.hostname`) and messages use.
    pub name: String,
    /// IP address or DNS name to connect to.
    pub address: String,
    /// SSH user; `None` lets the user's SSH configuration decide.
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    /// Pinned host keys (`ssh-ed25519 AAAA…`, without comments): checked strictly, instead of
    /// any `known_hosts` file.
    pub host_keys: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Declared capacity; `None` means "ask the host" (facts).
    pub capacity: Option<Capacity>,
    /// Kept free for the system; subtracted from capacity before placing anything.
    pub reserved: Capacity,
    /// `uname -m` spelling (`x86_64`, `aarch64`); `None` means "ask the host".
    pub arch: Option<String>,
    /// A draining host keeps what runs there but gets no new replicas.
    pub drain: bool,
    /// Where the host is defined (for messages).
    pub location: Option<Location>,
    /// How to reach it: SSH, or this machine.
    pub connection: Connection,
    /// Run commands through privilege escalation (`ansible_become`, `become: true`).
    pub use_become: bool,
    /// The user to become (`ansible_become_user`); `None` means root.
    pub become_user: Option<String>,
    /// Where each value was set, by field (`address`, `user`, `port`, `identity_file`,
    /// `connection`, `become`, `become_user`, `labels.<key>`): for `inventory --host`.
    pub origins: BTreeMap<String, Location>,
    /// Ansible's `compose_fleet_network_*` as this host sees them; [`ansible::finish`] makes them
    /// the fleet's [`Fleet::network`]. Unused in the own format (which has a top-level `network:`).
    pub network: NetworkSettings,
    /// Ansible's `compose_fleet_registries` as this host sees it; [`ansible::finish`] makes it the
    /// fleet's [`Fleet::registries`]. Unused in the own format (a top-level `registries:`).
    pub registries: BTreeMap<String, Registry>,
    /// Ansible's `compose_fleet_build_*` as this host sees them; [`ansible::finish`] makes them
    /// the fleet's [`Fleet::build`]. Unused in the own format (a top-level `build:`).
    pub build: BuildSettings,
}

/// An amount of cpu (cores, fractional) and memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Capacity {
    pub cpus: f64,
    pub memory: u64,
}

/// How to talk to one image registry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registry {
    /// Plain HTTP (no TLS). Only ever used when the inventory says so.
    pub insecure: bool,
    /// `username`: with [`Registry::password`], the credentials for pulls and pushes (they win
    /// over the user's docker config for this registry).
    pub username: Option<String>,
    pub password: Option<Password>,
}

/// Where a registry's password is read from when it is needed: never kept in the inventory's
/// model as text except when the user wrote it there (`password:`, warned about).
#[derive(Clone, PartialEq)]
pub enum Password {
    /// `password_env: NAME`: the environment variable NAME.
    Env(String),
    /// `password_file: PATH`: the file's content, without its trailing newline.
    File(PathBuf),
    /// `password: TEXT`, written in the inventory.
    Inline(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Env(name) => write!(f, "Env({name:?})"),
            Password::File(path) => write!(f, "File({path:?})"),
            Password::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl Host {
    /// A host with defaults everywhere: for tests and for building fleets in code.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Host {
        Host {
            name: name.into(),
            address: address.into(),
            user: None,
            port: 22,
            identity_file: None,
            known_hosts: None,
            host_keys: Vec::new(),
            labels: BTreeMap::new(),
            capacity: None,
            reserved: Capacity::default(),
            arch: None,
            drain: false,
            location: None,
            connection: Connection::Ssh,
            use_become: false,
            become_user: None,
            origins: BTreeMap::new(),
            network: NetworkSettings::default(),
            registries: BTreeMap::new(),
            build: BuildSettings::default(),
        }
    }
}

impl Fleet {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// Why an inventory could not be read: rendered diagnostics need the sources.
#[derive(Debug)]
pub struct LoadError {
    pub diagnostics: Diagnostics,
    pub sources: SourceMap,
}

impl LoadError {
    fn one(d: Diagnostic, sources: SourceMap) -> LoadError {
        LoadError {
            diagnostics: Diagnostics(vec![d]),
            sources,
        }
    }

    /// Every problem rendered with its quoted line and caret.
    pub fn render(&self) -> String {
        self.diagnostics
            .0
            .iter()
            .map(|d| self.sources.render(d))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// The inventory file to use: `-i FILE` (or `COMPOSE_FLEET_INVENTORY`, which clap folds into the
/// same option) if given, else `inventory.yaml` beside the first compose file.
pub fn default_path(explicit: Option<&Path>, first_compose_file: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let dir = first_compose_file
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    dir.join("inventory.yaml")
}

/// Reads and parses an inventory (a file in any of the three formats, or a directory of
/// Ansible inventories), with the limits of the environment (`COMPOSE_FLEET_MAX_*`).
pub fn load(path: &Path) -> Result<Fleet, LoadError> {
    let limits = Limits::from_lookup(|k| std::env::var(k).ok()).unwrap_or_default();
    load_with(path, &limits)
}

/// [`load`] within explicit limits.
pub fn load_with(path: &Path, limits: &Limits) -> Result<Fleet, LoadError> {
    let name: Arc<str> = path.display().to_string().into();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let d = Diagnostic::error(format!("cannot read inventory `{name}`: {e}")).hint(
                "pass the hosts file with `-i FILE` (or COMPOSE_FLEET_INVENTORY), or create \
                 `inventory.yaml` beside the compose file",
            );
            return Err(LoadError::one(d, SourceMap::default()));
        }
    };
    let mut sources = Vec::new();
    let base = if meta.is_dir() {
        inventory_dir(path, limits, &mut sources)
            .map_err(|d| LoadError::one(*d, SourceMap::default()))?;
        path.to_path_buf()
    } else {
        let text = read_bounded(path, limits)?;
        sources.push((name.clone(), text));
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    // Classified (and a YAML file parsed) once: the parse is most of the load.
    let classified = classify_all(&sources, limits);
    let own_only = classified.len() == 1 && matches!(classified[0].0, Format::Own);
    let files = if own_only {
        ansible::VarsFiles::default()
    } else {
        vars_files(&base, limits)?
    };
    let mut fleet = build(&sources, classified, &files, limits, meta.is_dir())?;
    fleet.source = Some(path.to_path_buf());
    // A relative `password_file` is the inventory's neighbour, as `identity_file` is.
    for reg in fleet.registries.values_mut() {
        if let Some(Password::File(p)) = &mut reg.password {
            if p.is_relative() && !p.starts_with("~") {
                *p = base.join(&*p);
            }
        }
    }
    Ok(fleet)
}

/// Reads at most the file-size limit from `path`, as UTF-8 (a leading BOM is dropped).
fn read_bounded(path: &Path, limits: &Limits) -> Result<Arc<str>, LoadError> {
    use std::io::Read as _;
    let name: Arc<str> = path.display().to_string().into();
    let max = limits.get(Limit::FileBytes);
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut bytes));
    if let Err(e) = read {
        let d = Diagnostic::error(format!("cannot read `{name}`: {e}"))
            .hint("check that the file exists and is readable");
        return Err(LoadError::one(d, SourceMap::default()));
    }
    if bytes.len() as u64 > max {
        let d = Diagnostic::error(format!("`{name}` is larger than {max} bytes"))
            .at(Location {
                file: name.clone(),
                line: 1,
                column: 1,
                offset: 0,
                len: 0,
            })
            .hint(Limit::FileBytes.hint(max));
        return Err(LoadError::one(d, SourceMap::default()));
    }
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.drain(..3);
            }
            Ok(text.into())
        }
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let before = String::from_utf8_lossy(&bytes[..good]).into_owned();
            let line = crate::diag::line_of_offset(&before, good);
            let line_start = before.rfind(['\n', '\r']).map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            let mut sources = SourceMap::default();
            sources.add(name.clone(), before.clone().into());
            let d = Diagnostic::error(format!(
                "`{name}` is not valid UTF-8 (byte {good} is not part of a character)"
            ))
            .at(Location {
                file: name,
                line,
                column: u32::try_from(column).unwrap_or(u32::MAX),
                offset: good,
                len: 0,
            })
            .hint("save the inventory as UTF-8");
            Err(LoadError::one(d, sources))
        }
    }
}

/// The files of a directory inventory, as Ansible lists them: sorted, recursively, skipping
/// hidden files, `group_vars`, `host_vars`, `vars_plugins` and the extensions Ansible ignores.
fn inventory_dir(
    dir: &Path,
    limits: &Limits,
    out: &mut Vec<(Arc<str>, Arc<str>)>,
) -> Result<(), Box<Diagnostic>> {
    const IGNORED_EXTS: &[&str] = &[
        ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg",
        ".retry",
    ];
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| {
            Box::new(Diagnostic::error(format!(
                "cannot list `{}`: {e}",
                dir.display()
            )))
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        if n.starts_with('.')
            || matches!(n.as_str(), "host_vars" | "group_vars" | "vars_plugins")
            || IGNORED_EXTS.iter().any(|x| n.ends_with(x))
        {
            continue;
        }
        let path = dir.join(&n);
        if path.is_dir() {
            inventory_dir(&path, limits, out)?;
        } else {
            let text = read_bounded(&path, limits).map_err(|e| {
                Box::new(
                    e.diagnostics
                        .0
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| Diagnostic::error("cannot read")),
                )
            })?;
            out.push((path.display().to_string().into(), text));
        }
    }
    Ok(())
}

/// `group_vars/` and `host_vars/` beside the inventory: for each name, the file Ansible picks
/// (`NAME`, else `NAME.yml`, `NAME.yaml`, `NAME.json`; a directory gives all its files, sorted).
fn vars_files(base: &Path, limits: &Limits) -> Result<ansible::VarsFiles, LoadError> {
    let mut files = ansible::VarsFiles::default();
    for (sub, map) in [
        ("group_vars", &mut files.groups),
        ("host_vars", &mut files.hosts),
    ] {
        let dir = base.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut best: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
        for e in entries.filter_map(|e| e.ok()) {
            let file_name = e.file_name().to_string_lossy().into_owned();
            for (rank, ext) in ["", ".yml", ".yaml", ".json"].iter().enumerate() {
                let entity = if ext.is_empty() {
                    Some(file_name.as_str())
                } else {
                    file_name.strip_suffix(ext)
                };
                let Some(entity) = entity.filter(|e| !e.is_empty()) else {
                    continue;
                };
                let slot = best
                    .entry(entity.to_string())
                    .or_insert((usize::MAX, PathBuf::new()));
                if rank < slot.0 {
                    *slot = (rank, e.path());
                }
            }
        }
        for (entity, (_, path)) in best {
            let mut list = Vec::new();
            if path.is_dir() {
                vars_dir(&path, &mut list);
            } else {
                list.push(path);
            }
            let mut texts = Vec::new();
            for p in list {
                let text = read_bounded(&p, limits)?;
                texts.push((Arc::<str>::from(p.display().to_string()), text));
            }
            map.insert(entity, texts);
        }
    }
    Ok(files)
}

/// The variables files in a `group_vars/NAME/` directory, as Ansible finds them.
fn vars_dir(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        if n.starts_with('.') || n.ends_with('~') {
            continue;
        }
        let path = dir.join(&n);
        let ext = Path::new(&n)
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()));
        if path.is_dir() && ext.is_none() {
            vars_dir(&path, out);
        } else if path.is_file()
            && ext
                .as_deref()
                .is_none_or(|e| matches!(e, ".yml" | ".yaml" | ".json"))
        {
            out.push(path);
        }
    }
}

/// The formats an inventory can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Own,
    AnsibleYaml,
    AnsibleIni,
    /// Something Ansible runs a script or a plugin for: refused.
    Dynamic(&'static str),
}

/// Which format `text` is, the way Ansible picks its plugins: a script (`#!`) or a `.toml`
/// file is dynamic; a file named `.yml`, `.yaml`, `.json` or with no extension that is a YAML
/// mapping is YAML (ours when it has `defaults`/`registries`, or `hosts` naming hosts; a
/// plugin configuration when it has `plugin`); anything else is INI.
pub fn detect(name: &str, text: &str) -> Format {
    classify(name, text, &Limits::default()).0
}

type Parsed = Option<Result<tree::Node, tree::YamlError>>;

fn classify(name: &str, text: &str, limits: &Limits) -> (Format, Parsed) {
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if ext.as_deref() == Some("toml") {
        return (
            Format::Dynamic("TOML inventories need Ansible's `toml` plugin"),
            None,
        );
    }
    if text.starts_with("#!") {
        return (
            Format::Dynamic("this inventory is a script (it starts with `#!`)"),
            None,
        );
    }
    if !matches!(ext.as_deref(), None | Some("yml" | "yaml" | "json")) {
        return (Format::AnsibleIni, None);
    }
    let parsed = tree::parse_mode(text, tree::Mode::Ansible, limits);
    let format = match &parsed {
        Ok(tree::Node {
            value: tree::Value::Map(entries),
            ..
        }) if !entries.is_empty() => {
            let get = |k: &str| {
                entries
                    .iter()
                    .find(|(key, _)| key.text == k)
                    .map(|(_, v)| v)
            };
            if get("plugin").is_some_and(|v| !matches!(v.value, tree::Value::Null)) {
                Format::Dynamic("this YAML file configures an inventory plugin (`plugin:`)")
            } else if get("defaults").is_some()
                || get("registries").is_some()
                || get("build").is_some()
            {
                Format::Own
            } else {
                match get("hosts").map(|v| &v.value) {
                    Some(tree::Value::Map(hosts)) => {
                        if hosts.is_empty()
                            || hosts.iter().any(|(k, _)| {
                                !matches!(k.text.as_str(), "hosts" | "children" | "vars")
                            })
                        {
                            Format::Own
                        } else {
                            Format::AnsibleYaml
                        }
                    }
                    Some(tree::Value::Null) if entries.len() == 1 => Format::Own,
                    _ => Format::AnsibleYaml,
                }
            }
        }
        _ => Format::AnsibleIni,
    };
    (format, Some(parsed))
}

/// Parses inventory text; `name` is the file name used in messages.
pub fn parse(name: &str, text: &str) -> Result<Fleet, LoadError> {
    parse_with(name, text, &Limits::default())
}

/// [`parse`] within explicit limits. Reads no `group_vars/`: that is [`load`]'s job.
pub fn parse_with(name: &str, text: &str, limits: &Limits) -> Result<Fleet, LoadError> {
    let source = vec![(Arc::<str>::from(name), Arc::<str>::from(text))];
    let classified = classify_all(&source, limits);
    build(
        &source,
        classified,
        &ansible::VarsFiles::default(),
        limits,
        false,
    )
}

/// Each source's format, with its YAML tree when it was parsed to tell.
fn classify_all(sources: &[(Arc<str>, Arc<str>)], limits: &Limits) -> Vec<(Format, Parsed)> {
    sources
        .iter()
        .map(|(file, text)| classify(file, text, limits))
        .collect()
}

/// The fleet of already-read inventory sources and variables files.
fn build(
    sources: &[(Arc<str>, Arc<str>)],
    classified: Vec<(Format, Parsed)>,
    files: &ansible::VarsFiles,
    limits: &Limits,
    is_dir: bool,
) -> Result<Fleet, LoadError> {
    let mut map = SourceMap::default();
    for (n, t) in sources {
        map.add(n.clone(), t.clone());
    }
    for list in files.groups.values().chain(files.hosts.values()) {
        for (n, t) in list {
            map.add(n.clone(), t.clone());
        }
    }
    let mut diags = Diagnostics::default();
    let mut fleet = Fleet::default();
    let mut inv = ansible::Inventory::new(limits);
    let mut ansible_sources = 0;
    for ((file, text), (format, parsed)) in sources.iter().zip(classified) {
        match format {
            Format::Own if sources.len() == 1 && !is_dir => {
                fleet = own::parse(file, text, &mut diags);
            }
            Format::Own => diags.push(
                Diagnostic::error(format!(
                    "`{file}` is in compose-fleet's own format, which cannot be combined with \
                     other inventory files"
                ))
                .at(tree::Pos::start().in_file(file))
                .hint("give that file alone with `-i FILE`"),
            ),
            Format::Dynamic(why) => diags.push(
                Diagnostic::error(format!(
                    "`{file}` is a dynamic inventory, which compose-fleet does not run: {why}"
                ))
                .at(tree::Pos::start().in_file(file))
                .hint(
                    "export it to a static file with `ansible-inventory -i SOURCE --list -y > \
                     inventory.yaml` and pass that file with `-i`",
                ),
            ),
            Format::AnsibleYaml => {
                ansible_sources += 1;
                if let Some(Ok(root)) = &parsed {
                    ansible::yaml::parse(&mut inv, file, text, root);
                }
            }
            Format::AnsibleIni => {
                ansible_sources += 1;
                let before = inv.diags.0.len();
                ansible::ini::parse(&mut inv, file, text);
                // A `.yml` file that is neither YAML nor INI: the YAML error says more.
                let failed = inv.diags.0[before..].iter().any(Diagnostic::is_error);
                let yaml_named = Path::new(file.as_ref())
                    .extension()
                    .is_some_and(|e| matches!(e.to_str(), Some("yml" | "yaml" | "json")));
                if let (true, true, Some(Err(e))) = (failed, yaml_named, &parsed) {
                    inv.diags.0.truncate(before);
                    let mut d =
                        Diagnostic::error(format!("invalid YAML in inventory: {}", e.message))
                            .at(e.pos.unwrap_or_else(tree::Pos::start).in_file(file));
                    if let Some(h) = &e.hint {
                        d = d.hint(h.clone());
                    }
                    inv.error(d);
                }
            }
        }
    }
    if ansible_sources > 0 {
        let hosts = ansible::finish(inv, files, limits, &mut diags);
        fleet.hosts.extend(hosts.hosts);
        if hosts.network != NetworkSettings::default() {
            fleet.network = hosts.network;
        }
        fleet.registries.extend(hosts.registries);
        if hosts.build != BuildSettings::default() {
            fleet.build = hosts.build;
        }
    } else {
        diags.extend(inv.diags);
    }
    for host in &fleet.hosts {
        check_host(host, limits, &mut diags);
    }
    if fleet.hosts.is_empty() && !diags.has_errors() {
        let file = sources
            .first()
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        diags.push(
            Diagnostic::error(format!("inventory `{file}` lists no hosts"))
                .hint("add at least one host under `hosts:`"),
        );
    }
    if diags.has_errors() {
        return Err(LoadError {
            diagnostics: diags,
            sources: map,
        });
    }
    fleet.warnings = diags.warnings().map(|d| map.render(d)).collect();
    Ok(fleet)
}

/// The strict checks every host passes, whatever the format: what reaches `ssh` must be an
/// address, a user name or a path, never an option.
fn check_host(host: &Host, limits: &Limits, diags: &mut Diagnostics) {
    let at = |field: &str| host.origins.get(field).or(host.location.as_ref()).cloned();
    let mut report = |field: &str, message: String, hint: &str| {
        let mut d = Diagnostic::error(format!("host `{}`: {message}", host.name)).hint(hint);
        if let Some(l) = at(field) {
            d = d.at(l);
        }
        diags.push(d);
    };
    let max = limits.get(Limit::NameLength);
    if host.name.chars().count() as u64 > max {
        report(
            "name",
            format!("the name is longer than {max} characters"),
            &Limit::NameLength.hint(max),
        );
    }
    if host.connection == Connection::Ssh {
        if let Err(why) = check_address(&host.address) {
            report(
                "address",
                format!("`{}` is not a host name or IP address: {why}", host.address),
                "give a DNS name, an IPv4 address or an IPv6 address (`ansible_host` or \
                 `address:`)",
            );
        }
    }
    for (field, value) in [("user", &host.user), ("become_user", &host.become_user)] {
        if let Some(user) = value {
            if let Err(why) = check_word(user) {
                report(
                    field,
                    format!("user `{user}` {why}"),
                    "give a plain user name, e.g. `deploy`",
                );
            }
        }
    }
    if let Some(key) = &host.identity_file {
        let text = key.to_string_lossy();
        if let Err(why) = check_word(&text).or_else(|e| {
            // Paths may contain spaces; nothing else changes.
            if e.contains("space") {
                Ok(())
            } else {
                Err(e)
            }
        }) {
            report(
                "identity_file",
                format!("identity file `{text}` {why}"),
                "give the path of a private key file",
            );
        }
    }
}

/// A user name or path: not empty, not an option, no control characters or spaces, no
/// unrendered template.
fn check_word(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.starts_with('-') {
        return Err("starts with `-`, which ssh would read as an option".into());
    }
    if s.contains("{{") || s.contains("{%") {
        return Err(
            "is a Jinja template, which compose-fleet does not render (export the inventory \
             with `ansible-inventory --list -y` to get rendered values)"
                .into(),
        );
    }
    if s.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    if s.chars().any(char::is_whitespace) {
        return Err("contains a space".into());
    }
    Ok(())
}

/// A DNS name, an IPv4 address or an IPv6 address (with an optional `%zone`).
fn check_address(s: &str) -> Result<(), String> {
    check_word(s)?;
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let (v6, zone) = s.split_once('%').unwrap_or((s, ""));
    if v6.parse::<std::net::Ipv6Addr>().is_ok() {
        return if zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            Ok(())
        } else {
            Err("the IPv6 zone is not an interface name".into())
        };
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.len() > 253 {
        return Err("a DNS name has at most 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part must have 1 to 63 characters".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part of a DNS name cannot start or end with `-`".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("`{c}` cannot appear in a DNS name"));
        }
    }
    Ok(())
}

/// The closest known name to a misspelt one, for "did you mean" hints.
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    crate::diag::did_you_mean(word, known.iter().copied())
}

/// The key types OpenSSH accepts in `known_hosts`.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// A pinned host key as written in an inventory (`ssh-ed25519 AAAA… [comment]`, as in a
/// `known_hosts` line without the host names, or a `.pub` file), normalized to `TYPE BASE64`.
pub fn parse_host_key(text: &str) -> Result<String, String> {
    let mut fields = text.split_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
        return Err(format!(
            "`{}` is not a host key: expected `TYPE BASE64`, e.g. `ssh-ed25519 AAAAC3Nza…` \
             (what `ssh-keyscan HOST` prints after the host name)",
            text.trim()
        ));
    };
    if !HOST_KEY_TYPES.contains(&kind) {
        let hint = did_you_mean(kind, HOST_KEY_TYPES)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(format!(
            "`{kind}` is not an SSH host key type{hint}; expected one of: {}",
            HOST_KEY_TYPES.join(", ")
        ));
    }
    // 16 KiB of base64 is far beyond any real key (RSA 16384 is ~2.8 KiB).
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    if blob.len() > 16 * 1024 || blob.len() < 16 || !blob.chars().all(base64) {
        return Err(format!(
            "the `{kind}` key is not base64 of a plausible length (16 bytes to 16 KiB)"
        ));
    }
    Ok(format!("{kind} {blob}"))
}

/// Parses a size the way compose does (binary units), for `memory:` values.
pub(crate) fn parse_size(v: &tree::Value) -> Result<u64, String> {
    match v {
        tree::Value::Int(i) if *i >= 0 => Ok(*i as u64),
        tree::Value::Str(s) => crate::compose::model::parse_bytes(s),
        other => Err(format!(
            "expected a size such as `32GiB` or `512m`, found {}",
            other.kind()
        )),
    }
}

/// Parses a cpu count (`8`, `0.5`, `"2"`).
pub(crate) fn parse_cpus(v: &tree::Value) -> Result<f64, String> {
    let n = match v {
        tree::Value::Int(i) => *i as f64,
        tree::Value::Float(f) => *f,
        tree::Value::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number of cpus (expected e.g. `8` or `0.5`)"))?,
        other => return Err(format!("expected a number of cpus, found {}", other.kind())),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{n} is not a number of cpus"));
    }
    Ok(n)
}

/// Validates and normalizes an architecture name to `uname -m` spelling.
pub fn normalize_arch(arch: &str) -> String {
    match arch.trim().to_ascii_lowercase().as_str() {
        "amd64" | "x86-64" | "x64" => "x86_64".into(),
        "arm64" | "armv8" => "aarch64".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected() {
        for (name, text, want) in [
            (
                "inventory.yaml",
                "hosts:\n  a: { address: x }\n",
                Format::Own,
            ),
            ("inventory.yaml", "defaults: {}\nhosts: {}\n", Format::Own),
            ("hosts.yml", "all:\n  hosts:\n    a:\n", Format::AnsibleYaml),
            ("hosts.yml", "web:\n  hosts:\n    a:\n", Format::AnsibleYaml),
            (
                "hosts",
                "[web]\na ansible_host=1.2.3.4\n",
                Format::AnsibleIni,
            ),
            ("hosts", "# c\nbox1\n[web]\n", Format::AnsibleIni),
            ("hosts.ini", "a\n", Format::AnsibleIni),
        ] {
            assert_eq!(detect(name, text), want, "{name}: {text}");
        }
    }

    #[test]
    fn default_inventory_sits_beside_the_compose_file() {
        assert_eq!(
            default_path(None, Some(Path::new("app/compose.yaml"))),
            PathBuf::from("app/inventory.yaml")
        );
        assert_eq!(
            default_path(None, Some(Path::new("compose.yaml"))),
            PathBuf::from("./inventory.yaml")
        );
        assert_eq!(
            default_path(Some(Path::new("x.ini")), Some(Path::new("a/compose.yaml"))),
            PathBuf::from("x.ini")
        );
    }

    #[test]
    fn host_keys_are_normalized_and_checked() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5";
        assert_eq!(
            parse_host_key(&format!("  {key} root@web-1 ")),
            Ok(key.into())
        );
        let e = parse_host_key("ssh-ed2551 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5").unwrap_err();
        assert!(e.contains("did you mean `ssh-ed25519`"), "{e}");
        assert!(parse_host_key("ssh-ed25519").is_err());
        assert!(parse_host_key("ssh-ed25519 AAAA,-oProxyCommand=x").is_err());
    }

    #[test]
    fn build_push_is_read_from_both_formats_and_checked() {
        let own = parse(
            "inventory.yaml",
            "build: { push: registry, registry: \"10.250.0.1:5000/team/\" }\nhosts:\n  a: { address: 10.0.0.1 }\n",
        )
        .expect("valid");
        assert_eq!(own.build.push, PushMode::Registry);
        assert_eq!(own.build.registry.as_deref(), Some("10.250.0.1:5000/team"));
        let ini = parse(
            "hosts",
            "[all:vars]\ncompose_fleet_build_push=registry\ncompose_fleet_build_registry=r.example\n[web]\na ansible_host=10.0.0.1\n",
        )
        .expect("valid");
        assert_eq!(
            ini.build,
            BuildSettings {
                push: PushMode::Registry,
                registry: Some("r.example".into())
            }
        );
        assert_eq!(
            parse("inventory.yaml", "hosts:\n  a: { address: x }\n")
                .expect("valid")
                .build
                .push,
            PushMode::Direct
        );
        // Unknown values and keys are refused where they are written.
        for (text, want) in [
            ("build: { push: regsitry }\n", "inventory.yaml:1:16"),
            ("build: { pushh: registry }\n", "inventory.yaml:1:10"),
            (
                "build: { registry: \"https://r.example\" }\n",
                "inventory.yaml:1:20",
            ),
        ] {
            let text = format!("{text}hosts:\n  a: {{ address: x }}\n");
            let err = parse("inventory.yaml", &text).expect_err(&text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn arch_names_are_normalized() {
        assert_eq!(normalize_arch("amd64"), "x86_64");
        assert_eq!(normalize_arch("ARM64"), "aarch64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }
}
