//! Who may use the proxy: `proxy.allow_clients`, checked against the client's address before a byte of
//! its request is read. Real curl against a real daemon; every address is on 127.0.0.0/8.

mod common;

use std::process::Command;

use bytes::Bytes;
use common::cluster;
use common::origin::{Flavour, Origin};

/// curl through `proxy` from source address `from`: (HTTP status, body).
fn curl_from(from: &str, proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--noproxy", "", "--interface", from, "-x", &format!("http://{proxy}")])
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn only_clients_from_allowed_networks_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.2", Flavour { ranges: true, content_length: true });
    origin.put("/plain.bin", Bytes::from_static(b"hello from the origin"));
    // The proxy listens on every loopback address but serves 127.0.0.7 alone.
    let yaml = "proxy:\n  allow_clients: [127.0.0.7/32]\n";
    let d = cluster::daemon_with("127.0.0.50", &[], false, &tmp.path().join("d"), yaml);
    let url = origin.url("/plain.bin");
    let (status, body) = curl_from("127.0.0.7", d.proxy, &url);
    assert_eq!((status, body.as_str()), (200, "hello from the origin"));
    let (status, body) = curl_from("127.0.0.8", d.proxy, &url);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "shoal: client 127.0.0.8 is not in proxy.allow_clients\n");
    assert_eq!(origin.requests(), 1, "the refused client reached nothing");

    // The default serves this machine's loopback only; a bad network is refused at start, naming its key.
    let d2 = cluster::daemon("127.0.0.51", &[], false, &tmp.path().join("d2"));
    assert_eq!(curl_from("127.0.0.9", d2.proxy, &url).0, 200);
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "proxy:\n  allow_clients: [10.0.0.0]\n").unwrap();
    let o = cluster::shoal().args(["config", "check"]).arg(&bad).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("proxy.allow_clients[0]"), "{o:?}");
}
