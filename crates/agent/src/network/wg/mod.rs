//! WireGuard for the mesh: the host's key pair ([`keys`]), a TUN device ([`tun`]) and the
//! userspace implementation that runs on it inside the agent ([`userspace`], boringtun's noise
//! protocol driven by our own loop).
//!
//! Kernel WireGuard (Linux ≥ 5.6) is not used yet: the development and CI kernels lack it, so
//! only the userspace path could be tested; see `mesh.rs`.

pub mod keys;
pub mod tun;
pub mod userspace;

pub use keys::KeyPair;
