//! Ansible's YAML inventory format, as ansible-core's `yaml` plugin reads it: top-level keys
//! are groups, each with optional `hosts`, `children` and `vars` (a plain string is accepted
//! for each, as Ansible accepts it); other keys are skipped with a warning. Scalars are typed
//! by YAML 1.1's rules (PyYAML's): `yes` is true, `0777` is 511, `1e3` is text.

use std::sync::Arc;

use super::pattern;
use super::value::{yaml11_plain, AVal};
use super::{Inventory, Var, Vars};
use crate::compose::model::Location;
use crate::diag::Diagnostic;
use crate::inventory::tree::{self, Key, Node, Pos, Value};
use crate::limits::{Limit, Limits};

/// One YAML document with the text its spans point into.
struct Doc<'t> {
    file: &'t Arc<str>,
    text: &'t str,
}

impl Doc<'_> {
    fn at(&self, pos: Pos) -> Location {
        pos.in_file(self.file)
    }

    /// The source of a plain (unquoted, untagged, single-line, not aliased or merged) scalar,
    /// so that it can be typed by YAML 1.1's rules; `None` for anything else.
    fn plain<'s>(&'s self, pos: Pos, parsed: &Value) -> Option<&'s str> {
        let raw = self.text.get(pos.offset..pos.offset + pos.len)?;
        if raw.is_empty() {
            return matches!(parsed, Value::Null).then_some("");
        }
        if raw.contains(['\n', '\r'])
            || raw.starts_with(['\'', '"', '|', '>', '!', '*', '&', '{', '[', '%', '@', '`'])
            || matches!(parsed, Value::Str(s) if s.ends_with('\n'))
        {
            return None;
        }
        // A tag (`!!str 12`) or a block indicator (`|-`) before the scalar changes its type.
        let before = self.text[..pos.offset].trim_end();
        let token = before
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("");
        if token.starts_with('!')
            || (token.starts_with(['|', '>'])
                && token[1..]
                    .chars()
                    .all(|c| c == '-' || c == '+' || c.is_ascii_digit()))
        {
            return None;
        }
        Some(raw)
    }

    /// A node's value as Ansible loads it.
    fn value(&self, node: &Node) -> AVal {
        match &node.value {
            Value::Seq(items) => AVal::List(items.iter().map(|n| self.value(n)).collect()),
            Value::Map(entries) => AVal::Map(
                entries
                    .iter()
                    .map(|(k, v)| (name_text(&self.key(k)), self.value(v)))
                    .collect(),
            ),
            scalar => match self.plain(node.at, scalar) {
                Some(raw) => yaml11_plain(raw),
                None => match scalar {
                    Value::Null => AVal::Null,
                    Value::Bool(b) => AVal::Bool(*b),
                    Value::Int(i) => AVal::Int(*i),
                    Value::Float(f) => AVal::Float(*f),
                    Value::Str(s) => AVal::Str(s.clone()),
                    Value::Seq(_) | Value::Map(_) => AVal::Null,
                },
            },
        }
    }

    /// A mapping key, typed as Ansible types it.
    fn key(&self, key: &Key) -> AVal {
        let parsed = Value::Str(key.text.clone());
        match self.plain(key.at, &parsed) {
            Some(raw) => yaml11_plain(raw),
            None => AVal::Str(key.text.clone()),
        }
    }
}

/// A variable name from a key of any type (Ansible prints non-string names as JSON keys).
fn name_text(v: &AVal) -> String {
    match v {
        AVal::Str(s) => s.clone(),
        other => other.label().unwrap_or_else(|| "null".into()),
    }
}

/// Reads an Ansible YAML inventory (already parsed into `root`, a mapping) into `inv`.
pub fn parse(inv: &mut Inventory<'_>, file: &Arc<str>, text: &str, root: &Node) {
    let doc = Doc { file, text };
    if let Value::Map(entries) = &root.value {
        for (key, node) in entries {
            group(inv, &doc, key, node);
        }
    }
}

/// A mapping's entries; a plain string `s` stands for `{s: null}`, as Ansible accepts it.
enum Section<'n> {
    Map(&'n [(Key, Node)]),
    One(&'n Node),
    Empty,
}

fn section<'n>(node: &'n Node) -> Option<Section<'n>> {
    match &node.value {
        Value::Map(m) => Some(Section::Map(m)),
        Value::Null => Some(Section::Empty),
        Value::Str(_) => Some(Section::One(node)),
        _ => None,
    }
}

/// One group and everything under it; returns the group's name (even when it was skipped).
fn group(inv: &mut Inventory<'_>, doc: &Doc<'_>, key: &Key, node: &Node) -> Option<String> {
    let name = match doc.key(key) {
        AVal::Str(s) if !s.is_empty() => s,
        other => {
            inv.error(
                Diagnostic::error(format!(
                    "a group name must be a non-empty string, found {}",
                    other.kind()
                ))
                .at(doc.at(key.at))
                .hint("quote the name, e.g. `\"2024\":`"),
            );
            return None;
        }
    };
    let entries: &[(Key, Node)] = match &node.value {
        Value::Map(m) => m,
        Value::Null => &[],
        other => {
            inv.error(
                Diagnostic::warning(format!(
                    "skipping `{name}`: a group is a mapping of `hosts`, `children` and `vars`, \
                     found {}",
                    other.kind()
                ))
                .at(doc.at(node.at)),
            );
            return Some(name);
        }
    };
    if !name_fits(inv, &name, doc.at(key.at), "group") {
        return None;
    }
    let gi = inv.add_group(&name);
    for (k, v) in entries {
        let what = k.text.as_str();
        if matches!(what, "hosts" | "children" | "vars") && section(v).is_none() {
            inv.error(
                Diagnostic::error(format!(
                    "`{what}` of group `{name}` must be a mapping, found {}",
                    v.value.kind()
                ))
                .at(doc.at(v.at))
                .hint(match what {
                    "hosts" => "write hosts as keys: `hosts: { web1: {}, web2: {} }`",
                    "children" => "write child groups as keys: `children: { web: {} }`",
                    _ => "write variables as keys: `vars: { ansible_user: deploy }`",
                }),
            );
            return Some(name);
        }
    }
    for (k, v) in entries {
        let Some(sec) =
            section(v).filter(|_| matches!(k.text.as_str(), "hosts" | "children" | "vars"))
        else {
            if !matches!(v.value, Value::Map(_) | Value::Null) {
                inv.error(
                    Diagnostic::warning(format!(
                        "skipping key `{}` of group `{name}`: not a mapping",
                        k.text
                    ))
                    .at(doc.at(k.at)),
                );
            } else {
                let mut d = Diagnostic::warning(format!(
                    "skipping unknown key `{}` in group `{name}`: only `hosts`, `children` and \
                     `vars` are read (as Ansible does)",
                    k.text
                ))
                .at(doc.at(k.at));
                if let Some(m) =
                    crate::inventory::did_you_mean(&k.text, &["hosts", "children", "vars"])
                {
                    d = d.label(format!("did you mean `{m}`?"));
                }
                inv.error(d);
            }
            continue;
        };
        let items: Vec<(AVal, Pos, Option<&Node>)> = match sec {
            Section::Empty => continue,
            Section::One(n) => vec![(doc.value(n), n.at, None)],
            Section::Map(m) => m
                .iter()
                .map(|(ik, iv)| (doc.key(ik), ik.at, Some(iv)))
                .collect(),
        };
        match k.text.as_str() {
            "vars" => {
                for (var, at, val) in items {
                    let (value, vat) = match val {
                        Some(v) if v.at.len > 0 || !matches!(v.value, Value::Null) => {
                            (doc.value(v), v.at)
                        }
                        Some(v) => (doc.value(v), at),
                        None => (AVal::Null, at),
                    };
                    inv.set_variable(
                        &name,
                        &name_text(&var),
                        Var {
                            value,
                            at: doc.at(vat),
                        },
                    );
                }
            }
            "children" => {
                for (child, at, val) in items {
                    let null = Node {
                        value: Value::Null,
                        at,
                    };
                    let child_key = Key {
                        text: name_text(&child),
                        at,
                    };
                    let Some(sub) = group(inv, doc, &child_key, val.unwrap_or(&null)) else {
                        continue;
                    };
                    match inv.group_index(&sub) {
                        Some(ci) => inv.add_child(gi, ci, &doc.at(at)),
                        None => {
                            if !inv.add_host_to_group(gi, &sub) {
                                inv.error(
                                    Diagnostic::error(format!(
                                        "`{sub}` in `children` of group `{name}` is neither a \
                                         group nor a host"
                                    ))
                                    .at(doc.at(at)),
                                );
                            }
                        }
                    }
                }
            }
            _ => {
                for (pat, at, val) in items {
                    hosts_entry(inv, doc, gi, pat, at, val);
                }
            }
        }
    }
    Some(name)
}

fn name_fits(inv: &mut Inventory<'_>, name: &str, at: Location, what: &str) -> bool {
    let limit = inv.limits.get(Limit::NameLength);
    if name.chars().count() as u64 > limit {
        inv.error(
            Diagnostic::error(format!(
                "this {what} name is longer than {limit} characters"
            ))
            .at(at)
            .hint(Limit::NameLength.hint(limit)),
        );
        return false;
    }
    true
}

/// One entry of `hosts:`: a host pattern and its variables.
fn hosts_entry(
    inv: &mut Inventory<'_>,
    doc: &Doc<'_>,
    gi: usize,
    pat: AVal,
    at: Pos,
    val: Option<&Node>,
) {
    let loc = doc.at(at);
    let AVal::Str(text) = pat else {
        inv.error(
            Diagnostic::error(format!(
                "a host pattern must be a string, found {}",
                pat.kind()
            ))
            .at(loc)
            .hint("quote numbers used as host names, e.g. `\"10\":`"),
        );
        return;
    };
    let vars: Vec<(String, Var)> = match val.map(|v| &v.value) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Map(entries)) => entries
            .iter()
            .map(|(k, v)| {
                let vat = if v.at.len > 0 || !matches!(v.value, Value::Null) {
                    v.at
                } else {
                    k.at
                };
                (
                    name_text(&doc.key(k)),
                    Var {
                        value: doc.value(v),
                        at: doc.at(vat),
                    },
                )
            })
            .collect(),
        Some(other) => {
            inv.error(
                Diagnostic::error(format!(
                    "host `{text}` must be given a mapping of variables, found {}",
                    other.kind()
                ))
                .at(doc.at(val.map_or(at, |v| v.at)))
                .hint("write `host: { ansible_host: 10.0.0.1 }`, or nothing after `host:`"),
            );
            return;
        }
    };
    let (pattern_text, port) = pattern::split_port(&text);
    let n = match pattern::count(&pattern_text) {
        Ok(n) => n,
        Err(e) => {
            inv.error(Diagnostic::error(e).at(loc));
            return;
        }
    };
    if !inv.pattern_fits(n, &loc) {
        return;
    }
    let mut names = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    if let Err(e) = pattern::expand(&pattern_text, &mut names) {
        inv.error(Diagnostic::error(e).at(loc));
        return;
    }
    let port = port.and_then(|p| {
        let digits = p.trim_start_matches('0');
        let value = if digits.is_empty() {
            return None;
        } else {
            digits
                .parse::<i64>()
                .map(AVal::Int)
                .unwrap_or_else(|_| AVal::BigInt(digits.to_string()))
        };
        Some(Var {
            value,
            at: loc.clone(),
        })
    });
    for name in &names {
        if name.is_empty() {
            inv.error(Diagnostic::error("a host name is empty").at(loc.clone()));
            return;
        }
        if !name_fits(inv, name, loc.clone(), "host") {
            return;
        }
        if !inv.add_host(name, gi, port.clone(), &loc) {
            return;
        }
        for (k, v) in &vars {
            inv.set_variable(name, k, v.clone());
        }
    }
}

/// A `group_vars`/`host_vars` file: a YAML (or JSON) mapping of variables, or nothing.
pub fn vars_file(file: &Arc<str>, text: &str, limits: &Limits) -> Result<Vars, Box<Diagnostic>> {
    let root = tree::parse_mode(text, tree::Mode::Ansible, limits).map_err(|e| {
        let mut d = Diagnostic::error(format!("invalid YAML in `{file}`: {}", e.message))
            .at(e.pos.unwrap_or_else(Pos::start).in_file(file));
        if let Some(h) = e.hint {
            d = d.hint(h);
        }
        Box::new(d)
    })?;
    let doc = Doc { file, text };
    match &root.value {
        Value::Null => Ok(Vars::new()),
        Value::Map(entries) => Ok(entries
            .iter()
            .map(|(k, v)| {
                let vat = if v.at.len > 0 || !matches!(v.value, Value::Null) {
                    v.at
                } else {
                    k.at
                };
                (
                    name_text(&doc.key(k)),
                    Var {
                        value: doc.value(v),
                        at: doc.at(vat),
                    },
                )
            })
            .collect()),
        other => Err(Box::new(
            Diagnostic::error(format!(
                "`{file}` must be a mapping of variables, found {}",
                other.kind()
            ))
            .at(root.at.in_file(file))
            .hint("write `name: value` lines, e.g. `ansible_user: deploy`"),
        )),
    }
}
