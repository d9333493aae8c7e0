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

#[cfg(test)]
mod tests {
    use super::*;

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
