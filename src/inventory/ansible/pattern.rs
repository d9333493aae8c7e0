//! Host patterns as Ansible reads them: `host:port`, `[v6::addr]:port`, and ranges
//! (`web[01:10]`, `lb[00:08:2]`, `db-[a:f]`, several in one name), plus the POSIX `shlex`
//! splitting of INI host lines.

/// What went wrong with a host pattern, in words for the user.
pub type PatternError = String;

/// A host pattern split into the pattern to expand and its port, as Ansible's
/// `_expand_hostpattern` does: when the part before `:port` is not a valid address or host name
/// (ranges allowed), the whole text is the pattern and there is no port.
pub fn split_port(pattern: &str) -> (String, Option<String>) {
    match parse_address(pattern) {
        Some((host, port)) => (host, port),
        None => (pattern.to_string(), None),
    }
}

/// Ansible's `parse_address(address, allow_ranges=True)`: `None` when it is not an IPv4 or IPv6
/// address or a host name (ranges allowed in each).
fn parse_address(address: &str) -> Option<(String, Option<String>)> {
    let mut address = address.to_string();
    let mut port = None;
    if let Some((inner, p)) = bracketed_hostport(&address) {
        address = inner;
        port = Some(p);
    }
    if let Some((inner, p)) = hostport(&address) {
        address = inner;
        port = Some(p);
    }
    (is_ipv4(&address) || is_ipv6(&address) || is_hostname(&address)).then_some((address, port))
}

/// `^\[(.+)\]:([0-9]+)$`
fn bracketed_hostport(s: &str) -> Option<(String, String)> {
    let rest = s.strip_prefix('[')?;
    let colon = rest.rfind(':')?;
    let port = &rest[colon + 1..];
    let inner = rest[..colon].strip_suffix(']')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !inner.is_empty())
        .then(|| (inner.to_string(), port.to_string()))
}

/// `^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$`
fn hostport(s: &str) -> Option<(String, String)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' => i += s[i..].find(']')? + 1,
            b']' | b':' => break,
            _ => i += 1,
        }
    }
    let port = s[i..].strip_prefix(':')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (s[..i].to_string(), port.to_string()))
}

/// `\[[0-9]+:[0-9]+(:[0-9]+)?\]`, `\[[0-9a-f]+:[0-9a-f]+(:[0-9]+)?\]` and the alphanumeric
/// `\[([a-z]:[a-z]|[0-9]+:[0-9]+)(:[0-9]+)?\]` (case-insensitive), without the brackets.
fn is_range(inner: &str, kind: RangeKind) -> bool {
    let parts: Vec<&str> = inner.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return false;
    }
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let hex = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit());
    let letter = |p: &str| p.len() == 1 && p.bytes().all(|b| b.is_ascii_alphabetic());
    let ends = match kind {
        RangeKind::Numeric => digits(parts[0]) && digits(parts[1]),
        RangeKind::Hex => hex(parts[0]) && hex(parts[1]),
        RangeKind::Alnum => {
            (letter(parts[0]) && letter(parts[1])) || (digits(parts[0]) && digits(parts[1]))
        }
    };
    ends && parts.get(2).is_none_or(|s| digits(s))
}

#[derive(Clone, Copy)]
enum RangeKind {
    Numeric,
    Hex,
    Alnum,
}

/// Replaces every `[...]` with `placeholder` if each is a valid range of `kind`.
fn without_ranges(s: &str, kind: RangeKind, placeholder: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find(']')? + open;
        if !is_range(&rest[open + 1..close], kind) {
            return None;
        }
        out.push_str(placeholder);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    (!out.contains(']')).then_some(out)
}

fn is_ipv4(s: &str) -> bool {
    let Some(s) = without_ranges(s, RangeKind::Numeric, "0") else {
        return false;
    };
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| ipv4_component(p))
}

/// `[01]?[0-9]{1,2}|2[0-4][0-9]|25[0-5]`
fn ipv4_component(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    b.len() < 3 || b[0] == b'0' || b[0] == b'1' || p <= "255" && b[0] == b'2'
}

fn is_ipv6(s: &str) -> bool {
    let Some(s) = without_ranges(s, RangeKind::Hex, "0") else {
        return false;
    };
    let comp = |p: &str| (1..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
    let dotted = |p: &str| {
        let parts: Vec<&str> = p.split('.').collect();
        parts.len() == 4 && parts.iter().all(|c| comp(c))
    };
    if s.contains('.') {
        // (0:){6}d.d.d.d | ::(ffff:)?d.d.d.d | (0:){5}ffff:d.d.d.d
        let lower = s.to_ascii_lowercase();
        for prefix in ["0:0:0:0:0:0:", "::ffff:", "::", "0:0:0:0:0:ffff:"] {
            if let Some(rest) = lower.strip_prefix(prefix) {
                if dotted(rest) {
                    return true;
                }
            }
        }
        return false;
    }
    match s.split_once("::") {
        None => {
            let parts: Vec<&str> = s.split(':').collect();
            parts.len() == 8 && parts.iter().all(|p| comp(p))
        }
        Some((left, right)) => {
            let count = |side: &str| -> Option<usize> {
                if side.is_empty() {
                    return Some(0);
                }
                let parts: Vec<&str> = side.split(':').collect();
                parts.iter().all(|p| comp(p)).then_some(parts.len())
            };
            let (Some(nl), Some(nr)) = (count(left), count(right)) else {
                return false;
            };
            match (nl, nr) {
                (0, 0) => true,
                (_, 0) => nl <= 6,
                (0, _) => nr <= 6,
                _ => nl <= 6 && nl + nr <= 7,
            }
        }
    }
}

/// Labels of `\w`, `-` and alphanumeric ranges, starting with `\w` or a range and not ending
/// in `-` or `_`, separated by dots.
fn is_hostname(s: &str) -> bool {
    let Some(s) = without_ranges(s, RangeKind::Alnum, "0") else {
        return false;
    };
    let word = |c: char| c.is_alphanumeric() || c == '_';
    s.split('.').all(|label| {
        let mut chars = label.chars();
        chars.next().is_some_and(word)
            && label.chars().all(|c| word(c) || c == '-')
            && !label.ends_with(['-', '_'])
    })
}

const ASCII_LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Python's `int()` of a string: optional sign, ASCII digits with single underscores between
/// them, surrounding whitespace.
fn py_int(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty()
        || body.starts_with('_')
        || body.ends_with('_')
        || body.contains("__")
        || !body.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let v: i128 = body.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

/// One level of a range: the part before, the values, the part after.
struct Level<'a> {
    head: &'a str,
    seq: Seq,
    tail: &'a str,
}

enum Seq {
    Letters(Vec<char>),
    Numbers {
        start: i128,
        stop: i128,
        step: i128,
        width: usize,
    },
}

impl Seq {
    fn len(&self) -> u128 {
        match self {
            Seq::Letters(v) => v.len() as u128,
            Seq::Numbers {
                start, stop, step, ..
            } => {
                if *step > 0 && stop > start {
                    ((stop - start - 1) / step + 1) as u128
                } else if *step < 0 && stop < start {
                    ((start - stop - 1) / (-step) + 1) as u128
                } else {
                    0
                }
            }
        }
    }
}

/// Splits off the first range of `line` as Ansible's `expand_hostname_range` does.
fn level(line: &str) -> Result<Level<'_>, PatternError> {
    let open = line.find('[').unwrap_or(0);
    let close = line.find(']');
    // Python replaces the first `[` and the first `]` with `|` and splits on `|`: any other
    // `|`, or a `]` before the `[`, makes a number of parts other than three.
    let Some(close) = close.filter(|c| *c > open && !line.contains('|')) else {
        return Err(format!(
            "`{line}` is not a valid host range: brackets must pair up as `[begin:end]`"
        ));
    };
    let (head, inner, tail) = (&line[..open], &line[open + 1..close], &line[close + 1..]);
    let bounds: Vec<&str> = inner.split(':').collect();
    if bounds.len() != 2 && bounds.len() != 3 {
        return Err(format!(
            "`[{inner}]`: a host range must be begin:end or begin:end:step"
        ));
    }
    let beg = if bounds[0].is_empty() { "0" } else { bounds[0] };
    let end = bounds[1];
    let step = bounds.get(2).copied().unwrap_or("1");
    if end.is_empty() {
        return Err(format!("`[{inner}]`: a host range must have an end value"));
    }
    let mut width = 0;
    if beg.starts_with('0') && beg.len() > 1 {
        if beg.len() != end.len() {
            return Err(format!(
                "`[{inner}]`: a zero-padded range must give begin and end with the same number of \
                 digits"
            ));
        }
        width = beg.len();
    }
    // Letters: Python looks the bounds up in `ascii_letters` (a substring search).
    if let (Some(ib), Some(ie)) = (ASCII_LETTERS.find(beg), ASCII_LETTERS.find(end)) {
        if ib > ie {
            return Err(format!("`[{inner}]`: a host range must have begin <= end"));
        }
        if let Some(step) = py_int(step).filter(|s| *s != 0) {
            let letters: Vec<char> = ASCII_LETTERS[ib..=ie].chars().collect();
            let seq = if step > 0 {
                letters.into_iter().step_by(step as usize).collect()
            } else {
                Vec::new()
            };
            return Ok(Level {
                head,
                seq: Seq::Letters(seq),
                tail,
            });
        }
    }
    let (Some(start), Some(stop), Some(step)) = (py_int(beg), py_int(end), py_int(step)) else {
        return Err(format!(
            "`[{inner}]`: a host range goes from a number to a number or from a letter to a \
             letter (e.g. `[01:10]`, `[a:f]`, `[0:8:2]`)"
        ));
    };
    if step == 0 {
        return Err(format!("`[{inner}]`: a host range's step must not be 0"));
    }
    Ok(Level {
        head,
        seq: Seq::Numbers {
            start,
            stop: stop.saturating_add(1),
            step,
            width,
        },
        tail,
    })
}

/// How many names `line` expands to (without building them).
pub fn count(line: &str) -> Result<u128, PatternError> {
    if !line.contains('[') {
        return Ok(1);
    }
    let l = level(line)?;
    let n = l.seq.len();
    if n == 0 {
        return Ok(0);
    }
    Ok(n.saturating_mul(count(l.tail)?))
}

/// Expands every range of `line`, in Ansible's order. Call [`count`] first to bound the size.
pub fn expand(line: &str, out: &mut Vec<String>) -> Result<(), PatternError> {
    if !line.contains('[') {
        out.push(line.to_string());
        return Ok(());
    }
    let l = level(line)?;
    let mut each = |value: &str| -> Result<(), PatternError> {
        let name = format!("{}{value}{}", l.head, l.tail);
        if name.contains('[') {
            expand(&name, out)
        } else {
            out.push(name);
            Ok(())
        }
    };
    match &l.seq {
        Seq::Letters(letters) => {
            for c in letters {
                each(&c.to_string())?;
            }
        }
        Seq::Numbers {
            start,
            stop,
            step,
            width,
        } => {
            let mut i = *start;
            while (*step > 0 && i < *stop) || (*step < 0 && i > *stop) {
                // str(x).zfill(width): padding goes after a sign.
                let digits = i.unsigned_abs().to_string();
                let sign = if i < 0 { "-" } else { "" };
                let pad = width.saturating_sub(digits.len() + sign.len());
                each(&format!("{sign}{}{digits}", "0".repeat(pad)))?;
                i += step;
            }
        }
    }
    Ok(())
}

/// Python's `shlex.split(line, comments=True)` (POSIX mode), with each word's byte offset.
pub fn shlex_split(line: &str) -> Result<Vec<(String, usize)>, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Space,
        Word,
        Quote(char),
        Escape(Option<char>),
    }
    let mut out = Vec::new();
    let mut token = String::new();
    let mut quoted = false;
    let mut start = 0;
    let mut st = St::Space;
    let white = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    for (i, c) in line.char_indices() {
        match st {
            St::Space => {
                if white(c) {
                    continue;
                }
                start = i;
                match c {
                    '#' => break,
                    '\\' => st = St::Escape(None),
                    '\'' | '"' => st = St::Quote(c),
                    _ => {
                        token.push(c);
                        st = St::Word;
                    }
                }
            }
            St::Word => {
                if white(c) {
                    out.push((std::mem::take(&mut token), start));
                    quoted = false;
                    st = St::Space;
                    continue;
                }
                match c {
                    '#' => {
                        st = St::Space;
                        break;
                    }
                    '\'' | '"' => st = St::Quote(c),
                    '\\' => st = St::Escape(None),
                    _ => token.push(c),
                }
            }
            St::Quote(q) => {
                quoted = true;
                if c == q {
                    st = St::Word;
                } else if c == '\\' && q == '"' {
                    st = St::Escape(Some(q));
                } else {
                    token.push(c);
                }
            }
            St::Escape(inside) => {
                // Within double quotes only the quote and the backslash itself are escaped.
                if let Some(q) = inside {
                    if c != '\\' && c != q {
                        token.push('\\');
                    }
                }
                token.push(c);
                st = match inside {
                    Some(q) => St::Quote(q),
                    None => St::Word,
                };
            }
        }
    }
    match st {
        St::Quote(_) => return Err("no closing quotation".into()),
        St::Escape(_) => return Err("no character after the final backslash".into()),
        _ => {}
    }
    if !token.is_empty() || quoted {
        out.push((token, start));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &str) -> Vec<String> {
        let (pattern, _) = split_port(p);
        let mut out = Vec::new();
        expand(&pattern, &mut out).unwrap();
        assert_eq!(count(&pattern).unwrap(), out.len() as u128, "{p}");
        out
    }

    #[test]
    fn ports_split_only_off_valid_addresses() {
        assert_eq!(
            split_port("host:2222"),
            ("host".into(), Some("2222".into()))
        );
        assert_eq!(split_port("[::1]:22"), ("::1".into(), Some("22".into())));
        assert_eq!(split_port("2001:db8::1"), ("2001:db8::1".into(), None));
        assert_eq!(
            split_port("[A:F][0:9].example.org:1022"),
            ("[A:F][0:9].example.org".into(), Some("1022".into()))
        );
        assert_eq!(split_port("foo@bar:22"), ("foo@bar:22".into(), None));
        assert_eq!(
            split_port("10.0.0.1:22"),
            ("10.0.0.1".into(), Some("22".into()))
        );
    }

    #[test]
    fn ranges_expand_as_ansible_expands_them() {
        assert_eq!(
            names("lb[00:08:2].x"),
            ["lb00.x", "lb02.x", "lb04.x", "lb06.x", "lb08.x"]
        );
        assert_eq!(names("db-[a:c]"), ["db-a", "db-b", "db-c"]);
        assert_eq!(names("[x:B]"), ["x", "y", "z", "A", "B"]);
        assert_eq!(names("h[1:2]-[a:b]"), ["h1-a", "h1-b", "h2-a", "h2-b"]);
        assert_eq!(names("w[10:1]"), Vec::<String>::new());
        assert_eq!(names("w[:2]"), ["w0", "w1", "w2"]);
        assert!(level("db-[a:9]").is_err());
        assert!(level("a[1:2:0]").is_err());
        assert!(level("a[01:100]").is_err());
        assert_eq!(count("h[0:150000]").unwrap(), 150_001);
        assert_eq!(count("h[0:99999][0:99999]").unwrap(), 10_000_000_000);
    }

    #[test]
    fn host_lines_split_as_shlex_does() {
        let words = |l: &str| -> Vec<String> {
            shlex_split(l)
                .unwrap()
                .into_iter()
                .map(|(w, _)| w)
                .collect()
        };
        assert_eq!(
            words("a x=1 y=\"two words\" # c"),
            ["a", "x=1", "y=two words"]
        );
        assert_eq!(words("a x='{\"k\": 1}'"), ["a", "x={\"k\": 1}"]);
        assert_eq!(words("a x=b#c d"), ["a", "x=b"]);
        assert_eq!(words("a x=\"\\\"q\\n\""), ["a", "x=\"q\\n"]);
        assert_eq!(words("a x=''"), ["a", "x="]);
        assert!(shlex_split("a x='open").is_err());
        assert_eq!(shlex_split("  a  b").unwrap()[1].1, 5);
    }
}
