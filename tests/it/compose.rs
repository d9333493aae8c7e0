//! The compose loader on real-world files: every corpus file loads, its canonical form validates
//! against the Compose Specification's JSON schema, and a handful are pinned by snapshots.

use std::path::{Path, PathBuf};

use compose_fleet::cli::config::{render, Format};
use compose_fleet::compose::{self, Environment, LoadOptions, Loaded, RealFs};

/// The shared corpus, or `None` when it is missing and `test` skips (see `support::shared`).
fn shared(test: &str) -> Option<PathBuf> {
    crate::support::shared(test)
}

fn corpus_files(shared: &Path) -> Vec<PathBuf> {
    let dir = shared.join("compose-corpus/real-world");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Loads a corpus file with `<name>.env` beside it as its `.env` (read in place, not copied).
fn load_corpus(file: &Path) -> Loaded {
    let mut opts = LoadOptions::for_file(file);
    opts.env_files = vec![file.with_extension("env")];
    // A fixed home directory, so `~/…` paths print the same everywhere.
    let env: Environment = [("HOME".to_string(), "/home/user".to_string())].into();
    match compose::load(&opts, &env, &RealFs) {
        Ok(l) => l,
        Err(f) => {
            let text: Vec<String> = f
                .diagnostics
                .0
                .iter()
                .map(|d| f.sources.render(d))
                .collect();
            panic!("{} does not load:\n{}", file.display(), text.join(""))
        }
    }
}

/// The Compose Specification's JSON schema (draft-07) from the shared corpus, compiled once;
/// `None` when the corpus is missing (the feature tests then check their output without it).
fn validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: std::sync::OnceLock<Option<jsonschema::Validator>> =
        std::sync::OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let shared = shared("the schema check of the compose feature tests")?;
            let schema_path = shared.join("compose-corpus/spec/compose-spec.json");
            let schema: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&schema_path).expect("read compose-spec.json"),
            )
            .expect("compose-spec.json is JSON");
            Some(jsonschema::draft7::new(&schema).expect("the schema compiles"))
        })
        .as_ref()
}

/// `config --format json` of a project validates against the schema (when the schema is there).
fn assert_valid(loaded: &Loaded) {
    let Some(validator) = validator() else {
        return;
    };
    let json = render(&loaded.project, Format::Json).expect("renders");
    let value: serde_json::Value = serde_json::from_str(&json).expect("our JSON parses");
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not valid against the schema: {errors:#?}\n{json}"
    );
}

#[test]
fn every_corpus_file_loads_and_validates_against_the_schema() {
    let Some(shared) = shared("every_corpus_file_loads_and_validates_against_the_schema") else {
        return;
    };
    let files = corpus_files(&shared);
    assert!(files.len() >= 39, "corpus has {} files", files.len());
    let mut services = 0;
    for file in &files {
        let loaded = load_corpus(file);
        services += loaded.project.services.len() + loaded.project.disabled.len();
        assert_valid(&loaded);
    }
    assert_eq!(services, 81, "FEATURE-COUNTS.md counts 81 services");
}

/// The canonical YAML of a corpus file; `None` when the corpus is missing and `test` skips.
fn snapshot(test: &str, name: &str) -> Option<String> {
    let shared = shared(test)?;
    let file = shared.join("compose-corpus/real-world").join(name);
    let loaded = load_corpus(&file);
    let text = render(&loaded.project, Format::Yaml).expect("renders");
    // Absolute paths differ between machines.
    let root = compose::source::normalize(&shared.join("compose-corpus/real-world"));
    Some(text.replace(&root.display().to_string(), "$CORPUS"))
}

#[test]
fn snapshot_pihole_interpolates_from_its_env_file() {
    let Some(text) = snapshot(
        "snapshot_pihole_interpolates_from_its_env_file",
        "pihole-cloudflared-DoH.yaml",
    ) else {
        return;
    };
    insta::assert_snapshot!(text);
}

#[test]
fn snapshot_react_express_mysql_with_secrets_and_builds() {
    let Some(text) = snapshot(
        "snapshot_react_express_mysql_with_secrets_and_builds",
        "react-express-mysql.yaml",
    ) else {
        return;
    };
    insta::assert_snapshot!(text);
}

#[test]
fn snapshot_minecraft_memory_limit_in_bytes() {
    let Some(text) = snapshot("snapshot_minecraft_memory_limit_in_bytes", "minecraft.yaml") else {
        return;
    };
    insta::assert_snapshot!(text);
}

#[test]
fn snapshot_postgresql_pgadmin_ignores_variables_in_comments() {
    let Some(text) = snapshot(
        "snapshot_postgresql_pgadmin_ignores_variables_in_comments",
        "postgresql-pgadmin.yaml",
    ) else {
        return;
    };
    insta::assert_snapshot!(text);
}

#[test]
fn snapshot_nginx_golang_mysql_healthcheck_and_dollar_escapes() {
    let Some(text) = snapshot(
        "snapshot_nginx_golang_mysql_healthcheck_and_dollar_escapes",
        "nginx-golang-mysql.yaml",
    ) else {
        return;
    };
    insta::assert_snapshot!(text);
}

// ---------------------------------------------------------------------------------------------
// Features, one test each: a fixture and the canonical output (or the diagnostics) it gives.

use compose_fleet::compose::{LoadFailure, MemoryFs};

/// Loads in-memory files under `/p` (the first one is the compose file) with `env` as the process
/// environment and `profiles` active.
pub fn load_files(
    files: &[(&str, &str)],
    env: &[(&str, &str)],
    profiles: &[&str],
) -> Result<Loaded, LoadFailure> {
    let mut fs = MemoryFs::new();
    for (path, text) in files {
        fs.insert(Path::new("/p").join(path), *text);
    }
    let mut opts = LoadOptions::for_file(Path::new("/p").join(files[0].0));
    // Further `*.yaml` files are more `-f` files, in order.
    opts.files.extend(
        files[1..]
            .iter()
            .filter(|(p, _)| p.ends_with(".yaml") && !p.contains('/'))
            .map(|(p, _)| Path::new("/p").join(p)),
    );
    opts.profiles = profiles.iter().map(|p| p.to_string()).collect();
    let env: Environment = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    compose::load(&opts, &env, &fs)
}

/// Every diagnostic in its one-line form: `compose.yaml:3:5: error: …`.
pub fn lines(diags: &compose_fleet::diag::Diagnostics) -> Vec<String> {
    diags.0.iter().map(|d| d.to_string()).collect()
}

/// Loads `yaml` as `/p/compose.yaml` and compares the normalized model, as YAML, with `expected`.
/// The model is what placement reads (legacy keys folded into `deploy`, no implicit network); the
/// canonical form `config` prints is checked against docker compose by `differential.rs`.
pub fn check(yaml: &str, expected: &str) {
    check_with(&[("compose.yaml", yaml)], &[], &[], expected)
}

/// The normalized model as YAML (field names are the Compose Specification's).
pub fn model_yaml(project: &compose_fleet::compose::model::Project) -> String {
    let value = serde_json::to_value(project).expect("the model serializes");
    serde_saphyr::to_string(&value).expect("the model prints as YAML")
}

pub fn check_with(files: &[(&str, &str)], env: &[(&str, &str)], profiles: &[&str], expected: &str) {
    match load_files(files, env, profiles) {
        Ok(loaded) => {
            assert_valid(&loaded);
            let got = model_yaml(&loaded.project);
            assert_eq!(
                got.trim(),
                expected.trim(),
                "\n--- got ---\n{got}\n--- warnings ---\n{:#?}",
                lines(&loaded.warnings)
            );
        }
        Err(f) => panic!("does not load: {:#?}", lines(&f.diagnostics)),
    }
}

#[test]
fn anchors_aliases_and_merge_keys_including_a_sequence_of_maps() {
    check(
        r#"
x-base: &base
  image: busybox
  restart: always
x-env: &env
  environment: {A: "1"}
services:
  web:
    <<: [*base, *env]
    restart: "no"
  worker: *base
"#,
        r#"
name: p
services:
  web:
    environment:
      A: "1"
    image: busybox
    restart: "no"
  worker:
    image: busybox
    restart: always
x-base:
  image: busybox
  restart: always
x-env:
  environment:
    A: "1"
"#,
    );
}

#[test]
fn extension_fields_anywhere_are_kept() {
    check(
        r#"
x-top: {a: 1}
services:
  web:
    image: busybox
    x-owner: team-a
    deploy:
      x-tier: gold
"#,
        r#"
name: p
services:
  web:
    deploy:
      x-tier: gold
    image: busybox
    x-owner: team-a
x-top:
  a: 1
"#,
    );
}

#[test]
fn interpolation_in_every_form() {
    check_with(
        &[(
            "compose.yaml",
            r#"
services:
  web:
    image: "busybox:${TAG}"
    # a comment mentioning ${NOT_INTERPOLATED:?never}
    environment:
      PLAIN: $NAME
      BRACED: "${NAME}"
      DEFAULT: ${UNSET:-fallback}
      DEFAULT_IF_UNSET: "${EMPTY-kept-empty}"
      DEFAULT_IF_EMPTY: "${EMPTY:-was-empty}"
      ALT: ${NAME:+alternative}
      ALT_UNSET: "${UNSET+alternative}"
      NESTED: ${UNSET:-${ALSO_UNSET:-deep}}
      REQUIRED: ${NAME:?must be set}
      DOLLAR: "$$NAME costs $$5"
"#,
        )],
        &[("TAG", "1.36"), ("NAME", "web"), ("EMPTY", "")],
        &[],
        r#"
name: p
services:
  web:
    environment:
      ALT: alternative
      ALT_UNSET: ""
      BRACED: web
      DEFAULT: fallback
      DEFAULT_IF_EMPTY: was-empty
      DEFAULT_IF_UNSET: ""
      DOLLAR: $NAME costs $5
      NESTED: deep
      PLAIN: web
      REQUIRED: web
    image: busybox:1.36
"#,
    );
}

#[test]
fn dotenv_provides_variables_and_the_process_environment_wins() {
    check_with(
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    image: \"busybox:${TAG}\"\n    environment: [\"WHO=${WHO}\"]\n",
            ),
            (".env", "TAG=from-dotenv\nWHO=dotenv\n"),
        ],
        &[("WHO", "process")],
        &[],
        r#"
name: p
services:
  web:
    environment:
      WHO: process
    image: busybox:from-dotenv
"#,
    );
}

#[test]
fn env_file_short_and_long_syntax_and_optional_files() {
    check_with(
        &[
            (
                "compose.yaml",
                r#"
services:
  short:
    image: busybox
    env_file: common.env
  long:
    image: busybox
    env_file:
      - path: common.env
      - path: missing.env
        required: false
      - path: override.env
    environment:
      B: from-environment
"#,
            ),
            ("common.env", "A=common\nB=common\n"),
            ("override.env", "A=override\n"),
        ],
        &[],
        &[],
        r#"
name: p
services:
  long:
    environment:
      A: override
      B: from-environment
    image: busybox
  short:
    environment:
      A: common
      B: common
    image: busybox
"#,
    );
}

#[test]
fn environment_as_list_or_map_with_values_from_the_environment() {
    check_with(
        &[(
            "compose.yaml",
            r#"
services:
  list:
    image: busybox
    environment: [A=1, FROM_ENV, NOT_SET, "EMPTY="]
  map:
    image: busybox
    environment:
      A: 1
      FROM_ENV:
      NOT_SET:
      T: true
"#,
        )],
        &[("FROM_ENV", "hello")],
        &[],
        r#"
name: p
services:
  list:
    environment:
      A: "1"
      EMPTY: ""
      FROM_ENV: hello
      NOT_SET: null
    image: busybox
  map:
    environment:
      A: "1"
      FROM_ENV: hello
      NOT_SET: null
      T: "true"
    image: busybox
"#,
    );
}

#[test]
fn later_files_override_earlier_ones_by_the_merge_rules() {
    check_with(
        &[
            (
                "compose.yaml",
                r#"
services:
  web:
    image: web:1
    command: ["serve", "--port", "80"]
    environment: [A=1, B=1]
    labels: {team: a}
    ports: ["80:80"]
    expose: ["9000"]
    volumes: ["data:/data", "./conf:/etc/conf"]
    depends_on: [db]
    healthcheck:
      test: ["CMD", "true"]
      interval: 10s
  db:
    image: postgres
volumes:
  data:
"#,
            ),
            (
                "override.yaml",
                r#"
services:
  web:
    image: web:2
    command: serve --debug
    environment: {B: 2, C: 3}
    labels: [tier=front]
    ports: ["80:80", "443:443"]
    expose: ["9000", "9001"]
    volumes: ["other:/data"]
    depends_on:
      cache: {condition: service_healthy}
    healthcheck:
      test: ["CMD", "false"]
  cache:
    image: redis
volumes:
  other:
"#,
            ),
        ],
        &[],
        &[],
        r#"
name: p
services:
  cache:
    image: redis
  db:
    image: postgres
  web:
    command:
    - serve
    - --debug
    depends_on:
      cache:
        condition: service_healthy
        required: true
      db:
        condition: service_started
        required: true
    environment:
      A: "1"
      B: "2"
      C: "3"
    expose:
    - "9000"
    - "9001"
    healthcheck:
      interval: 10s
      test:
      - CMD
      - "false"
    image: web:2
    labels:
      team: a
      tier: front
    ports:
    - mode: ingress
      protocol: tcp
      published: "80"
      target: 80
    - mode: ingress
      protocol: tcp
      published: "443"
      target: 443
    volumes:
    - source: other
      target: /data
      type: volume
      volume: {}
    - bind:
        create_host_path: true
      source: /p/conf
      target: /etc/conf
      type: bind
volumes:
  data: {}
  other: {}
"#,
    );
}

#[test]
fn extends_in_the_same_file_in_other_files_and_in_chains() {
    check_with(
        &[
            (
                "compose.yaml",
                r#"
services:
  base:
    image: busybox
    environment: [LEVEL=base]
    labels: {from: base}
  middle:
    extends: base
    environment: [LEVEL=middle]
  web:
    extends: {service: middle}
    command: httpd -f
  remote:
    extends:
      file: lib/common.yaml
      service: common
    environment: {LOCAL: "yes"}
"#,
            ),
            (
                "lib/common.yaml",
                r#"
services:
  root:
    image: alpine
    volumes: ["./data:/data"]
  common:
    extends: root
    environment: {COMMON: "yes"}
"#,
            ),
        ],
        &[],
        &[],
        r#"
name: p
services:
  base:
    environment:
      LEVEL: base
    image: busybox
    labels:
      from: base
  middle:
    environment:
      LEVEL: middle
    image: busybox
    labels:
      from: base
  remote:
    environment:
      COMMON: "yes"
      LOCAL: "yes"
    image: alpine
    volumes:
    - bind:
        create_host_path: true
      source: /p/lib/data
      target: /data
      type: bind
  web:
    command:
    - httpd
    - -f
    environment:
      LEVEL: middle
    image: busybox
    labels:
      from: base
"#,
    );
}

#[test]
fn include_adds_the_services_of_other_files_with_their_own_directory() {
    check_with(
        &[
            (
                "compose.yaml",
                r#"
include:
  - db/compose.yaml
  - path: [cache/compose.yaml]
services:
  web:
    image: web
    depends_on: [db, cache]
"#,
            ),
            (
                "db/compose.yaml",
                "services:\n  db:\n    image: postgres\n    volumes: [\"./init:/docker-entrypoint-initdb.d\"]\n",
            ),
            ("cache/compose.yaml", "services:\n  cache:\n    image: redis\n"),
        ],
        &[],
        &[],
        r#"
name: p
services:
  cache:
    image: redis
  db:
    image: postgres
    volumes:
    - bind:
        create_host_path: true
      source: /p/db/init
      target: /docker-entrypoint-initdb.d
      type: bind
  web:
    depends_on:
      cache:
        condition: service_started
        required: true
      db:
        condition: service_started
        required: true
    image: web
"#,
    );
}

#[test]
fn profiles_disable_services_unless_active() {
    let files = [(
        "compose.yaml",
        r#"
services:
  web: {image: web}
  debug: {image: busybox, profiles: [debug]}
  tools: {image: busybox, profiles: [tools, debug]}
"#,
    )];
    let off = load_files(&files, &[], &[]).expect("loads");
    assert_eq!(off.project.services.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(
        off.project.disabled.keys().collect::<Vec<_>>(),
        ["debug", "tools"]
    );
    let on = load_files(&files, &[], &["tools"]).expect("loads");
    assert_eq!(
        on.project.services.keys().collect::<Vec<_>>(),
        ["tools", "web"]
    );
    assert_eq!(on.project.disabled.keys().collect::<Vec<_>>(), ["debug"]);
    let all = load_files(&files, &[], &["*"]).expect("loads");
    assert!(all.project.disabled.is_empty());
}

#[test]
fn ports_short_and_long_syntax_with_ranges_host_ips_and_protocols() {
    check(
        r#"
services:
  web:
    image: web
    ports:
      - 80
      - "8080:80"
      - "127.0.0.1:8443:443"
      - "[::1]:5353:53/udp"
      - "9000-9001:7000-7001"
      - "6000-6005:6000"
      - target: 5000
        published: "5000"
        protocol: sctp
        mode: host
        host_ip: 0.0.0.0
        name: api
        app_protocol: http
"#,
        r#"
name: p
services:
  web:
    image: web
    ports:
    - mode: ingress
      protocol: tcp
      target: 80
    - mode: ingress
      protocol: tcp
      published: "8080"
      target: 80
    - host_ip: "127.0.0.1"
      mode: ingress
      protocol: tcp
      published: "8443"
      target: 443
    - host_ip: "::1"
      mode: ingress
      protocol: udp
      published: "5353"
      target: 53
    - mode: ingress
      protocol: tcp
      published: "9000"
      target: 7000
    - mode: ingress
      protocol: tcp
      published: "9001"
      target: 7001
    - mode: ingress
      protocol: tcp
      published: 6000-6005
      target: 6000
    - app_protocol: http
      host_ip: "0.0.0.0"
      mode: host
      name: api
      protocol: sctp
      published: "5000"
      target: 5000
"#,
    );
}

#[test]
fn volumes_short_and_long_syntax() {
    check(
        r#"
services:
  web:
    image: web
    volumes:
      - /anonymous
      - named:/data:ro
      - ./relative:/src:rw,z
      - /abs/path:/abs
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 1000}
      - type: bind
        source: ../up
        target: /up
        read_only: true
volumes:
  named:
"#,
        r#"
name: p
services:
  web:
    image: web
    volumes:
    - target: /anonymous
      type: volume
      volume: {}
    - read_only: true
      source: named
      target: /data
      type: volume
      volume: {}
    - bind:
        create_host_path: true
        selinux: z
      source: /p/relative
      target: /src
      type: bind
    - bind:
        create_host_path: true
      source: /abs/path
      target: /abs
      type: bind
    - target: /tmp
      tmpfs:
        size: 1000
      type: tmpfs
    - read_only: true
      source: /up
      target: /up
      type: bind
volumes:
  named: {}
"#,
    );
}

#[test]
fn depends_on_list_and_map_with_conditions_required_and_restart() {
    check(
        r#"
services:
  web:
    image: web
    depends_on:
      db: {condition: service_healthy, restart: true}
      migrate: {condition: service_completed_successfully}
      cache: {condition: service_started, required: false}
  worker:
    image: web
    depends_on: [db]
  db: {image: postgres}
  migrate: {image: web}
  cache: {image: redis}
"#,
        r#"
name: p
services:
  cache:
    image: redis
  db:
    image: postgres
  migrate:
    image: web
  web:
    depends_on:
      cache:
        condition: service_started
        required: false
      db:
        condition: service_healthy
        required: true
        restart: true
      migrate:
        condition: service_completed_successfully
        required: true
    image: web
  worker:
    depends_on:
      db:
        condition: service_started
        required: true
    image: web
"#,
    );
}

#[test]
fn healthcheck_durations_and_string_test() {
    check(
        r#"
services:
  web:
    image: web
    healthcheck:
      test: curl -f http://localhost/ || exit 1
      interval: 1m30s
      timeout: 500ms
      retries: 3
      start_period: 90s
      start_interval: 2s
  db:
    image: postgres
    healthcheck: {test: ["CMD", "pg_isready"], interval: 10s}
  off:
    image: busybox
    healthcheck: {disable: true}
"#,
        r#"
name: p
services:
  db:
    healthcheck:
      interval: 10s
      test:
      - CMD
      - pg_isready
    image: postgres
  "off":
    healthcheck:
      disable: true
    image: busybox
  web:
    healthcheck:
      interval: 1m30s
      retries: 3
      start_interval: 2s
      start_period: 1m30s
      test:
      - CMD-SHELL
      - curl -f http://localhost/ || exit 1
      timeout: 500ms
    image: web
"#,
    );
}

#[test]
fn deploy_resources_placement_and_policies() {
    check(
        r#"
services:
  web:
    image: web
    deploy:
      mode: replicated
      replicas: 3
      resources:
        limits: {cpus: "0.5", memory: 512m, pids: 100}
        reservations: {cpus: 0.25, memory: 1gb}
      placement:
        constraints: [node.labels.zone == eu, node.role != manager]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
      restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
      update_config: {parallelism: 2, delay: 10s, order: start-first, failure_action: rollback, monitor: 30s, max_failure_ratio: 0.1}
      rollback_config: {parallelism: 1}
"#,
        r#"
name: p
services:
  web:
    deploy:
      mode: replicated
      placement:
        constraints:
        - node.labels.zone == eu
        - node.role != manager
        max_replicas_per_node: 2
        preferences:
        - spread: node.labels.zone
      replicas: 3
      resources:
        limits:
          cpus: 0.5
          memory: "536870912"
          pids: 100
        reservations:
          cpus: 0.25
          memory: "1073741824"
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 2m0s
      rollback_config:
        parallelism: 1
      update_config:
        delay: 10s
        failure_action: rollback
        max_failure_ratio: 0.1
        monitor: 30s
        order: start-first
        parallelism: 2
    image: web
"#,
    );
}

#[test]
fn legacy_mem_limit_cpus_and_scale_feed_deploy() {
    check(
        r#"
services:
  web:
    image: web
    mem_limit: 1.5G
    mem_reservation: 256m
    cpus: 1.5
    pids_limit: 64
    scale: 2
"#,
        r#"
name: p
services:
  web:
    cpus: 1.5
    deploy:
      replicas: 2
      resources:
        limits:
          cpus: 1.5
          memory: "1610612736"
          pids: 64
        reservations:
          memory: "268435456"
    image: web
    mem_limit: "1610612736"
    mem_reservation: "268435456"
    pids_limit: 64
    scale: 2
"#,
    );
}

#[test]
fn secrets_and_configs_short_and_long_syntax_with_absolute_files() {
    check(
        r#"
services:
  web:
    image: web
    secrets:
      - db_password
      - source: api_key
        target: /run/keys/api
        uid: "1000"
        gid: "1000"
        mode: 0440
    configs:
      - nginx
      - {source: app, target: /etc/app.conf, mode: 292}
secrets:
  db_password: {file: ./secrets/db.txt}
  api_key: {environment: API_KEY}
configs:
  nginx: {file: conf/nginx.conf}
  app: {content: "debug = true"}
"#,
        r#"
configs:
  app:
    content: debug = true
  nginx:
    file: /p/conf/nginx.conf
name: p
secrets:
  api_key:
    environment: API_KEY
  db_password:
    file: /p/secrets/db.txt
services:
  web:
    configs:
    - source: nginx
    - mode: 292
      source: app
      target: /etc/app.conf
    image: web
    secrets:
    - source: db_password
    - gid: "1000"
      mode: 288
      source: api_key
      target: /run/keys/api
      uid: "1000"
"#,
    );
}

#[test]
fn networks_with_aliases_and_network_mode_service() {
    check(
        r#"
services:
  web:
    image: web
    networks:
      front:
        aliases: [www, site]
      back:
  api:
    image: api
    networks: [back]
  sidecar:
    image: envoy
    network_mode: service:web
networks:
  front:
  back: {driver: bridge, internal: true}
"#,
        r#"
name: p
networks:
  back:
    driver: bridge
    internal: true
  front: {}
services:
  api:
    image: api
    networks:
      back: null
  sidecar:
    image: envoy
    network_mode: service:web
  web:
    image: web
    networks:
      back: null
      front:
        aliases:
        - www
        - site
"#,
    );
}

#[test]
fn spans_point_at_service_names_dependency_edges_ports_and_constraints() {
    let yaml = r#"services:
  web:
    image: web
    depends_on: [db]
    links: ["cache:redis"]
    volumes_from: [store]
    ports: ["80:80", "443:443"]
    deploy:
      placement:
        constraints: [node.labels.zone == eu]
  sidecar:
    image: envoy
    network_mode: service:web
  db: {image: postgres}
  cache: {image: redis}
  store: {image: busybox}
"#;
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    let at = |l: &compose_fleet::compose::model::Location| format!("{l}");
    let web = &loaded.project.services["web"];
    assert_eq!(at(&web.spans.name), "compose.yaml:2:3");
    let deps: Vec<(String, String)> = web
        .spans
        .dependencies
        .iter()
        .map(|(k, l)| (k.clone(), at(l)))
        .collect();
    assert_eq!(
        deps,
        [
            ("cache".to_string(), "compose.yaml:5:13".to_string()),
            ("db".to_string(), "compose.yaml:4:18".to_string()),
            ("store".to_string(), "compose.yaml:6:20".to_string()),
        ]
    );
    let ports: Vec<String> = web.spans.ports.iter().map(at).collect();
    assert_eq!(ports, ["compose.yaml:7:13", "compose.yaml:7:22"]);
    let constraints: Vec<String> = web.spans.constraints.iter().map(at).collect();
    assert_eq!(constraints, ["compose.yaml:10:23"]);
    let sidecar = &loaded.project.services["sidecar"];
    assert_eq!(at(&sidecar.spans.dependencies["web"]), "compose.yaml:13:19");
}

#[test]
fn a_service_with_build_is_honoured_by_the_ledger_and_loads_without_warnings() {
    let yaml = "services:\n  app:\n    build: .\n  web:\n    image: web\n    build: ./web\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert!(loaded.project.services["app"].build.is_some());
    let build: Vec<(String, compose_fleet::compose::ledger::Status, String)> = loaded
        .ledger
        .entries
        .iter()
        .filter(|e| e.key == "build")
        .map(|e| {
            (
                e.service.clone().unwrap_or_default(),
                e.status,
                e.reason.clone(),
            )
        })
        .collect();
    assert_eq!(build.len(), 2);
    assert!(
        build
            .iter()
            .all(|b| b.1 == compose_fleet::compose::ledger::Status::Honoured),
        "{build:?}"
    );
    assert!(build[0].2.contains("delivered to the hosts"), "{build:?}");
    assert!(
        build[1].2.contains("`image` names it as a tag"),
        "{build:?}"
    );
    assert!(
        lines(&loaded.warnings).is_empty(),
        "{:?}",
        lines(&loaded.warnings)
    );
}

#[test]
fn keys_accepted_but_not_honoured_are_warnings_naming_key_and_service() {
    let yaml =
        "services:\n  web:\n    image: web\n    logging: {driver: json-file}\n    dns: [1.1.1.1]\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert_eq!(
        lines(&loaded.warnings),
        [
            "compose.yaml:4:5: warning: `logging` in service `web` is accepted but not honoured: the agent keeps logs itself; logging drivers are not used",
            "compose.yaml:5:5: warning: `dns` in service `web` is accepted but not honoured: pods use the agent's DNS server",
        ]
    );
    // Nothing is dropped: the keys are still in the canonical output.
    let web = &loaded.project.services["web"];
    assert!(web.extra.contains_key("logging") && web.extra.contains_key("dns"));
}

#[test]
fn the_ledger_classifies_every_key_of_the_spec() {
    use compose_fleet::compose::ledger;
    let Some(shared) = shared("the_ledger_classifies_every_key_of_the_spec") else {
        return;
    };
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("compose-corpus/spec/compose-spec.json"))
            .expect("read the schema"),
    )
    .expect("JSON");
    let keys = |path: &str| -> Vec<String> {
        schema
            .pointer(path)
            .and_then(|v| v.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    for k in keys("/definitions/service/properties") {
        assert!(
            ledger::service_key(&k).is_some(),
            "service key `{k}` is not classified"
        );
        assert!(
            ledger::SERVICE_KEYS.contains(&k.as_str()),
            "`{k}` missing from SERVICE_KEYS"
        );
    }
    for k in keys("/properties") {
        assert!(
            ledger::top_key(&k).is_some(),
            "top-level key `{k}` is not classified"
        );
    }
    for k in keys("/definitions/deployment/properties") {
        assert!(
            ledger::deploy_key(&k).is_some(),
            "deploy key `{k}` is not classified"
        );
    }
}

// The CLI: `config` and its flags, through the real binary.

fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_compose-fleet"))
        .args(args)
        .current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .output()
        .expect("runs compose-fleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn project_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let p = dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write fixture");
    }
    dir
}

#[test]
fn cli_config_prints_yaml_json_services_and_profiles() {
    let dir = project_dir(&[
        ("compose.yaml", "name: Demo App\nservices:\n  web: {image: web}\n  dbg: {image: busybox, profiles: [debug]}\n"),
        ("compose.override.yaml", "services:\n  web: {environment: [A=1]}\n"),
    ]);
    let (code, out, err) = cli(dir.path(), &["config"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "name: demoapp\nservices:\n  web:\n    environment:\n      A: \"1\"\n    image: web\n    networks:\n      default: null\nnetworks:\n  default:\n    name: demoapp_default\n"
    );
    let (code, out, _) = cli(dir.path(), &["config", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["services"]["web"]["image"], "web");
    let (_, out, _) = cli(dir.path(), &["--profile", "debug", "config", "--services"]);
    assert_eq!(out, "dbg\nweb\n");
    let (_, out, _) = cli(dir.path(), &["config", "--profiles"]);
    assert_eq!(out, "debug\n");
    let (_, out, _) = cli(dir.path(), &["-p", "other", "-f", "compose.yaml", "config"]);
    assert!(out.starts_with("name: other\n"), "{out}");
    assert!(
        !out.contains("A: "),
        "-f replaces the default discovery: {out}"
    );
}

#[test]
fn cli_config_check_prints_the_ledger_and_strict_fails_on_warnings() {
    let dir = project_dir(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    logging: {driver: syslog}\n",
    )]);
    let (code, out, err) = cli(dir.path(), &["config", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("honoured                (top level)  services"),
        "{out}"
    );
    assert!(
        out.contains("accepted, not honoured  web          logging   compose.yaml:4:5"),
        "{out}"
    );
    assert!(
        out.ends_with("2 honoured, 1 accepted but not honoured, 0 rejected\n"),
        "{out}"
    );
    assert!(err.contains("warning: `logging` in service `web`"), "{err}");
    let (code, _, err) = cli(dir.path(), &["config", "--strict"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("error: `logging` in service `web` is accepted but not honoured"),
        "{err}"
    );
    assert!(
        err.contains("--strict: 1 warning treated as error"),
        "{err}"
    );
}

#[test]
fn cli_config_succeeds_on_what_the_fleet_cannot_run_and_only_strict_fails() {
    // compose accepts `ipc: service:db` and `network_mode: container:…`; the fleet cannot run
    // them: `config` prints the project and warns, `--strict` fails.
    let dir = project_dir(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    ipc: service:db\n  db:\n    image: db\n    network_mode: container:abc\n",
    )]);
    let (code, out, err) = cli(dir.path(), &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ipc: service:db"), "{out}");
    assert!(
        err.contains("warning: `ipc` in service `web` is accepted but not honoured"),
        "{err}"
    );
    assert!(
        err.contains(
            "warning: `network_mode: container:abc` in service `db` cannot run on the fleet"
        ),
        "{err}"
    );
    let (code, out, err) = cli(dir.path(), &["config", "--strict"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(out, "");
    assert!(
        err.contains(
            "error: `network_mode: container:abc` in service `db` cannot run on the fleet"
        ),
        "{err}"
    );
    assert!(
        err.contains("--strict: 2 warnings treated as errors"),
        "{err}"
    );
}

#[test]
fn a_string_command_ends_at_a_shell_operator_as_in_compose_with_a_warning() {
    let l = loaded(
        "services:\n  kong:\n    image: kong\n    command: kong migrations up && kong migrations finish\n    entrypoint: run 2>&1\n",
        &[],
    );
    let kong = &l.project.services["kong"];
    assert_eq!(
        kong.command.as_deref(),
        Some(&["kong".to_string(), "migrations".into(), "up".into()][..])
    );
    assert_eq!(kong.entrypoint.as_deref(), Some(&["run".to_string()][..]));
    assert_eq!(
        lines(&l.warnings),
        [
            "compose.yaml:4:14: warning: `command` runs `kong migrations up` only: docker compose splits a string `command` into words without a shell, and drops `&& kong migrations finish` at the shell operator",
            "compose.yaml:5:17: warning: `entrypoint` runs `run` only: docker compose splits a string `entrypoint` into words without a shell, and drops `2>&1` at the shell operator",
        ]
    );
}

#[test]
fn cli_config_user_errors_exit_1_with_rendered_diagnostics() {
    let dir = project_dir(&[("compose.yaml", "services:\n  web:\n    imgae: nginx\n")]);
    let (code, out, err) = cli(dir.path(), &["config"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.contains(
            "error: unknown key `imgae` in service `web`\n  --> compose.yaml:3:5\n   |\n 3 |     imgae: nginx\n   |     ^^^^^ did you mean `image`?\n"
        ),
        "{err}"
    );
    let empty = tempfile::tempdir().expect("temp dir");
    let (code, _, err) = cli(empty.path(), &["config"]);
    assert_eq!(code, 1);
    assert!(err.contains("no compose file found"), "{err}");
}

#[test]
fn include_with_its_own_env_file_and_project_directory() {
    check_with(
        &[
            (
                "compose.yaml",
                r#"
include:
  - path: ../lib/db.yaml
    env_file: ../lib/db.env
    project_directory: ../lib
services:
  web: {image: "web:${TAG}"}
"#,
            ),
            (".env", "TAG=1\n"),
            (
                "../lib/db.yaml",
                "services:\n  db:\n    image: \"postgres:${PG}\"\n    env_file: conf.env\n",
            ),
            ("../lib/db.env", "PG=16\n"),
            ("../lib/conf.env", "MODE=${TAG}\n"),
        ],
        &[],
        &[],
        r#"
name: p
services:
  db:
    environment:
      MODE: "1"
    image: postgres:16
  web:
    image: web:1
"#,
    );
}

#[test]
fn env_file_in_raw_format_is_taken_literally() {
    check_with(
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    image: web\n    env_file: [{path: raw.env, format: raw}]\n",
            ),
            ("raw.env", "# comment\nA='quoted' ${NOT} # kept\n"),
        ],
        &[],
        &[],
        r#"
name: p
services:
  web:
    environment:
      A: "'quoted' ${NOT} # kept"
    image: web
"#,
    );
}

#[test]
fn network_mode_other_than_service_host_and_none_is_accepted_but_not_honoured() {
    let yaml = "services:\n  web:\n    image: web\n    network_mode: bridge\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert_eq!(
        lines(&loaded.warnings),
        ["compose.yaml:4:19: warning: `network_mode: bridge` in service `web` is accepted but not honoured: only `service:NAME`, `host` and `none` are honoured; the pod gets its own network namespace on the fleet network"]
    );
    let entry = loaded
        .ledger
        .entries
        .iter()
        .find(|e| e.key == "network_mode")
        .expect("in the ledger");
    assert_eq!(
        entry.status,
        compose_fleet::compose::ledger::Status::Accepted
    );
}

#[test]
fn host_network_mode_is_honoured_and_its_ports_are_ignored_with_a_warning() {
    let yaml = "services:\n  web:\n    image: web\n    network_mode: host\n    ports:\n      - \"8080:80\"\n  db:\n    image: db\n    network_mode: none\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert_eq!(
        lines(&loaded.warnings),
        ["compose.yaml:6:9: warning: service `web` has `network_mode: host`: its `ports` are ignored, as docker compose ignores them"]
    );
}

#[test]
fn env_files_given_replace_the_project_dotenv_and_must_exist() {
    let fs = MemoryFs::new()
        .with(
            "/p/compose.yaml",
            "services:\n  web: {image: \"web:${TAG:-none}\"}\n",
        )
        .with("/p/.env", "TAG=dotenv\n")
        .with("/p/a.env", "TAG=a\n")
        .with("/p/b.env", "TAG=b\n");
    let mut opts = LoadOptions::for_file("/p/compose.yaml");
    opts.env_files = vec!["/p/a.env".into(), "/p/b.env".into()];
    opts.env_files_required = true;
    let loaded = compose::load(&opts, &Environment::new(), &fs).expect("loads");
    assert_eq!(
        loaded.project.services["web"].image.as_deref(),
        Some("web:b")
    );
    opts.env_files = vec!["/p/missing.env".into()];
    let failure = compose::load(&opts, &Environment::new(), &fs).expect_err("missing env file");
    assert_eq!(
        lines(&failure.diagnostics),
        ["error: cannot read env file /p/missing.env: no such file"]
    );
}

#[test]
fn unset_variables_are_warned_about_once_and_become_empty() {
    let yaml = "services:\n  web:\n    image: \"web:${TAG}\"\n    environment: [\"A=$TAG\", \"B=${OTHER:-x}\"]\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert_eq!(
        loaded.project.services["web"].image.as_deref(),
        Some("web:")
    );
    assert_eq!(
        lines(&loaded.warnings),
        ["compose.yaml:3:17: warning: variable `TAG` is not set; using an empty string"]
    );
    // Inside a block scalar, the warning points at the variable's line.
    let yaml = "services:\n  web:\n    image: web\n    command: |\n      echo start\n      echo $$HOME $GONE\n";
    let loaded = load_files(&[("compose.yaml", yaml)], &[], &[]).expect("loads");
    assert_eq!(
        lines(&loaded.warnings),
        ["compose.yaml:6:19: warning: variable `GONE` is not set; using an empty string"]
    );
}

/// Loads `yaml` as `/p/compose.yaml` with `env`; panics with the diagnostics if it fails.
pub fn loaded(yaml: &str, env: &[(&str, &str)]) -> Loaded {
    match load_files(&[("compose.yaml", yaml)], env, &[]) {
        Ok(l) => l,
        Err(f) => panic!("does not load: {:#?}", lines(&f.diagnostics)),
    }
}

#[test]
fn a_dollar_that_starts_no_variable_stays_text_as_in_docker_compose() {
    let l = loaded(
        "services:\n  web:\n    image: busybox\n    command: [\"sh\", \"-c\", \"echo $(hostname) $5 $# $ $@ $$1 $A\"]\n    environment:\n      END: \"cost 5$\"\n",
        &[("A", "a")],
    );
    let web = &l.project.services["web"];
    assert_eq!(
        web.command.as_deref().unwrap()[2],
        "echo $(hostname) $5 $# $ $@ $1 a"
    );
    assert_eq!(web.environment["END"].as_deref(), Some("cost 5$"));
}

/// Loads `/p/compose.yaml` with `-p name` (when given) and the project directory `dir`.
fn load_named(yaml: &str, dir: &str, p: Option<&str>) -> Result<Loaded, LoadFailure> {
    let mut fs = MemoryFs::new();
    let file = Path::new(dir).join("compose.yaml");
    fs.insert(file.clone(), yaml);
    let mut opts = LoadOptions::for_file(file);
    opts.project_name = p.map(String::from);
    compose::load(&opts, &Environment::new(), &fs)
}

#[test]
fn compose_project_name_is_the_project_name_during_interpolation() {
    let body =
        "services:\n  web:\n    image: busybox\n    container_name: ${COMPOSE_PROJECT_NAME}-api\n";
    // (top-level name, directory, -p) → the name compose gives the project.
    for (name, dir, p, want) in [
        (None, "/srv/My App.v2", None, "myappv2"),
        (Some("\"${X:-Shop}-Front\""), "/srv/x", None, "shop-front"),
        (Some("_Bad Name/../x"), "/srv/x", None, "badnamex"),
        (Some("ignored"), "/srv/x", Some("from-p_1"), "from-p_1"),
    ] {
        let yaml = match name {
            Some(n) => format!("name: {n}\n{body}"),
            None => body.to_string(),
        };
        let l = load_named(&yaml, dir, p)
            .unwrap_or_else(|f| panic!("{name:?} {dir}: {:#?}", lines(&f.diagnostics)));
        assert_eq!(l.project.name, want);
        assert_eq!(
            l.project.services["web"].container_name.as_deref(),
            Some(format!("{want}-api").as_str())
        );
    }
}

#[test]
fn a_project_name_compose_rejects_is_an_error() {
    let yaml = "services:\n  web:\n    image: busybox\n";
    let f = load_named(yaml, "/srv/x", Some("My-Proj")).unwrap_err();
    assert_eq!(
        lines(&f.diagnostics),
        ["error: invalid project name `My-Proj`: it must consist only of lowercase letters, digits, `-` and `_`, and start with a letter or digit"]
    );
    let f = load_named(&format!("name: \"ÄÖ\"\n{yaml}"), "/srv/x", None).unwrap_err();
    assert_eq!(
        lines(&f.diagnostics),
        ["compose.yaml:1:7: error: the project name is empty: the top-level `name:` `ÄÖ` has no letter, digit, `-` or `_` to keep"]
    );
}

#[test]
fn interpolated_values_are_typed_by_field_as_compose_types_them() {
    let l = loaded(
        "services:\n  web:\n    image: busybox\n    tty: ${TTY}\n    stdin_open: \"yes\"\n    init: ${OFF}\n    cpu_shares: ${N}\n    cpus: ${CPUS}\n    ports:\n      - target: ${N}\n        published: ${N}\n    deploy:\n      replicas: ${N}\n      resources:\n        reservations:\n          devices:\n            - {driver: nvidia, count: \"${GPUS}\", capabilities: [gpu]}\n            - {driver: nvidia, count: all, capabilities: [gpu]}\n    environment:\n      KEPT: ${TTY}\n",
        &[("TTY", "true"), ("OFF", "off"), ("N", "3"), ("CPUS", "1.5"), ("GPUS", "2")],
    );
    let web = &l.project.services["web"];
    assert_eq!(web.extra["tty"], serde_json::json!(true));
    assert_eq!(web.extra["stdin_open"], serde_json::json!(true));
    assert_eq!(web.extra["init"], serde_json::json!(false));
    assert_eq!(web.extra["cpu_shares"], serde_json::json!(3));
    assert_eq!(web.cpus, Some(1.5));
    assert_eq!(web.ports[0].target, 3);
    assert_eq!(web.ports[0].published.as_deref(), Some("3"));
    let deploy = web.deploy.as_ref().unwrap();
    assert_eq!(deploy.replicas, Some(3));
    let devices = &deploy.resources.reservations.as_ref().unwrap().extra["devices"];
    assert_eq!(devices[0]["count"], serde_json::json!(2));
    // `count: all` is every device: -1, as compose reads it.
    assert_eq!(devices[1]["count"], serde_json::json!(-1));
    // Fields the spec types as strings stay strings.
    assert_eq!(web.environment["KEPT"].as_deref(), Some("true"));
}

#[test]
fn replicas_zero_and_scale_zero_turn_a_service_off() {
    let l = loaded(
        "services:\n  off:\n    image: busybox\n    deploy:\n      replicas: 0\n  scaled_off:\n    image: busybox\n    scale: 0\n  on:\n    image: busybox\n",
        &[],
    );
    let replicas = |s: &str| {
        l.project.services[s]
            .deploy
            .as_ref()
            .and_then(|d| d.replicas)
    };
    assert_eq!(
        (replicas("off"), replicas("scaled_off")),
        (Some(0), Some(0))
    );
    let nodes = vec![super::schedule::node("h1", 4.0, "4g", &[])];
    let placement = compose_fleet::schedule::place(&l.project, &nodes, &[]).expect("places");
    let placed: Vec<&str> = placement.replicas().map(|a| a.service).collect();
    assert_eq!(placed, ["on"]);
    assert!(placement.unschedulable.is_empty());
}

#[test]
fn shm_size_in_bytes_build_args_from_the_environment_and_home_in_bind_sources() {
    let files = [
        (
            "compose.yaml",
            "services:\n  web:\n    image: busybox\n    shm_size: 256m\n    env_file: web.env\n    build:\n      context: .\n      args: [FROM_ENV, UNSET_ARG, GIVEN=1]\n    volumes:\n      - ~/data:/data\n      - {type: bind, source: ~/x, target: /x}\n",
        ),
        ("web.env", "SET=1\nUNSET_IN_ENV_FILE\nFROM_ENV\n"),
    ];
    let l = load_files(&files, &[("FROM_ENV", "v"), ("HOME", "/home/u")], &[])
        .unwrap_or_else(|f| panic!("{:#?}", lines(&f.diagnostics)));
    let web = &l.project.services["web"];
    assert_eq!(web.shm_size.map(|b| b.0), Some(256 * 1024 * 1024));
    let args = &web.build.as_ref().unwrap().extra["args"];
    assert_eq!(args, &serde_json::json!({"FROM_ENV": "v", "GIVEN": "1"}));
    // An env_file name without a value takes the environment's, or is dropped when unset.
    let env: Vec<(&str, Option<&str>)> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    assert_eq!(env, [("FROM_ENV", Some("v")), ("SET", Some("1"))]);
    let sources: Vec<&str> = web
        .volumes
        .iter()
        .filter_map(|v| v.source.as_deref())
        .collect();
    assert_eq!(sources, ["/home/u/data", "/home/u/x"]);
}

#[test]
fn reset_and_override_tags_in_override_files() {
    let files = [
        (
            "compose.yaml",
            "services:\n  web:\n    image: busybox\n    ports: [\"80:80\", \"81:81\"]\n    environment: {A: \"1\", B: \"2\"}\n    command: echo hi\n    labels: {a: \"1\"}\n    depends_on: [db]\n  db:\n    image: busybox\n    ports: !reset [\"5432:5432\"]\n",
        ),
        (
            "override.yaml",
            "services:\n  web:\n    ports: !override [\"90:90\"]\n    environment: !reset {}\n    command: !reset null\n    labels: !override\n      b: \"2\"\n    depends_on: !reset []\n",
        ),
    ];
    let l = load_files(&files, &[], &[]).unwrap_or_else(|f| panic!("{:#?}", lines(&f.diagnostics)));
    let web = &l.project.services["web"];
    let published: Vec<u16> = web.ports.iter().flat_map(|p| p.published_ports()).collect();
    assert_eq!(published, [90]);
    assert!(web.environment.is_empty());
    assert_eq!(web.command, None);
    assert_eq!(web.labels.keys().collect::<Vec<_>>(), ["b"]);
    assert!(web.depends_on.is_empty());
    // In a single file, `!reset` removes the key.
    assert!(l.project.services["db"].ports.is_empty());
    // In a service that extends another, `!reset` also drops what it extends.
    let l = loaded(
        "services:\n  base:\n    image: busybox\n    ports: [\"80:80\"]\n  web:\n    extends: base\n    ports: !reset []\n",
        &[],
    );
    assert!(l.project.services["web"].ports.is_empty());
    assert_eq!(l.project.services["base"].ports.len(), 1);
}

#[test]
fn what_compose_accepts_but_the_fleet_cannot_run_loads_with_a_warning_and_placement_refuses_it() {
    let l = loaded(
        "services:\n  web:\n    image: busybox\n    network_mode: container:abc\n    ipc: service:db\n  db:\n    image: busybox\n    restart: sometimes\n    deploy: {mode: bogus}\n",
        &[],
    );
    let warnings = lines(&l.warnings);
    assert!(
        warnings.contains(&"compose.yaml:4:19: warning: `network_mode: container:abc` in service `web` cannot run on the fleet".to_string()),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "compose.yaml:5:5: warning: `ipc` in service `web` is accepted but not honoured"
        )),
        "{warnings:#?}"
    );
    let nodes = vec![super::schedule::node("h1", 4.0, "4g", &[])];
    let errors = compose_fleet::schedule::place(&l.project, &nodes, &[]).expect_err("refused");
    assert_eq!(
        lines(&errors),
        [
            "compose.yaml:4:19: error: `network_mode: container:abc` in service `web` cannot run on the fleet",
            "compose.yaml:8:14: error: `restart: sometimes` is not a restart policy",
            "compose.yaml:9:20: error: unknown deploy mode `bogus`",
        ]
    );
}

#[test]
fn host_port_zero_loads_with_a_warning_and_placement_refuses_it() {
    let l = loaded(
        "services:\n  web:\n    image: busybox\n    ports: [\"0:80\", {target: 81, published: 0}]\n",
        &[],
    );
    assert_eq!(
        lines(&l.warnings),
        [
            "compose.yaml:4:13: warning: port 80 of service `web` is published on host port 0 (one the engine picks), which the fleet cannot do",
            "compose.yaml:4:21: warning: port 81 of service `web` is published on host port 0 (one the engine picks), which the fleet cannot do",
        ]
    );
    let nodes = vec![super::schedule::node("h1", 4.0, "4g", &[])];
    let errors = compose_fleet::schedule::place(&l.project, &nodes, &[]).expect_err("refused");
    assert_eq!(errors.0.len(), 2);
}

#[test]
fn a_string_healthcheck_test_none_is_a_shell_line_as_in_compose_with_a_warning() {
    let l = loaded(
        "services:\n  web:\n    image: busybox\n    healthcheck:\n      test: NONE\n  off:\n    image: busybox\n    healthcheck:\n      test: [\"NONE\"]\n",
        &[],
    );
    let test = |s: &str| {
        l.project.services[s]
            .healthcheck
            .as_ref()
            .map(|h| h.test.clone())
    };
    assert_eq!(
        test("web"),
        Some(vec!["CMD-SHELL".to_string(), "NONE".into()])
    );
    assert_eq!(test("off"), Some(vec!["NONE".to_string()]));
    assert_eq!(
        lines(&l.warnings),
        ["compose.yaml:5:13: warning: `test: NONE` written as a string is the shell command `NONE` (as in docker compose), which fails: the service would never be healthy"]
    );
}
