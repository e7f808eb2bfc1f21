//! The Helm chart (helm/shoal): `helm lint`, `helm template` with the default values and with
//! helm/shoal/ci/non-default-values.yaml, every rendered manifest validated offline against the Kubernetes
//! 1.30 and 1.34 schemas (kubernetes-validate --strict), the rendered arguments checked flag by flag and
//! parsed by the shoal binary itself, every rendered config file checked by `shoal config check`, and the
//! config checksum annotation that rolls the pods when their config file changes.
//!
//! The tools come from scripts/install-helm-deps.sh (run by scripts/test.sh): helm at
//! /opt/shoal-test-tools/bin/helm and kubernetes-validate in /opt/shoal-test-tools/venv, or wherever the
//! environment variables HELM and KUBERNETES_VALIDATE point. Missing tools fail the tests; they are never
//! skipped. The venv's Python (beside kubernetes-validate, with PyYAML) turns rendered YAML into JSON.
//!
//! The ServiceMonitor (monitoring.coreos.com/v1) is a CRD kubernetes-validate has no schema for: it is
//! checked here by apiVersion, kind and the fields the chart relies on instead.

#[path = "helm/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

#[test]
fn helm_lint_default_and_non_default_values() {
    let t = tools();
    for extra in [vec![], vec!["-f".to_string(), non_default_values().display().to_string()]] {
        let (ok, out, err) = run(Command::new(&t.helm).arg("lint").arg("--strict").arg(chart()).args(&extra));
        assert!(ok, "helm lint --strict {extra:?} failed:\n{out}{err}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn default_values_render_valid_manifests_with_expected_flags() {
    let t = tools();
    let (_, docs) = render(&t, &[]);
    validate(&t, &docs);
    assert_eq!(
        kinds(&docs),
        [
            "ConfigMap/shoal-config",
            "DaemonSet/shoal-daemon",
            "Secret/shoal-cluster",
            "Service/shoal-scheduler",
            "Service/shoal-seed-peer",
            "ServiceAccount/shoal",
            "StatefulSet/shoal-scheduler",
            "StatefulSet/shoal-seed-peer",
        ],
        "default resources (no ServiceMonitor by default)"
    );

    // Schedulers: headless Service, one replica, listening on the port the daemons are given.
    let svc = find(&docs, "Service", "shoal-scheduler");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    // Plain TCP, not gRPC: a mesh must not parse it as HTTP/2.
    assert_eq!(svc["spec"]["ports"][0]["name"], "tcp-scheduler");
    assert_eq!(svc["spec"]["ports"][0]["appProtocol"], "tcp");
    let sched = find(&docs, "StatefulSet", "shoal-scheduler");
    assert_eq!(sched["spec"]["serviceName"], "shoal-scheduler");
    assert_eq!(sched["spec"]["replicas"], 1);
    let sched_args = args(container(sched, "scheduler"));
    assert_cli_accepts(&sched_args);
    assert_eq!(sched_args[0], "scheduler");
    assert_eq!(flag(&sched_args, "--listen").as_deref(), Some("0.0.0.0:8002"));
    // The scheduler's /metrics and /healthz on the pod IP, probed and scraped like the daemons'.
    assert_eq!(flag(&sched_args, "--metrics-addr").as_deref(), Some("0.0.0.0:65003"));
    assert_eq!(svc["spec"]["ports"][1]["name"], "metrics");
    let sc = container(sched, "scheduler");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(sc[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(sc[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // Seed peers: `daemon --seed`, data on a PVC.
    let seed = find(&docs, "StatefulSet", "shoal-seed-peer");
    let seed_c = container(seed, "seed-peer");
    let seed_args = args(seed_c);
    assert_cli_accepts(&seed_args);
    assert_eq!(seed_args[0], "daemon");
    assert!(flag(&seed_args, "--seed").is_some(), "seed peer without --seed: {seed_args:?}");
    assert_eq!(flag(&seed_args, "--scheduler"), Some(scheduler_pod_addrs(1)));
    assert_eq!(flag(&seed_args, "--proxy-addr").as_deref(), Some("127.0.0.1:65001"));
    assert_eq!(flag(&seed_args, "--upload-addr").as_deref(), Some("0.0.0.0:65002"));
    assert_eq!(flag(&seed_args, "--data-dir").as_deref(), Some("/var/lib/shoal"));
    let claims = seed["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(claims[0]["metadata"]["name"], "data");
    assert_eq!(claims[0]["spec"]["resources"]["requests"]["storage"], "100Gi");
    assert!(seed_c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/shoal"));

    // Node daemons: no --seed, hostPath storage, proxy published with a hostPort, pod IP advertised.
    let ds = find(&docs, "DaemonSet", "shoal-daemon");
    let d = container(ds, "daemon");
    let d_args = args(d);
    assert_cli_accepts(&d_args);
    assert_eq!(d_args[0], "daemon");
    assert_eq!(flag(&d_args, "--seed"), None, "the node daemon must not be a seed: {d_args:?}");
    assert_eq!(flag(&d_args, "--scheduler"), Some(scheduler_pod_addrs(1)));
    assert_eq!(flag(&d_args, "--proxy-addr").as_deref(), Some("0.0.0.0:65001"));
    assert_eq!(flag(&d_args, "--metrics-addr").as_deref(), Some("0.0.0.0:65003"));
    assert_eq!(flag(&d_args, "--config").as_deref(), Some("/etc/shoal/config.yaml"));
    assert_eq!(flag(&d_args, "--io-engine").as_deref(), Some("auto"));
    assert_eq!(flag(&d_args, "--workers"), None, "one worker per CPU by default");
    for a in [&d_args, &seed_args] {
        assert_no_reloadable_flags(a);
    }
    assert!(pod_spec(ds)["hostNetwork"].is_null());
    let proxy_port = d["ports"].as_array().unwrap().iter().find(|p| p["name"] == "proxy").unwrap();
    assert_eq!(proxy_port["hostPort"], 65001);
    let vols = pod_spec(ds)["volumes"].as_array().unwrap();
    let data = vols.iter().find(|v| v["name"] == "data").unwrap();
    assert_eq!(data["hostPath"]["path"], "/var/lib/shoal");
    let config = vols.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(config["configMap"]["name"], "shoal-config");
    assert_eq!(config["configMap"]["items"][0]["key"], "daemon.yaml");

    for c in [d, seed_c] {
        assert_eq!(env_var(c, "SHOAL_ADVERTISE_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
        assert_eq!(env_var(c, "SHOAL_IO_ENGINE")["value"], "auto");
        // httpGet probes by default: /healthz for liveness, /readyz for readiness, on the metrics port the
        // daemon binds on all of the pod's addresses.
        assert_http_probes(c);
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert!(c["resources"]["requests"].is_object());
    }
    for w in [ds, seed, sched] {
        assert_eq!(pod_spec(w)["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    }
    for c in [d, seed_c] {
        assert_eq!(c["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    }
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "shoal-seccomp"), "profile installer is off by default");
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "shoal-dashboards"), "dashboard is off by default");

    // The ConfigMap is a config file the daemon accepts, with the chart's defaults in it.
    let cm = find(&docs, "ConfigMap", "shoal-config");
    for key in ["daemon.yaml", "seed-peer.yaml"] {
        let text = cm["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap without {key}"));
        assert_config_checks(key, text);
        for needle in
            ["io_engine: auto", "ttl: 30d", "gc_interval: 60s", "rules: []", "default_rules: true", "intercept: []"]
        {
            assert!(text.contains(needle), "{key} lacks {needle}:\n{text}");
        }
        let cfg = yaml(text);
        assert!(cfg["proxy"]["filtered_query_params"].is_null(), "the daemon's built-in list by default: {text}");
        assert_eq!(cfg["proxy"]["drain_timeout"], "20s");
    }
    // The kubelet's SIGKILL must come well after the proxy drain (then unfinished tasks are synced).
    for (w, key) in [(ds, "daemon.yaml"), (seed, "seed-peer.yaml")] {
        let grace = pod_spec(w)["terminationGracePeriodSeconds"].as_u64().unwrap();
        let drain = seconds(yaml(cm["data"][key].as_str().unwrap())["proxy"]["drain_timeout"].as_str().unwrap());
        assert!(grace >= 2 * drain, "terminationGracePeriodSeconds {grace} not well above drain_timeout {drain}s");
    }
}

#[test]
fn non_default_values_render_valid_manifests_with_expected_flags() {
    let t = tools();
    let values = non_default_values();
    let (_, docs) = render(&t, &["-f", values.to_str().unwrap()]);
    validate(&t, &docs);

    // Three schedulers, each named in every daemon's --scheduler list.
    assert_eq!(find(&docs, "StatefulSet", "shoal-scheduler")["spec"]["replicas"], 3);
    // NetworkPolicies: the scheduler port admits the release's pods only; metrics the monitoring namespace.
    let np = find(&docs, "NetworkPolicy", "shoal-scheduler");
    let rule = &np["spec"]["ingress"][0];
    assert_eq!(rule["ports"][0]["port"], "tcp-scheduler");
    assert_eq!(rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "shoal");
    assert_eq!(np["spec"]["ingress"][1]["ports"][0]["port"], "metrics", "scrapers reach the scheduler's metrics");
    let np = find(&docs, "NetworkPolicy", "shoal-daemon");
    let ports: Vec<&str> =
        np["spec"]["ingress"].as_array().unwrap().iter().map(|r| r["ports"][0]["port"].as_str().unwrap()).collect();
    assert_eq!(ports, ["upload", "metrics", "proxy"]);
    assert_eq!(
        np["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert!(np["spec"]["ingress"][2].get("from").is_none_or(|f| f.is_null()), "the proxy admits anyone by default");
    find(&docs, "NetworkPolicy", "shoal-seed-peer");
    let seed = find(&docs, "StatefulSet", "shoal-seed-peer");
    let ds = find(&docs, "DaemonSet", "shoal-daemon");
    containerd_hosts_init_writes_hosts_toml(ds);
    let seed_args = args(container(seed, "seed-peer"));
    let d = container(ds, "daemon");
    let d_args = args(d);
    let sched_args = args(container(find(&docs, "StatefulSet", "shoal-scheduler"), "scheduler"));
    for a in [&seed_args, &kubelet_args(d), &sched_args] {
        assert_cli_accepts(a);
    }
    for a in [&seed_args, &d_args] {
        assert_eq!(flag(a, "--scheduler"), Some(scheduler_pod_addrs(3)));
        assert_eq!(flag(a, "--io-engine").as_deref(), Some("uring"));
    }
    assert!(flag(&seed_args, "--seed").is_some());
    assert_eq!(flag(&d_args, "--seed"), None);
    // Role overrides merged over the shared config, in the config file only (SIGHUP reloads them).
    for a in [&seed_args, &d_args] {
        assert_no_reloadable_flags(a);
    }
    assert_eq!(d_args.last().map(String::as_str), Some("--workers=4"), "extraArgs come last: {d_args:?}");
    let cm = find(&docs, "ConfigMap", "shoal-config");
    let seed_cfg = yaml(cm["data"]["seed-peer.yaml"].as_str().unwrap());
    let d_cfg = yaml(cm["data"]["daemon.yaml"].as_str().unwrap());
    assert_eq!(seed_cfg["storage"]["quota"], "400GiB");
    assert!(seed_cfg["upload"]["rate"].is_null());
    assert_eq!(d_cfg["storage"]["quota"], "50GiB");
    assert_eq!(d_cfg["upload"]["rate"], "200MB");
    for cfg in [&seed_cfg, &d_cfg] {
        assert_eq!(cfg["storage"]["ttl"], "7d");
        assert_eq!(cfg["storage"]["io_engine"], "uring");
    }
    for key in ["daemon.yaml", "seed-peer.yaml"] {
        assert_config_checks(key, cm["data"][key].as_str().unwrap());
    }
    // Proxy rules reach both roles' files as written: a use_tls rule with its own filtered parameters, a
    // content_digest: off rule (quoted, or YAML would read a boolean), the shared parameter list.
    for cfg in [&seed_cfg, &d_cfg] {
        let proxy = &cfg["proxy"];
        let rules = proxy["rules"].as_array().expect("no proxy rules rendered");
        assert_eq!(rules.len(), 2, "{proxy}");
        assert_eq!(rules[0]["regex"], r"^https?://github-cloud\.githubusercontent\.com/");
        assert_eq!(rules[0]["use_tls"], true);
        assert_eq!(rules[0]["filtered_query_params"], serde_json::json!(["X-Amz-*", "token"]));
        assert_eq!(rules[1]["content_digest"], "off");
        assert_eq!(proxy["default_rules"], false);
        assert_eq!(proxy["filtered_query_params"], serde_json::json!(["X-Goog-*", "sig"]));
        assert_eq!(proxy["drain_timeout"], "30s");
        assert_eq!(proxy["intercept"], serde_json::json!(["lfs.example.com", "*.blob.example.com"]));
        assert_eq!(proxy["intercept_ca"], "/var/lib/shoal/intercept-ca");
        assert_eq!(cfg["upstream"]["ca_file"], "/etc/ssl/certs/ca-certificates.crt");
    }

    // hostNetwork: proxy on the node IP (the kubelet expands $(NODE_IP)), cluster DNS kept, host IP
    // advertised.
    let spec = pod_spec(ds);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(flag(&d_args, "--proxy-addr").as_deref(), Some("$(NODE_IP):65001"));
    assert_eq!(env_var(d, "NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
    assert_eq!(env_var(d, "SHOAL_ADVERTISE_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
    assert_eq!(env_var(d, "SHOAL_IO_ENGINE")["value"], "uring");

    // io_uring seccomp profile on the daemon and seed peer containers; the pods (sandboxes) and the
    // schedulers keep RuntimeDefault.
    for c in [d, container(seed, "seed-peer")] {
        let profile = &c["securityContext"]["seccompProfile"];
        assert_eq!(profile["type"], "Localhost");
        assert_eq!(profile["localhostProfile"], "shoal-iouring.json");
    }
    let sched = find(&docs, "StatefulSet", "shoal-scheduler");
    for w in [ds, seed, sched] {
        assert_eq!(pod_spec(w)["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    }
    assert!(container(sched, "scheduler")["securityContext"]["seccompProfile"].is_null());

    // tcpSocket probes (the option) on the upload port; the metrics port is still published on the node.
    for c in [d, container(seed, "seed-peer")] {
        assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], "upload");
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "upload");
        assert!(c["livenessProbe"]["httpGet"].is_null());
    }
    let metrics_port = d["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(metrics_port["hostPort"], 65003, "with hostNetwork the metrics port is the node's");

    // The ServiceMonitor selects Services that expose a port named like its endpoint.
    let sm = find(&docs, "ServiceMonitor", "shoal");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    for name in ["shoal-daemon", "shoal-seed-peer", "shoal-scheduler"] {
        let svc = find(&docs, "Service", name);
        assert!(
            svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == port),
            "{name} has no {port} port"
        );
        let component = svc["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap();
        let allowed = sm["spec"]["selector"]["matchExpressions"][0]["values"].as_array().unwrap();
        assert!(allowed.iter().any(|v| v == component), "ServiceMonitor does not select {name}");
    }

    // The Grafana dashboard, byte for byte the chart's file, labelled for the sidecar.
    let dash = find(&docs, "ConfigMap", "shoal-dashboards");
    assert_eq!(dash["metadata"]["namespace"], NAMESPACE);
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dash["metadata"]["annotations"]["grafana_folder"], "Shoal");
    let shipped = std::fs::read_to_string(chart().join("dashboards/shoal.json")).unwrap();
    let rendered = dash["data"]["shoal.json"].as_str().expect("dashboard ConfigMap without shoal.json");
    assert_eq!(rendered.trim_end(), shipped.trim_end(), "dashboard ConfigMap differs from dashboards/shoal.json");
    let json: Value = serde_json::from_str(rendered).expect("rendered dashboard is not JSON");
    assert_eq!(json["uid"], "shoal-overview");
}

#[test]
fn seccomp_profile_installer_copies_the_chart_profile_onto_nodes() {
    let t = tools();
    let values = non_default_values();
    let (_, docs) = render(&t, &["-f", values.to_str().unwrap(), "--set", "seccomp.installProfile=true"]);
    validate(&t, &docs);
    let cm = find(&docs, "ConfigMap", "shoal-seccomp");
    let shipped = std::fs::read_to_string(chart().join("files/shoal-iouring.json")).unwrap();
    let rendered: Value = serde_json::from_str(cm["data"]["shoal-iouring.json"].as_str().unwrap()).unwrap();
    assert_eq!(rendered, serde_json::from_str::<Value>(&shipped).unwrap(), "ConfigMap differs from files/");
    for w in [find(&docs, "DaemonSet", "shoal-daemon"), find(&docs, "StatefulSet", "shoal-seed-peer")] {
        let init = pod_spec(w)["initContainers"].as_array().expect("no init containers");
        let installer = &init[0];
        assert_eq!(installer["name"], "install-seccomp-profile", "the installer must run first");
        assert_eq!(installer["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(installer["command"].as_array().unwrap().last().unwrap(), "/seccomp/shoal-iouring.json");
        let vols = pod_spec(w)["volumes"].as_array().unwrap();
        let host = vols.iter().find(|v| v["name"] == "kubelet-seccomp").expect("no kubelet-seccomp volume");
        assert_eq!(host["hostPath"]["path"], "/var/lib/kubelet/seccomp");
    }
    // Only with a Localhost profile.
    let (_, docs) = render(&t, &["--set", "seccomp.installProfile=true"]);
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "shoal-seccomp"));
}

#[test]
fn dashboard_configmap_labels_and_namespace_are_configurable() {
    let t = tools();
    let (_, docs) = render(
        &t,
        &[
            "--set",
            "dashboards.enabled=true",
            "--set",
            "dashboards.namespace=monitoring",
            "--set",
            "dashboards.labels.grafana_dashboard=null",
            "--set",
            "dashboards.labels.team-dashboards=shoal",
        ],
    );
    validate(&t, &docs);
    let dash = find(&docs, "ConfigMap", "shoal-dashboards");
    assert_eq!(dash["metadata"]["namespace"], "monitoring");
    let labels = &dash["metadata"]["labels"];
    assert_eq!(labels["team-dashboards"], "shoal");
    assert!(labels["grafana_dashboard"].is_null(), "the default sidecar label can be removed: {labels}");
    assert!(dash["metadata"]["annotations"].is_null());
}

#[test]
fn config_checksum_rolls_the_pods_whose_config_file_changes() {
    let t = tools();
    let checksums = |set: &[&str]| {
        let mut a = Vec::new();
        for s in set {
            a.extend(["--set", s]);
        }
        let (_, docs) = render(&t, &a);
        let d = config_checksum(find(&docs, "DaemonSet", "shoal-daemon"));
        let s = config_checksum(find(&docs, "StatefulSet", "shoal-seed-peer"));
        (d, s, docs)
    };
    let (d0, s0, docs) = checksums(&[]);
    let (d0, s0) = (d0.expect("no checksum/config on daemon pods"), s0.expect("no checksum/config on seed peers"));
    for c in [&d0, &s0] {
        assert!(c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()), "not a sha256: {c}");
    }
    // Unchanged values render the same checksum (no rollout on a no-op upgrade); the schedulers do not
    // read the file and carry none.
    let (d1, s1, _) = checksums(&[]);
    assert_eq!((d1.as_deref(), s1.as_deref()), (Some(d0.as_str()), Some(s0.as_str())));
    assert_eq!(config_checksum(find(&docs, "StatefulSet", "shoal-scheduler")), None);

    // A shared config value changes both files, so both roles roll.
    let (d2, s2, docs) = checksums(&["config.proxy.drain_timeout=25s"]);
    assert_ne!(d2.as_deref(), Some(d0.as_str()), "daemon checksum unchanged after a config change");
    assert_ne!(s2.as_deref(), Some(s0.as_str()), "seed peer checksum unchanged after a config change");
    validate(&t, &docs);

    // A role's own setting rolls that role only.
    let (d3, s3, _) = checksums(&["daemon.config.upload.rate=100MB"]);
    assert_ne!(d3.as_deref(), Some(d0.as_str()));
    assert_eq!(s3.as_deref(), Some(s0.as_str()), "a daemon-only change must not roll the seed peers");
    let (d4, s4, _) = checksums(&["seedPeer.config.storage.quota=10GiB"]);
    assert_eq!(d4.as_deref(), Some(d0.as_str()), "a seed-peer-only change must not roll the daemons");
    assert_ne!(s4.as_deref(), Some(s0.as_str()));

    // Switched off: no checksum, the pod annotations stay.
    let (d5, s5, docs) =
        checksums(&["rollOnConfigChange=false", "daemon.podAnnotations.team=infra", "config.upload.rate=1MB"]);
    assert_eq!((d5, s5), (None, None));
    let ds = find(&docs, "DaemonSet", "shoal-daemon");
    assert_eq!(ds["spec"]["template"]["metadata"]["annotations"]["team"], "infra");
    assert!(find(&docs, "StatefulSet", "shoal-seed-peer")["spec"]["template"]["metadata"]["annotations"].is_null());
    validate(&t, &docs);
}

#[test]
fn scheduler_addresses_from_headless_service_name_or_external_list() {
    let t = tools();
    let (_, docs) = render(&t, &["--set", "scheduler.addressMode=service", "--set", "scheduler.replicas=2"]);
    let expected = format!("shoal-scheduler.{NAMESPACE}.svc.cluster.local:8002");
    let d_args = args(container(find(&docs, "DaemonSet", "shoal-daemon"), "daemon"));
    assert_cli_accepts(&d_args);
    assert_eq!(flag(&d_args, "--scheduler"), Some(expected));

    let (_, docs) = render(&t, &["--set", "scheduler.externalAddresses={a.example:8002,b.example:8002}"]);
    let seed_args = args(container(find(&docs, "StatefulSet", "shoal-seed-peer"), "seed-peer"));
    assert_cli_accepts(&seed_args);
    assert_eq!(flag(&seed_args, "--scheduler").as_deref(), Some("a.example:8002,b.example:8002"));
}

#[test]
fn optional_parts_switch_off_and_bad_values_fail() {
    let t = tools();
    let (_, docs) = render(&t, &["--set", "seedPeer.enabled=false", "--set", "daemon.storage.chown=false"]);
    validate(&t, &docs);
    assert!(!docs.iter().any(|d| d["metadata"]["name"] == "shoal-seed-peer"), "seed peer rendered while disabled");
    let ds = find(&docs, "DaemonSet", "shoal-daemon");
    assert!(pod_spec(ds)["initContainers"].is_null());
    let cm = find(&docs, "ConfigMap", "shoal-config");
    assert!(cm["data"]["seed-peer.yaml"].is_null());

    for bad in ["probes.type=exec", "seccomp.type=Bogus", "scheduler.addressMode=dns"] {
        let (ok, _, err) = helm_template(&t, &["--set", bad]);
        assert!(!ok, "helm template accepted --set {bad}");
        let key = bad.split('=').next().unwrap();
        assert!(err.contains(key), "the error for {bad} does not name {key}:\n{err}");
    }
}

#[test]
fn seccomp_profile_allows_io_uring_and_refuses_the_dangerous_calls() {
    let text = std::fs::read_to_string(chart().join("files/shoal-iouring.json")).unwrap();
    let profile: Value = serde_json::from_str(&text).expect("files/shoal-iouring.json is not JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    let rules = profile["syscalls"].as_array().unwrap();
    let refused = |name: &str| {
        rules.iter().any(|r| {
            r["action"] == "SCMP_ACT_ERRNO"
                && r["args"].is_null()
                && r["names"].as_array().unwrap().iter().any(|n| n == name)
        })
    };
    for name in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(!refused(name), "{name} is refused");
    }
    for name in ["mount", "unshare", "setns", "ptrace", "bpf", "kexec_load", "init_module", "keyctl", "clone3"] {
        assert!(refused(name), "{name} is not refused");
    }
    let clone_rules = rules.iter().filter(|r| r["names"][0] == "clone" && r["args"].is_array()).count();
    assert_eq!(clone_rules, 7, "one clone rule per namespace flag");
}

#[test]
fn dockerfile_matches_the_chart() {
    // No Docker engine runs in CI: the image is not built here, only kept consistent with the chart.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("no Dockerfile");
    for needle in [
        "FROM rust:1-bookworm AS build",
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "ca-certificates",
        "USER 10001:10001",
        "ENTRYPOINT [\"shoal\"]",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect("no .dockerignore");
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == ".git"), "{ignore}");
    // The chart runs the image's user.
    let values = std::fs::read_to_string(chart().join("values.yaml")).unwrap();
    assert!(values.contains("  runAsUser: 10001\n") && values.contains("  runAsGroup: 10001\n"));
}

/// The opt-in containerd mirror: the init container's script, run here with a node IP, writes one
/// hosts.toml per registry naming this node's proxy; the directory is containerd's on the node.
fn containerd_hosts_init_writes_hosts_toml(ds: &serde_json::Value) {
    let inits = ds["spec"]["template"]["spec"]["initContainers"].as_array().unwrap();
    let init = inits.iter().find(|c| c["name"] == "containerd-hosts").expect("the containerd-hosts init container");
    let script = init["args"][0].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = script.replace("/certs.d", &dir.path().display().to_string());
    let o = std::process::Command::new("sh").args(["-c", &script]).env("NODE_IP", "10.0.0.5").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
    assert_eq!(
        hub,
        "server = \"https://registry-1.docker.io\"\n\n[host.\"http://10.0.0.5:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    assert!(dir.path().join("registry.example:5000/hosts.toml").exists());
    let vols = ds["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let v = vols.iter().find(|v| v["name"] == "containerd-certs").unwrap();
    assert_eq!(v["hostPath"]["path"], "/etc/containerd/certs.d");
}
