//! The release records' host side (issue 12): each numbered release of a project that this host
//! took part in, written atomically as `releases/<project>/<number>.json` (0600 in a 0700
//! directory), read back newest first, and pruned to the newest N **of that project only**: one
//! project's pruning never touches another's records (kamal#1922 deleted another destination's
//! rollback state that way).
//!
//! Records live beside `leases/`, not under `projects/<project>/`, so `down` (which removes the
//! project's directory) keeps the history. What to keep is decided by [`to_prune`], pure.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::state::{read_json, write_json, StateRoot};
use super::Failure;
use crate::proto::{RecordRelease, ReleaseRecord};

/// The records' numbers to delete so that the newest `keep` remain (`keep == 0` keeps all).
/// `numbers` in any order; the answer is sorted.
pub fn to_prune(numbers: &[u64], keep: usize) -> Vec<u64> {
    if keep == 0 || numbers.len() <= keep {
        return Vec::new();
    }
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let cut = sorted.len().saturating_sub(keep);
    sorted.truncate(cut);
    sorted
}

/// This host's release records, one directory per project, changed under one mutex.
pub struct Releases {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Releases {
    pub fn new(state: &StateRoot) -> Releases {
        Releases {
            dir: state.root().join("releases"),
            lock: Mutex::new(()),
        }
    }

    fn project_dir(&self, project: &str) -> Result<PathBuf, Failure> {
        if project.is_empty()
            || project.starts_with('.')
            || project.contains(['/', '\0'])
            || project.len() > 255
        {
            return Err(Failure::bad(format!(
                "`{project}` is not a project name (its releases are a directory named after it)"
            )));
        }
        Ok(self.dir.join(project))
    }

    /// The numbers of the records present, unsorted.
    fn numbers(dir: &std::path::Path) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            .collect()
    }

    /// Writes `req.record`, then prunes the project's records to the newest `req.keep`.
    /// Returns the records that remain, newest first, without pods.
    pub fn record(&self, req: &RecordRelease) -> Result<Vec<ReleaseRecord>, Failure> {
        let dir = self.project_dir(&req.record.project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::host(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{}.json", req.record.number));
        write_json(&path, &req.record)
            .map_err(|e| Failure::host(format!("recording release {}", req.record.number), e))?;
        for n in to_prune(&Self::numbers(&dir), req.keep as usize) {
            // A record that cannot be deleted is pruned next time.
            let _ = std::fs::remove_file(dir.join(format!("{n}.json")));
        }
        Ok(self.read(&dir, false))
    }

    /// The project's records, newest first; `pods: false` leaves their pods out.
    pub fn list(&self, project: &str, pods: bool) -> Result<Vec<ReleaseRecord>, Failure> {
        let dir = self.project_dir(project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read(&dir, pods))
    }

    fn read(&self, dir: &std::path::Path, pods: bool) -> Vec<ReleaseRecord> {
        let mut numbers = Self::numbers(dir);
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        numbers
            .into_iter()
            .filter_map(|n| read_json::<ReleaseRecord>(&dir.join(format!("{n}.json"))))
            .map(|mut r| {
                if !pods {
                    r.pods.clear();
                }
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ReleaseStatus;

    #[test]
    fn pruning_keeps_the_newest_n() {
        assert_eq!(to_prune(&[3, 1, 2], 10), Vec::<u64>::new());
        assert_eq!(to_prune(&[3, 1, 2, 5, 4], 2), vec![1, 2, 3]);
        assert_eq!(to_prune(&[7, 9], 0), Vec::<u64>::new(), "0 keeps all");
        assert_eq!(to_prune(&[4, 4, 1], 1), vec![1]);
        assert_eq!(to_prune(&[], 1), Vec::<u64>::new());
    }

    fn record(project: &str, number: u64) -> RecordRelease {
        RecordRelease {
            record: ReleaseRecord {
                project: project.into(),
                number,
                started: number * 100,
                owner: "ana@laptop".into(),
                status: ReleaseStatus::Succeeded,
                changed: vec!["web".into()],
                managed: vec!["web".into()],
                rollback_of: None,
                message: None,
                pods: vec![serde_json::from_str(&format!(
                    r#"{{"name":"web-1","hostname":"web-1","spec_hash":"h{number}","containers":[]}}"#
                ))
                .expect("a pod spec")],
            },
            keep: 3,
            fence: None,
        }
    }

    #[test]
    fn records_are_listed_newest_first_and_pruned_within_their_project_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let releases = Releases::new(&StateRoot::new(dir.path()));
        releases.record(&record("other", 1)).expect("record");
        for n in 1..=5 {
            releases.record(&record("shop", n)).expect("record");
        }
        let shop = releases.list("shop", true).expect("list");
        let numbers: Vec<u64> = shop.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [5, 4, 3]);
        assert_eq!(shop[0].pods[0].spec_hash, "h5");
        assert!(releases.list("shop", false).expect("list")[0]
            .pods
            .is_empty());
        // The other project's record survived shop's pruning.
        assert_eq!(releases.list("other", false).expect("list").len(), 1);
        // A status update overwrites the record in place.
        let mut failed = record("shop", 5);
        failed.record.status = ReleaseStatus::RolledBack;
        releases.record(&failed).expect("record");
        let again = Releases::new(&StateRoot::new(dir.path()));
        let listed = again.list("shop", false).expect("list");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].status, ReleaseStatus::RolledBack);
        let mode = std::fs::metadata(dir.path().join("releases/shop/5.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(releases.list("../x", false).is_err());
    }
}
