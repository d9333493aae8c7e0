//! What the transport needs to know about a host: [`SshTarget`]. The inventory (`src/inventory`)
//! owns the hosts file; [`from_inventory_file`] is a minimal reader of its SSH fields so the
//! transport works and is tested on its own, until `inventory::Fleet` supplies targets.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How to reach one host over SSH. `None` fields fall back to the user's `~/.ssh/config` and ssh's
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host's name in the inventory (what errors and reports say).
    pub name: String,
    /// Address or ssh_config alias.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    /// Host keys to check against instead of the user's `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
}

impl SshTarget {
    /// `user@address:port` for messages.
    pub fn destination(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.address);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

#[derive(Debug, Default, Deserialize)]
struct SshFields {
    address: Option<String>,
    user: Option<String>,
    port: Option<u16>,
    identity_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct NamedHost {
    name: String,
    #[serde(flatten)]
    ssh: SshFields,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Hosts {
    Map(indexmap::IndexMap<String, Option<SshFields>>),
    List(Vec<NamedHost>),
}

#[derive(Debug, Deserialize)]
struct InventoryFile {
    #[serde(default)]
    defaults: Option<SshFields>,
    hosts: Hosts,
}

/// Reads the SSH fields of an inventory (`hosts:` as a map by name or a list with `name:`, plus
/// `defaults:`); other keys are ignored. Relative paths are relative to the inventory's directory.
pub fn from_inventory_file(path: &Path) -> Result<Vec<SshTarget>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read inventory {}: {e}", path.display()))?;
    parse_inventory(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("inventory {}: {e}", path.display()))
}

fn parse_inventory(text: &str, base: &Path) -> Result<Vec<SshTarget>, String> {
    let file: InventoryFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let defaults = file.defaults.unwrap_or_default();
    let hosts: Vec<(String, SshFields)> = match file.hosts {
        Hosts::Map(m) => m
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        Hosts::List(l) => l.into_iter().map(|h| (h.name, h.ssh)).collect(),
    };
    let resolve = |p: PathBuf| {
        if p.is_relative() {
            base.join(p)
        } else {
            p
        }
    };
    Ok(hosts
        .into_iter()
        .map(|(name, h)| SshTarget {
            address: h
                .address
                .or_else(|| defaults.address.clone())
                .unwrap_or_else(|| name.clone()),
            user: h.user.or_else(|| defaults.user.clone()),
            port: h.port.or(defaults.port),
            identity_file: h
                .identity_file
                .or_else(|| defaults.identity_file.clone())
                .map(resolve),
            known_hosts: h
                .known_hosts
                .or_else(|| defaults.known_hosts.clone())
                .map(resolve),
            name,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_list_inventories_with_defaults() {
        let map = "defaults:\n  user: root\n  identity_file: id_ed25519\n  known_hosts: /abs/known_hosts\n\
                   hosts:\n  h1:\n    address: 10.250.0.11\n    labels: {zone: a}\n  h2:\n    address: 10.250.0.12\n    port: 2222\n    user: admin\n";
        let t = parse_inventory(map, Path::new("/lab")).expect("parses");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "h1");
        assert_eq!(t[0].user.as_deref(), Some("root"));
        assert_eq!(t[0].identity_file, Some(PathBuf::from("/lab/id_ed25519")));
        assert_eq!(t[0].known_hosts, Some(PathBuf::from("/abs/known_hosts")));
        assert_eq!(t[1].destination(), "admin@10.250.0.12:2222");

        let list = "hosts:\n  - name: a\n    address: 10.0.0.1\n  - name: b\n";
        let t = parse_inventory(list, Path::new(".")).expect("parses");
        assert_eq!(t[1].address, "b");
    }
}
