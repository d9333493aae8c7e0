//! The release records' host side (issue 12): each numbered release of a project that this host
//! took part in, written atomically as `releases/<project>/<number>.json` (0600 in a 0700
//! directory), read back newest first, and pruned to the newest N **of that project only**: one
//! project's pruning never touches another's records (kamal#1922 deleted another destination's
//! rollback state that way).
//!
//! Records live beside `leases/`, not under `projects/<project>/`, so `down` (which removes the
//! project's directory) keeps the history. What to keep is decided by [`to_prune`], pure.
//!
//! Pruning records also frees their images ([`collect_images`]): an image is deleted only when no
//! kept record of **any** project names it and no pod on the host uses it, so pruning one project
//! never takes an image another project's releases (or rollbacks) need.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::state::{list_dirs, read_json, write_json, StateRoot};
use super::Failure;
use crate::image::{GcReport, ImageError, ImageRef, ImageStore, Keep};
use crate::proto::{PodSpec, RecordRelease, ReleaseRecord};

/// Images used, and blobs and layers written, this recently survive a collection: a pull or a
/// delivery for a release not yet recorded may be using them.
pub const IMAGE_GRACE: Duration = Duration::from_secs(600);

/// The records' numbers to delete so that the newest `keep` remain (`keep == 0` keeps all).
/// `numbers` in any order; the answer is sorted.
pub fn to_prune(numbers: &[u64], keep: usize) -> Vec<u64> {
    if keep == 0 || numbers.len() <= keep {
        return Vec::new();
    }
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let cut = sorted.len().saturating_sub(keep);
    sorted.truncate(cut);
    sorted
}

/// This host's release records, one directory per project, changed under one mutex.
pub struct Releases {
    dir: PathBuf,
    lock: Mutex<()>,
    /// Records were pruned since images were last collected.
    pruned: AtomicBool,
}

impl Releases {
    pub fn new(state: &StateRoot) -> Releases {
        Releases {
            dir: state.root().join("releases"),
            lock: Mutex::new(()),
            pruned: AtomicBool::new(false),
        }
    }

    fn project_dir(&self, project: &str) -> Result<PathBuf, Failure> {
        if project.is_empty()
            || project.starts_with('.')
            || project.contains(['/', '\0'])
            || project.len() > 255
        {
            return Err(Failure::bad(format!(
                "`{project}` is not a project name (its releases are a directory named after it)"
            )));
        }
        Ok(self.dir.join(project))
    }

    /// The numbers of the records present, unsorted.
    fn numbers(dir: &std::path::Path) -> Vec<u64> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            .collect()
    }

    /// Writes `req.record`, then prunes the project's records to the newest `req.keep`.
    /// Returns the records that remain, newest first, without pods.
    pub fn record(&self, req: &RecordRelease) -> Result<Vec<ReleaseRecord>, Failure> {
        let dir = self.project_dir(&req.record.project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::host(format!("creating {}", dir.display()), e))?;
        let path = dir.join(format!("{}.json", req.record.number));
        write_json(&path, &req.record)
            .map_err(|e| Failure::host(format!("recording release {}", req.record.number), e))?;
        for n in to_prune(&Self::numbers(&dir), req.keep as usize) {
            // A record that cannot be deleted is pruned next time.
            if std::fs::remove_file(dir.join(format!("{n}.json"))).is_ok() {
                self.pruned.store(true, Ordering::SeqCst);
            }
        }
        Ok(self.read(&dir, false))
    }

    /// The project's records, newest first; `pods: false` leaves their pods out.
    pub fn list(&self, project: &str, pods: bool) -> Result<Vec<ReleaseRecord>, Failure> {
        let dir = self.project_dir(project)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read(&dir, pods))
    }

    /// Every image the kept records of every project name.
    pub fn images(&self) -> BTreeSet<String> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        list_dirs(&self.dir)
            .into_iter()
            .flat_map(|project| self.read(&self.dir.join(project), true))
            .flat_map(|r| r.pods)
            .flat_map(|p| p.containers)
            .map(|c| c.image)
            .collect()
    }

    /// Whether records were pruned since the last call (then images may be collected).
    pub fn take_pruned(&self) -> bool {
        self.pruned.swap(false, Ordering::SeqCst)
    }

    fn read(&self, dir: &std::path::Path, pods: bool) -> Vec<ReleaseRecord> {
        let mut numbers = Self::numbers(dir);
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        numbers
            .into_iter()
            .filter_map(|n| read_json::<ReleaseRecord>(&dir.join(format!("{n}.json"))))
            .map(|mut r| {
                if !pods {
                    r.pods.clear();
                }
                r
            })
            .collect()
    }
}

/// The pods a project's `desired.json` holds (only what image collection reads of it).
#[derive(serde::Deserialize, Default)]
struct DesiredPods {
    #[serde(default)]
    pods: Vec<PodSpec>,
}

/// Reads a JSON file the supervisor owns without ever moving it aside (as `read_json` does with
/// one it cannot parse): collection only looks.
fn peek<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What the pods on this host use: the images of every project's desired pods, and the layers
/// every container on disk was launched from (a pod being replaced still runs the old ones).
pub fn in_use(state: &StateRoot) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut images = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for project in state.project_names() {
        let desired: DesiredPods = peek(&state.desired(&project)).unwrap_or_default();
        images.extend(
            desired
                .pods
                .into_iter()
                .flat_map(|p| p.containers)
                .map(|c| c.image),
        );
        let pods = state.project(&project).join("pods");
        for pod in list_dirs(&pods) {
            for container in list_dirs(&pods.join(&pod)) {
                let launch = pods.join(&pod).join(container).join("launch.json");
                if let Some(l) = peek::<super::seam::Launch>(&launch) {
                    layers.extend(
                        l.layers
                            .iter()
                            .filter_map(|d| d.file_name())
                            .map(|n| n.to_string_lossy().into_owned()),
                    );
                }
            }
        }
    }
    (images, layers)
}

/// Deletes the images (and then the blobs and layers) that no kept release record of any project
/// names and no pod on this host uses; what was used or written within `grace` stays. The
/// release pruning that calls it removes one project's records only: another project's images
/// stay as long as its records name them (kamal#1922).
pub async fn collect_images(
    state: &StateRoot,
    releases: &Releases,
    store: &ImageStore,
    grace: Duration,
) -> Result<GcReport, ImageError> {
    let (mut images, layers) = in_use(state);
    images.extend(releases.images());
    // A reference that does not parse was never pulled under it: nothing to keep for it.
    let images = images
        .iter()
        .filter_map(|i| ImageRef::parse(i).ok())
        .collect();
    store
        .collect(&Keep {
            images,
            layers,
            grace,
        })
        .await
}

/// After a `RecordRelease` that pruned records: collects their images in the background (a
/// collection waits for running pulls, and the deploy that recorded must not wait for it).
pub(super) fn after_record(inner: &std::sync::Arc<super::Inner>) {
    if !inner.releases.take_pruned() {
        return;
    }
    let Some(store) = inner.cfg.image_store.clone() else {
        return;
    };
    let inner = inner.clone();
    tokio::spawn(async move {
        match collect_images(&inner.state, &inner.releases, &store, IMAGE_GRACE).await {
            Ok(r) if !r.images.is_empty() || r.blobs > 0 || r.layers > 0 => eprintln!(
                "daemon: releases pruned; removed {} unused image(s) ({}), {} blob(s), {} layer(s)",
                r.images.len(),
                r.images.join(", "),
                r.blobs,
                r.layers
            ),
            Ok(_) => {}
            Err(e) => eprintln!("daemon: collecting unused images after pruning releases: {e}"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ReleaseStatus;

    #[test]
    fn pruning_keeps_the_newest_n() {
        assert_eq!(to_prune(&[3, 1, 2], 10), Vec::<u64>::new());
        assert_eq!(to_prune(&[3, 1, 2, 5, 4], 2), vec![1, 2, 3]);
        assert_eq!(to_prune(&[7, 9], 0), Vec::<u64>::new(), "0 keeps all");
        assert_eq!(to_prune(&[4, 4, 1], 1), vec![1]);
        assert_eq!(to_prune(&[], 1), Vec::<u64>::new());
    }

    fn record(project: &str, number: u64) -> RecordRelease {
        RecordRelease {
            record: ReleaseRecord {
                project: project.into(),
                number,
                started: number * 100,
                owner: "ana@laptop".into(),
                status: ReleaseStatus::Succeeded,
                changed: vec!["web".into()],
                managed: vec!["web".into()],
                rollback_of: None,
                message: None,
                pods: vec![serde_json::from_str(&format!(
                    r#"{{"name":"web-1","hostname":"web-1","spec_hash":"h{number}","containers":[]}}"#
                ))
                .expect("a pod spec")],
            },
            keep: 3,
            fence: None,
        }
    }

    #[test]
    fn records_are_listed_newest_first_and_pruned_within_their_project_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let releases = Releases::new(&StateRoot::new(dir.path()));
        releases.record(&record("other", 1)).expect("record");
        for n in 1..=5 {
            releases.record(&record("shop", n)).expect("record");
        }
        let shop = releases.list("shop", true).expect("list");
        let numbers: Vec<u64> = shop.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [5, 4, 3]);
        assert_eq!(shop[0].pods[0].spec_hash, "h5");
        assert!(releases.list("shop", false).expect("list")[0]
            .pods
            .is_empty());
        // The other project's record survived shop's pruning.
        assert_eq!(releases.list("other", false).expect("list").len(), 1);
        // A status update overwrites the record in place.
        let mut failed = record("shop", 5);
        failed.record.status = ReleaseStatus::RolledBack;
        releases.record(&failed).expect("record");
        let again = Releases::new(&StateRoot::new(dir.path()));
        let listed = again.list("shop", false).expect("list");
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].status, ReleaseStatus::RolledBack);
        let mode = std::fs::metadata(dir.path().join("releases/shop/5.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(releases.list("../x", false).is_err());
    }
}

#[cfg(test)]
mod image_tests {
    //! Image collection after pruning, on a real image store fed by delivery (no registry).

    use super::*;
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    use crate::proto::{BlobChunk, ImageCommit, ReleaseStatus};

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// An uncompressed layer with one file.
    fn layer(file: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(file.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, file, file.as_bytes())
            .expect("tar");
        builder.into_inner().expect("tar")
    }

    /// Delivers an image of `layers` tagged `tag`; returns its manifest digest.
    async fn deliver(store: &ImageStore, tag: &str, layers: &[Vec<u8>]) -> String {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()}
        }))
        .expect("json");
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": digest(l), "size": l.len()})).collect::<Vec<_>>()
        }))
        .expect("json");
        for blob in std::iter::once(&config).chain(layers) {
            if !store.wanted(&[digest(blob)]).expect("wanted").is_empty() {
                store
                    .receive_chunk(&BlobChunk {
                        digest: digest(blob),
                        size: blob.len() as u64,
                        offset: 0,
                        data_b64: b64(blob),
                        encoding: None,
                    })
                    .await
                    .expect("chunk");
            }
        }
        let (name, _) = tag.split_once(':').expect("a tag");
        store
            .commit(&ImageCommit {
                reference: format!("{name}@{}", digest(&manifest)),
                digest: digest(&manifest),
                manifest_b64: b64(&manifest),
                tags: vec![tag.to_string()],
            })
            .await
            .expect("commit");
        digest(&manifest)
    }

    fn record(project: &str, number: u64, image: &str) -> RecordRelease {
        let pod: PodSpec = serde_json::from_value(serde_json::json!({
            "name": "web-1", "hostname": "web-1", "spec_hash": format!("h{number}"),
            "containers": [{"service": "web", "replica": 1, "image": image}]
        }))
        .expect("a pod spec");
        RecordRelease {
            record: ReleaseRecord {
                project: project.into(),
                number,
                started: number,
                owner: "ana@laptop".into(),
                status: ReleaseStatus::Succeeded,
                changed: vec!["web".into()],
                managed: vec!["web".into()],
                rollback_of: None,
                message: None,
                pods: vec![pod],
            },
            keep: 2,
            fence: None,
        }
    }

    /// kamal#1922: two projects share an image; pruning one project's old release keeps it (and
    /// the layers it shares with a collected image), while an image no kept release and no pod
    /// names is removed.
    #[tokio::test]
    async fn pruning_one_projects_releases_keeps_images_another_project_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateRoot::new(dir.path().join("state"));
        let store = ImageStore::open(dir.path().join("images")).expect("store");
        let releases = Releases::new(&state);
        let (base, extra, fresh) = (layer("base"), layer("extra"), layer("fresh"));
        let shared = deliver(&store, "example.org/shared:1", std::slice::from_ref(&base)).await;
        let old = deliver(&store, "example.org/old:1", &[base.clone(), extra.clone()]).await;
        let current = deliver(
            &store,
            "example.org/current:1",
            std::slice::from_ref(&fresh),
        )
        .await;
        // `blog` runs the shared image; `shop` ran it and `old`, then moved to `current`.
        releases
            .record(&record("blog", 1, "example.org/shared:1"))
            .expect("record");
        releases
            .record(&record("shop", 1, "example.org/shared:1"))
            .expect("record");
        releases
            .record(&record("shop", 2, "example.org/old:1"))
            .expect("record");
        releases
            .record(&record("shop", 3, "example.org/current:1"))
            .expect("record");
        assert!(releases.take_pruned(), "shop 1 pruned (keep 2)");
        let nothing = collect_images(&state, &releases, &store, IMAGE_GRACE)
            .await
            .expect("collect");
        assert!(nothing.images.is_empty(), "all still named: {nothing:?}");
        releases
            .record(&record("shop", 4, "example.org/current:1"))
            .expect("record");
        assert!(releases.take_pruned(), "shop 2 pruned");
        // Within the grace period everything just delivered stays.
        let young = collect_images(&state, &releases, &store, IMAGE_GRACE)
            .await
            .expect("collect");
        assert_eq!(young, GcReport::default());
        let report = collect_images(&state, &releases, &store, Duration::ZERO)
            .await
            .expect("collect");
        assert_eq!(
            report.images,
            [
                "example.org/old:1".to_string(),
                format!("example.org/old@{old}")
            ]
        );
        assert!(store
            .get("example.org/shared:1")
            .await
            .expect("get")
            .is_some());
        assert!(store
            .get("example.org/current:1")
            .await
            .expect("get")
            .is_some());
        assert!(store.get("example.org/old:1").await.expect("get").is_none());
        let blob = |d: &str| store.blob_path(d).expect("a sha256 digest").is_file();
        assert!(blob(&digest(&base)), "the shared layer's blob stays");
        assert!(blob(&shared) && blob(&current));
        assert!(!blob(&old) && !blob(&digest(&extra)), "old's own blobs go");
        let layers = store.root().join("layers");
        assert!(layers.join(&digest(&base)["sha256:".len()..]).is_dir());
        assert!(!layers.join(&digest(&extra)["sha256:".len()..]).exists());
        // A pod's desired image is kept though no record names it any more.
        let desired = state.desired("blog");
        std::fs::create_dir_all(desired.parent().expect("a dir")).expect("mkdir");
        std::fs::write(
            &desired,
            serde_json::to_vec(&serde_json::json!({"pods": [{
                "name": "web-1", "hostname": "web-1", "spec_hash": "x",
                "containers": [{"service": "web", "replica": 1, "image": "example.org/shared:1"}]
            }]}))
            .expect("json"),
        )
        .expect("write");
        releases
            .record(&record("blog", 2, "example.org/current:1"))
            .expect("record");
        releases
            .record(&record("blog", 3, "example.org/current:1"))
            .expect("record");
        let report = collect_images(&state, &releases, &store, Duration::ZERO)
            .await
            .expect("collect");
        assert!(report.images.is_empty(), "{report:?}");
        assert!(store
            .get("example.org/shared:1")
            .await
            .expect("get")
            .is_some());
    }
}
