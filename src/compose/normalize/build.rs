//! `build`: the context made absolute (URLs kept), `args` read as a dictionary.

use super::volumes::host_path;
use super::Ctx;
use crate::compose::model::*;
use crate::compose::yaml::{Node, Value};

pub(super) fn build(ctx: &mut Ctx<'_>, v: &Node) -> Option<Build> {
    match &v.value {
        Value::Null => None,
        Value::Map(_) => {
            let mut b = Build::default();
            for (key, k, bv) in ctx.entries(v, "`build`") {
                match k {
                    "context" => {
                        b.context = ctx
                            .string(bv, "`build.context`")
                            .map(|c| resolve_context(ctx, &c))
                    }
                    "additional_contexts" => {
                        let contexts: serde_json::Map<String, serde_json::Value> = ctx
                            .dict(bv, "`build.additional_contexts`")
                            .into_iter()
                            .map(|(k, v)| {
                                let v = v.map(|c| resolve_context(ctx, &c)).unwrap_or_default();
                                (k, serde_json::Value::String(v))
                            })
                            .collect();
                        b.extra.insert(
                            "additional_contexts".into(),
                            serde_json::Value::Object(contexts),
                        );
                    }
                    "dockerfile" => b.dockerfile = ctx.string(bv, "`build.dockerfile`"),
                    // An argument without a value takes the environment's; unset there,
                    // compose drops it.
                    "args" => {
                        let args: serde_json::Map<String, serde_json::Value> = ctx
                            .dict(bv, "`build.args`")
                            .into_iter()
                            .filter_map(|(k, v)| {
                                let v = v.or_else(|| ctx.env.get(&k).cloned())?;
                                Some((k, serde_json::Value::String(v)))
                            })
                            .collect();
                        b.extra
                            .insert("args".into(), serde_json::Value::Object(args));
                    }
                    "secrets" => {
                        // Checked against the top-level `secrets` with the services' own.
                        for item in bv.as_seq().unwrap_or_default() {
                            let source = match &item.value {
                                Value::Map(_) => item.get("source").and_then(Node::as_str),
                                _ => item.as_str(),
                            };
                            if let Some(source) = source {
                                ctx.refs.push((
                                    "secret",
                                    source.to_string(),
                                    Location::from(item.loc),
                                ));
                            }
                        }
                        b.extra.insert(k.to_string(), bv.to_json());
                    }
                    // Booleans (`"true"` is `true`); Go leaves a false one out.
                    "no_cache" | "pull" | "privileged" => {
                        if ctx.boolean(bv, &format!("`build.{k}`")) {
                            b.extra.insert(k.to_string(), serde_json::Value::Bool(true));
                        }
                    }
                    // Strings, whatever YAML type they are written as (`provenance: true`).
                    "provenance" | "sbom" => {
                        if let Some(t) = bv.scalar_text() {
                            b.extra.insert(k.to_string(), serde_json::Value::String(t));
                        }
                    }
                    "ssh" => {
                        if let Some(ssh) = ssh(ctx, bv) {
                            b.extra.insert(k.to_string(), ssh);
                        }
                    }
                    _ => {
                        if build_key_ok(ctx, key, k, bv) {
                            b.extra.insert(k.to_string(), bv.to_json());
                        }
                    }
                }
            }
            if b.context.is_none() {
                b.context = Some(resolve_context(ctx, "."));
            }
            Some(b)
        }
        _ => ctx.string(v, "`build`").map(|c| Build {
            context: Some(resolve_context(ctx, &c)),
            ..Build::default()
        }),
    }
}

/// A build context as compose resolves it: a URL, a Git reference or another service's image
/// (`service:NAME`) is kept; a directory is a host path ([`host_path`]).
fn resolve_context(ctx: &Ctx<'_>, c: &str) -> String {
    const REMOTE: &[&str] = &[
        "https://",
        "http://",
        "git://",
        "ssh://",
        "github.com/",
        "git@",
        "service:",
    ];
    if c.contains("://") || REMOTE.iter().any(|p| c.starts_with(p)) {
        c.to_string()
    } else {
        host_path(ctx, c)
    }
}

const BUILD_KEYS: &[&str] = &[
    "context",
    "dockerfile",
    "dockerfile_inline",
    "entitlements",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "network",
    "provenance",
    "sbom",
    "pull",
    "target",
    "shm_size",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "tags",
    "ulimits",
    "platforms",
];

/// The other `build` keys, checked against the type compose's schema gives them.
fn build_key_ok(ctx: &mut Ctx<'_>, key: &Node, k: &str, v: &Node) -> bool {
    let errors = ctx.diags.errors().count();
    let what = format!("`build.{k}`");
    match k {
        "dockerfile_inline" | "network" | "target" | "isolation" => {
            ctx.string(v, &what);
        }
        "entitlements" | "cache_from" | "cache_to" | "tags" | "platforms" => match v.as_seq() {
            Some(items) => items.iter().for_each(|i| {
                ctx.string(i, &format!("an entry of {what}"));
            }),
            None => ctx.error(
                v,
                format!("{what} must be a list of strings, found {}", v.kind()),
            ),
        },
        "shm_size" => {
            ctx.bytes(v, &what);
        }
        "labels" => {
            super::labels(ctx, v, &what);
        }
        _ if k.starts_with("x-") || BUILD_KEYS.contains(&k) => {}
        _ => ctx.unknown_key(key, k, "`build`", BUILD_KEYS),
    }
    ctx.diags.errors().count() == errors
}

/// `build.ssh`: `default` or `ID=PATH` entries. A mapping is read as compose-go reads it, each
/// entry becoming the text `ID: PATH`.
fn ssh(ctx: &mut Ctx<'_>, v: &Node) -> Option<serde_json::Value> {
    let entries: Vec<(String, &Node)> = match &v.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| Some((ctx.string(i, "a `build.ssh` entry")?, i)))
            .collect(),
        Value::Map(_) => ctx
            .entries(v, "`build.ssh`")
            .into_iter()
            .map(|(_, k, pv)| (format!("{k}: {}", pv.scalar_text().unwrap_or_default()), pv))
            .collect(),
        _ => {
            ctx.error(
                v,
                format!(
                    "`build.ssh` must be a list or a mapping, found {}",
                    v.kind()
                ),
            );
            return None;
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (e, at) in entries {
        if e != "default" && !e.contains('=') && !e.contains(": ") {
            ctx.error_hint(
                at,
                format!("`{e}` is not an SSH key for the build"),
                "write `default` (the SSH agent) or `ID=PATH`",
            );
            continue;
        }
        // compose prints `ID=PATH` as `ID: PATH`.
        let e = match e.split_once('=') {
            Some((id, path)) => format!("{id}: {path}"),
            None => e,
        };
        out.push(serde_json::Value::String(e));
    }
    Some(serde_json::Value::Array(out))
}
