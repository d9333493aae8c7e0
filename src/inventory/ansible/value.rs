//! Ansible variable values, typed as Ansible types them: INI values through Python's
//! `ast.literal_eval` (what the `ini` plugin calls), YAML plain scalars through YAML 1.1's
//! implicit types (what PyYAML, and so the `yaml` plugin, resolves), and spelled back as
//! `ansible-inventory --list` prints them (JSON), which is how they become labels.

use std::fmt::Write as _;

/// A variable's value once Ansible has typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum AVal {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`, as decimal digits (with a leading `-` when negative): Python's
    /// integers have no bound and JSON prints them exactly.
    BigInt(String),
    Float(f64),
    Str(String),
    List(Vec<AVal>),
    Map(Vec<(String, AVal)>),
}

impl AVal {
    /// The value as a label, spelled as `ansible-inventory --list` prints it (`true`, `1.0`,
    /// `1e+20`); `None` for null, lists and mappings, which are not labels.
    pub fn label(&self) -> Option<String> {
        match self {
            AVal::Null | AVal::List(_) | AVal::Map(_) => None,
            AVal::Bool(b) => Some(b.to_string()),
            AVal::Int(i) => Some(i.to_string()),
            AVal::BigInt(s) => Some(s.clone()),
            AVal::Float(f) => Some(json_float(*f)),
            AVal::Str(s) => Some(s.clone()),
        }
    }

    /// What the value is, in words, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            AVal::Null => "nothing (null)",
            AVal::Bool(_) => "a boolean",
            AVal::Int(_) | AVal::BigInt(_) | AVal::Float(_) => "a number",
            AVal::Str(_) => "a string",
            AVal::List(_) => "a list",
            AVal::Map(_) => "a mapping",
        }
    }
}

/// A float as Python's `json` module prints it (`repr`, plus `Infinity` and `NaN`).
pub fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        py_float_repr(f, true)
    }
}

/// Python's `repr(float)`: the shortest digits that read back the same, in fixed notation for
/// exponents -4..16 and `1e+16` style outside; `add_dot0` gives integral values their `.0`
/// (`complex` leaves it off).
fn py_float_repr(f: f64, add_dot0: bool) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        let zero = if add_dot0 { "0.0" } else { "0" };
        return if f.is_sign_negative() {
            format!("-{zero}")
        } else {
            zero.into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                if add_dot0 {
                    out.push_str(".0");
                }
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    }
    out
}

/// Digits in `radix` (no sign, no `_`) as an integer value: `Int` when it fits, else `BigInt`.
fn int_from_digits(digits: &str, radix: u32, negative: bool) -> Option<AVal> {
    if digits.is_empty() {
        return None;
    }
    if let Ok(v) = i128::from_str_radix(digits, radix) {
        let v = if negative { -v } else { v };
        return Some(match i64::try_from(v) {
            Ok(i) => AVal::Int(i),
            Err(_) => AVal::BigInt(v.to_string()),
        });
    }
    // Beyond i128: long multiplication in base 10^9.
    let mut limbs: Vec<u64> = vec![0];
    for c in digits.chars() {
        let d = u64::from(c.to_digit(radix)?);
        let mut carry = d;
        for limb in limbs.iter_mut() {
            let v = *limb * u64::from(radix) + carry;
            *limb = v % 1_000_000_000;
            carry = v / 1_000_000_000;
        }
        while carry > 0 {
            limbs.push(carry % 1_000_000_000);
            carry /= 1_000_000_000;
        }
    }
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    let mut iter = limbs.iter().rev();
    if let Some(top) = iter.next() {
        let _ = write!(s, "{top}");
    }
    for limb in iter {
        let _ = write!(s, "{limb:09}");
    }
    Some(AVal::BigInt(s))
}

fn negate(v: AVal) -> AVal {
    match v {
        AVal::Int(i) => match i.checked_neg() {
            Some(n) => AVal::Int(n),
            None => AVal::BigInt(format!("{}", -(i as i128))),
        },
        AVal::BigInt(s) => match s.strip_prefix('-') {
            Some(rest) => match rest.parse::<i64>() {
                Ok(i) => AVal::Int(i),
                Err(_) => AVal::BigInt(rest.to_string()),
            },
            None => AVal::BigInt(format!("-{s}")),
        },
        AVal::Float(f) => AVal::Float(-f),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// YAML 1.1 implicit types, as PyYAML's resolver and SafeConstructor apply them.

/// The value of a plain (unquoted, untagged) YAML scalar, typed as PyYAML types it.
pub fn yaml11_plain(s: &str) -> AVal {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return AVal::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return AVal::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return AVal::Bool(false)
        }
        _ => {}
    }
    if is_yaml11_float(s) {
        if let Some(f) = yaml11_float(s) {
            return AVal::Float(f);
        }
    }
    if is_yaml11_int(s) {
        if let Some(i) = yaml11_int(s) {
            return i;
        }
    }
    if let Some(ts) = yaml11_timestamp(s) {
        return AVal::Str(ts);
    }
    AVal::Str(s.to_string())
}

fn strip_sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

fn all(s: &str, f: impl Fn(u8) -> bool) -> bool {
    s.bytes().all(f)
}

/// `^(?::[0-5]?[0-9])+` repeated groups after a leading part.
fn sexagesimal_tail(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    s.split(':').skip(1).all(|p| {
        (1..=2).contains(&p.len())
            && all(p, |b| b.is_ascii_digit())
            && (p.len() == 1 || (b'0'..=b'5').contains(&p.as_bytes()[0]))
    }) && s.starts_with(':')
}

fn is_yaml11_int(s: &str) -> bool {
    let (_, body) = strip_sign(s);
    let b = body.as_bytes();
    if let Some(rest) = body.strip_prefix("0b") {
        return !rest.is_empty() && all(rest, |c| matches!(c, b'0' | b'1' | b'_'));
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return !rest.is_empty() && all(rest, |c| c.is_ascii_hexdigit() || c == b'_');
    }
    if body == "0" {
        return true;
    }
    if b.first() == Some(&b'0') {
        return body.len() > 1 && all(&body[1..], |c| matches!(c, b'0'..=b'7' | b'_'));
    }
    if !matches!(b.first(), Some(b'1'..=b'9')) {
        return false;
    }
    match body.find(':') {
        None => all(body, |c| c.is_ascii_digit() || c == b'_'),
        Some(i) => {
            all(&body[..i], |c| c.is_ascii_digit() || c == b'_') && sexagesimal_tail(&body[i..])
        }
    }
}

fn yaml11_int(s: &str) -> Option<AVal> {
    let cleaned: String = s.chars().filter(|c| *c != '_').collect();
    let (negative, body) = strip_sign(&cleaned);
    if body == "0" {
        return Some(AVal::Int(0));
    }
    if let Some(rest) = body.strip_prefix("0b") {
        return int_from_digits(rest, 2, negative);
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return int_from_digits(rest, 16, negative);
    }
    if body.starts_with('0') {
        return int_from_digits(body, 8, negative);
    }
    if body.contains(':') {
        let mut value: i128 = 0;
        for part in body.split(':') {
            value = value
                .checked_mul(60)?
                .checked_add(part.parse::<i128>().ok()?)?;
        }
        let value = if negative { -value } else { value };
        return Some(match i64::try_from(value) {
            Ok(i) => AVal::Int(i),
            Err(_) => AVal::BigInt(value.to_string()),
        });
    }
    int_from_digits(body, 10, negative)
}

fn is_yaml11_float(s: &str) -> bool {
    if matches!(s, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (_, body) = strip_sign(s);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    // `\.[0-9][0-9_]*([eE][-+][0-9]+)?` takes no sign.
    if let Some(rest) = s.strip_prefix('.') {
        let (mant, exp) = split_exp(rest);
        return rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && all(mant, |c| c.is_ascii_digit() || c == b'_')
            && exp_ok(exp);
    }
    if !body.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let Some(dot) = body.find('.') else {
        return false;
    };
    let (int_part, frac) = (&body[..dot], &body[dot + 1..]);
    if let Some(colon) = int_part.find(':') {
        // Sexagesimal: `[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*`.
        return all(&int_part[..colon], |c| c.is_ascii_digit() || c == b'_')
            && sexagesimal_tail(&int_part[colon..])
            && all(frac, |c| c.is_ascii_digit() || c == b'_');
    }
    let (frac, exp) = split_exp(frac);
    all(int_part, |c| c.is_ascii_digit() || c == b'_')
        && all(frac, |c| c.is_ascii_digit() || c == b'_')
        && exp_ok(exp)
}

fn split_exp(s: &str) -> (&str, Option<&str>) {
    match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// `[eE][-+][0-9]+`: YAML 1.1 wants the exponent's sign.
fn exp_ok(exp: Option<&str>) -> bool {
    match exp {
        None => true,
        Some(e) => {
            (e.starts_with('+') || e.starts_with('-'))
                && e.len() > 1
                && all(&e[1..], |c| c.is_ascii_digit())
        }
    }
}

fn yaml11_float(s: &str) -> Option<f64> {
    let cleaned: String = s
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (negative, body) = strip_sign(&cleaned);
    let sign = if negative { -1.0 } else { 1.0 };
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut value = 0.0;
        for part in body.split(':') {
            value = value * 60.0 + part.parse::<f64>().ok()?;
        }
        return Some(sign * value);
    }
    // Python's float() reads `1.` and `.5` as Rust does.
    body.parse::<f64>().ok().map(|f| sign * f)
}

/// PyYAML's timestamp: a date (`2001-12-14`) or a date and time, printed as Python's
/// `isoformat()` (what Ansible's JSON output shows).
fn yaml11_timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_digit) || s.len() < 8 {
        return None;
    }
    let num = |t: &str, min: usize, max: usize| -> Option<u32> {
        (t.len() >= min && t.len() <= max && all(t, |c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, rest) = match s.find(['T', 't', ' ', '\t']) {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let year = num(y, 4, 4)?;
    let (month, day) = match rest {
        None => (num(m, 2, 2)?, num(d, 2, 2)?),
        Some(_) => (num(m, 1, 2)?, num(d, 1, 2)?),
    };
    let valid_date = |y: u32, m: u32, d: u32| {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        (1..=12).contains(&m) && d >= 1 && d <= days[(m - 1) as usize] && y >= 1
    };
    let Some(rest) = rest else {
        return valid_date(year, month, day).then(|| format!("{year:04}-{month:02}-{day:02}"));
    };
    // `(?:[Tt]|[ \t]+)HH:MM:SS(?:\.fraction)?(?:[ \t]*(?:Z|[-+]HH(?::MM)?))?`
    let rest = if rest.starts_with(['T', 't']) {
        &rest[1..]
    } else {
        rest.trim_start_matches([' ', '\t'])
    };
    let time_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (time, tz) = (
        &rest[..time_end],
        rest[time_end..].trim_start_matches([' ', '\t']),
    );
    let (hms, fraction) = match time.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (time, None),
    };
    let mut t = hms.split(':');
    let hour = num(t.next()?, 1, 2)?;
    let minute = num(t.next()?, 2, 2)?;
    let second = num(t.next()?, 2, 2)?;
    if t.next().is_some() || fraction.is_some_and(|f| !all(f, |c| c.is_ascii_digit())) {
        return None;
    }
    if !valid_date(year, month, day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut micros = fraction.unwrap_or("").to_string();
    micros.truncate(6);
    while !micros.is_empty() && micros.len() < 6 {
        micros.push('0');
    }
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if !micros.is_empty() && micros != "000000" {
        out.push('.');
        out.push_str(&micros);
    }
    if tz.is_empty() {
        return Some(out);
    }
    if tz == "Z" {
        out.push_str("+00:00");
        return Some(out);
    }
    let (sign, tz) = match tz.as_bytes()[0] {
        b'+' => ('+', &tz[1..]),
        b'-' => ('-', &tz[1..]),
        _ => return None,
    };
    let (th, tm) = match tz.split_once(':') {
        Some((h, m)) => (num(h, 1, 2)?, num(m, 2, 2)?),
        None => (num(tz, 1, 2)?, 0),
    };
    let _ = write!(out, "{sign}{th:02}:{tm:02}");
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Python's `ast.literal_eval`, over one INI value.

/// Why a value was not a Python literal.
#[derive(Debug, PartialEq)]
pub enum NotLiteral {
    /// Not a literal (a bare word, a syntax error): Ansible keeps the text as a string.
    Text,
    /// A literal Python refuses to build (a list as a dict key): Ansible fails to load.
    Unhashable(&'static str),
}

/// The value Ansible's INI plugin gives `text`: `ast.literal_eval(text)` when that succeeds
/// (tuples and sets as lists, complex numbers and `...` as strings), else the text itself.
pub fn ini_value(text: &str) -> Result<AVal, &'static str> {
    match literal_eval(text) {
        Ok(v) => Ok(v.into_aval()),
        Err(NotLiteral::Text) => Ok(AVal::Str(text.to_string())),
        Err(NotLiteral::Unhashable(kind)) => Err(kind),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Py {
    None,
    Bool(bool),
    Int(AVal),
    Float(f64),
    Complex(f64, f64),
    Str(String),
    Bytes(Vec<u8>),
    Ellipsis,
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Set(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

impl Py {
    fn hashable(&self) -> bool {
        match self {
            Py::List(_) | Py::Set(_) | Py::Dict(_) => false,
            Py::Tuple(items) => items.iter().all(Py::hashable),
            _ => true,
        }
    }

    fn into_aval(self) -> AVal {
        match self {
            Py::None => AVal::Null,
            Py::Bool(b) => AVal::Bool(b),
            Py::Int(i) => i,
            Py::Float(f) => AVal::Float(f),
            Py::Complex(re, im) => AVal::Str(complex_repr(re, im)),
            Py::Str(s) => AVal::Str(s),
            Py::Bytes(b) => AVal::Str(String::from_utf8_lossy(&b).into_owned()),
            Py::Ellipsis => AVal::Str("...".into()),
            Py::List(items) | Py::Tuple(items) | Py::Set(items) => {
                AVal::List(items.into_iter().map(Py::into_aval).collect())
            }
            Py::Dict(entries) => AVal::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let key = match k.into_aval() {
                            AVal::Str(s) => s,
                            other => other.label().unwrap_or_else(|| "null".into()),
                        };
                        (key, v.into_aval())
                    })
                    .collect(),
            ),
        }
    }
}

fn complex_repr(re: f64, im: f64) -> String {
    let imag = py_float_repr(im, false);
    if re == 0.0 && re.is_sign_positive() {
        format!("{imag}j")
    } else {
        let sign = if im.is_sign_negative() { "" } else { "+" };
        format!("({}{sign}{imag}j)", py_float_repr(re, false))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Py),
    Str(Py),
    Name(String),
    Op(&'static str),
}

/// Python's parser gives up on parentheses nested deeper than this (a syntax error).
const MAX_NESTING: usize = 200;
/// Python refuses to convert longer decimal integers (`sys.int_info.default_max_str_digits`).
const MAX_INT_DIGITS: usize = 4300;

fn literal_eval(text: &str) -> Result<Py, NotLiteral> {
    // literal_eval strips leading spaces and tabs only.
    let toks = tokenize(text.trim_start_matches([' ', '\t']))?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let v = p.expr_list(true)?;
    if p.pos != p.toks.len() {
        return Err(NotLiteral::Text);
    }
    Ok(v)
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn tokenize(s: &str) -> Result<Vec<Tok>, NotLiteral> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\x0c' => i += 1,
            '#' => break,
            '(' | ')' | '[' | ']' | '{' | '}' | ',' | ':' | '+' | '-' => {
                toks.push(Tok::Op(match c {
                    '(' => "(",
                    ')' => ")",
                    '[' => "[",
                    ']' => "]",
                    '{' => "{",
                    '}' => "}",
                    ',' => ",",
                    ':' => ":",
                    '+' => "+",
                    _ => "-",
                }));
                i += 1;
            }
            '.' if chars.get(i + 1) == Some(&'.') && chars.get(i + 2) == Some(&'.') => {
                toks.push(Tok::Op("..."));
                i += 3;
            }
            '.' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                let (tok, next) = number(&chars, i)?;
                toks.push(tok);
                i = next;
            }
            '0'..='9' => {
                let (tok, next) = number(&chars, i)?;
                toks.push(tok);
                i = next;
            }
            '\'' | '"' => {
                let (tok, next) = string(&chars, i, "")?;
                toks.push(tok);
                i = next;
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident_continue(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if matches!(chars.get(i), Some('\'' | '"')) {
                    let (tok, next) = string(&chars, i, &word.to_ascii_lowercase())?;
                    toks.push(tok);
                    i = next;
                } else {
                    toks.push(Tok::Name(word));
                }
            }
            // Any other character (`*`, `=`, `;`, …) makes an expression literal_eval refuses,
            // or a syntax error: either way the value stays text.
            _ => return Err(NotLiteral::Text),
        }
    }
    Ok(toks)
}

fn number(chars: &[char], start: usize) -> Result<(Tok, usize), NotLiteral> {
    let mut i = start;
    let digits = |i: &mut usize, ok: fn(char) -> bool| -> Result<String, NotLiteral> {
        // `[d](_?[d])*`
        let mut out = String::new();
        while *i < chars.len() {
            let c = chars[*i];
            if ok(c) {
                out.push(c);
                *i += 1;
            } else if c == '_' && *i + 1 < chars.len() && ok(chars[*i + 1]) && !out.is_empty() {
                *i += 1;
            } else {
                break;
            }
        }
        Ok(out)
    };
    let after = |i: usize| -> Result<(), NotLiteral> {
        // A number glued to a name or another number is a syntax error.
        match chars.get(i) {
            Some(c) if is_ident_continue(*c) || *c == '.' || *c == '_' => Err(NotLiteral::Text),
            _ => Ok(()),
        }
    };
    if chars[i] == '0' && matches!(chars.get(i + 1), Some('x' | 'X' | 'o' | 'O' | 'b' | 'B')) {
        let (radix, ok): (u32, fn(char) -> bool) = match chars[i + 1] {
            'x' | 'X' => (16, |c: char| c.is_ascii_hexdigit()),
            'o' | 'O' => (8, |c: char| ('0'..='7').contains(&c)),
            _ => (2, |c: char| c == '0' || c == '1'),
        };
        i += 2;
        if chars.get(i) == Some(&'_') {
            i += 1;
        }
        let d = digits(&mut i, ok)?;
        if d.is_empty() {
            return Err(NotLiteral::Text);
        }
        after(i)?;
        let v = int_from_digits(&d, radix, false).ok_or(NotLiteral::Text)?;
        return Ok((Tok::Num(Py::Int(v)), i));
    }
    let int_part = if chars[i] == '.' {
        String::new()
    } else {
        digits(&mut i, |c| c.is_ascii_digit())?
    };
    let mut is_float = false;
    let mut text = int_part.clone();
    if chars.get(i) == Some(&'.') {
        is_float = true;
        i += 1;
        text.push('.');
        text.push_str(&digits(&mut i, |c| c.is_ascii_digit())?);
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        i += 1;
        let mut exp = String::from("e");
        if matches!(chars.get(i), Some('+' | '-')) {
            exp.push(chars[i]);
            i += 1;
        }
        let d = digits(&mut i, |c| c.is_ascii_digit())?;
        if d.is_empty() {
            // `1e` or `1ex`: a syntax error.
            return Err(NotLiteral::Text);
        }
        exp.push_str(&d);
        text.push_str(&exp);
        is_float = true;
    }
    if matches!(chars.get(i), Some('j' | 'J')) {
        i += 1;
        after(i)?;
        let im: f64 = text.parse().map_err(|_| NotLiteral::Text)?;
        return Ok((Tok::Num(Py::Complex(0.0, im)), i));
    }
    after(i)?;
    if is_float {
        let f: f64 = text.parse().map_err(|_| NotLiteral::Text)?;
        return Ok((Tok::Num(Py::Float(f)), i));
    }
    if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
        // "leading zeros in decimal integer literals are not permitted"
        return Err(NotLiteral::Text);
    }
    if int_part.len() > MAX_INT_DIGITS {
        return Err(NotLiteral::Text);
    }
    let v = int_from_digits(&int_part, 10, false).ok_or(NotLiteral::Text)?;
    Ok((Tok::Num(Py::Int(v)), i))
}

fn string(chars: &[char], start: usize, prefix: &str) -> Result<(Tok, usize), NotLiteral> {
    let (raw, bytes) = match prefix {
        "" | "u" => (false, false),
        "r" => (true, false),
        "b" => (false, true),
        "br" | "rb" => (true, true),
        // f-strings are not literals; other prefixes are syntax errors.
        _ => return Err(NotLiteral::Text),
    };
    let q = chars[start];
    let triple = chars.get(start + 1) == Some(&q) && chars.get(start + 2) == Some(&q);
    let mut i = start + if triple { 3 } else { 1 };
    let mut body = String::new();
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(NotLiteral::Text);
        };
        if c == q {
            if !triple {
                i += 1;
                break;
            }
            if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                i += 3;
                break;
            }
        }
        if c == '\\' {
            let Some(&n) = chars.get(i + 1) else {
                return Err(NotLiteral::Text);
            };
            if raw {
                body.push('\\');
                body.push(n);
                i += 2;
                continue;
            }
            i += 2;
            match n {
                '\n' => {}
                '\\' => body.push('\\'),
                '\'' => body.push('\''),
                '"' => body.push('"'),
                'a' => body.push('\x07'),
                'b' => body.push('\x08'),
                'f' => body.push('\x0c'),
                'n' => body.push('\n'),
                'r' => body.push('\r'),
                't' => body.push('\t'),
                'v' => body.push('\x0b'),
                '0'..='7' => {
                    let mut v = n.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.get(i).and_then(|c| c.to_digit(8)) {
                            Some(d) => {
                                v = v * 8 + d;
                                i += 1;
                            }
                            None => break,
                        }
                    }
                    body.push(char::from_u32(v).ok_or(NotLiteral::Text)?);
                }
                'x' | 'u' | 'U' if n == 'x' || !bytes => {
                    let len = match n {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = chars
                        .get(i..i + len)
                        .ok_or(NotLiteral::Text)?
                        .iter()
                        .collect();
                    let v = u32::from_str_radix(&hex, 16).map_err(|_| NotLiteral::Text)?;
                    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        return Err(NotLiteral::Text);
                    }
                    body.push(char::from_u32(v).ok_or(NotLiteral::Text)?);
                    i += len;
                }
                // `\N{name}` needs Unicode's name table: leave such values as text.
                'N' if !bytes => return Err(NotLiteral::Text),
                other => {
                    body.push('\\');
                    body.push(other);
                }
            }
            continue;
        }
        if !triple && c == '\n' {
            return Err(NotLiteral::Text);
        }
        body.push(c);
        i += 1;
    }
    if bytes {
        if !body.is_ascii() && !raw {
            // Escapes like \xff give bytes above 127; anything else non-ASCII is an error.
            let mut out = Vec::new();
            for ch in body.chars() {
                out.push(u8::try_from(u32::from(ch)).map_err(|_| NotLiteral::Text)?);
            }
            return Ok((Tok::Str(Py::Bytes(out)), i));
        }
        if !body.is_ascii() {
            return Err(NotLiteral::Text);
        }
        return Ok((Tok::Str(Py::Bytes(body.into_bytes())), i));
    }
    Ok((Tok::Str(Py::Str(body)), i))
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `expr (',' expr)* [',']`: a tuple when there is a comma. `top` allows an empty list
    /// only inside brackets.
    fn expr_list(&mut self, top: bool) -> Result<Py, NotLiteral> {
        let first = self.expr()?;
        if !matches!(self.peek(), Some(Tok::Op(","))) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat(",") {
            if self.at_close() || (top && self.peek().is_none()) {
                break;
            }
            items.push(self.expr()?);
        }
        Ok(Py::Tuple(items))
    }

    fn at_close(&self) -> bool {
        matches!(self.peek(), Some(Tok::Op(")" | "]" | "}")))
    }

    fn expr(&mut self) -> Result<Py, NotLiteral> {
        let left = self.unary()?;
        // `a + bj` / `a - bj`: the only binary operation literal_eval accepts.
        if let Some(Tok::Op(op @ ("+" | "-"))) = self.peek().cloned() {
            self.pos += 1;
            let right = self.atom()?;
            let re = match &left {
                Py::Int(i) => int_to_f64(i),
                Py::Float(f) => *f,
                _ => return Err(NotLiteral::Text),
            };
            let Py::Complex(_, im) = right else {
                return Err(NotLiteral::Text);
            };
            let im = if op == "-" { -im } else { im };
            let v = Py::Complex(re, im);
            if matches!(self.peek(), Some(Tok::Op("+" | "-"))) {
                return Err(NotLiteral::Text);
            }
            return Ok(v);
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Py, NotLiteral> {
        if let Some(Tok::Op(op @ ("+" | "-"))) = self.peek().cloned() {
            self.pos += 1;
            // The operand must be a number itself, not another sign.
            let v = match self.peek().cloned() {
                Some(Tok::Num(v)) => {
                    self.pos += 1;
                    v
                }
                _ => return Err(NotLiteral::Text),
            };
            return Ok(match (op, v) {
                ("+", v) => v,
                (_, Py::Int(i)) => Py::Int(negate(i)),
                (_, Py::Float(f)) => Py::Float(-f),
                (_, Py::Complex(re, im)) => Py::Complex(-re, -im),
                _ => return Err(NotLiteral::Text),
            });
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Py, NotLiteral> {
        let Some(tok) = self.peek().cloned() else {
            return Err(NotLiteral::Text);
        };
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(v),
            Tok::Str(first) => {
                // Adjacent strings concatenate; str and bytes do not mix.
                let mut acc = first;
                while let Some(Tok::Str(next)) = self.peek().cloned() {
                    self.pos += 1;
                    acc = match (acc, next) {
                        (Py::Str(a), Py::Str(b)) => Py::Str(a + &b),
                        (Py::Bytes(mut a), Py::Bytes(b)) => {
                            a.extend(b);
                            Py::Bytes(a)
                        }
                        _ => return Err(NotLiteral::Text),
                    };
                }
                Ok(acc)
            }
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Py::Bool(true)),
                "False" => Ok(Py::Bool(false)),
                "None" => Ok(Py::None),
                "set" if self.eat("(") => {
                    if self.eat(")") {
                        Ok(Py::Set(Vec::new()))
                    } else {
                        Err(NotLiteral::Text)
                    }
                }
                _ => Err(NotLiteral::Text),
            },
            Tok::Op("...") => Ok(Py::Ellipsis),
            Tok::Op(open @ ("(" | "[" | "{")) => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return Err(NotLiteral::Text);
                }
                let v = match open {
                    "(" => self.paren()?,
                    "[" => self.list()?,
                    _ => self.brace()?,
                };
                self.depth -= 1;
                Ok(v)
            }
            Tok::Op(_) => Err(NotLiteral::Text),
        }
    }

    fn paren(&mut self) -> Result<Py, NotLiteral> {
        if self.eat(")") {
            return Ok(Py::Tuple(Vec::new()));
        }
        let v = self.expr_list(false)?;
        if !self.eat(")") {
            return Err(NotLiteral::Text);
        }
        Ok(v)
    }

    fn list(&mut self) -> Result<Py, NotLiteral> {
        let mut items = Vec::new();
        while !self.eat("]") {
            items.push(self.expr()?);
            if !self.eat(",") {
                if !self.eat("]") {
                    return Err(NotLiteral::Text);
                }
                break;
            }
        }
        Ok(Py::List(items))
    }

    fn brace(&mut self) -> Result<Py, NotLiteral> {
        if self.eat("}") {
            return Ok(Py::Dict(Vec::new()));
        }
        let first = self.expr()?;
        if self.eat(":") {
            let mut entries: Vec<(Py, Py)> = Vec::new();
            let mut key = first;
            loop {
                let value = self.expr()?;
                if !key.hashable() {
                    return Err(NotLiteral::Unhashable("a list or mapping as a dict key"));
                }
                match entries.iter_mut().find(|(k, _)| py_eq(k, &key)) {
                    Some(slot) => slot.1 = value,
                    None => entries.push((key, value)),
                }
                if self.eat("}") {
                    return Ok(Py::Dict(entries));
                }
                if !self.eat(",") {
                    return Err(NotLiteral::Text);
                }
                if self.eat("}") {
                    return Ok(Py::Dict(entries));
                }
                key = self.expr()?;
                if !self.eat(":") {
                    return Err(NotLiteral::Text);
                }
            }
        }
        let mut items = vec![first];
        loop {
            if self.eat("}") {
                break;
            }
            if !self.eat(",") {
                return Err(NotLiteral::Text);
            }
            if self.eat("}") {
                break;
            }
            items.push(self.expr()?);
        }
        if items.iter().any(|i| !i.hashable()) {
            return Err(NotLiteral::Unhashable("a list or mapping inside a set"));
        }
        let mut unique: Vec<Py> = Vec::new();
        for item in items {
            if !unique.iter().any(|u| py_eq(u, &item)) {
                unique.push(item);
            }
        }
        Ok(Py::Set(unique))
    }
}

fn int_to_f64(i: &AVal) -> f64 {
    match i {
        AVal::Int(i) => *i as f64,
        AVal::BigInt(s) => s.parse().unwrap_or(f64::INFINITY),
        _ => 0.0,
    }
}

/// Python equality for dict keys and set members (`1 == 1.0 == True`).
fn py_eq(a: &Py, b: &Py) -> bool {
    let num = |p: &Py| match p {
        Py::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Py::Int(i) => Some(int_to_f64(i)),
        Py::Float(f) => Some(*f),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(s: &str) -> AVal {
        ini_value(s).unwrap()
    }

    fn s(v: &str) -> AVal {
        AVal::Str(v.into())
    }

    #[test]
    fn ini_values_are_python_literals() {
        assert_eq!(ini("False # comment"), AVal::Bool(false));
        assert_eq!(ini("True"), AVal::Bool(true));
        assert_eq!(ini("true"), s("true"));
        assert_eq!(ini("'quoted'"), s("quoted"));
        assert_eq!(ini("\"a\" 'b'"), s("ab"));
        assert_eq!(ini("foo # comment"), s("foo # comment"));
        assert_eq!(ini("1.0"), AVal::Float(1.0));
        assert_eq!(ini("0x1F"), AVal::Int(31));
        assert_eq!(ini("1_000"), AVal::Int(1000));
        assert_eq!(ini("007"), s("007"));
        assert_eq!(ini("00"), AVal::Int(0));
        assert_eq!(ini("-5"), AVal::Int(-5));
        assert_eq!(ini("--5"), s("--5"));
        assert_eq!(ini("None"), AVal::Null);
        assert_eq!(ini(""), s(""));
        assert_eq!(ini("1, 2"), AVal::List(vec![AVal::Int(1), AVal::Int(2)]));
        assert_eq!(
            ini("{'a': [1, 2], 'b': None}"),
            AVal::Map(vec![
                ("a".into(), AVal::List(vec![AVal::Int(1), AVal::Int(2)])),
                ("b".into(), AVal::Null)
            ])
        );
        assert_eq!(ini("1j"), s("1j"));
        assert_eq!(ini("1+2j"), s("(1+2j)"));
        assert_eq!(ini("..."), s("..."));
        assert_eq!(ini("b'x'"), s("x"));
        assert_eq!(ini("f'x'"), s("f'x'"));
        assert_eq!(ini("a=b"), s("a=b"));
        assert_eq!(ini("{{ jinja }}"), s("{{ jinja }}"));
        assert_eq!(ini("1e3"), AVal::Float(1000.0));
        assert_eq!(
            ini("123456789012345678901234567890"),
            AVal::BigInt("123456789012345678901234567890".into())
        );
        assert_eq!(
            ini_value("{[1]: 2}"),
            Err("a list or mapping as a dict key")
        );
        assert_eq!(ini("'\\x41\\n'"), s("A\n"));
        assert_eq!(ini("r'\\n'"), s("\\n"));
        assert_eq!(ini("[1, [2, (3,)]]").label(), None);
    }

    #[test]
    fn yaml_plain_scalars_are_yaml_1_1() {
        assert_eq!(yaml11_plain("yes"), AVal::Bool(true));
        assert_eq!(yaml11_plain("Off"), AVal::Bool(false));
        assert_eq!(yaml11_plain("0777"), AVal::Int(511));
        assert_eq!(yaml11_plain("1:20"), AVal::Int(80));
        assert_eq!(yaml11_plain("1e3"), s("1e3"));
        assert_eq!(yaml11_plain("1.0e+3"), AVal::Float(1000.0));
        assert_eq!(yaml11_plain("-.5"), s("-.5"));
        assert_eq!(yaml11_plain(".5"), AVal::Float(0.5));
        assert_eq!(yaml11_plain("0o17"), s("0o17"));
        assert_eq!(yaml11_plain("~"), AVal::Null);
        assert_eq!(yaml11_plain("1_000"), AVal::Int(1000));
        assert_eq!(yaml11_plain("0x1F"), AVal::Int(31));
        assert_eq!(yaml11_plain("08"), s("08"));
        assert_eq!(yaml11_plain("2001-12-14"), s("2001-12-14"));
        assert_eq!(
            yaml11_plain("2001-12-14 21:59:43.10 -5"),
            s("2001-12-14T21:59:43.100000-05:00")
        );
        assert_eq!(
            yaml11_plain("12345678901234567890123"),
            AVal::BigInt("12345678901234567890123".into())
        );
        assert_eq!(yaml11_plain("y"), s("y"));
        assert_eq!(yaml11_plain("10.0.0.1"), s("10.0.0.1"));
    }

    #[test]
    fn floats_are_spelled_as_python_prints_them() {
        for (f, want) in [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (123456789.125, "123456789.125"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(json_float(f), want, "{f}");
        }
    }
}
