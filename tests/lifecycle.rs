//! A daemon's life with real processes and real clients: SIGHUP reloads rules and limits on connections
//! that stay open, SIGTERM drains responses in flight (up to a bound, then cuts them), and what a stop
//! leaves behind is served by the next daemon; `shoal ls` / `shoal stat` read a running daemon.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{self, shoal, Daemon};
use common::origin::{Origin, FLAVOURS};
use common::*;

const MIB: usize = 1 << 20;

/// One request on an open keep-alive connection; returns the response head (lowercased) and body.
fn request(conn: &mut TcpStream, url: &str) -> (String, Vec<u8>) {
    let host = url.split('/').nth(2).unwrap_or("");
    write!(conn, "GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(60);
    // Bounded by the deadline (and the socket's read timeout).
    let head_end = loop {
        assert!(Instant::now() < deadline, "no response head");
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut b).expect("response head");
        assert!(n > 0, "connection closed before the head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        assert!(Instant::now() < deadline, "body incomplete");
        let n = conn.read(&mut b).expect("body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&b[..n]);
    }
    (head, body)
}

fn write_config(d: &Daemon, yaml: &str) {
    std::fs::write(d.data_dir.join("shoal.yaml"), yaml).unwrap();
}

#[test]
fn sighup_reloads_rules_and_limits_without_dropping_connections() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let obj = Bytes::from(content(81, 3 * MIB));
    origin.put("/files/model.bin", obj.clone());
    let url = origin.url("/files/model.bin");
    let tmp = tempfile::tempdir().unwrap();
    let d = cluster::daemon_with("127.0.0.70", &[], false, &tmp.path().join("d"), "workers: 1\n");
    let mut conn = TcpStream::connect(d.proxy).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();

    // No rule names this URL: it passes through.
    let (head, body) = request(&mut conn, &url);
    assert!(head.starts_with("http/1.1 200") && !head.contains("x-shoal-task-id"), "{head}");
    assert_eq!(body, obj);

    write_config(
        &d,
        "workers: 1\nproxy:\n  rules:\n    - regex: '/files/'\nupload:\n  rate: 10MB\nstorage:\n  ttl: 1d\n",
    );
    d.proc.signal(libc::SIGHUP);
    let line = d.proc.wait_for("rules and limits reloaded", Duration::from_secs(10));
    assert!(line.contains("rules=3") && line.contains("upload_rate=Some(10000000)"), "{line}");
    // The same connection, now routed by the new rule: P2P, named by its URL.
    let (head, body) = request(&mut conn, &url);
    assert!(head.contains("x-shoal-task-id") && head.contains("x-shoal-source: origin"), "{head}");
    assert_eq!(body, obj);

    // A file that does not validate changes nothing: the rule stays, the connection too.
    write_config(&d, "workers: 1\nproxy:\n  rules:\n    - regex: '(unclosed'\n");
    d.proc.signal(libc::SIGHUP);
    let line = d.proc.wait_for("configuration not reloaded", Duration::from_secs(10));
    assert!(line.contains("proxy.rules[0].regex"), "{line}");
    let (head, body) = request(&mut conn, &url);
    assert!(head.contains("x-shoal-source: local"), "{head}");
    assert_eq!(body, obj);

    // Keys that cannot change while running are named, and the rest still applies.
    write_config(&d, "workers: 1\nengine:\n  max_parents: 2\nproxy:\n  rules:\n    - regex: '/files/'\n");
    d.proc.signal(libc::SIGHUP);
    let line = d.proc.wait_for("take effect at the next start", Duration::from_secs(10));
    assert!(line.contains("engine"), "{line}");
    // The warning is logged while the file is read, the confirmation once it is applied: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.proc.count("rules and limits reloaded") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.proc.count("rules and limits reloaded") >= 2);
    let (head, _) = request(&mut conn, &url);
    assert!(head.contains("x-shoal-source: local"), "{head}");
}

/// curl through the proxy into `out`, in the background.
fn curl_bg(proxy: SocketAddr, url: &str, out: &Path) -> std::process::Child {
    Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "60", "--noproxy", "", "-x", &format!("http://{proxy}"), "-o"])
        .arg(out)
        .arg(url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs")
}

fn slow_object(origin: &Origin, seed: u64) -> (Bytes, String) {
    let obj = Bytes::from(content(seed, 16 * MIB));
    let oid = hex::encode(sha256(&obj));
    origin.put(&format!("/lfs/{oid}"), obj.clone());
    (obj, origin.url(&format!("/lfs/{oid}")))
}

#[test]
fn sigterm_lets_the_response_in_flight_finish_and_refuses_new_clients() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    // 64 frames of 256 KiB, 30 ms apart: ~2 s for the whole object.
    origin.set_frame_delay(Duration::from_millis(30));
    let (obj, url) = slow_object(&origin, 82);
    let tmp = tempfile::tempdir().unwrap();
    let mut d = cluster::daemon("127.0.0.71", &[], false, &tmp.path().join("d"));
    let out = tmp.path().join("out");
    let mut curl = curl_bg(d.proxy, &url, &out);
    d.proc.wait_for("scheduler decision", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    d.proc.signal(libc::SIGTERM);
    d.proc.wait_for("draining the proxy", Duration::from_secs(5));
    assert!(TcpStream::connect(d.proxy).is_err(), "a draining proxy accepts no new client");
    let st = curl.wait().unwrap();
    assert!(st.success(), "the response in flight completes");
    assert_eq!(std::fs::read(&out).unwrap(), obj);
    let exit = d.proc.wait_exit(Duration::from_secs(15)).expect("the daemon exits after the drain");
    assert!(exit.success(), "exit status {exit:?}");
    d.proc.wait_for("storage closed cleanly", Duration::from_secs(1));
}

#[test]
fn a_download_cut_at_the_drain_bound_fails_its_client_and_the_next_daemon_serves_the_store() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    // ~4 s for the whole object; the drain bound is 300 ms.
    origin.set_frame_delay(Duration::from_millis(60));
    let (obj, url) = slow_object(&origin, 83);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let yaml = "proxy:\n  drain_timeout: 300ms\n";
    let mut d = cluster::daemon_with("127.0.0.72", &[], false, &dir, yaml);
    let out = tmp.path().join("out");
    let mut curl = curl_bg(d.proxy, &url, &out);
    d.proc.wait_for("scheduler decision", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200));
    d.proc.signal(libc::SIGTERM);
    let st = curl.wait().unwrap();
    assert!(!st.success(), "a cut response is a failed transfer, never a clean short body");
    let exit = d.proc.wait_exit(Duration::from_secs(15)).expect("the daemon exits at the bound");
    assert!(exit.success(), "exit status {exit:?}");
    d.proc.wait_for("still busy at the drain bound", Duration::from_secs(1));
    d.proc.wait_for("storage closed cleanly", Duration::from_secs(1));
    drop(d);

    // The next daemon loads the partial task and finishes it; clients get the exact object.
    origin.set_frame_delay(Duration::ZERO);
    let d = cluster::daemon_with("127.0.0.72", &[], false, &dir, yaml);
    let opened = d.proc.wait_for("storage opened", Duration::from_secs(5));
    assert!(opened.contains("loaded=1") && opened.contains("unclean=0"), "{opened}");
    let mut curl = curl_bg(d.proxy, &url, &out);
    assert!(curl.wait().unwrap().success());
    assert_eq!(std::fs::read(&out).unwrap(), obj);

    // ls and stat read the running daemon.
    let metrics = d.metrics.to_string();
    let ls = shoal().args(["ls", "--metrics-addr", &metrics]).output().unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    let oid = hex::encode(sha256(&obj));
    assert!(ls.status.success() && text.contains(&oid[..16]) && text.contains("complete"), "{text}");
    assert!(text.contains("16.0 MiB") && text.contains("1 task(s)"), "{text}");
    let stat = shoal().args(["stat", &oid[..8], "--metrics-addr", &metrics]).output().unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.status.success(), "{}", String::from_utf8_lossy(&stat.stderr));
    assert!(text.contains(&format!("SHA-256:     {oid}")) && text.contains("State:       complete"), "{text}");
    assert!(text.contains(&format!("Size:        {} bytes", obj.len())), "{text}");
    let json = shoal().args(["stat", &oid, "--json", "--metrics-addr", &metrics]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("stat --json is JSON");
    assert_eq!(v["pieces_complete"], v["piece_count"]);
    assert!(std::path::Path::new(v["data_file"].as_str().unwrap()).is_file());
    for (args, why) in [
        (vec!["stat", "ffffffff"], "no task ffffffff"),
        (vec!["stat", "../etc"], "64 hex digits"),
        (vec!["stat", "ab"], "64 hex digits"),
    ] {
        let o = shoal().args(&args).args(["--metrics-addr", &metrics]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why) && err.lines().count() == 1, "{args:?}: {err}");
    }
    let nobody = cluster::free_addr("127.0.0.72").to_string();
    let o = shoal().args(["ls", "--metrics-addr", &nobody]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot reach the daemon"), "{err}");
}
