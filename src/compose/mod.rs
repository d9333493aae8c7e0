//! The Compose Specification front end: YAML, interpolation, merging, extends, include, profiles,
//! validation, and the normalized [`model::Project`] with source locations kept for errors.
//!
//! `compose` knows nothing about hosts, SSH or placement.

pub mod model;
