//! `deploy`: mode, replicas, resources, placement, restart and update policies.

use super::{labels, record, Ctx};
use crate::compose::ledger;
use crate::compose::model::*;
use crate::compose::yaml::Node;

pub(super) fn deploy(
    ctx: &mut Ctx<'_>,
    spans: &mut ServiceSpans,
    service: &str,
    v: &Node,
) -> Option<Deploy> {
    if v.is_null() {
        return None;
    }
    let mut d = Deploy::default();
    let place = format!("`deploy` of service `{service}`");
    for (k, name, dv) in ctx.entries(v, &place) {
        if name.starts_with("x-") {
            d.extra.insert(name.to_string(), dv.to_json());
            continue;
        }
        let Some(rule) = ledger::deploy_key(name) else {
            ctx.unknown_key(k, name, &place, ledger::DEPLOY_KEYS);
            continue;
        };
        let path = ledger::deploy_path(name).unwrap_or("deploy");
        record(ctx, path, service, rule, k);
        match name {
            "mode" => {
                if let Some(m) = ctx.string(dv, "`deploy.mode`") {
                    if !matches!(
                        m.as_str(),
                        "replicated" | "global" | "replicated-job" | "global-job"
                    ) {
                        // docker compose prints any text here; the fleet cannot run it.
                        ctx.cannot_run(
                            format!("unknown deploy mode `{m}`"),
                            &Location::from(dv.loc),
                            Some("use `replicated` or `global`"),
                        );
                    }
                    d.mode = Some(m);
                }
            }
            "replicas" => {
                d.replicas = ctx.u32(dv, "`deploy.replicas`").and_then(|n| {
                    crate::compose::bounds::replicas(ctx, dv, n, "`deploy.replicas`")
                });
                spans.replicas = Some(ctx.loc(dv.loc));
            }
            "resources" => {
                for (rk, rname, rv) in ctx.entries(dv, "`deploy.resources`") {
                    match rname {
                        "limits" => d.resources.limits = Some(amounts(ctx, rv, "limits")),
                        "reservations" => {
                            d.resources.reservations = Some(amounts(ctx, rv, "reservations"))
                        }
                        other if other.starts_with("x-") => {
                            d.resources
                                .extensions
                                .insert(other.to_string(), rv.to_json());
                        }
                        other => ctx.unknown_key(
                            rk,
                            other,
                            "`deploy.resources`",
                            &["limits", "reservations"],
                        ),
                    }
                }
            }
            "placement" => {
                for (pk, pname, pv) in ctx.entries(dv, "`deploy.placement`") {
                    match pname {
                        "constraints" => {
                            for c in pv.as_seq().unwrap_or_default() {
                                if let Some(s) = ctx.string(c, "a placement constraint") {
                                    d.placement.constraints.push(s);
                                    spans.constraints.push(Location::from(c.loc));
                                }
                            }
                        }
                        "preferences" => {
                            for p in pv.as_seq().unwrap_or_default() {
                                match p.get("spread").and_then(|s| ctx.string(s, "`spread`")) {
                                    Some(spread) => {
                                        d.placement.preferences.push(PlacementPreference { spread })
                                    }
                                    None => ctx.error(
                                        p,
                                        "a placement preference needs `spread: node.labels.NAME`",
                                    ),
                                }
                            }
                        }
                        "max_replicas_per_node" => {
                            d.placement.max_replicas_per_node =
                                ctx.u32(pv, "`max_replicas_per_node`")
                        }
                        other if other.starts_with("x-") => {
                            d.placement
                                .extensions
                                .insert(other.to_string(), pv.to_json());
                        }
                        other => ctx.unknown_key(
                            pk,
                            other,
                            "`deploy.placement`",
                            &["constraints", "preferences", "max_replicas_per_node"],
                        ),
                    }
                }
            }
            "restart_policy" => {
                let mut r = RestartPolicy::default();
                for (rk, rname, rv) in ctx.entries(dv, "`restart_policy`") {
                    match rname {
                        "condition" => r.condition = ctx.string(rv, "`condition`"),
                        "delay" => r.delay = ctx.duration(rv, "`delay`"),
                        "max_attempts" => r.max_attempts = ctx.unsigned(rv, "`max_attempts`"),
                        "window" => r.window = ctx.duration(rv, "`window`"),
                        other if other.starts_with("x-") => {
                            r.extensions.insert(other.to_string(), rv.to_json());
                        }
                        other => ctx.unknown_key(
                            rk,
                            other,
                            "`restart_policy`",
                            &["condition", "delay", "max_attempts", "window"],
                        ),
                    }
                }
                d.restart_policy = Some(r);
            }
            "update_config" | "rollback_config" => {
                let mut u = UpdateConfig::default();
                for (uk, uname, uv) in ctx.entries(dv, name) {
                    match uname {
                        "parallelism" => u.parallelism = ctx.unsigned(uv, "`parallelism`"),
                        "delay" => u.delay = ctx.duration(uv, "`delay`"),
                        "failure_action" => u.failure_action = ctx.string(uv, "`failure_action`"),
                        "monitor" => u.monitor = ctx.duration(uv, "`monitor`"),
                        "max_failure_ratio" => {
                            u.max_failure_ratio = ctx.float(uv, "`max_failure_ratio`")
                        }
                        "order" => {
                            u.order = ctx.string(uv, "`order`");
                            if let Some(o) = u.order.as_deref() {
                                if o != "start-first" && o != "stop-first" {
                                    ctx.error_hint(
                                        uv,
                                        format!("`order: {o}` is not an update order"),
                                        "use `stop-first` or `start-first`",
                                    );
                                }
                            }
                        }
                        other if other.starts_with("x-") => {
                            u.extensions.insert(other.to_string(), uv.to_json());
                        }
                        other => ctx.unknown_key(
                            uk,
                            other,
                            &format!("`{name}`"),
                            &[
                                "parallelism",
                                "delay",
                                "failure_action",
                                "monitor",
                                "max_failure_ratio",
                                "order",
                            ],
                        ),
                    }
                }
                if name == "update_config" {
                    d.update_config = Some(u);
                } else {
                    d.rollback_config = Some(u);
                }
            }
            "labels" => d.labels = labels(ctx, dv, "`deploy.labels`"),
            _ => {
                d.extra.insert(name.to_string(), dv.to_json());
            }
        }
    }
    Some(d)
}

fn amounts(ctx: &mut Ctx<'_>, v: &Node, which: &str) -> ResourceAmounts {
    let mut a = ResourceAmounts::default();
    let place = format!("`deploy.resources.{which}`");
    for (k, name, av) in ctx.entries(v, &place) {
        match name {
            "cpus" => a.cpus = ctx.float(av, "`cpus`"),
            "memory" => a.memory = ctx.bytes(av, "`memory`"),
            "pids" => a.pids = ctx.integer(av, "`pids`"),
            "devices" if which == "reservations" => {
                let mut devices = av.to_json();
                for (d, node) in devices
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .zip(av.as_seq().unwrap_or_default())
                {
                    if node.get("capabilities").is_none() {
                        ctx.error_hint(
                            node,
                            "a reserved device needs `capabilities`",
                            "write e.g. `{capabilities: [gpu], count: 1}`",
                        );
                    }
                    // `count: all` is every device, which compose prints as -1.
                    if d.get("count").and_then(serde_json::Value::as_str) == Some("all") {
                        d["count"] = serde_json::json!(-1);
                    }
                }
                a.extra.insert(name.to_string(), devices);
            }
            "generic_resources" if which == "reservations" => {
                a.extra.insert(name.to_string(), av.to_json());
            }
            other if other.starts_with("x-") => {
                a.extra.insert(other.to_string(), av.to_json());
            }
            other => {
                let known: &[&str] = if which == "limits" {
                    &["cpus", "memory", "pids"]
                } else {
                    &["cpus", "memory", "devices", "generic_resources"]
                };
                ctx.unknown_key(k, other, &place, known)
            }
        }
    }
    a
}
