//! The Hugging Face harness on its own, without Shoal: the real huggingface_hub client (scripts/
//! install-test-deps.sh) against the in-process HF-like origin of tests/common/hf.rs, so that tests of the
//! daemon's mirror route can trust both.

mod common;

use common::hf::{self, HfEnv, HfOrigin};
use common::{content, sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "shoal-test/tiny-model";

fn model(o: &HfOrigin, repo: &str, private: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let weights = content(11, 6 << 20);
    let config = br#"{"architectures": ["TinyModel"], "hidden_size": 8}"#.to_vec();
    o.add_model(repo, COMMIT, &[("model.safetensors", &weights, true), ("config.json", &config, false)], private);
    (weights, config)
}

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn print_log(what: &str, log: &[hf::Logged]) {
    for l in log {
        let keep: Vec<String> = l
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "host" | "accept" | "connection"))
            .map(|(k, v)| if k == "authorization" { format!("{k}: Bearer …") } else { format!("{k}: {v}") })
            .collect();
        eprintln!("[{what}] {} {} -> {}  {{{}}}", l.method, l.target, l.status, keep.join("; "));
    }
}

/// hf_hub_download of an LFS file (HEAD → 302 read for metadata, then one GET of the signed CDN URL) and of a
/// git-stored file (HEAD, then GET on the hub): the bytes match, the CDN sent the 6 MiB once.
#[test]
fn downloads_lfs_and_git_files_from_the_origin() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    let (weights, config) = model(&o, REPO, None);
    let dir = tempfile::tempdir().unwrap();
    let env = HfEnv::new(&o.hub_url(), &dir.path().join("hf-home"));

    let out = hf::hf_download(&env, REPO, "model.safetensors", None);
    let path = hf::downloaded_path(&out);
    assert_eq!(sha256(&read(&path)), sha256(&weights));
    let oid = hex::encode(sha256(&weights));
    assert!(path.to_string_lossy().contains(COMMIT), "cached under the commit: {}", path.display());
    assert_eq!(o.cdn_gets(&oid), 1);
    assert_eq!(o.cdn_bytes_sent(), weights.len() as u64);
    assert_eq!(o.hub_requests("HEAD", &format!("/{REPO}/resolve/main/model.safetensors")), 1);
    assert_eq!(o.hub_requests("GET", &format!("/{REPO}/resolve/")), 0, "the client goes to the CDN itself");

    let out = hf::hf_download(&env, REPO, "config.json", Some("main"));
    assert_eq!(read(&hf::downloaded_path(&out)), config);
    assert_eq!(o.hub_requests("GET", &format!("/{REPO}/resolve/main/config.json")), 1);
    assert_eq!(o.cdn_gets(&oid), 1);
    assert_eq!(o.cdn_refused(), 0);

    // Again, by commit: the client answers from its cache without asking anything.
    let asked = o.hub_log().len();
    let out = hf::hf_download(&env, REPO, "model.safetensors", Some(COMMIT));
    assert_eq!(sha256(&read(&hf::downloaded_path(&out))), sha256(&weights));
    assert_eq!(o.cdn_gets(&oid), 1);
    assert_eq!(o.hub_log().len(), asked);
    print_log("hub", &o.hub_log());
    print_log("cdn", &o.cdn_log());
}

/// snapshot_download of a 3-file repo (2 LFS, 1 git): model info by revision, the recursive tree by commit,
/// then per file a HEAD by commit and a GET (CDN or hub).
#[test]
fn snapshot_of_a_three_file_repo() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    let a = content(21, 3 << 20);
    let b = content(22, (1 << 20) + 7);
    let c = b"{\"vocab\": 3}".to_vec();
    let repo = "shoal-test/three";
    o.add_model(
        repo,
        COMMIT,
        &[("weights/part-1.bin", &a, true), ("weights/part-2.bin", &b, true), ("tokenizer.json", &c, false)],
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let env = HfEnv::new(&o.hub_url(), &dir.path().join("hf-home"));
    let out = hf::hf_snapshot(&env, repo, None);
    let files = hf::snapshot_files(&out);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["tokenizer.json", "weights/part-1.bin", "weights/part-2.bin"]);
    for ((_, p), want) in files.iter().zip([&c, &a, &b]) {
        assert_eq!(sha256(&read(p)), sha256(want), "{}", p.display());
    }
    assert_eq!(o.cdn_gets(&hex::encode(sha256(&a))), 1);
    assert_eq!(o.cdn_gets(&hex::encode(sha256(&b))), 1);
    assert_eq!(o.hub_requests("GET", &format!("/api/models/{repo}/revision/main")), 1);
    assert_eq!(o.hub_requests("GET", &format!("/api/models/{repo}/tree/{COMMIT}")), 1);
    assert_eq!(o.hub_requests("HEAD", &format!("/{repo}/resolve/{COMMIT}/")), 3);
    print_log("hub", &o.hub_log());
    print_log("cdn", &o.cdn_log());
}

/// A private repo: without a token the HEAD is 401 RepoNotFound and the client raises
/// RepositoryNotFoundError (hf_hub_download and snapshot_download alike); a wrong token is refused too; with
/// the token both work, and the token never reaches the CDN.
#[test]
fn private_repo_needs_the_token() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    let repo = "shoal-test/private";
    let (weights, _) = model(&o, repo, Some("hf_shoal_test_token"));
    let dir = tempfile::tempdir().unwrap();

    let env = HfEnv::new(&o.hub_url(), &dir.path().join("anon"));
    let out = hf::hf_download(&env, repo, "model.safetensors", None);
    assert_eq!(out.status.code(), Some(hf::HF_ERROR_EXIT), "{}", String::from_utf8_lossy(&out.stderr));
    let err = hf::hf_error(&out).unwrap();
    assert!(err.starts_with("RepositoryNotFoundError: 401 Client Error."), "{err}");
    let out = hf::hf_snapshot(&env, repo, None);
    let err = hf::hf_error(&out).unwrap();
    assert!(err.starts_with("RepositoryNotFoundError: 401 Client Error."), "{err}");

    let env = HfEnv::new(&o.hub_url(), &dir.path().join("wrong")).token("hf_not_the_token");
    let err = hf::hf_error(&hf::hf_download(&env, repo, "model.safetensors", None)).unwrap();
    assert!(err.starts_with("RepositoryNotFoundError: 404 Client Error."), "{err}");
    assert_eq!(o.cdn_log().len(), 0);

    let env = HfEnv::new(&o.hub_url(), &dir.path().join("owner")).token("hf_shoal_test_token");
    let out = hf::hf_download(&env, repo, "model.safetensors", None);
    assert_eq!(sha256(&read(&hf::downloaded_path(&out))), sha256(&weights));
    let out = hf::hf_snapshot(&env, repo, None);
    assert_eq!(hf::snapshot_files(&out).len(), 2);
    let heads = o.hub_log();
    assert!(heads.iter().filter(|l| l.status < 400).all(|l| l.header("authorization").is_some()));
    assert!(o.cdn_log().iter().all(|l| l.header("authorization").is_none()), "the token stays on the hub");
    assert_eq!(o.cdn_gets(&hex::encode(sha256(&weights))), 1, "the snapshot reuses the cached blob");
}

/// The CDN's side of the contract: Range (206, 416), HEAD, and 403 for a tampered, unsigned or expired URL;
/// every signed URL differs.
#[test]
fn cdn_checks_signatures_and_serves_ranges() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    let (weights, _) = model(&o, REPO, None);
    let oid = hex::encode(sha256(&weights));
    let (u1, u2) = (o.signed_url(REPO, "model.safetensors"), o.signed_url(REPO, "model.safetensors"));
    assert_ne!(u1, u2, "a fresh signature every time");
    let rel = |u: &str| u.strip_prefix(&o.cdn_url()).unwrap().to_owned();
    let (st, body) = raw_get(o.cdn_addr, &rel(&u1), Some("bytes=100-199"));
    assert!(st.starts_with("HTTP/1.1 206"), "{st}");
    assert_eq!(body, &weights[100..200]);
    let (st, body) = raw_get(o.cdn_addr, &rel(&u2), Some(&format!("bytes={}-", weights.len() - 5)));
    assert!(st.contains(&format!(
        "content-range: bytes {}-{}/{}",
        weights.len() - 5,
        weights.len() - 1,
        weights.len()
    )));
    assert_eq!(body, &weights[weights.len() - 5..]);
    let (st, _) = raw_get(o.cdn_addr, &rel(&u1), Some(&format!("bytes={}-", weights.len())));
    assert!(st.starts_with("HTTP/1.1 416"), "{st}");
    assert_eq!(o.cdn_gets(&oid), 2);

    let tampered = rel(&u1).replace("Expires=", "Expires=9");
    assert!(raw_get(o.cdn_addr, &tampered, None).0.starts_with("HTTP/1.1 403"));
    let unsigned = o.cdn_path(REPO, &oid);
    assert!(raw_get(o.cdn_addr, &unsigned, None).0.starts_with("HTTP/1.1 403"));
    o.set_signed_url_ttl(std::time::Duration::ZERO);
    let stale = rel(&o.signed_url(REPO, "model.safetensors"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (st, body) = raw_get(o.cdn_addr, &stale, None);
    assert!(st.starts_with("HTTP/1.1 403"), "{st}");
    assert!(String::from_utf8_lossy(&body).contains("expired"));
    assert_eq!(o.cdn_refused(), 3);
    assert_eq!(o.cdn_gets(&oid), 2);
}

/// The Hub's relative 307 for git-stored files asked for by branch (`/api/resolve-cache/...`): the client
/// follows it on the hub (HEAD and GET).
#[test]
fn resolve_cache_redirect_is_followed() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    o.set_resolve_cache_redirect(true);
    let (_, config) = model(&o, REPO, None);
    let dir = tempfile::tempdir().unwrap();
    let env = HfEnv::new(&o.hub_url(), &dir.path().join("hf-home"));
    let out = hf::hf_download(&env, REPO, "config.json", None);
    assert_eq!(read(&hf::downloaded_path(&out)), config);
    let cached = format!("/api/resolve-cache/models/{REPO}/{COMMIT}/config.json");
    assert_eq!(o.hub_requests("HEAD", &cached), 1);
    assert_eq!(o.hub_requests("GET", &cached), 1);
    print_log("hub", &o.hub_log());
}

/// Unknown file and unknown revision: the exceptions the client raises.
#[test]
fn missing_file_and_revision() {
    let o = HfOrigin::start("127.0.0.2", "127.0.0.3");
    model(&o, REPO, None);
    let dir = tempfile::tempdir().unwrap();
    let env = HfEnv::new(&o.hub_url(), &dir.path().join("hf-home"));
    let err = hf::hf_error(&hf::hf_download(&env, REPO, "nope.bin", None)).unwrap();
    assert!(err.starts_with("RemoteEntryNotFoundError: 404 Client Error."), "{err}");
    let err = hf::hf_error(&hf::hf_download(&env, REPO, "config.json", Some("v9"))).unwrap();
    assert!(err.starts_with("RevisionNotFoundError: 404 Client Error."), "{err}");
}

/// A GET over a fresh connection: (status line and headers, lower-cased names; body).
fn raw_get(addr: std::net::SocketAddr, target: &str, range: Option<&str>) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{range}Connection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    (
        String::from_utf8_lossy(&out[..split]).to_lowercase().replacen("http/1.1", "HTTP/1.1", 1),
        out[split + 4..].to_vec(),
    )
}
