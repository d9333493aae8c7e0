//! `hosts --pin`'s edit of compose-fleet's own inventory: adds `host_key:` to hosts, keeping
//! the rest of the file (comments, order, flow or block style) byte for byte. Pure: text in,
//! text out; the result is read back and must give each host exactly the keys added.

use std::collections::BTreeMap;

use super::tree::{self, Value};

/// `text` with `host_key:` added to each named host. Hosts already pinned are refused (the
/// caller verified them and does not overwrite). `Err` says which host could not be edited.
pub fn add_host_keys(
    file: &str,
    text: &str,
    keys: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let root = tree::parse(text).map_err(|(m, _)| format!("cannot read `{file}`: {m}"))?;
    let Value::Map(top) = &root.value else {
        return Err(format!("`{file}` is not a mapping"));
    };
    let Some((_, hosts)) = top.iter().find(|(k, _)| k.text == "hosts") else {
        return Err(format!("`{file}` has no `hosts:`"));
    };
    let Value::Map(hosts) = &hosts.value else {
        return Err(format!("`hosts:` of `{file}` is not a mapping"));
    };
    let lines = LineStarts::new(text);
    let mut inserts: Vec<(usize, String)> = Vec::new();
    for (name, host_keys) in keys {
        if host_keys.is_empty() {
            continue;
        }
        let Some((key, node)) = hosts.iter().find(|(k, _)| &k.text == name) else {
            return Err(format!("host `{name}` is not in `{file}`"));
        };
        let value = yaml_value(host_keys);
        let cannot = |why: &str| {
            format!(
                "cannot add the host key of `{name}` to `{file}` ({why}); add it by hand: \
                 `host_key: {value}`"
            )
        };
        match &node.value {
            Value::Map(entries) => {
                if entries.iter().any(|(k, _)| k.text == "host_key") {
                    return Err(format!(
                        "host `{name}` already has a `host_key` in `{file}`"
                    ));
                }
                let start = lines.offset(text, node.at.line, node.at.column);
                if text[start..].starts_with('{') {
                    let close = closing_brace(text, start).ok_or_else(|| cannot("no `}`"))?;
                    let before = text[..close].trim_end();
                    let (sep, end) = match (before.ends_with('{'), before.len() == close) {
                        (false, _) => (", ", ""),
                        (true, true) => (" ", " "),
                        (true, false) => (" ", ""),
                    };
                    inserts.push((before.len(), format!("{sep}host_key: {value}{end}")));
                } else {
                    // Block style: a line of its own, indented as the host's first key.
                    let (first, _) = entries.first().ok_or_else(|| cannot("no keys"))?;
                    let at = lines.offset(text, first.at.line, 1);
                    let indent = " ".repeat(first.at.column.saturating_sub(1) as usize);
                    inserts.push((at, format!("{indent}host_key: {value}\n")));
                }
            }
            Value::Null => {
                let line_end = lines.end(text, key.at.line);
                let line = &text[lines.offset(text, key.at.line, 1)..line_end];
                let colon = line.find(':').ok_or_else(|| cannot("no `:`"))?;
                if !line[colon + 1..].trim().is_empty() {
                    return Err(cannot("its value is not empty"));
                }
                inserts.push((line_end, format!(" {{ host_key: {value} }}")));
            }
            _ => return Err(cannot("it is not a mapping")),
        }
    }
    inserts.sort_by_key(|b| std::cmp::Reverse(b.0));
    let mut out = text.to_string();
    for (at, piece) in inserts {
        out.insert_str(at, &piece);
    }
    // Read the result back: every edited host has exactly its new keys, nothing else moved.
    let check = super::parse(file, &out)
        .map_err(|e| format!("bug: the inventory with host keys added does not read back:\n{e}"))?;
    for (name, host_keys) in keys.iter().filter(|(_, k)| !k.is_empty()) {
        let got = check.host(name).map(|h| &h.host_keys);
        if got != Some(host_keys) {
            return Err(format!(
                "bug: host `{name}` reads back with host keys {got:?} after the edit"
            ));
        }
    }
    Ok(out)
}

/// One key as a quoted string, several as a flow list.
fn yaml_value(keys: &[String]) -> String {
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    if quoted.len() == 1 {
        quoted[0].clone()
    } else {
        format!("[{}]", quoted.join(", "))
    }
}

/// The byte offset of the `}` closing the flow mapping that opens at `open`.
fn closing_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    let mut chars = text[open..].char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' if prev.is_whitespace() => {
                    // A comment runs to the end of the line.
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(open + i);
                    }
                }
                _ => {}
            },
        }
        prev = c;
    }
    None
}

/// Where each line starts (lines end at `\n`; a `\r` before it stays part of the line's end).
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> LineStarts {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(starts)
    }

    /// The byte offset of 1-based `line` and `column` (in characters).
    fn offset(&self, text: &str, line: u32, column: u32) -> usize {
        let start = self
            .0
            .get(line.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(text.len());
        text[start..]
            .char_indices()
            .nth(column.saturating_sub(1) as usize)
            .map_or(text.len(), |(i, _)| start + i)
    }

    /// The byte offset of the end of 1-based `line` (before its `\r\n` or `\n`).
    fn end(&self, text: &str, line: u32) -> usize {
        let next = self.0.get(line as usize).copied().unwrap_or(text.len() + 1);
        let end = next.saturating_sub(1).min(text.len());
        if text[..end].ends_with('\r') {
            end - 1
        } else {
            end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5";
    const KEY2: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY";

    fn pin(text: &str, hosts: &[(&str, &[&str])]) -> Result<String, String> {
        let keys = hosts
            .iter()
            .map(|(h, k)| (h.to_string(), k.iter().map(|s| s.to_string()).collect()))
            .collect();
        add_host_keys("inventory.yaml", text, &keys)
    }

    #[test]
    fn flow_and_block_hosts_get_their_keys_and_the_rest_stays() {
        let text = "# fleet\nhosts:\n  web-1: { address: 10.0.0.1, labels: { zone: a } }  # front\n  db-1:\n    address: 10.0.0.2\n    user: root\n  bare:\n  empty: {}\n";
        let out = pin(
            text,
            &[
                ("web-1", &[KEY]),
                ("db-1", &[KEY, KEY2]),
                ("bare", &[KEY]),
                ("empty", &[KEY]),
            ],
        )
        .expect("pinned");
        assert_eq!(
            out,
            format!(
                "# fleet\nhosts:\n  web-1: {{ address: 10.0.0.1, labels: {{ zone: a }}, host_key: \"{KEY}\" }}  # front\n  db-1:\n    host_key: [\"{KEY}\", \"{KEY2}\"]\n    address: 10.0.0.2\n    user: root\n  bare: {{ host_key: \"{KEY}\" }}\n  empty: {{ host_key: \"{KEY}\" }}\n"
            )
        );
    }

    #[test]
    fn a_pinned_host_is_not_overwritten() {
        let text = format!("hosts:\n  web-1: {{ address: x, host_key: \"{KEY}\" }}\n");
        let e = pin(&text, &[("web-1", &[KEY2])]).unwrap_err();
        assert!(e.contains("already has a `host_key`"), "{e}");
    }
}
