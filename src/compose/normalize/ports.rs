//! `ports`: the short syntax (`[IP:][HOST[-RANGE]:]CONTAINER[-RANGE][/PROTO]`) and the long one.

use super::Ctx;
use crate::compose::model::*;
use crate::compose::yaml::{Node, Value};

const PORT_KEYS: &[&str] = &[
    "name",
    "mode",
    "host_ip",
    "target",
    "published",
    "protocol",
    "app_protocol",
];

pub(super) fn ports(ctx: &mut Ctx<'_>, svc: &mut Service, v: &Node) {
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
            if p.published.as_deref() == Some("0") {
                ctx.cannot_run(
                    format!(
                        "port {} of service `{}` is published on host port 0 (one the engine picks), which the fleet cannot do",
                        p.target, svc.name
                    ),
                    &Location::from(item.loc),
                    Some("publish a fixed host port, e.g. `8080:80`, or leave the host port out to only expose it"),
                );
            }
            svc.ports.push(p);
            let at = ctx.loc(item.loc);
            svc.spans.ports.push(at);
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
                if s == "0" {
                    p.published = Some(s);
                } else if let Err(e) = port_range(&s) {
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
            other if other.starts_with("x-") => {
                p.extensions.insert(other.to_string(), v.to_json());
            }
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
        // `0`: a host port the engine picks (compose accepts it; the loader's caller says
        // the fleet cannot run it).
        Some("0") if t0 == t1 => Some((0, 0)),
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
}
