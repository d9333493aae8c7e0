//! `images/index.json`: which references are present, and the manifest each resolves to.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) so that a crash leaves
//! either the old or the new index. A corrupt index is set aside, never a reason not to start:
//! the blobs are still there, so pulling again is cheap.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{ImageError, Result};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub images: BTreeMap<String, IndexRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexRecord {
    /// The platform-specific image manifest (`sha256:…`).
    pub manifest: String,
    /// The manifest list the reference pointed at, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

impl Index {
    /// Loads the index; a missing file is an empty index, a corrupt one is renamed aside.
    pub fn load(path: &Path) -> Result<Index> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(ImageError::io("reading", path)(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(index) => Ok(index),
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                eprintln!(
                    "image store: {} is corrupt ({e}); moved to {}, starting with an empty index",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(ImageError::io("renaming", path))?;
                Ok(Index::default())
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::store::write_atomic(path, bytes, 0o644).map_err(ImageError::io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_index_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.json");
        std::fs::write(&path, b"{not json").expect("write");
        let index = Index::load(&path).expect("loads");
        assert!(index.images.is_empty());
        assert!(dir.path().join("index.json.corrupt").exists());

        let mut index = Index::default();
        index.images.insert(
            "docker.io/library/busybox:latest".into(),
            IndexRecord {
                manifest: "sha256:aa".into(),
                list: None,
            },
        );
        index.save(&path).expect("saves");
        let back = Index::load(&path).expect("loads");
        assert_eq!(back.images, index.images);
    }
}
