//! Feeds arbitrary bytes to the inventory reader as each format (Ansible INI, Ansible YAML, a
//! file with no extension, our own YAML). Must never panic, hang or exhaust memory; every
//! diagnostic must point inside the text it names, and render.
#![no_main]

use compose_fleet::compose::model::Location;
use compose_fleet::diag::SourceMap;
use compose_fleet::inventory;
use compose_fleet::limits::{Limit, Limits};
use libfuzzer_sys::fuzz_target;

fn check(loc: &Location, sources: &SourceMap) {
    let Some(text) = sources.get(&loc.file) else {
        return;
    };
    assert!(loc.line >= 1 && loc.column >= 1, "bad position {loc}");
    assert!(
        loc.offset + loc.len <= text.len().max(1),
        "{loc}: span {}+{} past the end ({} bytes)",
        loc.offset,
        loc.len,
        text.len()
    );
    let lines = compose_fleet::diag::source_lines(text).count().max(1) as u32;
    assert!(loc.line <= lines, "{loc}: line past the end ({lines} lines)");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let name = ["hosts.ini", "hosts.yml", "hosts", "inventory.yaml"][usize::from(selector % 4)];
    let text = String::from_utf8_lossy(rest);
    // Small bounds keep every run fast; the reader must honour them.
    let mut limits = Limits::default();
    limits.set(Limit::Hosts, 10_000);
    match inventory::parse_with(name, &text, &limits) {
        Ok(fleet) => {
            assert!(!fleet.hosts.is_empty());
            assert!(fleet.hosts.len() <= 10_000);
            for h in &fleet.hosts {
                // What reaches ssh never looks like an option.
                assert!(!h.address.starts_with('-'), "{h:?}");
                assert!(!h.user.as_deref().unwrap_or("").starts_with('-'), "{h:?}");
            }
        }
        Err(e) => {
            for d in &e.diagnostics.0 {
                for loc in d.location.iter().chain(d.notes.iter().map(|(l, _)| l)) {
                    check(loc, &e.sources);
                }
            }
            let _ = e.render();
        }
    }
});
