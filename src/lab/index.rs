//! The labs on this machine and where each one's network lies: one record per lab under
//! [`INDEX_DIR`], written atomically, and the pure rules that give a lab its subnets, bridges,
//! host names and registry address from its record.
//!
//! A lab of S sites owns S consecutive /24s `10.250.K.0/24 … 10.250.(K+S-1).0/24`. Every kernel
//! name derives from the /24's number, which no two labs share, so names never collide and stay
//! within the 15 bytes Linux allows an interface name: bridge `cflabK`, veth `cflabK-N`. Host
//! names derive from the lab's name (`NAME-N`), and so do their network namespaces. The index
//! lives in `/run`: it describes kernel objects, which do not survive a reboot either.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::Error;
use crate::output;

/// One file per lab, `NAME.json`, plus the per-lab lock files `NAME.lock`.
pub const INDEX_DIR: &str = "/run/compose-fleet-labs";
/// The lab that `lab` commands act on when `--name` is not given.
pub const DEFAULT_NAME: &str = "lab";
/// How many L2 segments one lab may have.
pub const MAX_SITES: usize = 8;
/// Hosts get `.11` and up on their site's /24; keep within it.
pub const MAX_HOSTS: usize = 200;
/// Lab names stay short: they prefix host names and network namespaces.
pub const MAX_NAME_LEN: usize = 24;
/// The default lab prefers `10.250.0.0/24` (the address the examples use); other labs start
/// their search above the default lab's largest range, so that it can grow its sites in place.
const OTHERS_FROM: usize = MAX_SITES;

/// What the machine knows about one lab: enough to find, address and remove it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub name: String,
    /// The lab directory (keys, inventory, per-host state).
    pub dir: PathBuf,
    /// K: the lab's first /24 is `10.250.K.0/24`.
    pub base: u8,
    /// How many L2 segments (bridges) the hosts are spread over.
    pub sites: usize,
    pub hosts: usize,
}

impl Record {
    /// The /24 number of a site (0-based).
    fn octet(&self, site: usize) -> usize {
        self.base as usize + site
    }
    /// `10.250.K.0/24` of a site.
    pub fn subnet(&self, site: usize) -> String {
        format!("10.250.{}.0/24", self.octet(site))
    }
    /// The root namespace's address on a site's bridge: the hosts' gateway.
    pub fn gateway(&self, site: usize) -> [u8; 4] {
        [10, 250, self.octet(site) as u8, 1]
    }
    /// The bridge of a site in the root namespace.
    pub fn bridge(&self, site: usize) -> String {
        format!("cflab{}", self.octet(site))
    }
    /// The lab's registry: plain http on the first site's gateway.
    pub fn registry(&self) -> String {
        let [a, b, c, d] = self.gateway(0);
        format!("{a}.{b}.{c}.{d}:5000")
    }
    /// The site of host N (1-based): hosts are dealt round-robin over the sites.
    pub fn site_of(&self, index: usize) -> usize {
        (index - 1) % self.sites.max(1)
    }
    /// Host N's name, hostname and network namespace.
    pub fn host_name(&self, index: usize) -> String {
        format!("{}-{index}", self.name)
    }
    /// Host N's address, on its site's /24.
    pub fn host_address(&self, index: usize) -> [u8; 4] {
        [
            10,
            250,
            self.octet(self.site_of(index)) as u8,
            10 + index as u8,
        ]
    }
    /// The root-side end of host N's veth pair (the peer is `eth0` in the host).
    pub fn veth(&self, index: usize) -> String {
        format!("{}-{index}", self.bridge(self.site_of(index)))
    }
    /// Whether a /24 number belongs to this lab.
    fn holds(&self, octet: usize) -> bool {
        (self.octet(0)..self.octet(self.sites)).contains(&octet)
    }
}

/// Checks a lab name: lower-case letters, digits and `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::User(format!(
            "invalid lab name `{name}`: use 1 to {MAX_NAME_LEN} lower-case letters, digits and `-` (not first or last), e.g. `lab` or `t-42-1`"
        )))
    }
}

/// Where a lab lives when `--dir` is not given.
pub fn default_dir(name: &str) -> PathBuf {
    if name == DEFAULT_NAME {
        PathBuf::from(super::DEFAULT_DIR)
    } else {
        PathBuf::from(format!("{}-{name}", super::DEFAULT_DIR))
    }
}

/// The first /24 of a new lab of `sites` sites, given the labs already recorded: the default lab
/// prefers 0, others the lowest free run from [`OTHERS_FROM`], then any free run. `None` when
/// `10.250.0.0/16` is full.
pub fn allocate(name: &str, sites: usize, taken: &[Record]) -> Option<u8> {
    let free = |start: usize| {
        start + sites <= 256 && (start..start + sites).all(|o| !taken.iter().any(|r| r.holds(o)))
    };
    let preferred = if name == DEFAULT_NAME { 0 } else { OTHERS_FROM };
    (preferred..256)
        .chain(0..preferred)
        .find(|&start| free(start))
        .map(|start| start as u8)
}

fn record_path(name: &str) -> PathBuf {
    Path::new(INDEX_DIR).join(format!("{name}.json"))
}

/// The per-lab lock file: `lab up` and `lab down` of one lab hold it throughout.
pub fn lock_path(name: &str) -> PathBuf {
    Path::new(INDEX_DIR).join(format!("{name}.lock"))
}

/// Creates the index directory.
pub fn ensure_dir() -> Result<(), Error> {
    super::host::mkdir(Path::new(INDEX_DIR), 0o755)
}

/// Every recorded lab, by name. A record that does not parse is skipped with a warning.
pub fn list() -> Vec<Record> {
    let Ok(entries) = fs::read_dir(INDEX_DIR) else {
        return Vec::new();
    };
    let mut records: Vec<Record> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let parsed = fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Record>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => Some(r),
                Err(e) => {
                    output::warning(&format!(
                        "ignoring the lab record {}: {e}; remove it if no lab of that name is up",
                        p.display()
                    ));
                    None
                }
            }
        })
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    records
}

/// The record of the lab with this name.
pub fn get(name: &str) -> Option<Record> {
    let text = fs::read_to_string(record_path(name)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Records a lab: written to a temporary file, synced, then renamed over the old record, so that a
/// reader sees the old record or the new one, never a part.
pub fn put(record: &Record) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(record)
        .map_err(|e| Error::Internal(format!("lab record: {e}")))?;
    write_atomic(&record_path(&record.name), &text)
}

/// Forgets a lab.
pub fn remove(name: &str) {
    let _ = fs::remove_file(record_path(name));
}

/// Writes `path` through a temporary file beside it and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::Env(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, base: u8, sites: usize, hosts: usize) -> Record {
        Record {
            name: name.into(),
            dir: PathBuf::from("/l"),
            base,
            sites,
            hosts,
        }
    }

    #[test]
    fn the_default_lab_keeps_the_examples_addresses_and_its_kernel_names() {
        let lab = record("lab", 0, 1, 3);
        assert_eq!(lab.subnet(0), "10.250.0.0/24");
        assert_eq!(lab.registry(), "10.250.0.1:5000");
        assert_eq!(lab.bridge(0), "cflab0");
        assert_eq!(lab.veth(3), "cflab0-3");
        assert_eq!(lab.host_name(2), "lab-2");
        assert_eq!(lab.host_address(2), [10, 250, 0, 12]);
    }

    #[test]
    fn sites_deal_hosts_round_robin_each_on_its_own_subnet_and_bridge() {
        let lab = record("t-9-1", 12, 2, 4);
        let sites: Vec<usize> = (1..=4).map(|i| lab.site_of(i)).collect();
        assert_eq!(sites, [0, 1, 0, 1]);
        assert_eq!(lab.host_address(1), [10, 250, 12, 11]);
        assert_eq!(lab.host_address(2), [10, 250, 13, 12]);
        assert_eq!(lab.veth(2), "cflab13-2");
        assert_eq!(lab.gateway(1), [10, 250, 13, 1]);
        assert_eq!(lab.registry(), "10.250.12.1:5000");
        // The longest kernel name fits Linux's 15-byte limit.
        assert!(record("x", 255, 1, 200).veth(200).len() <= 15);
    }

    #[test]
    fn allocation_never_overlaps_and_the_default_lab_prefers_zero() {
        assert_eq!(allocate("lab", 1, &[]), Some(0));
        assert_eq!(allocate("t-1-1", 1, &[]), Some(OTHERS_FROM as u8));
        let taken = [record("a", 8, 2, 1), record("lab", 0, 1, 1)];
        assert_eq!(allocate("b", 1, &taken), Some(10));
        assert_eq!(allocate("b", 3, &taken), Some(10));
        // The default lab's place taken: the lowest free run after it.
        let taken = [record("x", 0, 1, 1)];
        assert_eq!(allocate("lab", 2, &taken), Some(1));
        // Other labs fill the low /24s only when all above are taken.
        let high: Vec<Record> = (8..=255)
            .map(|k| record(&format!("l{k}"), k, 1, 1))
            .collect();
        assert_eq!(allocate("y", 1, &high), Some(0));
        // Full: every /24 held.
        let full: Vec<Record> = (0..=255)
            .map(|k| record(&format!("l{k}"), k, 1, 1))
            .collect();
        assert_eq!(allocate("y", 1, &full), None);
        // A run must not cross the end of the /16.
        let most: Vec<Record> = (0..255)
            .map(|k| record(&format!("l{k}"), k, 1, 1))
            .collect();
        assert_eq!(allocate("y", 2, &most), None);
        assert_eq!(allocate("y", 1, &most), Some(255));
    }

    #[test]
    fn lab_names_are_checked() {
        for good in ["lab", "t-123-4", "a", "site2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Lab", "a_b", "a/b", "a.b", &"x".repeat(25)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
