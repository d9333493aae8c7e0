//! What we ship may be shipped: every crate built into the CLI or the agent (normal
//! dependencies, proc macros included, followed through `cargo metadata`'s resolved graph) is under licenses we
//! can pass on, and nothing GPL-licensed reaches the agent (issue 10: it is pushed to every
//! host). An SPDX expression passes when one of its `OR` alternatives is made only of allowed
//! licenses; a license the list does not know fails, naming the crate, until someone has read it.
//! The advisory floors of DESIGN.md (`tar` ≥ 0.4.45, `hickory-*` ≥ 0.26.1) are checked on the
//! same graph.
//!
//! The checks work on parsed metadata, so each is also shown to fail on a planted violation.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Licenses whose terms let us ship the binaries under Apache-2.0 with notices. MPL-2.0 is
/// file-level copyleft: linking it unmodified is fine.
const ALLOWED: [&str; 15] = [
    "0BSD",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC0-1.0",
    "ISC",
    "MIT",
    "MIT-0",
    "MPL-2.0",
    "Unicode-3.0",
    "Unicode-DFS-2016",
    "Unlicense",
    "Zlib",
    "CDLA-Permissive-2.0",
];

/// Exceptions allowed after `WITH`.
const ALLOWED_EXCEPTIONS: [&str; 1] = ["LLVM-exception"];

/// Crates (by name prefix) whose versions must be at least the given one: known advisories below.
const FLOORS: [(&str, (u64, u64, u64)); 2] = [("tar", (0, 4, 45)), ("hickory-", (0, 26, 1))];

/// A shipped crate: name, version and license expression (`None`: the manifest gives none).
#[derive(Debug, Clone)]
struct Package {
    name: String,
    version: String,
    license: Option<String>,
}

/// The crates each root links, from `cargo metadata`: root name → its normal-dependency closure
/// (build scripts' and tests' dependencies are not shipped).
fn shipped(metadata: &Value, roots: &[&str]) -> Result<BTreeMap<String, Vec<Package>>, String> {
    let packages: BTreeMap<&str, Package> = metadata["packages"]
        .as_array()
        .ok_or("metadata has no packages")?
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?,
                Package {
                    name: p["name"].as_str()?.to_string(),
                    version: p["version"].as_str()?.to_string(),
                    license: p["license"].as_str().map(str::to_string),
                },
            ))
        })
        .collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("metadata has no resolve graph")?
    {
        let Some(id) = node["id"].as_str() else {
            continue;
        };
        let deps = node["deps"].as_array().into_iter().flatten();
        let normal = deps.filter(|d| {
            d["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
        });
        edges.insert(id, normal.filter_map(|d| d["pkg"].as_str()).collect());
    }
    let mut out = BTreeMap::new();
    for root in roots {
        let start = packages
            .iter()
            .find(|(_, p)| p.name == *root)
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("no package `{root}` in the metadata"))?;
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            if seen.insert(id) {
                stack.extend(edges.get(id).into_iter().flatten().copied());
            }
        }
        seen.remove(start);
        let linked = seen.iter().filter_map(|id| packages.get(id).cloned());
        out.insert(root.to_string(), linked.collect());
    }
    Ok(out)
}

/// Whether an SPDX expression can be taken under allowed licenses. `/` (an old spelling) is `OR`.
fn acceptable(expression: &str) -> bool {
    let spaced = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut at = 0;
    let ok = any_of(&tokens, &mut at);
    ok == Some(true) && at == tokens.len()
}

/// `all (OR all)*`; `None` when the expression is malformed.
fn any_of(t: &[&str], at: &mut usize) -> Option<bool> {
    let mut ok = all_of(t, at)?;
    while t.get(*at) == Some(&"OR") {
        *at += 1;
        ok |= all_of(t, at)?;
    }
    Some(ok)
}

/// `one (AND one)*`.
fn all_of(t: &[&str], at: &mut usize) -> Option<bool> {
    let mut ok = one(t, at)?;
    while t.get(*at) == Some(&"AND") {
        *at += 1;
        ok &= one(t, at)?;
    }
    Some(ok)
}

/// `( expression )` or `LICENSE [WITH EXCEPTION]`.
fn one(t: &[&str], at: &mut usize) -> Option<bool> {
    let token = *t.get(*at)?;
    *at += 1;
    if token == "(" {
        let ok = any_of(t, at)?;
        (t.get(*at) == Some(&")")).then_some(())?;
        *at += 1;
        return Some(ok);
    }
    if ["OR", "AND", "WITH", ")"].contains(&token) {
        return None;
    }
    let mut ok = ALLOWED.contains(&token.trim_end_matches('+'));
    if t.get(*at) == Some(&"WITH") {
        ok &= ALLOWED_EXCEPTIONS.contains(t.get(*at + 1)?);
        *at += 2;
    }
    Some(ok)
}

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Every rule broken by what `root` links, one line each.
fn violations(root: &str, linked: &[Package]) -> Vec<String> {
    let mut out = Vec::new();
    for p in linked {
        match &p.license {
            None => out.push(format!(
                "{root} links {} {}, whose manifest names no license",
                p.name, p.version
            )),
            Some(l) if !acceptable(l) => out.push(format!(
                "{root} links {} {} under `{l}`, which has no alternative made only of allowed licenses",
                p.name, p.version
            )),
            Some(_) => {}
        }
        for (prefix, floor) in FLOORS {
            let matches = p.name == prefix || (prefix.ends_with('-') && p.name.starts_with(prefix));
            if matches && version(&p.version) < floor {
                out.push(format!(
                    "{root} links {} {}, below the advisory floor {}.{}.{}",
                    p.name, p.version, floor.0, floor.1, floor.2
                ));
            }
        }
    }
    out
}

/// `cargo metadata` for one target platform (the others' crates are not even downloaded).
fn metadata(platform: &str) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", platform])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// The platform the tests run on, where the CLI was built (`rustc -vV`'s `host:`).
fn host_platform() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_string()
}

#[test]
fn every_shipped_crate_has_a_license_we_can_pass_on_and_none_is_gpl() {
    // The agent is always built for this target (build.rs); the CLI for the machine at hand.
    let agent = shipped(
        &metadata("x86_64-unknown-linux-musl"),
        &["compose-fleet-agent"],
    );
    let cli = shipped(&metadata(&host_platform()), &["compose-fleet"]);
    let mut shipped = agent.expect("the agent's package in the metadata");
    shipped.extend(cli.expect("the CLI's package in the metadata"));
    let agent = &shipped["compose-fleet-agent"];
    // Make sure the graph was really followed.
    for dep in ["tokio", "serde_json", "compose-fleet-proto"] {
        assert!(
            agent.iter().any(|p| p.name == dep),
            "the agent's closure lacks {dep}: {agent:?}"
        );
    }
    assert!(shipped["compose-fleet"].iter().any(|p| p.name == "clap"));
    let broken: Vec<String> = shipped
        .iter()
        .flat_map(|(root, linked)| violations(root, linked))
        .collect();
    assert!(
        broken.is_empty(),
        "{}\nhint: read the crate's license; add it to ALLOWED in tests/it/licenses.rs only if \
         we may ship it, else replace the crate",
        broken.join("\n")
    );
}

#[test]
fn gpl_only_and_unknown_licenses_fail_and_alternatives_pass() {
    for ok in [
        "MIT",
        "MIT OR Apache-2.0",
        "MIT/Apache-2.0",
        "Apache-2.0 / MIT",
        "(MIT OR Apache-2.0) AND Unicode-3.0",
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
        "MPL-2.0 OR LGPL-3.0-or-later",
        "ISC AND (Apache-2.0 OR ISC)",
    ] {
        assert!(acceptable(ok), "{ok} should pass");
    }
    for bad in [
        "GPL-3.0",
        "GPL-2.0-or-later",
        "MIT AND GPL-2.0",
        "LGPL-2.1 OR GPL-3.0",
        "SSPL-1.0",
        "",
        "MIT OR",
        "(MIT",
        "Apache-2.0 WITH Classpath-exception-2.0",
    ] {
        assert!(!acceptable(bad), "{bad:?} should fail");
    }
}

#[test]
fn a_gpl_crate_linked_by_the_agent_is_named_and_floors_are_enforced() {
    let metadata = serde_json::json!({
        "packages": [
            {"id": "agent", "name": "compose-fleet-agent", "version": "0.1.0", "license": "Apache-2.0"},
            {"id": "netl", "name": "nftnl", "version": "0.6.0", "license": "GPL-2.0"},
            {"id": "tar", "name": "tar", "version": "0.4.44", "license": "MIT OR Apache-2.0"},
            {"id": "dns", "name": "hickory-server", "version": "0.26.1", "license": "MIT OR Apache-2.0"},
            {"id": "test", "name": "gpl-test-helper", "version": "1.0.0", "license": "GPL-3.0"},
        ],
        "resolve": {"nodes": [
            {"id": "agent", "deps": [
                {"pkg": "netl", "dep_kinds": [{"kind": null}]},
                {"pkg": "tar", "dep_kinds": [{"kind": null}]},
                {"pkg": "dns", "dep_kinds": [{"kind": null}]},
                {"pkg": "test", "dep_kinds": [{"kind": "dev"}]},
            ]},
        ]},
    });
    let shipped = shipped(&metadata, &["compose-fleet-agent"]).expect("planted metadata");
    let v = violations("compose-fleet-agent", &shipped["compose-fleet-agent"]);
    assert_eq!(
        v,
        [
            "compose-fleet-agent links nftnl 0.6.0 under `GPL-2.0`, which has no alternative made only of allowed licenses",
            "compose-fleet-agent links tar 0.4.44, below the advisory floor 0.4.45",
        ],
        "a dev-dependency is not shipped; hickory-server 0.26.1 meets its floor"
    );
}
