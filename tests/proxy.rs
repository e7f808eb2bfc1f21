//! The proxy front with real clients: `curl` (and raw sockets for what curl will not send) through a real
//! `shoal daemon` process, against the test origin. All on 127.0.0.x; every process is stopped on drop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{self, Daemon};
use common::curl::curl;
use common::origin::{Origin, FLAVOURS};
use common::*;

const MIB: usize = 1 << 20;

fn object(seed: u64, len: usize) -> (Bytes, String) {
    let b = Bytes::from(content(seed, len));
    let oid = hex::encode(sha256(&b));
    (b, oid)
}

/// Sends raw bytes to the proxy and reads its answer until close or 5 s; returns the answer's text head.
fn raw(proxy: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    // Bounded by the deadline and the read timeout.
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn daemon(ip: &str, dir: &Path) -> Daemon {
    cluster::daemon(ip, &[], false, &dir.join("daemon"))
}

#[test]
fn miss_then_local_hit_then_ranges_with_206_and_416() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let len = 9 * MIB + 123;
    let (obj, oid) = object(71, len);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    let d = daemon("127.0.0.30", tmp.path());
    let url = origin.url(&format!("{path}?jwt=first"));

    let miss = curl(d.proxy, tmp.path(), &[&url]);
    assert_eq!(miss.status, 200, "{}", miss.stderr);
    assert_eq!(miss.header("x-shoal-source"), Some("origin"));
    assert_eq!(miss.header("content-length"), Some(len.to_string().as_str()));
    assert_eq!(miss.header("x-shoal-task-id"), Some(oid.as_str()));
    assert!(miss.body == obj[..], "miss body differs");
    let line = d.proc.wait_for("task complete", Duration::from_secs(10));
    assert!(line.contains(&format!("task{{id={oid} url=")), "the task's span names it: {line}");

    // Another signed URL of the same object is the same task, now local.
    let hit = curl(d.proxy, tmp.path(), &[&origin.url(&format!("{path}?jwt=second"))]);
    assert_eq!(hit.status, 200, "{}", hit.stderr);
    assert_eq!(hit.header("x-shoal-source"), Some("local"));
    assert_eq!(hit.header("accept-ranges"), Some("bytes"));
    assert!(hit.body == obj[..], "hit body differs");
    // A jwt is a credential: the origin was asked (HEAD) whether the second URL may read the copy.
    assert_eq!((origin.body_requests(), origin.heads()), (1, 1));

    let piece = 4 * MIB;
    for (spec, s, e) in [
        ("1000-2999", 1000, 2999),
        (&format!("{}-{}", piece - 10, piece + 10) as &str, piece - 10, piece + 10),
        ("-500", len - 500, len - 1),
        (&format!("{}-", 2 * piece) as &str, 2 * piece, len - 1),
        (&format!("0-{}", len + 1000) as &str, 0, len - 1),
    ] {
        let g = curl(d.proxy, tmp.path(), &["-r", spec, &url]);
        assert_eq!(g.status, 206, "{spec}: {}", g.stderr);
        assert_eq!(g.header("content-range"), Some(format!("bytes {s}-{e}/{len}").as_str()), "{spec}");
        assert!(g.body == obj[s..=e], "{spec}: range bytes differ");
    }
    let g = curl(d.proxy, tmp.path(), &["-r", &format!("{len}-"), &url]);
    assert_eq!(g.status, 416);
    assert_eq!(g.header("content-range"), Some(format!("bytes */{len}").as_str()));
    // Multiple ranges are answered with the whole content (200).
    let g = curl(d.proxy, tmp.path(), &["-r", "0-1,5-6", &url]);
    assert_eq!(g.status, 200);
    assert!(g.body == obj[..]);
    // If-Range names a representation the proxy cannot compare against: the whole content, 200.
    let g = curl(d.proxy, tmp.path(), &["-r", "0-1", "-H", "If-Range: \"x\"", &url]);
    assert_eq!((g.status, g.header("x-shoal-source")), (200, Some("local")));
    assert!(g.body == obj[..]);
    // With the digest header `shoal get` sends: the right one is a hit, a wrong one gets no bytes.
    let g = curl(d.proxy, tmp.path(), &["-H", &format!("X-Shoal-Digest: sha256:{oid}"), &url]);
    assert_eq!((g.status, g.header("x-shoal-source")), (200, Some("local")));
    assert!(g.body == obj[..]);
    assert_eq!(origin.body_requests(), 1, "every hit and range came from the cache");
    assert_eq!(origin.heads(), 1, "the first URL's own fetch was its yes: its hits asked nothing");
    let wrong = format!("X-Shoal-Digest: sha256:{}", "00".repeat(32));
    let g = curl(d.proxy, tmp.path(), &["-H", &wrong, &url]);
    assert_eq!(g.status, 502);
    assert_eq!(String::from_utf8_lossy(&g.body), "shoal: the content's sha256 differs from X-Shoal-Digest\n");
    let g = curl(d.proxy, tmp.path(), &["-H", "X-Shoal-Digest: md5:abc", &url]);
    assert_eq!(g.status, 400);

    // Keep-alive: two hits, then a pass-through miss, on one connection.
    let (f1, f2, f3) = (tmp.path().join("k1"), tmp.path().join("k2"), tmp.path().join("k3"));
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--noproxy", "", "-x", &format!("http://{}", d.proxy)])
        .args(["-w", "%{http_code} %{num_connects}\n"])
        .arg(&url)
        .arg("-o")
        .arg(&f1)
        .arg(&url)
        .arg("-o")
        .arg(&f2)
        .arg(origin.url("/nothing-here"))
        .arg("-o")
        .arg(&f3)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200 1", "200 0", "404 0"], "{out}");
    assert!(std::fs::read(&f1).unwrap() == obj[..] && std::fs::read(&f2).unwrap() == obj[..]);
}

#[test]
fn range_on_a_miss_waits_for_its_pieces_even_without_content_length() {
    let tmp = tempfile::tempdir().unwrap();
    // Chunked origin without Range: the length is known only at the end.
    let origin = Origin::start("127.0.0.2", FLAVOURS[3]);
    let len = 6 * MIB + 7;
    let (obj, oid) = object(72, len);
    let path = format!("/o/{oid}");
    origin.put(&path, obj.clone());
    let d = daemon("127.0.0.31", tmp.path());
    let g = curl(d.proxy, tmp.path(), &["-r", "5000000-5000099", &origin.url(&path)]);
    assert_eq!(g.status, 206, "{}", g.stderr);
    assert_eq!(g.header("x-shoal-source"), Some("origin"));
    assert_eq!(g.header("content-range"), Some(format!("bytes 5000000-5000099/{len}").as_str()));
    assert!(g.body == obj[5_000_000..5_000_100]);
}

#[test]
fn non_matching_urls_and_other_methods_pass_through_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, oid) = object(73, MIB + 5);
    origin.put("/plain/file.bin", obj.clone());
    let d = daemon("127.0.0.32", tmp.path());

    let g = curl(d.proxy, tmp.path(), &[&origin.url("/plain/file.bin")]);
    assert_eq!(g.status, 200, "{}", g.stderr);
    assert!(g.body == obj[..]);
    assert_eq!(g.header("etag"), Some("\"test-etag\""));
    assert_eq!(g.header("x-shoal-source"), None, "pass-through must not go through the engine");

    let g = curl(d.proxy, tmp.path(), &[&origin.url("/plain/missing")]);
    assert_eq!((g.status, g.body.as_slice()), (404, &b"no such object\n"[..]));

    // A POST to a digest URL is not P2P either: it reaches the origin with its body.
    let g = curl(d.proxy, tmp.path(), &["--data-binary", "hello", &origin.url(&format!("/status/201/{oid}"))]);
    assert_eq!((g.status, g.body.as_slice()), (201, &b"origin says 201\n"[..]));
    assert_eq!(g.header("x-origin-error"), Some("yes"));

    // Range passes through to the origin too.
    let g = curl(d.proxy, tmp.path(), &["-r", "10-19", &origin.url("/plain/file.bin")]);
    assert_eq!(g.status, 206);
    assert!(g.body == obj[10..20]);
    assert_eq!(cluster::cached_files(&d.data_dir), 0, "pass-through cached something");

    // Nothing listens on port 1: 502 with a one-line reason.
    let g = curl(d.proxy, tmp.path(), &["http://127.0.0.1:1/x"]);
    assert_eq!(g.status, 502);
    let body = String::from_utf8_lossy(&g.body);
    assert!(body.starts_with("shoal: upstream connect failed") && body.lines().count() == 1, "{body:?}");
}

#[test]
fn origin_errors_pass_through_for_p2p_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let d = daemon("127.0.0.33", tmp.path());
    let oid = "ab".repeat(32);
    let g = curl(d.proxy, tmp.path(), &[&origin.url(&format!("/status/404/{oid}"))]);
    assert_eq!(g.status, 404);
    assert_eq!(g.header("x-shoal-source"), Some("origin"));
    // Content known to be wrong (the digest does not match) is a Shoal-side failure, never a 200 with
    // a clean end.
    let (obj, _) = object(74, 1000);
    origin.put(&format!("/lfs/{oid}"), obj);
    let g = curl(d.proxy, tmp.path(), &[&origin.url(&format!("/lfs/{oid}"))]);
    assert!(g.status != 200 || !g.stderr.is_empty(), "a wrong body ended cleanly");
}

#[test]
fn connect_tunnels_bytes_and_rejects_bad_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, _) = object(75, 2 * MIB + 1);
    origin.put("/tunnelled.bin", obj.clone());
    // The origin's port is random: let CONNECT reach any port (the default is 443 only).
    let open = "proxy:\n  connect_ports: [\"1-65535\"]\n";
    let d = cluster::daemon_with("127.0.0.34", &[], false, &tmp.path().join("daemon"), open);

    let g = curl(d.proxy, tmp.path(), &["-p", &origin.url("/tunnelled.bin")]);
    assert_eq!(g.status, 200, "{}", g.stderr);
    assert!(g.body == obj[..]);
    assert_eq!(g.header("x-shoal-source"), None);

    let bad = raw(d.proxy, b"CONNECT no-port.test HTTP/1.1\r\nHost: no-port.test\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad:?}");
    let refused = raw(d.proxy, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused:?}");
}

#[test]
fn malformed_origin_form_and_oversized_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon("127.0.0.35", tmp.path());
    let r = raw(d.proxy, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let r = raw(d.proxy, b"GET /relative HTTP/1.1\r\nHost: x.test\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
    let mut big = b"GET http://127.0.0.2:1/x HTTP/1.1\r\nHost: 127.0.0.2:1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 200 << 10));
    big.extend_from_slice(b"\r\n\r\n");
    let r = raw(d.proxy, &big);
    assert!(r.starts_with("HTTP/1.1 431"), "{r:?}");
    // The daemon is still serving after all of that.
    let r = raw(d.proxy, b"GET /again HTTP/1.1\r\nHost: x.test\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r:?}");
}

/// The proxy is no open relay: denied networks, the daemon's own listeners and CONNECT ports outside the
/// allowlist are refused with 403 and a reason, on every path (pass-through, P2P origin fetch, CONNECT),
/// before anything is dialled. (Denied here: a loopback address the config lists, so the test never
/// targets anything but loopback; the built-in list of link-local and metadata networks is unit-tested.)
#[test]
fn the_proxy_refuses_denied_destinations_its_own_listeners_and_connect_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, oid) = object(80, 100_000);
    origin.put("/plain.bin", obj.clone());
    let yaml = "proxy:\n  deny_destinations: [127.0.0.200/32, 169.254.0.0/16]\n  connect_ports: [443, \"1000-1100\"]\n";
    let d = cluster::daemon_with("127.0.0.40", &[], false, &tmp.path().join("daemon"), yaml);
    let forbidden = |req: String, why: &str| {
        let r = raw(d.proxy, req.as_bytes());
        assert!(r.starts_with("HTTP/1.1 403"), "{req:?}: {r:?}");
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(body.contains(why), "{req:?}: {r:?}");
    };
    forbidden("CONNECT 127.0.0.200:443 HTTP/1.1\r\nHost: 127.0.0.200:443\r\n\r\n".into(), "denied by policy");
    forbidden(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.addr), "is not allowed");
    forbidden("CONNECT 127.0.0.2:22 HTTP/1.1\r\nHost: 127.0.0.2:22\r\n\r\n".into(), "port 22 is not allowed");
    forbidden("GET http://127.0.0.200:1050/x HTTP/1.1\r\nHost: 127.0.0.200:1050\r\n\r\n".into(), "denied by policy");
    let p2p = format!("GET http://127.0.0.200:1050/lfs/objects/{oid} HTTP/1.1\r\nHost: 127.0.0.200:1050\r\n\r\n");
    forbidden(p2p, "denied by policy");
    forbidden(format!("GET http://{}/metrics HTTP/1.1\r\nHost: {}\r\n\r\n", d.metrics, d.metrics), "own listeners");
    forbidden(format!("GET http://{}/x HTTP/1.1\r\nHost: {}\r\n\r\n", d.upload, d.upload), "own listeners");
    forbidden(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", d.proxy), "is not allowed");
    // Everything else still passes through.
    let g = curl(d.proxy, tmp.path(), &[&origin.url("/plain.bin")]);
    assert_eq!(g.status, 200, "{}", g.stderr);
    assert!(g.body == obj[..]);
}

/// Request heads with raw UTF-8, invalid UTF-8, percent-escapes, duplicate and huge headers in a P2P URL:
/// each gets an HTTP answer (a query parameter name with multi-byte UTF-8 used to panic inside the task-ID
/// code and kill its connection with no answer at all).
#[test]
fn every_odd_request_head_gets_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, oid) = object(78, 100_000);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let d = daemon("127.0.0.38", tmp.path());
    let target = origin.url(&path);
    let host = origin.addr.to_string();
    let digest = format!("sha256:{oid}");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (format!("{target}?X-A\u{e9}=1").into_bytes(), "200"),
        (format!("{target}?\u{1f600}\u{1f600}=\u{e9}&X-Amz-Date=1").into_bytes(), "200"),
        (format!("{target}?X-Am%C3%A9=1&%ZZ=%").into_bytes(), "200"),
        ([target.as_bytes(), b"?k\xff\xfe=1"].concat(), "400"),
        (format!("{target}?{}", "a=b&".repeat(5000)).into_bytes(), "200"),
        ([b"http://127.0.0.2:1/\xc3(".as_slice()].concat(), ""),
    ];
    let extra: Vec<Vec<u8>> = vec![
        Vec::new(),
        format!("X-Shoal-Digest: {digest}\r\nX-Shoal-Digest: {digest}\r\n").into_bytes(),
        b"X-Shoal-Digest: sha256:\xff\xfe\r\n".to_vec(),
        b"X-Shoal-Filtered-Query-Params: \xc3\xa9,X-A\xc3\xa9\r\n".to_vec(),
        b"Range: bytes=\xff-\r\nRange: bytes=0-1\r\n".to_vec(),
        [b"X-Pad: ".as_slice(), &vec![b'p'; 30_000], b"\r\n"].concat(),
    ];
    for (t, _) in &cases {
        for e in &extra {
            let req = [b"GET ".as_slice(), t, b" HTTP/1.1\r\nHost: ", host.as_bytes(), b"\r\n", e, b"\r\n"].concat();
            let r = raw(d.proxy, &req);
            assert!(r.starts_with("HTTP/1.1 "), "no answer to {:?}: {r:?}", String::from_utf8_lossy(&req));
        }
    }
    // Plain heads of the first cases are served the object, named by the oid whatever their parameters.
    for (t, want) in cases.iter().filter(|(_, w)| !w.is_empty()) {
        let req = [b"GET ".as_slice(), t, b" HTTP/1.1\r\nHost: ", host.as_bytes(), b"\r\n\r\n"].concat();
        let r = raw(d.proxy, &req);
        assert!(r.starts_with(&format!("HTTP/1.1 {want}")), "{:?}: {r:?}", String::from_utf8_lossy(t));
    }
    assert_eq!(origin.requests(), 1, "one task, fetched once");
}

#[test]
fn a_client_leaving_mid_body_does_not_stop_the_download_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let len = 24 * MIB;
    let (obj, oid) = object(76, len);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    // 96 frames of 256 KiB, each after 30 ms: the origin cannot finish in under 2.88 s, so a client that
    // leaves before then leaves mid-download.
    origin.set_frame_delay(Duration::from_millis(30));
    let slowest_origin = Duration::from_millis(30 * 96);
    let d = daemon("127.0.0.36", tmp.path());
    let url = origin.url(&path);

    let t0 = Instant::now();
    let mut a = TcpStream::connect(d.proxy).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(a, "GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.addr).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    // Bounded by the read timeout and the byte count.
    while got < MIB {
        match a.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got >= MIB, "first client got only {got} bytes");
    drop(a);
    assert!(t0.elapsed() < slowest_origin, "the origin may have finished: the test proves nothing");

    let b = curl(d.proxy, tmp.path(), &[&url]);
    assert_eq!(b.status, 200, "{}", b.stderr);
    assert!(b.body == obj[..], "second client's body differs");
    // Two ranged requests (a 16 MiB window, then the last 8 MiB): the download went on; a restart would
    // have sent bytes twice.
    assert_eq!(origin.requests(), 2, "the download restarted after the first client left");
    assert_eq!(origin.bytes_sent(), len as u64);
}

#[test]
fn idle_and_stalled_clients_are_disconnected_after_the_client_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let len = 64 * MIB;
    let (obj, oid) = object(77, len);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let [proxy, upload] = cluster::free_addrs::<2>("127.0.0.37");
    let mut cmd = cluster::shoal();
    cmd.args(["daemon", "--workers", "1", "--proxy-client-timeout", "1s"])
        .args(["--proxy-addr", &proxy.to_string(), "--upload-addr", &upload.to_string()])
        .arg("--data-dir")
        .arg(tmp.path().join("daemon"));
    let d = cluster::Proc::spawn("daemon@127.0.0.37", cmd);
    d.wait_for("daemon started", Duration::from_secs(20));
    let url = origin.url(&path);
    let fill = curl(proxy, tmp.path(), &[&url]);
    assert_eq!(fill.status, 200, "{}", fill.stderr);

    // Idle: connected, never sends a head; the proxy closes within a few seconds.
    let mut idle = TcpStream::connect(proxy).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 16];
    let r = idle.read(&mut b);
    assert!(matches!(r, Ok(0) | Err(_)) && t0.elapsed() < Duration::from_secs(8), "{r:?} after {:?}", t0.elapsed());

    // Stalled: asks for a 64 MiB hit and never reads; the send gives up instead of waiting forever.
    let mut s = TcpStream::connect(proxy).unwrap();
    write!(s, "GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.addr).unwrap();
    d.wait_for("client stopped reading", Duration::from_secs(15));
    drop(s);
}

#[test]
fn a_rule_flag_sends_matching_urls_p2p_named_by_their_url() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[1]);
    let (obj, _) = object(78, 3 * MIB + 9);
    origin.put("/plain/file.bin", obj.clone());
    origin.put("/other/file.bin", obj.clone());
    let [proxy, upload] = cluster::free_addrs::<2>("127.0.0.38");
    let mut cmd = cluster::shoal();
    cmd.args(["daemon", "--workers", "1", "--rule", r"^http://127\.0\.0\.2:[0-9]+/plain/"])
        .args(["--proxy-addr", &proxy.to_string(), "--upload-addr", &upload.to_string()])
        .arg("--data-dir")
        .arg(tmp.path().join("daemon"));
    let d = cluster::Proc::spawn("daemon@127.0.0.38", cmd);
    d.wait_for("daemon started", Duration::from_secs(20));
    let url = origin.url("/plain/file.bin?token=a");
    let first = curl(proxy, tmp.path(), &[&url]);
    assert_eq!((first.status, first.header("x-shoal-source")), (200, Some("origin")), "{}", first.stderr);
    assert!(first.body == obj[..]);
    // The token is a filtered parameter: another token is the same task, served locally once complete.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut second = curl(proxy, tmp.path(), &[&origin.url("/plain/file.bin?token=b")]);
    // Bounded by the deadline: completion (digest + sync) may lag the last byte.
    while second.header("x-shoal-source") != Some("local") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        second = curl(proxy, tmp.path(), &[&origin.url("/plain/file.bin?token=b")]);
    }
    assert_eq!(second.header("x-shoal-source"), Some("local"));
    assert!(second.body == obj[..]);
    // Token b's requests were each asked about (HEAD), never fetched again.
    assert_eq!(origin.body_requests(), 1);
    assert!(origin.heads() >= 1);
    // Outside the rule: passed through.
    let other = curl(proxy, tmp.path(), &[&origin.url("/other/file.bin")]);
    assert_eq!((other.status, other.header("x-shoal-source")), (200, None));
    assert_eq!(origin.body_requests(), 2);
}

#[test]
fn shoal_get_makes_any_url_a_task_and_leaves_filtered_params_out_of_its_id() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let obj = Bytes::from(content(91, 2 * MIB + 7));
    origin.put("/dl/tool.tar", obj.clone());
    let tmp = tempfile::tempdir().unwrap();
    let d = daemon("127.0.0.73", tmp.path());
    let get = |session: &str, out: &str| {
        let url = origin.url(&format!("/dl/tool.tar?session={session}&X-Amz-Signature={session}"));
        let o = cluster::shoal()
            .args(["get", &url, "--daemon", &d.proxy.to_string(), "--filtered-query-param", "session", "-O"])
            .arg(tmp.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(tmp.path().join(out)).unwrap(), obj);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // No rule names this URL, yet `shoal get` makes it a task; the second URL differs only in filtered
    // parameters, so it is the same task, served from the cache without asking the origin again.
    let first = get("one", "a");
    let second = get("two", "b");
    assert!(first.contains("source=origin") && second.contains("source=local"), "{first}\n{second}");
    // The second, signed URL was asked about with a one-byte GET (signed for GET, so no HEAD).
    assert_eq!((origin.body_requests(), origin.one_byte_gets()), (1, 1));
    let o = cluster::shoal()
        .args(["get", &origin.url("/dl/tool.tar"), "--daemon", &d.proxy.to_string()])
        .args(["--filtered-query-param", "a=b", "-O"])
        .arg(tmp.path().join("c"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("invalid --filtered-query-param"), "{err}");
    assert!(!tmp.path().join("c").exists());
}

/// An origin that sends its head and then stalls fails the download within the body-idle bound (the
/// client sees a failed transfer, never a clean short body), and the next request for the object is not
/// pinned to the dead fetch; an origin that never answers is a 502 within the head bound.
#[test]
fn a_stalled_origin_fails_within_its_bounds_and_pins_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, oid) = object(79, 8 * MIB);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    origin.stall_once(&path, MIB);
    let yaml = "engine:\n  origin_head_timeout: 1s\n  origin_idle_timeout: 1s\n";
    let d = cluster::daemon_with("127.0.0.39", &[], false, &tmp.path().join("daemon"), yaml);
    let url = origin.url(&path);

    let t0 = Instant::now();
    let g = curl(d.proxy, tmp.path(), &[&url]);
    assert!(g.stderr.contains("curl: ("), "curl saw a failed transfer: {} / {}", g.status, g.stderr);
    assert!(g.body.len() < obj.len());
    assert!(t0.elapsed() < Duration::from_secs(10), "failed within the idle bound: {:?}", t0.elapsed());
    d.proc.wait_for("origin body stalled", Duration::from_secs(5));

    let g = curl(d.proxy, tmp.path(), &[&url]);
    assert_eq!((g.status, g.header("x-shoal-source")), (200, Some("origin")), "{}", g.stderr);
    assert!(g.body == obj[..], "the retry is whole");
    assert_eq!(origin.requests(), 2);

    let t0 = Instant::now();
    let no_head = format!("/no-head/{}", "ab".repeat(32));
    let g = curl(d.proxy, tmp.path(), &[&origin.url(&no_head)]);
    assert_eq!(g.status, 502, "{}", g.stderr);
    assert!(String::from_utf8_lossy(&g.body).contains("no response head"), "{:?}", String::from_utf8_lossy(&g.body));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// Connections over `proxy.max_connections` get a 503 and are closed; the ones already open keep working.
#[test]
fn connections_over_the_cap_get_503_and_the_open_ones_are_unaffected() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    origin.put("/small.bin", Bytes::from_static(b"small"));
    let d =
        cluster::daemon_with("127.0.0.41", &[], false, &tmp.path().join("daemon"), "proxy:\n  max_connections: 2\n");
    // Two clients hold connections with half-sent heads.
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(d.proxy).unwrap()).collect();
    for s in &mut held {
        write!(s, "GET {} HTTP/1.1\r\n", origin.url("/small.bin")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = raw(d.proxy, format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/small.bin")).as_bytes());
    assert!(r.starts_with("HTTP/1.1 503"), "{r:?}");
    assert!(r.contains("retry-after: 1"), "{r:?}");
    // The held connections finish their requests normally.
    for s in &mut held {
        write!(s, "Host: {}\r\nConnection: close\r\n\r\n", origin.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("small"), "{out:?}");
    }
    // Once they are gone, new clients are served again.
    std::thread::sleep(Duration::from_millis(300));
    let g = curl(d.proxy, tmp.path(), &[&origin.url("/small.bin")]);
    assert_eq!(g.status, 200, "{}", g.stderr);
}

/// A range of a digest-named object ends cleanly only once the whole content matched its digest: an origin
/// serving the wrong bytes for an oid makes a 206 that ends before the last piece fail too.
#[test]
fn a_range_of_wrong_content_never_ends_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (wrong, _) = object(81, 9 * MIB);
    let oid = hex::encode(sha256(b"not these bytes"));
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, wrong);
    let d = daemon("127.0.0.42", tmp.path());
    let g = curl(d.proxy, tmp.path(), &["-r", "0-1023", &origin.url(&path)]);
    assert!(g.stderr.contains("curl: ("), "the range must not end cleanly: {} {:?}", g.status, g.stderr);
    assert!(g.body.len() < 1024, "not the whole range: {} bytes", g.body.len());
    d.proc.wait_for("content digest mismatch", Duration::from_secs(10));
}
