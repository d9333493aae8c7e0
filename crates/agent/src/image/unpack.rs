//! Unpacking one layer tarball into its own directory, ready to be an overlayfs lower dir.
//!
//! - Whiteouts become what overlayfs reads: `.wh.NAME` a 0/0 character device `NAME`, and
//!   `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. Both need root; without
//!   root the `.wh.*` marker files are kept as they are (such a layer cannot be mounted anyway).
//! - Nothing is written outside the layer directory: `..` components are refused, and writes never
//!   go through a symlink (the `tar` crate canonicalizes parents; our own whiteout and device code
//!   refuses symlinked parents). Hard links must point inside the layer.
//! - Device nodes are created only as root; otherwise skipped. `trusted.*` xattrs from the archive
//!   are dropped so a layer cannot forge overlayfs metadata.
//! - The uncompressed stream is hashed while it is read: the result is checked against the
//!   image config's `diff_id` by the caller.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest, Sha256};

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Plain,
}

/// The compression of a layer media type, or a hint saying why it cannot be unpacked.
pub(crate) fn compression_for(media_type: &str) -> Result<Compression, &'static str> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::Plain),
        m if m.ends_with("+zstd") => {
            Err("; zstd layers are not supported yet: push the image with gzip layers")
        }
        _ => Err("; only tar and gzip-compressed tar layers are supported"),
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Unpacks `blob` into the empty directory `dest`; returns the `sha256:` digest of the
/// uncompressed tar stream (the layer's diff_id).
pub(crate) fn unpack_layer(
    blob: &Path,
    compression: Compression,
    dest: &Path,
    privileged: bool,
) -> io::Result<String> {
    let file = BufReader::with_capacity(256 << 10, File::open(blob)?);
    let reader: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Plain => Box::new(file),
    };
    let mut archive = tar::Archive::new(HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(privileged);
    archive.set_overwrite(true);
    // Applied below, filtered.
    archive.set_unpack_xattrs(false);

    let mut whiteouts: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = sanitize(&raw)? else { continue };
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let parent = rel.parent().unwrap_or(Path::new(""));

        if name == b".wh..wh..opq" {
            let dir = ensure_dir(dest, parent)?;
            if privileged {
                xattr::set(&dir, "trusted.overlay.opaque", b"y")?;
            } else {
                File::create(dir.join(".wh..wh..opq"))?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                continue;
            }
            let dir = ensure_dir(dest, parent)?;
            let target = dir.join(OsStr::from_bytes(hidden));
            if target.symlink_metadata().is_ok() {
                // This layer has its own entry there: that already hides the lower one.
                continue;
            }
            if privileged {
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
                whiteouts.insert(target);
            } else {
                File::create(dir.join(rel.file_name().unwrap_or_default()))?;
            }
            continue;
        }

        let target = dest.join(&rel);
        if whiteouts.remove(&target) {
            // A later entry of the same layer replaces the whiteout.
            std::fs::remove_file(&target)?;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            if privileged {
                make_node(dest, &rel, &entry)?;
            }
            continue;
        }
        let xattrs = archive_xattrs(&mut entry);
        entry.unpack_in(dest).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {}", rel.display(), with_causes(&e)))
        })?;
        if !kind.is_symlink() {
            for (key, value) in xattrs {
                if let Err(e) = xattr::set(&target, &key, &value) {
                    // Unprivileged runs cannot set security.* (file capabilities): not fatal there.
                    if privileged {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("setting xattr {key:?} on {}: {e}", rel.display()),
                        ));
                    }
                }
            }
        }
    }
    let mut rest = archive.into_inner();
    // The tar end-of-archive blocks and padding are part of the diff_id.
    io::copy(&mut rest, &mut io::sink())?;
    Ok(format!("sha256:{}", hex::encode(rest.hasher.finalize())))
}

/// The entry's path relative to the layer root; `None` for the root itself; an error for `..`.
fn sanitize(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry `{}` escapes the layer with `..`", path.display()),
                ))
            }
            Component::Normal(p) => out.push(p),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Creates `dest/rel` as a directory (and its parents), refusing to pass through symlinks.
fn ensure_dir(dest: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match cur.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "`{}` is not a directory (a symlink or file) in this layer",
                        rel.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&cur)?,
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

fn make_node<R: Read>(dest: &Path, rel: &Path, entry: &tar::Entry<'_, R>) -> io::Result<()> {
    let header = entry.header();
    let kind = header.entry_type();
    let dir = ensure_dir(dest, rel.parent().unwrap_or(Path::new("")))?;
    let target = dir.join(rel.file_name().unwrap_or_default());
    if target.symlink_metadata().is_ok() {
        if target.is_dir() && !target.is_symlink() {
            std::fs::remove_dir_all(&target)?;
        } else {
            std::fs::remove_file(&target)?;
        }
    }
    let flag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    let mode = Mode::from_bits_truncate(header.mode()? & 0o7777);
    mknod(&target, flag, mode, makedev(major.into(), minor.into()))?;
    let uid = header.uid()? as u32;
    let gid = header.gid()? as u32;
    std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
    // mknod applies the umask: set the archive's mode exactly.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &target,
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(io::Error::from)
}

/// `SCHILY.xattr.*` PAX records of the entry, without `trusted.*` (overlayfs metadata).
fn archive_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(OsString, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(Result::ok)
        .filter_map(|e| {
            let key = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?;
            if key.starts_with(b"trusted.") {
                return None;
            }
            Some((
                OsStr::from_bytes(key).to_os_string(),
                e.value_bytes().to_vec(),
            ))
        })
        .collect()
}

/// An error and its causes, `a: b: c` (the `tar` crate puts the real reason in the source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        msg.push_str(": ");
        msg.push_str(&cause.to_string());
        src = cause.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_components_are_refused_and_roots_stripped() {
        assert!(sanitize(Path::new("a/../../etc/passwd")).is_err());
        assert_eq!(
            sanitize(Path::new("/etc/./passwd")).expect("ok"),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(sanitize(Path::new("./")).expect("ok"), None);
    }

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(
            compression_for("application/vnd.oci.image.layer.v1.tar+gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            compression_for("application/vnd.docker.image.rootfs.diff.tar"),
            Ok(Compression::Plain)
        );
        assert!(compression_for("application/vnd.oci.image.layer.v1.tar+zstd").is_err());
        assert!(compression_for("application/vnd.wasm.content.layer.v1+wasm").is_err());
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
            }
            // Bypass the builder's own path checks: these tests feed hostile paths.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn hostile_entries_do_not_escape_the_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let check = |entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]| {
            let blob = dir.path().join("blob.tar");
            std::fs::write(&blob, tar_with(entries)).expect("write");
            let dest = dir.path().join("layer");
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::create_dir(&dest).expect("mkdir");
            unpack_layer(&blob, Compression::Plain, &dest, false)
        };
        assert!(check(&[("../outside/x", tar::EntryType::Regular, b"x", None)]).is_err());
        // A symlink to an absolute path, then a write through it.
        let escape = outside.to_string_lossy().into_owned();
        let r = check(&[
            ("link", tar::EntryType::Symlink, b"", Some(&escape)),
            ("link/pwned", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(r.is_err(), "writing through an absolute symlink must fail");
        let r = check(&[("hard", tar::EntryType::Link, b"", Some("/etc/passwd"))]);
        assert!(r.is_err(), "hard link to a host file must fail");
        assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);
    }
}
