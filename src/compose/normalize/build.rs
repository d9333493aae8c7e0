//! `build`: the context made absolute (URLs kept), `args` read as a dictionary.

use std::path::Path;

use super::Ctx;
use crate::compose::model::*;
use crate::compose::source::absolute;
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
                            .map(|c| resolve_context(ctx.project_dir, &c))
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
                    _ => {
                        b.extra.insert(k.to_string(), bv.to_json());
                    }
                }
            }
            if b.context.is_none() {
                b.context = Some(resolve_context(ctx.project_dir, "."));
            }
            Some(b)
        }
        _ => ctx.string(v, "`build`").map(|c| Build {
            context: Some(resolve_context(ctx.project_dir, &c)),
            ..Build::default()
        }),
    }
}

/// A build context is a directory (made absolute) or a URL (kept).
fn resolve_context(dir: &Path, c: &str) -> String {
    if c.contains("://") || c.starts_with("git@") {
        c.to_string()
    } else {
        absolute(dir, Path::new(c)).display().to_string()
    }
}
