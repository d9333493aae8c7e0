//! Images from `build:` (issue 13), on a 3-host lab as root, offline: a compose app whose service
//! is built with Debian's `buildah` from a Dockerfile `FROM` the lab registry's httpd image (ARG,
//! RUN, COPY, a multi-stage `target` whose later stage would fail) is built on the "laptop" (the
//! root namespace), delivered by `up` over the agents' channel — no registry holds the built
//! layers — and answers. A second `up --build` with one file changed sends only that layer (and
//! the new config), to the one host that runs the service. Half a layer sent on a connection
//! that then closes is resumed by the next `up`, which sends only the rest. A blob corrupted in the local store
//! is refused by the agent and never unpacked: the old image keeps serving.

use std::path::Path;
use std::process::Output;
use std::time::Instant;

use crate::support::{describe, Lab};

const DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE} AS base
ARG GREETING=unset
RUN mkdir -p /www && echo "$GREETING" > /www/greeting.txt

FROM base AS final
COPY index.html /www/index.html

# Never built: `target: final` stops before it.
FROM final AS broken
RUN exit 1
"#;

const COMPOSE: &str = r#"services:
  web:
    build:
      context: ./web
      target: final
      args:
        BASE: ${HTTPD}
        GREETING:
    ports: ["8080:80"]
"#;

fn cli(lab: &Lab, dir: &Path, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = lab
        .cli()
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .args(["-p", "built"])
        .args(args)
        .env("HTTPD", lab.httpd_image())
        .env("GREETING", "hello from an ARG")
        .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
        // buildah's own storage, private to this test (vfs: works wherever the test runs).
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .output()
        .expect("runs the CLI");
    eprintln!(
        "timing: {} took {:.2}s\n{}",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.contains("delivered"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    out
}

/// The `delivered` lines of `up`: (host, blobs sent, bytes sent, bytes the agent received).
fn deliveries(out: &Output) -> Vec<(String, u64, u64, u64)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(": delivered "))
        .map(|l| {
            let host = l.split(':').next().unwrap_or_default().to_string();
            let inner = l.split('(').nth(1).unwrap_or_default();
            let nums: Vec<u64> = inner
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect();
            (host, nums[0], nums[1], nums[2])
        })
        .collect()
}

fn get(url: &str, want: &str) -> String {
    let mut body = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("curl")
            .args(["-fsS", "--max-time", "2", url])
            .output()
            .expect("runs curl");
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && body == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    body
}

#[test]
fn built_images_are_delivered_without_a_registry_and_only_changed_layers_are_sent_again() {
    if std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        crate::support::skip(
            "built_images_are_delivered",
            "buildah",
            "buildah is not installed (scripts/setup.sh installs it)",
        );
        return;
    }
    let Some(lab) = Lab::up("built_images_are_delivered", 3) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("web")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write");
    std::fs::write(dir.join("web/Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join("web/index.html"), "built on the laptop, v1\n").expect("write");
    std::fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/containers\"\nrunroot = \"{0}/containers-run\"\n",
            dir.display()
        ),
    )
    .expect("write");

    // 1. `up` builds what was never built, delivers it to the host that runs `web`, runs it.
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let first = deliveries(&out);
    assert_eq!(first.len(), 1, "one host runs web: {}", describe(&out));
    let (web_host, blobs, sent, received) = first[0].clone();
    // The config, the registry's busybox layer, the RUN layer and the COPY layer.
    assert_eq!(blobs, 4, "{}", describe(&out));
    assert_eq!(sent, received, "the agent counted what we sent");
    let url = format!("http://{}:8080/", lab.address(&web_host));
    assert_eq!(
        get(&url, "built on the laptop, v1\n"),
        "built on the laptop, v1\n"
    );
    assert_eq!(
        get(&format!("{url}greeting.txt"), "hello from an ARG\n"),
        "hello from an ARG\n"
    );

    // 2. One file changed: only its layer (and the config naming it) travels.
    std::fs::write(dir.join("web/index.html"), "built on the laptop, v2\n").expect("write");
    let out = cli(&lab, dir, &["up", "--build"]);
    assert!(
        out.status.success(),
        "up --build failed: {}",
        describe(&out)
    );
    let second = deliveries(&out);
    assert_eq!(second.len(), 1, "{}", describe(&out));
    let (host2, blobs2, sent2, received2) = second[0].clone();
    assert_eq!(host2, web_host, "web stays on its host");
    assert_eq!(
        blobs2,
        2,
        "config + the changed COPY layer: {}",
        describe(&out)
    );
    assert_eq!(sent2, received2);
    assert!(
        sent2 * 10 < sent,
        "the second delivery ({sent2} bytes) should be a small part of the first ({sent})"
    );
    eprintln!("measured: first delivery {sent} bytes in 4 blobs, after one changed file {sent2} bytes in 2 blobs");
    assert_eq!(
        get(&url, "built on the laptop, v2\n"),
        "built on the laptop, v2\n"
    );

    // 3. A transfer cut mid-blob resumes: half a layer sent on a connection that then closes,
    // and the next `up` sends only the rest.
    std::fs::write(dir.join("web/index.html"), "built on the laptop, v3\n").expect("write");
    let out = cli(&lab, dir, &["build", "web"]);
    assert!(out.status.success(), "build failed: {}", describe(&out));
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("built", "web").expect("recorded");
    let (_, manifest) = store.manifest(&built.manifest).expect("manifest");
    let top = manifest.layers.last().expect("layers").clone();
    let bytes = std::fs::read(store.blob_path(&top.digest).expect("path")).expect("read");
    let half = bytes.len() / 2;
    let fleet = compose_fleet::inventory::load(&lab.inventory()).expect("lab inventory");
    let target = compose_fleet::ssh::SshTarget::all(&fleet)
        .into_iter()
        .find(|t| t.name == web_host)
        .expect("the web host's target");
    let agent = compose_fleet::ssh::AgentBinary::locate(None).expect("the agent binary");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reply = runtime.block_on(crate::support::rpc(
        &target,
        &agent,
        compose_fleet::proto::Request::BlobChunk(compose_fleet::proto::BlobChunk {
            digest: top.digest.clone(),
            size: top.size,
            offset: 0,
            data_b64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                &bytes[..half],
            ),
        }),
    ));
    assert!(
        matches!(
            crate::support::last_ok(&reply),
            compose_fleet::proto::Response::BlobChunk { offset, complete: false, .. } if offset == half as u64
        ),
        "{reply:?}"
    );
    let out = cli(&lab, dir, &["up"]);
    assert!(
        out.status.success(),
        "up after a cut failed: {}",
        describe(&out)
    );
    let third = deliveries(&out);
    assert_eq!(third.len(), 1, "{}", describe(&out));
    let (_, blobs3, sent3, received3) = third[0];
    assert_eq!(blobs3, 2, "{}", describe(&out));
    assert_eq!(
        sent3,
        manifest.config.size + top.size - half as u64,
        "only the rest of the cut layer was sent"
    );
    assert_eq!(received3, manifest.config.size + top.size);
    assert_eq!(
        get(&url, "built on the laptop, v3\n"),
        "built on the laptop, v3\n"
    );

    // 4. A corrupted blob is refused by the agent and never unpacked.
    std::fs::write(dir.join("web/index.html"), "built on the laptop, v4\n").expect("write");
    let out = cli(&lab, dir, &["build", "web"]);
    assert!(out.status.success(), "build failed: {}", describe(&out));
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("built", "web").expect("recorded");
    let (_, manifest) = store.manifest(&built.manifest).expect("manifest");
    let top = manifest.layers.last().expect("layers").digest.clone();
    let path = store.blob_path(&top).expect("path");
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt");
    let out = cli(&lab, dir, &["up"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&top) && stderr.contains("failed verification"),
        "the refusal names the blob: {stderr}"
    );
    let hex = &top["sha256:".len()..];
    let check = lab.ssh(
        &web_host,
        &format!("ls /var/lib/compose-fleet/images/blobs/sha256/{hex}* 2>/dev/null; echo end"),
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "end",
        "neither the blob nor a partial file stayed"
    );
    assert_eq!(
        get(&url, "built on the laptop, v3\n"),
        "built on the laptop, v3\n"
    );
}
