//! The reconcile diff: desired pods of a project against the pods that exist. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// What `Apply` must do, by pod name; each list is sorted and the four are disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodDiff {
    /// Desired and absent: start.
    pub create: Vec<String>,
    /// Present with another spec hash: stop the old pod, start the new one.
    pub replace: Vec<String>,
    /// Present and no longer desired: stop and delete.
    pub remove: Vec<String>,
    /// Present with the same hash: leave alone (running, restarting or exited by its policy).
    pub unchanged: Vec<String>,
}

/// Compares desired `(pod name, spec hash)` pairs against existing ones. A name desired twice
/// keeps its last hash (the CLI never sends duplicates; the agent must still not act twice).
pub fn diff_pods<'a>(
    desired: impl IntoIterator<Item = (&'a str, &'a str)>,
    existing: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> PodDiff {
    let desired: BTreeMap<&str, &str> = desired.into_iter().collect();
    let existing: BTreeMap<&str, &str> = existing.into_iter().collect();
    let mut out = PodDiff::default();
    for (name, hash) in &desired {
        match existing.get(name) {
            None => out.create.push(name.to_string()),
            Some(old) if old != hash => out.replace.push(name.to_string()),
            Some(_) => out.unchanged.push(name.to_string()),
        }
    }
    let desired_names: BTreeSet<&str> = desired.keys().copied().collect();
    out.remove = existing
        .keys()
        .filter(|n| !desired_names.contains(*n))
        .map(|n| n.to_string())
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(desired: &[(&str, &str)], existing: &[(&str, &str)], expect: [&[&str]; 4]) {
        let d = diff_pods(desired.iter().copied(), existing.iter().copied());
        let got = [&d.create, &d.replace, &d.remove, &d.unchanged];
        for (g, e) in got.iter().zip(expect) {
            assert_eq!(g.iter().map(String::as_str).collect::<Vec<_>>(), e);
        }
    }

    #[test]
    fn empty_both_does_nothing() {
        check(&[], &[], [&[], &[], &[], &[]]);
    }

    #[test]
    fn all_new_pods_are_created() {
        check(&[("b", "1"), ("a", "2")], &[], [&["a", "b"], &[], &[], &[]]);
    }

    #[test]
    fn empty_desired_removes_everything() {
        check(&[], &[("a", "1"), ("b", "1")], [&[], &[], &["a", "b"], &[]]);
    }

    #[test]
    fn same_hash_is_unchanged() {
        check(&[("a", "1")], &[("a", "1")], [&[], &[], &[], &["a"]]);
    }

    #[test]
    fn changed_hash_replaces_only_that_pod() {
        check(
            &[("a", "1"), ("b", "2"), ("c", "3")],
            &[("a", "1"), ("b", "old"), ("c", "3")],
            [&[], &["b"], &[], &["a", "c"]],
        );
    }

    #[test]
    fn mixed_create_replace_remove_unchanged() {
        check(
            &[("web-1", "h1"), ("web-2", "h2"), ("db-1", "h3")],
            &[("web-1", "h1"), ("web-2", "x"), ("cache-1", "h4")],
            [&["db-1"], &["web-2"], &["cache-1"], &["web-1"]],
        );
    }

    #[test]
    fn duplicate_desired_name_acts_once_with_last_hash() {
        check(
            &[("a", "1"), ("a", "2")],
            &[("a", "2")],
            [&[], &[], &[], &["a"]],
        );
    }

    #[test]
    fn scale_down_removes_the_extra_replicas() {
        check(
            &[("web-1", "h")],
            &[("web-1", "h"), ("web-2", "h"), ("web-3", "h")],
            [&[], &[], &["web-2", "web-3"], &["web-1"]],
        );
    }
}
