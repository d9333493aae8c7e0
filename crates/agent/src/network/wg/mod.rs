//! WireGuard for the mesh: the host's key pair ([`keys`]), a TUN device ([`tun`]) and the
//! userspace implementation that runs on it inside the agent ([`userspace`], boringtun's noise
//! protocol driven by our own loop).
//!
//! Kernel WireGuard (Linux ≥ 5.6) is driven over netlink where the kernel has it ([`kernel`]);
//! the development and CI kernels lack it, so there only its choice, encoding and decoding are
//! tested and the userspace device runs; see `mesh.rs`.

pub mod kernel;
pub mod keys;
pub mod tun;
pub mod userspace;

pub use keys::KeyPair;
