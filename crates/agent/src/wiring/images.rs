//! [`ImageSource`] for the image store: pulls through [`ImageStore::pull`] (verified, layers
//! shared) and hands the supervisor the config and unpacked layer directories.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::image::{ImageRef, ImageStore};
use crate::proto::RegistryAuth;
use crate::supervisor::seam::{BoxFuture, ImageConfig, ImageSource, PulledImage};
use crate::supervisor::state::log;

/// The image store as the supervisor's image source.
pub struct StoreImages {
    store: Arc<ImageStore>,
}

impl StoreImages {
    /// Opens (creating) the store at `root` (`/var/lib/compose-fleet/images`).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<StoreImages> {
        let store = ImageStore::open(root).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(StoreImages::new(Arc::new(store)))
    }

    pub fn new(store: Arc<ImageStore>) -> StoreImages {
        StoreImages { store }
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }
}

/// The parts of the store's image config the supervisor applies.
pub fn seam_config(config: &crate::image::ImageConfig) -> ImageConfig {
    ImageConfig {
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        env: config.env.clone(),
        user: config.user.clone().filter(|u| !u.is_empty()),
        working_dir: config.working_dir.clone().filter(|w| !w.is_empty()),
        stop_signal: config.stop_signal.clone(),
    }
}

impl ImageSource for StoreImages {
    fn pull<'a>(
        &'a self,
        reference: &'a str,
        auth: Option<&'a RegistryAuth>,
        insecure: bool,
    ) -> BoxFuture<'a, io::Result<PulledImage>> {
        Box::pin(async move {
            let registry = ImageRef::parse(reference)
                .map_err(|e| io::Error::other(e.to_string()))?
                .registry()
                .to_string();
            let insecure: Vec<String> = if insecure { vec![registry] } else { Vec::new() };
            let before = self.store.stats();
            let image = self
                .store
                .pull(reference, auth, &insecure)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            let after = self.store.stats();
            // Concurrent pulls blur the figures; they are a diagnostic, not an account.
            log(&format!(
                "image {}: {} ({} blobs, {} bytes fetched)",
                image.reference,
                image.manifest_digest,
                after.blobs_fetched.saturating_sub(before.blobs_fetched),
                after.bytes_fetched.saturating_sub(before.bytes_fetched),
            ));
            Ok(PulledImage {
                digest: image.manifest_digest,
                config: seam_config(&image.config),
                layers: image.layer_dirs,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_user_and_workdir_mean_unset() {
        let config = crate::image::ImageConfig {
            entrypoint: Some(vec!["/bin/httpd".into()]),
            cmd: Some(vec!["-f".into()]),
            env: vec!["PATH=/bin".into()],
            user: Some(String::new()),
            working_dir: Some(String::new()),
            stop_signal: Some("SIGQUIT".into()),
            ..Default::default()
        };
        let seam = seam_config(&config);
        assert_eq!(seam.entrypoint, config.entrypoint);
        assert_eq!(seam.cmd, config.cmd);
        assert_eq!(seam.env, config.env);
        assert_eq!(seam.user, None);
        assert_eq!(seam.working_dir, None);
        assert_eq!(seam.stop_signal.as_deref(), Some("SIGQUIT"));
    }
}
