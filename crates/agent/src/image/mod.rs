//! The image store: OCI pulls streamed to disk, blobs verified by digest, layers shared.
