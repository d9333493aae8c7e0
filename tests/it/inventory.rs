//! Inventories: our own YAML, Ansible YAML and INI, and the errors a user sees.

use compose_fleet::inventory::{self, Capacity, Fleet, Host};

fn parse(name: &str, text: &str) -> Fleet {
    match inventory::parse(name, text) {
        Ok(f) => f,
        Err(e) => panic!("{name} should parse:\n{}", e.render()),
    }
}

fn error(name: &str, text: &str) -> String {
    match inventory::parse(name, text) {
        Ok(f) => panic!("{name} should not parse, got {f:?}"),
        Err(e) => e.render(),
    }
}

fn host<'a>(fleet: &'a Fleet, name: &str) -> &'a Host {
    fleet
        .host(name)
        .unwrap_or_else(|| panic!("no host {name} in {fleet:?}"))
}

#[test]
fn own_format_applies_defaults_and_overrides() {
    let fleet = parse(
        "inventory.yaml",
        r#"
defaults: { user: deploy, port: 22, identity_file: ~/.ssh/id_ed25519, known_hosts: /lab/known_hosts }
registries: { "10.250.0.1:5000": { insecure: true } }
hosts:
  web-1: { address: 203.0.113.10, labels: { zone: a, disk: ssd } }
  db-1:  { address: db1.example.com, user: root, port: 2222, capacity: { cpus: 8, memory: 32GiB }, reserved: { memory: 1GiB }, arch: amd64 }
  old:   { drain: true, identity_file: /k, known_hosts: /kh }
"#,
    );
    let names: Vec<_> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["web-1", "db-1", "old"], "inventory order is kept");
    let web = host(&fleet, "web-1");
    assert_eq!(web.address, "203.0.113.10");
    assert_eq!(web.user.as_deref(), Some("deploy"));
    assert_eq!(web.port, 22);
    assert_eq!(
        web.identity_file.as_deref(),
        Some("~/.ssh/id_ed25519".as_ref())
    );
    assert_eq!(
        web.known_hosts.as_deref(),
        Some("/lab/known_hosts".as_ref())
    );
    assert_eq!(web.labels["zone"], "a");
    assert_eq!(web.labels["disk"], "ssd");
    assert_eq!(web.capacity, None);
    let db = host(&fleet, "db-1");
    assert_eq!(db.user.as_deref(), Some("root"));
    assert_eq!(db.port, 2222);
    assert_eq!(
        db.capacity,
        Some(Capacity {
            cpus: 8.0,
            memory: 32 << 30
        })
    );
    assert_eq!(
        db.reserved,
        Capacity {
            cpus: 0.0,
            memory: 1 << 30
        }
    );
    assert_eq!(db.arch.as_deref(), Some("x86_64"));
    let old = host(&fleet, "old");
    assert!(old.drain);
    assert_eq!(
        old.address, "old",
        "the name is the address when none is given"
    );
    assert_eq!(old.identity_file.as_deref(), Some("/k".as_ref()));
    assert!(fleet.registries["10.250.0.1:5000"].insecure);
}

#[test]
fn unknown_keys_point_at_the_key_with_a_suggestion() {
    let text = "hosts:\n  web-1:\n    adress: 10.0.0.1\n    capacity: { cpus: 2, memroy: 4g }\n";
    insta::assert_snapshot!(error("inventory.yaml", text), @r"
    error: unknown key `adress` in host `web-1`
      --> inventory.yaml:3:5
       |
     3 |     adress: 10.0.0.1
       |     ^^^^^^ did you mean `address`?

    error: unknown key `memroy` in `capacity` of host `web-1`
      --> inventory.yaml:4:26
       |
     4 |     capacity: { cpus: 2, memroy: 4g }
       |                          ^^^^^^ did you mean `memory`?

    error: `capacity` of host `web-1` has no `memory`
      --> inventory.yaml:4:15
       |
     4 |     capacity: { cpus: 2, memroy: 4g }
       |               ^
       = hint: give both, e.g. `capacity: { cpus: 8, memory: 32GiB }`, or leave `capacity` out to use the host's facts
    ");
}

#[test]
fn bad_values_are_reported_all_at_once() {
    let text =
        "defaults: { port: 70000 }\nhosts:\n  a: { capacity: { cpus: lots, memory: 2 parsecs } }\n";
    let rendered = error("inv.yaml", text);
    assert!(rendered.contains("inv.yaml:1:19"), "{rendered}");
    assert!(rendered.contains("must be a port number"), "{rendered}");
    assert!(
        rendered.contains("`lots` is not a number of cpus"),
        "{rendered}"
    );
    assert!(rendered.contains("unknown size unit"), "{rendered}");
    let twice = error("inv.yaml", "hosts:\n  a: {}\n  a: {}\n");
    assert!(twice.contains("duplicate mapping key"), "{twice}");
    assert!(twice.contains("inv.yaml:3:3"), "{twice}");
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let rendered = error("inv.yaml", "hosts:\n  a: { address: [1, 2\n");
    assert!(rendered.contains("--> inv.yaml:"), "{rendered}");
    assert!(
        rendered.starts_with("error: invalid YAML in inventory"),
        "{rendered}"
    );
}

#[test]
fn empty_inventory_is_an_error() {
    assert!(error("inv.yaml", "hosts: {}\n").contains("lists no hosts"));
}

#[test]
fn ansible_yaml_maps_variables_and_groups() {
    let fleet = parse(
        "hosts.yml",
        r#"
all:
  vars:
    ansible_user: admin
    zone: a
  hosts:
    bastion:
  children:
    web:
      hosts:
        web[1:2]:
          ansible_port: 2200
      vars:
        tier: front
    db:
      children:
        primary:
          hosts:
            db1: { ansible_host: 10.0.0.5, ansible_ssh_private_key_file: /keys/db, zone: b, compose_fleet_cpus: 4, compose_fleet_memory: 8g }
"#,
    );
    let names: Vec<_> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["bastion", "web1", "web2", "db1"]);
    let web2 = host(&fleet, "web2");
    assert_eq!(web2.address, "web2");
    assert_eq!(web2.port, 2200);
    assert_eq!(web2.user.as_deref(), Some("admin"));
    assert_eq!(web2.labels["group.web"], "true");
    assert_eq!(web2.labels["tier"], "front");
    assert_eq!(web2.labels["zone"], "a");
    let db1 = host(&fleet, "db1");
    assert_eq!(db1.address, "10.0.0.5");
    assert_eq!(db1.identity_file.as_deref(), Some("/keys/db".as_ref()));
    assert_eq!(db1.labels["zone"], "b", "host vars override group vars");
    assert_eq!(
        db1.labels["group.db"], "true",
        "membership through children"
    );
    assert_eq!(db1.labels["group.primary"], "true");
    assert!(!db1.labels.contains_key("group.all"));
    assert!(!db1.labels.keys().any(|k| k.starts_with("ansible_")));
    assert_eq!(
        db1.capacity,
        Some(Capacity {
            cpus: 4.0,
            memory: 8 << 30
        })
    );
    assert_eq!(host(&fleet, "bastion").labels.get("group.web"), None);
}

#[test]
fn ansible_yaml_rejects_unknown_group_keys() {
    let rendered = error("hosts.yml", "all:\n  host:\n    a:\n");
    assert!(
        rendered.contains("warning: skipping unknown key `host` in group `all`"),
        "{rendered}"
    );
    assert!(rendered.contains("did you mean `hosts`?"), "{rendered}");
    assert!(rendered.contains("hosts.yml:2:3"), "{rendered}");
}

#[test]
fn ansible_ini_with_groups_vars_and_children() {
    let fleet = parse(
        "hosts",
        r#"
# the lab
bastion ansible_host=192.0.2.1

[web]
web1 ansible_host=10.0.0.11 ansible_user=deploy zone=a
web2 ansible_host=10.0.0.12 ansible_port=2222 zone=b

[db]
db1 ansible_host=10.0.0.21 compose_fleet_drain=true

[web:vars]
ansible_ssh_private_key_file=/keys/web
role="front end"

[prod:children]
web
db

[prod:vars]
ansible_user=ops
"#,
    );
    let names: Vec<_> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["bastion", "web1", "web2", "db1"]);
    let web1 = host(&fleet, "web1");
    assert_eq!(web1.address, "10.0.0.11");
    assert_eq!(
        web1.user.as_deref(),
        Some("deploy"),
        "host var beats group var"
    );
    assert_eq!(web1.identity_file.as_deref(), Some("/keys/web".as_ref()));
    assert_eq!(web1.labels["role"], "front end");
    assert_eq!(web1.labels["group.prod"], "true");
    let web2 = host(&fleet, "web2");
    assert_eq!(web2.port, 2222);
    assert_eq!(
        web2.user.as_deref(),
        Some("ops"),
        "inherited from the parent group"
    );
    let db1 = host(&fleet, "db1");
    assert!(db1.drain);
    assert_eq!(db1.user.as_deref(), Some("ops"));
    assert_eq!(db1.labels.get("group.web"), None);
    assert_eq!(host(&fleet, "bastion").address, "192.0.2.1");
}

#[test]
fn ansible_ini_errors_point_at_the_line() {
    let rendered = error("hosts.ini", "[web]\nweb1 ansible_port=http\n[web:weird]\n");
    assert!(rendered.contains("hosts.ini:2:19"), "{rendered}");
    assert!(rendered.contains("must be a port number"), "{rendered}");
    assert!(
        rendered.contains("section `[web:weird]` has an unknown kind `weird`"),
        "{rendered}"
    );
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, "hosts:\n  a: { address: 10.0.0.1 }\n").unwrap();
    let fleet = inventory::load(&path).unwrap();
    assert_eq!(fleet.hosts.len(), 1);
    assert_eq!(fleet.source.as_deref(), Some(path.as_path()));
    let missing = dir.path().join("nope.yaml");
    let err = inventory::load(&missing).unwrap_err().render();
    assert!(err.contains("cannot read inventory"), "{err}");
    assert!(err.contains("nope.yaml"), "{err}");
    assert!(err.contains("-i FILE"), "{err}");
}
