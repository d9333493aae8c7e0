//! Errors of the image store: each names the image, the blob or the file, and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while pulling, unpacking or collecting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference `{reference}`: {reason}")]
    BadReference { reference: String, reason: String },

    #[error("pulling {image} from {registry}: {source}{hint}")]
    Registry {
        image: String,
        registry: String,
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
        /// Empty, or `"\nhint: ..."`.
        hint: String,
    },

    #[error(
        "pulling {image}: {what} failed verification: expected digest {expected}, got {actual}; \
         the registry served corrupted or tampered content (nothing was stored)"
    )]
    DigestMismatch {
        image: String,
        /// `blob`, `manifest` or `layer` (the uncompressed diff_id of a layer).
        what: &'static str,
        expected: String,
        actual: String,
    },

    #[error(
        "pulling {image}: blob {digest} has the wrong size: the manifest says {expected} bytes, \
         the registry sent {actual}{more}; nothing was stored"
    )]
    SizeMismatch {
        image: String,
        digest: String,
        expected: u64,
        actual: u64,
        /// `" or more"` when the download was cut off for exceeding the size.
        more: &'static str,
    },

    #[error("pulling {image}: layer {digest} has media type `{media_type}`, which this agent cannot unpack{hint}")]
    UnsupportedMediaType {
        image: String,
        digest: String,
        media_type: String,
        hint: &'static str,
    },

    #[error("pulling {image}: {reason}")]
    BadImage { image: String, reason: String },

    #[error(
        "pulling {image}: no image for this host's platform {platform} in the manifest list \
         (it has: {available}); build or push the image for {platform}"
    )]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },

    #[error("pulling {image}: unpacking layer {digest}: {reason}")]
    Unpack {
        image: String,
        digest: String,
        reason: String,
    },

    #[error("image store: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("image {reference} is not in the store; pull it first")]
    NotPresent { reference: String },
}

impl ImageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
