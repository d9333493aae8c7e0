//! The image store against a real registry (Debian's `docker-registry` on loopback).

mod support;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use compose_fleet_agent::image::{ImageError, ImageRef, ImageStore, Platform};
use compose_fleet_agent::proto::RegistryAuth;
use support::{
    busybox_layer, have_tools, push_image, push_index, small_layer, whiteout_layer, Registry,
};

fn new_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path().join("images")).expect("open store");
    (dir, store)
}

fn insecure(registry: &Registry) -> Vec<String> {
    vec![registry.addr.clone()]
}

#[tokio::test]
async fn pull_unpacks_layers_and_honours_whiteouts() {
    if !have_tools("pull_unpacks_layers_and_honours_whiteouts") {
        return;
    }
    let registry = Registry::start();
    let (base, upper) = (busybox_layer(), whiteout_layer());
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;
    let two = push_image(
        &registry,
        "test/upper:1",
        "amd64",
        &[base.clone(), upper.clone()],
    )
    .await;
    let (_dir, store) = new_store();

    let image = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("pull base");
    assert_eq!(image.manifest_digest, one.manifest_digest);
    assert_eq!(image.config_digest, one.config_digest);
    assert_eq!(image.layer_dirs.len(), 1);
    let l1 = &image.layer_dirs[0];
    assert_eq!(
        std::fs::read(l1.join("bin/busybox")).expect("busybox unpacked"),
        std::fs::read(support::BUSYBOX).expect("host busybox")
    );
    assert_eq!(
        std::fs::metadata(l1.join("bin/busybox"))
            .expect("stat")
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(l1.join("bin/sh")).expect("symlink"),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::metadata(l1.join("bin/ls"))
            .expect("hard link")
            .ino(),
        std::fs::metadata(l1.join("bin/busybox"))
            .expect("stat")
            .ino(),
        "bin/ls is a hard link to bin/busybox inside the layer"
    );
    assert_eq!(
        std::fs::read_to_string(l1.join("etc/motd")).expect("motd"),
        "hello from the base layer\n"
    );
    // The image config reaches the runtime.
    let c = &image.config;
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/busybox".to_string()][..])
    );
    assert_eq!(c.cmd.as_ref().map(Vec::len), Some(3));
    assert!(c.env.contains(&"GREETING=hi".to_string()));
    assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
    assert_eq!(c.user.as_deref(), Some("0:0"));
    assert_eq!(c.exposed_ports, vec!["8080/tcp".to_string()]);
    // What the runtime receives: the same config, the layers bottom first.
    let rt = image.runtime_config();
    assert_eq!(rt.layers, image.layer_dirs);
    assert_eq!(
        (&rt.entrypoint, &rt.cmd, &rt.env),
        (&c.entrypoint, &c.cmd, &c.env)
    );
    assert_eq!((&rt.user, &rt.working_dir), (&c.user, &c.working_dir));
    let hc = c.healthcheck.as_ref().expect("healthcheck");
    assert_eq!(hc.test, vec!["CMD".to_string(), "true".to_string()]);
    assert_eq!(hc.interval, Some(std::time::Duration::from_secs(2)));

    // The second image shares the base layer: only its config and upper layer are downloaded.
    let before = store.stats();
    let image2 = store
        .pull(&two.reference, None, &insecure(&registry))
        .await
        .expect("pull upper");
    let after = store.stats();
    assert_eq!(
        after.blobs_fetched - before.blobs_fetched,
        2,
        "config + upper layer only"
    );
    assert_eq!(
        after.bytes_fetched - before.bytes_fetched,
        (two.config_size + upper.blob.len()) as u64,
        "the shared base layer was not downloaded again"
    );
    assert_eq!(image2.layer_dirs.len(), 2);
    assert_eq!(
        image2.runtime_config().layers,
        image2.layer_dirs,
        "bottom layer first"
    );
    assert_eq!(
        &image2.layer_dirs[0], l1,
        "the base layer directory is shared"
    );
    let l2 = &image2.layer_dirs[1];
    assert_eq!(
        std::fs::read_to_string(l2.join("data/c")).expect("data/c"),
        "c\n"
    );
    assert_eq!(
        std::fs::read_to_string(l2.join("hello.txt")).expect("hello"),
        "hello from the upper layer\n"
    );
    if !support::is_root(
        "the whiteout checks of pull_unpacks_layers_and_honours_whiteouts",
        "mknod, trusted xattrs",
    ) {
        return;
    }
    let wh = std::fs::symlink_metadata(l2.join("etc/motd")).expect("whiteout");
    assert!(
        wh.file_type().is_char_device(),
        "a whiteout is a character device"
    );
    assert_eq!(wh.rdev(), 0, "a whiteout is device 0/0");
    assert!(!l2.join("etc/.wh.motd").exists());
    assert_eq!(
        xattr::get(l2.join("data"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec()),
        "an opaque directory carries trusted.overlay.opaque=y"
    );
    assert!(!l2.join("data/.wh..wh..opq").exists());

    // And overlayfs reads them so: mounted (in a private mount namespace), motd and data/a are gone.
    let target = _dir.path().join("rootfs");
    std::fs::create_dir(&target).expect("mkdir");
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:{} {} && ls {t}/etc {t}/data && cat {t}/hello.txt",
        l2.display(),
        l1.display(),
        target.display(),
        t = target.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !listing.contains("motd"),
        "whited-out etc/motd is hidden: {listing}"
    );
    assert!(
        listing.contains("passwd"),
        "etc/passwd from the base shows: {listing}"
    );
    assert!(
        !listing.lines().any(|l| l == "a" || l == "b"),
        "opaque data/ hides the base's files: {listing}"
    );
    assert!(listing.lines().any(|l| l == "c"), "{listing}");
}

#[tokio::test]
async fn an_image_pulled_twice_is_downloaded_once() {
    if !have_tools("an_image_pulled_twice_is_downloaded_once") {
        return;
    }
    let registry = Registry::start();
    let base = busybox_layer();
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;
    let (dir, store) = new_store();

    let first = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("first pull");
    let s1 = store.stats();
    assert_eq!(s1.blobs_fetched, 2, "config and layer");
    assert_eq!(s1.bytes_fetched, (one.config_size + base.blob.len()) as u64);
    let second = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("second pull");
    let s2 = store.stats();
    assert_eq!(first, second);
    assert_eq!(
        s2.blobs_fetched, s1.blobs_fetched,
        "no blob downloaded the second time"
    );
    assert_eq!(s2.bytes_fetched, s1.bytes_fetched);

    // After a restart the index still knows it, without the network.
    drop(store);
    let store = ImageStore::open(dir.path().join("images")).expect("reopen");
    let local = store
        .get(&one.reference)
        .await
        .expect("get")
        .expect("present after restart");
    assert_eq!(local, first);
    let by_digest = format!("{}/test/base@{}", registry.addr, one.manifest_digest);
    assert!(
        store.get(&by_digest).await.expect("get").is_some(),
        "found by manifest digest too"
    );
    store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("pull after restart");
    assert_eq!(store.stats().blobs_fetched, 0);
    // By digest, a present image needs no registry at all (here: not even reachable over https).
    let manifests = store.stats().manifests_fetched;
    let pinned = store
        .pull(&by_digest, None, &[])
        .await
        .expect("pull by digest, offline");
    assert_eq!(pinned.manifest_digest, one.manifest_digest);
    assert_eq!(store.stats().manifests_fetched, manifests);
}

#[tokio::test]
async fn a_corrupted_blob_is_rejected_by_digest() {
    if !have_tools("a_corrupted_blob_is_rejected_by_digest") {
        return;
    }
    let registry = Registry::start();
    let base = busybox_layer();
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;
    // Same length, other bytes: only the digest can tell.
    let data = registry.blob_data(&base.digest());
    let mut corrupt = std::fs::read(&data).expect("registry blob");
    for b in corrupt.iter_mut().skip(100).take(64) {
        *b ^= 0xff;
    }
    std::fs::write(&data, &corrupt).expect("corrupt the registry's copy");
    let (_dir, store) = new_store();

    let err = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect_err("must be rejected");
    match &err {
        ImageError::DigestMismatch {
            image,
            expected,
            actual,
            ..
        } => {
            assert!(image.contains("test/base:1"), "{err}");
            assert_eq!(expected, &base.digest());
            assert_eq!(actual, &support::sha256(&corrupt));
        }
        other => panic!("expected a digest mismatch, got: {other}"),
    }
    let message = err.to_string();
    eprintln!("the error a user sees: {message}");
    assert!(
        message.contains(&base.digest()) && message.contains(&support::sha256(&corrupt)),
        "{message}"
    );
    let blob = store.blob_path(&base.digest()).expect("path");
    assert!(!blob.exists(), "a corrupt blob never enters the store");
    assert!(
        !blob.with_extension("partial").exists(),
        "nor stays as a partial download"
    );
    assert!(store.get(&one.reference).await.expect("get").is_none());
    assert!(store.list().await.is_empty());
    let layers = std::fs::read_dir(store.root().join("layers"))
        .expect("layers")
        .count();
    assert_eq!(layers, 0, "nothing was unpacked");
}

#[tokio::test]
async fn a_registry_not_marked_insecure_is_not_contacted_over_http() {
    // A listener that records what a client sends first: TLS starts with a handshake record
    // (0x16), plain http with a method name.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("the client connects");
        let mut first = [0u8; 3];
        let _ = conn.read_exact(&mut first);
        first
    });
    let (_dir, store) = new_store();
    let err = store
        .pull(&format!("{addr}/test/base:1"), None, &[])
        .await
        .expect_err("no TLS server there");
    let first = seen.join().expect("listener");
    assert_eq!(
        first[0],
        0x16,
        "the client spoke TLS, not {:?}",
        String::from_utf8_lossy(&first)
    );
    assert_ne!(&first, b"GET");
    let message = err.to_string();
    eprintln!("the error a user sees: {message}");
    assert!(
        message.contains("mark it insecure"),
        "the error says what to do: {message}"
    );
}

#[tokio::test]
async fn a_manifest_list_resolves_to_the_host_platform() {
    if !have_tools("a_manifest_list_resolves_to_the_host_platform") {
        return;
    }
    let registry = Registry::start();
    let amd64 = push_image(
        &registry,
        "test/multi:amd64",
        "amd64",
        &[small_layer("amd64")],
    )
    .await;
    let arm64 = push_image(
        &registry,
        "test/multi:arm64",
        "arm64",
        &[small_layer("arm64")],
    )
    .await;
    let list = push_index(
        &registry,
        "test/multi:latest",
        &[("amd64", &amd64), ("arm64", &arm64)],
    )
    .await;
    let (_dir, store) = new_store();

    let image = store
        .pull(
            &registry.reference("test/multi:latest"),
            None,
            &insecure(&registry),
        )
        .await
        .expect("pull list");
    let host = Platform::host().architecture;
    let expected = match host.as_str() {
        "amd64" => &amd64,
        "arm64" => &arm64,
        other => {
            eprintln!(
                "skipped: a_manifest_list_resolves_to_the_host_platform has no image for {other}"
            );
            return;
        }
    };
    assert_eq!(image.manifest_digest, expected.manifest_digest);
    assert_eq!(image.config.architecture, host);
    assert!(
        image.layer_dirs[0].join(&host).is_file(),
        "the {host} layer was unpacked"
    );
    // The list's digest also finds it.
    let by_list = format!("{}/test/multi@{list}", registry.addr);
    assert_eq!(
        store
            .get(&by_list)
            .await
            .expect("get")
            .map(|i| i.manifest_digest),
        Some(expected.manifest_digest.clone())
    );
}

#[tokio::test]
async fn gc_removes_unreferenced_layers_and_keeps_shared_ones() {
    if !have_tools("gc_removes_unreferenced_layers_and_keeps_shared_ones") {
        return;
    }
    let registry = Registry::start();
    let (base, upper) = (busybox_layer(), whiteout_layer());
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;
    let two = push_image(
        &registry,
        "test/upper:1",
        "amd64",
        &[base.clone(), upper.clone()],
    )
    .await;
    let (_dir, store) = new_store();
    let img1 = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("pull 1");
    let img2 = store
        .pull(&two.reference, None, &insecure(&registry))
        .await
        .expect("pull 2");

    let keep = [ImageRef::parse(&one.reference).expect("ref")];
    let report = store.gc(&keep).await.expect("gc");
    assert_eq!(
        report.images,
        vec![ImageRef::parse(&two.reference).expect("ref").canonical()]
    );
    assert_eq!(report.layers, 1, "the upper layer only");
    assert_eq!(
        report.blobs, 3,
        "manifest, config and upper layer of image 2"
    );
    assert!(!img2.layer_dirs[1].exists());
    assert!(img1.layer_dirs[0].is_dir(), "the shared base layer stays");
    assert!(store.blob_path(&base.digest()).expect("path").is_file());
    assert!(!store.blob_path(&upper.digest()).expect("path").exists());
    assert!(!store
        .blob_path(&two.manifest_digest)
        .expect("path")
        .exists());
    assert_eq!(store.get(&one.reference).await.expect("get"), Some(img1));
    assert!(store.get(&two.reference).await.expect("get").is_none());

    // Pulling image 2 again fetches only what gc removed.
    let before = store.stats();
    store
        .pull(&two.reference, None, &insecure(&registry))
        .await
        .expect("pull 2 again");
    assert_eq!(
        store.stats().bytes_fetched - before.bytes_fetched,
        (two.config_size + upper.blob.len()) as u64
    );

    let report = store.gc(&[]).await.expect("gc all");
    assert_eq!(report.images.len(), 2);
    assert_eq!(
        std::fs::read_dir(store.root().join("layers"))
            .expect("layers")
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .expect("blobs")
            .count(),
        0
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_and_a_bad_partial_is_discarded() {
    if !have_tools("an_interrupted_download_resumes_and_a_bad_partial_is_discarded") {
        return;
    }
    let registry = Registry::start();
    let base = busybox_layer();
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;

    // A crash left the first half of the layer on disk: only the rest is fetched.
    let (_dir, store) = new_store();
    let half = base.blob.len() / 2;
    let partial = store
        .blob_path(&base.digest())
        .expect("path")
        .with_extension("partial");
    std::fs::write(&partial, &base.blob[..half]).expect("partial");
    store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("resumed pull");
    assert_eq!(
        store.stats().bytes_fetched,
        (one.config_size + base.blob.len() - half) as u64
    );
    assert!(!partial.exists());
    assert_eq!(
        std::fs::read(store.blob_path(&base.digest()).expect("path")).expect("blob"),
        base.blob
    );

    // A partial file with wrong bytes: detected after resuming, discarded, fetched again whole.
    let (_dir2, store) = new_store();
    let partial = store
        .blob_path(&base.digest())
        .expect("path")
        .with_extension("partial");
    std::fs::write(&partial, vec![0u8; half]).expect("garbage partial");
    let image = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect("pull despite garbage");
    assert_eq!(
        std::fs::read(store.blob_path(&base.digest()).expect("path")).expect("blob"),
        base.blob
    );
    assert!(image.layer_dirs[0].join("bin/busybox").is_file());
}

#[tokio::test]
async fn concurrent_pulls_download_a_shared_layer_once() {
    if !have_tools("concurrent_pulls_download_a_shared_layer_once") {
        return;
    }
    let registry = Registry::start();
    let (base, upper) = (busybox_layer(), whiteout_layer());
    let one = push_image(
        &registry,
        "test/base:1",
        "amd64",
        std::slice::from_ref(&base),
    )
    .await;
    let two = push_image(
        &registry,
        "test/upper:1",
        "amd64",
        &[base.clone(), upper.clone()],
    )
    .await;
    let (_dir, store) = new_store();
    let insecure = insecure(&registry);
    let (a, b) = tokio::join!(
        store.pull(&one.reference, None, &insecure),
        store.pull(&two.reference, None, &insecure)
    );
    let (a, b) = (a.expect("pull 1"), b.expect("pull 2"));
    assert_eq!(a.layer_dirs[0], b.layer_dirs[0]);
    let stats = store.stats();
    assert_eq!(
        stats.blobs_fetched, 4,
        "two configs, the base layer once, the upper layer"
    );
    assert_eq!(
        stats.bytes_fetched,
        (one.config_size + two.config_size + base.blob.len() + upper.blob.len()) as u64
    );
    let leftovers: Vec<_> = std::fs::read_dir(store.root().join("layers"))
        .expect("layers")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary unpack dirs remain");
}

#[tokio::test]
async fn registry_credentials_are_used_and_never_shown() {
    if !have_tools("registry_credentials_are_used_and_never_shown") {
        return;
    }
    let registry = Registry::start_with_auth();
    let one = push_image(
        &registry,
        "test/private:1",
        "amd64",
        &[small_layer("private")],
    )
    .await;
    let (_dir, store) = new_store();

    let err = store
        .pull(&one.reference, None, &insecure(&registry))
        .await
        .expect_err("anonymous is refused");
    assert!(err.to_string().contains("needs credentials"), "{err}");

    let wrong = RegistryAuth {
        username: support::AUTH_USER.into(),
        password: "not-the-password".into(),
    };
    let err = store
        .pull(&one.reference, Some(&wrong), &insecure(&registry))
        .await
        .expect_err("wrong password");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("refused the credentials"), "{shown}");
    assert!(
        !shown.contains("not-the-password"),
        "the password never appears in errors: {shown}"
    );

    let right = RegistryAuth {
        username: support::AUTH_USER.into(),
        password: support::AUTH_PASSWORD.into(),
    };
    let image = store
        .pull(&one.reference, Some(&right), &insecure(&registry))
        .await
        .expect("pull with credentials");
    assert_eq!(image.manifest_digest, one.manifest_digest);
    let index = std::fs::read_to_string(store.root().join("images/index.json")).expect("index");
    assert!(
        !index.contains(support::AUTH_PASSWORD),
        "credentials are never written to disk"
    );
}
