//! The host's WireGuard key pair: an x25519 private key made on the host the first time it is
//! needed, kept in `<state>/wireguard.key` (mode 0600, base64 as `wg genkey` writes it), never
//! sent anywhere; only the public key is reported.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};

const KEY_FILE: &str = "wireguard.key";

/// The host's keys. The secret's `Debug` is never derived: it must not reach a log.
pub struct KeyPair {
    pub secret: StaticSecret,
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &encode(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

pub fn encode(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A base64 WireGuard key; `None` unless it is exactly 32 bytes.
pub fn decode(key: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .ok()?;
    bytes.try_into().ok()
}

fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

/// The host's key pair, made and saved the first time. Safe against two callers at once (two
/// `Hello`s): the key is written to a temporary file and hard-linked into place, which fails when
/// another caller won, whose key is then read.
pub fn load_or_create(state_dir: &Path) -> io::Result<KeyPair> {
    let path = key_path(state_dir);
    match read(&path) {
        Ok(k) => return Ok(k),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(state_dir)?;
    let mut raw = [0u8; 32];
    fill_random(&mut raw)?;
    let tmp = state_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(encode(&raw).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    raw.fill(0);
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    read(&path)
}

/// The public key, base64, made with the pair if needed.
pub fn public_key(state_dir: &Path) -> io::Result<String> {
    Ok(encode(load_or_create(state_dir)?.public.as_bytes()))
}

fn read(path: &Path) -> io::Result<KeyPair> {
    let text = std::fs::read_to_string(path)?;
    let raw = decode(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a WireGuard private key (32 bytes, base64); remove it to make a new one \
                 (the other hosts learn the new public key on the next `up`)",
                path.display()
            ),
        )
    })?;
    let secret = StaticSecret::from(raw);
    let public = PublicKey::from(&secret);
    Ok(KeyPair { secret, public })
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public.as_bytes(), b.public.as_bytes());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the key file is left (no temporary).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let public = public_key(dir.path()).unwrap();
        assert_eq!(decode(&public), Some(*a.public.as_bytes()));
        assert!(!format!("{a:?}").contains(&encode(&a.secret.to_bytes())));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(public_key(other.path()).unwrap(), public, "random per host");
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("wireguard.key"), "{err}");
    }
}
