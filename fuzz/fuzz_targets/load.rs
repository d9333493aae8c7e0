//! Feeds arbitrary bytes as a compose file to the loader (through its in-memory file source),
//! then builds the dependency graph of whatever loads. Must never panic, hang or exhaust memory;
//! every diagnostic must point inside the text it names.
#![no_main]

use compose_fleet::compose::{self, Environment, LoadOptions, MemoryFs};
use compose_fleet::compose::model::Location;
use compose_fleet::diag::{Diagnostics, SourceMap};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "/fuzz/compose.yaml";

fn check_locations(diags: &Diagnostics, sources: &SourceMap) {
    for d in &diags.0 {
        for loc in d.location.iter().chain(d.notes.iter().map(|(l, _)| l)) {
            check(loc, sources);
        }
        // Rendering must not panic either.
        let _ = sources.render(d);
    }
}

fn check(loc: &Location, sources: &SourceMap) {
    let Some(text) = sources.get(&loc.file) else {
        return;
    };
    assert!(loc.line >= 1 && loc.column >= 1, "bad position {loc}");
    assert!(
        loc.offset + loc.len <= text.len(),
        "{loc}: span {}+{} past the end ({} bytes)",
        loc.offset,
        loc.len,
        text.len()
    );
    let lines = compose_fleet::diag::source_lines(text).count() as u32;
    assert!(loc.line <= lines, "{loc}: line past the end ({lines} lines)");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let fs = MemoryFs::new().with(FILE, text);
    let opts = LoadOptions::for_file(FILE);
    let env: Environment = [("TAG", "1.0"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match compose::load(&opts, &env, &fs) {
        Ok(loaded) => {
            check_locations(&loaded.warnings, &loaded.sources);
            match compose_fleet::graph::build(&loaded.project) {
                Ok(graph) => {
                    let _ = graph.to_dot(&loaded.project.name);
                    let _ = graph.to_json();
                }
                Err(problems) => check_locations(&problems, &loaded.sources),
            }
        }
        Err(failure) => check_locations(&failure.diagnostics, &failure.sources),
    }
});
