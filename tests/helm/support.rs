//! Helpers of tests/helm.rs: the tools, rendering, schema validation and lookups in rendered manifests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Oldest and newest Kubernetes versions the manifests are validated against.
pub const K8S_VERSIONS: [&str; 2] = ["1.30.0", "1.34.0"];
pub const NAMESPACE: &str = "shoal-system";

pub struct Tools {
    pub helm: PathBuf,
    pub validate: PathBuf,
    pub python: PathBuf,
}

pub fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found at {} (set {env} or run scripts/install-helm-deps.sh as root; these tests never skip)",
        Path::new(default).file_name().unwrap().to_string_lossy(),
        path.display()
    );
    path
}

pub fn tools() -> Tools {
    let helm = tool("HELM", "/opt/shoal-test-tools/bin/helm");
    let validate = tool("KUBERNETES_VALIDATE", "/opt/shoal-test-tools/venv/bin/kubernetes-validate");
    let python = validate.with_file_name("python3");
    assert!(
        python.is_file(),
        "no python3 beside {} (kubernetes-validate must be installed in a venv; run scripts/install-helm-deps.sh)",
        validate.display()
    );
    Tools { helm, validate, python }
}

pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/shoal")
}

pub fn non_default_values() -> PathBuf {
    chart().join("ci/non-default-values.yaml")
}

/// Runs a command; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn helm_template(t: &Tools, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(&t.helm);
    cmd.args(["template", "shoal"]).arg(chart()).args(["--namespace", NAMESPACE]).args(args);
    run(&mut cmd)
}

/// `helm template` that must succeed; returns the rendered documents as JSON values.
pub fn render(t: &Tools, args: &[&str]) -> (String, Vec<Value>) {
    let (ok, yaml, err) = helm_template(t, args);
    assert!(ok, "helm template {args:?} failed:\n{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)\n";
    let (ok, json, err) = run(Command::new(&t.python).args(["-c", script]).arg(&file));
    assert!(ok, "rendered YAML does not parse:\n{err}\n{yaml}");
    let docs: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert!(!docs.is_empty(), "helm template {args:?} rendered nothing");
    (yaml, docs)
}

pub fn is_crd_kind(doc: &Value) -> bool {
    doc["apiVersion"].as_str().is_some_and(|v| v.starts_with("monitoring.coreos.com/"))
}

/// Validates every built-in resource against the Kubernetes schemas (strict: unknown fields fail) and
/// the CRD resources by their shape.
pub fn validate(t: &Tools, docs: &[Value]) {
    let (crds, builtin): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| is_crd_kind(d));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("builtin.yaml");
    // JSON is YAML: one document per resource.
    let text: Vec<String> = builtin.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    for version in K8S_VERSIONS {
        let (ok, out, err) = run(Command::new(&t.validate).args(["-k", version, "--strict"]).arg(&file));
        let report = format!("{out}{err}");
        assert!(ok, "kubernetes-validate -k {version} --strict failed:\n{report}");
        assert!(
            !report.contains("WARN") && !report.contains("ERROR"),
            "kubernetes-validate warned (a kind without a schema is not validated):\n{report}"
        );
        let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, builtin.len(), "not every resource was validated against {version}:\n{report}");
    }

    for crd in crds {
        assert_eq!(crd["apiVersion"], "monitoring.coreos.com/v1", "{crd}");
        assert_eq!(crd["kind"], "ServiceMonitor", "unexpected CRD resource {crd}");
        assert!(crd["metadata"]["name"].is_string(), "{crd}");
        assert!(crd["spec"]["selector"]["matchLabels"].is_object(), "{crd}");
        let endpoints = crd["spec"]["endpoints"].as_array().expect("ServiceMonitor without endpoints");
        assert!(!endpoints.is_empty());
        for e in endpoints {
            assert!(e["port"].is_string(), "ServiceMonitor endpoint without a named port: {e}");
        }
    }
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

pub fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    k.sort();
    k
}

pub fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

pub fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

pub fn args(c: &Value) -> Vec<String> {
    c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

/// The value of `--flag=value` in an argument list, if present (exactly once).
pub fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    let found: Vec<&String> = args.iter().filter(|a| a.starts_with(&prefix) || *a == name).collect();
    assert!(found.len() <= 1, "{name} given more than once: {args:?}");
    found.first().map(|a| a.strip_prefix(&prefix).unwrap_or("").to_string())
}

/// The shoal binary's own parser accepts these arguments: each value parses, nothing is unknown or given
/// twice (`--help` at the end makes it exit before running anything).
pub fn assert_cli_accepts(args: &[String]) {
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_shoal")).args(args).arg("--help"));
    assert!(ok, "shoal refuses the rendered arguments {args:?}:\n{err}");
}

pub fn env_var<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in container {}", c["name"]))
}

pub fn scheduler_pod_addrs(n: usize) -> String {
    (0..n)
        .map(|i| format!("shoal-scheduler-{i}.shoal-scheduler.{NAMESPACE}.svc.cluster.local:8002"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A config file as JSON.
pub fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("rendered config is not YAML: {e}\n{text}"))
}

/// Seconds of a duration written as `<n>s` or `<n>m`.
pub fn seconds(d: &str) -> u64 {
    match d.split_at(d.len() - 1) {
        (n, "s") => n.parse().unwrap(),
        (n, "m") => n.parse::<u64>().unwrap() * 60,
        _ => panic!("unexpected duration {d}"),
    }
}

/// The settings SIGHUP reloads come from the config file alone: a flag would override the re-read file.
pub fn assert_no_reloadable_flags(args: &[String]) {
    for name in ["--quota", "--ttl", "--gc-interval", "--upload-rate", "--high-watermark", "--low-watermark"] {
        assert_eq!(flag(args, name), None, "{name} would pin a setting SIGHUP reloads: {args:?}");
    }
}

/// httpGet probes on the metrics port (containerPort metrics.port), which the daemon binds on all addresses.
pub fn assert_http_probes(c: &Value) {
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    assert!(c["livenessProbe"]["tcpSocket"].is_null() && c["readinessProbe"]["tcpSocket"].is_null());
    assert!(c["ports"].as_array().unwrap().iter().any(|p| p["name"] == "metrics" && p["containerPort"] == 65003));
    assert_eq!(flag(&args(c), "--metrics-addr").as_deref(), Some("0.0.0.0:65003"));
}

/// The checksum/config annotation of a workload's pod template, if any.
pub fn config_checksum(workload: &Value) -> Option<String> {
    workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().map(String::from)
}

/// `shoal config check` accepts a rendered config file (unknown keys or bad values would stop the daemon).
pub fn assert_config_checks(name: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(name);
    std::fs::write(&f, text).unwrap();
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_shoal")).args(["config", "check"]).arg(&f));
    assert!(ok, "shoal config check refuses the rendered {name}:\n{err}\n{text}");
}

/// Sample downward-API values for `kubelet_args`.
pub const SAMPLE_HOST_IP: &str = "192.0.2.10";
pub const SAMPLE_POD_IP: &str = "192.0.2.20";

/// A container's arguments as the kubelet passes them: every `$(NAME)` replaced by the container's env
/// `NAME` (a literal value, or a sample IP for status.hostIP / status.podIP). A reference to a variable the
/// container does not define fails the test (the kubelet would pass it on verbatim).
pub fn kubelet_args(c: &Value) -> Vec<String> {
    let env = c["env"].as_array().cloned().unwrap_or_default();
    let value_of = |name: &str| -> Option<String> {
        let e = env.iter().find(|e| e["name"] == name)?;
        if let Some(v) = e["value"].as_str() {
            return Some(v.to_string());
        }
        match e["valueFrom"]["fieldRef"]["fieldPath"].as_str()? {
            "status.hostIP" => Some(SAMPLE_HOST_IP.into()),
            "status.podIP" => Some(SAMPLE_POD_IP.into()),
            other => panic!("no sample value for fieldRef {other}"),
        }
    };
    args(c)
        .into_iter()
        .map(|a| {
            let mut out = String::new();
            let mut rest = a.as_str();
            while let Some(start) = rest.find("$(") {
                let end = rest[start..].find(')').map(|e| start + e).unwrap_or_else(|| panic!("unclosed $( in {a}"));
                let name = &rest[start + 2..end];
                let v = value_of(name)
                    .unwrap_or_else(|| panic!("argument {a} uses $({name}), not in env of {}", c["name"]));
                out.push_str(&rest[..start]);
                out.push_str(&v);
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// Where every Shoal container finds the cluster secret.
pub const CLUSTER_SECRET_FILE: &str = "/etc/shoal-cluster/secret";

/// The workload mounts Secret `secret` (its key `key` as the file `secret`) read-only, 0400, at the
/// directory of CLUSTER_SECRET_FILE, and passes --cluster-secret-file pointing at it.
pub fn assert_cluster_secret_mounted(workload: &Value, container_name: &str, secret: &str, key: &str) {
    let name = &workload["metadata"]["name"];
    let vols = pod_spec(workload)["volumes"].as_array().unwrap_or_else(|| panic!("{name} has no volumes"));
    let vol = vols.iter().find(|v| v["name"] == "cluster-secret").expect("no cluster-secret volume");
    assert_eq!(vol["secret"]["secretName"], secret, "{name}: {vol}");
    assert_eq!(vol["secret"]["defaultMode"], 0o400, "{name}: the secret file must be 0400: {vol}");
    assert_eq!(vol["secret"]["items"], serde_json::json!([{"key": key, "path": "secret"}]), "{name}: {vol}");
    let c = container(workload, container_name);
    let mounts = c["volumeMounts"].as_array().unwrap_or_else(|| panic!("{name}: no volumeMounts"));
    let m = mounts.iter().find(|m| m["name"] == "cluster-secret").expect("cluster secret not mounted");
    assert_eq!(m["readOnly"], true, "{name}: {m}");
    let dir = Path::new(CLUSTER_SECRET_FILE).parent().unwrap().to_str().unwrap();
    assert_eq!(m["mountPath"], dir, "{name}: {m}");
    assert!(m["subPath"].is_null(), "{name}: a subPath mount would not see a rotated secret: {m}");
    assert_eq!(flag(&args(c), "--cluster-secret-file").as_deref(), Some(CLUSTER_SECRET_FILE), "{name}");
}

/// Decodes standard base64 (a Secret's data), panicking on anything else.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body = text.trim_end_matches('=');
    assert!(text.len() % 4 == 0 && text.len() - body.len() <= 2, "not padded base64: {text}");
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for b in body.bytes() {
        let v = ALPHABET.iter().position(|&a| a == b).unwrap_or_else(|| panic!("not base64: {text}"));
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
