//! `plan` without `--offline` on a lab fleet whose inventory declares no capacity: placement uses
//! the capacities the hosts report about themselves (their agents' facts, over SSH).

use serde_json::Value;

use crate::support::Lab;

fn json(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
}

#[test]
fn plan_without_offline_uses_the_hosts_real_capacity() {
    let Some(lab) = Lab::up("plan_without_offline_uses_the_hosts_real_capacity", 2) else {
        return;
    };
    let declared = std::fs::read_to_string(lab.inventory()).expect("the lab inventory");
    let capacity = ", capacity: { cpus: 2, memory: 4GiB }";
    assert!(declared.contains(capacity), "{declared}");
    let inventory = lab.dir().join("inventory-facts.yaml");
    std::fs::write(&inventory, declared.replace(capacity, "")).expect("write the inventory");
    let compose = lab.dir().join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "name: facts\nservices:\n  web:\n    image: {}\n    \
             deploy:\n      replicas: 2\n      resources:\n        reservations: {{ cpus: \"0.5\", memory: 64M }}\n",
            lab.httpd_image()
        ),
    )
    .expect("write compose.yaml");

    let run = |args: &[&str]| {
        std::process::Command::new(crate::support::bin())
            .arg("-f")
            .arg(&compose)
            .arg("-i")
            .arg(&inventory)
            .args(args)
            .output()
            .expect("run compose-fleet")
    };
    let offline = run(&["plan", "--offline"]);
    assert_eq!(
        offline.status.code(),
        Some(1),
        "offline needs declared capacity"
    );

    let facts = json(&run(&["hosts", "--format", "json"]), "hosts");
    let plan = json(&run(&["plan", "--format", "json"]), "plan");
    let hosts = plan["hosts"].as_array().expect("plan hosts");
    assert_eq!(hosts.len(), 2, "{plan}");
    for host in hosts {
        let name = host["name"].as_str().expect("a host name");
        let fact = facts
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .unwrap_or_else(|| panic!("no facts for {name}: {facts}"));
        let memory = fact["memory"].as_u64().expect("memory");
        assert!(memory > 0 && memory != 4 << 30, "{fact}");
        assert_eq!(host["memory"].as_u64(), Some(memory), "{name}: {plan}");
        assert_eq!(
            host["cpus"].as_f64(),
            fact["cpus"].as_f64(),
            "{name}: {plan}"
        );
    }
    let placed = plan["placements"].as_array().expect("placements");
    assert_eq!(placed.len(), 2, "{plan}");
}
