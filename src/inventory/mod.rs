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
//! registries: { "10.250.0.1:5000": { insecure: true } }
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
//! # Ansible inventories
//!
//! YAML (`all:` / `children:` / `hosts:` / `vars:`) and INI (`[group]`, `[group:vars]`,
//! `[group:children]`, `host key=value ...`) are read unchanged. Per host:
//! `ansible_host` → address (default: the inventory name), `ansible_user` → user, `ansible_port`
//! → port, `ansible_ssh_private_key_file` → identity file (the older `ansible_ssh_host`,
//! `ansible_ssh_user`, `ansible_ssh_port` too). Every group a host belongs to (directly or through
//! `children`, except `all` and `ungrouped`) becomes the label `group.<name>` = `"true"`, so
//! `node.labels.group.web == true` constrains a service to the `web` group. Other variables whose
//! value is a scalar become labels as written (`zone=a` → `zone: a`), except those starting with
//! `ansible_` and the compose-fleet variables `compose_fleet_cpus`, `compose_fleet_memory`,
//! `compose_fleet_reserved_cpus`, `compose_fleet_reserved_memory`, `compose_fleet_arch`,
//! `compose_fleet_drain`, which set capacity, reserved, arch and drain. Host variables override
//! group variables; a child group's variables override its parent's.

mod ansible;
mod own;
pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::compose::model::Location;
use crate::diag::{Diagnostic, Diagnostics, SourceMap};

/// All the hosts a project can be placed on, in inventory order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fleet {
    pub hosts: Vec<Host>,
    /// Registries by `host[:port]`, with how to talk to them.
    pub registries: BTreeMap<String, Registry>,
    /// The file the fleet was read from (for messages).
    pub source: Option<PathBuf>,
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
            labels: BTreeMap::new(),
            capacity: None,
            reserved: Capacity::default(),
            arch: None,
            drain: false,
            location: None,
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

/// Reads and parses an inventory file (any of the three formats).
pub fn load(path: &Path) -> Result<Fleet, LoadError> {
    let name: Arc<str> = path.display().to_string().into();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let d = Diagnostic::error(format!("cannot read inventory `{name}`: {e}")).hint(
                "pass the hosts file with `-i FILE` (or COMPOSE_FLEET_INVENTORY), or create \
                 `inventory.yaml` beside the compose file",
            );
            return Err(LoadError {
                diagnostics: Diagnostics(vec![d]),
                sources: SourceMap::default(),
            });
        }
    };
    let mut fleet = parse(&name, &text)?;
    fleet.source = Some(path.to_path_buf());
    Ok(fleet)
}

/// The formats an inventory can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Own,
    AnsibleYaml,
    AnsibleIni,
}

/// Guesses the format: `.ini`/`.cfg` files and files whose first line that is not a comment
/// is a `[section]` (YAML inventories never start with a list) are INI; YAML with a top-level
/// `hosts`, `defaults` or `registries` key is ours; other YAML is Ansible's.
pub fn detect(name: &str, text: &str) -> Format {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".ini") || lower.ends_with(".cfg") {
        return Format::AnsibleIni;
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
    match first {
        Some(l) if l.starts_with('[') => return Format::AnsibleIni,
        // A bare host name on its own line (no `:`) is an ungrouped INI host.
        Some(l) if !l.contains(':') && !l.starts_with('{') && !l.starts_with("---") => {
            return Format::AnsibleIni
        }
        _ => {}
    }
    match tree::parse(text) {
        Ok(tree::Node {
            value: tree::Value::Map(entries),
            ..
        }) if entries
            .iter()
            .any(|(k, _)| matches!(k.text.as_str(), "hosts" | "defaults" | "registries")) =>
        {
            Format::Own
        }
        Ok(tree::Node {
            value: tree::Value::Map(_),
            ..
        }) => Format::AnsibleYaml,
        _ => Format::Own,
    }
}

/// Parses inventory text; `name` is the file name used in messages.
pub fn parse(name: &str, text: &str) -> Result<Fleet, LoadError> {
    let file: Arc<str> = name.into();
    let mut sources = SourceMap::default();
    sources.add(file.clone(), text.into());
    let mut diags = Diagnostics::default();
    let fleet = match detect(name, text) {
        Format::Own => own::parse(&file, text, &mut diags),
        Format::AnsibleYaml => ansible::parse_yaml(&file, text, &mut diags),
        Format::AnsibleIni => ansible::parse_ini(&file, text, &mut diags),
    };
    if fleet.hosts.is_empty() && !diags.has_errors() {
        diags.push(
            Diagnostic::error(format!("inventory `{file}` lists no hosts"))
                .hint("add at least one host under `hosts:`"),
        );
    }
    if diags.has_errors() {
        return Err(LoadError {
            diagnostics: diags,
            sources,
        });
    }
    Ok(fleet)
}

/// The closest known name to a misspelt one, for "did you mean" hints.
pub(crate) fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    crate::diag::did_you_mean(word, known.iter().copied())
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
    fn arch_names_are_normalized() {
        assert_eq!(normalize_arch("amd64"), "x86_64");
        assert_eq!(normalize_arch("ARM64"), "aarch64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }
}
