//! How quantities are shown to people, the same in every table and message: bytes in binary
//! units (as compose writes memory: `512m` is 512 MiB) and cpus without trailing zeros. Pure.

use std::fmt::Write as _;

/// `4 GiB`, `2.5 GiB`, `512 MiB`, `100 B`: binary units, at most one decimal.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let mut s = String::new();
    let rounded = (v * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        let _ = write!(s, "{} {}", rounded as u64, UNITS[u]);
    } else {
        let _ = write!(s, "{rounded:.1} {}", UNITS[u]);
    }
    s
}

/// `2`, `0.25`, `1.5`: cpus from thousandths, without trailing zeros.
pub fn format_cpus(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:03}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// A duration as people write it on a command line: `90` (seconds), `90s`, `500ms`, `5m`, `1h`,
/// or a sum such as `1m30s`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration (expected e.g. `90`, `90s`, `5m`, `1h30m`)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `1.5s`, `90s`, `5m`, `1h30m`: a duration the way [`parse_duration`] reads it back (under a
/// minute with at most one decimal).
pub fn format_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (d.as_secs_f64() * 10.0).round() / 10.0;
        return if tenths.fract() == 0.0 {
            format!("{}s", tenths as u64)
        } else {
            format!("{tenths:.1}s")
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_as_people_write_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "5x", "-1", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }

    #[test]
    fn sizes_and_cpus_print_short() {
        assert_eq!(format_bytes(4 << 30), "4 GiB");
        assert_eq!(format_bytes(5 << 29), "2.5 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(24 << 30), "24 GiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_cpus(2000), "2");
        assert_eq!(format_cpus(250), "0.25");
        assert_eq!(format_cpus(1500), "1.5");
    }
}
