//! The top-level objects besides services: `networks`, `volumes`, `secrets` and `configs`.

use super::volumes::host_path;
use super::Ctx;
use crate::compose::model::*;
use crate::compose::yaml::{Node, Value};

const NETWORK_KEYS: &[&str] = &[
    "name",
    "driver",
    "driver_opts",
    "ipam",
    "external",
    "internal",
    "enable_ipv4",
    "enable_ipv6",
    "attachable",
    "labels",
];
const VOLUME_KEYS: &[&str] = &["name", "driver", "driver_opts", "external", "labels"];
const SECRET_KEYS: &[&str] = &[
    "name",
    "environment",
    "file",
    "external",
    "labels",
    "driver",
    "driver_opts",
    "template_driver",
];
const CONFIG_KEYS: &[&str] = &[
    "name",
    "content",
    "environment",
    "file",
    "external",
    "labels",
    "template_driver",
];

/// Top-level `networks`.
pub fn network(ctx: &mut Ctx<'_>, name: &str, v: &Node) -> Network {
    let mut n = Network::default();
    for (key, k, fv) in ctx.entries(v, &format!("network `{name}`")) {
        match k {
            "name" => n.name = ctx.string(fv, "`name`"),
            "driver" => n.driver = ctx.string(fv, "`driver`"),
            "external" => external(ctx, fv, &mut n.external, &mut n.name),
            "internal" => n.internal = ctx.boolean(fv, "`internal`"),
            "ipam" if !ipam_ok(ctx, fv) => {}
            "driver_opts" if !driver_opts_ok(ctx, fv) => {}
            _ if !k.starts_with("x-") && !NETWORK_KEYS.contains(&k) => {
                ctx.unknown_key(key, k, &format!("network `{name}`"), NETWORK_KEYS);
            }
            _ => {
                n.extra.insert(k.to_string(), fv.to_json());
            }
        }
    }
    n
}

fn external(ctx: &mut Ctx<'_>, v: &Node, flag: &mut bool, name: &mut Option<String>) {
    match &v.value {
        Value::Map(_) => {
            *flag = true;
            if let Some(n) = v.get("name").and_then(Node::scalar_text) {
                *name = Some(n);
            }
        }
        _ => *flag = ctx.boolean(v, "`external`"),
    }
}

/// Top-level `volumes`.
pub fn volume(ctx: &mut Ctx<'_>, name: &str, v: &Node) -> Volume {
    let mut vol = Volume::default();
    for (key, k, fv) in ctx.entries(v, &format!("volume `{name}`")) {
        match k {
            "name" => vol.name = ctx.string(fv, "`name`"),
            "driver" => vol.driver = ctx.string(fv, "`driver`"),
            "external" => external(ctx, fv, &mut vol.external, &mut vol.name),
            "driver_opts" if !driver_opts_ok(ctx, fv) => {}
            _ if !k.starts_with("x-") && !VOLUME_KEYS.contains(&k) => {
                ctx.unknown_key(key, k, &format!("volume `{name}`"), VOLUME_KEYS);
            }
            _ => {
                vol.extra.insert(k.to_string(), fv.to_json());
            }
        }
    }
    // An external volume is created elsewhere: compose refuses settings for its creation.
    if vol.external {
        for (key, k, _) in ctx.entries(v, &format!("volume `{name}`")) {
            if matches!(k, "driver" | "driver_opts" | "labels") {
                ctx.error_hint(
                    key,
                    format!("volume `{name}` is external and sets `{k}`"),
                    format!("an external volume is created outside the project: remove `{k}`, or `external`"),
                );
            }
        }
    }
    vol
}

/// Top-level `secrets` and `configs`; `file` made absolute against the project directory.
pub fn file_object(ctx: &mut Ctx<'_>, what: &str, name: &str, v: &Node) -> FileObject {
    let mut o = FileObject::default();
    let known = if what == "secret" {
        SECRET_KEYS
    } else {
        CONFIG_KEYS
    };
    for (key, k, fv) in ctx.entries(v, &format!("{what} `{name}`")) {
        match k {
            "name" => o.name = ctx.string(fv, "`name`"),
            "file" => o.file = ctx.string(fv, "`file`").map(|f| host_path(ctx, &f)),
            "environment" => o.environment = ctx.string(fv, "`environment`"),
            "content" => o.content = ctx.string(fv, "`content`"),
            "external" => external(ctx, fv, &mut o.external, &mut o.name),
            _ if !k.starts_with("x-") && !known.contains(&k) => {
                ctx.unknown_key(key, k, &format!("{what} `{name}`"), known);
            }
            _ => {
                o.extra.insert(k.to_string(), fv.to_json());
            }
        }
    }
    let sources: Vec<&str> = [
        ("file", o.file.is_some()),
        ("environment", o.environment.is_some()),
        ("content", o.content.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if sources.len() > 1 {
        ctx.error_hint(
            v,
            format!(
                "{what} `{name}` takes its content from both `{}` and `{}`",
                sources[0], sources[1]
            ),
            "keep one of `file:`, `environment:` and `content:`",
        );
    }
    if o.file.is_none() && o.environment.is_none() && o.content.is_none() && !o.external {
        ctx.error_hint(
            v,
            format!("{what} `{name}` says nowhere where its content comes from"),
            "give it `file:`, `environment:`, `content:` or `external: true`",
        );
    }
    o
}

/// `driver_opts`: a mapping to strings or numbers, as compose's schema has it.
fn driver_opts_ok(ctx: &mut Ctx<'_>, v: &Node) -> bool {
    let errors = ctx.diags.errors().count();
    for (_, name, ov) in ctx.entries(v, "`driver_opts`") {
        if !matches!(ov.value, Value::Str(_) | Value::Int(_) | Value::Float(_)) {
            ctx.error(
                ov,
                format!(
                    "driver option `{name}` must be a string or a number, found {}",
                    ov.kind()
                ),
            );
        }
    }
    ctx.diags.errors().count() == errors
}

/// A network's `ipam`: `driver`, `config` (subnets with their ranges, gateways and auxiliary
/// addresses, all strings) and `options` (strings), as compose's schema has it.
fn ipam_ok(ctx: &mut Ctx<'_>, v: &Node) -> bool {
    const POOL_KEYS: &[&str] = &["subnet", "ip_range", "gateway", "aux_addresses"];
    let errors = ctx.diags.errors().count();
    for (k, name, iv) in ctx.entries(v, "`ipam`") {
        match name {
            "driver" => {
                ctx.string(iv, "`ipam.driver`");
            }
            "config" => {
                for pool in iv.as_seq().unwrap_or_default() {
                    for (pk, pname, pv) in ctx.entries(pool, "an `ipam.config` entry") {
                        match pname {
                            "aux_addresses" => {
                                for (_, _, a) in ctx.entries(pv, "`aux_addresses`") {
                                    ctx.string(a, "an auxiliary address");
                                }
                            }
                            "subnet" | "ip_range" | "gateway" => {
                                ctx.string(pv, &format!("`{pname}`"));
                            }
                            other if other.starts_with("x-") => {}
                            other => {
                                ctx.unknown_key(pk, other, "an `ipam.config` entry", POOL_KEYS)
                            }
                        }
                    }
                }
            }
            "options" => {
                for (_, _, ov) in ctx.entries(iv, "`ipam.options`") {
                    ctx.string(ov, "an `ipam` option");
                }
            }
            other if other.starts_with("x-") => {}
            other => ctx.unknown_key(k, other, "`ipam`", &["driver", "config", "options"]),
        }
    }
    ctx.diags.errors().count() == errors
}
