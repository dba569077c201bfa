//! The deployment artifacts under `deploy/`, checked with the tools that
//! read them (`scripts/test.sh` installs the missing ones), each check also
//! shown to reject a broken copy, so a validator that silently does nothing
//! cannot pass:
//!
//! - systemd: `systemd-analyze verify` of the unit (its `ExecStart` pointed
//!   at the built binary) prints nothing, not even an unknown directive;
//!   `systemd-analyze security` rates it safe; the directives the daemon
//!   relies on (restart but not on 64, stop timeout above the grace, reload
//!   by SIGHUP, credentials);
//! - Prometheus: `promtool check rules`, `promtool test rules` (every alert
//!   fires on series made up for it, none on a healthy worker) and `promtool
//!   check config`; the rules name only metrics and label values the binary
//!   exports;
//! - Kubernetes: `kubernetes-validate --strict` (schemas bundled: offline)
//!   of every manifest, and of the `kubectl kustomize` output where kubectl
//!   is installed; the kustomization's files exist, and its templates
//!   ConfigMap holds exactly `templates/`, laid out again by the init
//!   container's own script; the Deployment's probes, security, worker id
//!   and secrets;
//! - Docker (no engine here): the Dockerfile read statically;
//! - every way's configuration, with the variables it sets, loads in the
//!   built binary (`aftercare check`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_aftercare");

/// The metrics the binary exports (a histogram as its three series).
const METRICS: &[&str] = &[
    "aftercare_events_total",
    "aftercare_invalid_events_total",
    "aftercare_emails_total",
    "aftercare_send_duration_seconds_bucket",
    "aftercare_send_duration_seconds_sum",
    "aftercare_send_duration_seconds_count",
    "aftercare_smtp_outcomes_total",
    "aftercare_emails_pending",
    "aftercare_emails_overdue",
    "aftercare_consumer_lag",
    "aftercare_consumer_stalled",
    "aftercare_template_reloads_total",
];
/// The values the binary gives its closed labels.
const LABEL_VALUES: &[(&str, &[&str])] = &[
    (
        "status",
        &[
            "sent",
            "failed",
            "cancelled",
            "suppressed",
            "deferred",
            "retried",
        ],
    ),
    (
        "class",
        &[
            "delivered",
            "transient",
            "ambiguous",
            "permanent",
            "deferred",
        ],
    ),
    ("result", &["ok", "failed"]),
];
/// The alerts the operators were promised.
const ALERTS: &[&str] = &[
    "AftercareConsumerLagGrowing",
    "AftercareEmailsFailing",
    "AftercareDeadLetters",
    "AftercareConsumerStalled",
    "AftercareEmailsOverdue",
    "AftercareInstanceDown",
];
/// Kubernetes versions the manifests are validated against: the oldest we
/// support and the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Runs a tool; a missing one fails the test with where it comes from.
fn run(cmd: &mut Command, install: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{:?}: {e} ({install})", cmd.get_program()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- helpers

/// Every document of a YAML file, as JSON (PyYAML, which kubernetes-validate
/// brings along).
fn yaml_docs(path: &Path) -> Vec<Value> {
    const LOAD: &str = "import json, sys, yaml\n\
        docs = yaml.safe_load_all(open(sys.argv[1], encoding='utf-8'))\n\
        print(json.dumps([d for d in docs if d is not None]))";
    let out = run(
        Command::new("python3").args(["-c", LOAD]).arg(path),
        "python3 with PyYAML: scripts/test.sh installs kubernetes-validate, which brings it",
    );
    assert!(out.status.success(), "{}: {}", path.display(), text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a Vec<Value> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no list at {pointer}"))
}

/// A key of a TOML configuration file, as the binary's own loader reads it.
fn toml_key<T: serde::de::DeserializeOwned>(path: &Path, key: &str) -> T {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    Figment::from(Toml::file_exact(path))
        .extract_inner(key)
        .unwrap_or_else(|e| panic!("{}: {key}: {e}", path.display()))
}

fn toml_duration(path: &Path, key: &str) -> u64 {
    let s: String = toml_key(path, key);
    humantime::parse_duration(&s)
        .unwrap_or_else(|e| panic!("{}: {key} = {s:?}: {e}", path.display()))
        .as_secs()
}

/// `aftercare check` with this configuration file and exactly these
/// variables (nothing from the test's own environment).
fn check_config(config: &Path, env: &BTreeMap<String, String>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .envs(env)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--config")
        .arg(config)
        .arg("check");
    cmd.output().expect("run the aftercare binary")
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

// ---------------------------------------------------------------- systemd

fn unit_text() -> String {
    read(&deploy("systemd/aftercare.service"))
}

/// The unit with its `ExecStart` pointed at the built binary, so that
/// `systemd-analyze verify` finds the executable.
fn unit_with_built_binary(unit: &str) -> String {
    const SHIPPED: &str = "ExecStart=/usr/local/bin/aftercare ";
    assert_eq!(
        unit.lines().filter(|l| l.starts_with(SHIPPED)).count(),
        1,
        "the unit starts /usr/local/bin/aftercare, once"
    );
    unit.lines()
        .map(|l| match l.strip_prefix(SHIPPED) {
            Some(rest) => format!("ExecStart={BIN} {rest}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn systemd_analyze(unit: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aftercare.service");
    write(&path, unit);
    run(
        Command::new("systemd-analyze").args(args).arg(&path),
        "Debian's systemd package: scripts/test.sh installs it",
    )
}

fn verify(unit: &str) -> Output {
    systemd_analyze(unit, &["verify"])
}

/// `systemd-analyze security` exposure at most 2.5 (of 10; "OK").
fn security(unit: &str) -> Output {
    systemd_analyze(unit, &["security", "--offline=yes", "--threshold=25"])
}

/// `[Service]` directives of a unit, in order (a key may repeat).
fn service_directives(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = if line == "[Service]" { "service" } else { "" };
            continue;
        }
        if section == "service" {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn systemd_seconds(value: &str) -> u64 {
    let value = value.trim();
    if let Some(n) = value.strip_suffix("min") {
        return n.trim().parse::<u64>().expect("minutes") * 60;
    }
    value
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("a time span in seconds or minutes: {value}"))
}

#[test]
fn systemd_unit_verifies_cleanly_and_a_broken_one_does_not() {
    let unit = unit_with_built_binary(&unit_text());
    let out = verify(&unit);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify must print nothing:\n{}",
        text(&out)
    );

    // The same tool on a unit with a directive systemd does not know: it
    // exits 0 but warns, and that warning fails the check above.
    let typo = unit.replace("ProtectHome=yes", "ProtectHomes=yes");
    assert_ne!(typo, unit);
    let out = verify(&typo);
    assert!(
        text(&out).contains("Unknown key") && text(&out).contains("ProtectHomes"),
        "verify must flag an unknown directive:\n{}",
        text(&out)
    );
    // And an executable that does not exist.
    let missing = unit.replace(BIN, "/nonexistent/aftercare");
    assert!(!text(&verify(&missing)).trim().is_empty());
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = unit_with_built_binary(&unit_text());
    let out = security(&unit);
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 2.5:\n{}",
        text(&out)
    );

    // Without its sandboxing lines the same unit is rated unsafe.
    let sandbox = [
        "Protect",
        "Private",
        "Restrict",
        "NoNew",
        "Capability",
        "Ambient",
        "System",
        "MemoryDeny",
        "Lock",
        "RemoveIPC",
        "DevicePolicy",
        "DynamicUser",
        "UMask",
        "ProcSubset",
    ];
    let bare: String = unit
        .lines()
        .filter(|l| !sandbox.iter().any(|p| l.starts_with(p)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !security(&bare).status.success(),
        "the threshold must reject a unit without sandboxing"
    );

    let d = service_directives(&unit_text());
    let all = |key: &str| -> Vec<&str> {
        d.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = all(key);
        assert_eq!(v.len(), 1, "{key}= once in [Service]: {v:?}");
        v[0]
    };
    for (key, want) in [
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("StateDirectory", "aftercare"),
        ("ConfigurationDirectory", "aftercare"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("DynamicUser", "yes"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    assert!(all("SystemCallFilter").contains(&"@system-service"));
    assert!(
        one("RestartPreventExitStatus")
            .split_whitespace()
            .any(|s| s == "64"),
        "no restart on exit code 64 (bad configuration)"
    );
    assert!(
        one("ExecStart").ends_with(" run --config /etc/aftercare/aftercare.toml"),
        "the daemon with the installed config"
    );

    // The stop timeout outlasts the drain the config allows.
    let config = deploy("systemd/aftercare.toml");
    let grace = toml_duration(&config, "shutdown_grace");
    let stop = systemd_seconds(one("TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec ({stop}s) must exceed shutdown_grace ({grace}s)"
    );

    // The config writes where the unit lets it, and reads the SMTP password
    // where LoadCredential puts it.
    let data_dir: String = toml_key(&config, "data_dir");
    assert_eq!(
        data_dir, "/var/lib/aftercare",
        "data_dir is the StateDirectory"
    );
    let store: String = toml_key(&config, "store.url");
    assert!(store.starts_with("sqlite:/var/lib/aftercare/"), "{store}");
    let credential = one("LoadCredential");
    let (name, source) = credential.split_once(':').expect("NAME:PATH");
    assert!(source.starts_with("/etc/aftercare/"), "{source}");
    let password_file: String = toml_key(&config, "mailer.smtp.password_file");
    assert_eq!(
        password_file,
        format!("/run/credentials/aftercare.service/{name}")
    );
    assert!(
        one("EnvironmentFile").starts_with("-/etc/aftercare/"),
        "optional secrets file in /etc/aftercare"
    );
}

/// `KEY=VALUE` lines of an environment file, quotes removed as systemd does
/// for a value in single quotes.
fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE");
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            assert!(!v.contains('\\'), "{k}: systemd would eat a backslash");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn systemd_config_and_secrets_file_load_in_the_binary() {
    let work = tempfile::tempdir().unwrap();
    let password = work.path().join("smtp-password");
    write(&password, "placeholder\n");
    let mut env = env_file(&deploy("systemd/aftercare.env.example"));
    assert!(env.contains_key("AFTERCARE_UNSUBSCRIBE__SECRET"), "{env:?}");
    assert!(
        env.contains_key("AFTERCARE_SOURCE__KAFKA__OPTIONS"),
        "{env:?}"
    );
    // The installed paths, here: the repository's templates, a temporary
    // state directory, a password where the credential would be.
    env.insert(
        "AFTERCARE_TEMPLATES_DIR".into(),
        repo().join("templates").display().to_string(),
    );
    env.insert(
        "AFTERCARE_DATA_DIR".into(),
        work.path().display().to_string(),
    );
    env.insert(
        "AFTERCARE_MAILER__SMTP__PASSWORD_FILE".into(),
        password.display().to_string(),
    );
    let config = deploy("systemd/aftercare.toml");
    let out = check_config(&config, &env);
    assert!(out.status.success(), "aftercare check:\n{}", text(&out));

    // The check reads the variables: an unknown AFTERCARE_* key stops it.
    env.insert("AFTERCARE_SMTP_PASSWORD".into(), "x".into());
    let out = check_config(&config, &env);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

// ------------------------------------------------------------- Prometheus

fn promtool(args: &[&str], file: &Path) -> Output {
    run(
        Command::new("promtool").args(args).arg(file),
        "promtool, from Debian's prometheus package: scripts/test.sh installs it",
    )
}

/// A copy of `deploy/prometheus` in a temporary folder, `edit` applied to
/// one of its files.
fn prometheus_copy(file: &str, edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in files_under(&deploy("prometheus")) {
        let mut body = read(&deploy("prometheus").join(&name));
        if name == file {
            let edited = edit(&body);
            assert_ne!(edited, body, "the edit of {file} changed nothing");
            body = edited;
        }
        write(&dir.path().join(&name), &body);
    }
    dir
}

#[test]
fn alert_rules_pass_promtool_and_broken_ones_do_not() {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool(&["check", "rules"], &rules);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );

    let broken = prometheus_copy("alerts.yml", |s| {
        s.replacen(
            "expr: up{job=\"aftercare\"} == 0",
            "expr: up{job=\"aftercare\" == 0",
            1,
        )
    });
    let out = promtool(&["check", "rules"], &broken.path().join("alerts.yml"));
    assert!(
        !out.status.success(),
        "bad PromQL accepted:\n{}",
        text(&out)
    );
}

#[test]
fn alerts_fire_in_promtool_unit_tests() {
    let out = promtool(&["test", "rules"], &deploy("prometheus/alerts.test.yml"));
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));

    // An alert made 10 minutes slower no longer fires when the tests say.
    let slow = prometheus_copy("alerts.yml", |s| {
        s.replacen(
            "expr: max(aftercare_emails_overdue) > 0\n        for: 15m",
            "expr: max(aftercare_emails_overdue) > 0\n        for: 25m",
            1,
        )
    });
    let out = promtool(&["test", "rules"], &slow.path().join("alerts.test.yml"));
    assert!(
        !out.status.success(),
        "a slower alert passed:\n{}",
        text(&out)
    );
}

#[test]
fn scrape_config_passes_promtool() {
    let out = promtool(&["check", "config"], &deploy("prometheus/prometheus.yml"));
    assert!(
        out.status.success(),
        "promtool check config:\n{}",
        text(&out)
    );

    let broken = prometheus_copy("prometheus.yml", |s| {
        s.replacen("static_configs:", "static_config:", 1)
    });
    let out = promtool(&["check", "config"], &broken.path().join("prometheus.yml"));
    assert!(
        !out.status.success(),
        "a misspelt key passed:\n{}",
        text(&out)
    );
}

/// `name="a"` or `name=~"a|b"` matchers in a PromQL expression: the values.
fn label_values(expr: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for op in ["=\"", "=~\"", "!=\"", "!~\""] {
        let needle = format!("{label}{op}");
        let mut rest = expr;
        while let Some(i) = rest.find(&needle) {
            let before = rest[..i].chars().last();
            rest = &rest[i + needle.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // another label ending in this name
            }
            let end = rest.find('"').expect("closing quote");
            out.extend(rest[..end].split('|').map(str::to_owned));
            rest = &rest[end..];
        }
    }
    out
}

/// Metric names, recorded series and label values in an expression that
/// neither the binary nor the rules produce.
fn unknown_names(expr: &str, recorded: &BTreeSet<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for token in expr.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if token.starts_with("aftercare_") && !METRICS.contains(&token) {
            out.push(format!("metric {token}"));
        } else if token.starts_with("aftercare:") && !recorded.contains(token) {
            out.push(format!("unrecorded {token}"));
        }
    }
    for (label, allowed) in LABEL_VALUES {
        for value in label_values(expr, label) {
            if !allowed.contains(&value.as_str()) {
                out.push(format!("{label}=\"{value}\""));
            }
        }
    }
    out
}

#[test]
fn alert_rules_use_the_binarys_metrics_and_say_what_to_do() {
    let doc = yaml_doc(&deploy("prometheus/alerts.yml"));
    let rules: Vec<&Value> = array_at(&doc, "/groups")
        .iter()
        .flat_map(|g| array_at(g, "/rules"))
        .collect();
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter_map(|r| r.get("record").and_then(Value::as_str))
        .collect();
    let alerts: BTreeMap<&str, &Value> = rules
        .iter()
        .filter_map(|r| Some((r.get("alert")?.as_str()?, *r)))
        .collect();
    for name in ALERTS {
        assert!(alerts.contains_key(name), "alert {name} missing");
    }
    for rule in &rules {
        let expr = str_at(rule, "/expr");
        let problems = unknown_names(expr, &recorded);
        assert!(problems.is_empty(), "{problems:?} in {expr}");
    }
    // The same check on names the binary does not export.
    let typos = unknown_names(
        r#"rate(aftercare_email_total{status="bounced"}[5m]) > aftercare:nothing"#,
        &recorded,
    );
    assert_eq!(typos.len(), 3, "{typos:?}");
    for (name, alert) in &alerts {
        let severity = str_at(alert, "/labels/severity");
        assert!(["page", "ticket"].contains(&severity), "{name}: {severity}");
        for key in ["summary", "description"] {
            let text = str_at(alert, &format!("/annotations/{key}"));
            assert!(text.len() > 20, "{name}: a real {key}");
        }
    }

    // Each alert has a unit test in which it fires.
    let tests = yaml_doc(&deploy("prometheus/alerts.test.yml"));
    let fired: BTreeSet<&str> = array_at(&tests, "/tests")
        .iter()
        .flat_map(|t| array_at(t, "/alert_rule_test"))
        .filter(|c| {
            c.get("exp_alerts")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        })
        .map(|c| str_at(c, "/alertname"))
        .collect();
    for name in alerts.keys() {
        assert!(fired.contains(name), "no test shows {name} firing");
    }
}

// ------------------------------------------------------------- Kubernetes

fn kubernetes_validate(files: &[PathBuf], version: &str) -> Output {
    run(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(files),
        "kubernetes-validate from PyPI: scripts/test.sh installs it",
    )
}

fn kustomization() -> Value {
    yaml_doc(&deploy("kubernetes/kustomization.yaml"))
}

fn kustomize_resources() -> Vec<PathBuf> {
    array_at(&kustomization(), "/resources")
        .iter()
        .map(|r| deploy("kubernetes").join(r.as_str().expect("a path")))
        .collect()
}

/// `(key, path relative to deploy/kubernetes)` of a configMapGenerator.
fn generator_files(name: &str) -> Vec<(String, String)> {
    let k = kustomization();
    let generator = array_at(&k, "/configMapGenerator")
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("configMapGenerator {name}"));
    array_at(generator, "/files")
        .iter()
        .map(|f| {
            let f = f.as_str().expect("a file");
            match f.split_once('=') {
                Some((key, path)) => (key.to_owned(), path.to_owned()),
                None => (
                    Path::new(f).file_name().unwrap().to_string_lossy().into(),
                    f.to_owned(),
                ),
            }
        })
        .collect()
}

fn manifest(file: &str) -> Value {
    yaml_doc(&deploy("kubernetes").join(file))
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    array_at(pod, &format!("/spec/template/spec/{list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{list} {name}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let mut files = kustomize_resources();
    files.push(deploy("kubernetes/secret.example.yaml"));
    for version in KUBERNETES_VERSIONS {
        let out = kubernetes_validate(&files, version);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{}",
            text(&out)
        );
    }

    // A field the Deployment schema does not have is rejected.
    let work = tempfile::tempdir().unwrap();
    let broken = work.path().join("deployment.yaml");
    let body = read(&deploy("kubernetes/deployment.yaml"));
    let edited = body.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGraceSeconds: 45\n      terminationGracePeriodSeconds:",
        1,
    );
    assert_ne!(edited, body);
    write(&broken, &edited);
    let out = kubernetes_validate(&[broken], KUBERNETES_VERSIONS[1]);
    assert!(
        !out.status.success(),
        "unknown field accepted:\n{}",
        text(&out)
    );

    // The whole kustomization as it would be applied (generated ConfigMaps,
    // hashed names, the image), where kubectl is installed.
    let kubectl = Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(deploy("kubernetes"))
        .output();
    match kubectl {
        Err(e) => eprintln!("kubectl not found ({e}): the kustomize output is not validated"),
        Ok(out) => {
            assert!(out.status.success(), "kubectl kustomize:\n{}", text(&out));
            let rendered = work.path().join("rendered.yaml");
            fs::write(&rendered, &out.stdout).unwrap();
            for version in KUBERNETES_VERSIONS {
                let out = kubernetes_validate(std::slice::from_ref(&rendered), version);
                assert!(
                    out.status.success(),
                    "kustomize output, kubernetes-validate {version}:\n{}",
                    text(&out)
                );
            }
            let docs = yaml_docs(&rendered);
            let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
            assert!(
                !kinds.contains(&"Secret"),
                "no Secret is applied: {kinds:?}"
            );
            let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
            let image = str_at(container(deployment, "containers", "aftercare"), "/image");
            assert!(
                image.contains('/') && image.contains(':'),
                "image set: {image}"
            );
            for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
                let name = str_at(d, "/metadata/name");
                assert!(
                    serde_json::to_string(deployment).unwrap().contains(name),
                    "the Deployment mounts {name}"
                );
            }
        }
    }
}

#[test]
fn kustomization_names_files_that_exist_and_every_template() {
    let secret = deploy("kubernetes/secret.example.yaml");
    for path in kustomize_resources() {
        assert!(path.is_file(), "resource {} missing", path.display());
        assert_ne!(path, secret, "the example Secret must not be applied");
        for doc in yaml_docs(&path) {
            assert_ne!(doc["kind"], "Secret", "{}: no Secret here", path.display());
            assert!(
                doc.pointer("/metadata/namespace").is_none(),
                "{}: namespace-less",
                path.display()
            );
        }
    }
    let config = generator_files("aftercare-config");
    for (_, path) in &config {
        assert!(deploy("kubernetes").join(path).is_file(), "{path} missing");
    }

    // The templates ConfigMap: exactly the files of templates/, each under
    // its path with "/" written "__".
    let listed: BTreeMap<String, String> =
        generator_files("aftercare-templates").into_iter().collect();
    let mut expected = BTreeMap::new();
    for rel in files_under(&repo().join("templates")) {
        assert!(
            !rel.contains("__"),
            "templates/{rel}: \"__\" cannot be mapped to a key"
        );
        expected.insert(rel.replace('/', "__"), format!("../../templates/{rel}"));
    }
    let stale: Vec<_> = expected
        .iter()
        .filter(|(k, v)| listed.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}={v}"))
        .chain(
            listed
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .cloned(),
        )
        .collect();
    assert!(
        stale.is_empty(),
        "the templates ConfigMap is out of date (run deploy/kubernetes/update-templates.sh): {stale:?}"
    );
    for key in listed.keys() {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "{key}: not a ConfigMap key"
        );
    }
}

/// The Deployment's variables for the aftercare container, as Kubernetes
/// would set them: secrets from the example Secret, the pod name made up,
/// `$(VAR)` expanded from the variables before it.
fn deployment_env(deployment: &Value) -> BTreeMap<String, String> {
    let secret = manifest("secret.example.yaml");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for var in array_at(container(deployment, "containers", "aftercare"), "/env") {
        let name = str_at(var, "/name").to_owned();
        let value = if let Some(value) = var.get("value").and_then(Value::as_str) {
            let mut out = String::new();
            let mut rest = value;
            while let Some(i) = rest.find("$(") {
                out.push_str(&rest[..i]);
                let end = rest[i..].find(')').expect("$(VAR)") + i;
                let referenced = &rest[i + 2..end];
                let v = env
                    .get(referenced)
                    .unwrap_or_else(|| panic!("{name}: $({referenced}) is not defined before it"));
                out.push_str(v);
                rest = &rest[end + 1..];
            }
            out + rest
        } else if let Some(s) = var.pointer("/valueFrom/secretKeyRef") {
            assert_eq!(
                str_at(s, "/name"),
                "aftercare",
                "{name}: the Secret aftercare"
            );
            assert!(
                s.get("optional").is_none_or(|o| o == false),
                "{name}: required"
            );
            let key = str_at(s, "/key");
            str_at(&secret, &format!("/stringData/{key}")).to_owned()
        } else if let Some(f) = var.pointer("/valueFrom/fieldRef") {
            assert_eq!(str_at(f, "/fieldPath"), "metadata.name", "{name}");
            "aftercare-6c9f7d8b5-x2x9z".to_owned()
        } else {
            panic!("{name}: a value, a secretKeyRef or the pod name");
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn kubernetes_deployment_keeps_the_contract() {
    let deployment = manifest("deployment.yaml");
    let pod = &deployment["spec"]["template"];
    let main = container(&deployment, "containers", "aftercare");
    let config = deploy("kubernetes/aftercare.toml");

    assert_eq!(deployment["spec"]["replicas"], 2);
    let labels = &pod["metadata"]["labels"];
    for (k, v) in deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[k], v, "the selector matches the pods");
    }

    // The drain fits in the grace period.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let drain = toml_duration(&config, "shutdown_grace");
    assert!(
        grace > 30 && grace > drain,
        "terminationGracePeriodSeconds {grace}"
    );

    // Probes on the port the config listens on.
    let listen: String = toml_key(&config, "http.listen");
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(port, 8080, "http.listen {listen}");
    let ports = array_at(main, "/ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "http" && p["containerPort"] == port)
    );
    assert_eq!(str_at(main, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(str_at(main, "/readinessProbe/httpGet/path"), "/readyz");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(main[probe]["httpGet"]["port"], "http", "{probe}");
    }
    // The probes fit the HTTP server's timeouts (the file's, or the
    // embedded defaults): a probe sends its request at once, so a header
    // timeout of a second or more never cuts it, and one that waits the
    // whole timeoutSeconds is still within request_timeout.
    let http = |key: &str| {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        let s: String = Figment::from(Toml::string(aftercare::config::DEFAULT_TOML))
            .merge(Toml::file_exact(&config))
            .extract_inner(key)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        humantime::parse_duration(&s).unwrap()
    };
    let (header, request) = (http("http.header_timeout"), http("http.request_timeout"));
    assert!(header.as_secs() >= 1, "http.header_timeout {header:?}");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let timeout = main[probe]["timeoutSeconds"].as_u64().unwrap();
        assert!(
            timeout < request.as_secs(),
            "{probe}: timeoutSeconds {timeout} within http.request_timeout {request:?}"
        );
    }
    let args: Vec<&str> = array_at(main, "/args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/aftercare/aftercare.toml"]);

    // Non-root, read-only, no capabilities: every container.
    let security = &pod["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(
        security["runAsUser"].as_u64(),
        Some(dockerfile_user()),
        "the image's USER"
    );
    for list in ["initContainers", "containers"] {
        for c in array_at(pod, &format!("/spec/{list}")) {
            let s = &c["securityContext"];
            let name = str_at(c, "/name");
            assert_eq!(s["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(s["allowPrivilegeEscalation"], false, "{name}");
            assert!(
                array_at(s, "/capabilities/drop").contains(&Value::from("ALL")),
                "{name}: drop ALL"
            );
            assert!(
                c.pointer("/resources/limits/memory").is_some(),
                "{name}: limits"
            );
        }
    }

    // The config and the templates read-only, from the generated ConfigMaps.
    let volumes = array_at(pod, "/spec/volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(volume("config")["configMap"]["name"], "aftercare-config");
    assert_eq!(
        volume("templates-configmap")["configMap"]["name"],
        "aftercare-templates"
    );
    let templates_dir: String = toml_key(&config, "templates_dir");
    for (mount, path) in [
        ("config", "/etc/aftercare"),
        ("templates", templates_dir.as_str()),
    ] {
        let m = array_at(main, "/volumeMounts")
            .iter()
            .find(|m| m["name"] == mount)
            .unwrap_or_else(|| panic!("mount {mount}"));
        assert_eq!(m["mountPath"], path);
        assert_eq!(m["readOnly"], true, "{mount} read-only");
    }

    // Per pod: the worker id. Shared: the PostgreSQL store. Every secret from
    // the Secret "aftercare", whose example holds exactly the keys used.
    let env = deployment_env(&deployment);
    let worker = array_at(main, "/env")
        .iter()
        .find(|v| v["name"] == "AFTERCARE_WORKER_ID")
        .expect("AFTERCARE_WORKER_ID");
    assert_eq!(
        str_at(worker, "/valueFrom/fieldRef/fieldPath"),
        "metadata.name"
    );
    assert!(
        env["AFTERCARE_STORE__URL"].starts_with("postgres://"),
        "several replicas: PostgreSQL"
    );
    let password_env: String = toml_key(&config, "mailer.smtp.password_env");
    assert!(
        !password_env.starts_with("AFTERCARE_"),
        "{password_env}: AFTERCARE_* variables are configuration keys"
    );
    assert!(env.contains_key(&password_env), "{password_env} is set");
    let used: BTreeSet<&str> = array_at(main, "/env")
        .iter()
        .filter_map(|v| v.pointer("/valueFrom/secretKeyRef/key")?.as_str())
        .collect();
    let secret = manifest("secret.example.yaml");
    let example: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        used, example,
        "the example Secret has the keys the Deployment reads"
    );
    for (key, value) in secret["stringData"].as_object().unwrap() {
        assert!(
            value.as_str().unwrap().contains("REPLACE-ME"),
            "{key}: a placeholder only"
        );
    }

    // Service and PodDisruptionBudget select these pods; port 8080.
    let service = manifest("service.yaml");
    let pdb = manifest("poddisruptionbudget.yaml");
    for (what, selector) in [
        ("Service", &service["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &pdb["spec"]["selector"]["matchLabels"],
        ),
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{what} selects the pods");
        }
    }
    assert!(
        array_at(&service, "/spec/ports")
            .iter()
            .any(|p| p["port"] == 8080)
    );
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // The image the kustomization sets is the one the containers name.
    let k = kustomization();
    let image = str_at(main, "/image");
    assert!(array_at(&k, "/images").iter().any(|i| i["name"] == image));
}

#[test]
fn kubernetes_templates_laid_out_and_config_loads_in_the_binary() {
    let deployment = manifest("deployment.yaml");
    let init = container(&deployment, "initContainers", "templates");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("configmap");
    let dst = work.path().join("templates");
    let data = work.path().join("data");
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&data).unwrap();

    // A ConfigMap volume as the kubelet writes it: the files in a hidden
    // folder, each key a symbolic link to its file.
    let hidden = src.join("..data");
    fs::create_dir_all(&hidden).unwrap();
    for (key, path) in generator_files("aftercare-templates") {
        fs::copy(deploy("kubernetes").join(&path), hidden.join(&key)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{key}"), src.join(&key)).unwrap();
    }

    // The init container's own command, with its SRC and DST here.
    let command: Vec<&str> = array_at(init, "/command")
        .iter()
        .chain(array_at(init, "/args"))
        .map(|v| v.as_str().unwrap())
        .collect();
    let mounts = array_at(init, "/volumeMounts");
    for var in ["SRC", "DST"] {
        let declared = array_at(init, "/env")
            .iter()
            .find(|e| e["name"] == var)
            .map(|e| str_at(e, "/value"))
            .unwrap_or_else(|| panic!("{var}"));
        assert!(
            mounts.iter().any(|m| m["mountPath"] == declared),
            "{var}={declared} is a mount"
        );
    }
    let out = Command::new(command[0])
        .args(&command[1..])
        .env("SRC", &src)
        .env("DST", &dst)
        .output()
        .expect("/bin/sh");
    assert!(out.status.success(), "init script:\n{}", text(&out));
    let templates = repo().join("templates");
    assert_eq!(files_under(&dst), files_under(&templates), "the same tree");
    for rel in files_under(&templates) {
        assert_eq!(
            fs::read(dst.join(&rel)).unwrap(),
            fs::read(templates.join(&rel)).unwrap(),
            "{rel}"
        );
        assert!(!dst.join(&rel).is_symlink(), "{rel}: copied, not linked");
    }

    // The ConfigMap's config, the Deployment's variables, the laid-out
    // templates: `aftercare check` accepts them.
    let mut env = deployment_env(&deployment);
    env.insert("AFTERCARE_TEMPLATES_DIR".into(), dst.display().to_string());
    env.insert("AFTERCARE_DATA_DIR".into(), data.display().to_string());
    let config = deploy("kubernetes/aftercare.toml");
    let out = check_config(&config, &env);
    assert!(out.status.success(), "aftercare check:\n{}", text(&out));
}

// ----------------------------------------------------------------- Docker

struct Instruction {
    line: usize,
    op: String,
    args: String,
}

struct Stage {
    name: Option<String>,
    image: String,
    body: Vec<Instruction>,
}

/// Instructions of a Dockerfile: continuation lines joined, comments and
/// blank lines left out, the operator upper-cased.
fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in dockerfile.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push(Instruction {
            line: start,
            op: op.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// `${NAME}` replaced by the default of a global `ARG NAME=default`.
fn substitute(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_owned();
    for (k, v) in args {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}

fn stages(dockerfile: &str) -> (Vec<Stage>, Vec<String>) {
    let mut problems = Vec::new();
    let mut globals = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions(dockerfile) {
        if ins.op == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let image = substitute(words.first().copied().unwrap_or(""), &globals);
            let name = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => {
                    problems.push(format!("line {}: FROM {}", ins.line, ins.args));
                    None
                }
            };
            stages.push(Stage {
                name,
                image,
                body: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.body.push(ins);
        } else if ins.op == "ARG" {
            if let Some((k, v)) = ins.args.split_once('=') {
                globals.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        } else {
            problems.push(format!("line {}: {} before FROM", ins.line, ins.op));
        }
    }
    (stages, problems)
}

/// `(flags, sources, destination)` of a COPY or ADD, shell or JSON form.
fn copy_parts(args: &str) -> (Vec<String>, Vec<String>, String) {
    let words: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    let flags: Vec<String> = words
        .iter()
        .take_while(|w| w.starts_with("--"))
        .cloned()
        .collect();
    let rest = words[flags.len()..].join(" ");
    let mut paths: Vec<String> = if rest.starts_with('[') {
        serde_json::from_str(&rest).unwrap_or_default()
    } else {
        rest.split_whitespace().map(str::to_owned).collect()
    };
    let dest = paths.pop().unwrap_or_default();
    (flags, paths, dest)
}

fn json_words(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// What is wrong with a Dockerfile, read statically: the stages, the user,
/// the sources it copies (they exist, and the dockerignore lets them in),
/// the build and the runtime packages, the command.
fn dockerfile_problems(dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let (stages, mut problems) = stages(dockerfile);
    let mut bad = |s: String| problems.push(s);
    if stages.len() < 2 {
        bad(format!(
            "{} stage(s): a builder and a runtime stage wanted",
            stages.len()
        ));
        return problems;
    }
    let builder = &stages[0];
    let runtime = stages.last().unwrap();
    if builder
        .name
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("builder")
    {
        bad("the first stage is not `AS builder`".into());
    }
    if !builder.image.starts_with("rust:") || !builder.image.contains("bookworm") {
        bad(format!(
            "builder FROM {}: rust:*-bookworm wanted",
            builder.image
        ));
    }
    if runtime.image != "debian:bookworm-slim" {
        bad(format!(
            "runtime FROM {}: debian:bookworm-slim wanted",
            runtime.image
        ));
    }

    // The context: everything the dockerignore lets in.
    let mut patterns = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    if patterns.next() != Some("*") {
        bad("the dockerignore must start with `*` (an allow list)".into());
    }
    let allowed: Vec<&str> = patterns.filter_map(|p| p.strip_prefix('!')).collect();
    let in_context = |src: &str| {
        allowed
            .iter()
            .any(|a| src == *a || src.starts_with(&format!("{a}/")))
    };

    let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    for (n, stage) in stages.iter().enumerate() {
        for ins in &stage.body {
            let at = format!("line {}", ins.line);
            match ins.op.as_str() {
                "ADD" => {
                    let (_, sources, _) = copy_parts(&ins.args);
                    if sources
                        .iter()
                        .any(|s| s.contains("://") || s.starts_with("git@"))
                    {
                        bad(format!("{at}: ADD from the network"));
                    }
                    bad(format!("{at}: ADD (use COPY)"));
                }
                "COPY" => {
                    let (flags, sources, _) = copy_parts(&ins.args);
                    if let Some(from) = flags.iter().find_map(|f| f.strip_prefix("--from=")) {
                        if !names[..n.min(names.len())].contains(&from) {
                            bad(format!("{at}: --from={from} is no earlier stage"));
                        }
                        continue;
                    }
                    for src in sources {
                        let src = src.trim_start_matches("./").trim_end_matches('/');
                        if !repo().join(src).exists() {
                            bad(format!("{at}: COPY {src}: no such file in the repository"));
                        } else if !in_context(src) {
                            bad(format!("{at}: COPY {src}: left out by the dockerignore"));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    let runs = |stage: &Stage| -> String {
        stage
            .body
            .iter()
            .filter(|i| i.op == "RUN")
            .map(|i| i.args.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !runs(builder).contains("cargo build --release --locked") {
        bad("the builder does not run `cargo build --release --locked`".into());
    }
    let runtime_runs = runs(runtime);
    for package in ["ca-certificates", "libssl3", "zlib1g"] {
        if !runtime_runs.split_whitespace().any(|w| w == package) {
            bad(format!("the runtime stage does not install {package}"));
        }
    }
    if runtime_runs
        .split_whitespace()
        .any(|w| w.ends_with("-dev") || w == "build-essential")
    {
        bad("build packages in the runtime stage".into());
    }

    // The user of the final stage: numeric (Kubernetes checks runAsNonRoot
    // against it), not root.
    match runtime.body.iter().rev().find(|i| i.op == "USER") {
        None => bad("the runtime stage has no USER: it would run as root".into()),
        Some(user) => {
            let uid = user.args.split(':').next().unwrap_or("");
            if uid == "root" || uid == "0" || uid.parse::<u32>().is_err() {
                bad(format!(
                    "USER {}: a numeric non-root user wanted",
                    user.args
                ));
            }
        }
    }

    let last = |op: &str| runtime.body.iter().rev().find(|i| i.op == op);
    let copied_to: Vec<String> = runtime
        .body
        .iter()
        .filter(|i| i.op == "COPY")
        .map(|i| copy_parts(&i.args).2)
        .collect();
    match last("ENTRYPOINT").and_then(|i| json_words(&i.args)) {
        Some(words) if copied_to.contains(&words[0]) => {}
        _ => bad("ENTRYPOINT: the copied binary, in exec (JSON) form".into()),
    }
    match last("CMD").and_then(|i| json_words(&i.args)) {
        Some(words) => {
            let config = words
                .iter()
                .position(|w| w == "--config")
                .and_then(|i| words.get(i + 1));
            if words.first().map(String::as_str) != Some("run")
                || !config.is_some_and(|c| copied_to.contains(c))
            {
                bad(format!(
                    "CMD {words:?}: `run --config <a copied file>` wanted"
                ));
            }
        }
        None => bad("CMD: exec (JSON) form wanted".into()),
    }
    if !last("EXPOSE").is_some_and(|i| {
        i.args
            .split_whitespace()
            .any(|p| p == "8080" || p == "8080/tcp")
    }) {
        bad("EXPOSE 8080 missing".into());
    }
    if last("STOPSIGNAL").map(|i| i.args.as_str()) != Some("SIGTERM") {
        bad("STOPSIGNAL SIGTERM missing".into());
    }
    problems
}

fn dockerfile() -> (String, String) {
    (
        read(&deploy("docker/Dockerfile")),
        read(&deploy("docker/Dockerfile.dockerignore")),
    )
}

/// The numeric user the image runs as.
fn dockerfile_user() -> u64 {
    let (text, _) = dockerfile();
    let (stages, _) = stages(&text);
    let user = stages
        .last()
        .and_then(|s| s.body.iter().rev().find(|i| i.op == "USER"))
        .expect("USER");
    user.args
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER")
}

#[test]
fn dockerfile_reads_right_and_broken_ones_do_not() {
    let (text, ignore) = dockerfile();
    let problems = dockerfile_problems(&text, &ignore);
    assert!(
        problems.is_empty(),
        "deploy/docker/Dockerfile: {problems:#?}"
    );

    let broken = [
        ("root at the end", format!("{text}USER root\n"), "USER root"),
        ("no user", text.replace("USER 10001:10001\n", ""), "no USER"),
        (
            "a download",
            text.replace(
                "COPY --from=builder",
                "ADD https://example.com/tool /usr/local/bin/tool\nCOPY --from=builder",
            ),
            "network",
        ),
        (
            "a missing source",
            text.replace("COPY config ./config", "COPY configs ./config"),
            "no such file",
        ),
        (
            "a source the dockerignore leaves out",
            text.replace("COPY config ./config", "COPY README.md ./config"),
            "dockerignore",
        ),
        (
            "one stage",
            text.split("# ---- runtime").next().unwrap().to_owned(),
            "stage",
        ),
        (
            "build tools at run time",
            text.replace(
                "ca-certificates libssl3 zlib1g",
                "ca-certificates libssl3 zlib1g libssl-dev",
            ),
            "build packages",
        ),
    ];
    for (what, body, expect) in broken {
        assert_ne!(body, text, "{what}: the edit changed nothing");
        let problems = dockerfile_problems(&body, &ignore);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem with {expect:?}, got {problems:#?}"
        );
    }
}

#[test]
fn image_build_context_holds_what_the_build_reads() {
    // The builder copies these; everything cargo compiles must be inside
    // them: `include_str!`/`include_bytes!` paths and the manifest's targets.
    let (text, _) = dockerfile();
    let (stages, _) = stages(&text);
    let copied: Vec<PathBuf> = stages[0]
        .body
        .iter()
        .filter(|i| i.op == "COPY")
        .flat_map(|i| copy_parts(&i.args).1)
        .map(|s| repo().join(s).canonicalize().unwrap())
        .collect();
    let inside = |p: &Path| copied.iter().any(|c| p.starts_with(c));

    let src = repo().join("src");
    for rel in files_under(&src) {
        let file = src.join(&rel);
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let code = read(&file);
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (i, _) in code.match_indices(mac) {
                let lit = &code[i + mac.len()..];
                let lit = &lit[..lit.find('"').unwrap()];
                let target = file.parent().unwrap().join(lit);
                let target = target
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("src/{rel}: {lit}: {e}"));
                assert!(
                    inside(&target),
                    "src/{rel} includes {lit}, which the Dockerfile does not copy"
                );
            }
        }
    }
    for line in read(&repo().join("Cargo.toml")).lines() {
        if let Some(rest) = line.trim().strip_prefix("path = \"") {
            let path = repo().join(&rest[..rest.find('"').unwrap()]);
            assert!(inside(&path.canonicalize().unwrap()), "{line}: not copied");
        }
    }
}

#[test]
fn image_runtime_installs_the_libraries_the_binary_links() {
    // Debian packages of the shared libraries the binary may link; the
    // ones of debian:bookworm-slim's base are None.
    const PACKAGES: &[(&str, Option<&str>)] = &[
        ("linux-vdso.so", None),
        ("ld-linux", None),
        ("libc.so", None),
        ("libm.so", None),
        ("libdl.so", None),
        ("librt.so", None),
        ("libpthread.so", None),
        ("libgcc_s.so", None),
        ("libz.so", Some("zlib1g")),
        ("libssl.so.3", Some("libssl3")),
        ("libcrypto.so.3", Some("libssl3")),
    ];
    let out = run(Command::new("ldd").arg(BIN), "ldd, from libc-bin");
    assert!(out.status.success(), "ldd: {}", text(&out));
    let (dockerfile, _) = dockerfile();
    let (stages, _) = stages(&dockerfile);
    let installed: BTreeSet<String> = stages
        .last()
        .unwrap()
        .body
        .iter()
        .filter(|i| i.op == "RUN")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = line.split_whitespace().next().unwrap_or("");
        let lib = lib.rsplit('/').next().unwrap();
        let package = PACKAGES
            .iter()
            .find(|(prefix, _)| lib.starts_with(prefix))
            .unwrap_or_else(|| {
                panic!("the binary links {lib}: add its package to the runtime stage and here")
            })
            .1;
        if let Some(package) = package {
            assert!(
                installed.contains(package),
                "{lib}: the runtime stage does not install {package}"
            );
        }
    }
}

#[test]
fn docker_config_loads_in_the_binary() {
    let work = tempfile::tempdir().unwrap();
    let config = deploy("docker/aftercare.toml");
    let templates_dir: String = toml_key(&config, "templates_dir");
    assert!(
        read(&deploy("docker/Dockerfile")).contains(&format!("COPY templates {templates_dir}\n")),
        "the image puts the templates at templates_dir ({templates_dir})"
    );
    let listen: String = toml_key(&config, "http.listen");
    assert_eq!(
        listen, "0.0.0.0:8080",
        "reachable from outside the container"
    );
    let env = BTreeMap::from([
        (
            "AFTERCARE_TEMPLATES_DIR".to_owned(),
            repo().join("templates").display().to_string(),
        ),
        (
            "AFTERCARE_DATA_DIR".to_owned(),
            work.path().display().to_string(),
        ),
    ]);
    let out = check_config(&config, &env);
    assert!(out.status.success(), "aftercare check:\n{}", text(&out));
}
