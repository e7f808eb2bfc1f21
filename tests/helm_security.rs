//! The chart's side of Shoal's trust boundaries (helm/shoal): the cluster secret every scheduler, seed peer
//! and daemon is given, the node daemon's proxy address, the networks its proxy admits, and the values
//! schema. Shares tests/helm/support.rs (tools, rendering, lookups) with tests/helm.rs.
//!
//! Most assertions read the rendered manifests only. `the_shoal_binary_accepts_the_rendered_cluster_settings`
//! runs the shoal binary on them and needs one that knows `--cluster-secret-file` and `proxy.allow_clients`.

#[path = "helm/support.rs"]
mod support;

use serde_json::Value;
use support::*;

const WORKLOADS: [(&str, &str, &str); 3] = [
    ("StatefulSet", "shoal-scheduler", "scheduler"),
    ("StatefulSet", "shoal-seed-peer", "seed-peer"),
    ("DaemonSet", "shoal-daemon", "daemon"),
];

fn secrets(docs: &[Value]) -> Vec<&Value> {
    docs.iter().filter(|d| d["kind"] == "Secret").collect()
}

/// The generated secret's plain text.
fn generated_secret(docs: &[Value]) -> String {
    let secret = find(docs, "Secret", "shoal-cluster");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    let data = secret["data"].as_object().expect("Secret without data");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["secret"], "one key, secret: {secret}");
    String::from_utf8(base64_decode(data["secret"].as_str().unwrap())).expect("secret is not UTF-8")
}

#[test]
fn a_generated_cluster_secret_is_mounted_into_every_workload() {
    let t = tools();
    let (_, docs) = render(&t, &[]);
    validate(&t, &docs);
    let plain = generated_secret(&docs);
    assert_eq!(plain.len(), 64, "{plain}");
    assert!(plain.bytes().all(|b| b.is_ascii_alphanumeric()), "randAlphaNum 64 expected: {plain}");
    for (kind, name, c) in WORKLOADS {
        let w = find(&docs, kind, name);
        assert_cluster_secret_mounted(w, c, "shoal-cluster", "secret");
        // No checksum of the secret: a generated one differs on every render and would roll every pod.
        let annotations = &w["spec"]["template"]["metadata"]["annotations"];
        assert!(annotations["checksum/cluster"].is_null(), "{name}: {annotations}");
    }
    // Without a cluster to look the Secret up in (helm template, GitOps renderers), every render makes a
    // new secret: README.md tells such users to bring their own.
    let (_, again) = render(&t, &[]);
    assert_ne!(generated_secret(&again), plain, "two renders gave the same random secret");
    // existingSecretKey names a key of the user's Secret only; the generated one is always "secret".
    let (_, docs) = render(&t, &["--set", "cluster.existingSecretKey=token"]);
    for (kind, name, c) in WORKLOADS {
        assert_cluster_secret_mounted(find(&docs, kind, name), c, "shoal-cluster", "secret");
    }
}

#[test]
fn an_existing_secret_replaces_the_generated_one() {
    let t = tools();
    let (_, docs) = render(&t, &["--set", "cluster.existingSecret=team-shoal"]);
    validate(&t, &docs);
    assert!(secrets(&docs).is_empty(), "a Secret was rendered beside cluster.existingSecret");
    for (kind, name, c) in WORKLOADS {
        assert_cluster_secret_mounted(find(&docs, kind, name), c, "team-shoal", "secret");
    }
    // ci/non-default-values.yaml names its own Secret and key.
    let values = non_default_values();
    let (_, docs) = render(&t, &["-f", values.to_str().unwrap()]);
    assert!(secrets(&docs).is_empty());
    for (kind, name, c) in WORKLOADS {
        assert_cluster_secret_mounted(find(&docs, kind, name), c, "shoal-cluster-secret", "token");
    }
    // With the seed peers off, the two others still get it.
    let (_, docs) = render(&t, &["--set", "seedPeer.enabled=false"]);
    generated_secret(&docs);
    for (kind, name, c) in [WORKLOADS[0], WORKLOADS[2]] {
        assert_cluster_secret_mounted(find(&docs, kind, name), c, "shoal-cluster", "secret");
    }
}

/// Needs a shoal binary with `--cluster-secret-file` (daemon and scheduler) and `proxy.allow_clients`.
#[test]
fn the_shoal_binary_accepts_the_rendered_cluster_settings() {
    let t = tools();
    let values = non_default_values();
    for extra in [vec![], vec!["-f", values.to_str().unwrap()]] {
        let (_, docs) = render(&t, &extra);
        for (kind, name, c) in WORKLOADS {
            assert_cli_accepts(&kubelet_args(container(find(&docs, kind, name), c)));
        }
        let cm = find(&docs, "ConfigMap", "shoal-config");
        for key in ["daemon.yaml", "seed-peer.yaml"] {
            assert_config_checks(key, cm["data"][key].as_str().unwrap());
        }
    }
}

fn daemon(docs: &[Value]) -> &Value {
    container(find(docs, "DaemonSet", "shoal-daemon"), "daemon")
}

fn port<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no port {name}"))
}

#[test]
fn the_daemon_proxy_listens_on_the_node_ip_under_host_network() {
    let t = tools();
    let values = non_default_values();
    for extra in [vec!["-f", values.to_str().unwrap()], vec!["--set", "daemon.hostNetwork=true"]] {
        let (_, docs) = render(&t, &extra);
        let d = daemon(&docs);
        assert_eq!(pod_spec(find(&docs, "DaemonSet", "shoal-daemon"))["hostNetwork"], true);
        assert_eq!(env_var(d, "NODE_IP")["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP");
        assert_eq!(flag(&args(d), "--proxy-addr").as_deref(), Some("$(NODE_IP):65001"));
        let expanded = format!("{SAMPLE_HOST_IP}:65001");
        assert_eq!(flag(&kubelet_args(d), "--proxy-addr"), Some(expanded), "{extra:?}");
        assert_eq!(port(d, "proxy")["hostPort"], 65001);
    }
    // The user's address wins, and may use $(NODE_IP) itself (brackets for IPv6 nodes).
    for (listen, want) in [("127.0.0.1", "127.0.0.1:65001"), ("[$(NODE_IP)]", "[$(NODE_IP)]:65001")] {
        let set = format!("daemon.proxy.listenAddress={listen}");
        let (_, docs) = render(&t, &["--set", "daemon.hostNetwork=true", "--set", &set]);
        assert_eq!(flag(&args(daemon(&docs)), "--proxy-addr").as_deref(), Some(want));
    }
    // Without hostNetwork: all of the pod's addresses, published on the node with a hostPort; the seed
    // peers' proxy stays inside their pods.
    let (_, docs) = render(&t, &["--set", "daemon.proxy.hostPort=15001"]);
    let d = daemon(&docs);
    assert!(pod_spec(find(&docs, "DaemonSet", "shoal-daemon"))["hostNetwork"].is_null());
    assert_eq!(flag(&kubelet_args(d), "--proxy-addr").as_deref(), Some("0.0.0.0:65001"));
    assert_eq!(port(d, "proxy")["hostPort"], 15001);
    assert_eq!(port(d, "proxy")["containerPort"], 65001);
    let seed = container(find(&docs, "StatefulSet", "shoal-seed-peer"), "seed-peer");
    assert_eq!(flag(&args(seed), "--proxy-addr").as_deref(), Some("127.0.0.1:65001"));
}

/// The proxy.allow_clients of each role's rendered config file (None: the key is absent).
fn allow_clients(docs: &[Value]) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let cm = find(docs, "ConfigMap", "shoal-config");
    let list = |key: &str| {
        let text = cm["data"][key].as_str().unwrap();
        let cfg = yaml(text);
        let v = &cfg["proxy"]["allow_clients"];
        assert_eq!(v.is_null(), !text.contains("allow_clients:"), "{key}:\n{text}");
        v.as_array().map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
    };
    (list("daemon.yaml"), list("seed-peer.yaml"))
}

#[test]
fn allow_clients_lands_in_the_daemon_config() {
    let t = tools();
    let loopback = ["127.0.0.0/8", "::1/128"];
    // Default: loopback only (fail closed: no pod may use the proxy until its network is added); the
    // seed peers' proxy, inside their pods, keeps the daemon's own default.
    let (_, docs) = render(&t, &[]);
    let (d, s) = allow_clients(&docs);
    assert_eq!(d.unwrap(), loopback);
    assert_eq!(s, None);
    let before = config_checksum(find(&docs, "DaemonSet", "shoal-daemon"));
    let seed_before = config_checksum(find(&docs, "StatefulSet", "shoal-seed-peer"));

    let values = non_default_values();
    let (_, docs) = render(&t, &["-f", values.to_str().unwrap()]);
    let (d, s) = allow_clients(&docs);
    assert_eq!(d.unwrap(), ["127.0.0.0/8", "::1/128", "10.244.0.0/16", "192.168.10.0/24", "fd00:10:244::/56"]);
    assert_eq!(s, None);

    // Loopback listed again is not repeated; a change rolls the daemons (checksum/config), not the seeds.
    let (_, docs) = render(&t, &["--set", "daemon.proxy.allowClients={10.0.0.0/8,127.0.0.0/8}"]);
    assert_eq!(allow_clients(&docs).0.unwrap(), ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]);
    assert_ne!(config_checksum(find(&docs, "DaemonSet", "shoal-daemon")), before);
    assert_eq!(config_checksum(find(&docs, "StatefulSet", "shoal-seed-peer")), seed_before);

    // The config key itself is the chart's: setting it in the config trees is refused with a pointer.
    for set in ["config.proxy.allow_clients={0.0.0.0/0}", "daemon.config.proxy.allow_clients={0.0.0.0/0}"] {
        let (ok, _, err) = helm_template(&t, &["--set", set]);
        assert!(!ok, "helm template accepted --set {set}");
        assert!(err.contains("daemon.proxy.allowClients"), "the error for {set} does not point at the value:\n{err}");
    }
}

#[test]
fn the_values_schema_accepts_the_ci_values_and_rejects_bad_ones() {
    let t = tools();
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
        .expect("values.schema.json is not JSON");
    assert_eq!(schema["additionalProperties"], false, "unknown top-level values must fail");
    // Every values file under ci/ lints and renders against the schema.
    let mut ci: Vec<_> = std::fs::read_dir(chart().join("ci")).unwrap().map(|e| e.unwrap().path()).collect();
    ci.sort();
    assert!(!ci.is_empty());
    for f in &ci {
        let f = f.to_str().unwrap();
        let (ok, out, err) =
            run(std::process::Command::new(&t.helm).args(["lint", "--strict"]).arg(chart()).args(["-f", f]));
        assert!(ok, "helm lint --strict -f {f} failed:\n{out}{err}");
        render(&t, &["-f", f]);
    }
    // Keys of the daemon's own config the schema does not list are left to `shoal config check`.
    render(&t, &["--set", "config.engine.max_parents=8", "--set", "config.upload.rate=1000"]);

    for (bad, names) in [
        ("daemon.proxy.port=abc", "daemon.proxy.port"),
        ("daemon.proxy.port=70000", "daemon.proxy.port"),
        ("daemon.proxy.allowClients={10.0.0.0}", "daemon.proxy.allowClients"),
        ("cluster.existingSecret=Not_A_Name", "cluster.existingSecret"),
        ("cluster.existingSecretKey=", "cluster.existingSecretKey"),
        ("config.storage.ttl=90", "config.storage.ttl"),
        ("config.storage.quota=50XB", "config.storage.quota"),
        ("config.proxy.rules[0].use_tls=true", "regex is required"),
        ("daemon.advertiseIPFrom=spec.nodeName", "daemon.advertiseIPFrom"),
        ("scheduler.replicas=-1", "scheduler.replicas"),
        ("sheduler.replicas=3", "sheduler"),
        ("daemon.hostNetwrok=true", "hostNetwrok"),
    ] {
        let (ok, _, err) = helm_template(&t, &["--set", bad]);
        assert!(!ok, "helm template accepted --set {bad}");
        assert!(err.contains(names), "the error for --set {bad} does not name {names}:\n{err}");
    }
    // What the schema cannot say, the templates refuse.
    let (ok, _, err) = helm_template(&t, &["--set", "scheduler.replicas=0"]);
    assert!(!ok && err.contains("scheduler.replicas"), "{err}");
    render(&t, &["--set", "scheduler.replicas=0", "--set", "scheduler.externalAddresses={s.example:8002}"]);
}
