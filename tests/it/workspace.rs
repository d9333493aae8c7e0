//! Every command finds the project and the inventory the same way (`cli::project::resolve`):
//! `-f`, then `COMPOSE_FILE`, then discovery in the working directory and its parents; the
//! inventory is `-i`, else `inventory.yaml` beside the first compose file. `hosts`, which needs
//! only the inventory, used to look beside `-f` alone.

use std::path::Path;
use std::process::Command;

fn hosts(cwd: &Path, env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_compose-fleet"));
    cmd.arg("hosts")
        .current_dir(cwd)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_FLEET_INVENTORY")
        .env_remove("COMPOSE_PROJECT_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run compose-fleet");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A project directory whose inventory has no hosts: `hosts` fails on it without contacting
/// anything, naming the file it read.
fn project(dir: &Path) {
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n",
    )
    .expect("write compose.yaml");
    // Our own format with no hosts: found, read, and refused for holding no host.
    std::fs::write(dir.join("inventory.yaml"), "hosts: {}\n").expect("write inventory.yaml");
}

#[test]
fn hosts_finds_the_inventory_beside_compose_file_from_the_environment() {
    let project_dir = tempfile::tempdir().expect("temp dir");
    project(project_dir.path());
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let compose = project_dir.path().join("compose.yaml");
    let (code, stderr) = hosts(elsewhere.path(), &[("COMPOSE_FILE", &compose)]);
    assert_eq!(code, Some(1), "{stderr}");
    let expected = project_dir.path().join("inventory.yaml");
    assert!(
        stderr.contains(&format!("inventory `{}`", expected.display())),
        "{stderr}"
    );
}

#[test]
fn hosts_finds_the_inventory_beside_the_discovered_compose_file() {
    let project_dir = tempfile::tempdir().expect("temp dir");
    project(project_dir.path());
    let sub = project_dir.path().join("deep/sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let (code, stderr) = hosts(&sub, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let expected = project_dir.path().join("inventory.yaml");
    assert!(
        stderr.contains(&format!("inventory `{}`", expected.display())),
        "{stderr}"
    );
}
