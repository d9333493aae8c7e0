//! Merging compose documents (several `-f` files, `extends`) by the Compose Specification's rules:
//! mappings merge by key; most sequences are appended without duplicates; `command`,
//! `entrypoint` and `healthcheck.test` are replaced; `environment`, `labels` & co. merge by
//! variable name whichever syntax each side uses; `ports` append; `volumes` merge by target;
//! `secrets`/`configs` by source; `depends_on` and `networks` by service/network name.

use super::yaml::{Node, Tag, Value};

/// Merges two whole compose files (`over` wins).
pub fn merge_files(base: Node, over: Node) -> Node {
    if over.is_null() {
        return base;
    }
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            merge_entries(&mut b, o, |name, bv, v| {
                if name == "services" {
                    merge_services(bv, v)
                } else {
                    merge_generic(bv, v, &[])
                }
            });
            Node::new(Value::Map(b), base.loc)
        }
        (_, v) => Node::new(v, over.loc),
    }
}

fn merge_services(base: Node, over: Node) -> Node {
    if over.is_null() {
        return base;
    }
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            merge_entries(&mut b, o, |_, bv, v| merge_service(bv, v));
            Node::new(Value::Map(b), base.loc)
        }
        (_, v) => Node::new(v, over.loc),
    }
}

/// Merges the entries of an overriding mapping into `b`, key by key: `merge(name, base, over)`
/// where both have the key, except that `!reset` removes the key and `!override` replaces the
/// value whole.
fn merge_entries(
    b: &mut Vec<(Node, Node)>,
    o: Vec<(Node, Node)>,
    mut merge: impl FnMut(&str, Node, Node) -> Node,
) {
    for (k, v) in o {
        let i = position(b, &k);
        match (v.tag, i) {
            (Tag::Reset, Some(i)) => {
                b.remove(i);
            }
            // Kept, so that a later file's `!reset` or the final pass drops it.
            (Tag::Reset, None) => b.push((k, v)),
            (Tag::Override, Some(i)) => b[i].1 = v,
            (_, None) => b.push((k, v)),
            (_, Some(i)) => {
                let (bk, bv) = b.remove(i);
                let merged = merge(k.as_str().unwrap_or(""), bv, v);
                b.insert(i, (bk, merged));
            }
        }
    }
}

fn position(entries: &[(Node, Node)], key: &Node) -> Option<usize> {
    entries.iter().position(|(k, _)| k.value == key.value)
}

/// Merges one service definition over another.
pub fn merge_service(base: Node, over: Node) -> Node {
    if over.is_null() {
        return base;
    }
    let loc = over.loc;
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            merge_entries(&mut b, o, |name, bv, v| match name {
                "command" | "entrypoint" => v,
                "extra_hosts" => merge_generic(hosts_seq(bv), hosts_seq(v), &[]),
                "environment" | "labels" | "sysctls" | "annotations" => {
                    merge_generic(to_map(bv, true), to_map(v, true), &[])
                }
                "depends_on" | "networks" => {
                    merge_generic(to_map(bv, false), to_map(v, false), &[])
                }
                // A string is a list of one (`dns: 8.8.8.8` appends to the base's list).
                "dns" | "dns_search" | "tmpfs" | "label_file" => {
                    merge_generic(as_seq(bv), as_seq(v), &[name])
                }
                "env_file" => merge_keyed(as_seq(bv), as_seq(v), env_file_path),
                "volumes" => merge_keyed(bv, v, volume_target),
                "secrets" | "configs" => merge_keyed(bv, v, file_ref_source),
                "build" => {
                    // `build: dir` is `build: {context: dir}`.
                    merge_generic(build_map(bv), build_map(v), &["build"])
                }
                _ => merge_generic(bv, v, &[name]),
            });
            Node::new(Value::Map(b), loc)
        }
        (_, v) => Node::new(v, loc),
    }
}

/// Mappings merge recursively, sequences append without duplicates (except where replaced),
/// scalars are replaced.
fn merge_generic(base: Node, over: Node, path: &[&str]) -> Node {
    let loc = over.loc;
    match (base.value, over.value) {
        (Value::Map(mut b), Value::Map(o)) => {
            merge_entries(&mut b, o, |name, bv, v| {
                if name == "test" && path == ["healthcheck"] {
                    v
                } else if name == "args" && path == ["build"] {
                    merge_generic(to_map(bv, true), to_map(v, true), &[])
                } else if name == "extra_hosts" && path == ["build"] {
                    merge_generic(hosts_seq(bv), hosts_seq(v), &[])
                } else {
                    let mut p: Vec<&str> = path.to_vec();
                    p.push(name);
                    merge_generic(bv, v, &p)
                }
            });
            Node::new(Value::Map(b), loc)
        }
        (Value::Seq(mut b), Value::Seq(o)) => {
            for item in o {
                if !b.iter().any(|x| x.value == item.value) {
                    b.push(item);
                }
            }
            Node::new(Value::Seq(b), loc)
        }
        (_, v) => Node::new(v, loc),
    }
}

/// Merges two sequences where an entry of `over` replaces the entry of `base` with the same key.
fn merge_keyed(base: Node, over: Node, key: fn(&Node) -> Option<String>) -> Node {
    let loc = over.loc;
    match (base.value, over.value) {
        (Value::Seq(mut b), Value::Seq(o)) => {
            for item in o {
                let k = key(&item);
                match b.iter().position(|x| k.is_some() && key(x) == k) {
                    Some(i) => b[i] = item,
                    None => {
                        if !b.iter().any(|x| x.value == item.value) {
                            b.push(item);
                        }
                    }
                }
            }
            Node::new(Value::Seq(b), loc)
        }
        (_, v) => Node::new(v, loc),
    }
}

/// A volume's target, the key compose merges `volumes` by. The short syntax is split as
/// compose-go's `ParseVolume` splits it: a `:` after a lone letter belongs to a Windows drive, so
/// `C:\data:/srv` targets `/srv`, not `\data`.
fn volume_target(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => {
            let fields = super::normalize::volume_fields(s);
            match fields.as_slice() {
                [target] => Some(target.to_string()),
                [_, target, ..] => Some(target.to_string()),
                [] => None,
            }
        }
        Value::Map(_) => n.get("target").and_then(Node::scalar_text),
        _ => None,
    }
}

fn file_ref_source(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.to_string()),
        Value::Map(_) => n.get("source").and_then(Node::scalar_text),
        _ => None,
    }
}

/// `env_file` entries are the same file when their paths are (`a.env` and `{path: a.env}`).
fn env_file_path(n: &Node) -> Option<String> {
    match &n.value {
        Value::Str(s) => Some(s.to_string()),
        Value::Map(_) => n.get("path").and_then(Node::scalar_text),
        _ => None,
    }
}

/// `extra_hosts` as compose merges them: a mapping becomes `HOST=ADDRESS` entries (one per
/// address, sorted), a list stays as written; the override's entries are appended unless the
/// base has the same text (`h:1.2.3.4` and `h=1.2.3.4` are both kept, as compose keeps them).
fn hosts_seq(n: Node) -> Node {
    let Value::Map(entries) = n.value else {
        return n;
    };
    let mut items = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let host = k.scalar_text().unwrap_or_default();
        let loc = v.loc;
        let addresses: Vec<String> = match &v.value {
            Value::Seq(a) => a.iter().filter_map(Node::scalar_text).collect(),
            Value::Null => {
                items.push(Node::new(Value::Str(host.into()), loc));
                continue;
            }
            _ => v.scalar_text().into_iter().collect(),
        };
        for a in addresses {
            items.push(Node::new(Value::Str(format!("{host}={a}").into()), loc));
        }
    }
    items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    Node::new(Value::Seq(items), n.loc)
}

/// A scalar as a sequence of one; anything else as it is.
fn as_seq(n: Node) -> Node {
    match n.value {
        Value::Str(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            let loc = n.loc;
            Node::new(Value::Seq(vec![n]), loc)
        }
        _ => n,
    }
}

fn build_map(n: Node) -> Node {
    match n.value {
        Value::Str(_) => {
            let key = Node::new(Value::Str("context".into()), n.loc);
            let loc = n.loc;
            Node::new(Value::Map(vec![(key, n)]), loc)
        }
        _ => n,
    }
}

/// A list (`KEY=VALUE` when `split`, else plain names) as a mapping, so both syntaxes merge.
pub fn to_map(n: Node, split: bool) -> Node {
    let Value::Seq(items) = n.value else {
        return n;
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let loc = item.loc;
        let text = item.scalar_text().unwrap_or_default();
        let (k, v) = if split {
            match text.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::Str(v.into())),
                None => (text.clone(), Value::Null),
            }
        } else {
            (text.clone(), Value::Null)
        };
        entries.push((Node::new(Value::Str(k.into()), loc), Node::new(v, loc)));
    }
    Node::new(Value::Map(entries), n.loc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn parse(text: &str) -> Node {
        crate::compose::yaml::parse(&Arc::from("t.yaml"), text).expect("parses")
    }

    #[test]
    fn an_empty_override_keeps_the_base() {
        let base = parse("services:\n  web:\n    image: web\n");
        let merged = merge_files(base, parse("services:\n  web:\n"));
        let web = merged.get("services").and_then(|s| s.get("web"));
        assert_eq!(
            web.and_then(|w| w.get("image")).and_then(Node::as_str),
            Some("web")
        );
    }

    #[test]
    fn volumes_merge_by_target_and_secrets_by_source() {
        // (Volume names of one letter would be Windows drives: `a:/data` is one path.)
        let base = parse(
            "volumes: [\"data:/data\", \"./x:/x\"]\nsecrets: [s, {source: t, target: one}]\n",
        );
        let over = parse("volumes: [\"other:/data\"]\nsecrets: [{source: t, target: two}]\n");
        let merged = merge_service(base, over);
        let vols: Vec<String> = merged
            .get("volumes")
            .and_then(Node::as_seq)
            .unwrap_or_default()
            .iter()
            .filter_map(Node::scalar_text)
            .collect();
        assert_eq!(vols, ["other:/data", "./x:/x"]);
        let secrets = merged
            .get("secrets")
            .and_then(Node::as_seq)
            .unwrap_or_default();
        assert_eq!(secrets.len(), 2);
        assert_eq!(secrets[1].get("target").and_then(Node::as_str), Some("two"));
    }

    /// docker compose v2.40.3 merges `C:\data:/srv` and `E:\new:/srv` as one mount (the
    /// drive's `:` does not split), replacing it in place; a naive split took `\data` for the
    /// target and kept both.
    #[test]
    fn volumes_with_windows_drives_merge_by_their_real_target() {
        let base = parse("volumes: ['C:\\data:/srv', 'd:/other:/opt:ro', /anon, 'v:/v']\n");
        let over = parse("volumes: ['E:\\new:/srv', './x:/opt', 'w:/v']\n");
        let merged = merge_service(base, over);
        let vols: Vec<String> = merged
            .get("volumes")
            .and_then(Node::as_seq)
            .unwrap_or_default()
            .iter()
            .filter_map(Node::scalar_text)
            .collect();
        // `v:/v` is one path (a drive), an anonymous volume: its target is itself.
        assert_eq!(vols, ["E:\\new:/srv", "./x:/opt", "/anon", "v:/v", "w:/v"]);
    }
}
