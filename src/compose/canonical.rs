//! The canonical form: the project as `docker compose config` prints it (v2.40), built from the
//! normalized [`Project`].
//!
//! The model is free to fold things for placement (legacy `mem_limit`, `cpus`, `pids_limit` into
//! `deploy.resources`); this module prints what compose prints instead: the legacy keys where
//! they were written ([`Folded`]), the implicit `default` network, project-scoped resource names,
//! the defaults compose fills in (`build.dockerfile`, secret targets, the dependencies implied by
//! `links`, `volumes_from` and `network_mode: service:…`), only the top-level resources that an
//! enabled service uses, and every `$` escaped as `$$` so that the output, loaded again, gives the
//! same values. `tests/it/differential.rs` holds it to docker compose on every project we have.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::model::{parse_bytes, Folded, Project, Service};
use super::normalize::shell_split;
use super::yaml::Node;

/// Which of compose's two outputs to match: they differ in what they leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `config` (YAML): everything below.
    Yaml,
    /// `config --format json`: compose's JSON encoder drops the `x-*` fields of everything but
    /// the project itself.
    Json,
}

/// The project as `docker compose config` prints it in `form` (less the fields Go's JSON encoder
/// always prints empty, which compose's YAML leaves out too: see `tests/it/differential.rs`).
pub fn canonical(project: &Project, form: Form) -> Value {
    let mut root = Map::new();
    root.insert("name".into(), Value::String(project.name.clone()));

    let mut services = Map::new();
    for (name, svc) in &project.services {
        let mut out = service(svc);
        if form == Form::Json {
            json_only(&mut out);
        }
        services.insert(name.clone(), out);
    }

    // Only the resources some enabled service uses are printed.
    let mut networks = BTreeSet::new();
    let mut volumes = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let mut configs = BTreeSet::new();
    for svc in services.values() {
        if let Some(nets) = svc.get("networks").and_then(Value::as_object) {
            networks.extend(nets.keys().cloned());
        }
        for v in svc
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if v.get("type").and_then(Value::as_str) == Some("volume") {
                if let Some(src) = v.get("source").and_then(Value::as_str) {
                    volumes.insert(src.to_string());
                }
            }
        }
        let build_secrets = svc.get("build").and_then(|b| b.get("secrets"));
        for (key, set) in [("secrets", &mut secrets), ("configs", &mut configs)] {
            let refs = svc.get(key).and_then(Value::as_array).into_iter().flatten();
            let from_build = build_secrets
                .filter(|_| key == "secrets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for r in refs.chain(from_build) {
                if let Some(src) = r.get("source").and_then(Value::as_str) {
                    set.insert(src.to_string());
                }
            }
        }
    }
    let project_name = &project.name;
    let section = |used: &BTreeSet<String>, declared: Map<String, Value>| -> Map<String, Value> {
        let mut out = Map::new();
        for name in used {
            let mut entry = match declared.get(name) {
                Some(Value::Object(m)) => m.clone(),
                // Only `default` may be used without being declared (the loader checks).
                _ => Map::new(),
            };
            scope_name(&mut entry, project_name, name);
            labels_as_map(&mut entry);
            // compose-go's IPAM model has no `options`: compose reads and drops them.
            if let Some(Value::Object(ipam)) = entry.get_mut("ipam") {
                ipam.remove("options");
            }
            for key in ["labels", "driver_opts"] {
                if let Some(m) = entry.get_mut(key) {
                    scalars_as_strings(m);
                }
            }
            out.insert(name.clone(), Value::Object(entry));
        }
        out
    };
    let top = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut networks = section(&networks, top(to_value(&project.networks)));
    let mut volumes = section(&volumes, top(to_value(&project.volumes)));
    let mut secrets = section(&secrets, top(to_value(&project.secrets)));
    let mut configs = section(&configs, top(to_value(&project.configs)));
    if form == Form::Json {
        for m in [&mut networks, &mut volumes, &mut secrets, &mut configs] {
            m.values_mut().for_each(without_extensions);
        }
    }

    // compose's YAML prints the models enabled services use (a list of names or a mapping by
    // name in the service); its JSON prints none.
    let mut models = Map::new();
    if form == Form::Yaml {
        for svc in services.values() {
            let used: Vec<&str> = match svc.get("models") {
                Some(Value::Object(m)) => m.keys().map(String::as_str).collect(),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            for name in used {
                if let Some(m) = project.models.get(name) {
                    models.insert(name.to_string(), m.clone());
                }
            }
        }
    }

    root.insert("services".into(), Value::Object(services));
    for (key, m) in [
        ("networks", networks),
        ("volumes", volumes),
        ("secrets", secrets),
        ("configs", configs),
        ("models", models),
    ] {
        if !m.is_empty() {
            root.insert(key.into(), Value::Object(m));
        }
    }
    for (k, v) in &project.extensions {
        root.insert(k.clone(), v.clone());
    }
    let mut root = Value::Object(root);
    escape_dollars(&mut root);
    root
}

/// The top-level keys in the order compose prints them: `name`, `services`, `networks`,
/// `volumes`, `secrets`, `configs`, then extensions (nested mappings stay sorted by key).
pub fn in_compose_order(value: Value) -> indexmap::IndexMap<String, Value> {
    let Value::Object(mut m) = value else {
        return indexmap::IndexMap::new();
    };
    let mut out = indexmap::IndexMap::new();
    for key in [
        "name", "services", "networks", "volumes", "secrets", "configs", "models",
    ] {
        if let Some(v) = m.remove(key) {
            out.insert(key.to_string(), v);
        }
    }
    out.extend(m);
    out
}

/// What compose's JSON encoder does to a service and its YAML encoder does not: it drops the
/// `x-*` fields (of the service and of everything in it), and prints block-I/O devices with Go's
/// field names (`Path`, `Rate`, `Weight`).
fn json_only(service: &mut Value) {
    without_extensions(service);
    let Value::Object(m) = service else {
        return;
    };
    if let Some(Value::Object(blkio)) = m.get_mut("blkio_config") {
        for devices in blkio.values_mut().filter_map(Value::as_array_mut) {
            for d in devices.iter_mut().filter_map(Value::as_object_mut) {
                let entries: Vec<(String, Value)> = std::mem::take(d).into_iter().collect();
                for (k, v) in entries {
                    d.insert(capitalized(&k), v);
                }
            }
        }
    }
}

/// Mappings whose keys are the user's data, not field names: an `x-` key there is kept.
const FREE_FORM: &[&str] = &[
    "labels",
    "environment",
    "annotations",
    "sysctls",
    "driver_opts",
    "options",
    "args",
    "storage_opt",
    "additional_contexts",
];

/// `value` without its `x-*` fields, at every depth (but not inside [`FREE_FORM`] mappings).
fn without_extensions(value: &mut Value) {
    match value {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with("x-"));
            for (k, v) in m.iter_mut() {
                if !FREE_FORM.contains(&k.as_str()) {
                    without_extensions(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_extensions),
        _ => {}
    }
}

/// Which of `service`'s `deploy` values normalization folded in from legacy keys, given the
/// service as written (after `extends`): what [`canonical`] leaves out of `deploy` again.
pub fn folded(written: &Node, service: &Service) -> Folded {
    let deploy = written.get("deploy").filter(|d| !d.is_null());
    let resources = deploy.and_then(|d| d.get("resources"));
    let wrote = |which: &str, key: &str| {
        resources
            .and_then(|r| r.get(which))
            .and_then(|l| l.get(key))
            .is_some_and(|v| !v.is_null())
    };
    Folded {
        deploy: deploy.is_none() && service.deploy.is_some(),
        limits_memory: service.mem_limit.is_some() && !wrote("limits", "memory"),
        limits_cpus: service.cpus.is_some() && !wrote("limits", "cpus"),
        limits_pids: service.pids_limit.is_some() && !wrote("limits", "pids"),
        reservations_memory: service.mem_reservation.is_some() && !wrote("reservations", "memory"),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // The model serializes to JSON by construction (string keys, finite numbers).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `name`: as written, or the key for an external resource, or `<project>_<key>`.
fn scope_name(entry: &mut Map<String, Value>, project: &str, key: &str) {
    if entry.get("name").is_some_and(|n| !n.is_null()) {
        return;
    }
    let external = entry.get("external").and_then(Value::as_bool) == Some(true);
    let name = if external {
        key.to_string()
    } else {
        format!("{project}_{key}")
    };
    entry.insert("name".into(), Value::String(name));
}

/// The values of a string-to-string mapping (`driver_opts`, `labels`, logging `options`) or the
/// items of a list of strings (`group_add`) as strings: `mtu: 1400` prints `"1400"`.
fn scalars_as_strings(m: &mut Value) {
    let values: Box<dyn Iterator<Item = &mut Value>> = match m {
        Value::Object(m) => Box::new(m.values_mut()),
        Value::Array(items) => Box::new(items.iter_mut()),
        _ => return,
    };
    for v in values {
        match v {
            Value::Number(n) => *v = Value::String(n.to_string()),
            Value::Bool(b) => *v = Value::String(b.to_string()),
            _ => {}
        }
    }
}

/// `labels` in list form (`["a=b"]`) become a mapping, as compose prints them.
fn labels_as_map(entry: &mut Map<String, Value>) {
    labels_as_map_at(entry, "labels");
}

/// The list form (`["a=b", "c"]`) of the mapping at `key` as a mapping.
fn labels_as_map_at(entry: &mut Map<String, Value>, key: &str) {
    if let Some(Value::Array(items)) = entry.get(key) {
        let map: Map<String, Value> = items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::String(v.to_string())),
                None => (s.to_string(), Value::String(String::new())),
            })
            .collect();
        entry.insert(key.into(), Value::Object(map));
    }
}

fn service(svc: &Service) -> Value {
    let mut out = match to_value(svc) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    unfold_legacy(svc, &mut out);

    // The implicit `default` network of a service that names none and shares no namespace.
    if svc.networks.is_empty() && svc.network_mode.is_none() {
        out.insert("networks".into(), json!({"default": null}));
    }

    // `links`, `network_mode`, `ipc` and `pid: service:X` imply a dependency restarted with X;
    // `volumes_from` one that is not (compose's order: links, volumes_from, network_mode, ipc,
    // pid; the first one wins).
    let implied: Vec<(&str, bool)> = svc
        .links
        .iter()
        .map(|l| (l.split(':').next().unwrap_or(""), true))
        .chain(
            svc.volumes_from
                .iter()
                .filter(|v| !v.starts_with("container:"))
                .map(|v| (v.split(':').next().unwrap_or(""), false)),
        )
        .chain(
            svc.network_mode
                .as_deref()
                .and_then(|m| m.strip_prefix("service:"))
                .map(|t| (t, true)),
        )
        // `ipc: service:X` and `pid: service:X` too (kept verbatim in `extra`).
        .chain(["ipc", "pid"].into_iter().filter_map(|key| {
            svc.extra
                .get(key)
                .and_then(Value::as_str)
                .and_then(|m| m.strip_prefix("service:"))
                .map(|t| (t, true))
        }))
        .filter(|(t, _)| !t.is_empty())
        .collect();
    if !implied.is_empty() {
        let deps = out
            .entry("depends_on")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(deps) = deps {
            for (t, restart) in implied {
                deps.entry(t.to_string()).or_insert_with(|| {
                    if restart {
                        json!({"condition": "service_started", "restart": true, "required": true})
                    } else {
                        json!({"condition": "service_started", "required": true})
                    }
                });
            }
        }
    }

    if let Some(Value::Object(build)) = out.get_mut("build") {
        if !build.contains_key("dockerfile") && !build.contains_key("dockerfile_inline") {
            build.insert("dockerfile".into(), json!("Dockerfile"));
        }
        if let Some(size) = build.get_mut("shm_size") {
            in_bytes(size);
        }
        if let Some(Value::Array(secrets)) = build.get_mut("secrets") {
            for s in secrets.iter_mut() {
                if let Value::String(source) = s {
                    *s = json!({"source": source});
                }
            }
        }
        if let Some(hosts) = build.get_mut("extra_hosts") {
            *hosts = extra_hosts(hosts);
        }
        labels_as_map(build);
        if let Some(labels) = build.get_mut("labels") {
            scalars_as_strings(labels);
        }
    }
    if let Some(Value::Object(networks)) = out.get_mut("networks") {
        for n in networks.values_mut().filter_map(Value::as_object_mut) {
            if let Some(opts) = n.get_mut("driver_opts") {
                scalars_as_strings(opts);
            }
        }
    }
    if let Some(size) = out.get_mut("shm_size") {
        in_bytes(size);
    }

    // File modes print in octal, as strings (`0440`).
    for key in ["secrets", "configs"] {
        if let Some(Value::Array(refs)) = out.get_mut(key) {
            for r in refs.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(mode) = r.get_mut("mode") {
                    if let Some(m) = mode.as_u64() {
                        *mode = Value::String(format!("0{m:o}"));
                    }
                }
            }
        }
    }

    if let Some(Value::Array(secrets)) = out.get_mut("secrets") {
        for s in secrets.iter_mut().filter_map(Value::as_object_mut) {
            if !s.contains_key("target") {
                let source = s.get("source").and_then(Value::as_str).unwrap_or("");
                let target = format!("/run/secrets/{source}");
                s.insert("target".into(), Value::String(target));
            }
        }
    }

    if let Some(Value::Array(volumes)) = out.get_mut("volumes") {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            mount(v);
        }
    }

    if let Some(Value::Array(devices)) = out.get_mut("devices") {
        for d in devices.iter_mut() {
            if let Some(s) = d.as_str() {
                *d = device(s);
            }
        }
    }

    for key in ["dns", "dns_search", "dns_opt"] {
        if let Some(v @ Value::String(_)) = out.get_mut(key) {
            *v = Value::Array(vec![v.take()]);
        }
    }

    if let Some(options) = out.get_mut("logging").and_then(|l| l.get_mut("options")) {
        scalars_as_strings(options);
    }
    // Go leaves these booleans out when false (`attach` and `init` are pointers: kept).
    for key in ["tty", "stdin_open", "oom_kill_disable", "use_api_socket"] {
        if out.get(key) == Some(&Value::Bool(false)) {
            out.remove(key);
        }
    }
    // Group names and ids are strings.
    if let Some(groups) = out.get_mut("group_add") {
        scalars_as_strings(groups);
    }
    for key in ["memswap_limit", "mem_swappiness"] {
        if let Some(size) = out.get_mut(key) {
            in_bytes(size);
        }
    }
    if let Some(Value::Object(blkio)) = out.get_mut("blkio_config") {
        for devices in blkio.values_mut().filter_map(Value::as_array_mut) {
            for d in devices.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(rate) = d.get_mut("rate") {
                    in_bytes(rate);
                }
            }
        }
    }
    // `gpus: all` is every device.
    if out.get("gpus").and_then(Value::as_str) == Some("all") {
        out.insert("gpus".into(), json!([{"count": -1}]));
    }
    if out.get("pull_policy").and_then(Value::as_str) == Some("if_not_present") {
        out.insert("pull_policy".into(), json!("missing"));
    }
    // Lifecycle hooks: a string command is split as `command` is.
    for key in ["post_start", "pre_stop"] {
        if let Some(Value::Array(hooks)) = out.get_mut(key) {
            for h in hooks.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(Value::String(cmd)) = h.get("command") {
                    if let Ok(words) = shell_split(cmd) {
                        h.insert("command".into(), json!(words));
                    }
                }
            }
        }
    }

    // `annotations` in list form print as a mapping (`b` alone is `b: ""`), as `labels` do.
    labels_as_map_at(&mut out, "annotations");
    if let Some(a) = out.get_mut("annotations") {
        scalars_as_strings(a);
    }
    if let Some(hosts) = out.get_mut("extra_hosts") {
        *hosts = extra_hosts(hosts);
        if let Value::Array(items) = hosts {
            items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    Value::Object(out)
}

/// Legacy keys print where they were written; `deploy` only what the user wrote there (and
/// `replicas` from `scale` when there is a `deploy`, as compose does).
fn unfold_legacy(svc: &Service, out: &mut Map<String, Value>) {
    let f = svc.folded;
    if f.deploy {
        out.remove("deploy");
        return;
    }
    let Some(Value::Object(deploy)) = out.get_mut("deploy") else {
        return;
    };
    let Some(Value::Object(resources)) = deploy.get_mut("resources") else {
        return;
    };
    for (which, fields) in [
        (
            "limits",
            vec![
                ("memory", f.limits_memory),
                ("cpus", f.limits_cpus),
                ("pids", f.limits_pids),
            ],
        ),
        ("reservations", vec![("memory", f.reservations_memory)]),
    ] {
        let Some(Value::Object(amounts)) = resources.get_mut(which) else {
            continue;
        };
        let mut removed = false;
        for (key, folded) in fields {
            if folded {
                amounts.remove(key);
                removed = true;
            }
        }
        if removed && amounts.is_empty() {
            resources.remove(which);
        }
    }
    if resources.is_empty() {
        deploy.remove("resources");
    }
}

/// A mount as compose prints it: the target cleaned, no `create_host_path` on a named volume,
/// tmpfs sizes in bytes.
fn mount(v: &mut Map<String, Value>) {
    if let Some(Value::String(t)) = v.get_mut("target") {
        *t = clean_path(t);
    }
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "volume" {
        if let Some(Value::Object(bind)) = v.get_mut("bind") {
            bind.remove("create_host_path");
            if bind.is_empty() {
                v.remove("bind");
            }
        }
    }
    if let Some(Value::Object(bind)) = v.get_mut("bind") {
        // Go leaves a false boolean out.
        if bind.get("create_host_path") == Some(&Value::Bool(false)) {
            bind.remove("create_host_path");
        }
    }
    if let Some(Value::Object(tmpfs)) = v.get_mut("tmpfs") {
        if let Some(size) = tmpfs.get_mut("size") {
            in_bytes(size);
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A size (`64m`, `1024`) as compose prints it: a string of bytes.
fn in_bytes(size: &mut Value) {
    let bytes = match &*size {
        Value::String(s) => parse_bytes(s).ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    // `-1` (no limit) prints as the string `"-1"`.
    if let Value::Number(n) = &*size {
        if n.as_i64().is_some_and(|i| i < 0) {
            *size = Value::String(n.to_string());
            return;
        }
    }
    if let Some(b) = bytes {
        *size = Value::String(b.to_string());
    }
}

/// Go's `path.Clean` for the absolute paths mount targets are: no empty or `.` segments, `..`
/// applied, no trailing slash.
fn clean_path(p: &str) -> String {
    if !p.starts_with('/') {
        return p.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `SOURCE[:TARGET[:PERMISSIONS]]` in long form.
fn device(s: &str) -> Value {
    let parts: Vec<&str> = s.splitn(3, ':').collect();
    let (source, target, permissions) = match parts.as_slice() {
        [s] => (*s, *s, "rwm"),
        [s, t] => (*s, *t, "rwm"),
        [s, t, p] => (*s, *t, *p),
        _ => (s, s, "rwm"),
    };
    json!({"source": source, "target": target, "permissions": permissions})
}

/// `extra_hosts` as a list of `HOST=ADDRESS`, from a mapping or from `HOST:ADDRESS` entries.
fn extra_hosts(v: &Value) -> Value {
    let entry = |host: &str, addr: &Value| match addr {
        Value::String(a) => format!("{host}={a}"),
        Value::Array(a) => {
            let all: Vec<String> = a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
                .collect();
            format!("{host}={}", all.join(","))
        }
        other => format!("{host}={other}"),
    };
    match v {
        // `host: [a, b]` is one entry per address, as compose prints it.
        Value::Object(m) => Value::Array(
            m.iter()
                .flat_map(|(h, a)| match a {
                    Value::Array(all) => all.iter().map(|x| entry(h, x)).collect(),
                    _ => vec![entry(h, a)],
                })
                .map(Value::String)
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| match i.as_str() {
                    Some(s) if !s.contains('=') => match s.split_once(':') {
                        Some((h, a)) => Value::String(format!("{h}={a}")),
                        None => i.clone(),
                    },
                    _ => i.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every `$` in every string (keys too) doubled: loaded again, `$$` is a literal `$`.
fn escape_dollars(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Array(items) => items.iter_mut().for_each(escape_dollars),
        Value::Object(m) => {
            if m.keys().any(|k| k.contains('$')) {
                let entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
                for (k, mut val) in entries {
                    escape_dollars(&mut val);
                    m.insert(k.replace('$', "$$"), val);
                }
            } else {
                m.values_mut().for_each(escape_dollars);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_built_in_code_prints_its_deploy_the_default_network_and_used_resources_only() {
        use crate::compose::model::{Deploy, Volume};
        let mut project = Project {
            name: "demo".into(),
            ..Project::default()
        };
        project.volumes.insert("data".into(), Volume::default());
        project.volumes.insert("spare".into(), Volume::default());
        let svc = Service {
            name: "web".into(),
            image: Some("nginx".into()),
            deploy: Some(Deploy {
                replicas: Some(2),
                ..Deploy::default()
            }),
            volumes: vec![crate::compose::model::ServiceVolume {
                kind: "volume".into(),
                source: Some("data".into()),
                target: "/data/".into(),
                ..Default::default()
            }],
            ..Service::default()
        };
        project.services.insert("web".into(), svc);
        let v = canonical(&project, Form::Json);
        assert_eq!(v["services"]["web"]["deploy"], json!({"replicas": 2}));
        assert_eq!(v["services"]["web"]["networks"], json!({"default": null}));
        assert_eq!(v["services"]["web"]["volumes"][0]["target"], "/data");
        assert_eq!(v["networks"], json!({"default": {"name": "demo_default"}}));
        assert_eq!(v["volumes"], json!({"data": {"name": "demo_data"}}));
    }

    #[test]
    fn mount_targets_are_cleaned_like_go() {
        assert_eq!(clean_path("/data/"), "/data");
        assert_eq!(clean_path("/a//b/./c/"), "/a/b/c");
        assert_eq!(clean_path("/a/../b"), "/b");
        assert_eq!(clean_path("/"), "/");
    }

    #[test]
    fn devices_in_long_form() {
        assert_eq!(
            device("/dev/kmsg"),
            json!({"source": "/dev/kmsg", "target": "/dev/kmsg", "permissions": "rwm"})
        );
        assert_eq!(
            device("/dev/x:/dev/y:r"),
            json!({"source": "/dev/x", "target": "/dev/y", "permissions": "r"})
        );
    }

    #[test]
    fn extra_hosts_print_as_host_equals_address() {
        assert_eq!(
            extra_hosts(&json!(["a:::1", "b=1.2.3.4", "c:10.0.0.1"])),
            json!(["a=::1", "b=1.2.3.4", "c=10.0.0.1"])
        );
        assert_eq!(extra_hosts(&json!({"h": "1.2.3.4"})), json!(["h=1.2.3.4"]));
        assert_eq!(
            extra_hosts(&json!({"h": ["::1", "1.2.3.4"]})),
            json!(["h=::1", "h=1.2.3.4"])
        );
    }

    #[test]
    fn dollars_are_escaped_in_values_and_keys() {
        let mut v = json!({"k$": ["a$b", {"c": "$$"}]});
        escape_dollars(&mut v);
        assert_eq!(v, json!({"k$$": ["a$$b", {"c": "$$$$"}]}));
    }
}
