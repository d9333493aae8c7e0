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
            for (_, k, bv) in ctx.entries(v, "`build`") {
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
                                ctx.refs
                                    .push(("secret", source.to_string(), item.loc.clone()));
                            }
                        }
                        b.extra.insert(k.to_string(), bv.to_json());
                    }
                    _ => {
                        b.extra.insert(k.to_string(), bv.to_json());
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
