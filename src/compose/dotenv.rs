//! `.env` files (the project's, `--env-file`, and services' `env_file`), in the syntax docker
//! compose reads: `KEY=VALUE` lines, `export ` prefixes, `#` comments, single quotes (literal),
//! double quotes (escapes, interpolation) and interpolation of unquoted values.

use super::interpolate;

/// One problem in an env file: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub line: u32,
    pub message: String,
}

/// Parses `text`; `lookup` resolves `${VAR}` in values (earlier lines of the same file first).
/// A line `KEY` without `=` yields `(KEY, None)`: the value comes from the environment.
pub fn parse(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, Error> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, raw)) = lines.next() {
        let line_no = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, rest)) = line.split_once('=') else {
            let key = line.trim();
            check_key(key, line_no)?;
            out.push((key.to_string(), None));
            continue;
        };
        let key = key.trim();
        check_key(key, line_no)?;
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            // Single quotes: literal, may span lines.
            let mut acc = body.to_string();
            loop {
                if let Some(end) = acc.find('\'') {
                    acc.truncate(end);
                    break acc;
                }
                match lines.next() {
                    Some((_, more)) => {
                        acc.push('\n');
                        acc.push_str(more);
                    }
                    None => {
                        return Err(Error {
                            line: line_no,
                            message: format!("the value of `{key}` has no closing `'`"),
                        })
                    }
                }
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut acc = body.to_string();
            let raw_value = loop {
                if let Some(end) = closing_double_quote(&acc) {
                    acc.truncate(end);
                    break acc;
                }
                match lines.next() {
                    Some((_, more)) => {
                        acc.push('\n');
                        acc.push_str(more);
                    }
                    None => {
                        return Err(Error {
                            line: line_no,
                            message: format!("the value of `{key}` has no closing `\"`"),
                        })
                    }
                }
            };
            expand(&unescape(&raw_value), &out, lookup, line_no)?
        } else {
            // Unquoted: an inline comment starts at ` #`.
            let v = match rest.find(" #").or_else(|| rest.find("\t#")) {
                Some(i) => &rest[..i],
                None => rest,
            };
            expand(v.trim(), &out, lookup, line_no)?
        };
        out.retain(|(k, _)| k != key);
        out.push((key.to_string(), Some(value)));
    }
    Ok(out)
}

/// `format: raw`: `KEY=VALUE` lines taken literally (no quotes, no interpolation); blank lines
/// and `#` comment lines are skipped.
pub fn parse_raw(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

fn check_key(key: &str, line: u32) -> Result<(), Error> {
    if key.is_empty()
        || key
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        return Err(Error {
            line,
            message: format!("`{key}` is not a variable name"),
        });
    }
    Ok(())
}

fn closing_double_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn expand(
    value: &str,
    earlier: &[(String, Option<String>)],
    lookup: &dyn Fn(&str) -> Option<String>,
    line: u32,
) -> Result<String, Error> {
    if !interpolate::needs_interpolation(value) {
        return Ok(value.to_string());
    }
    let local = |name: &str| {
        earlier
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.clone())
            .or_else(|| lookup(name))
    };
    interpolate::interpolate(value, &local)
        .map(|i| i.text)
        .map_err(|e| Error {
            line,
            message: e.message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_compose_env_syntax() {
        let text =
            "# c\nA=1\nexport B = two words # note\nC='lit $A'\nD=\"x\\ny $A\"\nE=${A}0\nF\nG=\n";
        let got = parse(text, &|_| None).unwrap();
        let want: Vec<(String, Option<String>)> = vec![
            ("A".into(), Some("1".into())),
            ("B".into(), Some("two words".into())),
            ("C".into(), Some("lit $A".into())),
            ("D".into(), Some("x\ny 1".into())),
            ("E".into(), Some("10".into())),
            ("F".into(), None),
            ("G".into(), Some(String::new())),
        ];
        assert_eq!(got, want);
        assert_eq!(parse("A='open\n", &|_| None).unwrap_err().line, 1);
    }
}
