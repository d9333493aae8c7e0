//! One service: its keys dispatched to the readers of each part, the relations to other
//! services (`depends_on`, `links`, `volumes_from`, `network_mode`), healthchecks, networks,
//! secret and config references, and the legacy keys folded into `deploy`.

use std::collections::BTreeMap;

use super::build::build;
use super::deploy::deploy;
use super::environment::{env_file_list, label_file_list, read_env_file, read_label_file};
use super::ports::ports;
use super::volumes::{host_path, volumes};
use super::{labels, record, retag, shown, Ctx};
use crate::compose::ledger::{self, Status};
use crate::compose::model::*;
use crate::compose::yaml::{Node, Value};
use crate::diag::Diagnostic;

/// Keys whose meaning depends on others, read after the loop over the service's keys.
#[derive(Default)]
struct Deferred<'n> {
    env_files: Vec<(String, bool, bool, Node)>,
    label_files: Option<&'n Node>,
    environment: Option<&'n Node>,
    networks: Option<&'n Node>,
    network_mode: Option<&'n Node>,
    scale: Option<&'n Node>,
    /// `mem_limit`, `cpus`, `pids_limit`, `mem_reservation`: where each is written.
    legacy: Vec<(&'static str, &'n Node)>,
}

/// Normalizes one service. `key` is its name's node under `services:`.
pub fn service(ctx: &mut Ctx<'_>, name: &str, key: &Node, node: &Node) -> Service {
    let mut svc = Service {
        name: name.to_string(),
        ..Service::default()
    };
    svc.spans.name = ctx.loc(key.loc);
    let place = format!("service `{name}`");
    let mut later = Deferred::default();
    for (k, kname, v) in ctx.entries(node, &place) {
        if kname.starts_with("x-") {
            svc.extra.insert(kname.to_string(), v.to_json());
            continue;
        }
        let Some(rule) = ledger::service_key(kname) else {
            ctx.unknown_key(k, kname, &place, ledger::SERVICE_KEYS);
            continue;
        };
        record(ctx, kname, name, rule, k);
        key_value(ctx, &mut svc, &mut later, k, kname, v);
    }
    // env_file first, `environment` wins.
    for (path, required, raw, at) in &later.env_files {
        read_env_file(ctx, &mut svc.environment, path, *required, *raw, at);
    }
    if let Some(env_node) = later.environment {
        for (k, v) in ctx.dict(env_node, "`environment`") {
            let value = match v {
                Some(v) => Some(v),
                None => ctx.env.get(&k).cloned(),
            };
            svc.environment.insert(k, value);
        }
    }
    // `labels` wins over `label_file`; a later file over an earlier one.
    if let Some(files) = later.label_files {
        let mut from_files = BTreeMap::new();
        for (path, at) in label_file_list(ctx, files) {
            read_label_file(ctx, &mut from_files, &path, at);
        }
        for (k, v) in from_files {
            svc.labels.entry(k).or_insert(v);
        }
    }
    if let (Some(nm), Some(nets)) = (later.network_mode, later.networks) {
        ctx.diags.push(
            Diagnostic::error(format!(
                "service `{name}` sets both `network_mode` and `networks`"
            ))
            .at(nets.loc)
            .note(nm.loc, "`network_mode` is set here")
            .hint(
                "a service either joins networks or shares another namespace: remove one of them",
            ),
        );
    }
    fold_legacy(ctx, &mut svc, later.scale, &later.legacy);
    unique_container_name(ctx, &svc);
    svc
}

/// A container name is unique on a host, so docker compose refuses it with more than one
/// replica.
fn unique_container_name(ctx: &mut Ctx<'_>, svc: &Service) {
    let (Some(cname), Some(at)) = (&svc.container_name, &svc.spans.container_name) else {
        return;
    };
    let replicas = svc.deploy.as_ref().and_then(|d| d.replicas).or(svc.scale);
    let Some(n) = replicas.filter(|&n| n > 1) else {
        return;
    };
    let mut d = Diagnostic::error(format!(
        "service `{}` sets `container_name: {cname}` and {n} replicas, but a container name must be unique",
        svc.name
    ))
    .at(at.clone())
    .hint("remove `container_name` (compose-fleet names each replica), or run one replica");
    if let Some(r) = &svc.spans.replicas {
        d = d.note(r.clone(), "the replicas are set here");
    }
    ctx.diags.push(d);
}

/// Reads one known service key into `svc` (or into `later`, for keys read after the loop).
fn key_value<'n>(
    ctx: &mut Ctx<'_>,
    svc: &mut Service,
    later: &mut Deferred<'n>,
    k: &'n Node,
    kname: &str,
    v: &'n Node,
) {
    match kname {
        "image" => {
            svc.image = ctx.opt_string(v, "`image`");
            svc.spans.image = Some(ctx.loc(v.loc));
        }
        "build" => {
            svc.build = build(ctx, v);
            svc.spans.build = Some(ctx.loc(v.loc));
        }
        "command" => svc.command = ctx.command(v, "`command`"),
        "entrypoint" => svc.entrypoint = ctx.command(v, "`entrypoint`"),
        "environment" => later.environment = Some(v),
        "env_file" => later.env_files = env_file_list(ctx, v),
        "ports" => ports(ctx, svc, v),
        "expose" => {
            svc.expose = match &v.value {
                Value::Seq(items) => items
                    .iter()
                    .filter_map(|i| ctx.scalar(i, "an `expose` entry"))
                    .collect(),
                _ => ctx.string_list(v, "`expose`"),
            }
        }
        "volumes" => volumes(ctx, svc, v),
        "volumes_from" => {
            for (s, at) in service_refs(ctx, v, "a `volumes_from` entry") {
                if let Some(target) = crate::compose::model::volumes_from_service(&s) {
                    svc.spans
                        .dependencies
                        .entry(target.to_string())
                        .or_insert(at);
                }
                svc.volumes_from.push(s);
            }
        }
        "links" => {
            for (s, at) in service_refs(ctx, v, "a `links` entry") {
                let target = crate::compose::model::link_service(&s).to_string();
                svc.spans.dependencies.entry(target).or_insert(at);
                svc.links.push(s);
            }
        }
        "depends_on" => depends_on(ctx, svc, v),
        "healthcheck" => svc.healthcheck = healthcheck(ctx, &svc.name, v),
        "deploy" => svc.deploy = deploy(ctx, &mut svc.spans, &svc.name, v),
        "restart" => svc.restart = restart(ctx, v),
        "networks" => {
            later.networks = Some(k);
            service_networks(ctx, svc, v);
        }
        "network_mode" => {
            later.network_mode = Some(k);
            svc.network_mode = network_mode(ctx, svc, v);
        }
        "secrets" => svc.secrets = file_refs(ctx, v, "secret"),
        "configs" => svc.configs = file_refs(ctx, v, "config"),
        "profiles" => svc.profiles = names(ctx, v, "profiles", "a profile"),
        "labels" => {
            // `label_file` (read after the loop) only adds the labels not written here.
            let written = labels(ctx, v, "`labels`");
            svc.labels.extend(written);
        }
        "label_file" => later.label_files = Some(v),
        "logging" => {
            if let Some(l) = logging(ctx, v) {
                svc.extra.insert(kname.to_string(), l);
            }
        }
        "develop" => {
            if !v.is_null() {
                let mut develop = v.to_json();
                watch_paths(ctx, &mut develop);
                svc.extra.insert(kname.to_string(), develop);
            }
        }
        "container_name" => {
            svc.container_name = ctx.opt_string(v, "`container_name`");
            svc.spans.container_name = Some(Location::from(v.loc));
            if let Some(c) = svc
                .container_name
                .as_deref()
                .filter(|c| !container_name_ok(c))
            {
                ctx.error_hint(
                    v,
                    format!("`{c}` is not a valid container name"),
                    "write a letter or digit followed by letters, digits, `_`, `.` or `-`",
                );
            }
        }
        "hostname" => svc.hostname = ctx.opt_string(v, "`hostname`"),
        "user" => svc.user = ctx.opt_string(v, "`user`"),
        "working_dir" => svc.working_dir = ctx.opt_string(v, "`working_dir`"),
        "read_only" => svc.read_only = ctx.boolean(v, "`read_only`"),
        "privileged" => svc.privileged = ctx.boolean(v, "`privileged`"),
        "tmpfs" => svc.tmpfs = ctx.string_list(v, "`tmpfs`"),
        "ulimits" => svc.ulimits = ulimits(ctx, v),
        "sysctls" => svc.sysctls = labels(ctx, v, "`sysctls`"),
        "cap_add" => svc.cap_add = names(ctx, v, "cap_add", "a capability"),
        "cap_drop" => svc.cap_drop = names(ctx, v, "cap_drop", "a capability"),
        "stop_signal" => svc.stop_signal = ctx.opt_string(v, "`stop_signal`"),
        "stop_grace_period" => svc.stop_grace_period = ctx.duration(v, "`stop_grace_period`"),
        "platform" => svc.platform = ctx.opt_string(v, "`platform`"),
        "shm_size" => svc.shm_size = ctx.bytes(v, "`shm_size`"),
        "mem_limit" => {
            svc.mem_limit = ctx.bytes(v, "`mem_limit`");
            later.legacy.push(("mem_limit", v));
        }
        "mem_reservation" => {
            svc.mem_reservation = ctx.bytes(v, "`mem_reservation`");
            later.legacy.push(("mem_reservation", v));
        }
        "cpus" => {
            svc.cpus = negative_cpus(ctx, v).or_else(|| ctx.float(v, "`cpus`"));
            later.legacy.push(("cpus", v));
        }
        "pids_limit" => {
            svc.pids_limit = ctx.integer(v, "`pids_limit`");
            later.legacy.push(("pids_limit", v));
        }
        "scale" => {
            later.scale = Some(v);
            svc.scale = ctx
                .u32(v, "`scale`")
                .and_then(|n| crate::compose::bounds::replicas(ctx, v, n, "`scale`"));
            svc.spans
                .replicas
                .get_or_insert_with(|| Location::from(v.loc));
        }
        // `extends` is resolved before normalization.
        "extends" => {}
        // The list form is the mapping form without options, as compose prints it.
        "models" if v.as_seq().is_some() => {
            let names: serde_json::Map<String, serde_json::Value> = v
                .as_seq()
                .unwrap_or_default()
                .iter()
                .filter_map(Node::scalar_text)
                .map(|name| (name, serde_json::Value::Null))
                .collect();
            svc.extra
                .insert(kname.to_string(), serde_json::Value::Object(names));
        }
        // Kept verbatim (the fleet does not use them), once checked as compose checks them.
        "dns" | "dns_search" | "dns_opt" | "gpus" | "pull_policy" | "devices" => {
            if checked(ctx, kname, v) && !v.is_null() {
                svc.extra.insert(kname.to_string(), v.to_json());
            }
        }
        _ => {
            if typed(ctx, kname, v) && !v.is_null() {
                svc.extra.insert(kname.to_string(), v.to_json());
            }
        }
    }
}

/// The type compose's schema gives a key the fleet keeps verbatim: a value of another type is
/// an error there, so it is one here (`tty: 5`, `ipc: 5`, `security_opt: label`).
fn typed(ctx: &mut Ctx<'_>, key: &str, v: &Node) -> bool {
    #[derive(Clone, Copy)]
    enum T {
        Str,
        StrOrNull,
        BoolOrStr,
        Bool,
        NumOrStr,
        IntOrStr(i64, i64),
        Strings,
        StrsOrNums,
        OneOf(&'static [&'static str]),
    }
    let t = match key {
        "cgroup_parent" | "cpuset" | "domainname" | "ipc" | "isolation" | "mac_address"
        | "runtime" | "userns_mode" | "uts" | "pull_refresh_after" => T::Str,
        "pid" => T::StrOrNull,
        "attach" | "init" | "oom_kill_disable" | "stdin_open" | "tty" => T::BoolOrStr,
        "use_api_socket" => T::Bool,
        "cpu_period" | "cpu_quota" | "cpu_rt_period" | "cpu_rt_runtime" | "cpu_shares"
        | "memswap_limit" => T::NumOrStr,
        "mem_swappiness" => T::IntOrStr(i64::MIN, i64::MAX),
        "cpu_count" => T::IntOrStr(0, i64::MAX),
        "cpu_percent" => T::IntOrStr(0, 100),
        "oom_score_adj" => T::IntOrStr(-1000, 1000),
        "security_opt" | "device_cgroup_rules" | "external_links" => T::Strings,
        "group_add" => T::StrsOrNums,
        "cgroup" => T::OneOf(&["host", "private"]),
        "annotations" => return scalar_values(ctx, key, v, true),
        "extra_hosts" => return scalar_values(ctx, key, v, false),
        "post_start" | "pre_stop" => return hooks(ctx, key, v),
        _ => return true,
    };
    let scalar = |n: &Node, num: bool| match &n.value {
        Value::Str(_) => true,
        Value::Int(_) | Value::Float(_) => num,
        _ => false,
    };
    let (ok, want) = match t {
        T::Str => (matches!(v.value, Value::Str(_)), "a string".to_string()),
        T::StrOrNull => (
            matches!(v.value, Value::Str(_) | Value::Null),
            "a string".to_string(),
        ),
        T::BoolOrStr => (
            matches!(v.value, Value::Str(_) | Value::Bool(_)),
            "`true`, `false` or a string".to_string(),
        ),
        T::Bool => (
            matches!(v.value, Value::Bool(_)),
            "`true` or `false`".to_string(),
        ),
        T::NumOrStr => (scalar(v, true), "a number or a string".to_string()),
        T::IntOrStr(lo, hi) => {
            let ok = match &v.value {
                Value::Str(_) => true,
                Value::Int(i) => (lo..=hi).contains(i),
                _ => false,
            };
            let want = if lo == i64::MIN {
                "an integer or a string".to_string()
            } else {
                format!("an integer from {lo} to {hi}, or a string")
            };
            (ok, want)
        }
        T::Strings | T::StrsOrNums => {
            let num = matches!(t, T::StrsOrNums);
            let ok = v
                .as_seq()
                .is_some_and(|items| items.iter().all(|i| scalar(i, num)));
            let want = if num {
                "a list of names or numbers"
            } else {
                "a list of strings"
            };
            (ok || v.is_null(), want.to_string())
        }
        T::OneOf(values) => (
            v.as_str().is_some_and(|s| values.contains(&s)),
            values
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" or "),
        ),
    };
    // A size in text must read as one (`-1` is no limit).
    let (ok, want) = match (&v.value, key) {
        (Value::Str(s), "memswap_limit") if ok => (
            s == "-1" || crate::compose::model::parse_bytes(s).is_ok(),
            "a size such as `1g`".to_string(),
        ),
        _ => (ok, want),
    };
    if !ok {
        ctx.error(
            v,
            format!("`{key}` must be {want}, found {}", super::shown(v)),
        );
    }
    ok
}

/// The spec's pattern `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, which compose applies unanchored: some
/// letter or digit followed by one more allowed character, anywhere in the name.
fn container_name_ok(c: &str) -> bool {
    c.as_bytes().windows(2).any(|w| {
        w[0].is_ascii_alphanumeric() && (w[1].is_ascii_alphanumeric() || b"_.-".contains(&w[1]))
    })
}

/// `profiles`, `cap_add`, `cap_drop`: a list of strings only, as compose requires (a lone
/// `profiles: dev` or `profiles: 5` is an error there, not a service that silently disappears).
fn names(ctx: &mut Ctx<'_>, v: &Node, key: &str, one: &str) -> Vec<String> {
    let Some(items) = v.as_seq() else {
        if !v.is_null() {
            ctx.error_hint(
                v,
                format!("`{key}` must be a list of names, found {}", v.kind()),
                format!("write `{key}: [NAME]`"),
            );
        }
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match &item.value {
            Value::Str(s) => Some(s.to_string()),
            _ => {
                ctx.error_hint(
                    item,
                    format!("{one} must be a name, found {}", item.kind()),
                    "quote it if it is meant as a name: `\"5\"`",
                );
                None
            }
        })
        .collect()
}

/// `links` and `volumes_from`: strings naming other services, each with where it is written.
fn service_refs(ctx: &mut Ctx<'_>, v: &Node, what: &str) -> Vec<(String, Location)> {
    v.as_seq()
        .unwrap_or_default()
        .iter()
        .filter_map(|item| Some((ctx.string(item, what)?, Location::from(item.loc))))
        .collect()
}

fn restart(ctx: &mut Ctx<'_>, v: &Node) -> Option<String> {
    let r = ctx.opt_string(v, "`restart`")?;
    let ok = matches!(
        r.as_str(),
        "no" | "always" | "unless-stopped" | "on-failure"
    ) || r
        .strip_prefix("on-failure:")
        .is_some_and(|n| n.parse::<u32>().is_ok());
    if ok {
        return Some(r);
    }
    // docker compose prints any text here; the fleet cannot run it.
    ctx.cannot_run(
        format!("`restart: {r}` is not a restart policy"),
        &Location::from(v.loc),
        Some("use `no`, `always`, `on-failure[:N]` or `unless-stopped`"),
    );
    Some(r)
}

/// `service:NAME` is a dependency; `container:…` cannot run on the fleet; `host` and `none` are
/// honoured (the pod runs in the host's namespace, or with loopback only); the other modes are
/// accepted with a warning.
fn network_mode(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) -> Option<String> {
    let name = svc.name.clone();
    let m = ctx.opt_string(v, "`network_mode`")?;
    if let Some(target) = crate::compose::model::service_ref(&m) {
        svc.spans
            .dependencies
            .insert(target.to_string(), Location::from(v.loc));
    } else if m.starts_with("container:") {
        retag(
            ctx,
            "network_mode",
            &name,
            Status::Rejected,
            "containers outside the project do not exist on the hosts",
        );
        ctx.cannot_run(
            format!("`network_mode: {m}` in service `{name}` cannot run on the fleet"),
            &Location::from(v.loc),
            Some("containers outside the project do not exist on the hosts; use `network_mode: service:NAME`"),
        );
    } else if m == "host" || m == "none" {
        // Honoured: the pod spec carries the mode (plan/podspec.rs).
    } else {
        let reason = "only `service:NAME`, `host` and `none` are honoured; the pod gets its own network namespace on the fleet network";
        retag(ctx, "network_mode", &name, Status::Accepted, reason);
        ctx.diags.push(
            Diagnostic::warning(format!(
                "`network_mode: {m}` in service `{name}` is accepted but not honoured: {reason}"
            ))
            .at(v.loc),
        );
    }
    Some(m)
}

fn ulimits(ctx: &mut Ctx<'_>, v: &Node) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (_, lname, lv) in ctx.entries(v, "`ulimits`") {
        let u = match &lv.value {
            Value::Map(_) => {
                let soft = lv.get("soft").and_then(|n| ctx.integer(n, "`soft`"));
                let hard = lv.get("hard").and_then(|n| ctx.integer(n, "`hard`"));
                match (soft, hard) {
                    (Some(soft), Some(hard)) => Some(Ulimit::Range { soft, hard }),
                    _ => {
                        ctx.error(lv, format!("ulimit `{lname}` needs `soft` and `hard`"));
                        None
                    }
                }
            }
            _ => ctx.integer(lv, "a ulimit").map(Ulimit::Single),
        };
        if let Some(u) = u {
            out.insert(lname.to_string(), u);
        }
    }
    out
}

/// Legacy keys also feed `deploy`, which is what placement reads; conflicts are errors.
fn fold_legacy(
    ctx: &mut Ctx<'_>,
    svc: &mut Service,
    scale_node: Option<&Node>,
    legacy: &[(&'static str, &Node)],
) {
    let needs = svc.scale.is_some()
        || svc.mem_limit.is_some()
        || svc.mem_reservation.is_some()
        || svc.cpus.is_some()
        || svc.pids_limit.is_some();
    if !needs {
        return;
    }
    let name = svc.name.clone();
    let at = |key: &str| {
        legacy
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(|| svc.spans.name.clone(), |(_, n)| Location::from(n.loc))
    };
    // Compose refuses a legacy key and its `deploy` spelling with different values.
    let mut conflicts: Vec<(&str, &str, Location)> = Vec::new();
    let deploy = svc.deploy.get_or_insert_with(Deploy::default);
    if let Some(scale) = svc.scale {
        match deploy.replicas {
            Some(r) if r != scale => {
                let d = Diagnostic::error(format!(
                    "service `{name}` sets `scale: {scale}` and `deploy.replicas: {r}`"
                ))
                .hint("keep one of them (`deploy.replicas` is the current spelling)");
                let d = match scale_node {
                    Some(n) => d.at(n.loc),
                    None => d.at(svc.spans.name.clone()),
                };
                ctx.diags.push(d);
            }
            _ => deploy.replicas = Some(scale),
        }
    }
    let limits = deploy
        .resources
        .limits
        .get_or_insert_with(ResourceAmounts::default);
    match (limits.memory, svc.mem_limit) {
        (Some(a), Some(b)) if a != b => conflicts.push((
            "mem_limit",
            "deploy.resources.limits.memory",
            at("mem_limit"),
        )),
        (None, m) => limits.memory = m,
        _ => {}
    }
    match (limits.cpus, svc.cpus) {
        (Some(a), Some(b)) if a != b => {
            conflicts.push(("cpus", "deploy.resources.limits.cpus", at("cpus")))
        }
        (None, c) => limits.cpus = c,
        _ => {}
    }
    match (limits.pids, svc.pids_limit) {
        (Some(a), Some(b)) if a != b => conflicts.push((
            "pids_limit",
            "deploy.resources.limits.pids",
            at("pids_limit"),
        )),
        (None, p) => limits.pids = p,
        _ => {}
    }
    if limits.memory.is_none()
        && limits.cpus.is_none()
        && limits.pids.is_none()
        && limits.extra.is_empty()
    {
        deploy.resources.limits = None;
    }
    if let Some(m) = svc.mem_reservation {
        let r = deploy
            .resources
            .reservations
            .get_or_insert_with(ResourceAmounts::default);
        match r.memory {
            Some(x) if x != m => conflicts.push((
                "mem_reservation",
                "deploy.resources.reservations.memory",
                at("mem_reservation"),
            )),
            _ => r.memory = Some(m),
        }
    }
    for (legacy_key, deploy_key, loc) in conflicts {
        ctx.diags.push(
            Diagnostic::error(format!(
                "service `{name}` sets `{legacy_key}` and `{deploy_key}` to different values"
            ))
            .at(loc)
            .hint(format!(
                "keep one of them (`{deploy_key}` is the current spelling)"
            )),
        );
    }
}

fn depends_on(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    match &v.value {
        Value::Seq(items) => {
            for item in items {
                if let Some(s) = ctx.string(item, "a `depends_on` entry") {
                    let at = ctx.loc(item.loc);
                    svc.spans.dependencies.insert(s.clone(), at);
                    svc.depends_on.insert(
                        s,
                        Dependency {
                            condition: Condition::ServiceStarted,
                            required: true,
                            restart: false,
                            extensions: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        _ => {
            for (k, name, dv) in ctx.entries(v, "`depends_on`") {
                let mut dep = Dependency {
                    condition: Condition::ServiceStarted,
                    required: true,
                    restart: false,
                    extensions: BTreeMap::new(),
                };
                // A mapping without `condition` (compose's schema requires it); a null entry
                // is the short form merged in from another file. An entry with an unknown key
                // (`condtion`) has its error already.
                let known_keys = match &dv.value {
                    Value::Map(m) => m.iter().all(|(k, _)| {
                        k.as_str().is_some_and(|k| {
                            matches!(k, "condition" | "required" | "restart") || k.starts_with("x-")
                        })
                    }),
                    _ => false,
                };
                if known_keys && dv.get("condition").is_none() {
                    ctx.error_hint(
                        dv,
                        format!("the dependency on `{name}` needs a `condition`"),
                        "write `condition: service_started` (or `service_healthy`, `service_completed_successfully`), or list the service in the short form `depends_on: [NAME]`",
                    );
                }
                for (fk, fname, fv) in ctx.entries(dv, "a `depends_on` entry") {
                    match fname {
                        "condition" => match fv.as_str() {
                            Some("service_started") => dep.condition = Condition::ServiceStarted,
                            Some("service_healthy") => dep.condition = Condition::ServiceHealthy,
                            Some("service_completed_successfully") => {
                                dep.condition = Condition::ServiceCompletedSuccessfully
                            }
                            _ => ctx.error_hint(
                                fv,
                                format!("unknown condition {}", shown(fv)),
                                "use `service_started`, `service_healthy` or `service_completed_successfully`",
                            ),
                        },
                        "required" => dep.required = ctx.boolean(fv, "`required`"),
                        "restart" => dep.restart = ctx.boolean(fv, "`restart`"),
                        other if other.starts_with("x-") => {
                            dep.extensions.insert(other.to_string(), fv.to_json());
                        }
                        other => ctx.unknown_key(fk, other, "a `depends_on` entry", &["condition", "required", "restart"]),
                    }
                }
                let at = ctx.loc(k.loc);
                svc.spans.dependencies.insert(name.to_string(), at);
                svc.depends_on.insert(name.to_string(), dep);
            }
        }
    }
}

const HEALTHCHECK_KEYS: &[&str] = &[
    "disable",
    "interval",
    "retries",
    "test",
    "timeout",
    "start_period",
    "start_interval",
];

fn healthcheck(ctx: &mut Ctx<'_>, service: &str, v: &Node) -> Option<Healthcheck> {
    let mut h = Healthcheck::default();
    let place = format!("the healthcheck of service `{service}`");
    for (k, name, hv) in ctx.entries(v, &place) {
        match name {
            "test" => {
                h.test = match &hv.value {
                    Value::Seq(_) => ctx.string_list(hv, "`test`"),
                    // A string is a shell line, even `NONE` (compose: `[CMD-SHELL, NONE]`).
                    _ => match ctx.string(hv, "`test`") {
                        Some(s) => {
                            if s.trim() == "NONE" {
                                ctx.diags.push(
                                    Diagnostic::warning(
                                        "`test: NONE` written as a string is the shell command `NONE` (as in docker compose), which fails: the service would never be healthy",
                                    )
                                    .at(hv.loc)
                                    .hint("to turn the healthcheck off, write `test: [\"NONE\"]` or `disable: true`"),
                                );
                            }
                            vec!["CMD-SHELL".into(), s]
                        }
                        None => Vec::new(),
                    },
                }
            }
            "interval" => h.interval = ctx.duration(hv, "`interval`"),
            "timeout" => h.timeout = ctx.duration(hv, "`timeout`"),
            "start_period" => h.start_period = ctx.duration(hv, "`start_period`"),
            "start_interval" => h.start_interval = ctx.duration(hv, "`start_interval`"),
            "retries" => h.retries = ctx.unsigned(hv, "`retries`"),
            "disable" => h.disable = ctx.boolean(hv, "`disable`"),
            other if other.starts_with("x-") => {
                h.extensions.insert(other.to_string(), hv.to_json());
            }
            other => ctx.unknown_key(k, other, &place, HEALTHCHECK_KEYS),
        }
    }
    if let (Some(first), Some(test)) = (h.test.first(), v.get("test")) {
        if !matches!(first.as_str(), "CMD" | "CMD-SHELL" | "NONE") {
            ctx.error_hint(
                test,
                format!("a healthcheck `test` list starts with `{first}`"),
                "start it with `CMD` (run the words), `CMD-SHELL` (run a shell line) or `NONE`; or write the test as a string",
            );
        }
    }
    Some(h)
}

fn service_networks(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    match &v.value {
        Value::Seq(items) => {
            for item in items {
                if let Some(n) = ctx.string(item, "a network name") {
                    let at = ctx.loc(item.loc);
                    svc.spans.networks.insert(n.clone(), at);
                    svc.networks.insert(n, None);
                }
            }
        }
        _ => {
            for (key, name, nv) in ctx.entries(v, "`networks`") {
                let at = ctx.loc(key.loc);
                svc.spans.networks.insert(name.to_string(), at);
                if nv.is_null() {
                    svc.networks.insert(name.to_string(), None);
                    continue;
                }
                let mut sn = ServiceNetwork::default();
                for (k, fname, fv) in ctx.entries(nv, "a service network") {
                    match fname {
                        "aliases" => sn.aliases = ctx.string_list(fv, "`aliases`"),
                        "ipv4_address" => sn.ipv4_address = ctx.string(fv, "`ipv4_address`"),
                        "ipv6_address" => sn.ipv6_address = ctx.string(fv, "`ipv6_address`"),
                        "link_local_ips" | "mac_address" | "driver_opts" | "priority"
                        | "gw_priority" | "interface_name" => {
                            if network_option_ok(ctx, fname, fv) {
                                sn.extra.insert(fname.to_string(), fv.to_json());
                            }
                        }
                        other if other.starts_with("x-") => {
                            sn.extra.insert(fname.to_string(), fv.to_json());
                        }
                        other => ctx.unknown_key(
                            k,
                            other,
                            "a service network",
                            &[
                                "aliases",
                                "ipv4_address",
                                "ipv6_address",
                                "link_local_ips",
                                "mac_address",
                                "driver_opts",
                                "priority",
                                "gw_priority",
                                "interface_name",
                            ],
                        ),
                    }
                }
                svc.networks.insert(name.to_string(), Some(sn));
            }
        }
    }
}

fn file_refs(ctx: &mut Ctx<'_>, v: &Node, what: &'static str) -> Vec<FileReference> {
    let mut out = Vec::new();
    for item in v.as_seq().unwrap_or_default() {
        match &item.value {
            Value::Map(_) => {
                let mut r = FileReference::default();
                let mut source_at = None;
                for (k, name, fv) in ctx.entries(item, &format!("a {what} reference")) {
                    match name {
                        "source" => {
                            r.source = ctx.string(fv, "`source`").unwrap_or_default();
                            source_at = Some(fv.loc);
                        }
                        "target" => r.target = ctx.string(fv, "`target`"),
                        "uid" => r.uid = ctx.string(fv, "`uid`"),
                        "gid" => r.gid = ctx.string(fv, "`gid`"),
                        "mode" => {
                            r.mode = match &fv.value {
                                Value::Int(i) => u32::try_from(*i).ok(),
                                Value::Str(s) => {
                                    u32::from_str_radix(s.trim_start_matches("0o"), 8).ok()
                                }
                                _ => None,
                            };
                            if r.mode.is_none() {
                                ctx.error(
                                    fv,
                                    format!(
                                        "`mode` must be a file mode like `0440`, found {}",
                                        shown(fv)
                                    ),
                                );
                            }
                        }
                        other if other.starts_with("x-") => {
                            r.extensions.insert(other.to_string(), fv.to_json());
                        }
                        other => ctx.unknown_key(
                            k,
                            other,
                            &format!("a {what} reference"),
                            &["source", "target", "uid", "gid", "mode"],
                        ),
                    }
                }
                if r.source.is_empty() {
                    ctx.error(item, format!("a {what} reference needs `source`"));
                    continue;
                }
                out.push((r, source_at.unwrap_or(item.loc)));
            }
            _ => {
                if let Some(s) = ctx.string(item, &format!("a {what} reference")) {
                    out.push((
                        FileReference {
                            source: s,
                            ..FileReference::default()
                        },
                        item.loc,
                    ));
                }
            }
        }
    }
    for (r, at) in &out {
        ctx.refs.push((what, r.source.clone(), Location::from(*at)));
    }
    out.into_iter().map(|(r, _)| r).collect()
}

/// `develop.watch[].path` made absolute against the project directory, as compose prints it.
fn watch_paths(ctx: &Ctx<'_>, develop: &mut serde_json::Value) {
    let watch = develop
        .get_mut("watch")
        .and_then(serde_json::Value::as_array_mut);
    for w in watch.into_iter().flatten() {
        if let Some(serde_json::Value::String(p)) = w.get_mut("path") {
            *p = host_path(ctx, p);
        }
    }
}

/// `logging`: a `driver` name and `options` whose values are strings or numbers (printed as
/// strings; a null is an empty string), as compose's schema has them: a boolean option is an
/// error there (`compress: true` must be quoted).
fn logging(ctx: &mut Ctx<'_>, v: &Node) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    if v.is_null() {
        return None;
    }
    let mut out = serde_json::Map::new();
    for (k, name, lv) in ctx.entries(v, "`logging`") {
        match name {
            "driver" => {
                if let Some(d) = ctx.opt_string(lv, "`logging.driver`") {
                    out.insert(name.into(), J::String(d));
                }
            }
            "options" => {
                let mut options = serde_json::Map::new();
                for (_, oname, ov) in ctx.entries(lv, "`logging.options`") {
                    let text = match &ov.value {
                        Value::Null => Some(String::new()),
                        Value::Str(_) | Value::Int(_) | Value::Float(_) => ov.scalar_text(),
                        _ => {
                            let hint = match &ov.value {
                                Value::Bool(b) => format!("quote it: `\"{b}\"`"),
                                _ => "write a string or a number".to_string(),
                            };
                            ctx.error_hint(
                                ov,
                                format!(
                                    "logging option `{oname}` must be a string or a number, found {}",
                                    ov.kind()
                                ),
                                hint,
                            );
                            None
                        }
                    };
                    if let Some(t) = text {
                        options.insert(oname.to_string(), J::String(t));
                    }
                }
                out.insert(name.into(), J::Object(options));
            }
            other if other.starts_with("x-") => {
                out.insert(other.to_string(), lv.to_json());
            }
            other => ctx.unknown_key(k, other, "`logging`", &["driver", "options"]),
        }
    }
    Some(J::Object(out))
}

/// The checks compose's schema makes of keys the fleet keeps verbatim: `dns`, `dns_search` (a
/// string or a list of strings), `dns_opt` (a list of strings), `gpus` (`all` or a list),
/// `pull_policy` (a known policy) and `devices` (strings, or mappings with a `source`).
fn checked(ctx: &mut Ctx<'_>, key: &str, v: &Node) -> bool {
    let errors = ctx.diags.errors().count();
    let what = format!("`{key}`");
    match key {
        "dns" | "dns_search" => {
            ctx.string_list(v, &what);
        }
        "dns_opt" => match v.as_seq() {
            Some(items) => items.iter().for_each(|i| {
                ctx.string(i, "a `dns_opt` entry");
            }),
            None if v.is_null() => {}
            None => ctx.error(
                v,
                format!("`dns_opt` must be a list of strings, found {}", v.kind()),
            ),
        },
        "gpus" if !(v.as_str() == Some("all") || v.as_seq().is_some() || v.is_null()) => {
            ctx.error_hint(
                v,
                format!(
                    "`gpus` must be `all` or a list of devices, found {}",
                    shown(v)
                ),
                "write `gpus: all`, or a list such as `[{driver: nvidia, count: 1}]`",
            );
        }
        "pull_policy" => {
            if let Some(p) = ctx.opt_string(v, &what) {
                if !pull_policy_ok(&p) {
                    ctx.error_hint(
                        v,
                        format!("`{p}` is not a pull policy"),
                        "use `always`, `never`, `missing`, `build`, `refresh`, `daily`, `weekly` or `every_<duration>` (`every_12h`)",
                    );
                }
            }
        }
        "devices" => {
            for item in v.as_seq().unwrap_or_default() {
                match &item.value {
                    Value::Map(_) => {
                        if item.get("source").is_none() {
                            ctx.error_hint(
                                item,
                                "a device in long syntax needs `source`",
                                "write `{source: /dev/x, target: /dev/x}` or `/dev/x:/dev/x`",
                            );
                        } else if item.get("target").is_none() {
                            ctx.error_hint(
                                item,
                                "a device in long syntax needs `target`",
                                "write `{source: /dev/x, target: /dev/x}` or `/dev/x:/dev/x`",
                            );
                        }
                    }
                    _ => {
                        ctx.string(item, "a device");
                    }
                }
            }
        }
        _ => {}
    }
    ctx.diags.errors().count() == errors
}

/// compose's schema pattern for `pull_policy`, which is not anchored: a known policy anywhere
/// in the text (`every_` followed by a duration such as `12h` or `1d2h`).
fn pull_policy_ok(p: &str) -> bool {
    const KNOWN: &[&str] = &[
        "always",
        "never",
        "build",
        "if_not_present",
        "missing",
        "refresh",
        "daily",
        "weekly",
    ];
    if KNOWN.iter().any(|k| p.contains(k)) {
        return true;
    }
    p.match_indices("every_").any(|(i, m)| {
        let rest = &p.as_bytes()[i + m.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        digits > 0 && rest.get(digits).is_some_and(|u| b"wdhms".contains(u))
    })
}

/// A negative `cpus`, which compose accepts and prints: loaded, but the fleet cannot run it.
fn negative_cpus(ctx: &mut Ctx<'_>, v: &Node) -> Option<f64> {
    let n = match &v.value {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if !(n.is_finite() && n < 0.0) {
        return None;
    }
    ctx.cannot_run(
        format!(
            "`cpus: {}` is negative",
            v.scalar_text().unwrap_or_default()
        ),
        &Location::from(v.loc),
        Some("give the number of CPUs the service may use, such as `0.5`"),
    );
    Some(n)
}

/// `annotations` (a list, or a mapping to scalars) and `extra_hosts` (a list of strings, or a
/// mapping to strings or lists of strings), as compose's schema has them.
fn scalar_values(ctx: &mut Ctx<'_>, key: &str, v: &Node, annotations: bool) -> bool {
    let errors = ctx.diags.errors().count();
    match &v.value {
        Value::Seq(items) => {
            for i in items {
                ctx.string(i, &format!("an entry of `{key}`"));
            }
        }
        Value::Map(_) => {
            for (_, name, value) in ctx.entries(v, &format!("`{key}`")) {
                let ok = match &value.value {
                    Value::Str(_) => true,
                    Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => annotations,
                    Value::Seq(items) => {
                        !annotations && items.iter().all(|i| matches!(i.value, Value::Str(_)))
                    }
                    Value::Map(_) => false,
                };
                if !ok {
                    let want = if annotations {
                        "a string, a number or a boolean"
                    } else {
                        "an address (a string) or a list of addresses"
                    };
                    ctx.error(
                        value,
                        format!("`{key}.{name}` must be {want}, found {}", value.kind()),
                    );
                }
            }
        }
        Value::Null => {}
        _ => ctx.error(
            v,
            format!("`{key}` must be a list or a mapping, found {}", v.kind()),
        ),
    }
    ctx.diags.errors().count() == errors
}

/// `post_start` / `pre_stop`: a list of hooks, each with a `command` (a string or a list).
fn hooks(ctx: &mut Ctx<'_>, key: &str, v: &Node) -> bool {
    let errors = ctx.diags.errors().count();
    for hook in v.as_seq().unwrap_or_default() {
        match hook.get("command") {
            None => ctx.error_hint(
                hook,
                format!("a `{key}` hook needs `command`"),
                "write `command: [\"sh\", \"-c\", \"…\"]` (the other keys are optional)",
            ),
            Some(c) if !matches!(c.value, Value::Str(_) | Value::Seq(_)) => ctx.error(
                c,
                format!(
                    "the `command` of a `{key}` hook must be a string or a list, found {}",
                    c.kind()
                ),
            ),
            Some(_) => {}
        }
    }
    if !v.is_null() && v.as_seq().is_none() {
        ctx.error(
            v,
            format!("`{key}` must be a list of hooks, found {}", v.kind()),
        );
    }
    ctx.diags.errors().count() == errors
}

/// The per-network options of a service, typed as compose's schema types them.
fn network_option_ok(ctx: &mut Ctx<'_>, key: &str, v: &Node) -> bool {
    let errors = ctx.diags.errors().count();
    let what = format!("`{key}`");
    match key {
        "link_local_ips" => match v.as_seq() {
            Some(items) => items.iter().for_each(|i| {
                ctx.string(i, "a link-local address");
            }),
            None => ctx.error(
                v,
                format!(
                    "`link_local_ips` must be a list of addresses, found {}",
                    v.kind()
                ),
            ),
        },
        "mac_address" | "interface_name" => {
            ctx.string(v, &what);
        }
        "priority" | "gw_priority" if !matches!(v.value, Value::Int(_) | Value::Float(_)) => {
            ctx.error(v, format!("{what} must be a number, found {}", shown(v)));
        }
        "driver_opts" => {
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
        }
        _ => {}
    }
    ctx.diags.errors().count() == errors
}
