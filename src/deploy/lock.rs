//! The deploy lock's CLI side (issue 12): `up` takes a lease of the project on every connected
//! host before it changes anything, renews it while it works, sends each host's fencing number
//! with its writes, and releases it at the end.
//!
//! Hosts are locked one at a time in name order (the order of the `BTreeMap`), and a refusal
//! releases what was taken before retrying or failing: two deployers can never hold half the fleet
//! each and wait on each other. A deployer killed while holding leases leaves them to expire after
//! their TTL (judged on each host's own clock); one paused past its TTL finds its writes refused,
//! because the next grant raised the host's fencing number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::exec::{ExecError, HostConn};
use crate::proto::{Lease, LockOwner, LockRequest, Request, Response};

/// The leases this run holds: each host's fencing number, and the task that renews them.
pub struct Held {
    pub fences: BTreeMap<String, u64>,
    /// Becomes `Some(why)` when a renewal is refused: another deploy holds the lock now.
    pub lost: watch::Receiver<Option<String>>,
    project: String,
    hosts: BTreeMap<String, Arc<HostConn>>,
    renew: JoinHandle<()>,
}

/// This process as a lease's owner.
pub fn owner() -> LockOwner {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-machine".into());
    LockOwner {
        user,
        machine,
        pid: std::process::id(),
        started: unix_secs(),
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Takes the project's lease on every host of `hosts`, waiting up to `wait` for a holder to let
/// go. Fails (exit 1) naming the holder when the wait is over.
pub async fn acquire(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    owner: LockOwner,
    ttl: Duration,
    wait: Duration,
    timeout: Duration,
) -> Result<Held, ExecError> {
    let ttl_secs = ttl.as_secs().max(1);
    let deadline = Instant::now() + wait;
    loop {
        let mut fences = BTreeMap::new();
        let mut refused = None;
        for (name, conn) in hosts {
            let req = LockRequest {
                project: project.to_string(),
                owner: owner.clone(),
                ttl_secs,
                fence: None,
            };
            match call(conn, Request::Lock(req), timeout).await {
                Ok((true, lease)) => {
                    fences.insert(name.clone(), lease.fence);
                }
                Ok((false, lease)) => {
                    refused = Some((name.clone(), lease));
                    break;
                }
                Err(e) => {
                    release_fences(hosts, project, &fences, timeout).await;
                    return Err(e);
                }
            }
        }
        let Some((host, lease)) = refused else {
            let (lost_tx, lost) = watch::channel(None);
            let renew = tokio::spawn(renew(
                hosts.clone(),
                project.to_string(),
                owner,
                ttl_secs,
                fences.clone(),
                timeout,
                lost_tx,
            ));
            return Ok(Held {
                fences,
                lost,
                project: project.to_string(),
                hosts: hosts.clone(),
                renew,
            });
        };
        // Give back what this round took, so the holder (or another waiter) can finish.
        release_fences(hosts, project, &fences, timeout).await;
        let now = Instant::now();
        if now >= deadline {
            return Err(ExecError::User(held_message(&host, &lease, wait)));
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(500))).await;
    }
}

/// Renews every lease at a third of the TTL, so one lost renewal does not let it expire. A
/// renewal refused (the lease expired and another took it: this process was paused or cut off)
/// is said on `lost`, and the run stops; the fencing refuses any write sent meanwhile.
async fn renew(
    hosts: BTreeMap<String, Arc<HostConn>>,
    project: String,
    owner: LockOwner,
    ttl_secs: u64,
    fences: BTreeMap<String, u64>,
    timeout: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let every = Duration::from_millis(ttl_secs * 1000 / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(every).await;
        for (name, fence) in &fences {
            let Some(conn) = hosts.get(name) else {
                continue;
            };
            let req = LockRequest {
                project: project.clone(),
                owner: owner.clone(),
                ttl_secs,
                fence: Some(*fence),
            };
            if let Ok((false, lease)) = call(conn, Request::Lock(req), timeout.min(every)).await {
                let o = &lease.owner;
                let _ = lost.send(Some(format!(
                    "lost the deploy lock on host `{name}`: this deploy was paused or cut off past its `--lock-ttl`, and lease {} went to {}@{} (pid {}); stopping without further changes",
                    lease.fence, o.user, o.machine, o.pid
                )));
                return;
            }
        }
    }
}

impl Held {
    /// Stops renewing and releases every lease (best effort: one not released expires).
    pub async fn release(self, timeout: Duration) {
        self.renew.abort();
        release_fences(&self.hosts, &self.project, &self.fences, timeout).await;
    }
}

async fn release_fences(
    hosts: &BTreeMap<String, Arc<HostConn>>,
    project: &str,
    fences: &BTreeMap<String, u64>,
    timeout: Duration,
) {
    for (name, fence) in fences {
        if let Some(conn) = hosts.get(name) {
            let req = Request::Unlock {
                project: project.to_string(),
                fence: *fence,
            };
            let _ = call(conn, req, timeout).await;
        }
    }
}

async fn call(
    conn: &HostConn,
    request: Request,
    timeout: Duration,
) -> Result<(bool, Lease), ExecError> {
    match conn.call(request, timeout).await {
        Ok(Response::Lease { granted, lease }) => Ok((granted, lease)),
        Ok(other) => Err(ExecError::Internal(format!(
            "host `{}`: unexpected reply to the deploy lock: {other:?} (is its agent older than this CLI?)",
            conn.name
        ))),
        Err(e) => Err(ExecError::User(format!(
            "cannot take the deploy lock: {e}"
        ))),
    }
}

/// "project `shop` is being deployed by ana@laptop (pid 4242, since 2026-12-05 00:40:12 UTC) …"
pub fn held_message(host: &str, lease: &Lease, waited: Duration) -> String {
    let o = &lease.owner;
    let waited = if waited.is_zero() {
        "hint: wait for it with `--lock-wait 5m`".to_string()
    } else {
        format!(
            "waited {} (`--lock-wait`); hint: wait longer",
            crate::human::format_duration(waited)
        )
    };
    format!(
        "project `{}` is locked by another deploy: {}@{} (pid {}, since {}), lease {} on host `{host}`, expires in {}s unless renewed\n{waited}; a killed deploy's lease expires by itself, no manual unlock is needed",
        lease.project,
        o.user,
        o.machine,
        o.pid,
        utc(o.started),
        lease.fence,
        lease.expires_in_secs,
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` of unix seconds (days to a civil date: the proleptic Gregorian
/// calendar, from the era/day-of-era arithmetic).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_436_012), "2026-12-05 02:00:12 UTC");
    }
}
