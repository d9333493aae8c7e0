//! Builds the agent (`compose-fleet-agent`) as a static `x86_64-unknown-linux-musl` binary with the
//! small `agent` profile, as part of the CLI's normal build, and embeds it in the CLI: the CLI
//! pushes it to hosts. The agent is built by a nested cargo into its own target directory (so it
//! never waits on the outer build's lock), with an environment cleaned of what the outer
//! invocation (clippy, test, coverage) injected for the CLI.
//!
//! `COMPOSE_FLEET_AGENT_BINARY=PATH` embeds a prebuilt agent instead (packaging, cross builds).

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-musl";

fn main() {
    println!("cargo:rerun-if-changed=crates/agent");
    println!("cargo:rerun-if-changed=crates/proto");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-env-changed=COMPOSE_FLEET_AGENT_BINARY");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out_dir.join("compose-fleet-agent");

    let built = match std::env::var_os("COMPOSE_FLEET_AGENT_BINARY") {
        Some(path) => PathBuf::from(path),
        None => build_agent(),
    };
    if let Err(e) = std::fs::copy(&built, &embedded) {
        panic!(
            "copying the agent {} to {}: {e}",
            built.display(),
            embedded.display()
        );
    }
    // Tests and benches read the very file that is embedded.
    println!(
        "cargo:rustc-env=COMPOSE_FLEET_AGENT_EMBEDDED={}",
        embedded.display()
    );
}

fn build_agent() -> PathBuf {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    // `$CARGO_TARGET_DIR/agent`, or `target/agent` beside the workspace's usual target dir.
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("agent"),
        None => manifest_dir.join("target").join("agent"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&manifest_dir)
        .args(["build", "--locked", "-p", "compose-fleet-agent", "--bin"])
        .arg("compose-fleet-agent")
        .args(["--profile", "agent", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    // A clean environment: keep only what finds the toolchain and shares the jobserver. Everything
    // else (RUSTC_WORKSPACE_WRAPPER from clippy, CARGO_ENCODED_RUSTFLAGS, coverage flags, the
    // outer package's CARGO_* variables) was meant for the CLI, not for the agent.
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        let keep = matches!(
            k,
            "PATH"
                | "HOME"
                | "USER"
                | "TMPDIR"
                | "CARGO_HOME"
                | "RUSTUP_HOME"
                | "RUSTUP_TOOLCHAIN"
                | "CARGO_MAKEFLAGS"
                | "CARGO_NET_OFFLINE"
                | "CC_x86_64_unknown_linux_musl"
                | "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
        ) || k.starts_with("CARGO_HTTP_")
            || k.starts_with("SSL_CERT");
        if keep {
            cmd.env(key, value);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build the agent: {e}"));
    if !status.success() {
        panic!(
            "building the agent for {TARGET} failed ({status}).\n\
             hint: the musl target and musl-tools are needed: run scripts/setup.sh as root \
             (or `rustup target add {TARGET}` and `apt-get install musl-tools`)"
        );
    }
    let binary = target_dir
        .join(TARGET)
        .join("agent")
        .join("compose-fleet-agent");
    assert!(
        Path::new(&binary).is_file(),
        "the agent build succeeded but {} is missing",
        binary.display()
    );
    binary
}
