//! The plan: desired placement diffed against observed state, as ordered actions per host.
