//! The SSH transport on a real lab host: bounded channels per connection, commands with stdin,
//! and the lab fixture the transport and `hosts` tests share.

use std::time::Duration;

use compose_fleet::lab::Lab;
use compose_fleet::ssh::{HostSession, OpenSsh, Options, SshTarget, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support;

/// The shared lab fixture (`support::Lab`: root check, a lab of its own name, `lab down` on
/// drop) with the helpers the transport and `hosts` tests use.
pub struct TestLab {
    fixture: support::Lab,
}

impl TestLab {
    /// `None` (with a printed reason) when not root.
    pub fn up(test: &str, hosts: usize) -> Option<TestLab> {
        support::Lab::up(test, hosts).map(|fixture| TestLab { fixture })
    }

    /// The lab itself: paths and fault injection.
    pub fn lab(&self) -> &Lab {
        self.fixture.faults()
    }

    /// Host N's name (`NAME-N`, from 1).
    pub fn host(&self, index: usize) -> String {
        self.fixture.host(index)
    }

    /// A host's address.
    pub fn address(&self, host: &str) -> String {
        self.fixture.address(host)
    }

    /// The SSH targets of the lab's inventory.
    pub fn targets(&self) -> Vec<SshTarget> {
        let fleet = compose_fleet::inventory::load(&self.lab().inventory()).expect("lab inventory");
        SshTarget::all(&fleet)
    }

    /// A file inside a lab host's private `/var/lib/compose-fleet`, `/tmp`, … (as seen from here).
    pub fn host_path(&self, host: &str, private_dir: &str, rest: &str) -> std::path::PathBuf {
        self.lab()
            .dir()
            .join("hosts")
            .join(host)
            .join(private_dir)
            .join(rest)
    }

    /// Runs a shell command inside a lab host (its namespaces); panics if it fails.
    pub fn sh(&self, host: &str, script: &str) {
        let status = self
            .lab()
            .exec(host, &["sh".into(), "-c".into(), script.into()])
            .expect("lab exec")
            .status()
            .expect("run lab exec");
        assert!(status.success(), "`{script}` failed on {host}");
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
