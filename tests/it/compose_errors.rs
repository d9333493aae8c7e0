//! The loader's invalid cases: each fixture and the exact diagnostics (`file:line:column`, message)
//! it gives. All problems of a file come out in one run.

use super::compose::{lines, load_files};

/// Loads `yaml` as `/p/compose.yaml` with `env`, expects failure, and compares the errors (in
/// their one-line form) with `expected`.
fn check_errors(yaml: &str, env: &[(&str, &str)], expected: &[&str]) {
    match load_files(&[("compose.yaml", yaml)], env, &[]) {
        Ok(l) => panic!(
            "loaded, but expected errors {expected:#?}; warnings: {:#?}",
            lines(&l.warnings)
        ),
        Err(f) => {
            let errors: Vec<String> = f.diagnostics.errors().map(|d| d.to_string()).collect();
            assert_eq!(errors, expected);
        }
    }
}

/// The first error's hint.
fn hint(yaml: &str) -> String {
    match load_files(&[("compose.yaml", yaml)], &[], &[]) {
        Ok(_) => panic!("loaded"),
        Err(f) => f
            .diagnostics
            .errors()
            .next()
            .and_then(|d| d.hint.clone())
            .unwrap_or_default(),
    }
}

#[test]
fn required_variable_unset_or_empty() {
    let yaml = "services:\n  web:\n    image: \"db:${TAG:?set TAG}\"\n    environment:\n      A: ${EMPTY:?}\n      B: x-${GONE?needed}\n      C: ${EMPTY?}\n";
    check_errors(
        yaml,
        &[("EMPTY", "")],
        &[
            "compose.yaml:3:16: error: required variable `TAG` is not set: set TAG",
            "compose.yaml:5:10: error: required variable `EMPTY` is empty",
            "compose.yaml:6:12: error: required variable `GONE` is not set: needed",
        ],
    );
}

#[test]
fn bad_interpolation_syntax() {
    check_errors(
        "services:\n  web:\n    image: busybox\n    command: echo ${A\n    environment: [\"X=${A B}\", \"Y=${}\"]\n",
        &[],
        &[
            "compose.yaml:4:19: error: invalid interpolation format: `${A` has no closing `}`",
            "compose.yaml:5:22: error: invalid interpolation format: unexpected ` ` in `${A B}`",
            "compose.yaml:5:34: error: invalid interpolation format: `${}` has no valid variable name",
        ],
    );
}

#[test]
fn bad_port() {
    check_errors(
        "services:\n  web:\n    image: web\n    ports:\n      - \"70000:80\"\n      - \"80:80:80:80\"\n      - {target: 0}\n      - \"8000-8002:80-81\"\n",
        &[],
        &[
            "compose.yaml:5:9: error: bad port `70000:80`: `70000` is out of range 1-65535",
            "compose.yaml:6:9: error: bad port `80:80:80:80`: too many `:`",
            "compose.yaml:7:18: error: bad port: `0` is out of range 1-65535",
            "compose.yaml:8:9: error: bad port `8000-8002:80-81`: the host and container ranges differ in length",
        ],
    );
}

#[test]
fn bad_protocol() {
    check_errors(
        "services:\n  web:\n    image: web\n    ports:\n      - \"53:53/udpx\"\n      - {target: 80, protocol: http}\n",
        &[],
        &[
            "compose.yaml:5:9: error: bad protocol `udpx` in port `53:53/udpx`",
            "compose.yaml:6:32: error: bad protocol `http`",
        ],
    );
}

#[test]
fn duplicate_key() {
    check_errors(
        "services:\n  web:\n    image: web\n    image: other\n",
        &[],
        &["compose.yaml:4:5: error: invalid YAML: duplicate mapping key `image` is not allowed here"],
    );
}

#[test]
fn alias_bomb_is_stopped_with_a_clear_error() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    yaml.push_str("services:\n  web: {image: web}\n");
    match load_files(&[("compose.yaml", &yaml)], &[], &[]) {
        Ok(_) => panic!("an alias bomb loaded"),
        Err(f) => {
            let e = f.diagnostics.errors().next().expect("an error").clone();
            assert_eq!(
                e.message,
                "the YAML's aliases expand to more than 1000000 events: anchors that reference each other multiply (an alias bomb?)"
            );
            assert!(e.location.is_some());
            assert_eq!(
                e.hint.as_deref(),
                Some("compose-fleet allows at most 1000000 YAML events expanded through aliases; raise the limit with `--limit alias-events=N` or COMPOSE_FLEET_MAX_ALIAS_EVENTS=N")
            );
        }
    }
}

#[test]
fn scale_and_deploy_replicas_in_conflict() {
    check_errors(
        "services:\n  web:\n    image: web\n    scale: 2\n    deploy: {replicas: 3}\n  ok:\n    image: web\n    scale: 2\n    deploy: {replicas: 2}\n",
        &[],
        &["compose.yaml:4:12: error: service `web` sets `scale: 2` and `deploy.replicas: 3`"],
    );
}

#[test]
fn undefined_secret_and_config() {
    check_errors(
        "services:\n  web:\n    image: web\n    secrets: [db_password, {source: api_key}]\n    configs: [nginx]\nsecrets:\n  db_password: {file: ./db.txt}\n",
        &[],
        &[
            "compose.yaml:4:37: error: undefined secret `api_key`",
            "compose.yaml:5:15: error: undefined config `nginx`",
        ],
    );
}

#[test]
fn network_mode_together_with_networks() {
    check_errors(
        "services:\n  web:\n    image: web\n  side:\n    image: envoy\n    network_mode: service:web\n    networks: [default]\n",
        &[],
        &["compose.yaml:7:5: error: service `side` sets both `network_mode` and `networks`"],
    );
}

#[test]
fn no_image_and_no_build() {
    check_errors(
        "services:\n  web:\n    command: [sleep, \"1\"]\n  empty:\n",
        &[],
        &[
            "compose.yaml:4:3: error: service `empty` has neither `image` nor `build`",
            "compose.yaml:2:3: error: service `web` has neither `image` nor `build`",
        ],
    );
    assert!(hint("services:\n  web: {}\n").contains("add `image:"));
}

#[test]
fn a_non_string_service_name() {
    check_errors(
        "services:\n  1:\n    image: web\n  ? [a, b]\n  : {image: web}\n",
        &[],
        &[
            "compose.yaml:2:3: error: a service name must be a string, found an integer",
            "compose.yaml:4:5: error: a service name must be a string, found a sequence",
        ],
    );
    assert_eq!(hint("services:\n  1: {image: web}\n"), "quote it: `\"1\":`");
}

#[test]
fn extends_cycle_names_the_chain() {
    check_errors(
        "services:\n  a:\n    image: web\n    extends: b\n  b:\n    extends: c\n  c:\n    extends: {service: a}\n",
        &[],
        &[
            "compose.yaml:4:5: error: `extends` cycle: a → b → c → a",
            "compose.yaml:6:5: error: `extends` cycle: b → c → a → b",
            "compose.yaml:8:5: error: `extends` cycle: c → a → b → c",
        ],
    );
}

#[test]
fn unknown_keys_get_did_you_mean() {
    let yaml = "servces: {}\nservices:\n  web:\n    imgae: web\n    healthcheck: {intervall: 5s}\n    deploy:\n      replica: 2\n      resources: {limits: {memroy: 1g}}\n    ports: [{target: 80, publshed: 80}]\n    depends_on: {db: {condtion: service_healthy}}\n  db: {image: db}\n";
    match load_files(&[("compose.yaml", yaml)], &[], &[]) {
        Ok(_) => panic!("loaded"),
        Err(f) => {
            let got: Vec<(String, Option<String>)> = f
                .diagnostics
                .errors()
                .map(|d| (d.to_string(), d.label.clone()))
                .collect();
            let want = [
                ("compose.yaml:1:1: error: unknown top-level key `servces`", "services"),
                ("compose.yaml:4:5: error: unknown key `imgae` in service `web`", "image"),
                (
                    "compose.yaml:5:19: error: unknown key `intervall` in the healthcheck of service `web`",
                    "interval",
                ),
                (
                    "compose.yaml:7:7: error: unknown key `replica` in `deploy` of service `web`",
                    "replicas",
                ),
                (
                    "compose.yaml:8:28: error: unknown key `memroy` in `deploy.resources.limits`",
                    "memory",
                ),
                ("compose.yaml:9:26: error: unknown key `publshed` in a port", "published"),
                (
                    "compose.yaml:10:23: error: unknown key `condtion` in a `depends_on` entry",
                    "condition",
                ),
            ];
            let mut want: Vec<(String, Option<String>)> = want
                .iter()
                .map(|(m, s)| (m.to_string(), Some(format!("did you mean `{s}`?"))))
                .collect();
            // The misspelt `image` leaves `web` without one, which is reported too.
            want.push((
                "compose.yaml:3:3: error: service `web` has neither `image` nor `build`".into(),
                None,
            ));
            assert_eq!(got, want);
        }
    }
}

#[test]
fn all_problems_are_reported_in_one_run() {
    check_errors(
        "services:\n  web:\n    image: web\n    ports: [\"99999:80\"]\n    restart: sometimes\n    deploy: {resources: {limits: {memory: 12 parsecs}}}\n    stop_grace_period: forever\n",
        &[],
        &[
            "compose.yaml:4:13: error: bad port `99999:80`: `99999` is out of range 1-65535",
            "compose.yaml:6:43: error: `memory`: `12 parsecs` has an unknown size unit `parsecs` (use b, k, m, g or t)",
            "compose.yaml:7:24: error: `stop_grace_period`: `forever` is not a duration (expected e.g. `30s`, `1m30s` or `500ms`)",
        ],
    );
}

#[test]
fn rendered_like_rustc_with_caret_and_hint() {
    let yaml = "services:\n  web:\n    image: \"web:${TAG:?}\"\n";
    let f = load_files(&[("compose.yaml", yaml)], &[], &[]).expect_err("fails");
    let d = f.diagnostics.errors().next().expect("an error");
    assert_eq!(
        f.sources.render(d),
        "error: required variable `TAG` is not set\n  --> compose.yaml:3:17\n   |\n 3 |     image: \"web:${TAG:?}\"\n   |                 ^^^^^^^^\n   = hint: set `TAG` in the environment, in the project's `.env` file or in a file given with `--env-file`\n"
    );
}

#[test]
fn never_a_panic_on_odd_input() {
    for yaml in [
        "",
        "---\n",
        "[]",
        "services: 3",
        "services: [web]",
        "services:\n  web: [1, 2]\n",
        "services:\n  web:\n    ports: 80\n    volumes: {a: b}\n    environment: 3\n    depends_on: 7\n",
        "services:\n  web:\n    image: web\n    deploy: []\n    healthcheck: x\n",
        "\u{feff}services:\n  wéb:\n    image: \"ünï${Ä}\"\n",
        "services:\n  web:\n    image: \"$\"\n    command: \"${}\"\n",
        "services:\n  web:\n    image: web\n    extends: {file: /nope.yaml, service: x}\n",
        "include: [/p/compose.yaml]\nservices: {}\n",
        "a: &a [*a]\n",
        "{{{",
        "services:\n  web:\n    image: web\n    ports: [\"[::1\", \"1-:2\", \":\", \"/\", \"-\"]\n",
    ] {
        let _ = load_files(&[("compose.yaml", yaml)], &[], &[]);
    }
}

#[test]
fn undefined_named_volume_and_network() {
    check_errors(
        "services:\n  web:\n    image: web\n    volumes: [\"data:/data\", \"./ok:/ok\"]\n    networks: [front]\n",
        &[],
        &[
            "compose.yaml:5:16: error: service `web` uses network `front`, which is not defined",
            "compose.yaml:4:15: error: service `web` uses volume `data`, which is not defined",
        ],
    );
}

#[test]
fn unknown_keys_in_top_level_resources() {
    check_errors(
        "services:\n  web: {image: web}\nnetworks:\n  front: {drivr: bridge}\nvolumes:\n  data: {externl: true}\nsecrets:\n  key: {fil: ./k}\n",
        &[],
        &[
            "compose.yaml:4:11: error: unknown key `drivr` in network `front`",
            "compose.yaml:6:10: error: unknown key `externl` in volume `data`",
            "compose.yaml:8:9: error: unknown key `fil` in secret `key`",
            "compose.yaml:8:8: error: secret `key` says nowhere where its content comes from",
        ],
    );
}

#[test]
fn deeply_nested_input_is_an_error_not_a_crash() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        for depth in [31, 33, 5000] {
            let yaml = format!(
                "x-deep: {}1{}\nservices:\n  web: {{image: web}}\n",
                open.repeat(depth),
                close.repeat(depth)
            );
            let result = load_files(&[("compose.yaml", &yaml)], &[], &[]);
            if depth < 32 {
                assert!(result.is_ok(), "{depth} levels of {open} load");
            } else {
                let f = result.expect_err("too deep");
                let e = f.diagnostics.errors().next().expect("an error");
                assert_eq!(e.message, "the YAML is nested more than 32 levels deep");
                assert!(e.location.is_some());
                assert!(
                    e.hint.as_deref().unwrap_or("").contains("--limit depth=N"),
                    "{:?}",
                    e.hint
                );
            }
        }
    }
}

#[test]
fn include_conflicts_and_missing_extends_targets() {
    let files = [
        (
            "compose.yaml",
            "include: [other.yaml]\nservices:\n  db: {image: mine}\n  web:\n    extends: nothere\n",
        ),
        ("other.yaml", "services:\n  db: {image: theirs}\n"),
    ];
    let f = load_files(&files, &[], &[]).expect_err("fails");
    let errors: Vec<String> = f.diagnostics.errors().map(|d| d.to_string()).collect();
    assert_eq!(
        errors,
        [
            "compose.yaml:3:3: error: `db` is defined both here and in an included file",
            "compose.yaml:5:14: error: service `web` extends `nothere`, which is not defined in the project",
        ]
    );
}

/// Regression (found by `load_props`): a YAML error at the very end of the text had a span past it.
#[test]
fn yaml_error_spans_stay_inside_the_text() {
    for yaml in ["%0", "a: [", "services:\n  web: {", "'"] {
        let f = load_files(&[("compose.yaml", yaml)], &[], &[]).expect_err("invalid YAML");
        for d in f.diagnostics.errors() {
            let loc = d.location.as_ref().expect("located");
            assert!(loc.offset + loc.len <= yaml.len(), "{yaml:?}: {loc:?}");
            let _ = f.sources.render(d);
        }
    }
}

/// Regression (found by the fuzzer): YAML ends a line at a lone `\r` (old Mac line endings), so
/// positions count such lines; the rendered snippet must quote the same line.
#[test]
fn carriage_return_line_endings_point_at_and_quote_the_right_line() {
    let yaml = "services:\r  web:\r    imgae: nginx\r";
    check_errors(
        yaml,
        &[],
        &[
            "compose.yaml:3:5: error: unknown key `imgae` in service `web`",
            "compose.yaml:2:3: error: service `web` has neither `image` nor `build`",
        ],
    );
    let Err(f) = load_files(&[("compose.yaml", yaml)], &[], &[]) else {
        panic!("loaded");
    };
    let first = f.diagnostics.errors().next().expect("an error");
    let shown = f.sources.render(first);
    assert!(
        shown.contains(" 3 |     imgae: nginx\n"),
        "the snippet quotes line 3:\n{shown}"
    );
}

#[test]
fn interpolation_errors_point_at_the_dollar_inside_block_scalars_and_flow_collections() {
    let yaml = "services:\n  web:\n    image: busybox\n    command: |\n      echo start\n      echo ${A:?need A} $(hostname)\n    entrypoint: >\n      sh -c\n        'x ${B'\n    environment: {X: \"$$y\", Y: \"${C:?}\"}\n    labels: [\"a=$5\", \"b=${D:?no D}\"]\n";
    check_errors(
        yaml,
        &[],
        &[
            "compose.yaml:6:12: error: required variable `A` is not set: need A",
            "compose.yaml:9:12: error: invalid interpolation format: `${B'` has no closing `}`",
            "compose.yaml:10:33: error: required variable `C` is not set",
            "compose.yaml:11:25: error: required variable `D` is not set: no D",
        ],
    );
}

#[test]
fn container_name_with_more_than_one_replica() {
    check_errors(
        "services:\n  web:\n    image: busybox\n    container_name: fixed\n    deploy:\n      replicas: 2\n  worker:\n    image: busybox\n    scale: 3\n    container_name: wk\n  one:\n    image: busybox\n    container_name: single\n    deploy: {replicas: 1}\n",
        &[],
        &[
            "compose.yaml:4:21: error: service `web` sets `container_name: fixed` and 2 replicas, but a container name must be unique",
            "compose.yaml:10:21: error: service `worker` sets `container_name: wk` and 3 replicas, but a container name must be unique",
        ],
    );
}

#[test]
fn a_typed_field_whose_variable_is_not_of_its_type() {
    check_errors(
        "services:\n  web:\n    image: busybox\n    tty: ${TTY}\n    deploy:\n      replicas: ${N}\n",
        &[("TTY", "1"), ("N", "many")],
        &[
            "compose.yaml:4:10: error: `services.web.tty` must be a boolean, found `1`",
            "compose.yaml:6:17: error: `services.web.deploy.replicas` must be an integer, found `many`",
        ],
    );
}

#[test]
fn no_follow_on_errors_after_a_duplicate_key_or_a_bad_image() {
    // The base file does not parse: the override alone must not add "has neither image nor build".
    let files = [
        (
            "compose.yaml",
            "services:\n  web:\n    image: busybox\n    image: nginx\n",
        ),
        (
            "override.yaml",
            "services:\n  web:\n    environment: {A: \"1\"}\n",
        ),
    ];
    let f = load_files(&files, &[], &[]).unwrap_err();
    let errors: Vec<String> = f.diagnostics.errors().map(|d| d.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("compose.yaml:4:5: error: "),
        "{errors:#?}"
    );
    assert!(errors[0].contains("duplicate"), "{errors:#?}");
    check_errors(
        "services:\n  web:\n    image: [busybox]\n",
        &[],
        &["compose.yaml:3:12: error: `image` must be a string, found a sequence"],
    );
}

/// Every YAML error in our words: no parser type names or option names reach the user.
#[test]
fn yaml_errors_say_what_where_and_what_to_do() {
    let mut block = String::from("services:\n  web:\n    image: web\nx-deep:\n");
    for i in 0..40 {
        block.push_str(&format!("{}k{i}:\n", "  ".repeat(i + 1)));
    }
    let cases: [(&str, &str, &str); 6] = [
        (&block, "compose.yaml:36:65: error: the YAML is nested more than 32 levels deep", "--limit depth=N"),
        ("services: {}\n---\nservices: {}\n", "compose.yaml:3:1: error: a compose file holds one YAML document, this one has several (`---`)", "remove the `---` line"),
        ("services:\n  web:\n    image: *img\n", "compose.yaml:3:12: error: invalid YAML: an alias (`*name`) refers to an anchor (`&name`) that is not defined", "define the anchor"),
        ("services:\n\tweb: {}\n", "compose.yaml:2:2: error: invalid YAML: tabs disallowed within this context (block indentation)", "replace the tab with spaces"),
        ("services:\n  web:\n    <<: 5\n", "compose.yaml:3:9: error: invalid YAML: a merge key (`<<`) takes a mapping or a list of mappings", "`<<: *anchor`"),
        ("services:\n  web: \"open\n", "compose.yaml:2:8: error: invalid YAML: unclosed quote", "quote the whole value"),
    ];
    for (yaml, want, hint) in cases {
        let f = load_files(&[("compose.yaml", yaml)], &[], &[]).expect_err(want);
        let e = f.diagnostics.errors().next().expect("an error");
        assert_eq!(e.to_string(), want);
        let h = e.hint.clone().unwrap_or_default();
        assert!(h.contains(hint), "{want}: hint {h:?}");
        for internal in [" { ", "Options", "budget", "Depth", "Recorded"] {
            assert!(
                !e.message.contains(internal) && !h.contains(internal),
                "{e}"
            );
        }
    }
}

#[test]
fn empty_and_comment_only_files_are_refused_as_compose_refuses_them() {
    for yaml in ["", "\n  \n", "# only a comment\n\n# another\n", "\u{feff}"] {
        let f = load_files(&[("compose.yaml", yaml)], &[], &[]).expect_err(yaml);
        let errors: Vec<String> = f.diagnostics.errors().map(|d| d.to_string()).collect();
        assert_eq!(
            errors,
            ["compose.yaml:1:1: error: the compose file /p/compose.yaml is empty"]
        );
    }
    check_errors(
        "null\n",
        &[],
        &["compose.yaml:1:1: error: a compose file must be a mapping, found null"],
    );
}

#[test]
fn a_byte_order_mark_is_read_and_utf16_without_one_is_refused() {
    let l = load_files(
        &[("compose.yaml", "\u{feff}services:\n  web: {image: web}\n")],
        &[],
        &[],
    )
    .unwrap_or_else(|f| panic!("{:#?}", super::compose::lines(&f.diagnostics)));
    assert!(l.project.services.contains_key("web"));
    // UTF-16 without a byte-order mark reads as UTF-8 with NULs: refused, as compose refuses it.
    let utf16: String = "services: {}\n".chars().flat_map(|c| [c, '\0']).collect();
    let f = load_files(&[("compose.yaml", &utf16)], &[], &[]).expect_err("utf-16");
    let e = f.diagnostics.errors().next().expect("an error");
    assert_eq!(
        e.to_string(),
        "compose.yaml:1:2: error: invalid YAML: the file contains a NUL character"
    );
    assert!(e.hint.as_deref().unwrap_or("").contains("UTF-16"));
}

#[test]
fn profiles_must_be_a_list_of_names() {
    check_errors(
        "services:\n  a:\n    image: x\n    profiles: 5\n  b:\n    image: x\n    profiles: {x: 1}\n  c:\n    image: x\n    profiles: dev\n  d:\n    image: x\n    profiles: [dev, 5]\n    cap_add: ALL\n",
        &[],
        &[
            "compose.yaml:4:15: error: `profiles` must be a list of names, found an integer",
            "compose.yaml:7:15: error: `profiles` must be a list of names, found a mapping",
            "compose.yaml:10:15: error: `profiles` must be a list of names, found a string",
            "compose.yaml:13:21: error: a profile must be a name, found an integer",
            "compose.yaml:14:14: error: `cap_add` must be a list of names, found a string",
        ],
    );
}

#[test]
fn container_names_compose_refuses() {
    check_errors(
        "services:\n  a:\n    image: x\n    container_name: \"a\"\n  b:\n    image: x\n    container_name: \"-c\"\n  c:\n    image: x\n    container_name: \"é\"\n  ok:\n    image: x\n    container_name: x.y_z-1\n",
        &[],
        &[
            "compose.yaml:4:21: error: `a` is not a valid container name",
            "compose.yaml:7:21: error: `-c` is not a valid container name",
            "compose.yaml:10:21: error: `é` is not a valid container name",
        ],
    );
}

/// A file source of raw bytes: the trait's `read` decodes them as the real one does.
struct BytesFs(std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>);

impl compose_fleet::compose::FileSource for BytesFs {
    fn read_bytes_limited(&self, path: &std::path::Path, _max: u64) -> std::io::Result<Vec<u8>> {
        match self.0.get(path) {
            Some(b) => Ok(b.clone()),
            None => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }
    fn is_file(&self, path: &std::path::Path) -> bool {
        self.0.contains_key(path)
    }
}

#[test]
fn invalid_utf8_is_reported_at_its_line_and_column_and_utf16_with_a_bom_loads() {
    use compose_fleet::compose::{self, Environment, LoadOptions};
    let file = std::path::PathBuf::from("/p/compose.yaml");
    let load = |bytes: Vec<u8>| {
        let fs = BytesFs([(file.clone(), bytes)].into());
        compose::load(&LoadOptions::for_file(&file), &Environment::new(), &fs)
    };
    let f = load(b"services:\n  web:\n    image: x\xff\n".to_vec()).expect_err("invalid UTF-8");
    let errors: Vec<String> = f.diagnostics.errors().map(|d| d.to_string()).collect();
    assert_eq!(
        errors,
        ["compose.yaml:3:13: error: the file is not UTF-8 text: byte 0xff at offset 29 cannot start or continue a character"]
    );
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "services:\n  web:\n    image: x\n".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let l = load(utf16).unwrap_or_else(|f| panic!("{:#?}", super::compose::lines(&f.diagnostics)));
    assert_eq!(l.project.services["web"].image.as_deref(), Some("x"));
}

#[test]
fn legacy_limits_and_their_deploy_spelling_in_conflict() {
    check_errors(
        "services:\n  web:\n    image: x\n    mem_limit: 1g\n    cpus: 1\n    pids_limit: 5\n    mem_reservation: 1g\n    deploy:\n      resources:\n        limits: {memory: 2g, cpus: 2, pids: 6}\n        reservations: {memory: 2g}\n  same:\n    image: x\n    mem_limit: 1g\n    deploy: {resources: {limits: {memory: 1024m}}}\n",
        &[],
        &[
            "compose.yaml:4:16: error: service `web` sets `mem_limit` and `deploy.resources.limits.memory` to different values",
            "compose.yaml:5:11: error: service `web` sets `cpus` and `deploy.resources.limits.cpus` to different values",
            "compose.yaml:6:17: error: service `web` sets `pids_limit` and `deploy.resources.limits.pids` to different values",
            "compose.yaml:7:22: error: service `web` sets `mem_reservation` and `deploy.resources.reservations.memory` to different values",
        ],
    );
}

#[test]
fn string_fields_refuse_numbers_as_compose_does() {
    check_errors(
        "services:\n  web:\n    image: x\n    user: 1000\n    command: [echo, 5]\n    healthcheck: {test: [CMD, \"true\"], interval: 10}\n    environment: {PORT: 80, DEBUG: true}\n    expose: [80]\n",
        &[],
        &[
            "compose.yaml:4:11: error: `user` must be a string, found an integer",
            "compose.yaml:5:21: error: `command` must be a string, found an integer",
            "compose.yaml:6:50: error: `interval` must be a string, found an integer",
        ],
    );
}

/// What compose's schema and loader refuse in keys the fleet keeps verbatim is refused here too,
/// each at the offending value (the differential corpus has one invalid project per class).
#[test]
fn keys_kept_verbatim_are_still_checked_as_compose_checks_them() {
    check_errors(
        "services:\n  a:\n    image: x\n    dns: 8\n    gpus: some\n    pull_policy: sometimes\n    devices: [{target: /dev/a}]\n    healthcheck: {test: [FOO, x]}\n    volumes: [{type: nfs, source: a, target: /a}]\n    build:\n      context: .\n      additional_contexts: {b: \"service:b\"}\n  b:\n    image: x\nvolumes:\n  v: {external: true, driver: local}\nsecrets:\n  s: {file: ./s, environment: X}\n",
        &[],
        &[
            "compose.yaml:4:10: error: `dns` must be a string, found an integer",
            "compose.yaml:5:11: error: `gpus` must be `all` or a list of devices, found `some`",
            "compose.yaml:6:18: error: `sometimes` is not a pull policy",
            "compose.yaml:7:15: error: a device in long syntax needs `source`",
            "compose.yaml:8:25: error: a healthcheck `test` list starts with `FOO`",
            "compose.yaml:9:22: error: `nfs` is not a type of mount",
            "compose.yaml:16:23: error: volume `v` is external and sets `driver`",
            "compose.yaml:18:6: error: secret `s` takes its content from both `file` and `environment`",
            "compose.yaml:11:7: error: the build context `b` of service `a` is `service:b`, which builds no image",
        ],
    );
}

/// Errors in env files point at the offending character, not at the start of its line: the
/// project's `.env`, and a service's `env_file`.
#[test]
fn env_file_errors_point_at_the_offending_character() {
    let errors = |files: &[(&str, &str)]| -> Vec<String> {
        match load_files(files, &[], &[]) {
            Ok(_) => panic!("loaded, but expected an error"),
            Err(f) => f.diagnostics.errors().map(|d| d.to_string()).collect(),
        }
    };
    let yaml = "services:\n  web:\n    image: web\n";
    assert_eq!(
        errors(&[("compose.yaml", yaml), (".env", "TAG=1\nexport MY VAR=2\n")]),
        [".env:2:10: error: `MY VAR` is not a variable name: a name cannot contain a space"]
    );
    let yaml = "services:\n  web:\n    image: web\n    env_file: app.env\n";
    assert_eq!(
        errors(&[("compose.yaml", yaml), ("app.env", "A=1\nB=\"x ${C\"\n")]),
        ["/p/app.env:2:6: error: invalid interpolation format: `${C` has no closing `}`"]
    );
}

/// A service that runs must find its models at the top level, as docker compose requires; a
/// service behind an inactive profile is not checked (compose accepts it).
#[test]
fn undefined_model() {
    check_errors(
        "services:\n  web:\n    image: web\n    models:\n      - llm\n      - chat\n  api:\n    image: api\n    models:\n      embed:\n        endpoint_var: URL\n  dbg:\n    image: dbg\n    profiles: [debug]\n    models: [nope]\nmodels:\n  llm:\n    model: ai/smollm2\n",
        &[],
        &[
            "compose.yaml:6:9: error: service `web` uses model `chat`, which is not defined",
            "compose.yaml:10:7: error: service `api` uses model `embed`, which is not defined",
        ],
    );
}

/// Top-level models as compose's schema has them: a mapping with a string `model`; an integer
/// `context_size`; no unknown keys (`x-*` allowed).
#[test]
fn bad_model_definitions() {
    check_errors(
        "services:\n  web:\n    image: web\nmodels:\n  a: ai/x\n  b: {context_size: 4096}\n  c: {model: 5, context_size: big}\n  d: {model: ai/d, bogus: 1, x-note: ok, runtime_flags: [--fast]}\n",
        &[],
        &[
            "compose.yaml:5:6: error: model `a` must be a mapping, found a string",
            "compose.yaml:6:3: error: model `b` does not say which model to run",
            "compose.yaml:7:14: error: `model` of model `c` must be a string, found an integer",
            "compose.yaml:7:31: error: `context_size` of model `c` must be an integer, found a string",
            "compose.yaml:8:20: error: unknown key `bogus` in model `d`",
        ],
    );
}
