//! The supervisor's side of image delivery: `blobs_wanted`, `blob_chunk` and `image_commit`
//! answered by the image store (`crate::image::receive` holds the logic).

use super::{Failure, Supervisor};
use crate::proto::{Request, Response};

impl Supervisor {
    pub(super) async fn receive(&self, request: Request) -> Result<Response, Failure> {
        let Some(store) = self.inner.cfg.image_store.as_ref() else {
            return Err(Failure::bad(
                "this agent has no image store to receive images into",
            ));
        };
        match request {
            Request::BlobsWanted { digests } => store
                .wanted(&digests)
                .map(|missing| Response::BlobsWanted { missing })
                .map_err(|e| Failure::host("checking which blobs are missing", e)),
            Request::BlobChunk(chunk) => store
                .receive_chunk(&chunk)
                .await
                .map(|(offset, complete)| Response::BlobChunk {
                    digest: chunk.digest.clone(),
                    offset,
                    complete,
                })
                .map_err(|e| Failure::host(format!("receiving blob {}", chunk.digest), e)),
            Request::ImageCommit(commit) => store
                .commit(&commit)
                .await
                .map(Response::ImageCommitted)
                .map_err(|e| Failure::host(format!("committing image {}", commit.reference), e)),
            _ => Err(Failure::bad("not an image delivery request")),
        }
    }
}
