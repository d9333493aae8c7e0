//! What the transport needs to know about a host: [`SshTarget`], taken from the inventory's
//! [`Host`] (the inventory owns the hosts file).
//!
//! Every value of a target ends up in `ssh`'s argument list. The inventory refuses values that
//! start with `-`; [`SshTarget::argv_safe`] checks again right before a connection, so that no
//! value, however a target was built, is ever read by `ssh` as an option.

use std::path::{Path, PathBuf};

use crate::inventory::{Connection, Fleet, Host};

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
    /// SSH, or this machine without SSH (`ansible_connection: local`).
    pub connection: Connection,
    /// Run the agent as root through `sudo -n` when the login user is not root (`become: true`,
    /// `ansible_become`).
    pub use_become: bool,
    /// The user to become (`ansible_become_user`); `None` means root, the only one the agent
    /// can run as.
    pub become_user: Option<String>,
    /// Pinned host keys (`ssh-ed25519 AAAA…`): when any, the host must present one of them, and
    /// `known_hosts` files (the inventory's, the user's, the system's) are not consulted.
    pub host_keys: Vec<String>,
}

impl SshTarget {
    /// Refuses a target whose address, user or paths `ssh` could take for an option (a leading
    /// `-`) or split (whitespace or control characters in the address or user).
    pub fn argv_safe(&self) -> Result<(), super::SshError> {
        let refuse = |what: &str, value: &str, why: &str| {
            Err(super::SshError::new(
                &self.name,
                super::ErrorClass::Local,
                format!("refusing to pass {what} `{value}` to ssh: {why}"),
            )
            .with_hint("fix this host in the inventory (`compose-fleet inventory --host NAME` shows where it is set)"))
        };
        let word = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.address.is_empty() || self.address.starts_with('-') || word(&self.address) {
            return refuse(
                "the address",
                &self.address,
                "it is empty, starts with `-` or contains spaces",
            );
        }
        if let Some(u) = &self.user {
            if u.is_empty() || u.starts_with('-') || word(u) {
                return refuse(
                    "the user",
                    u,
                    "it is empty, starts with `-` or contains spaces",
                );
            }
        }
        for (what, p) in [
            ("the identity file", &self.identity_file),
            ("the known_hosts file", &self.known_hosts),
        ] {
            if let Some(p) = p {
                let text = p.to_string_lossy();
                if text.starts_with('-') || text.chars().any(char::is_control) {
                    return refuse(
                        what,
                        &text,
                        "it starts with `-` or contains control characters",
                    );
                }
            }
        }
        Ok(())
    }

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

impl SshTarget {
    /// The SSH side of an inventory host. Relative `identity_file`/`known_hosts` paths are relative
    /// to `base` (the inventory's directory); `~/` is the user's home. Port 22 is left to ssh (so
    /// `~/.ssh/config` can set another for an alias).
    pub fn from_host(host: &Host, base: &Path) -> SshTarget {
        SshTarget {
            name: host.name.clone(),
            address: host.address.clone(),
            user: host.user.clone(),
            port: (host.port != 22).then_some(host.port),
            identity_file: host.identity_file.as_deref().map(|p| resolve(p, base)),
            known_hosts: host.known_hosts.as_deref().map(|p| resolve(p, base)),
            connection: host.connection,
            use_become: host.use_become,
            become_user: host.become_user.clone(),
            host_keys: host.host_keys.clone(),
        }
    }

    /// Every host of `fleet`, in inventory order.
    pub fn all(fleet: &Fleet) -> Vec<SshTarget> {
        let base = fleet
            .source
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        fleet
            .hosts
            .iter()
            .map(|h| SshTarget::from_host(h, base))
            .collect()
    }
}

fn resolve(p: &Path, base: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), std::env::var_os("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_relative() {
        // Absolute, so messages (and `ssh-keygen -R … -f FILE` hints) work from any directory.
        std::path::absolute(base.join(p)).unwrap_or_else(|_| base.join(p))
    } else {
        p.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_ssh_would_read_as_options_are_refused() {
        let ok = SshTarget::from_host(&Host::new("h1", "10.0.0.1"), Path::new("/lab"));
        assert!(ok.argv_safe().is_ok());
        for (address, user) in [
            ("-oProxyCommand=touch x", None),
            ("a b c", None),
            ("10.0.0.1", Some("-oProxyCommand=x")),
            ("10.0.0.1", Some("")),
        ] {
            let mut h = Host::new("h1", address);
            h.user = user.map(String::from);
            let t = SshTarget::from_host(&h, Path::new("/lab"));
            let e = t.argv_safe().unwrap_err();
            assert!(e.message.starts_with("refusing to pass"), "{e}");
        }
        let mut h = Host::new("h1", "10.0.0.1");
        h.identity_file = Some(PathBuf::from("/-i"));
        assert!(SshTarget::from_host(&h, Path::new("/")).argv_safe().is_ok());
        let t = SshTarget {
            identity_file: Some(PathBuf::from("-oX")),
            ..SshTarget::from_host(&Host::new("h1", "10.0.0.1"), Path::new("/"))
        };
        assert!(t.argv_safe().is_err());
    }

    #[test]
    fn inventory_hosts_become_targets_with_paths_resolved() {
        let mut h = Host::new("h1", "10.250.0.11");
        h.identity_file = Some(PathBuf::from("id_ed25519"));
        h.known_hosts = Some(PathBuf::from("/abs/known_hosts"));
        h.user = Some("root".into());
        let t = SshTarget::from_host(&h, Path::new("/lab"));
        assert_eq!(t.identity_file, Some(PathBuf::from("/lab/id_ed25519")));
        assert_eq!(t.known_hosts, Some(PathBuf::from("/abs/known_hosts")));
        assert_eq!(t.port, None);
        assert_eq!(t.destination(), "root@10.250.0.11");
        h.port = 2222;
        assert_eq!(SshTarget::from_host(&h, Path::new("/lab")).port, Some(2222));
    }
}
