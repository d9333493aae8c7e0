//! Where input files come from: the [`FileSource`] trait keeps the loader free of I/O, and every
//! read through it is bounded. The CLI passes [`RealFs`]; tests and the fuzzer pass a [`MemoryFs`];
//! [`Bounded`] applies the `file-bytes` limit in force to either.
//!
//! A read never holds more than the limit plus one byte in memory: a regular file larger than the
//! limit is refused from its size alone, anything else (a pipe, `/dev/stdin`, `/dev/zero`) is read
//! through `take(limit + 1)` and refused when that extra byte arrives.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::compose::model::Location;
use crate::limits::Limit;

/// Read access to files by absolute path.
pub trait FileSource {
    /// The file's bytes, refused with [`io::ErrorKind::FileTooLarge`] (a [`TooLarge`] inside) when
    /// it holds more than `max_bytes`; never more than `max_bytes + 1` bytes are buffered.
    fn read_bytes_limited(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>>;

    /// Whether a regular file exists at `path` (for default file discovery).
    fn is_file(&self, path: &Path) -> bool;

    /// The bound [`FileSource::read`] and [`FileSource::read_bytes`] apply: the default
    /// `file-bytes` limit unless the source was given another ([`Bounded`]).
    fn max_bytes(&self) -> u64 {
        Limit::FileBytes.default_value()
    }

    /// The file's bytes, bounded by [`FileSource::max_bytes`] (secret and config content).
    fn read_bytes(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.read_bytes_limited(path, self.max_bytes())
    }

    /// The whole file as text, bounded by [`FileSource::max_bytes`]: UTF-8, or UTF-16 with a
    /// byte-order mark (as docker compose reads them); invalid UTF-8 is an error the loader
    /// reports at its line and column ([`super::yaml::text_from_bytes`]).
    fn read(&self, path: &Path) -> io::Result<String> {
        super::yaml::text_from_bytes(&self.read_bytes(path)?)
    }
}

/// A file over the `file-bytes` limit: the error inside [`io::ErrorKind::FileTooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The limit that was in force.
    pub max_bytes: u64,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "it holds more than {} bytes, the most compose-fleet reads from one file (the \
             `--limit {}=N` flag or {}=N raises that)",
            self.max_bytes,
            Limit::FileBytes.name(),
            Limit::FileBytes.env_var()
        )
    }
}

impl std::error::Error for TooLarge {}

impl TooLarge {
    fn error(max_bytes: u64) -> io::Error {
        io::Error::new(io::ErrorKind::FileTooLarge, TooLarge { max_bytes })
    }

    /// The [`TooLarge`] inside `e`, if that is what `e` is.
    pub fn of(e: &io::Error) -> Option<TooLarge> {
        e.get_ref()?.downcast_ref::<TooLarge>().copied()
    }
}

/// The hint for a failed read: `otherwise`, unless the file was over the limit (then the path is
/// most likely wrong, e.g. a device or a log file).
pub fn read_hint(e: &io::Error, otherwise: &str) -> String {
    match TooLarge::of(e) {
        Some(_) => format!(
            "check that this is the file you meant; if it is, raise the `file-bytes` limit with \
             `--limit {}=N` or {}=N",
            Limit::FileBytes.name(),
            Limit::FileBytes.env_var()
        ),
        None => otherwise.to_string(),
    }
}

/// Where to point a read error that no other file names (a `-f` or `--env-file` argument):
/// the start of the file itself (`file`, as the user spelled its path), when it is over the
/// limit, so the message says which file even though there is no line in it to show.
pub fn too_large_at(e: &io::Error, file: Arc<str>) -> Option<Location> {
    TooLarge::of(e).map(|_| Location {
        file,
        line: 1,
        column: 1,
        offset: 0,
        len: 0,
    })
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl FileSource for RealFs {
    fn read_bytes_limited(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
        read_file_limited(path, max_bytes)
    }
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// Reads at most `max_bytes` of `path` from the real file system (see [`FileSource`]). The one
/// bounded reader: the inventory loader and the deploy's secret and config files use it too.
pub fn read_file_limited(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory, not a file",
        ));
    }
    // A disk is not a compose file; character devices (`/dev/null`, a terminal) and pipes
    // (`-f <(generate)`, `/dev/stdin`) are legitimate and read through the bound below.
    if kind.is_block_device() || kind.is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a device or socket, not a file",
        ));
    }
    if kind.is_file() && meta.len() > max_bytes {
        return Err(TooLarge::error(max_bytes));
    }
    let expected = if kind.is_file() { meta.len() } else { 8192 };
    let mut bytes = Vec::with_capacity(usize::try_from(expected.min(max_bytes)).unwrap_or(0));
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(TooLarge::error(max_bytes));
    }
    Ok(bytes)
}

/// Another source with the `file-bytes` limit in force for one load.
#[derive(Clone, Copy)]
pub struct Bounded<'a> {
    inner: &'a dyn FileSource,
    max_bytes: u64,
}

impl<'a> Bounded<'a> {
    pub fn new(inner: &'a dyn FileSource, max_bytes: u64) -> Self {
        Bounded { inner, max_bytes }
    }
}

impl fmt::Debug for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl FileSource for Bounded<'_> {
    fn read_bytes_limited(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
        self.inner.read_bytes_limited(path, max_bytes)
    }
    fn is_file(&self, path: &Path) -> bool {
        self.inner.is_file(path)
    }
    fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

/// Files held in memory, keyed by absolute path.
#[derive(Debug, Default, Clone)]
pub struct MemoryFs {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl MemoryFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file (the path is normalized lexically).
    pub fn with(mut self, path: impl AsRef<Path>, text: impl Into<String>) -> Self {
        self.insert(path, text);
        self
    }

    pub fn insert(&mut self, path: impl AsRef<Path>, text: impl Into<String>) {
        self.insert_bytes(path, text.into().into_bytes());
    }

    /// Adds a file that need not be UTF-8.
    pub fn insert_bytes(&mut self, path: impl AsRef<Path>, bytes: impl Into<Vec<u8>>) {
        self.files.insert(normalize(path.as_ref()), bytes.into());
    }
}

impl FileSource for MemoryFs {
    fn read_bytes_limited(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
        let bytes = self
            .files
            .get(&normalize(path))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        if bytes.len() as u64 > max_bytes {
            return Err(TooLarge::error(max_bytes));
        }
        Ok(bytes.clone())
    }
    fn is_file(&self, path: &Path) -> bool {
        self.files.contains_key(&normalize(path))
    }
}

/// Removes `.` and resolves `..` lexically (no symlinks are followed: the loader is pure).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `path` made absolute against `base` and normalized.
pub fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        normalize(&base.join(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_zero_is_refused_at_the_limit_without_reading_on() {
        let e = RealFs
            .read_bytes_limited(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(TooLarge::of(&e), Some(TooLarge { max_bytes: 1 << 20 }));
        let msg = e.to_string();
        assert!(msg.contains("--limit file-bytes=N"), "{msg}");
        assert!(msg.contains("COMPOSE_FLEET_MAX_FILE_BYTES"), "{msg}");
    }

    #[test]
    fn dev_null_reads_empty_and_directories_are_refused() {
        assert_eq!(RealFs.read(Path::new("/dev/null")).unwrap(), "");
        let e = RealFs.read(Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn a_regular_file_over_the_limit_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "12345").unwrap();
        assert_eq!(RealFs.read_bytes_limited(&path, 5).unwrap(), b"12345");
        let e = RealFs.read_bytes_limited(&path, 4).unwrap_err();
        assert_eq!(TooLarge::of(&e), Some(TooLarge { max_bytes: 4 }));
    }

    #[test]
    fn the_bounded_source_applies_its_limit_to_plain_reads() {
        let fs = MemoryFs::new().with("/p/a", "abcdef");
        assert!(fs.read(Path::new("/p/a")).is_ok());
        let bounded = Bounded::new(&fs, 3);
        let e = bounded.read(Path::new("/p/a")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn invalid_utf8_names_the_byte_and_where_it_is() {
        let mut fs = MemoryFs::new();
        fs.insert_bytes("/p/a", b"ok\nx\xff".to_vec());
        let e = fs.read(Path::new("/p/a")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // `LINE:COLUMN: ` first: the loader turns it back into a location.
        assert!(e.to_string().starts_with("2:2: "), "{e}");
        assert!(e.to_string().contains("byte 0xff at offset 4"), "{e}");
    }
}
