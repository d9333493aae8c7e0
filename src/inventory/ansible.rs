//! Ansible inventories, YAML and INI, read unchanged (see the module documentation of
//! `inventory` for how variables and groups map onto hosts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::own::Ctx;
use super::tree::{self, Node, Pos, Value};
use super::{normalize_arch, parse_cpus, parse_size, Capacity, Fleet, Host};
use crate::diag::{Diagnostic, Diagnostics};

const GROUP_KEYS: &[&str] = &["hosts", "children", "vars"];

/// A variable's value and where it was set.
#[derive(Debug, Clone)]
struct Var {
    value: Value,
    at: Pos,
}

type Vars = BTreeMap<String, Var>;

/// Groups and hosts as the file states them, before variables are resolved.
#[derive(Default)]
struct Raw {
    /// Host names in first-seen order, with their own variables and where first defined.
    hosts: Vec<(String, Vars, Pos)>,
    /// group → (its vars, its children, its direct hosts), in first-seen order.
    groups: Vec<(String, Group)>,
}

#[derive(Default)]
struct Group {
    vars: Vars,
    children: Vec<String>,
    hosts: Vec<String>,
}

impl Raw {
    fn host(&mut self, name: &str, at: Pos) -> &mut Vars {
        let i = match self.hosts.iter().position(|(n, _, _)| n == name) {
            Some(i) => i,
            None => {
                self.hosts.push((name.to_string(), Vars::new(), at));
                self.hosts.len() - 1
            }
        };
        &mut self.hosts[i].1
    }

    fn group(&mut self, name: &str, _at: Pos) -> &mut Group {
        let i = match self.groups.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.groups.push((name.to_string(), Group::default()));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }
}

pub(super) fn parse_yaml(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Fleet {
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
    let mut raw = Raw::default();
    for (key, node) in cx.map(&root, "the inventory") {
        yaml_group(&mut cx, &mut raw, &key.text, key.at, node);
    }
    resolve(&mut cx, raw)
}

fn yaml_group(cx: &mut Ctx<'_>, raw: &mut Raw, name: &str, at: Pos, node: &Node) {
    raw.group(name, at);
    let what = format!("group `{name}`");
    for (key, v) in cx.map(node, &what) {
        match key.text.as_str() {
            "hosts" => {
                for (hk, hv) in cx.map(v, &format!("`hosts` of {what}")) {
                    for host in expand_pattern(&hk.text) {
                        let vars = yaml_vars(cx, hv, &format!("host `{host}`"));
                        let slot = raw.host(&host, hk.at);
                        slot.extend(vars);
                        let g = raw.group(name, at);
                        if !g.hosts.contains(&host) {
                            g.hosts.push(host);
                        }
                    }
                }
            }
            "children" => {
                for (ck, cv) in cx.map(v, &format!("`children` of {what}")) {
                    let g = raw.group(name, at);
                    if !g.children.contains(&ck.text) {
                        g.children.push(ck.text.clone());
                    }
                    yaml_group(cx, raw, &ck.text, ck.at, cv);
                }
            }
            "vars" => {
                let vars = yaml_vars(cx, v, &format!("`vars` of {what}"));
                raw.group(name, at).vars.extend(vars);
            }
            _ => cx.unknown_key(key, GROUP_KEYS, &what),
        }
    }
}

fn yaml_vars(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vars {
    cx.map(node, what)
        .iter()
        .map(|(k, v)| {
            (
                k.text.clone(),
                Var {
                    value: v.value.clone(),
                    at: v.at,
                },
            )
        })
        .collect()
}

pub(super) fn parse_ini(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Fleet {
    let mut cx = Ctx { file, diags };
    let mut raw = Raw::default();
    enum Section {
        Hosts(String),
        Vars(String),
        Children(String),
    }
    let mut section = Section::Hosts("ungrouped".into());
    let mut offset = 0usize;
    for (n, line_text) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += line_text.len();
        let line = line_text.trim_end_matches(['\n', '\r']);
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let pos = |col: usize, len: usize| Pos {
            line: u32::try_from(n + 1).unwrap_or(u32::MAX),
            column: u32::try_from(col + 1).unwrap_or(u32::MAX),
            offset: line_start + col,
            len: len.max(1),
        };
        if let Some(inner) = trimmed.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                let d = cx
                    .error(pos(indent, trimmed.len()), "unterminated section header")
                    .hint("write `[group]`, `[group:vars]` or `[group:children]`");
                cx.push(d);
                continue;
            };
            let at = pos(indent + 1, inner.len());
            section = match inner.split_once(':') {
                None => Section::Hosts(inner.to_string()),
                Some((g, "vars")) => Section::Vars(g.to_string()),
                Some((g, "children")) => Section::Children(g.to_string()),
                Some((_, other)) => {
                    let d = cx
                        .error(at, format!("unknown section kind `:{other}`"))
                        .label("expected `:vars` or `:children`");
                    cx.push(d);
                    continue;
                }
            };
            let (Section::Hosts(g) | Section::Vars(g) | Section::Children(g)) = &section;
            let g = g.clone();
            raw.group(&g, at);
            continue;
        }
        match &section {
            Section::Hosts(group) => {
                let words = split_words(trimmed);
                let Some((host_word, host_col)) = words.first().cloned() else {
                    continue;
                };
                let host_at = pos(indent + host_col, host_word.len());
                let mut vars = Vars::new();
                for (word, col) in &words[1..] {
                    let at = pos(indent + col, word.len());
                    match word.split_once('=') {
                        Some((k, v)) => {
                            vars.insert(
                                k.to_string(),
                                Var {
                                    value: Value::Str(unquote(v)),
                                    at,
                                },
                            );
                        }
                        None => {
                            let d = cx
                                .error(at, format!("`{word}` is not a `key=value` host variable"))
                                .hint("host lines are `name key=value key=value ...`");
                            cx.push(d);
                        }
                    }
                }
                let group = group.clone();
                for host in expand_pattern(&host_word) {
                    raw.host(&host, host_at).extend(vars.clone());
                    let g = raw.group(&group, host_at);
                    if !g.hosts.contains(&host) {
                        g.hosts.push(host);
                    }
                }
            }
            Section::Vars(group) => {
                let Some((k, v)) = trimmed.split_once('=') else {
                    let d = cx
                        .error(pos(indent, trimmed.len()), "expected `key=value`")
                        .hint(format!("`[{group}:vars]` sections hold `key=value` lines"));
                    cx.push(d);
                    continue;
                };
                let at = pos(indent + k.len() + 1, v.trim().len());
                let group = group.clone();
                raw.group(&group, at).vars.insert(
                    k.trim().to_string(),
                    Var {
                        value: Value::Str(unquote(v.trim())),
                        at,
                    },
                );
            }
            Section::Children(group) => {
                let at = pos(indent, trimmed.len());
                let group = group.clone();
                raw.group(trimmed, at);
                let g = raw.group(&group, at);
                if !g.children.iter().any(|c| c == trimmed) {
                    g.children.push(trimmed.to_string());
                }
            }
        }
    }
    resolve(&mut cx, raw)
}

/// Splits a host line into words with their columns; quotes keep spaces inside values.
fn split_words(line: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = None;
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') if cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    out.push((std::mem::take(&mut cur), s));
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                start.get_or_insert(i);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            _ => {
                start.get_or_insert(i);
                cur.push(c);
            }
        }
    }
    if let Some(s) = start {
        out.push((cur, s));
    }
    out
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// Expands Ansible's host ranges: `web[01:03]` → web01, web02, web03; `db-[a:c]` → db-a, db-b,
/// db-c. Anything else is one host.
fn expand_pattern(name: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (name.find('['), name.find(']')) else {
        return vec![name.to_string()];
    };
    if close < open {
        return vec![name.to_string()];
    }
    let (prefix, rest) = name.split_at(open);
    let inner = &rest[1..close - open];
    let suffix = &rest[close - open + 1..];
    let Some((a, b)) = inner.split_once(':') else {
        return vec![name.to_string()];
    };
    let mut out = Vec::new();
    if let (Ok(x), Ok(y)) = (a.parse::<u64>(), b.parse::<u64>()) {
        let width = if a.starts_with('0') { a.len() } else { 0 };
        for i in x..=y.min(x.saturating_add(100_000)) {
            for tail in expand_pattern(suffix) {
                out.push(format!("{prefix}{i:0width$}{tail}"));
            }
        }
    } else if let (Some(x), Some(y), 1, 1) = (a.chars().next(), b.chars().next(), a.len(), b.len())
    {
        for c in x..=y {
            for tail in expand_pattern(suffix) {
                out.push(format!("{prefix}{c}{tail}"));
            }
        }
    } else {
        out.push(name.to_string());
    }
    out
}

/// Resolves groups and variables into hosts.
fn resolve(cx: &mut Ctx<'_>, raw: Raw) -> Fleet {
    let group_index: BTreeMap<&str, usize> = raw
        .groups
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    // Each group's depth below `all` orders variable precedence: parents first, children later.
    let mut parents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, g) in &raw.groups {
        for c in &g.children {
            parents.entry(c.as_str()).or_default().push(name.as_str());
        }
    }
    fn depth<'a>(
        g: &'a str,
        parents: &BTreeMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
    ) -> usize {
        if !seen.insert(g) {
            return 0; // a cycle: Ansible rejects it; we just stop climbing.
        }
        let d = parents
            .get(g)
            .map(|ps| {
                ps.iter()
                    .map(|p| depth(p, parents, seen) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        seen.remove(g);
        d
    }
    let mut fleet = Fleet::default();
    for (host_name, host_vars, host_at) in &raw.hosts {
        // Groups containing this host, directly or through children.
        let mut member: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = raw
            .groups
            .iter()
            .filter(|(_, g)| g.hosts.contains(host_name))
            .map(|(n, _)| n.as_str())
            .collect();
        while let Some(g) = stack.pop() {
            if member.insert(g) {
                if let Some(ps) = parents.get(g) {
                    stack.extend(ps.iter().copied());
                }
            }
        }
        let mut ordered: Vec<(usize, usize, &str)> = member
            .iter()
            .map(|g| {
                (
                    if *g == "all" {
                        0
                    } else {
                        depth(g, &parents, &mut BTreeSet::new()) + 1
                    },
                    group_index.get(g).copied().unwrap_or(0),
                    *g,
                )
            })
            .collect();
        ordered.sort();
        let mut vars = Vars::new();
        // `all`'s vars apply to every host even when it is not declared as a parent.
        if !member.contains("all") {
            if let Some(i) = group_index.get("all") {
                vars.extend(raw.groups[*i].1.vars.clone());
            }
        }
        for (_, i, _) in &ordered {
            if let Some((_, g)) = raw.groups.get(*i) {
                vars.extend(g.vars.clone());
            }
        }
        vars.extend(host_vars.clone());
        let mut host = Host::new(host_name.clone(), host_name.clone());
        host.location = Some(host_at.in_file(cx.file));
        for g in &member {
            if !matches!(*g, "all" | "ungrouped") {
                host.labels.insert(format!("group.{g}"), "true".into());
            }
        }
        let mut cap_cpus = None;
        let mut cap_memory = None;
        for (key, var) in &vars {
            let node = Node {
                value: var.value.clone(),
                at: var.at,
            };
            match key.as_str() {
                "ansible_host" | "ansible_ssh_host" => {
                    if let Some(a) = cx.string(&node, key) {
                        host.address = a;
                    }
                }
                "ansible_user" | "ansible_ssh_user" => host.user = cx.string(&node, key),
                "ansible_port" | "ansible_ssh_port" => {
                    host.port = cx.port(&node, key).unwrap_or(22)
                }
                "ansible_ssh_private_key_file" => {
                    host.identity_file = cx.string(&node, key).map(Into::into)
                }
                "compose_fleet_cpus" => cap_cpus = cx.cpus(&node, key),
                "compose_fleet_memory" => cap_memory = cx.size(&node, key),
                "compose_fleet_reserved_cpus" => {
                    host.reserved.cpus = parse_cpus(&var.value).unwrap_or_else(|e| {
                        cx.push(cx_err(cx.file, var.at, key, &e));
                        0.0
                    })
                }
                "compose_fleet_reserved_memory" => {
                    host.reserved.memory = parse_size(&var.value).unwrap_or_else(|e| {
                        cx.push(cx_err(cx.file, var.at, key, &e));
                        0
                    })
                }
                "compose_fleet_arch" => {
                    host.arch = cx.string(&node, key).map(|a| normalize_arch(&a))
                }
                "compose_fleet_drain" => host.drain = cx.boolean(&node, key).unwrap_or(false),
                k if k.starts_with("ansible_") || k.starts_with("compose_fleet_") => {}
                k => {
                    if let Some(text) = var.value.scalar_text() {
                        host.labels.insert(k.to_string(), text);
                    }
                }
            }
        }
        match (cap_cpus, cap_memory) {
            (Some(cpus), Some(memory)) => host.capacity = Some(Capacity { cpus, memory }),
            (None, None) => {}
            _ => {
                let d = Diagnostic::error(format!(
                    "host `{host_name}` sets only one of `compose_fleet_cpus` and `compose_fleet_memory`"
                ))
                .at(host_at.in_file(cx.file))
                .hint("set both to declare capacity, or neither to use the host's facts");
                cx.push(d);
            }
        }
        fleet.hosts.push(host);
    }
    fleet
}

fn cx_err(file: &Arc<str>, at: Pos, key: &str, e: &str) -> Diagnostic {
    Diagnostic::error(format!("`{key}`: {e}")).at(at.in_file(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranges_expand() {
        assert_eq!(expand_pattern("web[01:03]"), ["web01", "web02", "web03"]);
        assert_eq!(expand_pattern("db-[a:c].x"), ["db-a.x", "db-b.x", "db-c.x"]);
        assert_eq!(expand_pattern("plain"), ["plain"]);
    }

    #[test]
    fn ini_words_respect_quotes() {
        assert_eq!(
            split_words("a x=1 y=\"two words\""),
            vec![
                ("a".to_string(), 0),
                ("x=1".to_string(), 2),
                ("y=\"two words\"".to_string(), 6)
            ]
        );
    }
}
