//! Hugging Face through the daemon's mirror route (`HF_ENDPOINT=http://<proxy>/hf`, `proxy.mirror.
//! huggingface`), with the real huggingface_hub client against an HF-like hub and CDN: the file's sha256
//! (X-Linked-Etag) names the task, so the signed CDN URLs, different per request and per node, share one
//! download; a private repository's 401 reaches a requester without the token even when the file is
//! cached on the node.

mod common;

use common::cluster::{self, Daemon};
use common::hf::{downloaded_path, hf_download, hf_error, hf_snapshot, snapshot_files, HfEnv, HfOrigin};
use common::{content, sha256};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn mirror_daemon(ip: &str, sched: std::net::SocketAddr, dir: &std::path::Path, hub: &HfOrigin) -> Daemon {
    let yaml = format!("proxy:\n  mirror:\n    huggingface: {}\n", hub.hub_url());
    cluster::daemon_with(ip, &[sched], false, dir, &yaml)
}

fn endpoint(d: &Daemon) -> String {
    format!("http://{}/hf", d.proxy)
}

#[test]
fn two_nodes_download_a_model_and_every_lfs_file_leaves_the_cdn_once() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = HfOrigin::start("127.0.0.2", "127.0.0.6");
    let repo = "shoal-test/mirror-model";
    let weights = content(150, 6 << 20);
    let extra = content(151, (1 << 20) + 17);
    let config = br#"{"hidden_size": 8}"#.to_vec();
    hub.add_model(
        repo,
        COMMIT,
        &[("model.safetensors", &weights, true), ("sub/extra.bin", &extra, true), ("config.json", &config, false)],
        None,
    );
    let sched = cluster::scheduler("127.0.0.3");
    let a = mirror_daemon("127.0.0.84", sched.addr, &tmp.path().join("a"), &hub);
    let b = mirror_daemon("127.0.0.85", sched.addr, &tmp.path().join("b"), &hub);
    let w = hex::encode(sha256(&weights));
    let x = hex::encode(sha256(&extra));

    let on_a = HfEnv::new(&endpoint(&a), &tmp.path().join("home-a"));
    let o = hf_download(&on_a, repo, "model.safetensors", None);
    assert_eq!(std::fs::read(downloaded_path(&o)).unwrap(), weights);
    assert_eq!(hub.cdn_gets(&w), 1, "cold on A: once from the CDN");

    let on_b = HfEnv::new(&endpoint(&b), &tmp.path().join("home-b"));
    let files = snapshot_files(&hf_snapshot(&on_b, repo, None));
    let want = [("model.safetensors", &weights), ("sub/extra.bin", &extra), ("config.json", &config)];
    for (name, bytes) in want {
        let (_, p) = files.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing: {files:?}"));
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{name}");
    }
    assert_eq!(hub.cdn_gets(&w), 1, "the weights came to B from A, not from the CDN");
    assert_eq!(hub.cdn_gets(&x), 1, "the new file once");
    assert!(cluster::cached_files(&b.data_dir) >= 4, "B cached both LFS files");

    let again = HfEnv::new(&endpoint(&a), &tmp.path().join("home-a2"));
    let o = hf_download(&again, repo, "sub/extra.bin", None);
    assert_eq!(std::fs::read(downloaded_path(&o)).unwrap(), extra);
    assert_eq!(hub.cdn_gets(&x), 1, "A got B's file from B");
}

#[test]
fn a_private_repo_answers_401_without_the_token_even_when_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = HfOrigin::start("127.0.0.2", "127.0.0.6");
    let repo = "shoal-test/private-model";
    let weights = content(160, 3 << 20);
    hub.add_model(repo, COMMIT, &[("model.safetensors", &weights, true)], Some("hf_secret_token"));
    let sched = cluster::scheduler("127.0.0.3");
    let a = mirror_daemon("127.0.0.86", sched.addr, &tmp.path().join("a"), &hub);
    let w = hex::encode(sha256(&weights));

    let with = HfEnv::new(&endpoint(&a), &tmp.path().join("home-1")).token("hf_secret_token");
    let o = hf_download(&with, repo, "model.safetensors", None);
    assert_eq!(std::fs::read(downloaded_path(&o)).unwrap(), weights);
    assert_eq!(hub.cdn_gets(&w), 1);
    assert!(hub.cdn_log().iter().all(|l| l.header("authorization").is_none()), "the token never reached the CDN");

    // Cached on A now; a fresh client without the token is still refused, as the hub says.
    let without = HfEnv::new(&endpoint(&a), &tmp.path().join("home-2"));
    let o = hf_download(&without, repo, "model.safetensors", None);
    let err = hf_error(&o).unwrap_or_default();
    assert!(err.starts_with("RepositoryNotFoundError") && err.contains("401"), "{err}");
    let wrong = HfEnv::new(&endpoint(&a), &tmp.path().join("home-3")).token("hf_wrong");
    let err = hf_error(&hf_download(&wrong, repo, "model.safetensors", None)).unwrap_or_default();
    assert!(err.contains("404"), "{err}");
    assert_eq!(hub.cdn_gets(&w), 1, "no refused request reached the CDN");

    // With the token again: a local hit, no CDN request.
    let again = HfEnv::new(&endpoint(&a), &tmp.path().join("home-4")).token("hf_secret_token");
    let o = hf_download(&again, repo, "model.safetensors", None);
    assert_eq!(std::fs::read(downloaded_path(&o)).unwrap(), weights);
    assert_eq!(hub.cdn_gets(&w), 1);
}
