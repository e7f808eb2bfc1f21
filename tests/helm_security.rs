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
            assert_cli_accepts(&args(container(find(&docs, kind, name), c)));
        }
        let cm = find(&docs, "ConfigMap", "shoal-config");
        for key in ["daemon.yaml", "seed-peer.yaml"] {
            assert_config_checks(key, cm["data"][key].as_str().unwrap());
        }
    }
}
