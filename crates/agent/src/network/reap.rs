//! Deletes removed pods' veths on a thread of its own. Deleting a link waits for RCU grace
//! periods in the kernel (30 ms p50 measured on a loaded 2-core host, nine tenths of a detach),
//! and nothing needs the link gone at once: the pod's address is already out of the address
//! book and of our rules, its containers are stopped, and addresses come back only after a full
//! round of the subnet. An attach that wants the same link name waits for its deletion; the last
//! pod's detach waits for all of them before the bridge goes.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::NetKernel;

pub(super) struct Reaper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    kernel: Arc<dyn NetKernel>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Links to delete, oldest first.
    queue: Vec<String>,
    /// Links queued or being deleted.
    busy: BTreeSet<String>,
    stop: bool,
}

impl Reaper {
    pub(super) fn new(kernel: Arc<dyn NetKernel>) -> Reaper {
        let shared = Arc::new(Shared {
            kernel,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("veth reaper".into())
            .spawn(move || worker.run())
            .map_err(|e| eprintln!("network: no reaper thread ({e}); deleting links in place"))
            .ok();
        Reaper { shared, thread }
    }

    /// Deletes link `name` soon (at once, here, when there is no thread).
    pub(super) fn reap(&self, name: String) -> std::io::Result<()> {
        if self.thread.is_none() {
            return self.shared.kernel.remove_link(&name);
        }
        let mut state = self.shared.lock();
        if state.busy.insert(name.clone()) {
            state.queue.push(name);
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Waits until link `name` is no longer waiting for deletion.
    pub(super) fn wait_for(&self, name: &str) {
        let mut state = self.shared.lock();
        while state.busy.contains(name) {
            state = self.shared.wait(state);
        }
    }

    /// Waits until every queued link is deleted.
    pub(super) fn drain(&self) {
        let mut state = self.shared.lock();
        while !state.busy.is_empty() {
            state = self.shared.wait(state);
        }
    }
}

impl Drop for Reaper {
    /// Deletes what is queued, then ends the thread.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        loop {
            let name = {
                let mut state = self.lock();
                while state.queue.is_empty() && !state.stop {
                    state = self.wait(state);
                }
                if state.queue.is_empty() {
                    return;
                }
                state.queue.remove(0)
            };
            // A link that cannot be deleted now is left to the pod's namespace going (which
            // takes its veth pair) or to the next attach of that name (which replaces it).
            if let Err(e) = self.kernel.remove_link(&name) {
                eprintln!("network: deleting {name}: {e}");
            }
            self.lock().busy.remove(&name);
            self.changed.notify_all();
        }
    }
}
