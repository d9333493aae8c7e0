//! Test support for the agent's tests: [`is_root`], the one root check (a test that needs root
//! skips with a printed reason, or fails under `COMPOSE_FLEET_REQUIRE_ROOT=1`, as CI sets); and
//! for the image store, a real registry (Debian's `docker-registry`) on loopback and small test
//! images built from `/bin/busybox`, pushed with `oci-client`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// The test registry's user, password and its bcrypt hash (a fixture, not a secret).
pub const AUTH_USER: &str = "fleet";
pub const AUTH_PASSWORD: &str = "test-password";
const AUTH_BCRYPT: &str = "$2b$04$pk78afGG.YPiiIers/plGeOh5zTZ3mNsOcciwAr/JON/XLC1YnT72";

/// Set to 1, a test that needs root fails instead of skipping when not root.
pub const REQUIRE_ROOT: &str = "COMPOSE_FLEET_REQUIRE_ROOT";

/// A test cannot run here because of `reason`: prints `skipped: TEST: REASON` and returns, or,
/// when the variable `require` is `1`, fails the test. The line goes straight to stderr (not
/// through the test harness's capture) so that a skip is seen in every run.
pub fn skip(test: &str, require: &str, reason: &str) {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{test}: {reason}, and {require}=1 forbids skipping it");
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {test}: {reason} (set {require}=1 to make this a failure)"
    );
}

/// Whether we run as root; when not, the test skips (see [`skip`]) with `why` it needs root.
pub fn is_root(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, REQUIRE_ROOT, &format!("needs root ({why})"));
    false
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Prints the skip line and returns false when the test's tools are missing.
pub fn have_tools(test: &str) -> bool {
    for tool in [REGISTRY_BIN, BUSYBOX] {
        if !Path::new(tool).exists() {
            eprintln!("skipped: {test} needs {tool} (scripts/setup.sh installs it)");
            return false;
        }
    }
    true
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `docker-registry serve` child with filesystem storage in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`: the registry part of image references.
    pub addr: String,
    authenticated: bool,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with("")
    }

    /// A registry that requires HTTP basic auth as [`AUTH_USER`] / [`AUTH_PASSWORD`].
    pub fn start_with_auth() -> Registry {
        Registry::start_with(AUTH_USER)
    }

    fn start_with(auth_user: &str) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut auth = String::new();
        if !auth_user.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{auth_user}:{AUTH_BCRYPT}\n")).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            child,
            dir,
            addr,
            authenticated: !auth_user.is_empty(),
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                // 401 is ready too, when it requires auth.
                if reply.starts_with("HTTP/1.0 200")
                    || reply.starts_with("HTTP/1.1 200")
                    || reply.contains(" 401 ")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not answer on {}: {}",
            self.addr,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file holding a blob's bytes in the registry's filesystem storage.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    fn auth(&self) -> RegistryAuth {
        if self.authenticated {
            RegistryAuth::Basic(AUTH_USER.into(), AUTH_PASSWORD.into())
        } else {
            RegistryAuth::Anonymous
        }
    }

    /// A client that pushes to this registry over plain http.
    pub fn client(&self) -> Client {
        // The agent builds rustls with ring and no default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            ..ClientConfig::default()
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One layer: its blob (as pushed), media type and uncompressed digest.
#[derive(Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl Layer {
    pub fn digest(&self) -> String {
        sha256(&self.blob)
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// The base layer (gzip): busybox with a symlink and a hard link to it, a few files.
pub fn busybox_layer() -> Layer {
    let busybox = std::fs::read(BUSYBOX).expect("read /bin/busybox");
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "data/", "tmp/"] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            dir,
            std::io::empty(),
        )
        .expect("dir");
    }
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        &busybox[..],
    )
    .expect("busybox");
    b.append_link(
        &mut header(tar::EntryType::Symlink, 0o777, 0),
        "bin/sh",
        "busybox",
    )
    .expect("symlink");
    b.append_link(
        &mut header(tar::EntryType::Link, 0o755, 0),
        "bin/ls",
        "bin/busybox",
    )
    .expect("hard link");
    for (path, data) in [
        ("etc/motd", &b"hello from the base layer\n"[..]),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("data/a", b"a\n"),
        ("data/b", b"b\n"),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
            path,
            data,
        )
        .expect("file");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    Layer {
        blob: gz.finish().expect("gzip"),
        media_type: LAYER_GZIP,
        diff_id: sha256(&tar),
    }
}

/// The upper layer (plain tar): whites out `etc/motd`, makes `data/` opaque, adds files.
pub fn whiteout_layer() -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["etc/", "data/"] {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            dir,
            std::io::empty(),
        )
        .expect("dir");
    }
    for (path, data) in [
        ("etc/.wh.motd", &b""[..]),
        ("data/.wh..wh..opq", b""),
        ("data/c", b"c\n"),
        ("hello.txt", b"hello from the upper layer\n"),
    ] {
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
            path,
            data,
        )
        .expect("file");
    }
    let tar = b.into_inner().expect("tar");
    Layer {
        diff_id: sha256(&tar),
        blob: tar,
        media_type: LAYER_TAR,
    }
}

/// A one-file layer, distinct per `name` (for images that share nothing).
pub fn small_layer(name: &str) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    let data = format!("{name}\n");
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
        name,
        data.as_bytes(),
    )
    .expect("file");
    let tar = b.into_inner().expect("tar");
    Layer {
        diff_id: sha256(&tar),
        blob: tar,
        media_type: LAYER_TAR,
    }
}

pub fn config_json(arch: &str, layers: &[Layer]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["sh", "-c", "echo hi"],
            "Env": ["PATH=/bin", "GREETING=hi"],
            "WorkingDir": "/tmp",
            "User": "0:0",
            "ExposedPorts": {"8080/tcp": {}},
            "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000u64, "Retries": 3}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .expect("config json")
}

/// What a push produced.
pub struct Pushed {
    pub reference: String,
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub config_digest: String,
    pub config_size: usize,
}

/// Pushes an image (blobs, then its manifest under `repo_tag`).
pub async fn push_image(
    registry: &Registry,
    repo_tag: &str,
    arch: &str,
    layers: &[Layer],
) -> Pushed {
    let reference = registry.reference(repo_tag);
    let image: Reference = reference.parse().expect("reference");
    let client = registry.client();
    client
        .store_auth_if_needed(image.resolve_registry(), &registry.auth())
        .await;
    for layer in layers {
        client
            .push_blob(&image, layer.blob.clone(), &layer.digest())
            .await
            .expect("push layer");
    }
    let config = config_json(arch, layers);
    let config_digest = sha256(&config);
    client
        .push_blob(&image, config.clone(), &config_digest)
        .await
        .expect("push config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest(), "size": l.blob.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest json");
    client
        .push_manifest_raw(
            &image,
            manifest.clone(),
            OCI_MANIFEST.parse().expect("header"),
        )
        .await
        .expect("push manifest");
    Pushed {
        reference,
        manifest_digest: sha256(&manifest),
        manifest_size: manifest.len(),
        config_digest,
        config_size: config.len(),
    }
}

/// Pushes a manifest list under `repo_tag` with one entry per `(arch, pushed image)`.
pub async fn push_index(
    registry: &Registry,
    repo_tag: &str,
    entries: &[(&str, &Pushed)],
) -> String {
    let reference = registry.reference(repo_tag);
    let image: Reference = reference.parse().expect("reference");
    let client = registry.client();
    client
        .store_auth_if_needed(image.resolve_registry(), &registry.auth())
        .await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries.iter().map(|(arch, p)| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": p.manifest_digest, "size": p.manifest_size,
            "platform": {"architecture": arch, "os": "linux"}
        })).collect::<Vec<_>>(),
    }))
    .expect("index json");
    client
        .push_manifest_raw(&image, index.clone(), OCI_INDEX.parse().expect("header"))
        .await
        .expect("push index");
    sha256(&index)
}
