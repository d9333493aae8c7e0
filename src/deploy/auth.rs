//! Registry credentials from the inventory (`registries: { HOST: { username, password_env |
//! password_file | password } }`), which win for their registry, else from the user's docker
//! config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): `auths` entries (`auth` =
//! base64 of `user:password`, or `username` and `password`), and credential helpers
//! (`credHelpers` per registry, `credsStore` for the rest) run as `docker-credential-NAME get`
//! with the server on stdin, as docker runs them.
//!
//! An identity token (a helper answering `Username: "<token>"`, or an `auths` entry's
//! `identitytoken`) is an OAuth2 refresh token for the registry's token endpoint, never a user
//! name and password: a push exchanges it for a push token ([`exchange_identity_token`]); the
//! hosts' agents pull with basic credentials only, so for their pulls it is a warning saying to
//! give the registry's credentials in the inventory.
//!
//! The credentials travel only inside the protocol (`registry_auth` of `ApplyPods` and `Pull`),
//! never in argv, never printed: [`RegistryAuth`]'s `Debug` redacts the password, and errors
//! here name the registry and the helper, never what they returned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::Value;

use crate::inventory::{Password, Registry};
use crate::proto::RegistryAuth;

/// The registry of an image reference as docker reads it: the first path component when it has a
/// `.` or a `:` or is `localhost`, else Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize(first)
        }
        _ => "docker.io".to_string(),
    }
}

/// A config key (`https://index.docker.io/v1/`, `registry:5000`, `https://r.example/`) as the
/// registry host the agent looks credentials up by.
fn normalize(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        h => h.to_string(),
    }
}

/// How docker names a registry to a credential helper.
fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    }
}

/// Runs a credential helper: `(helper, server)` → `(username, secret)`.
pub type Helper<'a> = &'a dyn Fn(&str, &str) -> Result<(String, String), String>;

/// What a docker config gives: basic credentials and identity tokens by registry, and
/// warnings (naming the registry, never a secret).
#[derive(Debug, Default)]
pub struct DockerCredentials {
    pub basic: BTreeMap<String, RegistryAuth>,
    /// Identity tokens (OAuth2 refresh tokens) by registry.
    pub tokens: BTreeMap<String, IdentityToken>,
    pub warnings: Vec<String>,
}

/// An OAuth2 refresh token for a registry's token endpoint; its `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityToken(pub String);

impl std::fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityToken(<redacted>)")
    }
}

/// The credentials for `registries` from a docker config's text; what could not be had is a
/// warning (naming the registry, never a secret).
pub fn from_config(
    config: &str,
    registries: &BTreeSet<String>,
    helper: Helper<'_>,
) -> DockerCredentials {
    let mut found = DockerCredentials::default();
    let Ok(json) = serde_json::from_str::<Value>(config) else {
        found
            .warnings
            .push("the docker config is not JSON; no registry credentials are sent".into());
        return found;
    };
    let (out, tokens, warnings) = (&mut found.basic, &mut found.tokens, &mut found.warnings);
    let auths: BTreeMap<String, &Value> = json
        .get("auths")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (normalize(k), v)).collect())
        .unwrap_or_default();
    let helpers: BTreeMap<String, String> = json
        .get("credHelpers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((normalize(k), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let store = json.get("credsStore").and_then(Value::as_str);
    for registry in registries {
        // docker's order: a helper for this registry, the store, then a stored `auth`.
        let helper_name = helpers.get(registry).map(String::as_str).or(store);
        if let Some(name) = helper_name {
            match helper(name, &helper_server(registry)) {
                // docker's convention: the secret is an identity token, not a password.
                Ok((username, secret)) if username == "<token>" => {
                    tokens.insert(registry.clone(), IdentityToken(secret));
                    continue;
                }
                Ok((username, password)) => {
                    out.insert(registry.clone(), RegistryAuth { username, password });
                    continue;
                }
                // "credentials not found" for a registry the helper does not know is normal.
                Err(why) if why.contains("not found") => {}
                Err(why) => warnings.push(format!(
                    "registry `{registry}`: credential helper `docker-credential-{name}` failed: {why}"
                )),
            }
        }
        let Some(entry) = auths.get(registry) else {
            continue;
        };
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            tokens.insert(registry.clone(), IdentityToken(token.to_string()));
            continue;
        }
        let pair = if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
            base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                })
        } else {
            match (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
                _ => None,
            }
        };
        match pair {
            Some((username, password)) => {
                out.insert(registry.clone(), RegistryAuth { username, password });
            }
            // An entry with neither (docker writes `{}` when a helper holds the secret).
            None if entry.as_object().is_some_and(|o| o.is_empty()) => {}
            None => warnings.push(format!(
                "registry `{registry}`: its `auths` entry in the docker config is not `user:password` in base64; pulls from it go without credentials"
            )),
        }
    }
    found
}

/// The docker config's path: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Runs `docker-credential-NAME get` with `server` on stdin; its JSON's `Username` and `Secret`.
fn run_helper(name: &str, server: &str) -> Result<(String, String), String> {
    run_helper_on(name, server, None)
}

/// [`run_helper`], looking the helper up on `path` instead of `$PATH` when given.
fn run_helper_on(
    name: &str,
    server: &str,
    path: Option<&std::ffi::OsStr>,
) -> Result<(String, String), String> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!("`{name}` is not a helper name"));
    }
    let program = format!("docker-credential-{name}");
    let mut command = Command::new(&program);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        // Helpers print "credentials not found in native keychain" on stdout or stderr.
        let said = String::from_utf8_lossy(if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        })
        .trim()
        .chars()
        .take(200)
        .collect::<String>();
        return Err(said);
    }
    let json: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| format!("{program} did not print JSON"))?;
    match (
        json.get("Username").and_then(Value::as_str),
        json.get("Secret").and_then(Value::as_str),
    ) {
        (Some(u), Some(s)) => Ok((u.to_string(), s.to_string())),
        _ => Err(format!("{program} printed no Username and Secret")),
    }
}

/// The inventory's credentials for the registries in `wanted`: `env` reads an environment
/// variable, `read` a file. A password that cannot be had is an error naming the registry and
/// where the password was to come from (never the password).
pub fn from_inventory(
    registries: &BTreeMap<String, Registry>,
    wanted: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<BTreeMap<String, RegistryAuth>, String> {
    let mut out = BTreeMap::new();
    for (key, reg) in registries {
        let registry = normalize(key);
        if !wanted.contains(&registry) {
            continue;
        }
        let (Some(username), Some(password)) = (&reg.username, &reg.password) else {
            continue;
        };
        let password = match password {
            Password::Inline(p) => p.clone(),
            Password::Env(name) => env(name).filter(|p| !p.is_empty()).ok_or_else(|| {
                format!(
                    "registry `{key}`: its password is to come from the environment variable `{name}` (`password_env` in the inventory), which is not set\nhint: export {name}, or remove the registry's credentials from the inventory"
                )
            })?,
            Password::File(path) => {
                let path = expand_home(path);
                let text = read(&path).map_err(|e| {
                    format!(
                        "registry `{key}`: cannot read its password from {} (`password_file` in the inventory): {e}",
                        path.display()
                    )
                })?;
                // One line, as `docker login --password-stdin` takes it.
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.is_empty() {
                    return Err(format!(
                        "registry `{key}`: {} (`password_file` in the inventory) is empty",
                        path.display()
                    ));
                }
                text.to_string()
            }
        };
        out.insert(
            registry,
            RegistryAuth {
                username: username.clone(),
                password,
            },
        );
    }
    Ok(out)
}

/// `~/x` as the user means it.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// The credentials for the registries of `images`: the inventory's for the registries it gives
/// credentials for, the user's docker config's for the others (none, without a warning, when
/// there is no config). Returns them with warnings; an inventory password that cannot be read is
/// an error.
pub fn for_images<'a>(
    images: impl Iterator<Item = &'a str>,
    inventory: &BTreeMap<String, Registry>,
) -> Result<(BTreeMap<String, RegistryAuth>, Vec<String>), String> {
    let registries: BTreeSet<String> = images.map(registry_of).collect();
    for_registries(&registries, inventory)
}

/// [`for_images`] for registries named directly (`HOST[:PORT]`).
pub fn for_registries(
    registries: &BTreeSet<String>,
    inventory: &BTreeMap<String, Registry>,
) -> Result<(BTreeMap<String, RegistryAuth>, Vec<String>), String> {
    let registries: BTreeSet<String> = registries.iter().map(|r| normalize(r)).collect();
    let mut auth = from_inventory(
        inventory,
        &registries,
        &|name| std::env::var(name).ok(),
        &|p| std::fs::read_to_string(p),
    )?;
    let rest: BTreeSet<String> = registries
        .into_iter()
        .filter(|r| !auth.contains_key(r))
        .collect();
    if rest.is_empty() {
        return Ok((auth, Vec::new()));
    }
    let Some(text) = config_path().and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok((auth, Vec::new()));
    };
    let docker = from_config(&text, &rest, &run_helper);
    let mut warnings = docker.warnings;
    for registry in docker.tokens.keys() {
        warnings.push(format!(
            "registry `{registry}`: the docker config holds an identity token for it (an OAuth2 refresh token), which the hosts cannot pull with; pulls from it go without credentials\nhint: give the hosts a user name and password for it in the inventory: `registries: {{ \"{registry}\": {{ username: NAME, password_env: VARIABLE }} }}`"
        ));
    }
    auth.extend(docker.basic);
    Ok((auth, warnings))
}

/// The credentials to push to one registry with.
#[derive(Debug)]
pub enum PushAuth {
    Anonymous,
    Basic(RegistryAuth),
    IdentityToken(IdentityToken),
}

/// The credentials to push to `registry` (`HOST[:PORT]`): the inventory's, else the docker
/// config's basic credentials or identity token; with warnings.
pub fn for_push(
    registry: &str,
    inventory: &BTreeMap<String, Registry>,
) -> Result<(PushAuth, Vec<String>), String> {
    let registry = normalize(registry);
    let wanted: BTreeSet<String> = [registry.clone()].into();
    let mut auth = from_inventory(inventory, &wanted, &|name| std::env::var(name).ok(), &|p| {
        std::fs::read_to_string(p)
    })?;
    if let Some(a) = auth.remove(&registry) {
        return Ok((PushAuth::Basic(a), Vec::new()));
    }
    let Some(text) = config_path().and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Ok((PushAuth::Anonymous, Vec::new()));
    };
    let mut docker = from_config(&text, &wanted, &run_helper);
    Ok(if let Some(token) = docker.tokens.remove(&registry) {
        (PushAuth::IdentityToken(token), docker.warnings)
    } else if let Some(a) = docker.basic.remove(&registry) {
        (PushAuth::Basic(a), docker.warnings)
    } else {
        (PushAuth::Anonymous, docker.warnings)
    })
}

/// A `WWW-Authenticate: Bearer realm="…",service="…"` challenge's realm and service. Pure.
pub fn bearer_challenge(header: &str) -> Option<(String, Option<String>)> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((realm?, service))
}

/// Whether an identity token may be sent to the token endpoint `realm` the registry named: it is
/// a long-lived secret, so over https, or over plain http only for a registry the inventory marks
/// insecure (which is itself spoken to over http).
fn may_send_token_to(realm: &str, insecure: bool) -> bool {
    realm.starts_with("https://") || (insecure && realm.starts_with("http://"))
}

/// The most a token endpoint's answer may hold (its tokens are a few KiB).
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// Exchanges an identity token for a token that may push to and pull from `repository` of
/// `registry`, at the token endpoint the registry's `/v2/` challenge names (OAuth2
/// `grant_type=refresh_token`, as docker does). Errors name the registry, never the token.
pub async fn exchange_identity_token(
    registry: &str,
    repository: &str,
    insecure: bool,
    token: &IdentityToken,
) -> Result<String, String> {
    let scheme = if insecure { "http" } else { "https" };
    let fail = |what: &str| {
        format!(
            "registry `{registry}`: the docker config holds an identity token for it, and {what}\nhint: run `docker login {registry}` again, or give its credentials in the inventory's `registries:` (`username`, `password_env`)"
        )
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| fail(&format!("no HTTP client could be made: {e}")))?;
    let probe = http
        .get(format!("{scheme}://{registry}/v2/"))
        .send()
        .await
        .map_err(|e| fail(&format!("asking it how to authenticate failed: {e}")))?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge);
    let Some((realm, service)) = challenge else {
        return Err(fail(
            "it names no token endpoint (an identity token is only for registries with token authentication)",
        ));
    };
    if !may_send_token_to(&realm, insecure) {
        return Err(fail(&format!(
            "its token endpoint {realm} is not https; the identity token is not sent there"
        )));
    }
    let scope = format!("repository:{repository}:pull,push");
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token.0.as_str()),
        ("client_id", "compose-fleet"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = &service {
        form.push(("service", service.as_str()));
    }
    let mut answer = http.post(&realm).form(&form).send().await.map_err(|e| {
        fail(&format!(
            "its token endpoint {realm} could not be reached: {e}"
        ))
    })?;
    let status = answer.status();
    if !status.is_success() {
        return Err(fail(&format!(
            "its token endpoint {realm} refused it ({status})"
        )));
    }
    // Bounded before it is read: a token answer is a few KiB.
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| {
        fail(&format!(
            "reading its token endpoint {realm}'s answer failed: {e}"
        ))
    })? {
        if bytes.len() + chunk.len() > MAX_TOKEN_ANSWER {
            return Err(fail(&format!(
                "its token endpoint {realm} answered more than {MAX_TOKEN_ANSWER} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| fail(&format!("its token endpoint {realm} answered no JSON: {e}")))?;
    body.get("access_token")
        .or_else(|| body.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| fail(&format!("its token endpoint {realm} gave no access token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn images_name_their_registry_as_docker_does() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(
            registry_of("10.250.0.1:5000/lab/httpd:latest"),
            "10.250.0.1:5000"
        );
        assert_eq!(registry_of("ghcr.io/o/i@sha256:ab"), "ghcr.io");
        assert_eq!(registry_of("localhost/i"), "localhost");
    }

    #[test]
    fn auths_helpers_and_the_store_give_credentials_in_docker_order() {
        // `dXNlcjpodW50ZXIy` is `user:hunter2`.
        let config = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "dXNlcjpodW50ZXIy"},
                "r.example:5000": {"username": "u2", "password": "p2"},
                "ghcr.io": {},
                "bad.example": {"auth": "%%%"}
            },
            "credHelpers": {"ghcr.io": "gh"},
            "credsStore": "desktop"
        }"#;
        let helper = |name: &str, server: &str| -> Result<(String, String), String> {
            match (name, server) {
                ("gh", "ghcr.io") => Ok(("gh-user".into(), "gh-secret".into())),
                ("desktop", _) => Err("credentials not found in native keychain".into()),
                _ => Err("unexpected".into()),
            }
        };
        let DockerCredentials {
            basic: auths,
            warnings,
            ..
        } = from_config(
            config,
            &set(&[
                "docker.io",
                "r.example:5000",
                "ghcr.io",
                "bad.example",
                "none.example",
            ]),
            &helper,
        );
        assert_eq!(auths["docker.io"].username, "user");
        assert_eq!(auths["docker.io"].password, "hunter2");
        assert_eq!(auths["r.example:5000"].password, "p2");
        assert_eq!(auths["ghcr.io"].password, "gh-secret");
        assert!(!auths.contains_key("bad.example") && !auths.contains_key("none.example"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("bad.example"), "{warnings:?}");
        // Nothing secret in what may be printed.
        let printed = format!("{auths:?} {warnings:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("gh-secret"),
            "{printed}"
        );
    }

    #[test]
    fn inventory_credentials_come_from_the_environment_a_file_or_the_text() {
        let reg = |user: &str, password: Password| Registry {
            insecure: false,
            username: Some(user.into()),
            password: Some(password),
        };
        let inventory: BTreeMap<String, Registry> = [
            (
                "r.example:5000".to_string(),
                reg("env-user", Password::Env("REG_PW".into())),
            ),
            (
                "https://files.example/".to_string(),
                reg("file-user", Password::File("/secrets/pw".into())),
            ),
            (
                "inline.example".to_string(),
                reg("inline-user", Password::Inline("in-line".into())),
            ),
            (
                "unused.example".to_string(),
                reg("u", Password::Env("UNSET".into())),
            ),
        ]
        .into();
        let env = |name: &str| (name == "REG_PW").then(|| "from-env".to_string());
        let read = |p: &Path| {
            if p == Path::new("/secrets/pw") {
                Ok("from-file\n".to_string())
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        };
        let wanted = set(&[
            "r.example:5000",
            "files.example",
            "inline.example",
            "docker.io",
        ]);
        let auth = from_inventory(&inventory, &wanted, &env, &read).expect("credentials");
        assert_eq!(auth["r.example:5000"].password, "from-env");
        assert_eq!(auth["files.example"].username, "file-user");
        assert_eq!(
            auth["files.example"].password, "from-file",
            "the newline is dropped"
        );
        assert_eq!(auth["inline.example"].password, "in-line");
        assert!(!auth.contains_key("unused.example"), "not needed, not read");
        // A needed password that is not there names the variable, and no secret is printed.
        let err =
            from_inventory(&inventory, &set(&["unused.example"]), &env, &read).expect_err("unset");
        assert!(
            err.contains("`UNSET`") && err.contains("`unused.example`"),
            "{err}"
        );
        let printed = format!("{auth:?} {inventory:?}");
        assert!(
            !printed.contains("from-env")
                && !printed.contains("from-file")
                && !printed.contains("in-line"),
            "{printed}"
        );
    }

    #[test]
    fn an_identity_token_goes_over_http_only_to_an_insecure_registry() {
        assert!(may_send_token_to("https://auth.example.org/token", false));
        assert!(!may_send_token_to("http://auth.example.org/token", false));
        assert!(may_send_token_to("http://10.250.0.1:5001/token", true));
        assert!(!may_send_token_to("ftp://auth.example.org/token", true));
        assert!(!may_send_token_to("auth.example.org/token", false));
    }

    #[test]
    fn identity_tokens_from_a_helper_or_the_config_are_never_a_user_name() {
        // A real helper, run as docker runs it: an executable `docker-credential-NAME` on PATH.
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("docker-credential-fake");
        std::fs::write(
            &script,
            "#!/bin/sh\nread server\nif [ \"$server\" = tok.example ]; then\n  printf '{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"refresh-123\"}' \"$server\"\nelse\n  printf '{\"Username\":\"u\",\"Secret\":\"p\"}'\nfi\n",
        )
        .expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = std::ffi::OsString::from(format!("{}:/usr/bin:/bin", dir.path().display()));
        let helper = |name: &str, server: &str| run_helper_on(name, server, Some(&path));
        let config = r#"{
            "auths": {"cfg.example": {"auth": "", "identitytoken": "refresh-456"}},
            "credHelpers": {"tok.example": "fake", "basic.example": "fake"}
        }"#;
        let found = from_config(
            config,
            &set(&["tok.example", "basic.example", "cfg.example"]),
            &helper,
        );
        assert_eq!(
            found.tokens.get("tok.example"),
            Some(&IdentityToken("refresh-123".into()))
        );
        assert_eq!(
            found.tokens.get("cfg.example"),
            Some(&IdentityToken("refresh-456".into()))
        );
        assert!(
            !found.basic.contains_key("tok.example") && !found.basic.contains_key("cfg.example"),
            "`<token>` is never sent as a user name: {found:?}"
        );
        assert_eq!(found.basic["basic.example"].username, "u");
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        assert!(!format!("{found:?}").contains("refresh-"), "{found:?}");
    }

    #[test]
    fn bearer_challenges_name_the_token_endpoint() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="x""#
            ),
            Some((
                "https://auth.example/token".into(),
                Some("registry.example".into())
            ))
        );
        assert_eq!(
            bearer_challenge("bearer realm=https://a/t"),
            Some(("https://a/t".into(), None))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="Registry Realm""#), None);
        assert_eq!(bearer_challenge("Bearer service=\"x\""), None);
    }

    /// A token endpoint on loopback that answers one `/v2/` probe and one token request, and
    /// records the request bodies.
    async fn token_endpoint(grant: &'static str) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let realm = format!("http://{addr}/token");
        let task = tokio::spawn(async move {
            let realm = realm;
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                // Headers, then the body its Content-Length says.
                loop {
                    let r = sock.read(&mut buf[n..]).await.expect("read");
                    n += r;
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if n >= end + 4 + len || r == 0 {
                            seen.push(text);
                            break;
                        }
                    }
                    if r == 0 {
                        break;
                    }
                }
                let request = seen.last().cloned().unwrap_or_default();
                let response = if request.starts_with("GET /v2/") {
                    format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                } else if request.contains(grant) {
                    let body = r#"{"access_token":"push-token","expires_in":300}"#;
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                sock.write_all(response.as_bytes()).await.expect("write");
                let _ = sock.shutdown().await;
            }
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_identity_token_is_exchanged_at_the_token_endpoint_for_a_push_token() {
        let (addr, server) = token_endpoint("refresh_token=refresh-123").await;
        let token = exchange_identity_token(
            &addr,
            "team/web",
            true,
            &IdentityToken("refresh-123".into()),
        )
        .await
        .expect("exchanged");
        assert_eq!(token, "push-token");
        let seen = server.await.expect("server");
        let post = &seen[1];
        assert!(post.starts_with("POST /token"), "{post}");
        for field in [
            "grant_type=refresh_token",
            "scope=repository%3Ateam%2Fweb%3Apull%2Cpush",
            "service=fake",
        ] {
            assert!(post.contains(field), "{field} in {post}");
        }
        assert!(
            !post.to_ascii_lowercase().contains("authorization: basic"),
            "the token is no password: {post}"
        );
        // A refused token names the registry and what to do, never the token.
        let (addr, _server) = token_endpoint("refresh_token=something-else").await;
        let err = exchange_identity_token(&addr, "team/web", true, &IdentityToken("stale".into()))
            .await
            .expect_err("refused");
        assert!(err.contains(&addr) && err.contains("docker login"), "{err}");
        assert!(!err.contains("stale"), "{err}");
    }

    #[test]
    fn a_failing_helper_is_a_warning_without_its_output_secret() {
        let helper =
            |_: &str, _: &str| -> Result<(String, String), String> { Err("exit status 1".into()) };
        let DockerCredentials {
            basic: auths,
            warnings,
            ..
        } = from_config(r#"{"credsStore": "pass"}"#, &set(&["docker.io"]), &helper);
        assert!(auths.is_empty());
        assert!(
            warnings[0].contains("docker-credential-pass"),
            "{warnings:?}"
        );
    }
}
