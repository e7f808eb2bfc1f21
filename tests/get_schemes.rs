//! `shoal get` and `shoal preheat` with `hf://` and `oci://` URLs: a Hugging Face file is keyed by the
//! sha256 its hub names (so preheating on one node serves another from peers), an OCI blob by its digest.

mod common;

use std::process::Output;

use common::cluster::{self, shoal, Daemon};
use common::hf::HfOrigin;
use common::origin::{Origin, FLAVOURS};
use common::{content, sha256};

fn run(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = shoal();
    c.args(args).args(["--daemon", &d.proxy.to_string()]).env_remove("HF_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn hf_urls_are_keyed_by_the_hubs_sha256_and_preheat_serves_other_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = HfOrigin::start("127.0.0.2", "127.0.0.6");
    let weights = content(170, (4 << 20) + 9);
    let sha = hex::encode(sha256(&weights));
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    hub.add_model("shoal-test/get", commit, &[("w.bin", &weights, true)], None);
    hub.add_model("shoal-test/private", commit, &[("w.bin", &weights, true)], Some("hf_tok"));
    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon("127.0.0.87", &[sched.addr], false, &tmp.path().join("a"));
    let b = cluster::daemon("127.0.0.88", &[sched.addr], false, &tmp.path().join("b"));
    let ep = [("HF_ENDPOINT", hub.hub_url())];
    let env: Vec<(&str, &str)> = ep.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let o = run(&a, &["preheat", "hf://shoal-test/get/w.bin"], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("task {sha}")), "the hub's sha256 names the task: {}", text(&o));
    assert_eq!(hub.cdn_gets(&sha), 1);

    let out = tmp.path().join("w.bin");
    let o = run(&b, &["get", "hf://shoal-test/get@main/w.bin", "-O", out.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), weights);
    assert!(text(&o).contains("source=peer"), "{}", text(&o));
    assert_eq!(hub.cdn_gets(&sha), 1, "B was served by A");

    // A private repository: the hub's refusal, whatever the node holds.
    let o = run(&b, &["get", "hf://shoal-test/private/w.bin", "-O", tmp.path().join("p").to_str().unwrap()], &env);
    assert!(!o.status.success());
    assert!(text(&o).contains("401"), "{}", text(&o));
    let mut with = env.clone();
    with.push(("HF_TOKEN", "hf_tok"));
    let o = run(&b, &["get", "hf://shoal-test/private/w.bin", "-O", tmp.path().join("p").to_str().unwrap()], &with);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(hub.cdn_gets(&sha), 1, "the same content, already on B");
}

#[test]
fn oci_urls_name_a_blob_by_its_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Origin::start("127.0.0.2", FLAVOURS[0]);
    let blob = bytes::Bytes::from(content(171, 3 << 20));
    let d = hex::encode(sha256(&blob));
    registry.put(&format!("/v2/team/app/blobs/sha256:{d}"), blob.clone());
    let a = cluster::daemon("127.0.0.89", &[], false, &tmp.path().join("a"));
    let url = format!("oci+http://{}/team/app@sha256:{d}", registry.addr);
    let o = run(&a, &["preheat", &url], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("blob");
    let o = run(&a, &["get", &url, "-O", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("source=local") && text(&o).contains(&format!("task={d}")), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), blob.to_vec());
    let blob_path = format!("/v2/team/app/blobs/sha256:{d}");
    assert_eq!(registry.authorizations(&blob_path).len(), 1, "the blob left the registry once");
    let bad = format!("oci+http://{}/team/app@sha256:{}", registry.addr, "0".repeat(63));
    assert!(!run(&a, &["get", &bad, "-O", out.to_str().unwrap()], &[]).status.success());
}

#[test]
fn an_imported_file_seeds_peers_that_cannot_reach_the_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let data = content(172, (2 << 20) + 333);
    let sha = hex::encode(sha256(&data));
    let file = tmp.path().join("model.bin");
    std::fs::write(&file, &data).unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon("127.0.0.94", &[sched.addr], false, &tmp.path().join("a"));
    let b = cluster::daemon("127.0.0.95", &[sched.addr], false, &tmp.path().join("b"));

    let wrong = format!("sha256:{}", "1".repeat(64));
    let o = run(&a, &["import", file.to_str().unwrap(), "--digest", &wrong], &[]);
    assert!(!o.status.success(), "a wrong --digest fails the import: {}", text(&o));
    let o = run(&a, &["import", file.to_str().unwrap(), "--digest", &format!("sha256:{sha}")], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("task {sha}")), "{}", text(&o));

    // B asks for the object at an origin nobody answers: its digest names the task A holds.
    let dead = cluster::free_addr("127.0.0.2");
    let out = tmp.path().join("got.bin");
    let url = format!("http://{dead}/lfs/objects/{sha}");
    let o = run(&b, &["get", &url, "-O", out.to_str().unwrap(), "--timeout", "60s"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("source=peer"), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// A registry that wants a Bearer token from its own token service (as Docker Hub and GHCR do): `/v2/`
/// challenges, `/token` hands out `T` (only with Basic `shoal:pw` when `private`), blobs need `Bearer T`.
/// Returns its address, the count of blob bodies sent, and the server's thread guard.
fn token_registry(
    blob: bytes::Bytes,
    digest: String,
    private: bool,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use http::{Response, StatusCode};
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            // Lives as long as the test process; every request is answered at once.
            loop {
                let Ok((sock, _)) = l.accept().await else { continue };
                let (blob, digest, counter) = (blob.clone(), digest.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let auth =
                            req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or("").to_owned();
                        let (blob, digest, counter) = (blob.clone(), digest.clone(), counter.clone());
                        async move {
                            let reply = |s: StatusCode, b: bytes::Bytes| {
                                let mut r = Response::new(Full::new(b));
                                *r.status_mut() = s;
                                r
                            };
                            let challenge = format!("Bearer realm=\"http://{addr}/token\",service=\"test-registry\"");
                            let r = if path == "/token" {
                                let basic = format!("Basic {}", base64_pw());
                                if (private && auth != basic) || !query.contains("scope=repository:team/app:pull") {
                                    reply(StatusCode::UNAUTHORIZED, bytes::Bytes::new())
                                } else {
                                    reply(StatusCode::OK, bytes::Bytes::from_static(b"{\"token\":\"T\"}"))
                                }
                            } else if auth != "Bearer T" {
                                let mut r = reply(StatusCode::UNAUTHORIZED, bytes::Bytes::new());
                                r.headers_mut().insert("www-authenticate", challenge.parse().unwrap());
                                r
                            } else if path == format!("/v2/team/app/blobs/{digest}") {
                                counter.fetch_add(1, Ordering::Relaxed);
                                reply(StatusCode::OK, blob)
                            } else {
                                reply(StatusCode::OK, bytes::Bytes::from_static(b"{}"))
                            };
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
    });
    (addr, sent)
}

fn base64_pw() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode("shoal:pw")
}

#[test]
fn oci_urls_run_the_registrys_token_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let blob = bytes::Bytes::from(content(173, 1 << 20));
    let d = format!("sha256:{}", hex::encode(sha256(&blob)));
    let a = cluster::daemon("127.0.0.96", &[], false, &tmp.path().join("a"));
    for private in [false, true] {
        let (addr, sent) = token_registry(blob.clone(), d.clone(), private);
        let url = format!("oci+http://{addr}/team/app@{d}");
        let out = tmp.path().join(format!("blob-{private}"));
        if private {
            let o = run(&a, &["get", &url, "-O", out.to_str().unwrap()], &[]);
            assert!(!o.status.success(), "a private registry's token needs credentials");
            let basic = format!("Authorization: Basic {}", base64_pw());
            let o = run(&a, &["get", &url, "-H", &basic, "-O", out.to_str().unwrap()], &[]);
            assert!(o.status.success(), "{}", text(&o));
        } else {
            let o = run(&a, &["get", &url, "-O", out.to_str().unwrap()], &[]);
            assert!(o.status.success(), "anonymous token: {}", text(&o));
        }
        assert_eq!(std::fs::read(&out).unwrap(), blob.to_vec());
        assert!(sent.load(std::sync::atomic::Ordering::Relaxed) <= 1);
    }
}
