//! The deploy lock's host side (issue 12): one lease per project, recorded atomically as
//! `leases/<project>.json`, with a fencing number that grows on every new grant; writes
//! (`ApplyPods`, `Remove`) that carry another number than the recorded one are refused.
//!
//! Expiry is judged on this host's clock only (the lease stores its deadline in this host's unix
//! milliseconds), so clock skew between the deployer and the host does not matter. The record is
//! kept after release or expiry: the next grant numbers from it, so a number is never reused.
//!
//! The decisions ([`decide_lock`], [`check_fence`]) are pure and unit-tested; [`Leases`] adds the
//! file and the mutex.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::state::{read_json, unix_millis, write_json, StateRoot};
use super::Failure;
use crate::proto::{Lease, LockOwner, LockRequest};

/// A project's lease as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub owner: LockOwner,
    pub fence: u64,
    /// This host's unix milliseconds at which the lease expires (0 once released).
    pub expires_ms: u64,
}

impl Record {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }

    fn lease(&self, project: &str, now_ms: u64) -> Lease {
        Lease {
            project: project.to_string(),
            owner: self.owner.clone(),
            fence: self.fence,
            expires_in_secs: self.expires_ms.saturating_sub(now_ms).div_ceil(1000),
        }
    }
}

/// What a `Lock` request gets: the record to store (when granted) and the answer.
pub fn decide_lock(current: Option<&Record>, req: &LockRequest, now_ms: u64) -> (bool, Record) {
    let ttl_ms = req.ttl_secs.max(1).saturating_mul(1000);
    let grant = |fence| Record {
        owner: req.owner.clone(),
        fence,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    match (current, req.fence) {
        // Renewal: only of the lease this caller was given, and only while no newer grant
        // replaced it (an expired lease nobody took is still this caller's: nothing else wrote).
        (Some(cur), Some(f)) if cur.fence == f && cur.owner == req.owner => (true, grant(f)),
        (Some(cur), Some(_)) => (false, cur.clone()),
        (None, Some(_)) => (false, grant(0)),
        // A new grant: when nobody holds a live lease, numbered one past the last.
        (Some(cur), None) if cur.live(now_ms) => (false, cur.clone()),
        (Some(cur), None) => (true, grant(cur.fence + 1)),
        (None, None) => (true, grant(1)),
    }
}

/// Whether a write carrying `fence` may go ahead. `None` (an older CLI, or `down`) is not
/// checked; `Some(n)` must be the recorded lease's number.
pub fn check_fence(current: Option<&Record>, fence: Option<u64>) -> Result<(), String> {
    match (current, fence) {
        (_, None) | (None, Some(_)) => Ok(()),
        (Some(cur), Some(f)) if cur.fence == f => Ok(()),
        (Some(cur), Some(f)) => Err(format!(
            "refused: this write carries the deploy lock's number {f}, but lease {} (held by {}@{}, pid {}) replaced it; the deploy that sent it lost its lease (paused or cut off past its TTL) and must not change anything",
            cur.fence, cur.owner.user, cur.owner.machine, cur.owner.pid
        )),
    }
}

/// The leases of this host, one file per project, changed under one mutex.
pub struct Leases {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Leases {
    pub fn new(state: &StateRoot) -> Leases {
        Leases {
            dir: state.root().join("leases"),
            lock: Mutex::new(()),
        }
    }

    fn path(&self, project: &str) -> Result<PathBuf, Failure> {
        if project.is_empty()
            || project.starts_with('.')
            || project.contains(['/', '\0'])
            || project.len() > 255
        {
            return Err(Failure::bad(format!(
                "`{project}` is not a project name (a lease is a file named after it)"
            )));
        }
        Ok(self.dir.join(format!("{project}.json")))
    }

    /// Takes or renews the lease; `(granted, lease)`.
    pub fn lock(&self, req: &LockRequest) -> Result<(bool, Lease), Failure> {
        let path = self.path(&req.project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_millis();
        let current: Option<Record> = read_json(&path);
        let (granted, record) = decide_lock(current.as_ref(), req, now);
        if granted {
            write_json(&path, &record)
                .map_err(|e| Failure::host(format!("recording the lease {}", path.display()), e))?;
        }
        Ok((granted, record.lease(&req.project, now)))
    }

    /// Releases lease `fence` (kept on disk, expired, so numbering goes on from it).
    pub fn unlock(&self, project: &str, fence: u64) -> Result<(bool, Lease), Failure> {
        let path = self.path(project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_millis();
        let Some(mut record) = read_json::<Record>(&path) else {
            return Err(Failure::bad(format!("no lease of project {project} here")));
        };
        if record.fence != fence {
            return Ok((false, record.lease(project, now)));
        }
        record.expires_ms = 0;
        write_json(&path, &record)
            .map_err(|e| Failure::host(format!("releasing the lease {}", path.display()), e))?;
        Ok((true, record.lease(project, now)))
    }

    /// Refuses a write whose fencing number is stale.
    pub fn check(&self, project: &str, fence: Option<u64>) -> Result<(), Failure> {
        if fence.is_none() {
            return Ok(());
        }
        let path = self.path(project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        check_fence(read_json::<Record>(&path).as_ref(), fence).map_err(Failure::bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> LockOwner {
        LockOwner {
            user: "ana".into(),
            machine: "laptop".into(),
            pid,
            started: 1,
        }
    }

    fn req(pid: u32, fence: Option<u64>) -> LockRequest {
        LockRequest {
            project: "shop".into(),
            owner: owner(pid),
            ttl_secs: 10,
            fence,
        }
    }

    #[test]
    fn a_live_lease_refuses_a_second_deployer_and_names_the_holder() {
        let (granted, first) = decide_lock(None, &req(1, None), 0);
        assert!(granted);
        assert_eq!(first.fence, 1);
        let (granted, stands) = decide_lock(Some(&first), &req(2, None), 5_000);
        assert!(!granted);
        assert_eq!(stands.owner.pid, 1);
    }

    #[test]
    fn an_expired_lease_is_granted_anew_with_a_higher_number() {
        let (_, first) = decide_lock(None, &req(1, None), 0);
        let (granted, second) = decide_lock(Some(&first), &req(2, None), 10_001);
        assert!(granted);
        assert_eq!((second.fence, second.owner.pid), (2, 2));
    }

    #[test]
    fn renewal_extends_only_the_callers_own_lease() {
        let (_, first) = decide_lock(None, &req(1, None), 0);
        let (granted, renewed) = decide_lock(Some(&first), &req(1, Some(1)), 8_000);
        assert!(granted);
        assert_eq!((renewed.fence, renewed.expires_ms), (1, 18_000));
        // Someone else took it after expiry: the late renewal is refused.
        let (_, second) = decide_lock(Some(&renewed), &req(2, None), 18_001);
        let (granted, stands) = decide_lock(Some(&second), &req(1, Some(1)), 18_002);
        assert!(!granted);
        assert_eq!(stands.fence, 2);
    }

    #[test]
    fn a_write_with_a_stale_fencing_number_is_refused() {
        let (_, first) = decide_lock(None, &req(1, None), 0);
        let (_, second) = decide_lock(Some(&first), &req(2, None), 10_001);
        assert!(check_fence(Some(&second), Some(2)).is_ok());
        let err = check_fence(Some(&second), Some(1)).expect_err("stale number refused");
        assert!(err.contains("number 1") && err.contains("lease 2"), "{err}");
        // Without a number (an older CLI) or without a lease, nothing is checked.
        assert!(check_fence(Some(&second), None).is_ok());
        assert!(check_fence(None, Some(7)).is_ok());
    }

    #[test]
    fn leases_are_recorded_on_disk_and_numbers_never_reused_after_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leases = Leases::new(&StateRoot::new(dir.path()));
        let (granted, a) = leases.lock(&req(1, None)).expect("lock");
        assert!(granted);
        let (granted, b) = leases.lock(&req(2, None)).expect("lock");
        assert!(!granted);
        assert_eq!(b.owner.pid, 1);
        assert!(leases.check("shop", Some(a.fence)).is_ok());
        assert!(leases.unlock("shop", a.fence).expect("unlock").0);
        let reopened = Leases::new(&StateRoot::new(dir.path()));
        let (granted, c) = reopened.lock(&req(2, None)).expect("lock");
        assert!(granted);
        assert_eq!(c.fence, a.fence + 1);
        assert!(reopened.check("shop", Some(a.fence)).is_err());
        assert!(!reopened.lock(&req(1, Some(a.fence))).expect("renew").0);
    }
}
