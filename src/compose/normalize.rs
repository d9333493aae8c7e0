//! From the merged, interpolated YAML tree to the typed [`model`](super::model): every short
//! syntax expanded, sizes in bytes, durations parsed, every key checked against the spec (unknown
//! keys get a "did you mean") and classified in the fidelity ledger.

use std::collections::BTreeMap;
use std::path::Path;

use super::dotenv;
use super::ledger::{self, Ledger, Rule, Status};
use super::model::{self, *};
use super::source::{absolute, FileSource};
use super::yaml::{Node, Value};
use super::Environment;
use crate::diag::{Diagnostic, Diagnostics, SourceMap};

/// What normalization needs besides the tree.
pub struct Ctx<'a> {
    pub diags: &'a mut Diagnostics,
    pub ledger: &'a mut Ledger,
    pub sources: &'a mut SourceMap,
    pub project_dir: &'a Path,
    /// Variables for `environment` entries without a value and for `env_file` interpolation.
    pub env: &'a Environment,
    pub fs: &'a dyn FileSource,
    /// Every secret/config reference (`secret`/`config`, source, where), checked against the
    /// top-level definitions once all services are read.
    pub refs: Vec<(&'static str, String, Location)>,
    /// The input bounds in force ([`super::bounds`] checks replicas against them).
    pub limits: &'a crate::limits::Limits,
}

impl Ctx<'_> {
    fn error(&mut self, at: &Node, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(msg).at(at.loc.clone()));
    }

    fn error_hint(&mut self, at: &Node, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .push(Diagnostic::error(msg).at(at.loc.clone()).hint(hint));
    }

    fn unknown_key(&mut self, key: &Node, name: &str, place: &str, known: &[&str]) {
        let mut d =
            Diagnostic::error(format!("unknown key `{name}` in {place}")).at(key.loc.clone());
        if let Some(s) = ledger::suggest(name, known) {
            d = d.label(format!("did you mean `{s}`?"));
        } else {
            d = d.hint(
                "the Compose Specification has no such key here; extension fields start with `x-`",
            );
        }
        self.diags.push(d);
    }

    /// Iterates a mapping's string keys; reports non-string keys and non-mappings.
    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> Vec<(&'n Node, &'n str, &'n Node)> {
        match &node.value {
            Value::Map(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    match k.as_str() {
                        Some(name) => out.push((k, name, v)),
                        None => self.error_hint(
                            k,
                            format!("a key in {what} must be a string, found {}", k.kind()),
                            "quote the key",
                        ),
                    }
                }
                out
            }
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    node,
                    format!("{what} must be a mapping, found {}", node.kind()),
                );
                Vec::new()
            }
        }
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.scalar_text() {
            Some(s) => Some(s),
            None => {
                self.error(
                    node,
                    format!("{what} must be a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn opt_string(&mut self, node: &Node, what: &str) -> Option<String> {
        if node.is_null() {
            None
        } else {
            self.string(node, what)
        }
    }

    fn boolean(&mut self, node: &Node, what: &str) -> bool {
        match &node.value {
            Value::Bool(b) => *b,
            Value::Str(s) if s.eq_ignore_ascii_case("true") => true,
            Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
            Value::Null => false,
            _ => {
                self.error(
                    node,
                    format!("{what} must be `true` or `false`, found {}", node.kind()),
                );
                false
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str) -> Option<i64> {
        match &node.value {
            Value::Int(i) => Some(*i),
            Value::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.error(node, format!("{what} must be an integer, found `{s}`"));
                    None
                }
            },
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(*f as i64),
            _ => {
                self.error(
                    node,
                    format!("{what} must be an integer, found {}", node.kind()),
                );
                None
            }
        }
    }

    fn unsigned(&mut self, node: &Node, what: &str) -> Option<u64> {
        let i = self.integer(node, what)?;
        match u64::try_from(i) {
            Ok(u) => Some(u),
            Err(_) => {
                self.error(node, format!("{what} must not be negative, found {i}"));
                None
            }
        }
    }

    fn u32(&mut self, node: &Node, what: &str) -> Option<u32> {
        let u = self.unsigned(node, what)?;
        match u32::try_from(u) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(node, format!("{what} is too large: {u}"));
                None
            }
        }
    }

    fn float(&mut self, node: &Node, what: &str) -> Option<f64> {
        let v = match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match v {
            Some(f) if f.is_finite() && f >= 0.0 => Some(f),
            _ => {
                self.error(
                    node,
                    format!(
                        "{what} must be a non-negative number, found {}",
                        shown(node)
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<model::Duration> {
        let text = match &node.value {
            Value::Int(i) => format!("{i}s"),
            _ => self.string(node, what)?,
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node, format!("{what}: {e}"));
                None
            }
        }
    }

    fn bytes(&mut self, node: &Node, what: &str) -> Option<Bytes> {
        let text = match &node.value {
            Value::Int(i) if *i >= 0 => return Some(Bytes(*i as u64)),
            _ => self.string(node, what)?,
        };
        match parse_bytes(&text) {
            Ok(b) => Some(Bytes(b)),
            Err(e) => {
                self.error(node, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A string or a list of strings.
    fn string_list(&mut self, node: &Node, what: &str) -> Vec<String> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|i| self.string(i, what)).collect(),
            Value::Null => Vec::new(),
            _ => self.string(node, what).into_iter().collect(),
        }
    }

    /// `command`/`entrypoint`: a list, or a string split like a shell would.
    fn command(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Null => None,
            Value::Seq(_) => Some(self.string_list(node, what)),
            _ => {
                let s = self.string(node, what)?;
                match shell_split(&s) {
                    Ok(words) => Some(words),
                    Err(e) => {
                        self.error(node, format!("{what}: {e}"));
                        None
                    }
                }
            }
        }
    }

    /// A mapping or a list of `KEY=VALUE` (`KEY` alone → `None`).
    fn dict(&mut self, node: &Node, what: &str) -> Vec<(String, Option<String>)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| {
                    let s = self.string(i, what)?;
                    Some(match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (s, None),
                    })
                })
                .collect(),
            _ => self
                .entries(node, what)
                .into_iter()
                .map(|(_, name, v)| {
                    let value = if v.is_null() {
                        None
                    } else {
                        self.string(v, what)
                    };
                    (name.to_string(), value)
                })
                .collect(),
        }
    }
}

fn shown(node: &Node) -> String {
    node.scalar_text()
        .map_or_else(|| node.kind().to_string(), |s| format!("`{s}`"))
}

/// Splits a command string into words as a POSIX shell would (quotes, backslashes), without
/// expanding anything.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("`{s}` has an unclosed `'`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("`{s}` has an unclosed `\"`")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("`{s}` has an unclosed `\"`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Normalizes one service. `key` is its name's node under `services:`.
pub fn service(ctx: &mut Ctx<'_>, name: &str, key: &Node, node: &Node) -> Service {
    let mut svc = Service {
        name: name.to_string(),
        ..Service::default()
    };
    svc.spans.name = key.loc.clone();
    let place = format!("service `{name}`");
    let mut env_files: Vec<(String, bool, bool, Node)> = Vec::new();
    let mut environment: Option<&Node> = None;
    let mut networks_node: Option<&Node> = None;
    let mut network_mode_node: Option<&Node> = None;
    let mut scale_node: Option<&Node> = None;
    let entries = ctx.entries(node, &place);
    for (k, kname, v) in entries {
        if kname.starts_with("x-") {
            svc.extra.insert(kname.to_string(), v.to_json());
            continue;
        }
        let Some(rule) = ledger::service_key(kname) else {
            ctx.unknown_key(k, kname, &place, ledger::SERVICE_KEYS);
            continue;
        };
        record(ctx, kname, name, rule, k);
        match kname {
            "image" => svc.image = ctx.opt_string(v, "`image`"),
            "build" => svc.build = build(ctx, v),
            "command" => svc.command = ctx.command(v, "`command`"),
            "entrypoint" => svc.entrypoint = ctx.command(v, "`entrypoint`"),
            "environment" => environment = Some(v),
            "env_file" => env_files = env_file_list(ctx, v),
            "ports" => ports(ctx, &mut svc, v),
            "expose" => {
                svc.expose = match &v.value {
                    Value::Seq(items) => items
                        .iter()
                        .filter_map(|i| ctx.string(i, "an `expose` entry"))
                        .collect(),
                    _ => ctx.string_list(v, "`expose`"),
                }
            }
            "volumes" => volumes(ctx, &mut svc, v),
            "volumes_from" => {
                for item in v.as_seq().unwrap_or_default() {
                    if let Some(s) = ctx.string(item, "a `volumes_from` entry") {
                        if !s.starts_with("container:") {
                            let target = s.split(':').next().unwrap_or("").to_string();
                            svc.spans
                                .dependencies
                                .entry(target)
                                .or_insert(item.loc.clone());
                        }
                        svc.volumes_from.push(s);
                    }
                }
            }
            "links" => {
                for item in v.as_seq().unwrap_or_default() {
                    if let Some(s) = ctx.string(item, "a `links` entry") {
                        let target = s.split(':').next().unwrap_or("").to_string();
                        svc.spans
                            .dependencies
                            .entry(target)
                            .or_insert(item.loc.clone());
                        svc.links.push(s);
                    }
                }
            }
            "depends_on" => depends_on(ctx, &mut svc, v),
            "healthcheck" => svc.healthcheck = healthcheck(ctx, name, v),
            "deploy" => svc.deploy = deploy(ctx, &mut svc.spans, name, v),
            "restart" => {
                if let Some(r) = ctx.opt_string(v, "`restart`") {
                    let ok = matches!(
                        r.as_str(),
                        "no" | "always" | "unless-stopped" | "on-failure"
                    ) || r
                        .strip_prefix("on-failure:")
                        .is_some_and(|n| n.parse::<u32>().is_ok());
                    if ok {
                        svc.restart = Some(r);
                    } else {
                        ctx.error_hint(
                            v,
                            format!("`restart: {r}` is not a restart policy"),
                            "use `no`, `always`, `on-failure[:N]` or `unless-stopped`",
                        );
                    }
                }
            }
            "networks" => {
                networks_node = Some(k);
                service_networks(ctx, &mut svc, v);
            }
            "network_mode" => {
                network_mode_node = Some(k);
                if let Some(m) = ctx.opt_string(v, "`network_mode`") {
                    if let Some(target) = m.strip_prefix("service:") {
                        svc.spans
                            .dependencies
                            .insert(target.to_string(), v.loc.clone());
                    } else if m.starts_with("container:") {
                        retag(
                            ctx,
                            "network_mode",
                            name,
                            Status::Rejected,
                            "containers outside the project do not exist on the hosts",
                        );
                        ctx.error_hint(
                            v,
                            format!("`network_mode: {m}` in service `{name}` cannot run on the fleet"),
                            "containers outside the project do not exist on the hosts; use `network_mode: service:NAME`",
                        );
                    } else {
                        let reason = "only `service:NAME` is honoured; the pod gets its own network namespace on the fleet network";
                        retag(ctx, "network_mode", name, Status::Accepted, reason);
                        ctx.diags.push(
                            Diagnostic::warning(format!(
                                "`network_mode: {m}` in service `{name}` is accepted but not honoured: {reason}"
                            ))
                            .at(v.loc.clone()),
                        );
                    }
                    svc.network_mode = Some(m);
                }
            }
            "secrets" => svc.secrets = file_refs(ctx, v, "secret"),
            "configs" => svc.configs = file_refs(ctx, v, "config"),
            "profiles" => svc.profiles = ctx.string_list(v, "`profiles`"),
            "labels" => svc.labels = labels(ctx, v, "`labels`"),
            "container_name" => svc.container_name = ctx.opt_string(v, "`container_name`"),
            "hostname" => svc.hostname = ctx.opt_string(v, "`hostname`"),
            "user" => svc.user = ctx.opt_string(v, "`user`"),
            "working_dir" => svc.working_dir = ctx.opt_string(v, "`working_dir`"),
            "read_only" => svc.read_only = ctx.boolean(v, "`read_only`"),
            "privileged" => svc.privileged = ctx.boolean(v, "`privileged`"),
            "tmpfs" => svc.tmpfs = ctx.string_list(v, "`tmpfs`"),
            "ulimits" => {
                for (_, lname, lv) in ctx.entries(v, "`ulimits`") {
                    let u = match &lv.value {
                        Value::Map(_) => {
                            let soft = lv.get("soft").and_then(|n| ctx.integer(n, "`soft`"));
                            let hard = lv.get("hard").and_then(|n| ctx.integer(n, "`hard`"));
                            match (soft, hard) {
                                (Some(soft), Some(hard)) => Some(Ulimit::Range { soft, hard }),
                                _ => {
                                    ctx.error(
                                        lv,
                                        format!("ulimit `{lname}` needs `soft` and `hard`"),
                                    );
                                    None
                                }
                            }
                        }
                        _ => ctx.integer(lv, "a ulimit").map(Ulimit::Single),
                    };
                    if let Some(u) = u {
                        svc.ulimits.insert(lname.to_string(), u);
                    }
                }
            }
            "sysctls" => svc.sysctls = labels(ctx, v, "`sysctls`"),
            "cap_add" => svc.cap_add = ctx.string_list(v, "`cap_add`"),
            "cap_drop" => svc.cap_drop = ctx.string_list(v, "`cap_drop`"),
            "stop_signal" => svc.stop_signal = ctx.opt_string(v, "`stop_signal`"),
            "stop_grace_period" => svc.stop_grace_period = ctx.duration(v, "`stop_grace_period`"),
            "platform" => svc.platform = ctx.opt_string(v, "`platform`"),
            "mem_limit" => svc.mem_limit = ctx.bytes(v, "`mem_limit`"),
            "mem_reservation" => svc.mem_reservation = ctx.bytes(v, "`mem_reservation`"),
            "cpus" => svc.cpus = ctx.float(v, "`cpus`"),
            "pids_limit" => svc.pids_limit = ctx.integer(v, "`pids_limit`"),
            "scale" => {
                scale_node = Some(v);
                svc.scale = ctx
                    .u32(v, "`scale`")
                    .and_then(|n| super::bounds::replicas(ctx, v, n, "`scale`"));
            }
            // `extends` is resolved before normalization; `profiles` above.
            "extends" => {}
            _ => {
                if !v.is_null() {
                    svc.extra.insert(kname.to_string(), v.to_json());
                }
            }
        }
    }
    // env_file first, `environment` wins.
    for (path, required, raw, at) in env_files {
        read_env_file(ctx, &mut svc.environment, &path, required, raw, &at);
    }
    if let Some(env_node) = environment {
        for (k, v) in ctx.dict(env_node, "`environment`") {
            let value = match v {
                Some(v) => Some(v),
                None => ctx.env.get(&k).cloned(),
            };
            svc.environment.insert(k, value);
        }
    }
    if let (Some(nm), Some(nets)) = (network_mode_node, networks_node) {
        ctx.diags.push(
            Diagnostic::error(format!(
                "service `{name}` sets both `network_mode` and `networks`"
            ))
            .at(nets.loc.clone())
            .note(nm.loc.clone(), "`network_mode` is set here")
            .hint(
                "a service either joins networks or shares another namespace: remove one of them",
            ),
        );
    }
    fold_legacy(ctx, &mut svc, scale_node);
    svc
}

fn record(ctx: &mut Ctx<'_>, key: &str, service: &str, rule: Rule, at: &Node) {
    ctx.ledger.record(key, Some(service), rule, &at.loc);
    match rule.status {
        Status::Honoured => {}
        Status::Accepted => {
            if key != "build" {
                ctx.diags.push(
                    Diagnostic::warning(format!(
                        "`{key}` in service `{service}` is accepted but not honoured: {}",
                        rule.reason
                    ))
                    .at(at.loc.clone()),
                );
            }
        }
        Status::Rejected => ctx.diags.push(
            Diagnostic::error(format!(
                "`{key}` in service `{service}` is not supported: {}",
                rule.reason
            ))
            .at(at.loc.clone()),
        ),
    }
}

/// Changes the ledger entry of `key` in `service` (when a key is honoured only for some values).
fn retag(ctx: &mut Ctx<'_>, key: &str, service: &str, status: Status, reason: &str) {
    if let Some(e) = ctx
        .ledger
        .entries
        .iter_mut()
        .rev()
        .find(|e| e.key == key && e.service.as_deref() == Some(service))
    {
        e.status = status;
        e.reason = reason.to_string();
    }
}

/// Legacy keys also feed `deploy`, which is what placement reads; conflicts are errors.
fn fold_legacy(ctx: &mut Ctx<'_>, svc: &mut Service, scale_node: Option<&Node>) {
    let needs = svc.scale.is_some()
        || svc.mem_limit.is_some()
        || svc.mem_reservation.is_some()
        || svc.cpus.is_some()
        || svc.pids_limit.is_some();
    if !needs {
        return;
    }
    let deploy = svc.deploy.get_or_insert_with(Deploy::default);
    if let Some(scale) = svc.scale {
        match deploy.replicas {
            Some(r) if r != scale => {
                let d = Diagnostic::error(format!(
                    "service `{}` sets `scale: {scale}` and `deploy.replicas: {r}`",
                    svc.name
                ))
                .hint("keep one of them (`deploy.replicas` is the current spelling)");
                let d = match scale_node {
                    Some(n) => d.at(n.loc.clone()),
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
    if limits.memory.is_none() {
        limits.memory = svc.mem_limit;
    }
    if limits.cpus.is_none() {
        limits.cpus = svc.cpus;
    }
    if limits.pids.is_none() {
        limits.pids = svc.pids_limit;
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
        if r.memory.is_none() {
            r.memory = Some(m);
        }
    }
}

fn build(ctx: &mut Ctx<'_>, v: &Node) -> Option<Build> {
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
                    "args" => {
                        let args: BTreeMap<String, serde_json::Value> = ctx
                            .dict(bv, "`build.args`")
                            .into_iter()
                            .map(|(k, v)| {
                                (
                                    k,
                                    v.map_or(serde_json::Value::Null, serde_json::Value::String),
                                )
                            })
                            .collect();
                        b.extra.insert(
                            "args".into(),
                            serde_json::Value::Object(args.into_iter().collect()),
                        );
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

fn env_file_list(ctx: &mut Ctx<'_>, v: &Node) -> Vec<(String, bool, bool, Node)> {
    let items: Vec<&Node> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        _ => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        match &item.value {
            Value::Map(_) => {
                let mut path = None;
                let mut required = true;
                let mut raw = false;
                for (k, name, fv) in ctx.entries(item, "an `env_file` entry") {
                    match name {
                        "path" => path = ctx.string(fv, "`env_file.path`"),
                        "required" => required = ctx.boolean(fv, "`env_file.required`"),
                        "format" => {
                            if let Some(f) = ctx.string(fv, "`env_file.format`") {
                                raw = f == "raw";
                                if f != "raw" && !f.is_empty() {
                                    ctx.error_hint(
                                        fv,
                                        format!("unknown env_file format `{f}`"),
                                        "leave `format` out for the .env syntax, or use `raw`",
                                    );
                                }
                            }
                        }
                        other => ctx.unknown_key(
                            k,
                            other,
                            "an `env_file` entry",
                            &["path", "required", "format"],
                        ),
                    }
                }
                match path {
                    Some(p) => out.push((p, required, raw, item.clone())),
                    None => ctx.error(item, "an `env_file` entry needs a `path`"),
                }
            }
            _ => {
                if let Some(p) = ctx.string(item, "an `env_file` entry") {
                    out.push((p, true, false, item.clone()));
                }
            }
        }
    }
    out
}

fn read_env_file(
    ctx: &mut Ctx<'_>,
    env: &mut BTreeMap<String, Option<String>>,
    path: &str,
    required: bool,
    raw: bool,
    at: &Node,
) {
    let full = absolute(ctx.project_dir, Path::new(path));
    let text = match ctx.fs.read(&full) {
        Ok(t) => t,
        Err(e) => {
            // Only a missing optional file is skipped (as compose-go): a too-large one is not.
            if required || e.kind() != std::io::ErrorKind::NotFound {
                ctx.error_hint(
                    at,
                    format!("cannot read env_file {}: {e}", full.display()),
                    super::source::read_hint(
                        &e,
                        "create the file, or mark it optional with `required: false` (long syntax)",
                    ),
                );
            }
            return;
        }
    };
    let name: std::sync::Arc<str> = full.display().to_string().into();
    ctx.sources.add(name.clone(), text.as_str().into());
    if raw {
        for (k, v) in dotenv::parse_raw(&text) {
            env.insert(k, Some(v));
        }
        return;
    }
    let lookup = |k: &str| ctx.env.get(k).cloned();
    match dotenv::parse(&text, &lookup) {
        Ok(vars) => {
            for (k, v) in vars {
                let v = v.or_else(|| ctx.env.get(&k).cloned());
                env.insert(k, v);
            }
        }
        Err(e) => ctx.diags.push(Diagnostic::error(e.message).at(Location {
            file: name,
            line: e.line,
            column: 1,
            offset: 0,
            len: 1,
        })),
    }
}

fn labels(ctx: &mut Ctx<'_>, v: &Node, what: &str) -> BTreeMap<String, String> {
    ctx.dict(v, what)
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

const PORT_KEYS: &[&str] = &[
    "name",
    "mode",
    "host_ip",
    "target",
    "published",
    "protocol",
    "app_protocol",
];

fn ports(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    let Some(items) = v.as_seq() else {
        ctx.error(v, format!("`ports` must be a sequence, found {}", v.kind()));
        return;
    };
    for item in items {
        let parsed = match &item.value {
            Value::Map(_) => port_long(ctx, item).map(|p| vec![p]),
            Value::Int(_) | Value::Str(_) => {
                let text = item.scalar_text().unwrap_or_default();
                match parse_port(&text) {
                    Ok(ps) => Some(ps),
                    Err((msg, hint)) => {
                        ctx.error_hint(item, msg, hint);
                        None
                    }
                }
            }
            _ => {
                ctx.error(
                    item,
                    format!(
                        "a port must be a string or a mapping, found {}",
                        item.kind()
                    ),
                );
                None
            }
        };
        for p in parsed.unwrap_or_default() {
            svc.ports.push(p);
            svc.spans.ports.push(item.loc.clone());
        }
    }
}

fn port_long(ctx: &mut Ctx<'_>, item: &Node) -> Option<Port> {
    let mut p = Port {
        mode: "ingress".into(),
        protocol: "tcp".into(),
        ..Port::default()
    };
    let mut target = None;
    let mut bad_target = false;
    for (k, name, v) in ctx.entries(item, "a port") {
        match name {
            "target" => match port_number(&v.scalar_text().unwrap_or_default()) {
                Ok(t) => target = Some(t),
                Err(e) => {
                    bad_target = true;
                    ctx.error_hint(
                        v,
                        format!("bad port: {e}"),
                        "a port is a number from 1 to 65535",
                    )
                }
            },
            "published" => {
                let s = v.scalar_text().unwrap_or_default();
                if let Err(e) = port_range(&s) {
                    ctx.error_hint(
                        v,
                        format!("bad port: {e}"),
                        "a port is a number from 1 to 65535, or a range `8000-8010`",
                    );
                } else {
                    p.published = Some(s);
                }
            }
            "protocol" => {
                if let Some(s) = ctx.string(v, "`protocol`") {
                    match check_protocol(&s) {
                        Ok(()) => p.protocol = s.to_ascii_lowercase(),
                        Err((m, h)) => ctx.error_hint(v, m, h),
                    }
                }
            }
            "mode" => {
                if let Some(m) = ctx.string(v, "`mode`") {
                    if m != "ingress" && m != "host" {
                        ctx.error_hint(
                            v,
                            format!("port mode `{m}` is not `ingress` or `host`"),
                            "use `ingress` or `host`",
                        );
                    }
                    p.mode = m;
                }
            }
            "host_ip" => p.host_ip = ctx.string(v, "`host_ip`"),
            "name" => p.name = ctx.string(v, "`name`"),
            "app_protocol" => p.app_protocol = ctx.string(v, "`app_protocol`"),
            other if other.starts_with("x-") => {}
            other => ctx.unknown_key(k, other, "a port", PORT_KEYS),
        }
    }
    match target {
        Some(t) => {
            p.target = t;
            Some(p)
        }
        None => {
            if !bad_target {
                ctx.error(item, "a port in long syntax needs `target`");
            }
            None
        }
    }
}

fn port_number(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(n) => Err(format!("`{n}` is out of range 1-65535")),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

/// `8000` or `8000-8010`.
fn port_range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            if a > b {
                return Err(format!("`{s}` is an empty range"));
            }
            Ok((a, b))
        }
        None => port_number(s).map(|p| (p, p)),
    }
}

fn check_protocol(p: &str) -> Result<(), (String, String)> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" | "udp" | "sctp" => Ok(()),
        _ => Err((
            format!("bad protocol `{p}`"),
            "use `tcp`, `udp` or `sctp`".to_string(),
        )),
    }
}

/// Short syntax: `[HOST_IP:][HOST[-RANGE]:]CONTAINER[-RANGE][/PROTOCOL]`; IPv6 host IPs in
/// brackets. Ranges on both sides expand to one port each.
pub fn parse_port(spec: &str) -> Result<Vec<Port>, (String, String)> {
    let hint = "write `CONTAINER`, `HOST:CONTAINER` or `IP:HOST:CONTAINER`, ports from 1 to 65535, optionally `/udp`".to_string();
    let bad = |m: String| (format!("bad port `{spec}`: {m}"), hint.clone());
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) => {
            check_protocol(p).map_err(|(m, h)| (format!("{m} in port `{spec}`"), h))?;
            (r, p.to_ascii_lowercase())
        }
        None => (spec, "tcp".to_string()),
    };
    let (host_ip, rest) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, tail) = after
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[`".into()))?;
        let tail = tail
            .strip_prefix(':')
            .ok_or_else(|| bad("expected `:` after the IPv6 address".into()))?;
        (Some(ip.to_string()), tail)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() == 3 {
            (Some(parts[0].to_string()), &rest[parts[0].len() + 1..])
        } else if parts.len() > 3 {
            return Err(bad("too many `:`".into()));
        } else {
            (None, rest)
        }
    };
    let (published, target) = match rest.rsplit_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let (t0, t1) = port_range(target).map_err(bad)?;
    let published = match published {
        Some("") | None => None,
        Some(h) => Some(port_range(h).map_err(bad)?),
    };
    let mk = |target: u16, published: Option<String>| Port {
        mode: "ingress".into(),
        host_ip: host_ip.clone().filter(|s| !s.is_empty()),
        target,
        published,
        protocol: protocol.clone(),
        ..Port::default()
    };
    let n = usize::from(t1 - t0) + 1;
    match published {
        None => Ok((t0..=t1).map(|t| mk(t, None)).collect()),
        Some((h0, h1)) if n == 1 => {
            let p = if h0 == h1 {
                h0.to_string()
            } else {
                format!("{h0}-{h1}")
            };
            Ok(vec![mk(t0, Some(p))])
        }
        Some((h0, h1)) => {
            if usize::from(h1 - h0) + 1 != n {
                return Err(bad("the host and container ranges differ in length".into()));
            }
            Ok((0..n)
                .map(|i| mk(t0 + i as u16, Some((h0 + i as u16).to_string())))
                .collect())
        }
    }
}

fn volumes(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    let Some(items) = v.as_seq() else {
        ctx.error(
            v,
            format!("`volumes` must be a sequence, found {}", v.kind()),
        );
        return;
    };
    for item in items {
        match &item.value {
            Value::Map(_) => {
                let mut vol = ServiceVolume::default();
                for (k, name, fv) in ctx.entries(item, "a volume") {
                    match name {
                        "type" => vol.kind = ctx.string(fv, "`type`").unwrap_or_default(),
                        "source" => vol.source = ctx.string(fv, "`source`"),
                        "target" => vol.target = ctx.string(fv, "`target`").unwrap_or_default(),
                        "read_only" => vol.read_only = ctx.boolean(fv, "`read_only`"),
                        "bind" | "volume" | "tmpfs" | "image" | "consistency" => {
                            vol.extra.insert(name.to_string(), fv.to_json());
                        }
                        other if other.starts_with("x-") => {}
                        other => ctx.unknown_key(
                            k,
                            other,
                            "a volume",
                            &[
                                "type",
                                "source",
                                "target",
                                "read_only",
                                "bind",
                                "volume",
                                "tmpfs",
                                "image",
                                "consistency",
                            ],
                        ),
                    }
                }
                if vol.target.is_empty() {
                    ctx.error(item, "a volume in long syntax needs `target`");
                    continue;
                }
                if vol.kind.is_empty() {
                    vol.kind = "volume".into();
                }
                if vol.kind == "bind" {
                    vol.source = vol.source.map(|s| host_path(ctx, &s));
                }
                svc.volumes.push(vol);
                svc.spans.volumes.push(item.loc.clone());
            }
            _ => {
                let Some(s) = ctx.string(item, "a volume") else {
                    continue;
                };
                match parse_volume(ctx, &s) {
                    Ok(vol) => {
                        svc.volumes.push(vol);
                        svc.spans.volumes.push(item.loc.clone());
                    }
                    Err(m) => ctx.error_hint(
                        item,
                        m,
                        "write `TARGET`, `SOURCE:TARGET` or `SOURCE:TARGET:ro`",
                    ),
                }
            }
        }
    }
}

/// A host path: `~` expanded when the home directory is known, then made absolute against the
/// project directory (a `~` path without a known home is kept as written).
fn host_path(ctx: &Ctx<'_>, s: &str) -> String {
    let expanded = expand_home(ctx, s);
    if expanded.starts_with('~') {
        return expanded;
    }
    absolute(ctx.project_dir, Path::new(&expanded))
        .display()
        .to_string()
}

fn expand_home(ctx: &Ctx<'_>, s: &str) -> String {
    match (s.strip_prefix('~'), ctx.env.get("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            format!("{home}{rest}")
        }
        _ => s.to_string(),
    }
}

fn parse_volume(ctx: &Ctx<'_>, s: &str) -> Result<ServiceVolume, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, m] => (Some(*src), *t, Some(*m)),
        _ => return Err(format!("bad volume `{s}`: too many `:`")),
    };
    if target.is_empty() {
        return Err(format!("bad volume `{s}`: no target path"));
    }
    let mut vol = ServiceVolume {
        kind: "volume".into(),
        target: target.to_string(),
        ..ServiceVolume::default()
    };
    if let Some(src) = source.filter(|s| !s.is_empty()) {
        if src.starts_with('.') || src.starts_with('/') || src.starts_with('~') {
            vol.kind = "bind".into();
            vol.source = Some(host_path(ctx, src));
            vol.extra
                .insert("bind".into(), serde_json::json!({"create_host_path": true}));
        } else {
            vol.source = Some(src.to_string());
            vol.extra.insert("volume".into(), serde_json::json!({}));
        }
    }
    if let Some(m) = mode {
        for flag in m.split(',') {
            match flag {
                "ro" => vol.read_only = true,
                "rw" | "" => {}
                "z" | "Z" => {
                    vol.extra.insert(
                        "bind".into(),
                        serde_json::json!({"create_host_path": true, "selinux": flag}),
                    );
                }
                "nocopy" => {
                    vol.extra
                        .insert("volume".into(), serde_json::json!({"nocopy": true}));
                }
                "cached" | "delegated" | "consistent" => {
                    vol.extra
                        .insert("consistency".into(), serde_json::json!(flag));
                }
                _ => return Err(format!("bad volume `{s}`: unknown mode `{flag}`")),
            }
        }
    }
    Ok(vol)
}

fn depends_on(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    match &v.value {
        Value::Seq(items) => {
            for item in items {
                if let Some(s) = ctx.string(item, "a `depends_on` entry") {
                    svc.spans.dependencies.insert(s.clone(), item.loc.clone());
                    svc.depends_on.insert(
                        s,
                        Dependency {
                            condition: Condition::ServiceStarted,
                            required: true,
                            restart: false,
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
                };
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
                        other if other.starts_with("x-") => {}
                        other => ctx.unknown_key(fk, other, "a `depends_on` entry", &["condition", "required", "restart"]),
                    }
                }
                svc.spans
                    .dependencies
                    .insert(name.to_string(), k.loc.clone());
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
                    _ => match ctx.string(hv, "`test`") {
                        Some(s) if s == "NONE" => vec!["NONE".into()],
                        Some(s) => vec!["CMD-SHELL".into(), s],
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
            other if other.starts_with("x-") => {}
            other => ctx.unknown_key(k, other, &place, HEALTHCHECK_KEYS),
        }
    }
    Some(h)
}

fn deploy(ctx: &mut Ctx<'_>, spans: &mut ServiceSpans, service: &str, v: &Node) -> Option<Deploy> {
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
        record(ctx, &format!("deploy.{name}"), service, rule, k);
        match name {
            "mode" => {
                if let Some(m) = ctx.string(dv, "`deploy.mode`") {
                    if !matches!(
                        m.as_str(),
                        "replicated" | "global" | "replicated-job" | "global-job"
                    ) {
                        ctx.error_hint(
                            dv,
                            format!("unknown deploy mode `{m}`"),
                            "use `replicated` or `global`",
                        );
                    }
                    d.mode = Some(m);
                }
            }
            "replicas" => {
                d.replicas = ctx
                    .u32(dv, "`deploy.replicas`")
                    .and_then(|n| super::bounds::replicas(ctx, dv, n, "`deploy.replicas`"))
            }
            "resources" => {
                for (rk, rname, rv) in ctx.entries(dv, "`deploy.resources`") {
                    match rname {
                        "limits" => d.resources.limits = Some(amounts(ctx, rv, "limits")),
                        "reservations" => {
                            d.resources.reservations = Some(amounts(ctx, rv, "reservations"))
                        }
                        other if other.starts_with("x-") => {}
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
                                    spans.constraints.push(c.loc.clone());
                                }
                            }
                        }
                        "preferences" => {
                            for p in pv.as_seq().unwrap_or_default() {
                                match p.get("spread").and_then(Node::scalar_text) {
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
                        other if other.starts_with("x-") => {}
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
                        other if other.starts_with("x-") => {}
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
                        "order" => u.order = ctx.string(uv, "`order`"),
                        other if other.starts_with("x-") => {}
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
            "devices" | "generic_resources" if which == "reservations" => {
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

fn service_networks(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
    match &v.value {
        Value::Seq(items) => {
            for item in items {
                if let Some(n) = ctx.string(item, "a network name") {
                    svc.spans.networks.insert(n.clone(), item.loc.clone());
                    svc.networks.insert(n, None);
                }
            }
        }
        _ => {
            for (key, name, nv) in ctx.entries(v, "`networks`") {
                svc.spans.networks.insert(name.to_string(), key.loc.clone());
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
                            sn.extra.insert(fname.to_string(), fv.to_json());
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
                            source_at = Some(fv.loc.clone());
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
                        other if other.starts_with("x-") => {}
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
                out.push((r, source_at.unwrap_or_else(|| item.loc.clone())));
            }
            _ => {
                if let Some(s) = ctx.string(item, &format!("a {what} reference")) {
                    out.push((
                        FileReference {
                            source: s,
                            ..FileReference::default()
                        },
                        item.loc.clone(),
                    ));
                }
            }
        }
    }
    for (r, at) in &out {
        ctx.refs.push((what, r.source.clone(), at.clone()));
    }
    out.into_iter().map(|(r, _)| r).collect()
}

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
            _ if !k.starts_with("x-") && !VOLUME_KEYS.contains(&k) => {
                ctx.unknown_key(key, k, &format!("volume `{name}`"), VOLUME_KEYS);
            }
            _ => {
                vol.extra.insert(k.to_string(), fv.to_json());
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
    if o.file.is_none() && o.environment.is_none() && o.content.is_none() && !o.external {
        ctx.error_hint(
            v,
            format!("{what} `{name}` says nowhere where its content comes from"),
            "give it `file:`, `environment:`, `content:` or `external: true`",
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ports() {
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[0].published.as_deref(), Some("8080"));
        assert_eq!((p[0].target, p[0].protocol.as_str()), (80, "udp"));
        let p = parse_port("[::1]:80:80").unwrap();
        assert_eq!(p[0].host_ip.as_deref(), Some("::1"));
        let p = parse_port("8000-8010:80-90").unwrap();
        assert_eq!(p.len(), 11);
        assert_eq!(
            (p[10].target, p[10].published.as_deref()),
            (90, Some("8010"))
        );
        let p = parse_port("8000-8010:80").unwrap();
        assert_eq!(p[0].published.as_deref(), Some("8000-8010"));
        assert!(parse_port("70000:80").is_err());
        assert!(parse_port("80/tcpx").is_err());
        assert!(parse_port("8000-8001:80-90").is_err());
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split(r#"sh -c 'echo $A' "x y" a\ b"#).unwrap(),
            vec!["sh", "-c", "echo $A", "x y", "a b"]
        );
        assert!(shell_split("'open").is_err());
    }
}
