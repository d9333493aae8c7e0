//! compose-fleet's own inventory format (see the module documentation of `inventory`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::tree::{self, Key, Node, Value};
use super::{
    did_you_mean, normalize_arch, parse_cpus, parse_size, Capacity, Connection, Fleet, Host,
    Password, Registry,
};
use crate::diag::{Diagnostic, Diagnostics};

const TOP_KEYS: &[&str] = &["defaults", "registries", "network", "build", "hosts"];
const BUILD_KEYS: &[&str] = &["push", "registry"];
const NETWORK_KEYS: &[&str] = &["cidr", "mode", "port"];
const DEFAULT_KEYS: &[&str] = &["user", "port", "identity_file", "known_hosts"];
const HOST_KEYS: &[&str] = &[
    "address",
    "user",
    "port",
    "identity_file",
    "known_hosts",
    "host_key",
    "labels",
    "capacity",
    "reserved",
    "arch",
    "drain",
    "connection",
    "become",
    "become_user",
];
const CAPACITY_KEYS: &[&str] = &["cpus", "memory"];
const REGISTRY_KEYS: &[&str] = &[
    "insecure",
    "username",
    "password_env",
    "password_file",
    "password",
];

/// Reports problems against one file.
pub(super) struct Ctx<'a> {
    pub file: &'a Arc<str>,
    pub diags: &'a mut Diagnostics,
}

impl Ctx<'_> {
    pub fn error(&mut self, at: tree::Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(message).at(at.in_file(self.file))
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// The entries of a mapping, or an error saying what was found instead.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str) -> &'n [(Key, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            other => {
                let d = self.error(
                    node.at,
                    format!("{what} must be a mapping, found {}", other.kind()),
                );
                self.push(d);
                &[]
            }
        }
    }

    pub fn unknown_key(&mut self, key: &Key, known: &[&str], what: &str) {
        let mut d = self.error(key.at, format!("unknown key `{}` in {what}", key.text));
        d = match did_you_mean(&key.text, known) {
            Some(k) => d.label(format!("did you mean `{k}`?")),
            None => d.label(format!("expected one of: {}", known.join(", "))),
        };
        self.push(d);
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => node.value.scalar_text(),
            other => {
                let d = self.error(
                    node.at,
                    format!("{what} must be a string, found {}", other.kind()),
                );
                self.push(d);
                None
            }
        }
    }

    pub fn port(&mut self, node: &Node, what: &str) -> Option<u16> {
        let parsed = match &node.value {
            Value::Int(i) => u16::try_from(*i).ok().filter(|p| *p > 0),
            Value::Str(s) => s.trim().parse::<u16>().ok().filter(|p| *p > 0),
            _ => None,
        };
        if parsed.is_none() {
            let d = self
                .error(node.at, format!("{what} must be a port number (1-65535)"))
                .label(format!("found {}", show(&node.value)));
            self.push(d);
        }
        parsed
    }

    pub fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if matches!(s.to_ascii_lowercase().as_str(), "true" | "yes") => {
                Some(true)
            }
            Value::Str(s) if matches!(s.to_ascii_lowercase().as_str(), "false" | "no") => {
                Some(false)
            }
            other => {
                let d = self.error(
                    node.at,
                    format!("{what} must be true or false, found {}", other.kind()),
                );
                self.push(d);
                None
            }
        }
    }

    pub fn cpus(&mut self, node: &Node, what: &str) -> Option<f64> {
        match parse_cpus(&node.value) {
            Ok(c) => Some(c),
            Err(e) => {
                let d = self.error(node.at, format!("{what}: {e}"));
                self.push(d);
                None
            }
        }
    }

    pub fn size(&mut self, node: &Node, what: &str) -> Option<u64> {
        match parse_size(&node.value) {
            Ok(c) => Some(c),
            Err(e) => {
                let d = self.error(node.at, format!("{what}: {e}"));
                self.push(d);
                None
            }
        }
    }
}

fn show(v: &Value) -> String {
    v.scalar_text()
        .map(|t| format!("`{t}`"))
        .unwrap_or_else(|| v.kind().to_string())
}

/// SSH settings every host inherits unless it sets its own.
#[derive(Default)]
struct Defaults {
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

pub(super) fn parse(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Fleet {
    let mut cx = Ctx { file, diags };
    let root = match tree::parse(text) {
        Ok(r) => r,
        Err((msg, pos)) => {
            let mut d = Diagnostic::error(format!("invalid YAML in inventory: {msg}"));
            if let Some(pos) = pos {
                d = d.at(pos.in_file(file));
            }
            cx.push(d);
            return Fleet::default();
        }
    };
    let mut fleet = Fleet::default();
    let mut defaults = Defaults::default();
    let mut hosts_node = None;
    for (key, node) in cx.map(&root, "the inventory") {
        match key.text.as_str() {
            "defaults" => defaults = parse_defaults(&mut cx, node),
            "registries" => fleet.registries = parse_registries(&mut cx, node),
            "network" => fleet.network = parse_network(&mut cx, node),
            "build" => fleet.build = parse_build(&mut cx, node),
            "hosts" => hosts_node = Some(node),
            _ => cx.unknown_key(key, TOP_KEYS, "the inventory"),
        }
    }
    let Some(hosts_node) = hosts_node else {
        let d = Diagnostic::error(format!("inventory `{file}` has no `hosts:`"))
            .at(root.at.in_file(file))
            .hint(
                "list the hosts under `hosts:`, e.g. `hosts: {{ web-1: {{ address: 10.0.0.1 }} }}`",
            );
        cx.push(d);
        return fleet;
    };
    let mut seen: BTreeMap<String, tree::Pos> = BTreeMap::new();
    for (key, node) in cx.map(hosts_node, "`hosts`") {
        if let Some(first) = seen.get(&key.text) {
            let d = cx
                .error(key.at, format!("host `{}` is defined twice", key.text))
                .note(first.in_file(file), "first defined here");
            cx.push(d);
            continue;
        }
        seen.insert(key.text.clone(), key.at);
        if let Some(host) = parse_host(&mut cx, key, node, &defaults) {
            fleet.hosts.push(host);
        }
    }
    fleet
}

fn parse_defaults(cx: &mut Ctx<'_>, node: &Node) -> Defaults {
    let mut d = Defaults::default();
    for (key, v) in cx.map(node, "`defaults`") {
        match key.text.as_str() {
            "user" => d.user = cx.string(v, "`user`"),
            "port" => d.port = cx.port(v, "`port`"),
            "identity_file" => d.identity_file = cx.string(v, "`identity_file`").map(PathBuf::from),
            "known_hosts" => d.known_hosts = cx.string(v, "`known_hosts`").map(PathBuf::from),
            _ => cx.unknown_key(key, DEFAULT_KEYS, "`defaults`"),
        }
    }
    d
}

fn parse_network(cx: &mut Ctx<'_>, node: &Node) -> super::NetworkSettings {
    let mut n = super::NetworkSettings::default();
    for (key, v) in cx.map(node, "`network`") {
        match key.text.as_str() {
            "cidr" => {
                let Some(text) = cx.string(v, "`cidr`") else {
                    continue;
                };
                match text.parse::<crate::proto::net::Ipv4Net>() {
                    Ok(c) => n.cidr = Some(c),
                    Err(e) => {
                        let d = cx.error(v.at, format!("`network.cidr`: {e}"));
                        cx.push(d);
                    }
                }
            }
            "mode" => {
                let Some(text) = cx.string(v, "`mode`") else {
                    continue;
                };
                match crate::proto::mesh::Mode::parse(&text) {
                    Some(m) => n.mode = m,
                    None => {
                        let d = cx
                            .error(v.at, format!("`network.mode` is `{text}`"))
                            .label("expected one of: auto, host-gw, wireguard");
                        cx.push(d);
                    }
                }
            }
            "port" => n.port = cx.port(v, "`network.port`"),
            _ => cx.unknown_key(key, NETWORK_KEYS, "`network`"),
        }
    }
    n
}

fn parse_build(cx: &mut Ctx<'_>, node: &Node) -> super::BuildSettings {
    let mut b = super::BuildSettings::default();
    for (key, v) in cx.map(node, "`build`") {
        match key.text.as_str() {
            "push" => {
                let Some(text) = cx.string(v, "`build.push`") else {
                    continue;
                };
                match super::PushMode::parse(&text) {
                    Some(m) => b.push = m,
                    None => {
                        let d = cx
                            .error(v.at, format!("`build.push` is `{text}`"))
                            .label("expected one of: direct, registry");
                        cx.push(d);
                    }
                }
            }
            "registry" => {
                let Some(text) = cx.string(v, "`build.registry`") else {
                    continue;
                };
                match super::parse_push_registry(&text) {
                    Ok(r) => b.registry = Some(r),
                    Err(e) => {
                        let d = cx.error(v.at, format!("`build.registry`: {e}"));
                        cx.push(d);
                    }
                }
            }
            _ => cx.unknown_key(key, BUILD_KEYS, "`build`"),
        }
    }
    b
}

fn parse_registries(cx: &mut Ctx<'_>, node: &Node) -> BTreeMap<String, Registry> {
    let before = cx.diags.0.len();
    // Lines holding a password written in the file: a problem reported there names its position
    // but quotes no line (the quote would print the password).
    let mut secret_lines = Vec::new();
    let out = parse_registry_entries(cx, node, &mut secret_lines);
    for d in &mut cx.diags.0[before..] {
        if let Some(loc) = d.location.take_if(|l| secret_lines.contains(&l.line)) {
            d.message = format!("{} (at {loc})", d.message);
        }
    }
    out
}

fn parse_registry_entries(
    cx: &mut Ctx<'_>,
    node: &Node,
    secret_lines: &mut Vec<u32>,
) -> BTreeMap<String, Registry> {
    let mut out = BTreeMap::new();
    for (key, v) in cx.map(node, "`registries`") {
        let mut reg = Registry::default();
        let what = format!("registry `{}`", key.text);
        let mut passwords = 0;
        for (k, v) in cx.map(v, &what) {
            match k.text.as_str() {
                "insecure" => reg.insecure = cx.boolean(v, "`insecure`").unwrap_or(false),
                "username" => reg.username = cx.string(v, "`username`"),
                "password_env" | "password_file" | "password" => {
                    passwords += 1;
                    if passwords > 1 {
                        let d = cx
                            .error(k.at, format!("{what} has more than one password"))
                            .hint("keep one of `password_env`, `password_file` and `password`");
                        cx.push(d);
                    }
                    let Some(text) = cx.string(v, &format!("`{}`", k.text)) else {
                        continue;
                    };
                    reg.password = Some(match k.text.as_str() {
                        "password_env" => Password::Env(text),
                        "password_file" => Password::File(PathBuf::from(text)),
                        _ => {
                            secret_lines.push(v.at.line);
                            let d = Diagnostic::warning(format!(
                                "{what}: the password is written in the inventory, where anyone who can read the file reads it"
                            ))
                            .at(v.at.in_file(cx.file))
                            .hint("use `password_env: NAME` (an environment variable) or `password_file: PATH` instead");
                            cx.push(d);
                            Password::Inline(text)
                        }
                    });
                }
                _ => cx.unknown_key(k, REGISTRY_KEYS, &what),
            }
        }
        if reg.username.is_some() != reg.password.is_some() {
            let d = cx
                .error(
                    key.at,
                    format!(
                        "{what} has a {} but no {}",
                        if reg.username.is_some() {
                            "`username`"
                        } else {
                            "password"
                        },
                        if reg.username.is_some() {
                            "password"
                        } else {
                            "`username`"
                        }
                    ),
                )
                .hint(
                    "give both `username` and one of `password_env`, `password_file` or `password`",
                );
            cx.push(d);
        }
        out.insert(key.text.clone(), reg);
    }
    out
}

fn parse_host(cx: &mut Ctx<'_>, key: &Key, node: &Node, defaults: &Defaults) -> Option<Host> {
    let name = key.text.clone();
    let what = format!("host `{name}`");
    let mut host = Host::new(name.clone(), String::new());
    host.user = defaults.user.clone();
    host.port = defaults.port.unwrap_or(22);
    host.identity_file = defaults.identity_file.clone();
    host.known_hosts = defaults.known_hosts.clone();
    host.location = Some(key.at.in_file(cx.file));
    host.origins.insert("name".into(), key.at.in_file(cx.file));
    let mut address = None;
    for (k, v) in cx.map(node, &what) {
        if !matches!(k.text.as_str(), "labels" | "capacity" | "reserved") {
            host.origins.insert(k.text.clone(), v.at.in_file(cx.file));
        }
        match k.text.as_str() {
            "address" => address = cx.string(v, "`address`"),
            "user" => host.user = cx.string(v, "`user`"),
            "port" => host.port = cx.port(v, "`port`").unwrap_or(host.port),
            "identity_file" => host.identity_file = cx.string(v, "`identity_file`").map(Into::into),
            "known_hosts" => host.known_hosts = cx.string(v, "`known_hosts`").map(Into::into),
            "host_key" => host.host_keys = host_keys(cx, v, &what),
            "labels" => {
                for (lk, lv) in cx.map(v, &format!("labels of {what}")) {
                    if let Some(val) = cx.string(lv, &format!("label `{}`", lk.text)) {
                        host.origins
                            .insert(format!("labels.{}", lk.text), lv.at.in_file(cx.file));
                        host.labels.insert(lk.text.clone(), val);
                    }
                }
            }
            "capacity" => host.capacity = capacity(cx, v, &what, true),
            "reserved" => host.reserved = capacity(cx, v, &what, false).unwrap_or_default(),
            "arch" => host.arch = cx.string(v, "`arch`").map(|a| normalize_arch(&a)),
            "drain" => host.drain = cx.boolean(v, "`drain`").unwrap_or(false),
            "become" => host.use_become = cx.boolean(v, "`become`").unwrap_or(false),
            "become_user" => host.become_user = cx.string(v, "`become_user`"),
            "connection" => match cx.string(v, "`connection`").as_deref() {
                Some("ssh") | None => host.connection = Connection::Ssh,
                Some("local") => host.connection = Connection::Local,
                Some(other) => {
                    let d = cx
                        .error(v.at, format!("unknown connection `{other}`"))
                        .label("expected `ssh` or `local`");
                    cx.push(d);
                }
            },
            _ => cx.unknown_key(k, HOST_KEYS, &what),
        }
    }
    // Without an address the name is the address, as with Ansible and ssh_config host aliases.
    host.address = address.unwrap_or(name);
    Some(host)
}

/// `host_key:` one key or a list of keys (`ssh-ed25519 AAAA…`), each checked.
fn host_keys(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<String> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut keys = Vec::new();
    for item in items {
        let Some(text) = cx.string(item, &format!("`host_key` of {what}")) else {
            continue;
        };
        match super::parse_host_key(&text) {
            Ok(k) if !keys.contains(&k) => keys.push(k),
            Ok(_) => {}
            Err(e) => {
                let d = cx
                    .error(item.at, format!("`host_key` of {what}: {e}"))
                    .hint(
                    "run `compose-fleet hosts --pin` from a trusted machine to record the keys \
                     the hosts present",
                );
                cx.push(d);
            }
        }
    }
    keys
}

/// `capacity:` (both fields required) or `reserved:` (each defaults to 0).
fn capacity(cx: &mut Ctx<'_>, node: &Node, what: &str, required: bool) -> Option<Capacity> {
    let section = if required { "capacity" } else { "reserved" };
    let mut cpus = None;
    let mut memory = None;
    for (k, v) in cx.map(node, &format!("`{section}` of {what}")) {
        match k.text.as_str() {
            "cpus" => cpus = cx.cpus(v, &format!("`{section}.cpus` of {what}")),
            "memory" => memory = cx.size(v, &format!("`{section}.memory` of {what}")),
            _ => cx.unknown_key(k, CAPACITY_KEYS, &format!("`{section}` of {what}")),
        }
    }
    if required && (cpus.is_none() || memory.is_none()) {
        let missing = if cpus.is_none() { "cpus" } else { "memory" };
        let d = cx
            .error(node.at, format!("`capacity` of {what} has no `{missing}`"))
            .hint("give both, e.g. `capacity: { cpus: 8, memory: 32GiB }`, or leave `capacity` out to use the host's facts");
        cx.push(d);
        return None;
    }
    Some(Capacity {
        cpus: cpus.unwrap_or(0.0),
        memory: memory.unwrap_or(0),
    })
}
