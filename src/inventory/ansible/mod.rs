//! Ansible inventories, read as ansible-core 2.19's `ini` and `yaml` plugins read them, into
//! the same in-memory inventory Ansible builds (groups, children, hosts, variables), then
//! resolved per host with Ansible's variable precedence and turned into [`Host`]s.
//!
//! The model mirrors `ansible.inventory.data.InventoryData`: `all` and `ungrouped` always
//! exist; a variable set on a name that is both a group and a host goes to the group (as in
//! Ansible); a cycle of `children` is an error; hosts in no group end up in `ungrouped`.
//! Precedence, lowest first: `all`'s variables, the host's other groups sorted by (depth,
//! `ansible_group_priority`, name), `group_vars/all`, `group_vars/<group>` in the same order,
//! the host's own variables, `host_vars/<host>`.
//!
//! Everything is indexed by name, so loading is linear in the size of the inventory.

pub mod ini;
pub mod pattern;
pub mod value;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use self::value::AVal;
use super::tree::Pos;
use super::{normalize_arch, Capacity, Connection, Fleet, Host, PushMode};
use crate::compose::model::Location;
use crate::diag::{Diagnostic, Diagnostics};
use crate::limits::{Limit, Limits};

/// A variable's value and where it was set.
#[derive(Debug, Clone)]
pub struct Var {
    pub value: AVal,
    pub at: Location,
}

pub type Vars = BTreeMap<String, Var>;

struct Group {
    name: String,
    vars: Vars,
    children: Vec<usize>,
    parents: Vec<usize>,
    priority: i64,
}

struct HostRec {
    name: String,
    vars: Vars,
    /// Groups the host was put in directly (not through `children`).
    groups: Vec<usize>,
    at: Location,
}

/// Variables files beside the inventory (`group_vars/`, `host_vars/`): per entity name, the
/// files Ansible would load for it, in order, with their text.
#[derive(Debug, Default, Clone)]
pub struct VarsFiles {
    pub groups: HashMap<String, Texts>,
    pub hosts: HashMap<String, Texts>,
}

/// Files by name, with their text.
pub type Texts = Vec<(Arc<str>, Arc<str>)>;

/// Ansible's in-memory inventory, filled by the INI and YAML readers.
pub struct Inventory<'a> {
    groups: Vec<Group>,
    group_ix: HashMap<String, usize>,
    hosts: Vec<HostRec>,
    host_ix: HashMap<String, usize>,
    pub limits: &'a Limits,
    pub diags: Diagnostics,
    /// Set once the host limit has been reported, so it is reported once.
    over_limit: bool,
}

const ALL: usize = 0;
const UNGROUPED: usize = 1;

impl<'a> Inventory<'a> {
    pub fn new(limits: &'a Limits) -> Inventory<'a> {
        let mut inv = Inventory {
            groups: Vec::new(),
            group_ix: HashMap::new(),
            hosts: Vec::new(),
            host_ix: HashMap::new(),
            limits,
            diags: Diagnostics::default(),
            over_limit: false,
        };
        inv.add_group("all");
        inv.add_group("ungrouped");
        inv.groups[ALL].children.push(UNGROUPED);
        inv.groups[UNGROUPED].parents.push(ALL);
        inv
    }

    pub fn has_group(&self, name: &str) -> bool {
        self.group_ix.contains_key(name)
    }

    pub fn has_host(&self, name: &str) -> bool {
        self.host_ix.contains_key(name)
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn error(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Adds a group if new; returns its index.
    pub fn add_group(&mut self, name: &str) -> usize {
        if let Some(i) = self.group_ix.get(name) {
            return *i;
        }
        self.groups.push(Group {
            name: name.to_string(),
            vars: Vars::new(),
            children: Vec::new(),
            parents: Vec::new(),
            priority: 1,
        });
        self.group_ix
            .insert(name.to_string(), self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// Whether one pattern's `n` hosts can fit under the host limit (checked before the names
    /// are built); reported at `at` when not.
    pub fn pattern_fits(&mut self, n: u128, at: &Location) -> bool {
        let limit = self.limits.get(Limit::Hosts);
        if n <= u128::from(limit) {
            return true;
        }
        self.over_limit(
            format!("this host pattern expands to {n} hosts, more than the limit of {limit}"),
            at,
        );
        false
    }

    fn over_limit(&mut self, message: String, at: &Location) {
        if !self.over_limit {
            self.over_limit = true;
            let limit = self.limits.get(Limit::Hosts);
            let d = Diagnostic::error(message)
                .at(at.clone())
                .hint(Limit::Hosts.hint(limit));
            self.diags.push(d);
        }
    }

    /// Adds a host (if new) to a group; `port` sets `ansible_port` on a new host only, as
    /// Ansible's `Host(name, port)` does. `false` when the host limit is reached (reported).
    pub fn add_host(&mut self, name: &str, group: usize, port: Option<Var>, at: &Location) -> bool {
        let hi = match self.host_ix.get(name) {
            Some(i) => *i,
            None => {
                let limit = self.limits.get(Limit::Hosts);
                if self.hosts.len() as u64 >= limit {
                    self.over_limit(format!("this inventory has more than {limit} hosts"), at);
                    return false;
                }
                self.hosts.push(HostRec {
                    name: name.to_string(),
                    vars: Vars::new(),
                    groups: Vec::new(),
                    at: at.clone(),
                });
                let i = self.hosts.len() - 1;
                self.host_ix.insert(name.to_string(), i);
                if let Some(port) = port {
                    self.hosts[i].vars.insert("ansible_port".into(), port);
                }
                i
            }
        };
        if !self.hosts[hi].groups.contains(&group) {
            self.hosts[hi].groups.push(group);
        }
        true
    }

    /// Sets a variable on a group or, if no group has that name, a host (Ansible's order).
    pub fn set_variable(&mut self, entity: &str, key: &str, var: Var) {
        if let Some(gi) = self.group_ix.get(entity).copied() {
            if key == "ansible_group_priority" {
                match group_priority(&var.value) {
                    Some(p) => self.groups[gi].priority = p,
                    None => {
                        let d = Diagnostic::error(format!(
                            "`ansible_group_priority` of group `{entity}` must be a whole number, \
                             found {}",
                            var.value.kind()
                        ))
                        .at(var.at.clone());
                        self.diags.push(d);
                    }
                }
                return;
            }
            self.groups[gi].vars.insert(key.to_string(), var);
        } else if let Some(hi) = self.host_ix.get(entity).copied() {
            self.hosts[hi].vars.insert(key.to_string(), var);
        }
    }

    /// Makes `child` a child group of `parent`; a loop is an error at `at`.
    pub fn add_child(&mut self, parent: usize, child: usize, at: &Location) {
        if self.groups[parent].children.contains(&child) {
            return;
        }
        if parent == child || self.reaches(child, parent) {
            let d = Diagnostic::error(format!(
                "adding group `{}` as a child of `{}` makes a loop of `children`",
                self.groups[child].name, self.groups[parent].name
            ))
            .at(at.clone())
            .hint("Ansible refuses recursive groups too: remove one of the `children` entries");
            self.diags.push(d);
            return;
        }
        self.groups[parent].children.push(child);
        self.groups[child].parents.push(parent);
    }

    /// Adds an existing host to a group (YAML `children:` naming a host, as Ansible allows).
    pub fn add_host_to_group(&mut self, group: usize, host: &str) -> bool {
        match self.host_ix.get(host).copied() {
            Some(hi) => {
                if !self.hosts[hi].groups.contains(&group) {
                    self.hosts[hi].groups.push(group);
                }
                true
            }
            None => false,
        }
    }

    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.group_ix.get(name).copied()
    }

    /// Whether `to` is `from` or one of its descendants.
    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut stack = vec![from];
        let mut seen = vec![false; self.groups.len()];
        while let Some(g) = stack.pop() {
            if g == to {
                return true;
            }
            if !std::mem::replace(&mut seen[g], true) {
                stack.extend(self.groups[g].children.iter().copied());
            }
        }
        false
    }

    /// Ansible's `reconcile_inventory` and variable resolution: the hosts as compose-fleet
    /// uses them.
    pub fn resolve(mut self, files: &VarsFiles, file_limit: &Limits) -> (Vec<Host>, Diagnostics) {
        // Every group but `all` with no parent hangs off `all`.
        for g in 1..self.groups.len() {
            if self.groups[g].parents.is_empty() {
                self.groups[ALL].children.push(g);
                self.groups[g].parents.push(ALL);
            }
        }
        if self.groups[ALL].parents.iter().any(|p| *p != ALL) {
            let d = Diagnostic::error(
                "group `all` is listed as a child of another group, which makes a loop of \
                 `children`",
            )
            .hint("every group is already inside `all`: remove `all` from `children`");
            self.diags.push(d);
            return (Vec::new(), self.diags);
        }
        // Depth (longest path from `all`) and ancestors, in topological order.
        let n = self.groups.len();
        let mut order = Vec::with_capacity(n);
        let mut pending: Vec<usize> = self.groups.iter().map(|g| g.parents.len()).collect();
        let mut queue = vec![ALL];
        while let Some(g) = queue.pop() {
            order.push(g);
            for &c in &self.groups[g].children {
                pending[c] -= 1;
                if pending[c] == 0 {
                    queue.push(c);
                }
            }
        }
        let mut depth = vec![0u32; n];
        let mut ancestors: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &g in &order {
            let mut anc: Vec<usize> = Vec::new();
            for &p in &self.groups[g].parents {
                depth[g] = depth[g].max(depth[p] + 1);
                anc.push(p);
                anc.extend(ancestors[p].iter().copied());
            }
            anc.sort_unstable();
            anc.dedup();
            ancestors[g] = anc;
        }
        // Vars files per group, parsed once.
        let mut group_files: Vec<Option<Vars>> = vec![None; n];
        for (g, slot) in group_files.iter_mut().enumerate() {
            if let Some(list) = files.groups.get(&self.groups[g].name) {
                *slot = Some(load_vars_files(list, file_limit, &mut self.diags));
            }
        }
        let mut hosts = Vec::with_capacity(self.hosts.len());
        let mut member = vec![false; n];
        // The name index has served its purpose (every name is resolved by now).
        self.host_ix = HashMap::new();
        // Each host's record is dropped once its `Host` is built, so the two never all
        // coexist: at 100k hosts that halves the peak and the page faults that come with it.
        for h in std::mem::take(&mut self.hosts) {
            // `ungrouped` holds exactly the hosts in no other group.
            let mut direct: Vec<usize> = h.groups.clone();
            let elsewhere = direct.iter().any(|g| *g != ALL && *g != UNGROUPED);
            if elsewhere {
                direct.retain(|g| *g != UNGROUPED);
            } else if !direct.contains(&UNGROUPED) {
                direct.push(UNGROUPED);
            }
            let mut mine: Vec<usize> = Vec::new();
            for &g in &direct {
                for &a in std::iter::once(&g).chain(ancestors[g].iter()) {
                    if !member[a] {
                        member[a] = true;
                        mine.push(a);
                    }
                }
            }
            for &g in &mine {
                member[g] = false;
            }
            mine.retain(|g| *g != ALL);
            mine.sort_by(|a, b| {
                let (ga, gb) = (&self.groups[*a], &self.groups[*b]);
                (depth[*a], ga.priority, &ga.name).cmp(&(depth[*b], gb.priority, &gb.name))
            });
            let mut vars: BTreeMap<&str, &Var> = BTreeMap::new();
            for (k, v) in &self.groups[ALL].vars {
                vars.insert(k, v);
            }
            for &g in &mine {
                for (k, v) in &self.groups[g].vars {
                    vars.insert(k, v);
                }
            }
            for &g in std::iter::once(&ALL).chain(mine.iter()) {
                if let Some(fv) = &group_files[g] {
                    for (k, v) in fv {
                        vars.insert(k, v);
                    }
                }
            }
            for (k, v) in &h.vars {
                vars.insert(k, v);
            }
            let host_files = files
                .hosts
                .get(&h.name)
                .map(|list| load_vars_files(list, file_limit, &mut self.diags));
            if let Some(hv) = &host_files {
                for (k, v) in hv {
                    vars.insert(k, v);
                }
            }
            let groups: Vec<&str> = mine
                .iter()
                .filter(|g| **g != UNGROUPED)
                .map(|g| self.groups[*g].name.as_str())
                .collect();
            hosts.push(to_host(&h, &groups, &vars, &mut self.diags));
        }
        (hosts, self.diags)
    }
}

/// `int(value)` as Python would take it for `ansible_group_priority`.
fn group_priority(v: &AVal) -> Option<i64> {
    match v {
        AVal::Int(i) => Some(*i),
        AVal::Bool(b) => Some(i64::from(*b)),
        AVal::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        AVal::Str(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// Reads `group_vars`/`host_vars` files (YAML or JSON mappings) into variables, later files
/// overriding earlier ones.
fn load_vars_files(
    list: &[(Arc<str>, Arc<str>)],
    limits: &Limits,
    diags: &mut Diagnostics,
) -> Vars {
    let mut out = Vars::new();
    for (file, text) in list {
        if text.trim_start().starts_with("$ANSIBLE_VAULT;") {
            diags.push(
                Diagnostic::error(format!(
                    "`{file}` is encrypted with Ansible Vault, which compose-fleet cannot decrypt"
                ))
                .at(Pos::start().in_file(file))
                .hint(
                    "keep connection variables (ansible_host, ansible_user, ansible_port) in a \
                     plain file, or export the inventory with `ansible-inventory --list -y > \
                     inventory.yaml`",
                ),
            );
            continue;
        }
        match yaml::vars_file(file, text, limits) {
            Ok(vars) => out.extend(vars),
            Err(d) => diags.push(*d),
        }
    }
    out
}

/// Ansible's `boolean()`: `yes`, `on`, `1`, `true`, `t`, `y` (any case) and their opposites.
fn ansible_bool(v: &AVal) -> Option<bool> {
    match v {
        AVal::Bool(b) => Some(*b),
        AVal::Int(1) => Some(true),
        AVal::Int(0) => Some(false),
        AVal::Float(f) if *f == 1.0 => Some(true),
        AVal::Float(f) if *f == 0.0 => Some(false),
        AVal::Str(s) => match s.to_ascii_lowercase().as_str() {
            "y" | "yes" | "on" | "1" | "true" | "t" => Some(true),
            "n" | "no" | "off" | "0" | "false" | "f" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn bad(var: &Var, key: &str, what: &str) -> Diagnostic {
    Diagnostic::error(format!(
        "`{key}` must be {what}, found {}",
        shown(&var.value)
    ))
    .at(var.at.clone())
}

fn shown(v: &AVal) -> String {
    match v.label() {
        Some(t) => format!("`{t}`"),
        None => v.kind().to_string(),
    }
}

/// A string-ish connection value (Ansible converts numbers to text for these).
fn text_of(var: &Var) -> Option<String> {
    match &var.value {
        AVal::List(_) | AVal::Map(_) | AVal::Null => None,
        v => v.label(),
    }
}

/// The first variable set among `names` (Ansible's `ansible_ssh_*` spellings come first).
fn first<'v>(
    vars: &BTreeMap<&str, &'v Var>,
    names: &[&'static str],
) -> Option<(&'static str, &'v Var)> {
    names.iter().find_map(|n| vars.get(n).map(|v| (*n, *v)))
}

fn to_host(
    h: &HostRec,
    groups: &[&str],
    vars: &BTreeMap<&str, &Var>,
    diags: &mut Diagnostics,
) -> Host {
    let mut host = Host::new(h.name.clone(), h.name.clone());
    host.location = Some(h.at.clone());
    host.origins.insert("name".into(), h.at.clone());
    for g in groups {
        host.labels.insert(format!("group.{g}"), "true".into());
    }
    if let Some((key, var)) = first(vars, &["ansible_ssh_host", "ansible_host"]) {
        match text_of(var) {
            Some(a) => {
                host.address = a;
                host.origins.insert("address".into(), var.at.clone());
            }
            None => diags.push(bad(var, key, "a host name or IP address")),
        }
    }
    if let Some((key, var)) = first(vars, &["ansible_ssh_user", "ansible_user"]) {
        match text_of(var) {
            Some(u) => {
                host.user = Some(u);
                host.origins.insert("user".into(), var.at.clone());
            }
            None => diags.push(bad(var, key, "a user name")),
        }
    }
    if let Some((key, var)) = first(vars, &["ansible_ssh_port", "ansible_port"]) {
        let port = match &var.value {
            AVal::Int(i) => u16::try_from(*i).ok().filter(|p| *p > 0),
            AVal::Str(s) => s.trim().parse::<u16>().ok().filter(|p| *p > 0),
            _ => None,
        };
        match port {
            Some(p) => {
                host.port = p;
                host.origins.insert("port".into(), var.at.clone());
            }
            None => diags.push(bad(var, key, "a port number (1-65535)")),
        }
    }
    if let Some((key, var)) = first(
        vars,
        &["ansible_ssh_private_key_file", "ansible_private_key_file"],
    ) {
        match text_of(var) {
            Some(p) => {
                host.identity_file = Some(PathBuf::from(p));
                host.origins.insert("identity_file".into(), var.at.clone());
            }
            None => diags.push(bad(var, key, "a path")),
        }
    }
    if let Some(var) = vars.get("ansible_connection") {
        let name = text_of(var).unwrap_or_default();
        let short = name.rsplit('.').next().unwrap_or(&name);
        match short {
            "local" => host.connection = Connection::Local,
            "ssh" | "smart" | "paramiko" | "paramiko_ssh" => host.connection = Connection::Ssh,
            _ => diags.push(
                Diagnostic::error(format!(
                    "host `{}` uses `ansible_connection: {name}`; compose-fleet reaches hosts over \
                     SSH or runs on this machine (`local`)",
                    h.name
                ))
                .at(var.at.clone())
                .hint("use `ssh` (the default) or `local`"),
            ),
        }
        host.origins.insert("connection".into(), var.at.clone());
    }
    if let Some(var) = vars.get("ansible_become") {
        match ansible_bool(&var.value) {
            Some(b) => {
                host.use_become = b;
                host.origins.insert("become".into(), var.at.clone());
            }
            None => diags.push(bad(var, "ansible_become", "true or false")),
        }
    }
    if let Some(var) = vars.get("ansible_become_user") {
        match text_of(var) {
            Some(u) => {
                host.become_user = Some(u);
                host.origins.insert("become_user".into(), var.at.clone());
            }
            None => diags.push(bad(var, "ansible_become_user", "a user name")),
        }
    }
    let mut cpus = None;
    let mut memory = None;
    for (key, var) in vars {
        let key = *key;
        match key {
            "compose_fleet_cpus" => cpus = number(var, key, diags, super::parse_cpus),
            "compose_fleet_memory" => memory = number(var, key, diags, super::parse_size),
            "compose_fleet_reserved_cpus" => {
                host.reserved.cpus = number(var, key, diags, super::parse_cpus).unwrap_or(0.0)
            }
            "compose_fleet_reserved_memory" => {
                host.reserved.memory = number(var, key, diags, super::parse_size).unwrap_or(0)
            }
            "compose_fleet_arch" => match text_of(var) {
                Some(a) => host.arch = Some(normalize_arch(&a)),
                None => diags.push(bad(var, key, "an architecture such as `x86_64`")),
            },
            "compose_fleet_known_hosts" => match text_of(var) {
                Some(p) => {
                    host.known_hosts = Some(PathBuf::from(p));
                    host.origins.insert("known_hosts".into(), var.at.clone());
                }
                None => diags.push(bad(var, key, "a path")),
            },
            "compose_fleet_host_key" => {
                let items: Vec<&AVal> = match &var.value {
                    AVal::List(items) => items.iter().collect(),
                    v => vec![v],
                };
                for item in items {
                    let parsed = match item {
                        AVal::Str(text) => super::parse_host_key(text),
                        _ => Err("expected `TYPE BASE64` text, e.g. `ssh-ed25519 AAAA…`".into()),
                    };
                    match parsed {
                        Ok(k) if !host.host_keys.contains(&k) => host.host_keys.push(k),
                        Ok(_) => {}
                        Err(e) => diags.push(
                            Diagnostic::error(format!("`{key}` of host `{}`: {e}", h.name))
                                .at(var.at.clone()),
                        ),
                    }
                }
                host.origins.insert("host_key".into(), var.at.clone());
            }
            "compose_fleet_network_cidr" => {
                match text_of(var).and_then(|t| t.parse::<crate::proto::net::Ipv4Net>().ok()) {
                    Some(c) => host.network.cidr = Some(c),
                    None => diags.push(bad(var, key, "an IPv4 prefix such as 10.213.0.0/16")),
                }
            }
            "compose_fleet_network_mode" => {
                match text_of(var).and_then(|t| crate::proto::mesh::Mode::parse(&t)) {
                    Some(m) => host.network.mode = m,
                    None => diags.push(bad(var, key, "auto, host-gw or wireguard")),
                }
            }
            "compose_fleet_network_port" => {
                match text_of(var).and_then(|t| t.trim().parse::<u16>().ok().filter(|p| *p > 0)) {
                    Some(p) => host.network.port = Some(p),
                    None => diags.push(bad(var, key, "a port number (1-65535)")),
                }
            }
            "compose_fleet_registries" => match registries(&var.value) {
                // Positions only, no quoted line: the value may hold a password.
                Ok((regs, warnings)) => {
                    host.registries = regs;
                    for w in warnings {
                        let d = Diagnostic::warning(format!("`{key}` (at {}): {w}", var.at))
                            .hint("use `password_env: NAME` (an environment variable) or `password_file: PATH` instead");
                        // Every host sees the variable: said once.
                        if !diags.0.contains(&d) {
                            diags.push(d);
                        }
                    }
                }
                Err(e) => {
                    let d = Diagnostic::error(format!("`{key}` (at {}): {e}", var.at));
                    if !diags.0.contains(&d) {
                        diags.push(d);
                    }
                }
            },
            "compose_fleet_build_push" => match text_of(var).and_then(|t| PushMode::parse(&t)) {
                Some(m) => host.build.push = m,
                None => diags.push(bad(var, key, "direct or registry")),
            },
            "compose_fleet_build_registry" => {
                match text_of(var).map(|t| super::parse_push_registry(&t)) {
                    Some(Ok(r)) => host.build.registry = Some(r),
                    Some(Err(e)) => {
                        diags.push(Diagnostic::error(format!("`{key}`: {e}")).at(var.at.clone()))
                    }
                    None => diags.push(bad(var, key, "HOST[:PORT]/prefix")),
                }
            }
            "compose_fleet_drain" => match ansible_bool(&var.value) {
                Some(b) => host.drain = b,
                None => diags.push(bad(var, key, "true or false")),
            },
            k if k.starts_with("ansible_") || k.starts_with("compose_fleet_") => {}
            k => {
                if let Some(text) = var.value.label() {
                    host.labels.insert(k.to_string(), text);
                    host.origins.insert(format!("labels.{k}"), var.at.clone());
                }
            }
        }
    }
    match (cpus, memory) {
        (Some(cpus), Some(memory)) => host.capacity = Some(Capacity { cpus, memory }),
        (None, None) => {}
        _ => diags.push(
            Diagnostic::error(format!(
                "host `{}` sets only one of `compose_fleet_cpus` and `compose_fleet_memory`",
                h.name
            ))
            .at(h.at.clone())
            .hint("set both to declare capacity, or neither to use the host's facts"),
        ),
    }
    host
}

/// `compose_fleet_registries`: `{ HOST: { insecure, username, password_env | password_file |
/// password } }`, as the own format's `registries:`. Returns them and warnings (a password written
/// in the inventory).
fn registries(v: &AVal) -> Result<(BTreeMap<String, super::Registry>, Vec<String>), String> {
    let AVal::Map(entries) = v else {
        return Err(format!(
            "must be a mapping of registries, e.g. {{ \"registry.example.com\": {{ username: deploy, password_env: REGISTRY_PASSWORD }} }}, found {}",
            v.kind()
        ));
    };
    let mut out = BTreeMap::new();
    let mut warnings = Vec::new();
    for (name, settings) in entries {
        let AVal::Map(keys) = settings else {
            return Err(format!(
                "registry `{name}` must be a mapping, found {}",
                settings.kind()
            ));
        };
        let mut reg = super::Registry::default();
        let text = |k: &str, v: &AVal| match v {
            AVal::List(_) | AVal::Map(_) | AVal::Null => Err(format!(
                "`{k}` of registry `{name}` must be a string, found {}",
                v.kind()
            )),
            v => Ok(v.label().unwrap_or_default()),
        };
        for (k, v) in keys {
            match k.as_str() {
                "insecure" => {
                    reg.insecure = ansible_bool(v).ok_or_else(|| {
                        format!("`insecure` of registry `{name}` must be true or false")
                    })?
                }
                "username" => reg.username = Some(text(k, v)?),
                "password_env" | "password_file" | "password" if reg.password.is_some() => {
                    return Err(format!("registry `{name}` has more than one password"))
                }
                "password_env" => reg.password = Some(super::Password::Env(text(k, v)?)),
                "password_file" => {
                    reg.password = Some(super::Password::File(PathBuf::from(text(k, v)?)))
                }
                "password" => {
                    warnings.push(format!(
                        "registry `{name}`: the password is written in the inventory, where anyone who can read the file reads it"
                    ));
                    reg.password = Some(super::Password::Inline(text(k, v)?));
                }
                other => {
                    return Err(format!(
                        "unknown key `{other}` in registry `{name}` (expected one of: insecure, username, password_env, password_file, password)"
                    ))
                }
            }
        }
        if reg.username.is_some() != reg.password.is_some() {
            return Err(format!(
                "registry `{name}` needs both `username` and one of `password_env`, `password_file` or `password`"
            ));
        }
        out.insert(name.clone(), reg);
    }
    Ok((out, warnings))
}

/// A capacity figure from a variable, through the shared size/cpu parsers.
fn number<T>(
    var: &Var,
    key: &str,
    diags: &mut Diagnostics,
    parse: fn(&super::tree::Value) -> Result<T, String>,
) -> Option<T> {
    let v = match &var.value {
        AVal::Int(i) => super::tree::Value::Int(*i),
        AVal::Float(f) => super::tree::Value::Float(*f),
        AVal::Str(s) => super::tree::Value::Str(s.clone()),
        AVal::Bool(b) => super::tree::Value::Bool(*b),
        _ => super::tree::Value::Null,
    };
    match parse(&v) {
        Ok(x) => Some(x),
        Err(e) => {
            diags.push(Diagnostic::error(format!("`{key}`: {e}")).at(var.at.clone()));
            None
        }
    }
}

/// The fleet of an Ansible inventory read into `inv`.
pub fn finish(
    inv: Inventory<'_>,
    files: &VarsFiles,
    limits: &Limits,
    diags: &mut Diagnostics,
) -> Fleet {
    let (hosts, d) = inv.resolve(files, limits);
    diags.extend(d);
    // The network is the fleet's: every host must see the same (group_vars/all sets it once).
    let network = hosts.first().map(|h| h.network).unwrap_or_default();
    if let Some(h) = hosts.iter().find(|h| h.network != network) {
        diags.push(
            Diagnostic::error(format!(
                "hosts `{}` and `{}` see different `compose_fleet_network_cidr`, \
                 `compose_fleet_network_mode` or `compose_fleet_network_port`; the pod network \
                 is one for the whole fleet",
                hosts[0].name, h.name
            ))
            .hint("set them once, in `group_vars/all` or under `all: vars:`"),
        );
    }
    // So are the registries.
    let registries = hosts
        .first()
        .map(|h| h.registries.clone())
        .unwrap_or_default();
    if let Some(h) = hosts.iter().find(|h| h.registries != registries) {
        diags.push(
            Diagnostic::error(format!(
                "hosts `{}` and `{}` see different `compose_fleet_registries`; the registries are \
                 the whole fleet's",
                hosts[0].name, h.name
            ))
            .hint("set it once, in `group_vars/all` or under `all: vars:`"),
        );
    }
    // And where built images go.
    let build = hosts.first().map(|h| h.build.clone()).unwrap_or_default();
    if let Some(h) = hosts.iter().find(|h| h.build != build) {
        diags.push(
            Diagnostic::error(format!(
                "hosts `{}` and `{}` see different `compose_fleet_build_push` or \
                 `compose_fleet_build_registry`; where built images go is the whole fleet's",
                hosts[0].name, h.name
            ))
            .hint("set them once, in `group_vars/all` or under `all: vars:`"),
        );
    }
    Fleet {
        hosts,
        network,
        registries,
        build,
        ..Fleet::default()
    }
}
