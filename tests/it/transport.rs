//! The SSH transport on a real lab host: bounded channels per connection, commands with stdin,
//! and the lab fixture the transport and `hosts` tests share.

use std::fs::File;
use std::time::Duration;

use compose_fleet::lab::Lab;
use compose_fleet::ssh::{HostSession, OpenSsh, Options, SshTarget, Transport};
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A lab fleet for one test: up on creation (holding the machine-wide lab lock, so test runs never
/// share or tear down each other's lab), down on drop, even when the test fails.
pub struct TestLab {
    pub lab: Lab,
    _lock: Flock<File>,
    _dir: tempfile::TempDir,
}

impl TestLab {
    /// `None` (with a printed reason) when not root.
    pub fn up(test: &str, hosts: usize) -> Option<TestLab> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: {test} needs root (it starts a lab fleet: netns, sshd)");
            return None;
        }
        let file = File::create("/run/compose-fleet-lab.lock").expect("open the lab lock");
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .expect("take the lab lock");
        let dir = tempfile::Builder::new()
            .prefix("cf-transport-lab")
            .tempdir()
            .expect("lab dir");
        let lab = Lab::at(dir.path());
        if let Err(e) = lab.up(hosts) {
            let _ = lab.down();
            panic!("lab up failed: {e}");
        }
        Some(TestLab {
            lab,
            _lock: lock,
            _dir: dir,
        })
    }

    /// The SSH targets of the lab's inventory.
    pub fn targets(&self) -> Vec<SshTarget> {
        let fleet = compose_fleet::inventory::load(&self.lab.inventory()).expect("lab inventory");
        SshTarget::all(&fleet)
    }

    /// A file inside a lab host's private `/var/lib/compose-fleet`, `/tmp`, … (as seen from here).
    pub fn host_path(&self, host: &str, private_dir: &str, rest: &str) -> std::path::PathBuf {
        self.lab
            .dir()
            .join("hosts")
            .join(host)
            .join(private_dir)
            .join(rest)
    }

    /// Runs a shell command inside a lab host (its namespaces); panics if it fails.
    pub fn sh(&self, host: &str, script: &str) {
        let status = self
            .lab
            .exec(host, &["sh".into(), "-c".into(), script.into()])
            .expect("lab exec")
            .status()
            .expect("run lab exec");
        assert!(status.success(), "`{script}` failed on {host}");
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down() {
            eprintln!("lab down failed: {e}");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn channels_per_connection_are_bounded_and_commands_get_their_stdin() {
    let Some(lab) = TestLab::up("channels_per_connection_are_bounded", 1) else {
        return;
    };
    let target = lab.targets().remove(0);
    runtime().block_on(async {
        let options = Options {
            max_channels: 2,
            accept_new_host_keys: false,
            ..Options::default()
        };
        let ssh = OpenSsh::new(&options).expect("transport");
        let session = ssh.connect(&target).await.expect("connect to lab-1");

        // A command with stdin and its exit status.
        let out = session
            .run("tr a-z A-Z; exit 3", Some(b"hello".to_vec()))
            .await
            .expect("run");
        assert_eq!(out.stdout, b"HELLO");
        assert_eq!(out.status, Some(3));

        // Two channels fill the connection; a third waits until one closes.
        let first = session.open("cat").await.expect("first channel");
        let _second = session.open("cat").await.expect("second channel");
        let third = session.open("cat");
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut third)
                .await
                .is_err(),
            "a third channel opened although the bound is 2"
        );
        drop(first);
        let mut third = tokio::time::timeout(Duration::from_secs(30), third)
            .await
            .expect("the third channel opens once one closes")
            .expect("third channel");
        third.stdin.write_all(b"ping\n").await.expect("write");
        let mut buf = [0u8; 5];
        third.stdout.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping\n");
    });
}
