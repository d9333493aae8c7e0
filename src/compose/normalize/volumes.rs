//! Service `volumes`: short and long syntax, bind sources resolved (`~`, relative paths).

use std::path::Path;

use super::Ctx;
use crate::compose::model::*;
use crate::compose::source::{absolute, normalize};
use crate::compose::yaml::{Node, Value};

pub(super) fn volumes(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
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
                        "tmpfs" => {
                            if let Some(size) = fv.get("size") {
                                ctx.bytes(size, "`tmpfs.size`");
                            }
                            vol.extra.insert(name.to_string(), fv.to_json());
                        }
                        "bind" | "volume" | "image" | "consistency" => {
                            vol.extra.insert(name.to_string(), fv.to_json());
                        }
                        // Kept for the YAML output (the JSON one drops them, as compose's).
                        other if other.starts_with("x-") => {
                            vol.extra.insert(other.to_string(), fv.to_json());
                        }
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
                const TYPES: &[&str] = &["bind", "volume", "tmpfs", "cluster", "npipe", "image"];
                if !TYPES.contains(&vol.kind.as_str()) {
                    let at = item.get("type").unwrap_or(item);
                    ctx.error_hint(
                        at,
                        format!("`{}` is not a type of mount", vol.kind),
                        format!("use one of {}", TYPES.join(", ")),
                    );
                    continue;
                }
                if vol.kind == "bind" {
                    vol.source = vol.source.map(|s| host_path(ctx, &s));
                }
                svc.volumes.push(vol);
                let at = ctx.loc(item.loc);
                svc.spans.volumes.push(at);
            }
            _ => {
                let Some(s) = ctx.string(item, "a volume") else {
                    continue;
                };
                match parse_volume(ctx, &s) {
                    Ok(vol) => {
                        svc.volumes.push(vol);
                        let at = ctx.loc(item.loc);
                        svc.spans.volumes.push(at);
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

/// A host path as compose-go's `absPath` resolves it: `~…` is the home directory joined with
/// the rest (and cleaned) when the home directory is known (else kept as written), an absolute
/// path is kept as written (`/etc/pihole/` keeps its slash), a relative one is joined to the
/// project directory and cleaned.
pub(super) fn host_path(ctx: &Ctx<'_>, s: &str) -> String {
    if let Some(rest) = s.strip_prefix('~') {
        return match ctx.env.get("HOME") {
            Some(home) => normalize(Path::new(&format!("{home}/{rest}")))
                .display()
                .to_string(),
            None => s.to_string(),
        };
    }
    if s.starts_with('/') {
        return s.to_string();
    }
    absolute(ctx.project_dir, Path::new(s))
        .display()
        .to_string()
}

/// The `:`-separated fields of a short-syntax volume as compose-go splits them: a `:` after a
/// lone letter is part of a Windows drive (`c:/data`, and so `v:/v` is one path, not the
/// volume `v`), and a spec of one or two characters is a target.
pub(crate) fn volume_fields(s: &str) -> Vec<&str> {
    if s.chars().count() <= 2 {
        return vec![s];
    }
    let mut fields = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c != ':' {
            continue;
        }
        let field = &s[start..i];
        let drive = field.chars().count() == 1 && field.chars().all(char::is_alphabetic);
        if !drive {
            fields.push(field);
            start = i + 1;
        }
    }
    fields.push(&s[start..]);
    fields
}

/// A Windows path (`c:/x`, `c:\x`, `\\pipe`): compose keeps it as written.
fn windows_path(s: &str) -> bool {
    let mut chars = s.chars();
    s.starts_with("\\\\")
        || matches!((chars.next(), chars.next()), (Some(d), Some(':')) if d.is_alphabetic())
}

fn parse_volume(ctx: &Ctx<'_>, s: &str) -> Result<ServiceVolume, String> {
    let parts = volume_fields(s);
    if parts.len() > 1 && parts.iter().any(|p| p.is_empty()) {
        return Err(format!("bad volume `{s}`: an empty field between `:`"));
    }
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
        if windows_path(src) {
            vol.kind = "bind".into();
            vol.source = Some(src.to_string());
            vol.extra
                .insert("bind".into(), serde_json::json!({"create_host_path": true}));
        } else if src.starts_with('.') || src.starts_with('/') || src.starts_with('~') {
            vol.kind = "bind".into();
            vol.source = Some(host_path(ctx, src));
            vol.extra
                .insert("bind".into(), serde_json::json!({"create_host_path": true}));
        } else {
            vol.source = Some(src.to_string());
            vol.extra.insert("volume".into(), serde_json::json!({}));
        }
    } else if s.chars().count() > 2 {
        // compose prints the empty options of a short-syntax anonymous volume (`/data`), and
        // not those of a long-syntax one, nor of a spec of one or two characters (`/d`), which
        // compose-go returns before filling them in.
        vol.extra.insert("volume".into(), serde_json::json!({}));
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
                // Docker Desktop's old macOS hints: compose reads and drops them in the short
                // syntax (the long syntax keeps `consistency`).
                "cached" | "delegated" | "consistent" => {}
                _ => return Err(format!("bad volume `{s}`: unknown mode `{flag}`")),
            }
        }
    }
    Ok(vol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_fields_keep_windows_drives_as_compose_go_does() {
        assert_eq!(volume_fields("data:/data:ro"), ["data", "/data", "ro"]);
        assert_eq!(volume_fields("v:/v"), ["v:/v"]);
        assert_eq!(volume_fields("v:/v:ro"), ["v:/v", "ro"]);
        assert_eq!(volume_fields("c:\\x:/x"), ["c:\\x", "/x"]);
        assert_eq!(volume_fields("a:"), ["a:"]);
        assert!(windows_path("c:/x") && windows_path("\\\\pipe") && !windows_path("/x"));
    }
}
