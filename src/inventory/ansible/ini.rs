//! Ansible's INI inventory format, line for line as ansible-core's `ini` plugin reads it:
//! `[group]`, `[group:hosts]`, `[group:vars]`, `[group:children]` sections (a comment may
//! follow the header), host lines split as POSIX `shlex` splits them (a `#` starts a comment),
//! `host:port`, ranges, values through Python's literal evaluation, and groups named in
//! `:children` or `:vars` before they are defined.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::pattern;
use super::value::{ini_value, AVal};
use super::{Inventory, Var};
use crate::compose::model::Location;
use crate::diag::Diagnostic;
use crate::limits::Limit;

#[derive(Clone, Copy, PartialEq)]
enum State {
    Hosts,
    Vars,
    Children,
    /// After a bad section header: its lines are skipped (the header was reported).
    Skip,
}

struct Pending {
    vars: bool,
    at: Location,
    parents: Vec<(String, Location)>,
}

/// One line, for positions.
struct Line<'t> {
    file: &'t Arc<str>,
    number: u32,
    start: usize,
    text: &'t str,
}

impl Line<'_> {
    /// The location of `len` bytes at byte `col` of the line.
    fn at(&self, col: usize, len: usize) -> Location {
        let mut col = col.min(self.text.len());
        // Columns come from shlex words, where an escape (`\\` → `\`) is one byte shorter than
        // in the line: the byte may fall inside a character after it (found by the inventory
        // fuzz target as a panic). Point at the start of that character.
        while !self.text.is_char_boundary(col) {
            col -= 1;
        }
        Location {
            file: self.file.clone(),
            line: self.number,
            column: u32::try_from(self.text[..col].chars().count() + 1).unwrap_or(u32::MAX),
            offset: self.start + col,
            len: len.max(1).min(self.text.len().saturating_sub(col).max(1)),
        }
    }
}

/// Splits text into lines as YAML and our diagnostics count them (`\r\n`, `\r`, `\n`), with
/// the byte offset of each.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    // source_lines yields slices of `text`: their address gives the offset.
    crate::diag::source_lines(text).map(move |l| (l.as_ptr() as usize - text.as_ptr() as usize, l))
}

/// `^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$` on a stripped line: the group and the kind.
fn section(line: &str) -> Option<(&str, Option<&str>)> {
    let rest = line.strip_prefix('[')?;
    let name_end = rest.find(|c: char| c == ':' || c == ']' || c.is_whitespace())?;
    let name = &rest[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &rest[name_end..];
    let mut kind = None;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if end == 0 {
            return None;
        }
        kind = Some(&r[..end]);
        rest = &r[end..];
    }
    let rest = rest.strip_prefix(']')?.trim_start();
    (rest.is_empty() || rest.starts_with('#')).then_some((name, kind))
}

/// `^([^:\]\s]+)\s*(?:#.*)?$`: a group name on a `:children` line.
fn child_name(line: &str) -> Option<&str> {
    let end = line
        .find(|c: char| c == ':' || c == ']' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..end];
    let rest = line[end..].trim_start();
    (!name.is_empty() && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

pub fn parse(inv: &mut Inventory<'_>, file: &Arc<str>, text: &str) {
    let mut group = String::from("ungrouped");
    let mut state = State::Hosts;
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, (start, raw)) in lines(text).enumerate() {
        let line = Line {
            file,
            number: u32::try_from(n + 1).unwrap_or(u32::MAX),
            start,
            text: raw,
        };
        let stripped = raw.trim();
        if stripped.is_empty() || stripped.starts_with(['#', ';']) {
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        let whole = line.at(indent, stripped.len());
        if let Some((name, kind)) = section(stripped) {
            group = name.to_string();
            let name_at = line.at(indent + 1, name.len());
            state = match kind.unwrap_or("hosts") {
                "hosts" => State::Hosts,
                "vars" => State::Vars,
                "children" => State::Children,
                other => {
                    inv.error(
                        Diagnostic::error(format!(
                            "section `[{name}:{other}]` has an unknown kind `{other}`"
                        ))
                        .at(line.at(indent + 1 + name.len() + 1, other.len()))
                        .label("expected `hosts`, `vars` or `children`"),
                    );
                    State::Skip
                }
            };
            if state == State::Skip {
                continue;
            }
            if !check_name(inv, name, &name_at, "group") {
                state = State::Skip;
                continue;
            }
            if !inv.has_group(name) {
                // `[g:vars]` before `[g]` is fine if `[g]` comes later: noted, checked at the end.
                if state == State::Vars && !pending.contains_key(name) {
                    order.push(name.to_string());
                    pending.insert(
                        name.to_string(),
                        Pending {
                            vars: true,
                            at: whole.clone(),
                            parents: Vec::new(),
                        },
                    );
                }
                inv.add_group(name);
            }
            if state != State::Vars {
                match pending.get(name).map(|p| p.vars) {
                    Some(false) => add_pending_children(inv, name, &mut pending),
                    Some(true) => {
                        pending.remove(name);
                    }
                    None => {}
                }
            }
            continue;
        }
        if stripped.starts_with('[') && stripped.ends_with(']') {
            inv.error(
                Diagnostic::error(format!("invalid section header `{stripped}`"))
                    .at(whole)
                    .hint(
                        "a header is `[group]`, `[group:vars]` or `[group:children]`, with no \
                         spaces inside the brackets",
                    ),
            );
            state = State::Skip;
            continue;
        }
        match state {
            State::Skip => {}
            State::Hosts => host_line(inv, &line, indent, stripped, &group),
            State::Vars => {
                let Some((k, v)) = stripped.split_once('=') else {
                    inv.error(
                        Diagnostic::error(format!("expected `key=value`, found `{stripped}`"))
                            .at(whole)
                            .hint(format!("`[{group}:vars]` sections hold `key=value` lines")),
                    );
                    continue;
                };
                let v_trim = v.trim();
                let v_col = indent + k.len() + 1 + (v.len() - v.trim_start().len());
                let at = line.at(v_col, v_trim.len());
                let Some(value) = typed(inv, v_trim, &at) else {
                    continue;
                };
                inv.set_variable(&group, k.trim(), Var { value, at });
            }
            State::Children => {
                let Some(child) = child_name(stripped) else {
                    inv.error(
                        Diagnostic::error(format!("expected a group name, found `{stripped}`"))
                            .at(whole)
                            .hint(format!(
                                "`[{group}:children]` sections list one group name per line"
                            )),
                    );
                    continue;
                };
                let at = line.at(indent, child.len());
                match inv.group_index(child) {
                    Some(ci) => {
                        let gi = inv.add_group(&group);
                        inv.add_child(gi, ci, &at);
                    }
                    None => match pending.get_mut(child) {
                        Some(p) => p.parents.push((group.clone(), at)),
                        None => {
                            order.push(child.to_string());
                            pending.insert(
                                child.to_string(),
                                Pending {
                                    vars: false,
                                    at: at.clone(),
                                    parents: vec![(group.clone(), at)],
                                },
                            );
                        }
                    },
                }
            }
        }
    }
    for name in order {
        let Some(p) = pending.remove(&name) else {
            continue;
        };
        let d = if p.vars {
            Diagnostic::error(format!(
                "section `[{name}:vars]` sets variables of group `{name}`, which is defined nowhere"
            ))
            .at(p.at)
            .hint(format!(
                "add a `[{name}]` section listing its hosts, or remove the variables"
            ))
        } else {
            let parent = p.parents.last().map(|(g, _)| g.as_str()).unwrap_or("?");
            Diagnostic::error(format!(
                "section `[{parent}:children]` lists group `{name}`, which is defined nowhere"
            ))
            .at(p.at)
            .hint(format!(
                "add a `[{name}]` section listing its hosts, or remove the line"
            ))
        };
        inv.error(d);
    }
}

/// A group named in `:children` before its own section: link it to its parents now.
fn add_pending_children(
    inv: &mut Inventory<'_>,
    name: &str,
    pending: &mut BTreeMap<String, Pending>,
) {
    let Some(p) = pending.remove(name) else {
        return;
    };
    let child = inv.add_group(name);
    for (parent, at) in p.parents {
        let pi = inv.add_group(&parent);
        inv.add_child(pi, child, &at);
        if pending.get(&parent).is_some_and(|pp| !pp.vars) {
            add_pending_children(inv, &parent, pending);
        }
    }
}

fn check_name(inv: &mut Inventory<'_>, name: &str, at: &Location, what: &str) -> bool {
    let limit = inv.limits.get(Limit::NameLength);
    if name.chars().count() as u64 > limit {
        inv.error(
            Diagnostic::error(format!(
                "this {what} name is longer than {limit} characters"
            ))
            .at(at.clone())
            .hint(Limit::NameLength.hint(limit)),
        );
        return false;
    }
    true
}

/// A value through Python's literal evaluation; `None` (reported) when Python would fail.
fn typed(inv: &mut Inventory<'_>, text: &str, at: &Location) -> Option<AVal> {
    match ini_value(text) {
        Ok(v) => Some(v),
        Err(what) => {
            inv.error(
                Diagnostic::error(format!(
                    "this value is a Python literal with {what}, which Python (and so Ansible) \
                     cannot build"
                ))
                .at(at.clone())
                .hint("quote the whole value to keep it as text, e.g. `key=\"{...}\"`"),
            );
            None
        }
    }
}

fn host_line(inv: &mut Inventory<'_>, line: &Line<'_>, indent: usize, stripped: &str, group: &str) {
    let words = match pattern::shlex_split(stripped) {
        Ok(w) => w,
        Err(e) => {
            inv.error(
                Diagnostic::error(format!("cannot split this host line: {e}"))
                    .at(line.at(indent, stripped.len()))
                    .hint("host lines are `name key=value key=\"quoted value\" ...`"),
            );
            return;
        }
    };
    let Some((first, first_col)) = words.first() else {
        return;
    };
    let host_at = line.at(indent + first_col, first.len());
    let (pat, port) = pattern::split_port(first);
    if first.trim().ends_with(':') && port.is_none() {
        inv.error(
            Diagnostic::error(format!("host pattern `{first}` ends with `:`"))
                .at(host_at)
                .hint("`:` introduces a port (`host:2222`); this looks like YAML — name YAML inventories `.yml`"),
        );
        return;
    }
    let mut vars: Vec<(String, Var)> = Vec::new();
    let mut ok = true;
    for (word, col) in &words[1..] {
        let at = line.at(indent + col, word.len());
        let Some((k, v)) = word.split_once('=') else {
            inv.error(
                Diagnostic::error(format!("`{word}` is not a `key=value` host variable"))
                    .at(at)
                    .hint("host lines are `name key=value key=\"quoted value\" ...`"),
            );
            ok = false;
            continue;
        };
        let v_at = line.at(indent + col + k.len() + 1, v.len());
        match typed(inv, v, &v_at) {
            Some(value) => vars.push((k.to_string(), Var { value, at: v_at })),
            None => ok = false,
        }
    }
    if !ok {
        return;
    }
    let n = match pattern::count(&pat) {
        Ok(n) => n,
        Err(e) => {
            inv.error(Diagnostic::error(e).at(host_at));
            return;
        }
    };
    if !inv.pattern_fits(n, &host_at) {
        return;
    }
    let mut names = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    if let Err(e) = pattern::expand(&pat, &mut names) {
        inv.error(Diagnostic::error(e).at(host_at));
        return;
    }
    if names.iter().any(|h| h.trim() == "---") {
        inv.error(
            Diagnostic::error("`---` is not a host name")
                .at(host_at)
                .hint("`---` starts a YAML document: name YAML inventories `.yml` or `.yaml`"),
        );
        return;
    }
    let port = port.and_then(|p| {
        let value = match p.trim_start_matches('0').parse::<i64>() {
            Ok(i) => AVal::Int(i),
            Err(_) if p.bytes().all(|b| b == b'0') => AVal::Int(0),
            Err(_) => AVal::BigInt(p.trim_start_matches('0').to_string()),
        };
        // `Host(name, port)` ignores a port of 0.
        (value != AVal::Int(0)).then(|| Var {
            value,
            at: host_at.clone(),
        })
    });
    let gi = inv.add_group(group);
    for name in &names {
        if name.is_empty() {
            inv.error(Diagnostic::error("a host name is empty").at(host_at.clone()));
            return;
        }
        if !check_name(inv, name, &host_at, "host") {
            return;
        }
        if !inv.add_host(name, gi, port.clone(), &host_at) {
            return;
        }
        for (k, v) in &vars {
            inv.set_variable(name, k, v.clone());
        }
    }
}
