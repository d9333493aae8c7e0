//! Images from `build:` (issue 13), on a 3-host lab as root, offline: a compose app whose service
//! is built with Debian's `buildah` from a Dockerfile `FROM` the lab registry's httpd image (ARG,
//! RUN, COPY, a multi-stage `target` whose later stage would fail) is built on the "laptop" (the
//! root namespace), delivered by `up` over the agents' channel — no registry holds the built
//! layers — and answers. A second `up --build` with one file changed sends only that layer (and
//! the new config), to the one host that runs the service. Half a layer sent on a connection
//! that then closes is resumed by the next `up`, which sends only the rest. A blob corrupted in the local store
//! is refused by the agent and never unpacked: the old image keeps serving. An uncompressed
//! (`docker save`) layer travels gzip-compressed and is verified uncompressed; `push --registry`
//! puts an image in the lab registry that a host then pulls by digest; `delivery_figures`
//! (ignored) prints transfer figures.

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
    cli_with(lab, dir, args, &[])
}

/// [`cli`] with more environment variables.
fn cli_with(lab: &Lab, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let started = Instant::now();
    let out = lab
        .cli()
        .envs(env.iter().copied())
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
    delivered_lines(out)
        .into_iter()
        .map(|(host, n)| (host, n[0], n[1], n[2]))
        .collect()
}

/// The numbers of each `delivered` line: blobs, bytes sent, received, layers unpacked, bytes on
/// the wire, then the seconds.
fn delivered_lines(out: &Output) -> Vec<(String, Vec<u64>)> {
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
            (host, nums)
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
            encoding: None,
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

fn have_buildah(test: &str) -> bool {
    let ok = std::process::Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        crate::support::skip(
            test,
            "buildah",
            "buildah is not installed (scripts/setup.sh installs it)",
        );
    }
    ok
}

fn storage_conf(dir: &Path) {
    std::fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/containers\"\nrunroot = \"{0}/containers-run\"\n",
            dir.display()
        ),
    )
    .expect("write");
}

const PLAIN_COMPOSE: &str = r#"services:
  plain:
    build: ./plain
    command: ["/bin/busybox", "httpd", "-f", "-p", "8081", "-h", "/www"]
    ports: ["8081:8081"]
"#;

/// A legacy `docker save` image keeps its layer uncompressed: it travels gzip-compressed chunk by
/// chunk (far fewer bytes on the wire than the layer holds), the agent decompresses each chunk,
/// verifies the layer against its uncompressed digest and unpacks it, and the service answers.
#[test]
fn an_uncompressed_layer_travels_compressed_and_is_verified_uncompressed() {
    let test = "an_uncompressed_layer_travels_compressed";
    let Ok(busybox) = std::fs::read("/bin/busybox") else {
        crate::support::skip(test, "busybox-static", "/bin/busybox is missing");
        return;
    };
    let Some(lab) = Lab::up(test, 1) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("plain")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), PLAIN_COMPOSE).expect("write");
    // Never run: the recorded build below is what `up` delivers.
    std::fs::write(dir.join("plain/Dockerfile"), "FROM scratch\n").expect("write");
    storage_conf(dir);
    // 4 MB of text, as uncompressed layers mostly are: it compresses well.
    let text: String = (0..100_000)
        .map(|i| format!("line {i:>8} of a compressible file\n"))
        .collect();
    let archive = dir.join("save.tar");
    compose_fleet::build::store::write_docker_save_fixture(
        &archive,
        "plain:1",
        &[
            ("bin/busybox", &busybox),
            ("www/index.html", b"sent compressed, stored as it was\n"),
            ("www/big.txt", text.as_bytes()),
        ],
    )
    .expect("fixture");
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let (manifest, architecture) = store.import(&archive).expect("imports");
    let (_, parsed) = store.manifest(&manifest).expect("manifest");
    let layer = parsed.layers[0].clone();
    assert_eq!(layer.media_type, "application/vnd.oci.image.layer.v1.tar");
    store
        .record(
            "built",
            "plain",
            &compose_fleet::build::BuiltRef {
                manifest,
                architecture,
                ..Default::default()
            },
        )
        .expect("record");

    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let lines = delivered_lines(&out);
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    let (host, nums) = &lines[0];
    let (sent, received, wire) = (nums[1], nums[2], nums[4]);
    assert_eq!(
        sent,
        received,
        "the agent kept every byte: {}",
        describe(&out)
    );
    assert!(sent > layer.size, "the layer was sent: {}", describe(&out));
    assert!(
        wire * 2 < sent,
        "the uncompressed layer travels compressed ({wire} bytes on the wire for {sent})"
    );
    eprintln!(
        "measured: uncompressed layer {} bytes, {wire} on the wire",
        layer.size
    );
    // Progress, as CI sees it (stderr is not a terminal): a plain line per host and image.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{host}: sending 5.7 MB of localhost/built-plain@sha256:"
        )),
        "{}",
        describe(&out)
    );
    let url = format!("http://{}:8081/", lab.address(host));
    assert_eq!(
        get(&url, "sent compressed, stored as it was\n"),
        "sent compressed, stored as it was\n"
    );
    // On the host the blob is the uncompressed layer, under its own digest.
    let hex = &layer.digest["sha256:".len()..];
    let check = lab.ssh(
        host,
        &format!("sha256sum /var/lib/compose-fleet/images/blobs/sha256/{hex}"),
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).starts_with(hex),
        "{}",
        describe(&check)
    );
}

const BIG_COMPOSE: &str = r#"services:
  big:
    build:
      context: ./big
      args:
        BASE: ${HTTPD}
    command: ["httpd", "-f", "-p", "8082", "-h", "/www"]
    deploy:
      mode: global
"#;

/// Figures, not a check: a 100 MB random layer delivered to every host of a lab
/// (`COMPOSE_FLEET_BENCH_HOSTS`, default 3), cold, with the old one-chunk-at-a-time pace
/// (`COMPOSE_FLEET_DELIVERY_WINDOW=1`), with the default window (4) and with 8, paced by
/// `--max-upload-rate`, with the CLI's peak memory and an agent's; then after one changed small
/// file; then the registry path in the same run (`buildah push` to the lab registry, the hosts
/// pull). Run it alone: `cargo test --test it delivery_figures -- --ignored --nocapture`.
#[test]
#[ignore = "prints delivery figures; minutes of work"]
fn delivery_figures() {
    let test = "delivery_figures";
    if !have_buildah(test) {
        return;
    }
    let hosts = std::env::var("COMPOSE_FLEET_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let Some(lab) = Lab::up(test, hosts) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("big")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), BIG_COMPOSE).expect("write");
    std::fs::write(
        dir.join("big/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nCOPY random.bin /random.bin\nCOPY www /www\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.join("big/www")).expect("mkdir");
    std::fs::write(dir.join("big/www/index.html"), "v1\n").expect("write");
    let random = |seed: u64| {
        // xorshift: incompressible, no extra crate.
        let mut x = seed | 1;
        let mut bytes = Vec::with_capacity(100_000_000);
        while bytes.len() < 100_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes
    };
    std::fs::write(dir.join("big/random.bin"), random(1)).expect("write");
    storage_conf(dir);
    let show = |what: &str, out: &Output, took: f64| {
        assert!(out.status.success(), "{what} failed: {}", describe(out));
        let lines = delivered_lines(out);
        let bytes: u64 = lines.iter().map(|(_, n)| n[1]).sum();
        eprintln!(
            "figure: {what}: {} hosts, {bytes} bytes sent in all, `up` {took:.1}s",
            lines.len()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(rss) = stderr.lines().find(|l| l.contains("max RSS")) {
            eprintln!("{rss}");
        }
        for (host, n) in &lines {
            let secs = stderr
                .lines()
                .find(|l| l.starts_with(&format!("{host}: delivered ")))
                .and_then(|l| l.rsplit(" in ").next())
                .unwrap_or("?");
            eprintln!(
                "figure:   {host}: {} bytes, {} on the wire, delivered in {secs}",
                n[1], n[4]
            );
        }
    };
    let out = cli(&lab, dir, &["build"]);
    assert!(out.status.success(), "build failed: {}", describe(&out));
    for (what, window, rate) in [
        ("cold, window 1 (the old pace)", "1", None),
        ("cold, window 4 (the default)", "4", None),
        ("cold, window 8", "8", None),
        ("cold, --max-upload-rate 30M", "4", Some("30M")),
    ] {
        // Forget what the hosts hold: down removes the pods, and the images' blobs go with a gc.
        let _ = cli(&lab, dir, &["down"]);
        for host in lab.host_names() {
            lab.ssh(&host, "rm -rf /var/lib/compose-fleet/images/blobs/sha256/* /var/lib/compose-fleet/images/layers/* /var/lib/compose-fleet/images/images/index.json");
        }
        let started = Instant::now();
        let mut args = vec!["up"];
        if let Some(rate) = rate {
            args.extend(["--max-upload-rate", rate]);
        }
        let out = lab_cli_env(
            &lab,
            dir,
            &args,
            &[("COMPOSE_FLEET_DELIVERY_WINDOW", window)],
        );
        show(what, &out, started.elapsed().as_secs_f64());
        let hwm = lab.ssh(
            &lab.host(1),
            "grep VmHWM /proc/$(cat /run/compose-fleet/agent.pid)/status",
        );
        eprintln!(
            "figure:   {}'s agent daemon peak: {}",
            lab.host(1),
            String::from_utf8_lossy(&hwm.stdout).trim()
        );
    }
    std::fs::write(dir.join("big/www/index.html"), "v2\n").expect("write");
    let started = Instant::now();
    let out = cli(&lab, dir, &["up", "--build"]);
    show(
        "one changed small file",
        &out,
        started.elapsed().as_secs_f64(),
    );

    // The registry path: push a new 100 MB layer, then the hosts pull it.
    std::fs::write(dir.join("big/random.bin"), random(2)).expect("write");
    let image = format!("{}/bench/big:1", lab.registry());
    let conf = dir.join("storage.conf");
    let buildah = |args: &[&str]| {
        let out = std::process::Command::new("buildah")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(args)
            .output()
            .expect("runs buildah");
        assert!(out.status.success(), "buildah {args:?}: {}", describe(&out));
    };
    let httpd = lab.httpd_image();
    buildah(&[
        "bud",
        "--isolation",
        "chroot",
        "--tls-verify=false",
        "--layers",
        "--build-arg",
        &format!("BASE={httpd}"),
        "-t",
        &image,
        &dir.join("big").display().to_string(),
    ]);
    let started = Instant::now();
    buildah(&[
        "push",
        "--tls-verify=false",
        &image,
        &format!("docker://{image}"),
    ]);
    let push = started.elapsed().as_secs_f64();
    std::fs::write(
        dir.join("compose.yaml"),
        BIG_COMPOSE.replace(
            "    build:\n      context: ./big\n      args:\n        BASE: ${HTTPD}\n",
            &format!("    image: {image}\n"),
        ),
    )
    .expect("write");
    let started = Instant::now();
    let out = cli(&lab, dir, &["up"]);
    assert!(
        out.status.success(),
        "up from the registry failed: {}",
        describe(&out)
    );
    eprintln!(
        "figure: registry path: buildah push {push:.1}s, then `up` with {hosts} hosts pulling {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The CLI under `/usr/bin/time -f 'max RSS %M KiB'` (its last stderr line), with `env`.
fn lab_cli_env(lab: &Lab, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new("/usr/bin/time")
        .args(["-f", "figure:   the CLI's max RSS %M KiB"])
        .arg(crate::support::bin())
        .arg("-i")
        .arg(lab.inventory())
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .args(["-p", "built"])
        .args(args)
        .envs(env.iter().copied())
        .env("HTTPD", lab.httpd_image())
        .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .output()
        .expect("runs the CLI")
}

/// `push --registry` puts the built image in the lab registry over the distribution API (blobs
/// streamed, the manifest's exact bytes, digest verified); a host then pulls it by that digest
/// with no `build:` involved, and a second push finds every blob there already.
#[test]
fn pushed_images_are_pulled_by_digest_from_the_registry() {
    let test = "pushed_images_are_pulled_by_digest";
    if !have_buildah(test) {
        return;
    }
    let Some(lab) = Lab::up(test, 1) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("web")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write");
    std::fs::write(dir.join("web/Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join("web/index.html"), "pushed to a registry\n").expect("write");
    storage_conf(dir);
    let registry = format!("{}/pushed", lab.registry());
    let out = cli(&lab, dir, &["push", "--registry", &registry]);
    assert!(out.status.success(), "push failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reference = stdout
        .lines()
        .find_map(|l| l.strip_prefix("web\t"))
        .unwrap_or_else(|| panic!("push prints the pushed reference: {}", describe(&out)))
        .to_string();
    // No `image:`: the name is `<project>-<service>` under the prefix.
    assert!(
        reference.starts_with(&format!("{registry}/built-web@sha256:")),
        "{reference}"
    );
    // The registry holds the manifest under its digest, byte for byte.
    let (name, digest) = reference.split_once('@').expect("digest");
    let path = name.split_once('/').expect("path").1;
    let manifest = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{}/v2/{path}/manifests/{digest}", lab.registry()),
        ])
        .output()
        .expect("curl");
    assert!(manifest.status.success(), "{}", describe(&manifest));
    let actual = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest.stdout))
    );
    assert_eq!(actual, digest);

    // A second push sends nothing new.
    let out = cli(&lab, dir, &["push", "--registry", &registry]);
    assert!(out.status.success(), "push failed: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(0 blobs, 0 bytes;"),
        "{}",
        describe(&out)
    );

    // A host pulls it by digest: the service has only `image:`.
    std::fs::write(
        dir.join("compose.yaml"),
        format!("services:\n  web:\n    image: {reference}\n    ports: [\"8080:80\"]\n"),
    )
    .expect("write");
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(": delivered "),
        "nothing is delivered over the agent channel: {}",
        describe(&out)
    );
    let url = format!("http://{}:8080/", lab.address(&lab.host(1)));
    assert_eq!(
        get(&url, "pushed to a registry\n"),
        "pushed to a registry\n"
    );
}

/// `--max-upload-rate` reads rates as a user writes them, and refuses others before anything runs.
#[test]
fn max_upload_rate_is_parsed_and_a_bad_one_refused() {
    let out = std::process::Command::new(crate::support::bin())
        .args(["up", "--max-upload-rate", "10X", "--dry-run"])
        .output()
        .expect("runs the CLI");
    // The user's input: exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`10X` is not an upload rate") && stderr.contains("10M"),
        "{stderr}"
    );
    let help = std::process::Command::new(crate::support::bin())
        .args(["up", "--help"])
        .output()
        .expect("runs the CLI");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--max-upload-rate <RATE>"),
        "{}",
        describe(&help)
    );
}

/// Registry credentials in the inventory: `username` with `password_env`, `password_file` or
/// `password` (warned about: anyone who reads the file reads it), in our format and as
/// Ansible's `compose_fleet_registries`; half of a pair, or two passwords, is refused where it
/// is written. Nothing printed about the fleet shows a password.
#[test]
fn registry_credentials_in_the_inventory_are_read_and_checked() {
    use compose_fleet::inventory::{self, Password};
    let fleet = inventory::parse(
        "inventory.yaml",
        r#"
registries:
  "10.250.0.1:5000": { insecure: true, username: ci, password_env: LAB_REGISTRY_PASSWORD }
  "files.example": { username: f, password_file: /run/secrets/registry }
  "plain.example": { username: p, password: hunter2 }
hosts:
  h1: { address: 10.0.0.1 }
"#,
    )
    .unwrap_or_else(|e| panic!("parses: {}", e.render()));
    let lab = &fleet.registries["10.250.0.1:5000"];
    assert!(lab.insecure);
    assert_eq!(lab.username.as_deref(), Some("ci"));
    assert_eq!(
        lab.password,
        Some(Password::Env("LAB_REGISTRY_PASSWORD".into()))
    );
    assert_eq!(
        fleet.registries["files.example"].password,
        Some(Password::File("/run/secrets/registry".into()))
    );
    assert!(
        fleet
            .warnings
            .iter()
            .any(|w| w
                .contains("registry `plain.example`: the password is written in the inventory")),
        "{:?}",
        fleet.warnings
    );
    assert!(!format!("{fleet:?} {:?}", fleet.warnings).contains("hunter2"));

    for (text, want) in [
        (r#"{ username: u }"#, "has a `username` but no password"),
        (
            r#"{ username: u, password_env: A, password_file: /b }"#,
            "has more than one password",
        ),
        (r#"{ passwd: x }"#, "unknown key `passwd`"),
        // On the line of a written password: its position, but the line is not quoted.
        (
            r#"{ username: u, password: s3cret, password_env: A }"#,
            "has more than one password (at inventory.yaml:2:",
        ),
    ] {
        let err = inventory::parse(
            "inventory.yaml",
            &format!(
                "registries:\n  \"r.example\": {text}\nhosts:\n  h1: {{ address: 10.0.0.1 }}\n"
            ),
        )
        .map(|f| format!("{f:?}"))
        .expect_err(text);
        let rendered = err.render();
        assert!(
            rendered.contains(want) && rendered.contains("inventory.yaml:2:"),
            "{text}: {rendered}"
        );
        assert!(!rendered.contains("s3cret"), "{rendered}");
    }

    let fleet = inventory::parse(
        "hosts.yml",
        r#"
all:
  vars:
    compose_fleet_registries:
      "r.example:5000": { username: deploy, password_env: R_PASSWORD, insecure: true }
  hosts:
    h1: { ansible_host: 10.0.0.1 }
    h2: { ansible_host: 10.0.0.2 }
"#,
    )
    .unwrap_or_else(|e| panic!("parses: {}", e.render()));
    let r = &fleet.registries["r.example:5000"];
    assert!(r.insecure);
    assert_eq!(r.username.as_deref(), Some("deploy"));
    assert_eq!(r.password, Some(Password::Env("R_PASSWORD".into())));
    // A host that sees other registries is refused; a written password is warned about once,
    // and neither message quotes it.
    let err = inventory::parse(
        "hosts.yml",
        "all:\n  vars:\n    compose_fleet_registries: { \"r\": { username: u, password: s3cret } }\n  hosts:\n    h1:\n    h2:\n    h3: { compose_fleet_registries: {} }\n",
    )
    .map(|f| format!("{f:?}"))
    .expect_err("h3 differs");
    let rendered = err.render();
    assert!(
        rendered.contains("see different `compose_fleet_registries`"),
        "{rendered}"
    );
    assert_eq!(
        rendered
            .matches("the password is written in the inventory")
            .count(),
        1,
        "{rendered}"
    );
    assert!(!rendered.contains("s3cret"), "{rendered}");
    let err = inventory::parse(
        "hosts.yml",
        "all:\n  hosts:\n    h1:\n      compose_fleet_registries: { \"r\": { username: u } }\n",
    )
    .map(|f| format!("{f:?}"))
    .expect_err("half a pair");
    assert!(
        err.render().contains("needs both `username` and one of"),
        "{}",
        err.render()
    );
}

/// Rewrites the lab's inventory with `edit` (the lab writes one flow mapping per host and one
/// `registries:` line).
fn edit_inventory(lab: &Lab, edit: impl Fn(&str) -> String) {
    let path = lab.inventory();
    let text = std::fs::read_to_string(&path).expect("the lab's inventory");
    std::fs::write(&path, edit(&text)).expect("rewrite the inventory");
}

fn blob_count(lab: &Lab, host: &str) -> usize {
    let out = lab.ssh(
        host,
        "ls /var/lib/compose-fleet/images/blobs/sha256 2>/dev/null | wc -l",
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", describe(&out)))
}

/// A host the inventory declares `aarch64` while the builder here produces only amd64 (no
/// qemu-user handler is registered): `up` of a service that would run there is refused before
/// anything is sent to any host, naming the host and its architecture; a service pinned to
/// `platform: linux/arm64` is refused before it is even built.
#[test]
fn a_host_of_an_architecture_the_builder_cannot_produce_is_refused_before_any_transfer() {
    let test = "a_host_of_an_architecture_the_builder_cannot_produce";
    if !have_buildah(test) {
        return;
    }
    let can = compose_fleet::build::platform::capability(compose_fleet::build::Builder::Buildah);
    if can.can("arm64") {
        crate::support::skip(
            test,
            "no arm64 emulator",
            "this machine can build for arm64 (a qemu-user handler is registered), so nothing is refused",
        );
        return;
    }
    let Some(lab) = Lab::up(test, 2) else {
        return;
    };
    let pi = lab.host(2);
    edit_inventory(&lab, |text| {
        text.replace(
            &format!("  {pi}: {{ "),
            &format!("  {pi}: {{ arch: aarch64, "),
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("web")).expect("mkdir");
    std::fs::write(dir.join("web/Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join("web/index.html"), "never sent\n").expect("write");
    storage_conf(dir);
    // On every host: the aarch64 one included.
    std::fs::write(
        dir.join("compose.yaml"),
        COMPOSE.replace(
            "    ports: [\"8080:80\"]\n",
            "    ports: [\"8080:80\"]\n    deploy: { mode: global }\n",
        ),
    )
    .expect("write");
    let before: Vec<usize> = lab
        .host_names()
        .iter()
        .map(|h| blob_count(&lab, h))
        .collect();
    let out = cli(&lab, dir, &["up"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "service `web` was built for amd64, but host `{pi}` is aarch64 (the inventory says so)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert!(
        !stderr.contains(&format!("host `{}`", lab.host(1))),
        "the amd64 host is not named: {stderr}"
    );
    assert!(deliveries(&out).is_empty(), "{stderr}");
    let after: Vec<usize> = lab
        .host_names()
        .iter()
        .map(|h| blob_count(&lab, h))
        .collect();
    assert_eq!(before, after, "no blob reached any host");
    // Pinned to amd64, the service goes to the amd64 host alone, at once: the refusal released
    // the deploy lock (a lease left behind would refuse this `up` for its 30 s).
    std::fs::write(
        dir.join("compose.yaml"),
        COMPOSE.replace(
            "    ports: [\"8080:80\"]\n",
            "    ports: [\"8080:80\"]\n    platform: linux/amd64\n",
        ),
    )
    .expect("write");
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "{}", describe(&out));
    let delivered = deliveries(&out);
    assert_eq!(delivered.len(), 1, "{}", describe(&out));
    assert_eq!(delivered[0].0, lab.host(1));
    assert_eq!(
        blob_count(&lab, &pi),
        before[1],
        "nothing reached the aarch64 host"
    );

    // Pinned to arm64: refused before the builder runs.
    std::fs::write(
        dir.join("compose.yaml"),
        COMPOSE.replace(
            "    ports: [\"8080:80\"]\n",
            "    ports: [\"8080:80\"]\n    platform: linux/arm64\n",
        ),
    )
    .expect("write");
    let out = cli(&lab, dir, &["up", "--build"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "service `web` is to be built for linux/arm64, but buildah here cannot build for arm64"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("STEP 1"), "buildah never ran: {stderr}");
    assert_eq!(blob_count(&lab, &pi), before[1]);
}

/// The pids of the `ssh -M` masters connected to `address`.
fn ssh_masters(address: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        if args.first().is_some_and(|a| a.ends_with(b"ssh"))
            && args.contains(&b"-M".as_slice())
            && args.last() == Some(&address.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// The SSH connection of an `up` is killed while a layer is half delivered: the same `up`
/// reconnects (a fresh session and agent handshake), resumes the layer at the offset the host
/// holds, and completes — the host received the image's bytes about once, not twice.
#[test]
fn a_connection_cut_mid_blob_is_reopened_and_the_same_up_completes() {
    let test = "a_connection_cut_mid_blob_is_reopened";
    if !have_buildah(test) {
        return;
    }
    let Some(lab) = Lab::up(test, 1) else {
        return;
    };
    let host = lab.host(1);
    let address = lab.address(&host);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("web/www")).expect("mkdir");
    std::fs::write(
        dir.join("web/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nCOPY random.bin /random.bin\nCOPY www /www\n",
    )
    .expect("write");
    std::fs::write(dir.join("web/www/index.html"), "delivered despite a cut\n").expect("write");
    // 8 MB that does not compress: at 2 MB/s it takes seconds, time to cut it.
    let mut x = 7u64;
    let mut random = Vec::with_capacity(8 << 20);
    while random.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(dir.join("web/random.bin"), &random).expect("write");
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  web:\n    build:\n      context: ./web\n      args:\n        BASE: ${HTTPD}\n    command: [\"httpd\", \"-f\", \"-p\", \"8083\", \"-h\", \"/www\"]\n    ports: [\"8083:8083\"]\n",
    )
    .expect("write");
    storage_conf(dir);
    let out = cli(&lab, dir, &["build"]);
    assert!(out.status.success(), "build failed: {}", describe(&out));
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("built", "web").expect("recorded");
    let (_, manifest) = store.manifest(&built.manifest).expect("manifest");
    let image_bytes: u64 = manifest.blobs().map(|b| b.size).sum();
    let big = manifest
        .layers
        .iter()
        .max_by_key(|l| l.size)
        .expect("layers")
        .clone();
    let partial = format!(
        "/var/lib/compose-fleet/images/blobs/sha256/{}.partial",
        &big.digest["sha256:".len()..]
    );

    let child = lab
        .cli()
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .args(["-p", "built", "up", "--max-upload-rate", "2M"])
        .env("HTTPD", lab.httpd_image())
        .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs the CLI");
    // Wait for the big layer to be partly there, then kill the connection under it.
    let mut cut_at = None;
    for _ in 0..300 {
        let size = lab.ssh(
            &host,
            &format!("stat -c %s {partial} 2>/dev/null || echo 0"),
        );
        let size: u64 = String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if size >= 2 << 20 {
            let masters = ssh_masters(&address);
            assert_eq!(
                masters.len(),
                1,
                "one master connection to {address}: {masters:?}"
            );
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &masters[0].to_string()])
                .status()
                .expect("kill");
            assert!(killed.success());
            cut_at = Some(size);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("the CLI ends");
    let cut_at =
        cut_at.unwrap_or_else(|| panic!("the layer never got half way: {}", describe(&out)));
    assert!(
        out.status.success(),
        "the same up completes: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the channel dropped while delivering")
            && stderr.contains("after reconnecting once"),
        "{stderr}"
    );
    let lines = delivered_lines(&out);
    assert_eq!(lines.len(), 1, "{stderr}");
    let (_, n) = &lines[0];
    let (sent, received) = (n[1], n[2]);
    // What the host kept was sent once; at most the chunks in flight when the cut came are sent
    // again (a window of 4 chunks of 1 MiB).
    assert_eq!(sent, image_bytes, "{stderr}");
    assert!(
        received >= image_bytes && received <= image_bytes + (4 << 20),
        "the host received {received} bytes for an image of {image_bytes}: {stderr}"
    );
    eprintln!(
        "measured: image {image_bytes} bytes, cut at {cut_at} bytes of the {} byte layer; the host received {received} bytes in all",
        big.size
    );
    let url = format!("http://{address}:8083/");
    assert_eq!(
        get(&url, "delivered despite a cut\n"),
        "delivered despite a cut\n"
    );
    // And the run left no lease behind: the next `up` has nothing to do.
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// A second lab registry that asks for basic auth (htpasswd, bcrypt), stopped when dropped.
struct AuthRegistry {
    child: std::process::Child,
    addr: String,
}

impl AuthRegistry {
    /// Listens on the lab registry's address, port 5077, for `user`:`password`; `None` (the
    /// reason printed) when a bcrypt hash cannot be made here.
    fn start(
        test: &str,
        lab: &Lab,
        dir: &Path,
        user: &str,
        password: &str,
    ) -> Option<AuthRegistry> {
        let hash = std::process::Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                password,
            ])
            .output()
            .ok()
            .filter(|o| o.status.success() && o.stdout.starts_with(b"$2"));
        let Some(hash) = hash else {
            crate::support::skip(
                test,
                "python3 crypt",
                "cannot make a bcrypt hash for htpasswd here",
            );
            return None;
        };
        let ip = lab
            .registry()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let addr = format!("{ip}:5077");
        std::fs::write(
            dir.join("htpasswd"),
            format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim()),
        )
        .expect("write");
        std::fs::write(
            dir.join("auth-registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {0}/auth-registry\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: lab\n    path: {0}/htpasswd\n",
                dir.display()
            ),
        )
        .expect("write");
        let child = std::process::Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("auth-registry.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("auth-registry.log")).expect("log"))
            .spawn()
            .expect("starts docker-registry");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(AuthRegistry { child, addr })
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process whose command line holds `needle`.
fn argv_holding(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

/// Credentials from the inventory (`username` + `password_env`) for a registry that asks for
/// basic auth: `push --registry` uploads with them, a host pulls with them — and the password is
/// in no process's argv while that runs, in no output (`--json` included) and in no file of the
/// agent on the host. A password the inventory names but the environment lacks is refused
/// naming the variable.
#[test]
fn inventory_registry_credentials_push_and_pull_without_showing_the_password() {
    let test = "inventory_registry_credentials";
    if !have_buildah(test) {
        return;
    }
    let Some(lab) = Lab::up(test, 1) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    const PASSWORD: &str = "pw-9f2c-not-for-argv";
    let Some(registry) = AuthRegistry::start(test, &lab, dir, "ci", PASSWORD) else {
        return;
    };
    let anonymous = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/v2/", registry.addr))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&anonymous.stdout),
        "401",
        "the registry asks for credentials"
    );
    edit_inventory(&lab, |text| {
        text.replace(
            "{ insecure: true } }",
            &format!(
                "{{ insecure: true }}, \"{}\": {{ insecure: true, username: ci, password_env: CF_TEST_REGISTRY_PASSWORD }} }}",
                registry.addr
            ),
        )
    });
    std::fs::create_dir_all(dir.join("web")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write");
    std::fs::write(dir.join("web/Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join("web/index.html"), "pulled with credentials\n").expect("write");
    storage_conf(dir);
    let prefix = format!("{}/authed", registry.addr);

    let out = cli(&lab, dir, &["push", "--registry", &prefix]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`CF_TEST_REGISTRY_PASSWORD`"),
        "{}",
        describe(&out)
    );

    let with_password = |args: &[&str]| {
        let mut cmd = lab.cli();
        cmd.arg("-f")
            .arg(dir.join("compose.yaml"))
            .args(["-p", "built"])
            .args(args)
            .env("HTTPD", lab.httpd_image())
            .env("GREETING", "hi")
            .env("CF_TEST_REGISTRY_PASSWORD", PASSWORD)
            .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
            .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().expect("runs the CLI");
        // Watch every process's argv (the CLI, its ssh, the agent's) while it runs.
        let mut seen = Vec::new();
        let mut saw_ssh = false;
        let pid = child.id();
        let host_address = lab.address(&lab.host(1));
        while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
        {
            seen.extend(argv_holding(PASSWORD));
            saw_ssh |= args.contains(&"up") && !ssh_masters(&host_address).is_empty();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("the CLI ends");
        assert!(
            saw_ssh || !args.contains(&"up"),
            "the scan saw the run's ssh connection (it looked while things ran)"
        );
        // This test's own argv-scanning never names the password; only a leak would.
        seen.retain(|a| !a.contains("python3"));
        assert!(seen.is_empty(), "the password was in argv: {seen:?}");
        out
    };
    let out = with_password(&["push", "--registry", &prefix]);
    assert!(out.status.success(), "push failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let reference = stdout
        .lines()
        .find_map(|l| l.strip_prefix("web\t"))
        .unwrap_or_else(|| panic!("push prints the pushed reference: {}", describe(&out)))
        .to_string();
    assert!(
        reference.starts_with(&format!("{prefix}/built-web@sha256:")),
        "{reference}"
    );
    assert!(!describe(&out).contains(PASSWORD));

    // A host pulls it with the inventory's credentials: the service has only `image:`.
    std::fs::write(
        dir.join("compose.yaml"),
        format!("services:\n  web:\n    image: {reference}\n    ports: [\"8080:80\"]\n"),
    )
    .expect("write");
    let out = with_password(&["up", "--json"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    assert!(!describe(&out).contains(PASSWORD), "{}", describe(&out));
    let url = format!("http://{}:8080/", lab.address(&lab.host(1)));
    assert_eq!(
        get(&url, "pulled with credentials\n"),
        "pulled with credentials\n"
    );
    let on_host = lab.ssh(
        &lab.host(1),
        &format!("grep -rls -- '{PASSWORD}' /var/lib/compose-fleet /run/compose-fleet /var/log 2>/dev/null; echo end"),
    );
    assert_eq!(
        String::from_utf8_lossy(&on_host.stdout).trim(),
        "end",
        "no file on the host holds the password"
    );

    // `push: registry` in the inventory: `up` builds, pushes with the inventory's credentials,
    // and the host pulls with them; nothing goes over the agent's blob channel.
    let via = format!("{}/viaup", registry.addr);
    edit_inventory(&lab, |text| {
        format!("build: {{ push: registry, registry: \"{via}\" }}\n{text}")
    });
    std::fs::write(dir.join("compose.yaml"), COMPOSE).expect("write");
    std::fs::write(dir.join("web/index.html"), "built, pushed, pulled\n").expect("write");
    let out = with_password(&["up", "--build"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains(&format!("service `web`: pushed {via}/built-web@sha256:")),
        "{}",
        describe(&out)
    );
    assert!(delivered_lines(&out).is_empty(), "{}", describe(&out));
    assert!(!describe(&out).contains(PASSWORD), "{}", describe(&out));
    assert_eq!(
        get(&url, "built, pushed, pulled\n"),
        "built, pushed, pulled\n"
    );
}

/// The files of a built image's layers (path → content), read from the local store.
fn image_files(store: &compose_fleet::build::LocalStore, manifest: &str) -> Vec<(String, Vec<u8>)> {
    use std::io::Read as _;
    let (_, m) = store.manifest(manifest).expect("manifest");
    let mut files = Vec::new();
    for layer in &m.layers {
        let bytes = std::fs::read(store.blob_path(&layer.digest).expect("path")).expect("read");
        let reader: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().expect("a tar layer") {
            let mut entry = entry.expect("an entry");
            let path = entry.path().expect("path").display().to_string();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).expect("read");
            files.push((path, body));
        }
    }
    files
}

/// `build.secrets` (one from a file, one from the environment), `build.additional_contexts`,
/// `dockerfile_inline` and an explicit `build.platforms` of this machine's platform are honoured
/// by buildah, for real: a `RUN` step mounts both secrets, `COPY --from` reads the extra context —
/// and neither secret ends up in the image. No lab: `compose-fleet build` alone.
#[test]
fn build_secrets_and_additional_contexts_reach_buildah() {
    let test = "build_secrets_and_additional_contexts";
    if !crate::support::is_root(test, "buildah builds with chroot isolation") || !have_buildah(test)
    {
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        crate::support::skip(test, "busybox-static", "/bin/busybox is missing");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("app")).expect("mkdir");
    std::fs::create_dir_all(dir.join("assets")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("app/busybox")).expect("copy busybox");
    std::fs::write(dir.join("assets/hello.txt"), "from the extra context\n").expect("write");
    std::fs::write(dir.join("npmrc"), "file-secret-5d1e").expect("write");
    // The Dockerfile is inline: no file in the context.
    std::fs::write(
        dir.join("compose.yaml"),
        r#"services:
  app:
    build:
      context: ./app
      dockerfile_inline: |
        FROM scratch
        COPY busybox /bin/busybox
        RUN --mount=type=secret,id=npmrc --mount=type=secret,id=api_token ["/bin/busybox", "sh", "-c", "/bin/busybox cat /run/secrets/npmrc /run/secrets/api_token | /bin/busybox sha256sum > /secrets.sha"]
        COPY --from=assets hello.txt /hello.txt
      platforms: ["linux/amd64"]
      secrets: [npmrc, { source: token, target: api_token }]
      additional_contexts:
        assets: ./assets
secrets:
  npmrc:
    file: ./npmrc
  token:
    environment: CF_TEST_BUILD_TOKEN
"#,
    )
    .expect("write");
    storage_conf(dir);
    if std::env::consts::ARCH != "x86_64" {
        crate::support::skip(test, "x86_64", "the compose file asks for linux/amd64");
        return;
    }
    let out = std::process::Command::new(crate::support::bin())
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .args(["-p", "secrets", "build"])
        .env("CF_TEST_BUILD_TOKEN", "env-secret-77ab")
        .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .output()
        .expect("runs the CLI");
    assert!(out.status.success(), "build failed: {}", describe(&out));
    assert!(
        !describe(&out).contains("env-secret-77ab"),
        "{}",
        describe(&out)
    );
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("secrets", "app").expect("recorded");
    assert_eq!(built.architecture, "amd64");
    let files = image_files(&store, &built.manifest);
    let file = |name: &str| {
        files
            .iter()
            .rev()
            .find(|(p, _)| p.trim_start_matches("./") == name)
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| panic!("{name} is in the image"))
    };
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"file-secret-5d1eenv-secret-77ab",
    ));
    assert!(
        file("secrets.sha").starts_with(&want),
        "both secrets were mounted"
    );
    assert_eq!(file("hello.txt"), "from the extra context\n");
    for (path, body) in &files {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("env-secret-77ab") && !text.contains("file-secret-5d1e"),
            "a secret is in the image at {path}"
        );
    }
}

/// A fleet of two architectures (the inventory says the second host is aarch64): the service is
/// built once per platform (`FROM scratch` + `COPY`, which needs no emulator, so
/// `COMPOSE_FLEET_BUILD_ARCHES` says arm64 can be built), recorded as an OCI index, and each host
/// is delivered its own architecture's image — the content each host serves says which.
/// `push --registry` then puts the index and both images in the registry.
#[test]
fn each_host_gets_the_image_built_for_its_architecture() {
    let test = "each_host_gets_the_image_built_for_its_architecture";
    if !have_buildah(test) {
        return;
    }
    if !Path::new("/bin/busybox").exists() || std::env::consts::ARCH != "x86_64" {
        crate::support::skip(
            test,
            "busybox-static on x86_64",
            "needs /bin/busybox of an x86_64 machine",
        );
        return;
    }
    let Some(lab) = Lab::up(test, 2) else {
        return;
    };
    let (amd, arm) = (lab.host(1), lab.host(2));
    edit_inventory(&lab, |text| {
        text.replace(
            &format!("  {arm}: {{ "),
            &format!("  {arm}: {{ arch: aarch64, "),
        )
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("app/www-amd64")).expect("mkdir");
    std::fs::create_dir_all(dir.join("app/www-arm64")).expect("mkdir");
    std::fs::copy("/bin/busybox", dir.join("app/busybox")).expect("copy");
    std::fs::write(dir.join("app/www-amd64/index.html"), "amd64\n").expect("write");
    std::fs::write(dir.join("app/www-arm64/index.html"), "arm64\n").expect("write");
    // No RUN: the (x86) busybox is only copied, so the lab's x86 hosts run both variants, and
    // what each serves tells which it got.
    std::fs::write(
        dir.join("app/Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY busybox /bin/busybox\nCOPY www-${TARGETARCH} /www\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("compose.yaml"),
        "services:\n  app:\n    build: ./app\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8084\", \"-h\", \"/www\"]\n    ports: [\"8084:8084\"]\n    deploy: { mode: global }\n",
    )
    .expect("write");
    storage_conf(dir);
    let env = [("COMPOSE_FLEET_BUILD_ARCHES", "amd64,arm64")];
    let out = cli_with(&lab, dir, &["up"], &env);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("built", "app").expect("recorded");
    let arches: Vec<&str> = built
        .variants
        .iter()
        .map(|v| v.architecture.as_str())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"], "{built:?}");
    let delivered = deliveries(&out);
    assert_eq!(delivered.len(), 2, "{}", describe(&out));
    for (host, want) in [(&amd, "amd64\n"), (&arm, "arm64\n")] {
        let url = format!("http://{}:8084/", lab.address(host));
        assert_eq!(
            get(&url, want),
            want,
            "{host} serves its architecture's image"
        );
    }
    // Each host recorded the index's reference as its own platform's manifest.
    let index = lab.ssh(&arm, "cat /var/lib/compose-fleet/images/images/index.json");
    let arm_manifest = built.manifest_for("arm64").expect("arm64");
    assert!(
        String::from_utf8_lossy(&index.stdout).contains(arm_manifest),
        "{}",
        describe(&index)
    );

    // The registry gets the index and both images.
    let registry = format!("{}/multi", lab.registry());
    let out = cli_with(&lab, dir, &["push", "--registry", &registry], &env);
    assert!(out.status.success(), "push failed: {}", describe(&out));
    let path = format!("multi/built-app/manifests/{}", built.manifest);
    let got = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json",
        ])
        .arg(format!("http://{}/v2/{path}", lab.registry()))
        .output()
        .expect("curl");
    assert!(got.status.success(), "{}", describe(&got));
    let index: serde_json::Value = serde_json::from_slice(&got.stdout).expect("an index");
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    assert_eq!(listed, ["amd64", "arm64"], "{index}");
}

/// `build: { push: registry }` in the inventory: `up` builds the service, pushes it to the lab
/// registry (only what the registry lacks) and the pod specs name the registry's reference by
/// digest, so each host's agent pulls it from there — nothing goes over the agents' blob channel.
/// `plan` says where the image goes; a no-op `up` neither pushes nor asks the registry.
#[test]
fn push_registry_in_the_inventory_sends_built_images_through_the_registry() {
    let test = "push_registry_in_the_inventory";
    if !have_buildah(test) {
        return;
    }
    let Some(lab) = Lab::up(test, 2) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("web")).expect("mkdir");
    std::fs::write(
        dir.join("compose.yaml"),
        format!("{COMPOSE}    deploy:\n      mode: global\n"),
    )
    .expect("write");
    std::fs::write(dir.join("web/Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join("web/index.html"), "through the registry\n").expect("write");
    storage_conf(dir);
    let prefix = format!("{}/fleet", lab.registry());
    edit_inventory(&lab, |text| {
        format!("build: {{ push: registry, registry: \"{prefix}\" }}\n{text}")
    });

    // `plan` says where the image goes.
    let out = cli(&lab, dir, &["plan"]);
    assert!(out.status.success(), "plan failed: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "service `web`: built here, pushed to {prefix}/built-web:latest; its hosts pull it from there"
        )),
        "{}",
        describe(&out)
    );

    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pushed = stderr
        .lines()
        .find(|l| l.starts_with("service `web`: pushed "))
        .unwrap_or_else(|| panic!("up pushes the built image: {}", describe(&out)));
    // `service `web`: pushed HOST/fleet/built-web@sha256:… to …`
    let reference = pushed
        .split_whitespace()
        .nth(3)
        .expect("the reference")
        .to_string();
    assert!(
        reference.starts_with(&format!("{prefix}/built-web@sha256:")),
        "{reference}"
    );
    // No blob went over the agents' channel: no delivery, no per-host transfer line.
    assert!(
        delivered_lines(&out).is_empty() && !stderr.contains(": sending "),
        "nothing is delivered over SSH: {}",
        describe(&out)
    );
    // The registry holds the manifest under that digest.
    let (name, digest) = reference.split_once('@').expect("digest");
    let path = name.split_once('/').expect("path").1;
    let manifest = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{}/v2/{path}/manifests/{digest}", lab.registry()),
        ])
        .output()
        .expect("curl");
    assert!(manifest.status.success(), "{}", describe(&manifest));
    // Every host runs it, pulled from the registry by that digest.
    for host in lab.host_names() {
        let url = format!("http://{}:8080/", lab.address(&host));
        assert_eq!(
            get(&url, "through the registry\n"),
            "through the registry\n",
            "{host}"
        );
    }
    // Each agent recorded the image under the registry's name, as for any pull.
    for host in lab.host_names() {
        let index = lab.ssh(&host, "cat /var/lib/compose-fleet/images/images/index.json");
        assert!(
            String::from_utf8_lossy(&index.stdout).contains(&format!("{path}@{digest}")),
            "{host} pulled {reference}: {}",
            describe(&index)
        );
    }

    // Nothing changed: no push, no question to the registry.
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("service `web`: pushed") && !stderr.contains("has it already"),
        "a no-op up pushes nothing: {}",
        describe(&out)
    );

    // The pods gone, the same image: the registry has it, so nothing is pushed.
    let out = cli(&lab, dir, &["down"]);
    assert!(out.status.success(), "down failed: {}", describe(&out));
    let out = cli(&lab, dir, &["up"]);
    assert!(out.status.success(), "up failed: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "service `web`: {prefix}/built-web:latest has it already"
        )),
        "{}",
        describe(&out)
    );

    // One file changed: only its layer and the new config go to the registry.
    std::fs::write(dir.join("web/index.html"), "through the registry, v2\n").expect("write");
    let out = cli(&lab, dir, &["up", "--build"]);
    assert!(
        out.status.success(),
        "up --build failed: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pushed = stderr
        .lines()
        .find(|l| l.starts_with("service `web`: pushed "))
        .unwrap_or_else(|| panic!("the new image is pushed: {}", describe(&out)));
    assert!(
        pushed.contains("(2 blobs,") && pushed.contains("; 2 blobs were there already)"),
        "the COPY layer and the config only: {pushed}"
    );
    assert!(delivered_lines(&out).is_empty(), "{}", describe(&out));
    for host in lab.host_names() {
        let url = format!("http://{}:8080/", lab.address(&host));
        assert_eq!(
            get(&url, "through the registry, v2\n"),
            "through the registry, v2\n",
            "{host}"
        );
    }

    // Only an identity token for the registry (docker's `identitytoken`): the hosts could not
    // pull with it, so `up` refuses before pushing, naming the registry and what to do; `push`
    // tries to exchange it and says the registry has no token endpoint. Never a user `<token>`.
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).expect("mkdir");
    std::fs::write(
        docker.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"identitytoken\": \"refresh-7c1\"}}}}}}",
            lab.registry()
        ),
    )
    .expect("write");
    let docker_config = docker.display().to_string();
    std::fs::write(dir.join("web/index.html"), "v3\n").expect("write");
    let out = cli_with(
        &lab,
        dir,
        &["up", "--build"],
        &[("DOCKER_CONFIG", &docker_config)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("registry `{}`", lab.registry()))
            && stderr.contains("identity token")
            && stderr.contains("`push: registry` would push there")
            && !stderr.contains("service `web`: pushed")
            && !stderr.contains("refresh-7c1"),
        "{}",
        describe(&out)
    );
    let out = cli_with(&lab, dir, &["push"], &[("DOCKER_CONFIG", &docker_config)]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names no token endpoint") && !stderr.contains("refresh-7c1"),
        "{}",
        describe(&out)
    );
}

/// Figures, not a check: the CLI's max RSS and the agent daemon's peak (VmHWM) while `up`
/// delivers one layer larger than 1 GB (1.1 GB of random bytes, so gzip cannot shrink it) to a
/// lab host: blobs stream, so neither should grow with the layer. Needs about 4.5 GB of free
/// disk at its peak (the build context, buildah's storage, the export and the local store; then
/// the host's blob and unpacked layer); everything is deleted afterwards. Run it alone:
/// `cargo test --test it big_layer_memory_figures -- --ignored --nocapture`.
#[test]
#[ignore = "prints memory figures; needs ~4.5 GB of disk and minutes"]
fn big_layer_memory_figures() {
    use std::io::Write as _;
    let test = "big_layer_memory_figures";
    if !have_buildah(test) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let free = |path: &Path| {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    if free(dir) < 8_000_000_000 || free(Path::new("/var/lib")) < 8_000_000_000 {
        crate::support::skip(test, "disk", "less than 8 GB free (it needs ~4.5 GB)");
        return;
    }
    let Some(lab) = Lab::up(test, 1) else {
        return;
    };
    const SIZE: u64 = 1_100_000_000;
    std::fs::create_dir_all(dir.join("big/www")).expect("mkdir");
    std::fs::write(dir.join("compose.yaml"), BIG_COMPOSE).expect("write");
    std::fs::write(
        dir.join("big/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nCOPY random.bin /random.bin\nCOPY www /www\n",
    )
    .expect("write");
    std::fs::write(dir.join("big/www/index.html"), "big\n").expect("write");
    {
        // xorshift, written 8 MiB at a time: incompressible, never all in memory.
        let file = std::fs::File::create(dir.join("big/random.bin")).expect("create");
        let mut file = std::io::BufWriter::new(file);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = Vec::with_capacity(8 << 20);
        let mut written = 0u64;
        while written < SIZE {
            buf.clear();
            while buf.len() < (8 << 20) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            let n = (SIZE - written).min(buf.len() as u64) as usize;
            file.write_all(&buf[..n]).expect("write");
            written += n as u64;
        }
        file.flush().expect("flush");
    }
    storage_conf(dir);
    let out = cli(&lab, dir, &["build"]);
    assert!(out.status.success(), "build failed: {}", describe(&out));
    // Only the local store's copy is needed from here on.
    let _ = std::fs::remove_file(dir.join("big/random.bin"));
    let _ = std::process::Command::new("buildah")
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .args(["rm", "--all"])
        .output();
    let _ = std::process::Command::new("buildah")
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .args(["rmi", "--all", "--force"])
        .output();
    let _ = std::fs::remove_dir_all(dir.join("containers"));
    let started = Instant::now();
    let out = lab_cli_env(&lab, dir, &["up"], &[]);
    let took = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "up failed: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (host, n) in delivered_lines(&out) {
        eprintln!(
            "figure: a {SIZE}-byte layer to {host}: {} bytes sent, {} on the wire, `up` {took:.1}s",
            n[1], n[4]
        );
    }
    if let Some(rss) = stderr.lines().find(|l| l.contains("max RSS")) {
        eprintln!("{rss}");
    }
    let hwm = lab.ssh(
        &lab.host(1),
        "grep VmHWM /proc/$(cat /run/compose-fleet/agent.pid)/status",
    );
    eprintln!(
        "figure:   {}'s agent daemon peak: {}",
        lab.host(1),
        String::from_utf8_lossy(&hwm.stdout).trim()
    );
    // Give the disk back: the pods, then the host's blobs and layers (the lab goes with `lab`).
    let _ = cli(&lab, dir, &["down"]);
    lab.ssh(
        &lab.host(1),
        "rm -rf /var/lib/compose-fleet/images/blobs/sha256/* /var/lib/compose-fleet/images/layers/*",
    );
}

/// A git URL as the build context (`context: git://HOST/REPO.git#BRANCH`): buildah clones the
/// branch and builds it, offline — `git daemon` serves a repository made here on loopback. The
/// image holds the branch's file, not the default branch's. No lab: `compose-fleet build` alone.
#[test]
fn a_git_url_build_context_is_cloned_and_built_at_its_branch() {
    let test = "a_git_url_build_context";
    if !crate::support::is_root(test, "buildah builds with chroot isolation") || !have_buildah(test)
    {
        return;
    }
    let git_ok = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !git_ok {
        crate::support::skip(test, "git", "git is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let repo = dir.join("git/app.git");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .output()
            .expect("runs git");
        assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("Dockerfile"),
        "FROM scratch\nCOPY index.html /index.html\n",
    )
    .expect("write");
    std::fs::write(repo.join("index.html"), "from main\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "-qm", "main"]);
    git(&["checkout", "-qb", "release"]);
    std::fs::write(repo.join("index.html"), "from the release branch\n").expect("write");
    git(&["commit", "-qam", "release"]);
    git(&["checkout", "-q", "main"]);
    // A free loopback port for `git daemon`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut daemon = std::process::Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", dir.join("git").display()),
        ])
        .arg(dir.join("git"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runs git daemon");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::write(
        dir.join("compose.yaml"),
        format!(
            "services:\n  web:\n    build:\n      context: \"git://127.0.0.1:{port}/app.git#release\"\n"
        ),
    )
    .expect("write");
    storage_conf(dir);
    let out = std::process::Command::new(crate::support::bin())
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .args(["-p", "fromgit", "build"])
        .env("COMPOSE_FLEET_IMAGE_DIR", dir.join("store"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .output()
        .expect("runs the CLI");
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(out.status.success(), "build failed: {}", describe(&out));
    let store = compose_fleet::build::LocalStore::open(dir.join("store")).expect("store");
    let built = store.built("fromgit", "web").expect("recorded");
    let files = image_files(&store, &built.manifest);
    let index = files
        .iter()
        .rev()
        .find(|(p, _)| p.trim_start_matches("./") == "index.html")
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned());
    assert_eq!(index.as_deref(), Some("from the release branch\n"));
}
