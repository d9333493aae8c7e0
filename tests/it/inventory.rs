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

// ------------------------------------------------------------------------------------------
// Ansible inventories read as ansible-inventory reads them: one regression test per finding of
// issue 16 (the differential test compares the same cases with the reference itself).

fn fixture(case: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventories")
        .join(case);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("group_vars" | "host_vars")
            )
        })
        .unwrap_or_else(|| panic!("no inventory in {}", dir.display()))
}

fn load_fixture(case: &str) -> Fleet {
    inventory::load(&fixture(case)).unwrap_or_else(|e| panic!("{case}:\n{}", e.render()))
}

fn load_error(case: &str) -> String {
    match inventory::load(&fixture(case)) {
        Ok(f) => panic!("{case} should not load, got {f:?}"),
        Err(e) => e.render(),
    }
}

fn names(fleet: &Fleet) -> Vec<&str> {
    fleet.hosts.iter().map(|h| h.name.as_str()).collect()
}

#[test]
fn a_comment_after_a_section_header_is_allowed() {
    let fleet = load_fixture("section-header-comment");
    assert_eq!(names(&fleet), ["web1", "web2"]);
    assert_eq!(host(&fleet, "web2").labels["zone"], "a");
    assert_eq!(host(&fleet, "web1").labels["group.web"], "true");
}

#[test]
fn a_host_line_starting_with_a_range_or_ipv6_bracket_is_a_host() {
    let fleet = load_fixture("host-line-starts-with-range");
    assert_eq!(fleet.hosts.len(), 7);
    let a1 = host(&fleet, "a1.example.org");
    assert_eq!((a1.port, a1.user.as_deref()), (2200, Some("ec2-user")));
    assert!(fleet.host("c2.example.org").is_some());
    let v6 = host(&fleet, "2001:db8::10");
    assert_eq!((v6.address.as_str(), v6.port), ("2001:db8::10", 2222));
}

#[test]
fn yaml_hosts_and_children_may_be_plain_strings() {
    let fleet = load_fixture("yaml-hosts-as-string");
    assert_eq!(host(&fleet, "web1.example.com").labels["tier"], "front");
    let db1 = host(&fleet, "db1.example.com");
    assert_eq!(
        db1.labels["group.db"], "true",
        "through `children: primary`"
    );
    assert_eq!(db1.labels["group.primary"], "true");
}

#[test]
fn a_group_hosts_section_is_a_hosts_section() {
    let fleet = load_fixture("hosts-section-kind");
    let web1 = host(&fleet, "web1");
    assert_eq!(web1.address, "10.0.0.11");
    assert_eq!(web1.labels["tier"], "front");
}

#[test]
fn an_ini_file_named_hosts_with_host_port_lines_is_read_as_ini() {
    let fleet = load_fixture("ini-named-hosts-with-port");
    assert_eq!(
        names(&fleet),
        ["web1.example.com", "web2.example.com", "10.0.0.3"]
    );
    assert_eq!(
        host(&fleet, "web1.example.com").port,
        2222,
        "host:port sets the port"
    );
    assert_eq!(host(&fleet, "web2.example.com").port, 2200);
    let ip = host(&fleet, "10.0.0.3");
    assert_eq!((ip.port, ip.user.as_deref()), (2022, Some("deploy")));
}

#[test]
fn stride_and_letter_ranges_expand() {
    let fleet = load_fixture("stride-ranges");
    let even: Vec<&str> = fleet
        .hosts
        .iter()
        .filter(|h| h.labels.contains_key("group.even"))
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(
        even,
        [
            "lb00.example.us",
            "lb02.example.us",
            "lb04.example.us",
            "lb06.example.us",
            "lb08.example.us"
        ]
    );
    assert_eq!(host(&fleet, "lb08.example.us").labels["even_odd"], "even");
    assert!(fleet.host("db-e.example.net").is_some() && fleet.host("db-b.example.net").is_none());
}

#[test]
fn a_comment_on_a_children_line_is_not_part_of_the_group_name() {
    let fleet = load_fixture("children-line-comment");
    assert_eq!(host(&fleet, "web1").labels["group.prod"], "true");
    assert_eq!(host(&fleet, "db1").labels["group.prod"], "true");
    assert!(!host(&fleet, "web1").labels.keys().any(|k| k.contains('#')));
}

#[test]
fn values_are_typed_by_python_literal_evaluation() {
    let fleet = load_fixture("value-with-comment");
    let web1 = host(&fleet, "web1");
    assert_eq!(
        web1.labels["flag"], "false",
        "`False # c` is the boolean false"
    );
    assert_eq!(web1.labels["enabled"], "false");
    assert_eq!(
        web1.labels["label"],
        "blue # not a literal: the comment stays in the value"
    );
    let typed = load_fixture("ini-value-typing");
    let h1 = host(&typed, "h1");
    assert!(!h1.labels.contains_key("a_dict") && !h1.labels.contains_key("a_list"));
    assert!(!h1.labels.contains_key("tuple") && !h1.labels.contains_key("none"));
    assert_eq!(h1.labels["quoted"], "quoted");
    assert_eq!(h1.labels["truth"], "true");
    assert_eq!(h1.labels["lower_true"], "true");
    assert_eq!(h1.labels["a_float"], "1.0");
    assert_eq!(h1.labels["big_float"], "1e+20");
    assert_eq!(h1.labels["hex"], "16");
    assert_eq!(h1.labels["octalish"], "0777");
}

#[test]
fn yaml_scalars_are_typed_as_yaml_1_1() {
    let fleet = load_fixture("yaml-1-1-typing");
    let h1 = host(&fleet, "h1");
    for (k, v) in [
        ("a", "true"),
        ("b", "511"),
        ("c", "80"),
        ("e", "1e3"),
        ("f", "1000.0"),
        ("h", "0o17"),
        ("m", "yes"),
        ("n", "08"),
        ("p", "12345678901234567890123"),
        ("s", "1e-05"),
        ("t", "12"),
        ("u", "false"),
        ("v", "yes"),
    ] {
        assert_eq!(h1.labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(!h1.labels.contains_key("i"), "null is not a label");
}

#[test]
fn same_depth_groups_take_precedence_by_priority_then_name() {
    let fleet = load_fixture("precedence-name-order");
    let h = host(&fleet, "foohost");
    // a_group and b_group are both at depth 2: `b_group` sorts last and wins.
    assert_eq!(h.labels["testvar"], "b");
    assert_eq!(h.labels["other"], "b_parent");
    let prio = load_fixture("group-priority");
    assert_eq!(
        host(&prio, "h1").labels["color"],
        "red",
        "priority 10 beats name order"
    );
}

#[test]
fn cyclic_children_are_errors_with_a_location() {
    let yaml = load_error("children-cycle");
    assert!(yaml.contains("makes a loop of `children`"), "{yaml}");
    assert!(yaml.contains("hosts.yml:5:9"), "{yaml}");
    let ini = load_error("ini-children-cycle");
    assert!(ini.contains("makes a loop of `children`"), "{ini}");
    assert!(ini.contains("hosts.ini:4:1"), "{ini}");
}

#[test]
fn a_mixed_range_is_an_error_not_zero_hosts() {
    let e = load_error("mixed-range");
    assert!(e.contains("hosts.ini:2:1"), "{e}");
    assert!(
        e.contains("from a number to a number or from a letter to a letter"),
        "{e}"
    );
}

#[test]
fn undefined_groups_in_children_and_vars_sections_are_errors() {
    let e = load_error("vars-for-undefined-group");
    assert!(
        e.contains("`[dbs:vars]`") && e.contains("hosts.ini:3:1"),
        "{e}"
    );
    let e = load_error("children-undefined");
    assert!(
        e.contains("lists group `nosuch`") && e.contains("hosts.ini:5:1"),
        "{e}"
    );
}

#[test]
fn group_vars_and_host_vars_beside_the_inventory_are_read() {
    let fleet = load_fixture("group-vars");
    let web1 = host(&fleet, "web1");
    assert_eq!(web1.user.as_deref(), Some("deploy"), "group_vars/all.yml");
    assert_eq!(web1.port, 2222, "group_vars/web/ is a directory of files");
    assert_eq!(
        web1.labels["zone"], "b",
        "group_vars/web beats group_vars/all"
    );
    assert_eq!(
        web1.labels["tier"], "front",
        "a file without extension; hidden files skipped"
    );
    let web2 = host(&fleet, "web2");
    assert_eq!(web2.address, "10.0.0.99", "host_vars beat the inventory");
    assert_eq!(web2.labels["zone"], "c");
    let db1 = host(&fleet, "db1");
    assert_eq!(
        db1.user.as_deref(),
        Some("postgres"),
        "db.yml is read, db.yaml is not"
    );
    assert_eq!(db1.identity_file.as_deref(), Some("~/.ssh/db".as_ref()));
    let origin = web1.origins["user"].to_string();
    assert!(origin.ends_with("group_vars/all.yml:1:15"), "{origin}");
}

#[test]
fn a_directory_is_every_inventory_in_it() {
    let fleet = load_fixture("directory");
    assert_eq!(names(&fleet), ["web1", "db1"]);
    let web1 = host(&fleet, "web1");
    assert_eq!(
        web1.labels["tier"], "front",
        "vars from the YAML file, host from the INI file"
    );
    assert_eq!(
        web1.user.as_deref(),
        Some("ops"),
        "the directory's group_vars"
    );
}

#[test]
fn connection_local_and_become_are_read() {
    let fleet = load_fixture("connection-local");
    assert_eq!(
        host(&fleet, "node1").connection,
        inventory::Connection::Local
    );
    let fleet = load_fixture("become");
    let db1 = host(&fleet, "db1");
    assert!(db1.use_become);
    assert_eq!(db1.become_user.as_deref(), Some("postgres"));
    assert!(host(&fleet, "web1").use_become);
    let own = parse(
        "inventory.yaml",
        "hosts:\n  here: { connection: local, become: true, become_user: app }\n",
    );
    let here = host(&own, "here");
    assert_eq!(here.connection, inventory::Connection::Local);
    assert!(here.use_become);
}

#[test]
fn dynamic_inventories_are_refused_with_the_export_command() {
    let e = load_error("plugin-config");
    assert!(
        e.contains("dynamic inventory") && e.contains("ansible-inventory -i SOURCE --list -y"),
        "{e}"
    );
    let e = error("hosts", "#!/usr/bin/env python3\nprint('{}')\n");
    assert!(e.contains("is a script") && e.contains("hosts:1:1"), "{e}");
    let e = error("hosts.toml", "[web]\n");
    assert!(e.contains("TOML"), "{e}");
}

#[test]
fn values_that_would_reach_ssh_as_options_are_refused() {
    let e = error("hosts", "h1 ansible_host=-oProxyCommand=touch\n");
    assert!(
        e.contains("hosts:1:17") && e.contains("starts with `-`"),
        "{e}"
    );
    let e = error("hosts", "h1 ansible_user=-oProxyCommand=x\n");
    assert!(e.contains("user `-oProxyCommand=x` starts with `-`"), "{e}");
    let e = error("hosts", "h1 ansible_host=\"a b c\"\n");
    assert!(e.contains("contains a space"), "{e}");
    let e = error(
        "inventory.yaml",
        "hosts:\n  h1: { address: '-x', identity_file: '-i' }\n",
    );
    assert!(e.contains("inventory.yaml:2:18"), "{e}");
    assert!(e.contains("identity file `-i` starts with `-`"), "{e}");
    let e = error("hosts", "h1 ansible_host=\"{{ lookup('env', 'X') }}\"\n");
    assert!(e.contains("Jinja template"), "{e}");
    // What is a valid address stays valid.
    let ok = parse(
        "hosts",
        "a ansible_host=fe80::1%eth0\nb ansible_host=db_1.internal.\n",
    );
    assert_eq!(ok.hosts.len(), 2);
}

#[test]
fn ranges_are_expanded_exactly_or_refused_over_the_limit() {
    let e = error("hosts", "[big]\nh[0:150000]\n");
    assert!(e.contains("hosts:2:1"), "{e}");
    assert!(
        e.contains("150001 hosts") && e.contains("--limit hosts=N"),
        "{e}"
    );
    let mut limits = compose_fleet::limits::Limits::default();
    limits.set(compose_fleet::limits::Limit::Hosts, 200_000);
    let fleet = inventory::parse_with("hosts", "[big]\nh[0:150000]\n", &limits).unwrap();
    assert_eq!(fleet.hosts.len(), 150_001);
    assert_eq!(fleet.hosts[150_000].name, "h150000");
}

#[test]
fn a_yaml_inventory_of_100k_hosts_loads() {
    let mut text = String::from("all:\n  children:\n    web:\n      hosts:\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "        h{i}: {{ ansible_host: 10.{}.{}.{} }}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let fleet = parse("hosts.yml", &text);
    assert_eq!(fleet.hosts.len(), 100_000);
    assert_eq!(host(&fleet, "h99999").address, "10.1.134.159");
}

#[test]
fn yaml_errors_are_in_our_words() {
    let deep = format!("{}x\n", "- ".repeat(40));
    let e = error("hosts.yml", &format!("all:\n  vars:\n    v:\n      {deep}"));
    assert!(
        e.contains("nested more than 32 levels deep") && e.contains("--limit depth=N"),
        "{e}"
    );
    for internal in [
        "Budget",
        "Depth {",
        "DuplicateKeyPolicy",
        "RecordedAnchorEvents",
    ] {
        assert!(!e.contains(internal), "{e}");
    }
}

#[test]
fn invalid_utf8_and_oversized_files_are_reported_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("hosts");
    std::fs::write(&bad, b"[web]\nweb1 zone=\xff\n").unwrap();
    let e = inventory::load(&bad).unwrap_err().render();
    assert!(
        e.contains("not valid UTF-8") && e.contains("hosts:2:11"),
        "{e}"
    );
    let big = dir.path().join("big.ini");
    std::fs::write(&big, "h1\n".repeat(100)).unwrap();
    let mut limits = compose_fleet::limits::Limits::default();
    limits.set(compose_fleet::limits::Limit::FileBytes, 64);
    let e = inventory::load_with(&big, &limits).unwrap_err().render();
    assert!(
        e.contains("larger than 64 bytes") && e.contains("--limit file-bytes=N"),
        "{e}"
    );
    assert!(e.contains("big.ini:1:1"), "{e}");
}

#[test]
fn the_inventory_command_prints_json_and_origins() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(fixture("group-vars"))
        .args(["inventory", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web1 = &v["hosts"][0];
    for key in [
        "name",
        "address",
        "user",
        "port",
        "identity_file",
        "labels",
        "capacity",
        "reserved",
        "arch",
        "drain",
    ] {
        assert!(web1.get(key).is_some(), "{key} missing in {web1}");
    }
    assert_eq!(web1["user"], "deploy");
    assert_eq!(web1["labels"]["group.web"], "true");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(fixture("group-vars"))
        .args(["inventory", "--host", "web2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("address") && text.contains("10.0.0.99"),
        "{text}"
    );
    assert!(text.contains("host_vars/web2.yml:1:15"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(fixture("group-vars"))
        .args(["inventory", "--host", "wbe2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `web2`?"));
}

// ------------------------------------------------------------------------------------------
// Never a panic, whatever the input (the fuzz target `fuzz/fuzz_targets/inventory.rs` does the
// same with coverage guidance): random INI/YAML-ish lines and mutations of the fixtures, read
// as every format; every diagnostic points inside its file.

mod props {
    use compose_fleet::inventory;
    use compose_fleet::limits::{Limit, Limits};
    use proptest::prelude::*;

    const FRAGMENTS: &[&str] = &[
        "[web]",
        "[web:vars]",
        "[web:children]",
        "[db:hosts]  # c",
        "[a:b]",
        "[",
        "]",
        "web",
        "h[1:3]",
        "h[a:9]",
        "h[0:99999999]",
        "[A:C][0:2].x:22",
        "[::1]:22",
        "h:2222",
        "x=1",
        "x='q'",
        "x={'a': [1, 2]}",
        "x={[1]: 2}",
        "x=False # c",
        "x=\"a b",
        "#",
        ";",
        "all:",
        "  hosts:",
        "    h1:",
        "      ansible_host: -x",
        "  children:",
        "    web:",
        "  vars:",
        "    v: yes",
        "    v: 0777",
        "hosts: h1",
        "plugin: x",
        "- a",
        "{a: [b",
        "&a x",
        "*a",
        "<<: *a",
        "ansible_port=http",
        "ansible_user=-oX",
        "ansible_connection=local",
        "ansible_group_priority=x",
        "\t",
        "\u{feff}",
        "é",
        "\\",
        "'",
        "\"",
        ":",
        "---",
    ];

    fn check(name: &str, text: &str) -> Result<(), TestCaseError> {
        let mut limits = Limits::default();
        limits.set(Limit::Hosts, 5_000);
        match inventory::parse_with(name, text, &limits) {
            Ok(fleet) => {
                prop_assert!(fleet.hosts.len() <= 5_000);
                for h in &fleet.hosts {
                    prop_assert!(!h.address.starts_with('-'), "{h:?}");
                }
            }
            Err(e) => {
                for d in &e.diagnostics.0 {
                    if let Some(loc) = &d.location {
                        if let Some(src) = e.sources.get(&loc.file) {
                            prop_assert!(loc.line >= 1 && loc.column >= 1, "{loc}");
                            prop_assert!(
                                loc.offset + loc.len <= src.len().max(1),
                                "{loc} in {src:?}"
                            );
                        }
                    }
                }
                let _ = e.render();
            }
        }
        Ok(())
    }

    fn fixtures() -> Vec<String> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventories");
        let mut out = Vec::new();
        for case in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(case.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(t) = std::fs::read_to_string(f.path()) {
                    out.push(t);
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_lines_never_panic(lines in prop::collection::vec(
            (prop::sample::select(FRAGMENTS), prop::sample::select(FRAGMENTS), 0usize..4), 0..12)
        ) {
            let text: String = lines
                .iter()
                .map(|(a, b, indent)| format!("{}{a} {b}\n", "  ".repeat(*indent)))
                .collect();
            for name in ["hosts.ini", "hosts.yml", "hosts", "inventory.yaml"] {
                check(name, &text)?;
            }
        }

        #[test]
        fn mutated_fixtures_never_panic(
            pick in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(FRAGMENTS)), 1..4),
        ) {
            let all = fixtures();
            let mut text = pick.get(&all).clone();
            for (at, frag) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                text.insert_str(i, frag);
            }
            for name in ["hosts.ini", "hosts.yml", "hosts"] {
                check(name, &text)?;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// On the lab fleet (root): `group_vars/all.yml` beside an Ansible inventory decides the user
// `compose-fleet hosts` logs in as.

fn hosts_json(inventory: &std::path::Path) -> Vec<serde_json::Value> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .arg("-i")
        .arg(inventory)
        .args(["hosts", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run compose-fleet hosts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("`compose-fleet hosts` hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    rows.as_array().expect("a list").clone()
}

#[test]
fn group_vars_all_sets_the_user_hosts_logs_in_with() {
    let Some(lab) = crate::support::Lab::up("group_vars_all_sets_the_user", 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ini = String::from("[lab]\n");
    for h in lab.host_names() {
        ini.push_str(&format!("{h} ansible_host={}\n", lab.address(&h)));
    }
    // A user that exists on no host: the inventory's own choice, which group_vars/all.yml
    // overrides (Ansible's precedence: group_vars files beat the inventory's group variables).
    ini.push_str(&format!(
        "[lab:vars]\nansible_user=ghost\nansible_ssh_private_key_file={}\ncompose_fleet_known_hosts={}\n",
        lab.identity().display(),
        lab.known_hosts().display()
    ));
    let inventory = dir.path().join("hosts");
    std::fs::write(&inventory, ini).unwrap();
    let rows = hosts_json(&inventory);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["reachable"], false, "{r}");
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("authentication refused"),
            "logged in as `ghost`? {r}"
        );
    }
    std::fs::create_dir(dir.path().join("group_vars")).unwrap();
    std::fs::write(
        dir.path().join("group_vars/all.yml"),
        "ansible_user: root\n",
    )
    .unwrap();
    let fleet = inventory::load(&inventory).unwrap_or_else(|e| panic!("{}", e.render()));
    let lab1 = host(&fleet, &lab.host(1));
    assert_eq!(lab1.user.as_deref(), Some("root"));
    assert!(lab1.origins["user"]
        .to_string()
        .ends_with("group_vars/all.yml:1:15"));
    let rows = hosts_json(&inventory);
    for r in &rows {
        assert_eq!(r["reachable"], true, "{r}");
        assert!(r["agent_version"].is_string(), "{r}");
    }
}

// ------------------------------------------------------------------------------------------
// The fleet's warnings reach the user from every command that loads the fleet, once.

#[test]
fn fleet_warnings_are_printed_once_by_the_commands_that_load_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("hosts.yml");
    std::fs::write(
        &inventory,
        "all:\n  hosts:\n    web1:\n      ansible_host: 192.0.2.10\n      compose_fleet_cpus: 2\n      compose_fleet_memory: 2GiB\n  host:\n    typo:\n",
    )
    .unwrap();
    let compose = dir.path().join("compose.yaml");
    std::fs::write(&compose, "services:\n  app:\n    image: busybox\n").unwrap();
    let warning = "skipping unknown key `host` in group `all`";
    for args in [&["plan", "--offline"][..], &["inventory"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
            .arg("-i")
            .arg(&inventory)
            .arg("-f")
            .arg(&compose)
            .args(args)
            .output()
            .expect("runs the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {}\n{stderr}", out.status);
        assert_eq!(stderr.matches(warning).count(), 1, "{args:?}:\n{stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(warning),
            "{args:?}: warnings go to stderr"
        );
    }
}

#[test]
fn the_pod_network_is_set_once_for_the_fleet() {
    use compose_fleet::proto::mesh::Mode;
    let fleet = parse(
        "fleet.yaml",
        "network: { cidr: 10.99.0.0/16, mode: wireguard, port: 4500 }\nhosts: { a: { address: 10.0.0.1 } }\n",
    );
    assert_eq!(fleet.network.cidr().to_string(), "10.99.0.0/16");
    assert_eq!(fleet.network.mode, Mode::Wireguard);
    assert_eq!(fleet.network.port(), 4500);
    let default = parse("fleet.yaml", "hosts: { a: { address: 10.0.0.1 } }\n");
    assert_eq!(default.network.cidr().to_string(), "10.213.0.0/16");
    assert_eq!(default.network.mode, Mode::Auto);
    assert_eq!(default.network.port(), 51820);
    let e = error(
        "fleet.yaml",
        "network: { port: 0 }\nhosts: { a: { address: 10.0.0.1 } }\n",
    );
    assert!(e.contains("`network.port` must be a port number"), "{e}");
    let e = error(
        "fleet.yaml",
        "network: { cidr: 10.99.1.0/16, mode: vxlan }\nhosts: { a: { address: 10.0.0.1 } }\n",
    );
    assert!(e.contains("fleet.yaml:1:18"), "{e}");
    assert!(e.contains("\"10.99.1.0/16\" is not an IPv4 prefix"), "{e}");
    assert!(e.contains("`network.mode` is `vxlan`"), "{e}");
    assert!(e.contains("auto, host-gw, wireguard"), "{e}");

    // Ansible: the same variables on every host (all:vars), or an error naming two hosts.
    let fleet = parse(
        "hosts",
        "a ansible_host=10.0.0.1\nb ansible_host=10.0.0.2\n\n[all:vars]\n\
         compose_fleet_network_cidr=10.98.0.0/16\ncompose_fleet_network_mode=host-gw\n\
         compose_fleet_network_port=4501\n",
    );
    assert_eq!(fleet.network.cidr().to_string(), "10.98.0.0/16");
    assert_eq!(fleet.network.mode, Mode::HostGw);
    assert_eq!(fleet.network.port(), 4501);
    assert!(!host(&fleet, "a")
        .labels
        .contains_key("compose_fleet_network_mode"));
    let e = error(
        "hosts",
        "a ansible_host=10.0.0.1 compose_fleet_network_mode=wireguard\nb ansible_host=10.0.0.2\n",
    );
    assert!(e.contains("hosts `a` and `b` see different"), "{e}");
    let e = error(
        "hosts",
        "a ansible_host=10.0.0.1 compose_fleet_network_mode=mesh\n",
    );
    assert!(e.contains("auto, host-gw or wireguard"), "{e}");
}
